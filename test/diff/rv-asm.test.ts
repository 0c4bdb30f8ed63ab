// Cross-checks the test encoder (test/support/rv-asm.ts) against the GNU assembler.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as A from "../support/rv-asm.js";
import { Rng } from "../support/rng.js";
import { assemble, disassemble, haveBinutils } from "../support/gnu.js";

type Case = { text: string; enc: number; size: 2 | 4 };
type Gen = (r: Rng) => Case;

const RMS: [number, string][] = [
  [0, "rne"],
  [1, "rtz"],
  [2, "rdn"],
  [3, "rup"],
  [4, "rmm"],
  [7, "dyn"],
];
const x = (n: number) => `x${n}`;
const f = (n: number) => `f${n}`;
const rr = (r: Rng) => r.int(0, 31);
const rc = (r: Rng) => r.int(8, 15);
const nzr = (r: Rng) => r.int(1, 31);
const i12 = (r: Rng) => r.pick([0, -1, 2047, -2048, r.int(-2048, 2047)]);
const w = (text: string, enc: number): Case => ({ text, enc, size: 4 });
const c = (text: string, enc: number): Case => ({ text, enc, size: 2 });
const mnem = (name: string) => name.replace(/_/g, ".");

const cases: Gen[] = [];
const any = A as unknown as Record<string, (...a: number[]) => number>;

for (const n of ["add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and", "addw", "subw", "sllw", "srlw",
  "sraw", "mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu", "mulw", "divw", "divuw", "remw", "remuw"]) {
  cases.push((r) => {
    const [a, b2, d] = [rr(r), rr(r), rr(r)];
    return w(`${n} ${x(d)}, ${x(a)}, ${x(b2)}`, any[n](d, a, b2));
  });
}
for (const n of ["addi", "slti", "sltiu", "xori", "ori", "andi", "addiw"]) {
  cases.push((r) => {
    const [d, a, i] = [rr(r), rr(r), i12(r)];
    return w(`${n} ${x(d)}, ${x(a)}, ${i}`, any[n](d, a, i));
  });
}
for (const [n, bits] of [["slli", 6], ["srli", 6], ["srai", 6], ["slliw", 5], ["srliw", 5], ["sraiw", 5]] as const) {
  cases.push((r) => {
    const [d, a, s] = [rr(r), rr(r), r.int(0, 2 ** bits - 1)];
    return w(`${n} ${x(d)}, ${x(a)}, ${s}`, any[n](d, a, s));
  });
}
for (const n of ["lui", "auipc"]) {
  cases.push((r) => {
    const [d, i] = [rr(r), r.int(0, 0xfffff)];
    return w(`${n} ${x(d)}, ${i}`, any[n](d, i));
  });
}
for (const n of ["lb", "lh", "lw", "ld", "lbu", "lhu", "lwu", "sb", "sh", "sw", "sd", "jalr"]) {
  cases.push((r) => {
    const [d, a, i] = [rr(r), rr(r), i12(r)];
    return w(`${n} ${x(d)}, ${i}(${x(a)})`, any[n](d, i, a));
  });
}
for (const n of ["flw", "fld", "fsw", "fsd"]) {
  cases.push((r) => {
    const [d, a, i] = [rr(r), rr(r), i12(r)];
    return w(`${n} ${f(d)}, ${i}(${x(a)})`, any[n](d, i, a));
  });
}
for (const n of ["beq", "bne", "blt", "bge", "bltu", "bgeu"]) {
  cases.push((r) => {
    const [a, b2, o] = [rr(r), rr(r), r.pick([-4096, 4094, 2 * r.int(-2048, 2047)])];
    return w(`${n} ${x(a)}, ${x(b2)}, .${o >= 0 ? "+" : ""}${o}`, any[n](a, b2, o));
  });
}
cases.push((r) => {
  const [d, o] = [rr(r), r.pick([-(2 ** 20), 2 ** 20 - 2, 2 * r.int(-(2 ** 19), 2 ** 19 - 1)])];
  return w(`jal ${x(d)}, .${o >= 0 ? "+" : ""}${o}`, A.jal(d, o));
});
cases.push(() => w("ecall", A.ecall()), () => w("ebreak", A.ebreak()), () => w("fence.i", A.fence_i()));
cases.push(() => w("fence", A.fence()), () => w("fence r, w", A.fence(2, 1)));

for (const s of ["w", "d"]) {
  for (const op of ["sc", "amoswap", "amoadd", "amoxor", "amoand", "amoor", "amomin", "amomax", "amominu", "amomaxu"]) {
    cases.push((r) => {
      const [d, v, a, aq, rl] = [rr(r), rr(r), rr(r), r.bool(), r.bool()];
      const ord = aq && rl ? ".aqrl" : aq ? ".aq" : rl ? ".rl" : "";
      return w(`${op}.${s}${ord} ${x(d)}, ${x(v)}, (${x(a)})`, any[`${op}_${s}`](d, v, a, +aq, +rl));
    });
  }
  cases.push((r) => {
    const [d, a, aq, rl] = [rr(r), rr(r), r.bool(), r.bool()];
    const ord = aq && rl ? ".aqrl" : aq ? ".aq" : rl ? ".rl" : "";
    return w(`lr.${s}${ord} ${x(d)}, (${x(a)})`, any[`lr_${s}`](d, a, +aq, +rl));
  });
}
for (const n of ["csrrw", "csrrs", "csrrc"]) {
  cases.push((r) => {
    const [d, a, csr] = [rr(r), rr(r), r.pick([1, 2, 3, r.int(0, 4095)])];
    return w(`${n} ${x(d)}, ${csr}, ${x(a)}`, any[n](d, csr, a));
  });
}
for (const n of ["csrrwi", "csrrsi", "csrrci"]) {
  cases.push((r) => {
    const [d, u, csr] = [rr(r), r.int(0, 31), r.pick([1, 2, 3, r.int(0, 4095)])];
    return w(`${n} ${x(d)}, ${csr}, ${u}`, any[n](d, csr, u));
  });
}

// FP: [name, operand kinds, rm]: "asm" = rm operand in the text; "zero" = no operand, as encodes rm=0.
type RmKind = "asm" | "zero" | "none";
const fpOps: [string, string, RmKind][] = [];
for (const s of ["s", "d"]) {
  for (const n of ["fadd", "fsub", "fmul", "fdiv"]) fpOps.push([`${n}_${s}`, "fff", "asm"]);
  for (const n of ["fsgnj", "fsgnjn", "fsgnjx", "fmin", "fmax"]) fpOps.push([`${n}_${s}`, "fff", "none"]);
  for (const n of ["feq", "flt", "fle"]) fpOps.push([`${n}_${s}`, "xff", "none"]);
  fpOps.push([`fsqrt_${s}`, "ff", "asm"], [`fclass_${s}`, "xf", "none"]);
  for (const t of ["w", "wu", "l", "lu"]) {
    fpOps.push([`fcvt_${t}_${s}`, "xf", "asm"]);
    // GNU as rejects an rm operand on the exact int->double conversions.
    fpOps.push([`fcvt_${s}_${t}`, "fx", s === "d" && (t === "w" || t === "wu") ? "zero" : "asm"]);
  }
  for (const n of ["fmadd", "fmsub", "fnmsub", "fnmadd"]) fpOps.push([`${n}_${s}`, "ffff", "asm"]);
}
fpOps.push(["fcvt_s_d", "ff", "asm"], ["fcvt_d_s", "ff", "zero"]);
fpOps.push(["fmv_x_w", "xf", "none"], ["fmv_w_x", "fx", "none"], ["fmv_x_d", "xf", "none"], ["fmv_d_x", "fx", "none"]);
for (const [n, kinds, rmk] of fpOps) {
  cases.push((r) => {
    const regs = [...kinds].map(() => rr(r));
    const names = [...kinds].map((k, i) => (k === "f" ? f(regs[i]) : x(regs[i])));
    const [rm, rmName] = r.pick(RMS);
    const text = `${mnem(n)} ${names.join(", ")}${rmk === "asm" ? ", " + rmName : ""}`;
    const enc = rmk === "asm" ? any[n](...regs, rm) : rmk === "zero" ? any[n](...regs, 0) : any[n](...regs);
    return w(text, enc);
  });
}

// C extension
const sImm = (r: Rng, bits: number) => r.int(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1);
cases.push(
  (r) => { const [d, i] = [nzr(r), r.pick([1, -1, 31, -32]) || 1]; return c(`c.addi ${x(d)}, ${i}`, A.c_addi(d, i)); },
  (r) => { const [d, i] = [nzr(r), sImm(r, 6) || 5]; return c(`c.addi ${x(d)}, ${i}`, A.c_addi(d, i)); },
  (r) => { const [d, i] = [nzr(r), sImm(r, 6)]; return c(`c.addiw ${x(d)}, ${i}`, A.c_addiw(d, i)); },
  (r) => { const [d, i] = [nzr(r), sImm(r, 6)]; return c(`c.li ${x(d)}, ${i}`, A.c_li(d, i)); },
  (r) => {
    let d = nzr(r);
    if (d === 2) d = 3;
    const i = sImm(r, 6) || 1;
    return c(`c.lui ${x(d)}, ${i & 0xfffff}`, A.c_lui(d, i));
  },
  (r) => { const i = 16 * (r.int(-32, 31) || 1); return c(`c.addi16sp x2, ${i}`, A.c_addi16sp(i)); },
  (r) => { const [d, i] = [rc(r), 4 * r.int(1, 255)]; return c(`c.addi4spn ${x(d)}, x2, ${i}`, A.c_addi4spn(d, i)); },
  (r) => { const [d, s] = [nzr(r), r.int(1, 63)]; return c(`c.slli ${x(d)}, ${s}`, A.c_slli(d, s)); },
  (r) => { const [d, s] = [rc(r), r.int(1, 63)]; return c(`c.srli ${x(d)}, ${s}`, A.c_srli(d, s)); },
  (r) => { const [d, s] = [rc(r), r.int(1, 63)]; return c(`c.srai ${x(d)}, ${s}`, A.c_srai(d, s)); },
  (r) => { const [d, i] = [rc(r), sImm(r, 6)]; return c(`c.andi ${x(d)}, ${i}`, A.c_andi(d, i)); },
  (r) => { const [d, s] = [nzr(r), nzr(r)]; return c(`c.mv ${x(d)}, ${x(s)}`, A.c_mv(d, s)); },
  (r) => { const [d, s] = [nzr(r), nzr(r)]; return c(`c.add ${x(d)}, ${x(s)}`, A.c_add(d, s)); },
  (r) => { const a = nzr(r); return c(`c.jr ${x(a)}`, A.c_jr(a)); },
  (r) => { const a = nzr(r); return c(`c.jalr ${x(a)}`, A.c_jalr(a)); },
  (r) => { const o = 2 * r.int(-1024, 1023); return c(`c.j .${o >= 0 ? "+" : ""}${o}`, A.c_j(o)); },
  (r) => { const [a, o] = [rc(r), 2 * r.int(-128, 127)]; return c(`c.beqz ${x(a)}, .${o >= 0 ? "+" : ""}${o}`, A.c_beqz(a, o)); },
  (r) => { const [a, o] = [rc(r), 2 * r.int(-128, 127)]; return c(`c.bnez ${x(a)}, .${o >= 0 ? "+" : ""}${o}`, A.c_bnez(a, o)); },
  (r) => { const [d, o] = [nzr(r), 4 * r.int(0, 63)]; return c(`c.lwsp ${x(d)}, ${o}(x2)`, A.c_lwsp(d, o)); },
  (r) => { const [d, o] = [nzr(r), 8 * r.int(0, 63)]; return c(`c.ldsp ${x(d)}, ${o}(x2)`, A.c_ldsp(d, o)); },
  (r) => { const [d, o] = [rr(r), 8 * r.int(0, 63)]; return c(`c.fldsp ${f(d)}, ${o}(x2)`, A.c_fldsp(d, o)); },
  (r) => { const [s, o] = [rr(r), 4 * r.int(0, 63)]; return c(`c.swsp ${x(s)}, ${o}(x2)`, A.c_swsp(s, o)); },
  (r) => { const [s, o] = [rr(r), 8 * r.int(0, 63)]; return c(`c.sdsp ${x(s)}, ${o}(x2)`, A.c_sdsp(s, o)); },
  (r) => { const [s, o] = [rr(r), 8 * r.int(0, 63)]; return c(`c.fsdsp ${f(s)}, ${o}(x2)`, A.c_fsdsp(s, o)); },
);
for (const n of ["sub", "xor", "or", "and", "subw", "addw"]) {
  cases.push((r) => {
    const [d, s] = [rc(r), rc(r)];
    return c(`c.${n} ${x(d)}, ${x(s)}`, any[`c_${n}`](d, s));
  });
}
for (const [n, fp, scale, max] of [
  ["lw", false, 4, 31], ["sw", false, 4, 31], ["ld", false, 8, 31], ["sd", false, 8, 31],
  ["fld", true, 8, 31], ["fsd", true, 8, 31],
] as const) {
  cases.push((r) => {
    const [d, a, o] = [rc(r), rc(r), scale * r.int(0, max)];
    return c(`c.${n} ${fp ? f(d) : x(d)}, ${o}(${x(a)})`, any[`c_${n}`](d, o, a));
  });
}
cases.push(() => c("c.nop", A.c_nop()), () => c("c.ebreak", A.c_ebreak()));

test("rv-asm matches the GNU assembler", { skip: !haveBinutils() && "riscv64 binutils not installed" }, () => {
  const r = new Rng(12345);
  const all: Case[] = [];
  for (let rep = 0; rep < 24; rep++) for (const g of cases) all.push(g(r));
  const src = all.map((k) => `.option ${k.size === 2 ? "rvc" : "norvc"}\n${k.text}`).join("\n") + "\n";
  const bin = assemble(src);
  let off = 0;
  for (const k of all) {
    const got = k.size === 4 ? (bin[off] | (bin[off + 1] << 8) | (bin[off + 2] << 16) | (bin[off + 3] << 24)) >>> 0 : bin[off] | (bin[off + 1] << 8);
    if (got !== k.enc) {
      const mine = new Uint8Array(k.size);
      for (let i = 0; i < k.size; i++) mine[i] = (k.enc >>> (8 * i)) & 0xff;
      assert.fail(`${k.text}: as=0x${got.toString(16)} rv-asm=0x${k.enc.toString(16)} (${disassemble(mine).trim()})`);
    }
    off += k.size;
  }
  assert.equal(off, bin.length);
});

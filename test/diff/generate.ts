/**
 * Random-but-valid RV64GC test programs for differential testing against qemu-riscv64.
 *
 * Segment layout (loaded at LOAD_ADDR, code first, data page-aligned after it):
 *   code:  prologue | body | epilogue
 *   data:  POOL (initial x/f register values, 512 B) | SCRATCH (2048 B, random bytes) | DUMP (520 B)
 * x2 (sp) points at SCRATCH+1024 for the whole body and is never written by it. The epilogue stores
 * x0..x31, f0..f31 and fcsr into DUMP, then `write(1, SCRATCH, SCRATCH_LEN + DUMP_LEN)` and `exit(0)`.
 * The harness stops the hart at the first epilogue ecall (`ecallAddr`).
 *
 * The body is a list of "units" (an instruction plus any setup it needs, e.g. a base register);
 * branches only target unit starts and only jump forward, so every program terminates.
 * Classes fpx_s/fpx_d ("extreme") load f0..f23 with values near the overflow/underflow thresholds
 * and only write f24..f31, so every operation sees edge-case operands.
 * Excluded on purpose (qemu-user and bare metal may legitimately differ): misaligned accesses,
 * lr/sc to different addresses or with stores in between, counters, ecall/ebreak, privileged CSRs.
 */
import * as A from "../support/rv-asm.js";
import { Rng } from "../support/rng.js";

export const LOAD_ADDR = 0x8000_0000;
export const POOL = 0;
export const SCRATCH = 512;
export const SCRATCH_LEN = 2048;
export const DUMP = SCRATCH + SCRATCH_LEN;
export const DUMP_LEN = 32 * 8 + 32 * 8 + 8;
export const SP_OFF = SCRATCH + 1024;
/** Bytes written to stdout by the epilogue: SCRATCH then DUMP. */
export const OUT_LEN = SCRATCH_LEN + DUMP_LEN;

export const CLASSES = ["alu", "mul", "amo", "mem", "fp_s", "fp_d", "fpx_s", "fpx_d", "rvc", "branch", "csr"] as const;
export type InsnClass = (typeof CLASSES)[number];

export interface Program {
  seed: number;
  cls: InsnClass;
  /** Bytes of the single loadable segment (placed at LOAD_ADDR). */
  segment: Uint8Array;
  entry: number;
  bodyStart: number;
  bodyEnd: number;
  /** Address of the epilogue's write ecall; the hart stops here. */
  ecallAddr: number;
  /** Guest address of the region the epilogue writes out (SCRATCH). */
  outAddr: number;
  /** Body units actually emitted (for truncation), and the total generated. */
  units: number;
  totalUnits: number;
  /** Start address of each emitted unit. */
  unitAddrs: number[];
  /** Initial register values, frm and SCRATCH contents (as loaded by the prologue). */
  xInit: bigint[];
  fInit: bigint[];
  frm0: number;
  scratchInit: Uint8Array;
}

// ---- body representation ---------------------------------------------------------------------

/** One instruction; `fix` computes the encoding once addresses are known (branches). */
interface Item {
  size: 2 | 4;
  enc?: number;
  fix?: (self: number, target: number) => number;
}
/** A group of instructions that branches never split. `target` is a forward unit distance. */
interface Unit {
  items: Item[];
  target?: number;
}
const w = (enc: number): Item => ({ size: 4, enc });
const h = (enc: number): Item => ({ size: 2, enc });
const unit = (...items: Item[]): Unit => ({ items });

// ---- operand helpers -------------------------------------------------------------------------

const SP = 2;
const RM_ALL = [0, 1, 2, 3, 4, 7];

class Ctx {
  readonly hotX: number[];
  readonly hotF: number[];
  constructor(readonly r: Rng) {
    this.hotX = Array.from({ length: 6 }, () => this.anyRd());
    this.hotF = Array.from({ length: 6 }, () => r.int(0, 31));
  }
  /** Any writable x register (x0 allowed, never sp). */
  anyRd(): number {
    const v = this.r.int(0, 30);
    return v >= SP ? v + 1 : v;
  }
  rd(): number {
    return this.r.bool(0.5) ? this.r.pick(this.hotX) : this.anyRd();
  }
  /** Source x register (sp readable). */
  rs(): number {
    return this.r.bool(0.5) ? this.r.pick(this.hotX) : this.r.int(0, 31);
  }
  /** Writable non-zero x register, excluding `not`. */
  tmp(...not: number[]): number {
    for (;;) {
      const v = this.r.int(1, 31);
      if (v !== SP && !not.includes(v)) return v;
    }
  }
  fr(): number {
    return this.r.bool(0.5) ? this.r.pick(this.hotF) : this.r.int(0, 31);
  }
  cr(): number {
    return this.r.int(8, 15);
  }
  imm12(): number {
    const r = this.r;
    return r.pick([0, 1, -1, 2047, -2048, r.int(-16, 16), r.int(-2048, 2047), r.int(-2048, 2047)]);
  }
  rm(): number {
    return this.r.pick(RM_ALL);
  }
}

/** Picks `weighted` entries: each is [weight, fn]. */
function choose<T>(r: Rng, opts: [number, () => T][]): T {
  let total = 0;
  for (const [wt] of opts) total += wt;
  let x = r.int(0, total - 1);
  for (const [wt, fn] of opts) {
    if (x < wt) return fn();
    x -= wt;
  }
  throw new Error("unreachable");
}

// ---- per-class unit generators ---------------------------------------------------------------

const ALU_RR = [A.add, A.sub, A.sll, A.slt, A.sltu, A.xor, A.srl, A.sra, A.or, A.and, A.addw, A.subw, A.sllw, A.srlw, A.sraw];
const ALU_RI = [A.addi, A.slti, A.sltiu, A.xori, A.ori, A.andi, A.addiw];
const SH64 = [A.slli, A.srli, A.srai];
const SH32 = [A.slliw, A.srliw, A.sraiw];
const MUL = [A.mul, A.mulh, A.mulhsu, A.mulhu, A.div, A.divu, A.rem, A.remu, A.mulw, A.divw, A.divuw, A.remw, A.remuw];
const DIVS = [A.div, A.divu, A.rem, A.remu, A.divw, A.divuw, A.remw, A.remuw];

function aluUnit(c: Ctx): Unit {
  const r = c.r;
  return choose(r, [
    [10, () => unit(w(r.pick(ALU_RR)(c.rd(), c.rs(), c.rs())))],
    [6, () => unit(w(r.pick(ALU_RI)(c.rd(), c.rs(), c.imm12())))],
    [3, () => unit(w(r.pick(SH64)(c.rd(), c.rs(), r.pick([0, 1, 31, 32, 63, r.int(0, 63)]))))],
    [3, () => unit(w(r.pick(SH32)(c.rd(), c.rs(), r.pick([0, 1, 31, r.int(0, 31)]))))],
    [1, () => unit(w(A.lui(c.rd(), r.pick([0, 0x80000, 0x7ffff, 0xfffff, r.int(0, 0xfffff)]))))],
    [1, () => unit(w(A.auipc(c.rd(), r.pick([0, 0x80000, r.int(0, 0xfffff)]))))],
  ]);
}

function mulUnit(c: Ctx): Unit {
  const r = c.r;
  return choose(r, [
    [12, () => unit(w(r.pick(MUL)(c.rd(), c.rs(), c.rs())))],
    [2, () => unit(w(r.pick(DIVS)(c.rd(), c.rs(), 0)))],
    [
      2,
      () => {
        // Signed overflow: INT64_MIN / -1 or INT32_MIN / -1.
        const [a, b] = [c.tmp(), c.tmp()];
        const op = r.pick(DIVS);
        const wide = op === A.div || op === A.divu || op === A.rem || op === A.remu;
        const setA = wide ? [w(A.addi(a, 0, 1)), w(A.slli(a, a, 63))] : [w(A.lui(a, 0x80000))];
        return unit(...setA, w(A.addi(b, 0, -1)), w(op(c.rd(), a, b)));
      },
    ],
    [4, () => aluUnit(c)],
  ]);
}

/** `addi rb, sp, delta` so that `off(rb)` hits SCRATCH+`at`; or sp itself if it reaches. */
function addrSetup(c: Ctx, at: number, align: number, imm = true): { pre: Item[]; base: number; off: number } {
  const r = c.r;
  const rel = at - (SP_OFF - SCRATCH); // offset from sp
  if (imm && r.bool(0.3)) return { pre: [], base: SP, off: rel };
  const base = c.tmp();
  let off = imm ? r.pick([0, align * r.int(-8, 8), r.int(-64, 64) * align]) : 0;
  let delta = rel - off;
  if (delta < -2048 || delta > 2047) {
    off = 0;
    delta = rel;
  }
  return { pre: [w(A.addi(base, SP, delta))], base, off };
}
const scratchAt = (r: Rng, width: number) => width * r.int(0, SCRATCH_LEN / width - 1);

const LOADS: [number, typeof A.ld][] = [
  [1, A.lb], [1, A.lbu], [2, A.lh], [2, A.lhu], [4, A.lw], [4, A.lwu], [8, A.ld],
];
const STORES: [number, typeof A.sd][] = [[1, A.sb], [2, A.sh], [4, A.sw], [8, A.sd]];

function memUnit(c: Ctx): Unit {
  const r = c.r;
  return choose(r, [
    [
      6,
      () => {
        const [wd, op] = r.pick(LOADS);
        const a = addrSetup(c, scratchAt(r, wd), wd);
        return unit(...a.pre, w(op(c.rd(), a.off, a.base)));
      },
    ],
    [
      6,
      () => {
        const [wd, op] = r.pick(STORES);
        const a = addrSetup(c, scratchAt(r, wd), wd);
        return unit(...a.pre, w(op(c.rs(), a.off, a.base)));
      },
    ],
    [
      2,
      () => {
        const wd = r.pick([4, 8]);
        const a = addrSetup(c, scratchAt(r, wd), wd);
        return unit(...a.pre, w((wd === 4 ? A.flw : A.fld)(c.fr(), a.off, a.base)));
      },
    ],
    [
      2,
      () => {
        const wd = r.pick([4, 8]);
        const a = addrSetup(c, scratchAt(r, wd), wd);
        return unit(...a.pre, w((wd === 4 ? A.fsw : A.fsd)(c.fr(), a.off, a.base)));
      },
    ],
    [1, () => unit(w(r.bool(0.8) ? A.fence(r.int(0, 15), r.int(0, 15)) : A.fence_i()))],
    [3, () => aluUnit(c)],
  ]);
}

const AMO_W = [A.amoswap_w, A.amoadd_w, A.amoxor_w, A.amoand_w, A.amoor_w, A.amomin_w, A.amomax_w, A.amominu_w, A.amomaxu_w];
const AMO_D = [A.amoswap_d, A.amoadd_d, A.amoxor_d, A.amoand_d, A.amoor_d, A.amomin_d, A.amomax_d, A.amominu_d, A.amomaxu_d];

function amoUnit(c: Ctx): Unit {
  const r = c.r;
  // Keep AMO traffic to a small region so lr/sc/amo interact with earlier stores.
  const at = (wd: number) => wd * r.int(0, 64 / wd - 1) + r.pick([0, 1024]);
  return choose(r, [
    [
      8,
      () => {
        const wd = r.pick([4, 8]);
        const a = addrSetup(c, at(wd), wd, false);
        return unit(...a.pre, w(r.pick(wd === 4 ? AMO_W : AMO_D)(c.rd(), c.rs(), a.base, r.bool(), r.bool())));
      },
    ],
    [
      5,
      () => {
        const wd = r.pick([4, 8]);
        const a = addrSetup(c, at(wd), wd, false);
        const rd = c.tmp(a.base);
        const items = [...a.pre, w((wd === 4 ? A.lr_w : A.lr_d)(rd, a.base, r.bool(), r.bool()))];
        if (r.bool(0.4)) items.push(w(r.pick(ALU_RR)(c.tmp(a.base), c.rs(), c.rs())));
        const sc = wd === 4 ? A.sc_w : A.sc_d;
        items.push(w(sc(r.bool(0.9) ? c.rd() : 0, r.bool(0.3) ? rd : c.rs(), a.base, r.bool(), r.bool())));
        return unit(...items);
      },
    ],
    [
      1,
      () => {
        // sc with no reservation must fail.
        const wd = r.pick([4, 8]);
        const a = addrSetup(c, at(wd), wd, false);
        return unit(...a.pre, w((wd === 4 ? A.sc_w : A.sc_d)(c.rd(), c.rs(), a.base, r.bool(), r.bool())));
      },
    ],
    [
      3,
      () => {
        const [wd, op] = r.pick(LOADS.filter(([x]) => x >= 4));
        const a = addrSetup(c, at(wd), wd);
        return unit(...a.pre, w(op(c.rd(), a.off, a.base)));
      },
    ],
    [3, () => aluUnit(c)],
  ]);
}

type FpFmt = "s" | "d";
function fpOp(c: Ctx, fmt: FpFmt): Item {
  const r = c.r;
  const S = fmt === "s";
  const fr = () => c.fr();
  const pick = <T>(s: T, d: T) => (S ? s : d);
  return w(
    choose(r, [
      [8, () => r.pick(pick([A.fadd_s, A.fsub_s, A.fmul_s, A.fdiv_s], [A.fadd_d, A.fsub_d, A.fmul_d, A.fdiv_d]))(fr(), fr(), fr(), c.rm())],
      [2, () => pick(A.fsqrt_s, A.fsqrt_d)(fr(), fr(), c.rm())],
      [
        6,
        () =>
          r.pick(pick([A.fmadd_s, A.fmsub_s, A.fnmsub_s, A.fnmadd_s], [A.fmadd_d, A.fmsub_d, A.fnmsub_d, A.fnmadd_d]))(
            fr(), fr(), fr(), fr(), c.rm()),
      ],
      [3, () => r.pick(pick([A.fsgnj_s, A.fsgnjn_s, A.fsgnjx_s], [A.fsgnj_d, A.fsgnjn_d, A.fsgnjx_d]))(fr(), fr(), fr())],
      [3, () => r.pick(pick([A.fmin_s, A.fmax_s], [A.fmin_d, A.fmax_d]))(fr(), fr(), fr())],
      [3, () => r.pick(pick([A.feq_s, A.flt_s, A.fle_s], [A.feq_d, A.flt_d, A.fle_d]))(c.rd(), fr(), fr())],
      [2, () => pick(A.fclass_s, A.fclass_d)(c.rd(), fr())],
      [
        5,
        () =>
          r.pick(pick([A.fcvt_w_s, A.fcvt_wu_s, A.fcvt_l_s, A.fcvt_lu_s], [A.fcvt_w_d, A.fcvt_wu_d, A.fcvt_l_d, A.fcvt_lu_d]))(
            c.rd(), fr(), c.rm()),
      ],
      [
        4,
        () =>
          r.pick(pick([A.fcvt_s_w, A.fcvt_s_wu, A.fcvt_s_l, A.fcvt_s_lu], [A.fcvt_d_w, A.fcvt_d_wu, A.fcvt_d_l, A.fcvt_d_lu]))(
            fr(), c.rs(), c.rm()),
      ],
      [2, () => pick(A.fcvt_s_d, A.fcvt_d_s)(fr(), fr(), c.rm())],
      [2, () => pick(A.fmv_x_w, A.fmv_x_d)(c.rd(), fr())],
      [2, () => pick(A.fmv_w_x, A.fmv_d_x)(fr(), c.rs())],
    ]),
  );
}

/** Pairs whose second result is an exact error term: a*b - RN(a*b), a - q*b, etc. */
function fpErrUnit(c: Ctx, fmt: FpFmt): Unit {
  const r = c.r;
  const S = fmt === "s";
  const [a, b, t, d] = [c.fr(), c.fr(), c.fr(), c.fr()];
  return choose(r, [
    [2, () => unit(w((S ? A.fmul_s : A.fmul_d)(t, a, b, c.rm())), w((S ? A.fmsub_s : A.fmsub_d)(d, a, b, t, c.rm())))],
    [1, () => unit(w((S ? A.fmul_s : A.fmul_d)(t, a, b, c.rm())), w((S ? A.fnmadd_s : A.fnmadd_d)(d, a, b, t, c.rm())))],
    [2, () => unit(w((S ? A.fdiv_s : A.fdiv_d)(t, a, b, c.rm())), w((S ? A.fnmsub_s : A.fnmsub_d)(d, t, b, a, c.rm())))],
    [1, () => unit(w((S ? A.fsqrt_s : A.fsqrt_d)(t, a, c.rm())), w((S ? A.fnmsub_s : A.fnmsub_d)(d, t, t, a, c.rm())))],
    [1, () => unit(w((S ? A.fadd_s : A.fadd_d)(t, a, b, c.rm())), w((S ? A.fsub_s : A.fsub_d)(d, t, a, c.rm())))],
  ]);
}

/** Arithmetic on edge-case operands f0..f23, results to f24..f31 (and x registers). */
function fpxUnit(c: Ctx, fmt: FpFmt): Unit {
  const r = c.r;
  const S = fmt === "s";
  const src = () => (r.bool(0.85) ? r.int(0, 23) : r.int(24, 31));
  const dst = () => r.int(24, 31);
  const pick = <T>(s: T, d: T) => (S ? s : d);
  return choose(r, [
    [10, () => unit(w(r.pick(pick([A.fadd_s, A.fsub_s, A.fmul_s, A.fdiv_s], [A.fadd_d, A.fsub_d, A.fmul_d, A.fdiv_d]))(dst(), src(), src(), c.rm())))],
    [2, () => unit(w(pick(A.fsqrt_s, A.fsqrt_d)(dst(), src(), c.rm())))],
    [
      6,
      () =>
        unit(w(r.pick(pick([A.fmadd_s, A.fmsub_s, A.fnmsub_s, A.fnmadd_s], [A.fmadd_d, A.fmsub_d, A.fnmsub_d, A.fnmadd_d]))(
          dst(), src(), src(), src(), c.rm()))),
    ],
    [2, () => unit(w(pick(A.fcvt_d_s, A.fcvt_s_d)(dst(), src(), c.rm())))],
    [
      2,
      () =>
        unit(w(r.pick(pick([A.fcvt_w_s, A.fcvt_wu_s, A.fcvt_l_s, A.fcvt_lu_s], [A.fcvt_w_d, A.fcvt_wu_d, A.fcvt_l_d, A.fcvt_lu_d]))(
          c.rd(), src(), c.rm()))),
    ],
    [1, () => unit(w(r.pick(pick([A.fmin_s, A.fmax_s, A.feq_s, A.flt_s], [A.fmin_d, A.fmax_d, A.feq_d, A.flt_d]))(dst(), src(), src())))],
    [
      3,
      () => {
        const [a, b, t, d] = [src(), src(), dst(), dst()];
        return choose(r, [
          [2, () => unit(w(pick(A.fmul_s, A.fmul_d)(t, a, b, c.rm())), w(pick(A.fmsub_s, A.fmsub_d)(d, a, b, t, c.rm())))],
          [2, () => unit(w(pick(A.fdiv_s, A.fdiv_d)(t, a, b, c.rm())), w(pick(A.fnmsub_s, A.fnmsub_d)(d, t, b, a, c.rm())))],
          [1, () => unit(w(pick(A.fsqrt_s, A.fsqrt_d)(t, a, c.rm())), w(pick(A.fnmsub_s, A.fnmsub_d)(d, t, t, a, c.rm())))],
        ]);
      },
    ],
    [1, () => unit(w(A.csrrw(c.rd(), A.CSR.fflags, 0)))],
  ]);
}

function fpUnit(c: Ctx, fmt: FpFmt): Unit {
  const r = c.r;
  return choose(r, [
    [30, () => unit(fpOp(c, fmt))],
    [4, () => fpErrUnit(c, fmt)],
    [6, () => unit(fpOp(c, fmt === "s" ? "d" : "s"))],
    [1, () => unit(w(A.csrrwi(c.rd(), A.CSR.frm, r.int(0, 4))))],
    [1, () => unit(w(A.csrrs(c.rd(), A.CSR.fflags, 0)))],
    [1, () => unit(w(A.csrrw(c.rd(), A.CSR.fflags, 0)))],
    [1, () => unit(w(r.pick(ALU_RR)(c.rd(), c.rs(), c.rs())))],
  ]);
}

/** Tracks frm statically (the csr class has no branches) so writes keep it valid (0..4). */
function csrUnit(c: Ctx, st: { frm: number }): Unit {
  const r = c.r;
  const withReg = (v: number, mk: (rs: number) => number): Unit => {
    const t = c.tmp();
    return unit(w(A.addi(t, 0, v)), w(mk(t)));
  };
  const newFrm = (op: "w" | "s" | "c", v: number) => (op === "w" ? v : op === "s" ? st.frm | v : st.frm & ~v) & 7;
  return choose(r, [
    [4, () => unit(w(A.csrrs(c.rd(), r.pick([A.CSR.fflags, A.CSR.frm, A.CSR.fcsr]), 0)))],
    [
      3,
      () => {
        const op = r.pick(["w", "s", "c"] as const);
        const v = r.int(-2048, 2047);
        const f = newFrm(op, v);
        if (f > 4) return unit(w(A.csrrs(c.rd(), A.CSR.fflags, c.rs())));
        st.frm = f;
        return withReg(v, (t) => (op === "w" ? A.csrrw : op === "s" ? A.csrrs : A.csrrc)(c.rd(), A.CSR.frm, t));
      },
    ],
    [
      3,
      () => {
        const op = r.pick(["w", "s", "c"] as const);
        const v = r.int(-2048, 2047);
        const f = newFrm(op, v >> 5);
        if (f > 4) return withReg(v & ~0xe0, (t) => A.csrrs(c.rd(), A.CSR.fcsr, t));
        st.frm = f;
        return withReg(v, (t) => (op === "w" ? A.csrrw : op === "s" ? A.csrrs : A.csrrc)(c.rd(), A.CSR.fcsr, t));
      },
    ],
    [
      3,
      () => {
        const op = r.pick(["w", "s", "c"] as const);
        return unit(w((op === "w" ? A.csrrw : op === "s" ? A.csrrs : A.csrrc)(c.rd(), A.CSR.fflags, c.rs())));
      },
    ],
    [
      4,
      () => {
        const csr = r.pick([A.CSR.fflags, A.CSR.frm, A.CSR.fcsr]);
        const op = r.pick(["w", "s", "c"] as const);
        const v = r.int(0, 31);
        const f = csr === A.CSR.frm ? newFrm(op, v) : csr === A.CSR.fcsr && op === "w" ? 0 : st.frm;
        if (f > 4) return unit(w(A.csrrsi(c.rd(), A.CSR.fflags, v)));
        st.frm = f;
        return unit(w((op === "w" ? A.csrrwi : op === "s" ? A.csrrsi : A.csrrci)(c.rd(), csr, v)));
      },
    ],
    [8, () => unit(fpOp(c, r.pick(["s", "d"] as const)))],
    [2, () => aluUnit(c)],
  ]);
}

function branchUnit(c: Ctx): Unit {
  const r = c.r;
  const BR = [A.beq, A.bne, A.blt, A.bge, A.bltu, A.bgeu];
  const dist = () => r.int(1, 6);
  return choose(r, [
    [
      6,
      () => {
        const op = r.pick(BR);
        const a = c.rs();
        const b = r.bool(0.2) ? a : c.rs();
        return { items: [{ size: 4, fix: (s, t) => op(a, b, t - s) }], target: dist() };
      },
    ],
    [
      2,
      () => {
        const rd = c.rd();
        return { items: [{ size: 4, fix: (s, t) => A.jal(rd, t - s) }], target: dist() };
      },
    ],
    [
      2,
      () => {
        // An odd target checks that jalr clears bit 0.
        const [t0, rd, odd] = [c.tmp(), c.rd(), r.int(0, 1)];
        return {
          items: [w(A.auipc(t0, 0)), { size: 4, fix: (s, t) => A.jalr(rd, t - (s - 4) + odd, t0) }],
          target: dist(),
        };
      },
    ],
    [8, () => aluUnit(c)],
  ]);
}

/** Compressed forms; registers avoid x0 where reserved (HINTs) and never write sp. */
function rvcUnit(c: Ctx): Unit {
  const r = c.r;
  const s6 = () => r.pick([1, -1, 31, -32, r.int(-32, 31)]);
  const nzs6 = () => {
    const v = s6();
    return v === 0 ? 1 : v;
  };
  const cl = (mk: (base: number, off: number) => number, wd: number, maxOff: number): Unit => {
    // c.addi4spn base', sp, imm; then off(base'), address within SCRATCH (sp..sp+1023).
    const base = c.cr();
    const imm = 8 * r.int(1, Math.floor((1024 - maxOff - 8) / 8));
    const off = wd * r.int(0, maxOff / wd);
    return unit(h(A.c_addi4spn(base, imm)), h(mk(base, off)));
  };
  const sp = (mk: (off: number) => number, wd: number, max: number) => unit(h(mk(wd * r.int(0, max / wd))));
  const rdNoSp = () => c.tmp();
  const crd = () => c.cr();
  return choose(r, [
    [3, () => unit(h(A.c_addi(rdNoSp(), nzs6())))],
    [2, () => unit(h(A.c_li(rdNoSp(), s6())))],
    [2, () => unit(h(A.c_lui(rdNoSp(), nzs6())))],
    [2, () => unit(h(A.c_addiw(rdNoSp(), s6())))],
    [2, () => unit(h(A.c_slli(rdNoSp(), r.int(1, 63))))],
    [2, () => unit(h(r.pick([A.c_srli, A.c_srai])(crd(), r.int(1, 63))))],
    [2, () => unit(h(A.c_andi(crd(), s6())))],
    [6, () => unit(h(r.pick([A.c_sub, A.c_xor, A.c_or, A.c_and, A.c_subw, A.c_addw])(crd(), c.cr())))],
    [2, () => unit(h(A.c_mv(rdNoSp(), r.int(1, 31))))],
    [2, () => unit(h(A.c_add(rdNoSp(), r.int(1, 31))))],
    [1, () => unit(h(A.c_addi4spn(crd(), 4 * r.int(1, 255))))],
    [2, () => cl((b, o) => A.c_lw(crd(), o, b), 4, 124)],
    [2, () => cl((b, o) => A.c_ld(crd(), o, b), 8, 248)],
    [2, () => cl((b, o) => A.c_sw(c.cr(), o, b), 4, 124)],
    [2, () => cl((b, o) => A.c_sd(c.cr(), o, b), 8, 248)],
    [1, () => cl((b, o) => A.c_fld(c.cr(), o, b), 8, 248)],
    [1, () => cl((b, o) => A.c_fsd(c.cr(), o, b), 8, 248)],
    [2, () => sp((o) => A.c_lwsp(rdNoSp(), o), 4, 252)],
    [2, () => sp((o) => A.c_ldsp(rdNoSp(), o), 8, 504)],
    [2, () => sp((o) => A.c_swsp(r.int(0, 31), o), 4, 252)],
    [2, () => sp((o) => A.c_sdsp(r.int(0, 31), o), 8, 504)],
    [1, () => sp((o) => A.c_fldsp(r.int(0, 31), o), 8, 504)],
    [1, () => sp((o) => A.c_fsdsp(r.int(0, 31), o), 8, 504)],
    [
      1,
      () => {
        const imm = 16 * r.pick([-31, -1, 1, 31, r.int(-31, 31) || 2]);
        const mid = r.pick([
          () => A.c_addi4spn(c.cr(), 4 * r.int(1, 63)),
          () => A.c_lwsp(rdNoSp(), 4 * r.int(0, 63)),
          () => A.c_sdsp(r.int(0, 31), 8 * r.int(0, 63)),
          () => A.c_mv(rdNoSp(), SP),
        ])();
        return unit(h(A.c_addi16sp(imm)), h(mid), h(A.c_addi16sp(-imm)));
      },
    ],
    [2, () => ({ items: [{ size: 2, fix: (s, t) => A.c_j(t - s) }], target: r.int(1, 6) })],
    [
      3,
      () => {
        const reg = c.cr();
        const op = r.bool() ? A.c_beqz : A.c_bnez;
        return { items: [{ size: 2, fix: (s, t) => op(reg, t - s) }], target: r.int(1, 6) };
      },
    ],
    [
      2,
      () => {
        const [t0, odd] = [c.tmp(), r.int(0, 1)];
        const op = r.bool() ? A.c_jr : A.c_jalr;
        return {
          items: [w(A.auipc(t0, 0)), { size: 4, fix: (s, t) => A.addi(t0, t0, t - (s - 4) + odd) }, h(op(t0))],
          target: r.int(1, 6),
        };
      },
    ],
    [4, () => aluUnit(c)],
  ]);
}

// ---- values ----------------------------------------------------------------------------------

const M64 = (1n << 64n) - 1n;
const sx32 = (v: number) => BigInt.asUintN(64, BigInt(v | 0));

export function interestingInt(r: Rng): bigint {
  return choose<bigint>(r, [
    [6, () => r.u64()],
    [2, () => 0n],
    [2, () => M64],
    [1, () => 1n << 63n],
    [1, () => (1n << 63n) - 1n],
    [1, () => sx32(0x80000000)],
    [1, () => 0x7fffffffn],
    [1, () => 0x80000000n],
    [1, () => 0xffffffffn],
    [3, () => BigInt.asUintN(64, BigInt(r.int(-16, 16)))],
    [2, () => BigInt.asUintN(64, (r.bool() ? -1n : 1n) << BigInt(r.int(0, 63)))],
    [2, () => sx32(r.u32())],
    [1, () => BigInt(r.u32())],
  ]);
}

const f64bits = (x: number) => {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x, true);
  return v.getBigUint64(0, true);
};
const f32bits = (x: number) => {
  const v = new DataView(new ArrayBuffer(4));
  v.setFloat32(0, x, true);
  return BigInt(v.getUint32(0, true));
};
const BOX = 0xffffffff00000000n;

const D_SPECIAL = [
  0n, 1n << 63n, 0x7ff0000000000000n, 0xfff0000000000000n, 0x7ff8000000000000n, 0xfff8000000000000n,
  0x7ff0000000000001n, 0x7ff4000000000000n, 0xfff0000000000123n, 0x7ff8000000000abcn,
  1n, 0x800fffffffffffffn, 0x000fffffffffffffn, 0x0010000000000000n, 0x8010000000000000n, 0x7fefffffffffffffn,
  0xffefffffffffffffn,
];
const D_NICE = [1, -1, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3, 0.1, 2147483647, 2147483647.5, 2147483648, -2147483648,
  -2147483648.5, -2147483649, 4294967295, 4294967295.5, 4294967296, -1e-300, 2 ** 63, -(2 ** 63), 2 ** 64,
  2 ** 64 - 2048, 2 ** 63 - 1024, 1e308, 2 ** -1022, 2 ** -1074, 3.4028234663852886e38, 3.4028235677973366e38,
  1.1754942e-38, 1.401298464324817e-45, 7.006492321624085e-46, 16777217, 9007199254740993];
const S_SPECIAL = [
  0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0xff812345, 0x7fc0abcd,
  1, 0x807fffff, 0x007fffff, 0x00800000, 0x80800000, 0x7f7fffff, 0xff7fffff,
];
const S_NICE = [1, -1, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3, 0.1, 2147483648, -2147483648, 4294967296, 2147483520,
  4294967040, 2 ** 63, -(2 ** 63), 2 ** 64, 16777216, 16777215, 2 ** -126, 2 ** -149, 1e-40, 255.5];

function randomD(r: Rng): bigint {
  // Random sign and mantissa; exponent near 1.0 (inexact arithmetic) or near the overflow and
  // underflow thresholds (overflow, subnormal results, slow paths).
  const sign = BigInt(r.int(0, 1)) << 63n;
  const e = choose(r, [
    [6, () => 1023 + r.int(-70, 70)],
    [1, () => r.int(1, 80)],
    [1, () => r.int(2046 - 80, 2046)],
    [1, () => r.pick([0, 0, 1, 2046, 512 + r.int(-30, 30), 1536 + r.int(-30, 30)])],
  ]);
  return sign | (BigInt(e) << 52n) | (r.u64() & ((1n << 52n) - 1n));
}
function randomS(r: Rng): bigint {
  const sign = BigInt(r.int(0, 1)) << 31n;
  const e = choose(r, [
    [6, () => 127 + r.int(-40, 40)],
    [1, () => r.int(1, 40)],
    [1, () => r.int(254 - 40, 254)],
    [1, () => r.pick([0, 0, 1, 254, 64 + r.int(-10, 10), 192 + r.int(-10, 10)])],
  ]);
  return sign | (BigInt(e) << 23n) | BigInt(r.u32() & 0x7fffff);
}
/** A double exactly halfway between two adjacent binary32 values (fcvt.s.d ties). */
function halfwayS(r: Rng): bigint {
  const f = Number(randomS(r) & 0x7fffffffn);
  const v = new DataView(new ArrayBuffer(8));
  v.setUint32(0, f, true);
  v.setUint32(4, f + 1, true);
  const a = v.getFloat32(0, true);
  const b = v.getFloat32(4, true);
  const mid = (a + b) / 2;
  return Number.isFinite(mid) ? f64bits(r.bool() ? -mid : mid) : f64bits(a);
}

export function interestingD(r: Rng): bigint {
  return choose<bigint>(r, [
    [5, () => randomD(r)],
    [3, () => r.pick(D_SPECIAL)],
    [4, () => f64bits(r.pick(D_NICE))],
    [2, () => f64bits(r.int(-100, 100))],
    [1, () => f64bits(r.int(-1000, 1000) + 0.5)],
    [1, () => halfwayS(r)],
    [1, () => r.u64()],
    [1, () => r.pick(D_SPECIAL) ^ BigInt(r.int(0, 3))],
  ]);
}
export function interestingS(r: Rng): bigint {
  const raw = choose<bigint>(r, [
    [5, () => randomS(r)],
    [3, () => BigInt(r.pick(S_SPECIAL))],
    [4, () => f32bits(r.pick(S_NICE))],
    [2, () => f32bits(r.int(-100, 100))],
    [1, () => f32bits(r.int(-1000, 1000) + 0.5)],
    [1, () => BigInt(r.u32())],
  ]);
  return BOX | raw;
}

const sgn = (r: Rng, v: bigint, bit: bigint) => (r.bool() ? v | (1n << bit) : v);
export function extremeD(r: Rng): bigint {
  const m = () => r.pick([0n, 1n, (1n << 52n) - 1n, (1n << 52n) - 2n, 1n << 51n, r.u64() & ((1n << 52n) - 1n)]);
  const e = () => r.pick([0, 0, 1, 2, 3, 2044, 2045, 2046, 2046, 1022, 1023, 1024, 511, 512, 513, 1534, 1535, 1536,
    r.int(1, 60), r.int(1986, 2046), r.int(970, 1076)]);
  return choose<bigint>(r, [
    [12, () => sgn(r, (BigInt(e()) << 52n) | m(), 63n)],
    [1, () => r.pick(D_SPECIAL)],
    [1, () => f64bits(r.pick(D_NICE))],
  ]);
}
export function extremeS(r: Rng): bigint {
  const m = () => r.pick([0, 1, 0x7fffff, 0x7ffffe, 0x400000, r.u32() & 0x7fffff]);
  const e = () => r.pick([0, 0, 1, 2, 3, 252, 253, 254, 254, 126, 127, 128, 63, 64, 65, 190, 191, 192,
    r.int(1, 30), r.int(224, 254), r.int(100, 150)]);
  return choose<bigint>(r, [
    [12, () => BOX | sgn(r, BigInt((e() << 23) | m()), 31n)],
    [1, () => BOX | BigInt(r.pick(S_SPECIAL))],
    [1, () => BOX | f32bits(r.pick(S_NICE))],
  ]);
}

// ---- program assembly ------------------------------------------------------------------------

export interface GenOptions {
  /** Number of body units (default 200). */
  length?: number;
  /** Emit only the first `truncate` units (for bisecting a mismatch). */
  truncate?: number;
  /** Replaces the random body with these 32-bit instructions (hand-written cases). */
  body?: number[];
}

class Buf {
  bytes: number[] = [];
  get pos() {
    return this.bytes.length;
  }
  put(it: { size: number; enc: number }) {
    for (let i = 0; i < it.size; i++) this.bytes.push((it.enc >>> (8 * i)) & 0xff);
  }
  w(enc: number) {
    this.put({ size: 4, enc });
  }
}

/** auipc+addi pair materialising `target` (an offset within the segment) into rd at offset `pos`. */
function la(buf: Buf, rd: number, target: number) {
  const delta = target - buf.pos;
  const hi = (delta + 0x800) >> 12;
  buf.w(A.auipc(rd, hi & 0xfffff));
  buf.w(A.addi(rd, rd, delta - hi * 4096));
}

export function generate(seed: number, cls: InsnClass, opts: GenOptions = {}): Program {
  const n = opts.length ?? 200;
  const r = new Rng(seed ^ Math.imul(CLASSES.indexOf(cls) + 1, 0x2545f491));

  // Initial values.
  const xInit: bigint[] = Array.from({ length: 32 }, () => interestingInt(r));
  const fInit: bigint[] = Array.from({ length: 32 }, () =>
    cls === "fpx_s" ? extremeS(r)
    : cls === "fpx_d" ? extremeD(r)
    : cls === "fp_s" || cls === "csr"
      ? r.bool(0.85) ? interestingS(r) : interestingD(r)
      : r.bool(0.8) ? interestingD(r) : interestingS(r),
  );
  if (cls.startsWith("fp") || cls === "csr") {
    // Integers that convert interestingly.
    for (let i = 1; i < 32; i++) if (r.bool(0.3)) xInit[i] = BigInt.asUintN(64, BigInt(r.int(-300, 300)));
  }
  const frm0 = r.int(0, 4);
  const scratch = new Uint8Array(SCRATCH_LEN);
  for (let i = 0; i < SCRATCH_LEN; i += 4) {
    const v = r.bool(0.2) ? 0 : r.u32();
    scratch[i] = v & 0xff;
    scratch[i + 1] = (v >>> 8) & 0xff;
    scratch[i + 2] = (v >>> 16) & 0xff;
    scratch[i + 3] = v >>> 24;
  }

  // Body units.
  const c = new Ctx(r);
  const st = { frm: frm0 };
  const gen = (): Unit => {
    switch (cls) {
      case "alu": return aluUnit(c);
      case "mul": return mulUnit(c);
      case "amo": return amoUnit(c);
      case "mem": return memUnit(c);
      case "fp_s": return fpUnit(c, "s");
      case "fp_d": return fpUnit(c, "d");
      case "fpx_s": return fpxUnit(c, "s");
      case "fpx_d": return fpxUnit(c, "d");
      case "rvc": return rvcUnit(c);
      case "branch": return branchUnit(c);
      case "csr": return csrUnit(c, st);
    }
  };
  const all = opts.body ? opts.body.map((e) => unit(w(e))) : Array.from({ length: n }, gen);
  const units = all.slice(0, Math.min(opts.truncate ?? all.length, all.length));

  // Code. The epilogue only uses sp-relative addresses, so it can be emitted first to learn its size.
  const spRel = (off: number) => off - SP_OFF;
  const epi = new Buf();
  for (let i = 1; i < 32; i++) epi.w(A.sd(i, spRel(DUMP + 8 * i), SP));
  for (let i = 0; i < 32; i++) epi.w(A.fsd(i, spRel(DUMP + 256 + 8 * i), SP));
  epi.w(A.csrrs(5, A.CSR.fcsr, 0));
  epi.w(A.sd(5, spRel(DUMP + 512), SP));
  epi.w(A.addi(10, 0, 1));
  epi.w(A.addi(11, SP, spRel(SCRATCH)));
  const hi = (OUT_LEN + 0x800) >> 12;
  epi.w(A.lui(12, hi));
  epi.w(A.addi(12, 12, OUT_LEN - hi * 4096));
  epi.w(A.addi(17, 0, 64));
  const ecallInEpi = epi.pos;
  epi.w(A.ecall());
  epi.w(A.addi(10, 0, 0));
  epi.w(A.addi(17, 0, 93));
  epi.w(A.ecall());

  const prologueLen = 8 + 30 * 4 + 32 * 4 + 8;
  const unitAddrs: number[] = [];
  let pos = prologueLen;
  for (const u of units) {
    unitAddrs.push(pos);
    for (const it of u.items) pos += it.size;
  }
  const bodyEnd = pos;
  const codeLen = bodyEnd + epi.pos;
  const dataOff = Math.ceil((codeLen + 16) / 4096) * 4096;

  // Prologue.
  const buf = new Buf();
  la(buf, SP, dataOff + SP_OFF);
  for (let i = 1; i < 32; i++) if (i !== SP) buf.w(A.ld(i, spRel(POOL + 8 * i), SP));
  for (let i = 0; i < 32; i++) buf.w(A.fld(i, spRel(POOL + 256 + 8 * i), SP));
  buf.w(A.csrrw(0, A.CSR.fcsr, 0));
  buf.w(A.csrrwi(0, A.CSR.frm, frm0));
  if (buf.pos !== prologueLen) throw new Error("prologue size");

  // Body.
  for (let ui = 0; ui < units.length; ui++) {
    const u = units[ui];
    const target = u.target === undefined ? bodyEnd : ui + u.target < units.length ? unitAddrs[ui + u.target] : bodyEnd;
    for (const it of u.items) {
      const enc = it.fix ? it.fix(buf.pos, target) : it.enc!;
      buf.put({ size: it.size, enc });
    }
  }
  if (buf.pos !== bodyEnd) throw new Error("body size");
  const ecallPos = buf.pos + ecallInEpi;
  buf.bytes.push(...epi.bytes);

  xInit[0] = 0n;
  xInit[SP] = BigInt(LOAD_ADDR + dataOff + SP_OFF);

  // Segment.
  const seg = new Uint8Array(dataOff + DUMP + DUMP_LEN);
  seg.set(buf.bytes, 0);
  const dv = new DataView(seg.buffer);
  for (let i = 0; i < 32; i++) dv.setBigUint64(dataOff + POOL + 8 * i, xInit[i], true);
  for (let i = 0; i < 32; i++) dv.setBigUint64(dataOff + POOL + 256 + 8 * i, fInit[i], true);
  seg.set(scratch, dataOff + SCRATCH);

  return {
    seed,
    cls,
    segment: seg,
    entry: LOAD_ADDR,
    bodyStart: LOAD_ADDR + prologueLen,
    bodyEnd: LOAD_ADDR + bodyEnd,
    ecallAddr: LOAD_ADDR + ecallPos,
    outAddr: LOAD_ADDR + dataOff + SCRATCH,
    units: units.length,
    totalUnits: all.length,
    unitAddrs: unitAddrs.map((a) => LOAD_ADDR + a),
    xInit,
    fInit,
    frm0,
    scratchInit: scratch,
  };
}

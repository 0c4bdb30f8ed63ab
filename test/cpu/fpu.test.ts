import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { executeFp, type FpState } from "../../src/cpu/fpu.js";

// ---------------------------------------------------------------------------------------------
// Helpers shared by the hand-written tests and the oracle comparison.

const RD = 10;
const RS1 = 11;
const RS2 = 12;
const RS3 = 13;

function newState(): FpState {
  return { x: new Int32Array(64), f: new Int32Array(64), fflags: 0, frm: 0 };
}
function setX(s: FpState, r: number, v: bigint): void {
  s.x[2 * r] = Number(BigInt.asIntN(32, v));
  s.x[2 * r + 1] = Number(BigInt.asIntN(32, v >> 32n));
}
function getX(s: FpState, r: number): bigint {
  return (BigInt(s.x[2 * r + 1] >>> 0) << 32n) | BigInt(s.x[2 * r] >>> 0);
}
function setF(s: FpState, r: number, v: bigint): void {
  s.f[2 * r] = Number(BigInt.asIntN(32, v));
  s.f[2 * r + 1] = Number(BigInt.asIntN(32, v >> 32n));
}
function getF(s: FpState, r: number): bigint {
  return (BigInt(s.f[2 * r + 1] >>> 0) << 32n) | BigInt(s.f[2 * r] >>> 0);
}
const dv = new DataView(new ArrayBuffer(8));
function dBits(v: number): bigint {
  dv.setFloat64(0, v);
  return dv.getBigUint64(0);
}
function sBits(v: number): bigint {
  dv.setFloat32(0, v);
  return 0xffffffff00000000n | BigInt(dv.getUint32(0));
}

/** OP-FP word with rd=x/f10, rs1=11, the given rs2 field and funct3/rm. */
function opfp(funct7: number, rs2: number, funct3: number, rd = RD, rs1 = RS1): number {
  return ((funct7 << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | 0x53) >>> 0;
}
/** R4-type fused multiply-add word with rd=10, rs1=11, rs2=12, rs3=13. */
function r4(opcode: number, fmt: number, rm: number): number {
  return ((RS3 << 27) | (fmt << 25) | (RS2 << 20) | (RS1 << 15) | (rm << 12) | (RD << 7) | opcode) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Hand-written checks (no oracle needed)

test("basic single and double arithmetic", () => {
  const s = newState();
  setF(s, RS1, sBits(1));
  setF(s, RS2, sBits(2));
  assert.equal(executeFp(s, opfp(0x00, RS2, 0)), true); // fadd.s rne
  assert.equal(getF(s, RD), sBits(3));
  assert.equal(s.fflags, 0);

  setF(s, RS1, dBits(1));
  setF(s, RS2, dBits(3));
  executeFp(s, opfp(0x0d, RS2, 1)); // fdiv.d rtz
  const down = getF(s, RD);
  executeFp(s, opfp(0x0d, RS2, 3)); // fdiv.d rup
  assert.equal(getF(s, RD) - down, 1n);
  assert.equal(down, dBits(1 / 3));
  assert.equal(s.fflags, 0x01);
});

test("fused multiply-add rounds once", () => {
  const s = newState();
  setF(s, RS1, dBits(1 + 2 ** -52));
  setF(s, RS2, dBits(1 - 2 ** -52));
  setF(s, RS3, dBits(-1));
  executeFp(s, r4(0x43, 1, 0));
  assert.equal(getF(s, RD), dBits(-(2 ** -104)));
  assert.equal(s.fflags, 0);
});

test("conversions saturate and set NV", () => {
  const s = newState();
  setF(s, RS1, 0x7ff8000000000000n);
  executeFp(s, opfp(0x61, 0, 1)); // fcvt.w.d
  assert.equal(getX(s, RD), 0x7fffffffn);
  assert.equal(s.fflags, 0x10);
  s.fflags = 0;
  setF(s, RS1, dBits(-1.5));
  executeFp(s, opfp(0x61, 1, 1)); // fcvt.wu.d rtz: rounds to -1, out of range
  assert.equal(getX(s, RD), 0n);
  assert.equal(s.fflags, 0x10);
  s.fflags = 0;
  setF(s, RS1, dBits(-0.5));
  executeFp(s, opfp(0x61, 3, 1)); // fcvt.lu.d rtz of -0.5 is 0, only inexact
  assert.equal(getX(s, RD), 0n);
  assert.equal(s.fflags, 0x01);
  s.fflags = 0;
  setF(s, RS1, sBits(3e9));
  executeFp(s, opfp(0x60, 1, 1)); // fcvt.wu.s: 3e9 sign-extended from 32 bits
  assert.equal(getX(s, RD), BigInt.asUintN(64, BigInt.asIntN(32, 3000000000n)));
});

test("NaN boxing, moves, rd=x0 and illegal encodings", () => {
  const s = newState();
  setF(s, RS1, 0x000000003f800000n); // 1.0f but not NaN-boxed
  setF(s, RS2, sBits(1));
  executeFp(s, opfp(0x00, RS2, 0));
  assert.equal(getF(s, RD), 0xffffffff7fc00000n);
  executeFp(s, opfp(0x70, 0, 1)); // fclass.s: canonical quiet NaN
  assert.equal(getX(s, RD), 1n << 9n);
  executeFp(s, opfp(0x70, 0, 0)); // fmv.x.w ignores boxing, sign-extends
  assert.equal(getX(s, RD), 0x3f800000n);
  setF(s, RS1, 0x12345678_80000001n);
  executeFp(s, opfp(0x70, 0, 0));
  assert.equal(getX(s, RD), 0xffffffff80000001n);
  setX(s, RS1, 0x1234567887654321n);
  executeFp(s, opfp(0x78, 0, 0)); // fmv.w.x
  assert.equal(getF(s, RD), 0xffffffff87654321n);

  setF(s, RS1, sBits(1));
  setF(s, RS2, sBits(1));
  s.x[0] = 0;
  s.x[1] = 0;
  assert.equal(executeFp(s, opfp(0x50, RS2, 2, 0)), true); // feq.s x0
  assert.equal(s.x[0], 0);

  assert.equal(executeFp(s, opfp(0x00, RS2, 5)), false); // reserved rm
  assert.equal(executeFp(s, opfp(0x02, RS2, 0)), false); // fmt H
  s.frm = 5;
  assert.equal(executeFp(s, opfp(0x00, RS2, 7)), false); // dynamic rm with invalid frm
  assert.equal(executeFp(s, opfp(0x10, RS2, 0)), true); // fsgnj needs no rm
  assert.equal(executeFp(s, opfp(0x2c, 1, 0)), false); // fsqrt with rs2 != 0
  assert.equal(executeFp(s, opfp(0x20, 0, 0)), false); // fcvt.s.d needs rs2 = 1
});

test("destination may alias the sources", () => {
  const s = newState();
  setF(s, 5, dBits(3));
  executeFp(s, ((5 << 27) | (1 << 25) | (5 << 20) | (5 << 15) | (7 << 12) | (5 << 7) | 0x43) >>> 0); // f5 = f5*f5+f5
  assert.equal(getF(s, 5), dBits(12));
  setF(s, 6, dBits(-2));
  executeFp(s, opfp(0x11, 6, 2, 6, 6)); // fsgnjx.d f6, f6, f6 = |f6|
  assert.equal(getF(s, 6), dBits(2));
});

test("fmin/fmax and signalling NaNs", () => {
  const s = newState();
  setF(s, RS1, 0x7ff0000000000001n); // sNaN
  setF(s, RS2, dBits(-0));
  executeFp(s, opfp(0x15, RS2, 0));
  assert.equal(getF(s, RD), dBits(-0));
  assert.equal(s.fflags, 0x10);
  setF(s, RS1, dBits(0));
  executeFp(s, opfp(0x15, RS2, 0)); // min(+0, -0) = -0
  assert.equal(getF(s, RD), dBits(-0));
  executeFp(s, opfp(0x15, RS2, 1)); // max(+0, -0) = +0
  assert.equal(getF(s, RD), dBits(0));
});

// ---------------------------------------------------------------------------------------------
// Oracle: the same instruction words executed by qemu-riscv64.

const HELPER_C = String.raw`
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <signal.h>
#include <setjmp.h>
#include <sys/mman.h>

struct st { uint64_t x[4]; uint64_t f[4]; uint64_t frm, fflags, xr, fr; };
extern void run_insn(struct st *s, void *code);
__asm__(
  ".text\n.globl run_insn\nrun_insn:\n"
  " addi sp, sp, -16\n sd ra, 0(sp)\n sd s0, 8(sp)\n"
  " mv s0, a0\n mv t0, a1\n"
  " ld a1, 8(s0)\n ld a2, 16(s0)\n ld a3, 24(s0)\n"
  " fld fa0, 32(s0)\n fld fa1, 40(s0)\n fld fa2, 48(s0)\n fld fa3, 56(s0)\n"
  " ld t1, 64(s0)\n fsrm t1\n fsflags zero\n"
  " ld a0, 0(s0)\n"
  " jalr ra, 0(t0)\n"
  " sd a0, 80(s0)\n fsd fa0, 88(s0)\n frflags t1\n sd t1, 72(s0)\n"
  " ld ra, 0(sp)\n ld s0, 8(sp)\n addi sp, sp, 16\n ret\n");

static sigjmp_buf jb;
static void on_ill(int sig) { (void)sig; siglongjmp(jb, 1); }

int main(void) {
  size_t cap = 1024, n = 0;
  struct st *v = malloc(cap * sizeof *v);
  uint32_t *ins = malloc(cap * sizeof *ins);
  unsigned int w;
  struct st t = {0};
  while (scanf("%x %lx %lx %lx %lx %lx %lx %lx %lx %lx", &w, &t.x[0], &t.x[1], &t.x[2], &t.x[3],
               &t.f[0], &t.f[1], &t.f[2], &t.f[3], &t.frm) == 10) {
    if (n == cap) { cap *= 2; v = realloc(v, cap * sizeof *v); ins = realloc(ins, cap * sizeof *ins); }
    v[n] = t; ins[n] = w; n++;
  }
  uint32_t *code = mmap(0, n * 8 + 8, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (code == MAP_FAILED) { perror("mmap"); return 1; }
  for (size_t i = 0; i < n; i++) { code[2 * i] = ins[i]; code[2 * i + 1] = 0x00008067; }
  __builtin___clear_cache((char *)code, (char *)(code + 2 * n));
  struct sigaction sa = {0};
  sa.sa_handler = on_ill;
  sigaction(SIGILL, &sa, 0);
  for (size_t i = 0; i < n; i++) {
    if (sigsetjmp(jb, 1)) { puts("ILL"); continue; }
    run_insn(&v[i], &code[2 * i]);
    printf("%016lx %016lx %lx\n", v[i].xr, v[i].fr, v[i].fflags);
  }
  return 0;
}
`;

function haveTool(cmd: string): boolean {
  const r = spawnSync(cmd, ["--version"], { stdio: "ignore" });
  return r.status === 0;
}

/** Deterministic PRNG (xorshift128) so failures are reproducible from the seed. */
class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    this.a = seed | 0 || 1;
    this.b = 0x9e3779b9;
    this.c = 0x243f6a88;
    this.d = 0xb7e15162;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    let t = this.d;
    const s = this.a;
    this.d = this.c;
    this.c = this.b;
    this.b = s;
    t ^= t << 11;
    t ^= t >>> 8;
    this.a = (t ^ s ^ (s >>> 19)) | 0;
    return this.a >>> 0;
  }
  int(n: number): number {
    return this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

const S_SPECIAL = [
  0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0xff800001,
  0x7fffffff, 0x3f800000, 0xbf800000, 0x00000001, 0x80000001, 0x007fffff, 0x807fffff, 0x00800000, 0x80800000,
  0x7f7fffff, 0xff7fffff, 0x3f000000, 0x3fc00000, 0x40200000, 0xc0200000, 0x4f000000, 0x4effffff, 0xcf000000,
  0xcf000001, 0x4f800000, 0x4f7fffff, 0x5f000000, 0x5effffff, 0xdf000000, 0xdf000001, 0x5f800000, 0x5f7fffff,
  0xbf7fffff, 0xbf000000, 0x3effffff, 0x00400000, 0x00800001, 0x7f000000, 0x4b000000, 0x4b7fffff, 0x3f800001,
];
const D_SPECIAL = [
  0x0000000000000000n,
  0x8000000000000000n,
  0x7ff0000000000000n,
  0xfff0000000000000n,
  0x7ff8000000000000n,
  0xfff8000000000000n,
  0x7ff0000000000001n,
  0x7ff4000000000000n,
  0xfff0000000000001n,
  0x7fffffffffffffffn,
  0x3ff0000000000000n,
  0xbff0000000000000n,
  0x0000000000000001n,
  0x8000000000000001n,
  0x000fffffffffffffn,
  0x0010000000000000n,
  0x8010000000000000n,
  0x7fefffffffffffffn,
  0xffefffffffffffffn,
  0x3fe0000000000000n,
  0x3ff8000000000000n,
  0x4004000000000000n,
  0xc004000000000000n,
  0x41dfffffffc00000n,
  0x41dfffffffe00000n,
  0x41e0000000000000n,
  0xc1e0000000000000n,
  0xc1e0000000100000n,
  0xc1dfffffffe00000n,
  0x41efffffffe00000n,
  0x41f0000000000000n,
  0x43e0000000000000n,
  0x43dfffffffffffffn,
  0xc3e0000000000000n,
  0xc3e0000000000001n,
  0x43f0000000000000n,
  0x43efffffffffffffn,
  0xbfefffffffffffffn,
  0xbfe0000000000000n,
  0x3fdfffffffffffffn,
  0x4330000000000000n,
  0x433fffffffffffffn,
  0x3ff0000000000001n,
  0x47efffffe0000000n,
  0x47efffff00000000n,
  0x47f0000000000000n,
  0x3810000000000000n,
  0x380fffffffffffffn,
  0x36a0000000000000n,
  0x369fffffffffffffn,
  0x3690000000000000n,
  0x47effffff0000000n,
  0x47efffffefffffffn,
  0x47effffff0000001n,
  0x47f0000000000001n,
  0x380ffffff0000000n,
  0x380ffffff8000000n,
];

/** Random binary32 bits biased towards interesting values. */
function genS(r: Rng, center = 127, spread = 40): number {
  const k = r.int(100);
  if (k < 15) return r.pick(S_SPECIAL) >>> 0;
  if (k < 30) return r.u32();
  const sign = r.chance(0.5) ? 0x80000000 : 0;
  let exp: number;
  if (k < 85) exp = Math.max(0, Math.min(254, center + r.int(2 * spread + 1) - spread));
  else if (k < 93)
    exp = r.int(4); // subnormal and low normal
  else exp = 251 + r.int(4); // near overflow
  let man = r.u32() & 0x7fffff;
  if (r.chance(0.3)) man &= ~((1 << r.int(23)) - 1); // short mantissas: exact results and ties
  if (r.chance(0.1)) man = r.chance(0.5) ? 0 : 0x7fffff;
  return (sign | (exp << 23) | man) >>> 0;
}
function genD(r: Rng, center = 1023, spread = 80): bigint {
  const k = r.int(100);
  if (k < 15) return r.pick(D_SPECIAL);
  if (k < 30) return r.u64();
  const sign = r.chance(0.5) ? 1n << 63n : 0n;
  let exp: number;
  if (k < 85) exp = Math.max(0, Math.min(2046, center + r.int(2 * spread + 1) - spread));
  else if (k < 93) exp = r.int(4);
  else exp = 2043 + r.int(4);
  let man = r.u64() & 0xfffffffffffffn;
  if (r.chance(0.3)) man &= ~((1n << BigInt(r.int(52))) - 1n);
  if (r.chance(0.1)) man = r.chance(0.5) ? 0n : 0xfffffffffffffn;
  return sign | (BigInt(exp) << 52n) | man;
}
function boxS(r: Rng, bits: number): bigint {
  // Occasionally not NaN-boxed, which must read as the canonical NaN.
  const hi = r.chance(0.03) ? BigInt(r.u32()) : 0xffffffffn;
  return (hi << 32n) | BigInt(bits >>> 0);
}
function expS(b: number): number {
  return (b >>> 23) & 0xff;
}
function expD(b: bigint): number {
  return Number((b >> 52n) & 0x7ffn);
}
function sFromBits(b: number): number {
  dv.setUint32(0, b >>> 0);
  return dv.getFloat32(0);
}
function dFromBits(b: bigint): number {
  dv.setBigUint64(0, b);
  return dv.getFloat64(0);
}
function nudgeD(b: bigint, r: Rng): bigint {
  return BigInt.asUintN(64, b + BigInt(r.int(9) - 4));
}
function nudgeS(b: number, r: Rng): number {
  return (b + r.int(9) - 4) >>> 0;
}

/** An odd integer with exactly `len` bits, as a number (len <= 53). */
function oddBits(r: Rng, len: number): number {
  if (len <= 1) return 1;
  const hi = 2 ** (len - 1);
  const rest = len > 32 ? r.u32() * 2 ** (len - 33) + (r.u32() >>> (65 - len)) : r.u32() >>> (33 - len);
  return hi + Math.floor(rest / 2) * 2 + 1;
}
function pow2(n: number): number {
  return 2 ** n;
}
function toS(r: Rng, v: number): number {
  return nudgeS(Number(sBits(v) & 0xffffffffn), r);
}

/**
 * Operand triples built to hit hard cases: products that land exactly on (or next to) rounding
 * midpoints, addends of half an ulp, results at the overflow and underflow thresholds.
 */
function genTargeted(r: Rng, dbl: boolean): [number, number, number] {
  const P = dbl ? 53 : 24;
  const emin = dbl ? -1022 : -126;
  const max = dbl ? Number.MAX_VALUE : 3.4028234663852886e38;
  const sgn = (): number => (r.chance(0.5) ? -1 : 1);
  const k = r.int(5);
  if (k === 0) {
    // a*b with P+1 or P+2 significant bits: ties and near-ties; c tiny, zero or cancelling
    const l1 = 1 + r.int(P);
    const l2 = Math.min(P, Math.max(1, P + 1 + r.int(2) - l1));
    const ea = r.int(40) - 20;
    const a = sgn() * oddBits(r, l1) * pow2(ea - l1);
    const b = sgn() * oddBits(r, l2) * pow2(r.int(40) - 20 - l2);
    const p = a * b;
    const j = r.int(4);
    const c =
      j === 0
        ? 0
        : j === 1
          ? sgn() * Math.abs(p) * pow2(-P - 10 - r.int(40))
          : j === 2
            ? -p
            : sgn() * Math.abs(p) * pow2(-P - 1);
    return [a, b, c];
  }
  if (k === 1) {
    // a*b or a/b near a threshold: min normal, min subnormal, half of it, max
    const T = r.pick([
      pow2(emin),
      pow2(emin - P + 1),
      pow2(emin - P),
      pow2(emin) * (1 - pow2(-P)),
      max,
      pow2(emin - 10),
    ]);
    const a = sgn() * (1 + r.int(1 << 20) / (1 << 20)) * pow2(r.int(60) - 30);
    return [a, sgn() * (T / Math.abs(a)), sgn() * T * (r.chance(0.5) ? pow2(-P - r.int(5)) : 1)];
  }
  if (k === 2) {
    // a + b where b is (close to) half an ulp of a
    const a = sgn() * (1 + r.int(1 << 20) / (1 << 20)) * pow2(r.int(40) - 20);
    const ulp = pow2(Math.floor(Math.log2(Math.abs(a))) - P + 1);
    return [a, sgn() * ulp * (r.int(4) + 0.5), sgn() * ulp * 0.5];
  }
  if (k === 3) {
    // perfect squares and their neighbours (exact sqrt)
    const m = oddBits(r, 1 + r.int(Math.floor(P / 2))) * pow2(r.int(40) - 20);
    return [m * m, m, -m * m];
  }
  // results near the overflow threshold
  const a = sgn() * (1 + r.int(1 << 20) / (1 << 20)) * pow2(r.int(20));
  return [a, sgn() * (max / Math.abs(a)), sgn() * max * (1 - r.int(3) * pow2(-P))];
}

/** Operand pairs/triples for arithmetic, with cancellation, exponent and near-boundary coupling. */
function genOperands(r: Rng, dbl: boolean, n: number): bigint[] {
  if (r.chance(0.25)) {
    const t = genTargeted(r, dbl);
    if (r.chance(0.5)) [t[0], t[1]] = [t[1], t[0]];
    if (n === 1) t[0] = Math.abs(t[0]);
    if (dbl) return t.map((v) => (r.chance(0.2) ? nudgeD(dBits(v), r) : dBits(v)));
    return t.map((v) => boxS(r, r.chance(0.2) ? toS(r, v) : Number(sBits(v) & 0xffffffffn)));
  }
  if (!dbl) {
    const a = genS(r);
    let b = genS(r);
    let c = genS(r);
    const k = r.int(10);
    if (k === 0)
      b = nudgeS((a ^ (r.chance(0.5) ? 0x80000000 : 0)) >>> 0, r); // cancellation
    else if (k === 1)
      b = genS(r, 254 - expS(a) + r.int(5) - 2, 2); // product near overflow
    else if (k === 2)
      b = genS(r, Math.max(0, 127 - expS(a) - 126 + r.int(50) - 25), 2); // product near underflow
    else if (k === 3) b = genS(r, expS(a) + r.int(60) - 30, 1); // far exponents
    if (n === 3) {
      const p = sFromBits(a) * sFromBits(b);
      const j = r.int(6);
      if (j === 0 && Number.isFinite(p)) c = nudgeS(Number(sBits(-p) & 0xffffffffn), r);
      else if (j === 1 && Number.isFinite(p) && p !== 0) {
        // addend far below the product: exercises double-rounding midpoints
        const e = Math.floor(Math.log2(Math.abs(p)));
        c = genS(r, Math.max(1, Math.min(254, e + 127 - 24 - r.int(40))), 1);
      }
    }
    return [boxS(r, a), boxS(r, b), boxS(r, c)];
  }
  const a = genD(r);
  let b = genD(r);
  let c = genD(r);
  const k = r.int(10);
  if (k === 0) b = nudgeD(a ^ (r.chance(0.5) ? 1n << 63n : 0n), r);
  else if (k === 1) b = genD(r, 2046 - expD(a) + r.int(5) - 2, 2);
  else if (k === 2) b = genD(r, Math.max(0, 1023 - expD(a) - 1022 + r.int(120) - 60), 2);
  else if (k === 3) b = genD(r, expD(a) + r.int(120) - 60, 1);
  if (n === 3) {
    const p = dFromBits(a) * dFromBits(b);
    const j = r.int(6);
    if (j <= 1 && Number.isFinite(p))
      c = nudgeD(dBits(-p), r); // heavy cancellation
    else if (j === 2 && Number.isFinite(p) && p !== 0) {
      const e = Math.floor(Math.log2(Math.abs(p)));
      c = genD(r, Math.max(1, Math.min(2046, e + 1023 - 53 - r.int(60))), 1);
    }
  }
  return [a, b, c];
}

/** Floats around integer-conversion limits and halfway points. */
function genCvtSource(r: Rng, dbl: boolean): bigint {
  if (r.chance(0.4)) return dbl ? genOperands(r, true, 2)[0] : genOperands(r, false, 2)[0];
  const limits = [0, 0.5, 1, 1.5, 2.5, 3.5, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 2 ** 52, 2 ** 23, 1e5];
  let v = r.pick(limits);
  if (r.chance(0.5)) v += (r.int(9) - 4) * (r.chance(0.5) ? 0.5 : 0.25);
  if (r.chance(0.5)) v = -v;
  if (dbl) return nudgeD(dBits(v), r);
  const bits = Number(sBits(v) & 0xffffffffn);
  return boxS(r, nudgeS(bits, r));
}

/** 64-bit integers of every length, including halfway patterns for rounding to 24/53 bits. */
function genInt(r: Rng): bigint {
  const k = r.int(10);
  if (k < 2) return r.u64();
  if (k < 3) return BigInt.asUintN(64, BigInt(r.int(2001) - 1000));
  const len = 1 + r.int(64);
  let v = r.u64() & ((1n << BigInt(len)) - 1n);
  if (k < 6) {
    // keep a 24 or 53-bit head, then a tie/near-tie tail
    const head = r.chance(0.5) ? 25 : 54;
    if (len > head) {
      const tail = BigInt(len - head);
      v = (v >> tail) << tail;
      const t = r.int(4);
      if (t === 1) v |= 1n;
      else if (t === 2) v |= (1n << tail) - 1n;
    }
  }
  if (r.chance(0.3)) v = -v;
  return BigInt.asUintN(64, v);
}

interface Vec {
  name: string;
  insn: number;
  x: bigint[]; // x10..x13
  f: bigint[]; // f10..f13
  frm: number;
}

function buildVectors(r: Rng, perCombo: number): Vec[] {
  const out: Vec[] = [];
  const rms = [0, 1, 2, 3, 4, 7];
  const push = (name: string, insn: number, src: (v: Vec) => void, frm?: number): void => {
    const v: Vec = {
      name,
      insn,
      x: [r.u64(), r.u64(), r.u64(), r.u64()],
      f: [r.u64(), r.u64(), r.u64(), r.u64()],
      frm: frm ?? r.int(5),
    };
    src(v);
    out.push(v);
  };
  for (const dbl of [false, true]) {
    const fmt = dbl ? 1 : 0;
    const P = dbl ? "d" : "s";
    const arith = (v: Vec, n: number): void => {
      const ops = genOperands(r, dbl, n);
      v.f[1] = ops[0];
      v.f[2] = ops[1];
      v.f[3] = ops[2];
    };
    for (const rm of rms) {
      const tag = `rm${rm}`;
      for (let i = 0; i < perCombo; i++) {
        push(`fadd.${P} ${tag}`, opfp(0x00 | fmt, RS2, rm), (v) => arith(v, 2));
        push(`fsub.${P} ${tag}`, opfp(0x04 | fmt, RS2, rm), (v) => arith(v, 2));
        push(`fmul.${P} ${tag}`, opfp(0x08 | fmt, RS2, rm), (v) => arith(v, 2));
        push(`fdiv.${P} ${tag}`, opfp(0x0c | fmt, RS2, rm), (v) => arith(v, 2));
        push(`fsqrt.${P} ${tag}`, opfp(0x2c | fmt, 0, rm), (v) => arith(v, 1));
        for (const [op, nm] of [
          [0x43, "fmadd"],
          [0x47, "fmsub"],
          [0x4b, "fnmsub"],
          [0x4f, "fnmadd"],
        ] as const) {
          push(`${nm}.${P} ${tag}`, r4(op, fmt, rm), (v) => arith(v, 3));
        }
        const ik = ["w", "wu", "l", "lu"];
        for (let kind = 0; kind < 4; kind++) {
          push(`fcvt.${ik[kind]}.${P} ${tag}`, opfp(0x60 | fmt, kind, rm), (v) => {
            v.f[1] = genCvtSource(r, dbl);
          });
          push(`fcvt.${P}.${ik[kind]} ${tag}`, opfp(0x68 | fmt, kind, rm), (v) => {
            v.x[1] = genInt(r);
          });
        }
        if (dbl) {
          push(`fcvt.d.s ${tag}`, opfp(0x21, 0, rm), (v) => {
            v.f[1] = boxS(r, genS(r));
          });
        } else {
          push(`fcvt.s.d ${tag}`, opfp(0x20, 1, rm), (v) => {
            // around the binary32 range and precision
            v.f[1] = r.chance(0.7) ? genD(r, 1023 + r.int(300) - 150, 4) : nudgeD(genD(r), r);
          });
        }
      }
    }
    for (let i = 0; i < perCombo * 3; i++) {
      for (let f3 = 0; f3 < 3; f3++) {
        push(`fsgnj${["", "n", "x"][f3]}.${P}`, opfp(0x10 | fmt, RS2, f3), (v) => arith(v, 2));
        push(`f${["le", "lt", "eq"][f3]}.${P}`, opfp(0x50 | fmt, RS2, f3), (v) => {
          arith(v, 2);
          if (r.chance(0.3)) v.f[2] = v.f[1];
        });
      }
      push(`fmin.${P}`, opfp(0x14 | fmt, RS2, 0), (v) => arith(v, 2));
      push(`fmax.${P}`, opfp(0x14 | fmt, RS2, 1), (v) => arith(v, 2));
      push(`fmv.x.${dbl ? "d" : "w"}`, opfp(0x70 | fmt, 0, 0), (v) => arith(v, 1));
      push(`fclass.${P}`, opfp(0x70 | fmt, 0, 1), (v) => arith(v, 1));
      push(`fmv.${dbl ? "d" : "w"}.x`, opfp(0x78 | fmt, 0, 0), () => {});
    }
    // Reserved static rounding modes, and dynamic rounding with an invalid frm.
    for (let i = 0; i < 20; i++) {
      push(`fadd.${P} rm5/6`, opfp(0x00 | fmt, RS2, 5 + (i & 1)), (v) => arith(v, 2));
      push(`fmadd.${P} frm bad`, r4(0x43, fmt, 7), (v) => arith(v, 3), 5 + (i % 3));
      push(`fcvt.w.${P} frm bad`, opfp(0x60 | fmt, 0, 7), (v) => arith(v, 1), 5 + (i % 3));
    }
  }
  return out;
}

const hex = (v: bigint): string => BigInt.asUintN(64, v).toString(16).padStart(16, "0");

test("matches qemu-riscv64 bit for bit, including fflags", { timeout: 120_000 }, (t) => {
  if (!haveTool("riscv64-linux-gnu-gcc") || !haveTool("qemu-riscv64")) {
    t.skip("riscv64-linux-gnu-gcc or qemu-riscv64 not installed (apt install gcc-riscv64-linux-gnu qemu-user)");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "yun-fpu-"));
  try {
    const src = join(dir, "fpu-oracle.c");
    const bin = join(dir, "fpu-oracle");
    writeFileSync(src, HELPER_C);
    const cc = spawnSync("riscv64-linux-gnu-gcc", ["-O1", "-static", "-march=rv64gc", "-mabi=lp64d", "-o", bin, src], {
      encoding: "utf8",
    });
    assert.equal(cc.status, 0, `compiling the oracle failed:\n${cc.stderr}`);

    const seed = Number(process.env.FPU_SEED ?? 0x5eed) >>> 0;
    const vecs = buildVectors(new Rng(seed), Number(process.env.FPU_PER_COMBO ?? 120));
    const input = vecs
      .map((v) => [v.insn.toString(16), ...v.x.map(hex), ...v.f.map(hex), v.frm.toString(16)].join(" "))
      .join("\n");
    const run = spawnSync("qemu-riscv64", [bin], { input, encoding: "utf8", maxBuffer: 1 << 28 });
    if (process.env.FPU_KEEP) writeFileSync(join(process.env.FPU_KEEP, "vectors.txt"), input);
    assert.equal(run.status, 0, `oracle failed (${run.signal ?? run.status}): ${run.stderr}`);
    const lines = run.stdout.trim().split("\n");
    assert.equal(lines.length, vecs.length);

    const failures: string[] = [];
    let failCount = 0;
    const s = newState();
    for (let i = 0; i < vecs.length; i++) {
      const v = vecs[i];
      for (let k = 0; k < 4; k++) {
        setX(s, RD + k, v.x[k]);
        setF(s, RD + k, v.f[k]);
      }
      s.frm = v.frm;
      s.fflags = 0;
      const ok = executeFp(s, v.insn);
      const got = ok ? `${hex(getX(s, RD))} ${hex(getF(s, RD))} ${s.fflags.toString(16)}` : "ILL";
      if (got !== lines[i]) {
        failCount++;
        if (failures.length < 25) {
          failures.push(
            `${v.name} insn=${v.insn.toString(16)} frm=${v.frm} x11=${hex(v.x[1])} f11=${hex(v.f[1])} ` +
              `f12=${hex(v.f[2])} f13=${hex(v.f[3])}\n    qemu: ${lines[i]}\n    ours: ${got}`,
          );
        }
      }
    }
    t.diagnostic(`seed ${seed}: ${vecs.length - failCount}/${vecs.length} vectors match`);
    assert.equal(failCount, 0, `${failCount} of ${vecs.length} vectors differ (seed ${seed}):\n${failures.join("\n")}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

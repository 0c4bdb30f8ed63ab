/**
 * Directed programs: every FP operation over a grid of edge-case operands and every static rounding
 * mode, and every integer R-type operation over edge-case integers. Each result and the fflags it raised are stored to SCRATCH, so the whole grid is compared,
 * not just the final registers. Bodies are plain instruction lists for `generate(..., { body })`.
 */
import * as A from "../support/rv-asm.js";
import { Rng } from "../support/rng.js";
import { SCRATCH_LEN } from "./generate.js";

const SP = 2;
const BOX = 0xffffffff00000000n;

export const EDGE_D: bigint[] = [
  0n, 0x8000000000000000n, 0x7ff0000000000000n, 0xfff0000000000000n, 0x7ff8000000000000n, 0x7ff4000000000000n,
  0x3ff0000000000000n, 0xbff0000000000000n, 0x3ff0000000000001n, 0x3fefffffffffffffn, 0x3fd5555555555555n,
  0x7fefffffffffffffn, 0xffefffffffffffffn, 0x7fe0000000000000n, 0x7fdfffffffffffffn, 0x0010000000000000n,
  0x8010000000000001n, 0x000fffffffffffffn, 0x0000000000000001n, 0x8008000000000000n, 0x5ff0000000000000n,
  0x2000000000000001n, 0x41effffffff00000n, 0x43e0000000000000n, 0xc1e0000000000000n, 0x400921fb54442d18n,
];
export const EDGE_S: bigint[] = [
  0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7fa00000, 0x3f800000, 0xbf800000, 0x3f800001,
  0x3f7fffff, 0x3eaaaaab, 0x7f7fffff, 0xff7fffff, 0x7f000000, 0x7effffff, 0x00800000, 0x80800001, 0x007fffff,
  0x00000001, 0x80400000, 0x5f800000, 0x20000001, 0x4f7fffff, 0x5f000000, 0xcf000000, 0x40490fdb,
].map((v) => BOX | BigInt(v));

const EDGE_INT: bigint[] = [
  0n, 1n, -1n, 2n, 3n, 0x7fffffffn, -0x80000000n, 0x80000000n, 0xffffffffn, 0x100000001n, 0x7fffffffffffffffn,
  -0x8000000000000000n, 0x1000001n, 0x20000000000001n, 0x7ffffffffffffdffn, -0x7ffffffffffffdffn, 0xffffffffffffffffn,
  0x123456789abcdefn,
];

type Fmt = "s" | "d";
const RMS = [0, 1, 2, 3, 4];

/** Emits `op` then stores its result (FP or integer), and optionally the fflags it raised, into the next slot. */
class Builder {
  bodies: number[][] = [];
  private cur: number[] = [];
  private slot = 0;
  private readonly slotSize: number;
  constructor(
    private readonly loads: number[],
    private readonly withFlags = true,
  ) {
    this.slotSize = withFlags ? 16 : 8;
    this.reset();
  }
  private reset() {
    this.cur = [...this.loads, A.csrrw(0, A.CSR.fflags, 0)];
    this.slot = 0;
  }
  emit(op: number, resultIsInt: boolean) {
    const off = this.slot * this.slotSize - 1024;
    this.cur.push(op);
    this.cur.push(resultIsInt ? A.sd(31, off, SP) : A.fsd(31, off, SP));
    if (this.withFlags) this.cur.push(A.csrrw(30, A.CSR.fflags, 0), A.sd(30, off + 8, SP));
    if (++this.slot === SCRATCH_LEN / this.slotSize) this.flush();
  }
  flush() {
    if (this.slot > 0) this.bodies.push(this.cur);
    this.reset();
  }
}

/** Every integer R-type op (RV64I + M) over all pairs of edge-case integers x5..x22. */
export function intMatrixBodies(): number[][] {
  const b = new Builder(EDGE_INT.flatMap((v, i) => A.li(5 + i, v)), false);
  const ops = [A.add, A.sub, A.sll, A.slt, A.sltu, A.xor, A.srl, A.sra, A.or, A.and, A.addw, A.subw, A.sllw, A.srlw,
    A.sraw, A.mul, A.mulh, A.mulhsu, A.mulhu, A.div, A.divu, A.rem, A.remu, A.mulw, A.divw, A.divuw, A.remw, A.remuw];
  for (const op of ops) for (let i = 0; i < EDGE_INT.length; i++) for (let j = 0; j < EDGE_INT.length; j++) b.emit(op(31, 5 + i, 5 + j), true);
  b.flush();
  return b.bodies;
}

/** f0..f25 = the edge values (via li + fmv), x5..x22 = the edge integers. */
function loads(fmt: Fmt): number[] {
  const vals = fmt === "d" ? EDGE_D : EDGE_S;
  const out: number[] = [];
  vals.forEach((v, i) => out.push(...A.li(5, v), A.fmv_d_x(i, 5)));
  EDGE_INT.forEach((v, i) => out.push(...A.li(5 + i, v)));
  return out;
}

export function matrixBodies(fmt: Fmt, seed = 1): number[][] {
  const S = fmt === "s";
  const n = (S ? EDGE_S : EDGE_D).length;
  const b = new Builder(loads(fmt));
  const r = new Rng(seed);
  const pick = <T>(s: T, d: T) => (S ? s : d);
  const bin = pick([A.fadd_s, A.fsub_s, A.fmul_s, A.fdiv_s], [A.fadd_d, A.fsub_d, A.fmul_d, A.fdiv_d]);
  for (const op of bin) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (const rm of RMS) b.emit(op(31, i, j, rm), false);
  for (let i = 0; i < n; i++) {
    for (const rm of RMS) {
      b.emit(pick(A.fsqrt_s, A.fsqrt_d)(31, i, rm), false);
      b.emit(pick(A.fcvt_d_s, A.fcvt_s_d)(31, i, rm), false);
      for (const cv of pick([A.fcvt_w_s, A.fcvt_wu_s, A.fcvt_l_s, A.fcvt_lu_s], [A.fcvt_w_d, A.fcvt_wu_d, A.fcvt_l_d, A.fcvt_lu_d]))
        b.emit(cv(31, i, rm), true);
    }
    for (let j = 0; j < n; j++) {
      for (const op of pick([A.fmin_s, A.fmax_s, A.fsgnj_s, A.fsgnjn_s, A.fsgnjx_s], [A.fmin_d, A.fmax_d, A.fsgnj_d, A.fsgnjn_d, A.fsgnjx_d]))
        b.emit(op(31, i, j), false);
      for (const op of pick([A.feq_s, A.flt_s, A.fle_s], [A.feq_d, A.flt_d, A.fle_d])) b.emit(op(31, i, j), true);
    }
    b.emit(pick(A.fclass_s, A.fclass_d)(31, i), true);
  }
  for (let k = 0; k < EDGE_INT.length; k++) {
    for (const rm of RMS) {
      for (const cv of pick([A.fcvt_s_w, A.fcvt_s_wu, A.fcvt_s_l, A.fcvt_s_lu], [A.fcvt_d_w, A.fcvt_d_wu, A.fcvt_d_l, A.fcvt_d_lu]))
        b.emit(cv(31, 5 + k, rm), false);
    }
  }
  // Fused ops: a random sample of operand triples, plus the exact-error pattern a*b - RN(a*b).
  const fused = pick([A.fmadd_s, A.fmsub_s, A.fnmsub_s, A.fnmadd_s], [A.fmadd_d, A.fmsub_d, A.fnmsub_d, A.fnmadd_d]);
  for (let k = 0; k < 3000; k++) {
    b.emit(r.pick(fused)(31, r.int(0, n - 1), r.int(0, n - 1), r.int(0, n - 1), r.pick(RMS)), false);
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      b.emit(pick(A.fmul_s, A.fmul_d)(31, i, j, r.pick(RMS)), false);
      b.emit(pick(A.fmsub_s, A.fmsub_d)(31, i, j, 31, r.pick(RMS)), false);
    }
  }
  b.flush();
  return b.bodies;
}

/**
 * RISC-V F and D extensions: OP-FP and the fused multiply-add opcodes.
 *
 * JavaScript arithmetic is IEEE binary64 round-to-nearest-even only, so every operation is done as
 * "RNE result in doubles + the exact sign of its rounding error", and the requested rounding mode
 * is then applied by stepping one ulp. Binary32 operations run in binary64 (where + - * / sqrt of
 * binary32 inputs never overflow or underflow, and error terms are exact) and are then rounded to
 * binary32 with the error sign. Binary64 operations near the overflow/underflow thresholds, where the
 * error terms stop being exact, and ambiguous fused multiply-adds fall back to exact BigInt arithmetic.
 */

export interface FpState {
  /** Integer registers: x[2*i] = low 32 bits, x[2*i+1] = high 32 bits of xi (as int32). Never write x0 (rd == 0 must be discarded). */
  x: Int32Array;
  /** FP registers, raw bits, same layout: f[2*i] = low word, f[2*i+1] = high word. Single-precision values are NaN-boxed (high word 0xffffffff); a single-precision read of a register that is not properly NaN-boxed yields the canonical NaN 0x7fc00000. */
  f: Int32Array;
  /** Accrued exception flags: NV=0x10 DZ=0x08 OF=0x04 UF=0x02 NX=0x01. OR new flags in. */
  fflags: number;
  /** Dynamic rounding mode from fcsr (0 RNE,1 RTZ,2 RDN,3 RUP,4 RMM). */
  frm: number;
}

const NV = 0x10;
const DZ = 0x08;
const OF = 0x04;
const UF = 0x02;
const NX = 0x01;

const RNE = 0;
const RTZ = 1;
const RDN = 2;
const RUP = 3;
const RMM = 4;

const CANON_S = 0x7fc00000;
const CANON_D_HI = 0x7ff80000;

// Shared scratch for bit reinterpretation (little-endian host: I32[0] is the low word of F64[0]).
const scratch = new ArrayBuffer(16);
const F64 = new Float64Array(scratch, 0, 1);
const F32 = new Float32Array(scratch, 8, 1);
const I32 = new Int32Array(scratch);
F64[0] = 1;
if (I32[1] !== 0x3ff00000) throw new Error("fpu: big-endian hosts are not supported");

const TWO32 = 4294967296;
const TWO52 = 2 ** 52;
const TWO63 = 2 ** 63;
const TWO64 = 2 ** 64;
const SPLIT = 134217729; // 2^27 + 1, Dekker's splitter
const MAXD = Number.MAX_VALUE;
const MAXF = 3.4028234663852886e38;
const MIDF_OVER = MAXF + 2 ** 103; // halfway between MAXF and 2^128
const TWO128 = 2 ** 128;
const MIN_NORM_F = 2 ** -126;
// Ranges inside which Dekker products and TwoSum are exact and one-ulp steps stay normal and finite.
const SAFE_HI = 2 ** 995;
const RES_HI = 2 ** 1020;
const RES_LO = 2 ** -968;
const OPND_LO = 2 ** -960;
const SQRT_HI = 2 ** 1000;
const FMA_RES_LO = 2 ** -1020;
// An error "value" that only carries a sign; used where ties are impossible (div, sqrt).
const TINY = Number.MIN_VALUE;

/** Exception flags raised by the instruction being executed. */
let flags = 0;

// ---------------------------------------------------------------------------------------------
// Bit helpers

function f32FromBits(b: number): number {
  I32[2] = b;
  return F32[0];
}
function f32Bits(v: number): number {
  F32[0] = v;
  return I32[2];
}
function f64FromBits(lo: number, hi: number): number {
  I32[0] = lo;
  I32[1] = hi;
  return F64[0];
}

/** Next binary64 of larger (up) or smaller magnitude; v is finite and, when !up, nonzero. */
function stepD(v: number, up: boolean): number {
  F64[0] = v;
  let lo = I32[0];
  let hi = I32[1];
  if (up) {
    lo = (lo + 1) | 0;
    if (lo === 0) hi = (hi + 1) | 0;
  } else {
    if (lo === 0) hi = (hi - 1) | 0;
    lo = (lo - 1) | 0;
  }
  I32[0] = lo;
  I32[1] = hi;
  return F64[0];
}

/** Next binary32 magnitude; v is a nonnegative binary32 value. */
function stepF(v: number, up: boolean): number {
  F32[0] = v;
  I32[2] = (I32[2] + (up ? 1 : -1)) | 0;
  return F32[0];
}

/** Error of p = RN(a*b) (Dekker); exact when |a|,|b| <= 2^995 and |p| >= 2^-968. */
function prodErr(a: number, b: number, p: number): number {
  let t = SPLIT * a;
  const ah = t - (t - a);
  const al = a - ah;
  t = SPLIT * b;
  const bh = t - (t - b);
  const bl = b - bh;
  return al * bl - (p - ah * bh - al * bh - ah * bl);
}

/** Error of s = RN(a+b) (Knuth TwoSum); exact unless s overflows. */
function sumErr(a: number, b: number, s: number): number {
  const bb = s - a;
  return a - (s - bb) + (b - bb);
}

function isNeg(v: number): boolean {
  return v < 0 || (v === 0 && 1 / v < 0);
}

/** Sign of an exact zero sum: equal-signed zeros keep their sign, anything else is +0 (-0 in RDN). */
function zeroSum(a: number, b: number, rm: number): number {
  if (a === 0 && b === 0 && isNeg(a) === isNeg(b)) return a;
  return rm === RDN ? -0 : 0;
}

function overflowD(neg: boolean, rm: number): number {
  flags |= OF | NX;
  const inf = rm === RNE || rm === RMM || (rm === RUP && !neg) || (rm === RDN && neg);
  const m = inf ? Infinity : MAXD;
  return neg ? -m : m;
}

// ---------------------------------------------------------------------------------------------
// Rounding of "s = RN(x), err = x - s" to binary64 in a directed mode.

/**
 * s is RN(x), finite, nonzero when err != 0, and |s| large enough that stepping never reaches the
 * subnormal range. err has the sign of x - s and, if x may be a tie, its exact value.
 */
function finishD(s: number, err: number, rm: number): number {
  if (err === 0) return s;
  flags |= NX;
  let r = s;
  switch (rm) {
    case RTZ:
      if (err < 0 !== s < 0) r = stepD(s, false);
      break;
    case RDN:
      if (err < 0) r = stepD(s, s < 0);
      break;
    case RUP:
      if (err > 0) r = stepD(s, s > 0);
      break;
    case RMM:
      if (err > 0 === s > 0) {
        const n = stepD(s, true);
        if (n - s === 2 * err) r = n;
      }
      break;
  }
  if (r === Infinity || r === -Infinity) flags |= OF;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Rounding to binary32 from "d = RN64(x), sign(x - d) = es". d must be a normal double or an exact
// value (es == 0); all binary32 operations computed in binary64 satisfy this.

function roundFCore(d: number, es: number, rm: number): number {
  const neg = d < 0;
  const a = neg ? -d : d;
  const em = neg ? -es : es; // direction of |x| relative to a
  if (a > TWO128 || (a === TWO128 && em >= 0)) {
    flags |= OF | NX;
    const inf = rm === RNE || rm === RMM || (rm === RUP && !neg) || (rm === RDN && neg);
    const m = inf ? Infinity : MAXF;
    return neg ? -m : m;
  }
  const r0 = Math.fround(a);
  let r: number;
  if (r0 === Infinity) {
    // MAXF + half ulp <= |x| < 2^128 (or just below the halfway point when em < 0)
    flags |= NX;
    const up = rm === RNE || rm === RMM ? !(a === MIDF_OVER && em < 0) : rm === RUP ? !neg : rm === RDN ? neg : false;
    if (up) {
      flags |= OF;
      r = Infinity;
    } else r = MAXF;
    return neg ? -r : r;
  }
  const diff = a - r0; // exact
  const t = diff > 0 ? 1 : diff < 0 ? -1 : em;
  if (t === 0) return d;
  flags |= NX;
  r = r0;
  if (rm === RNE || rm === RMM) {
    // fround(d) is the nearest binary32 to x unless d sits exactly on a midpoint.
    if (diff !== 0) {
      const n = stepF(r0, diff > 0);
      if (2 * Math.abs(diff) === Math.abs(n - r0)) {
        if (em !== 0) r = em > 0 === diff > 0 ? n : r0;
        else if (rm === RMM && diff > 0) r = n;
      }
    }
  } else {
    const away = rm === RUP ? !neg : rm === RDN ? neg : false;
    if (away) {
      if (t > 0) r = stepF(r0, true);
    } else if (t < 0) r = stepF(r0, false);
  }
  if (r === Infinity) flags |= OF;
  return neg ? -r : r;
}

function roundF(d: number, es: number, rm: number): number {
  if (d === 0 || d !== d || d === Infinity || d === -Infinity) return d;
  const before = flags;
  flags = 0;
  const r = roundFCore(d, es, rm);
  const inexact = (flags & NX) !== 0;
  flags |= before;
  if (inexact) {
    const a = d < 0 ? -d : d;
    const em = d < 0 ? -es : es;
    if (a < MIN_NORM_F || (a === MIN_NORM_F && em < 0)) {
      // Tininess after rounding: round again with the exponent range shifted out of the way.
      const saved = flags;
      const u = roundFCore(d * TWO64, es, rm);
      flags = saved;
      if (Math.abs(u) < 2 ** -62) flags |= UF;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Exact BigInt slow path for binary64.

let decM = 0;
let decE = 0;
/** |v| = decM * 2^decE with decM an integer < 2^53; v finite and nonzero. */
function decompose(v: number): void {
  F64[0] = v;
  const hi = I32[1];
  const be = (hi >>> 20) & 0x7ff;
  const m = (hi & 0xfffff) * TWO32 + (I32[0] >>> 0);
  if (be === 0) {
    decM = m;
    decE = -1074;
  } else {
    decM = m + TWO52;
    decE = be - 1075;
  }
}

function bitLength(m: bigint): number {
  // toString(2) is fine here: this is the rare slow path.
  return m === 0n ? 0 : m.toString(2).length;
}

/** 2^n as a double, n in [-1074, 1023]. */
function pow2(n: number): number {
  if (n >= -1022) return f64FromBits(0, (n + 1023) << 20);
  const k = n + 1074; // bit position in the subnormal fraction
  return k >= 32 ? f64FromBits(0, 1 << (k - 32)) : f64FromBits(1 << k, 0);
}

let rndInexact = false;
/**
 * Rounds m*2^e (plus a positive amount below 2^e when sticky; callers keep >= 2 spare bits then) to
 * a multiple of 2^lsb, returning the multiple.
 */
function rndBig(neg: boolean, m: bigint, e: number, sticky: boolean, lsb: number, rm: number): bigint {
  const sh = lsb - e;
  let q: bigint;
  let cmp: number; // remainder vs half an lsb: -1 below, 0 equal, 1 above
  if (sh <= 0) {
    q = m << BigInt(-sh);
    rndInexact = sticky;
    cmp = -1;
  } else {
    const bsh = BigInt(sh);
    q = m >> bsh;
    const rem = m & ((1n << bsh) - 1n);
    const half = 1n << (bsh - 1n);
    rndInexact = sticky || rem !== 0n;
    cmp = rem > half ? 1 : rem < half ? -1 : sticky ? 1 : 0;
  }
  if (!rndInexact) return q;
  let inc: boolean;
  switch (rm) {
    case RNE:
      inc = cmp > 0 || (cmp === 0 && (q & 1n) === 1n);
      break;
    case RMM:
      inc = cmp >= 0;
      break;
    case RDN:
      inc = neg;
      break;
    case RUP:
      inc = !neg;
      break;
    default:
      inc = false;
  }
  return inc ? q + 1n : q;
}

/** Rounds (-1)^neg * m * 2^e (m > 0, see rndBig for sticky) to binary64 with flags. */
function roundPackD(neg: boolean, m: bigint, e: number, sticky: boolean, rm: number): number {
  const E = e + bitLength(m) - 1;
  let lsb = E - 52;
  let tiny = false;
  if (E < -1022) {
    const qu = rndBig(neg, m, e, sticky, lsb, rm);
    tiny = bitLength(qu) - 1 + lsb < -1022;
    lsb = -1074;
  }
  const q = rndBig(neg, m, e, sticky, lsb, rm);
  if (rndInexact) flags |= tiny ? NX | UF : NX;
  if (q === 0n) return neg ? -0 : 0;
  if (lsb + bitLength(q) - 1 > 1023) return overflowD(neg, rm);
  const v = Number(q) * pow2(lsb);
  return neg ? -v : v;
}

function bigOf(v: number): bigint {
  decompose(v);
  return BigInt(decM);
}

function slowAddD(a: number, b: number, rm: number): number {
  let ma = bigOf(a);
  const ea = decE;
  let mb = bigOf(b);
  const eb = decE;
  const e = Math.min(ea, eb);
  ma <<= BigInt(ea - e);
  mb <<= BigInt(eb - e);
  const sum = (a < 0 ? -ma : ma) + (b < 0 ? -mb : mb);
  if (sum === 0n) return rm === RDN ? -0 : 0;
  return sum < 0n ? roundPackD(true, -sum, e, false, rm) : roundPackD(false, sum, e, false, rm);
}

function slowMulD(a: number, b: number, rm: number): number {
  const ma = bigOf(a);
  const ea = decE;
  const mb = bigOf(b);
  return roundPackD(a < 0 !== b < 0, ma * mb, ea + decE, false, rm);
}

function slowDivD(a: number, b: number, rm: number): number {
  const ma = bigOf(a);
  const ea = decE;
  const mb = bigOf(b);
  const eb = decE;
  const k = 56 + 53; // quotient keeps >= 56 bits
  const n = ma << BigInt(k);
  const q = n / mb;
  return roundPackD(a < 0 !== b < 0, q, ea - eb - k, q * mb !== n, rm);
}

function isqrt(n: bigint): bigint {
  let x = BigInt(Math.ceil(Math.sqrt(Number(n)) * (1 + 2 ** -40))) + 1n;
  for (;;) {
    const y = (x + n / x) >> 1n;
    if (y >= x) return x;
    x = y;
  }
}

function slowSqrtD(a: number, rm: number): number {
  const m = bigOf(a);
  let sh = 116;
  if ((decE - sh) & 1) sh++;
  const n = m << BigInt(sh);
  const r = isqrt(n);
  return roundPackD(false, r, (decE - sh) / 2, r * r !== n, rm);
}

/** Exact (a*b) + c, a*b and c both nonzero finite. */
function slowFmaD(a: number, b: number, c: number, rm: number): number {
  const ma = bigOf(a);
  const ea = decE;
  const mb = bigOf(b);
  const eb = decE;
  let mc = bigOf(c);
  const ec = decE;
  let mp = ma * mb;
  const ep = ea + eb;
  const e = Math.min(ep, ec);
  mp <<= BigInt(ep - e);
  mc <<= BigInt(ec - e);
  const sum = (a < 0 !== b < 0 ? -mp : mp) + (c < 0 ? -mc : mc);
  if (sum === 0n) return rm === RDN ? -0 : 0;
  return sum < 0n ? roundPackD(true, -sum, e, false, rm) : roundPackD(false, sum, e, false, rm);
}

// ---------------------------------------------------------------------------------------------
// Binary64 arithmetic on finite-or-special values (NaN inputs handled by the caller).

function addD(a: number, b: number, rm: number): number {
  const s = a + b;
  if (s !== s) {
    flags |= NV;
    return s;
  }
  if (s === Infinity || s === -Infinity) {
    if (a === Infinity || a === -Infinity || b === Infinity || b === -Infinity) return s;
    return slowAddD(a, b, rm);
  }
  if (s === 0) return zeroSum(a, b, rm);
  return finishD(s, sumErr(a, b, s), rm);
}

function mulD(a: number, b: number, rm: number): number {
  const p = a * b;
  if (p !== p) {
    flags |= NV;
    return p;
  }
  if (a === 0 || b === 0 || a === Infinity || a === -Infinity || b === Infinity || b === -Infinity) return p;
  const ap = Math.abs(p);
  if (ap >= RES_LO && ap < RES_HI && Math.abs(a) <= SAFE_HI && Math.abs(b) <= SAFE_HI) {
    return finishD(p, prodErr(a, b, p), rm);
  }
  return slowMulD(a, b, rm);
}

function divD(a: number, b: number, rm: number): number {
  const q = a / b;
  if (q !== q) {
    flags |= NV;
    return q;
  }
  if (a === Infinity || a === -Infinity || b === Infinity || b === -Infinity || a === 0) return q;
  if (b === 0) {
    flags |= DZ;
    return q;
  }
  const aq = Math.abs(q);
  const ab = Math.abs(b);
  const aa = Math.abs(a);
  if (aq >= RES_LO && aq <= SAFE_HI && ab <= SAFE_HI && aa >= OPND_LO && aa < RES_HI) {
    const p = q * b;
    const rem = a - p - prodErr(q, b, p);
    if (rem === 0) return q;
    return finishD(q, rem > 0 === b > 0 ? TINY : -TINY, rm);
  }
  return slowDivD(a, b, rm);
}

function sqrtD(a: number, rm: number): number {
  if (a === 0 || a === Infinity) return a;
  if (a < 0) {
    flags |= NV;
    return NaN;
  }
  if (a >= OPND_LO && a < SQRT_HI) {
    const r = Math.sqrt(a);
    const p = r * r;
    const rem = a - p - prodErr(r, r, p);
    if (rem === 0) return r;
    return finishD(r, rem > 0 ? TINY : -TINY, rm);
  }
  return slowSqrtD(a, rm);
}

/** Single-rounding a*b + c for binary64 (signs of the negated forms already applied). */
function fmaD(a: number, b: number, c: number, rm: number): number {
  const p = a * b;
  if (p !== p) {
    flags |= NV;
    return p;
  }
  if (c === Infinity || c === -Infinity || p === Infinity || p === -Infinity) {
    const pInf = a === Infinity || a === -Infinity || b === Infinity || b === -Infinity;
    if (pInf) {
      const s = p + c;
      if (s !== s) flags |= NV;
      return s;
    }
    if (c === Infinity || c === -Infinity) return c;
    // finite product that overflowed in binary64: exact path below
  } else if (a === 0 || b === 0) {
    return c === 0 ? zeroSum(p, c, rm) : c;
  } else if (c === 0) {
    return mulD(a, b, rm);
  }
  const ap = Math.abs(p);
  if (ap >= RES_LO && ap < RES_HI && Math.abs(c) < RES_HI && Math.abs(a) <= SAFE_HI && Math.abs(b) <= SAFE_HI) {
    // x = p + pe + c = r + w + v exactly.
    const pe = prodErr(a, b, p);
    const s = p + c;
    const t = sumErr(p, c, s);
    const u = t + pe;
    const v = sumErr(t, pe, u);
    const r = s + u;
    const w = sumErr(s, u, r);
    const ar = Math.abs(r);
    if (ar >= FMA_RES_LO && ar < RES_HI) {
      const delta = w + v; // sign and comparisons against powers of two are preserved by RN
      if (delta === 0) return r;
      const n = stepD(r, delta > 0 === r > 0);
      if (Math.abs(delta) < Math.abs(n - r) / 2) return finishD(r, delta, rm);
    }
  }
  return slowFmaD(a, b, c, rm);
}

// ---------------------------------------------------------------------------------------------
// Binary32 arithmetic via binary64 (NaN inputs handled by the caller).

function addS(a: number, b: number, rm: number): number {
  const s = a + b;
  if (s !== s) {
    flags |= NV;
    return s;
  }
  if (s === Infinity || s === -Infinity) return s; // only from infinite operands
  if (s === 0) return zeroSum(a, b, rm);
  const e = sumErr(a, b, s);
  return roundF(s, e > 0 ? 1 : e < 0 ? -1 : 0, rm);
}

function mulS(a: number, b: number, rm: number): number {
  const p = a * b; // exact
  if (p !== p) {
    flags |= NV;
    return p;
  }
  return roundF(p, 0, rm);
}

function divS(a: number, b: number, rm: number): number {
  const q = a / b;
  if (q !== q) {
    flags |= NV;
    return q;
  }
  if (a === Infinity || a === -Infinity || b === Infinity || b === -Infinity || a === 0) return q;
  if (b === 0) {
    flags |= DZ;
    return q;
  }
  const p = q * b;
  const rem = a - p - prodErr(q, b, p);
  return roundF(q, rem === 0 ? 0 : rem > 0 === b > 0 ? 1 : -1, rm);
}

function sqrtS(a: number, rm: number): number {
  if (a === 0 || a === Infinity) return a;
  if (a < 0) {
    flags |= NV;
    return NaN;
  }
  const r = Math.sqrt(a);
  const p = r * r;
  const rem = a - p - prodErr(r, r, p);
  return roundF(r, rem > 0 ? 1 : rem < 0 ? -1 : 0, rm);
}

function fmaS(a: number, b: number, c: number, rm: number): number {
  const p = a * b; // exact
  if (p !== p) {
    flags |= NV;
    return p;
  }
  const s = p + c;
  if (s !== s) {
    flags |= NV;
    return s;
  }
  if (s === Infinity || s === -Infinity) return s;
  if (s === 0) return zeroSum(p, c, rm);
  const e = sumErr(p, c, s);
  return roundF(s, e > 0 ? 1 : e < 0 ? -1 : 0, rm);
}

// ---------------------------------------------------------------------------------------------
// Conversions

function roundToInt(v: number, rm: number): number {
  const t = Math.trunc(v);
  const fr = v - t;
  if (fr === 0) return t;
  switch (rm) {
    case RTZ:
      return t;
    case RDN:
      return fr < 0 ? t - 1 : t;
    case RUP:
      return fr > 0 ? t + 1 : t;
    case RNE: {
      const af = Math.abs(fr);
      if (af > 0.5 || (af === 0.5 && t % 2 !== 0)) return fr > 0 ? t + 1 : t - 1;
      return t;
    }
    default:
      return Math.abs(fr) >= 0.5 ? (fr > 0 ? t + 1 : t - 1) : t;
  }
}

let outLo = 0;
let outHi = 0;
/** Float (as double, possibly NaN) to integer kind 0 W, 1 WU, 2 L, 3 LU, with RISC-V saturation. */
function fpToInt(v: number, kind: number, rm: number): void {
  let r = v;
  let ok = false;
  if (v === v) {
    r = roundToInt(v, rm);
    switch (kind) {
      case 0:
        ok = r >= -2147483648 && r <= 2147483647;
        break;
      case 1:
        ok = r >= 0 && r <= 4294967295;
        break;
      case 2:
        ok = r >= -TWO63 && r < TWO63;
        break;
      default:
        ok = r >= 0 && r < TWO64;
    }
  }
  if (ok) {
    if (r !== v) flags |= NX;
    if (kind < 2) {
      outLo = r | 0;
      outHi = outLo >> 31;
    } else {
      const hi = Math.floor(r / TWO32);
      outLo = (r - hi * TWO32) | 0;
      outHi = hi | 0;
    }
    return;
  }
  flags |= NV;
  const low = v < 0; // NaN saturates high
  switch (kind) {
    case 0:
      outLo = low ? -2147483648 : 2147483647;
      outHi = low ? -1 : 0;
      break;
    case 1:
      outLo = outHi = low ? 0 : -1;
      break;
    case 2:
      outLo = low ? 0 : -1;
      outHi = low ? -2147483648 : 2147483647;
      break;
    default:
      outLo = outHi = low ? 0 : -1;
  }
}

/** Integer register value as (RN64 value, exact error) for kind 0 W, 1 WU, 2 L, 3 LU. */
let intErr = 0;
function intToDouble(lo: number, hi: number, kind: number): number {
  intErr = 0;
  switch (kind) {
    case 0:
      return lo;
    case 1:
      return lo >>> 0;
    default: {
      const h = (kind === 2 ? hi : hi >>> 0) * TWO32;
      const l = lo >>> 0;
      const s = h + l;
      intErr = sumErr(h, l, s);
      return s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Classification

function classS(b: number): number {
  const neg = b < 0;
  const e = b & 0x7f800000;
  const m = b & 0x7fffff;
  if (e === 0x7f800000) {
    if (m === 0) return neg ? 1 << 0 : 1 << 7;
    return m & 0x400000 ? 1 << 9 : 1 << 8;
  }
  if (e === 0) {
    if (m === 0) return neg ? 1 << 3 : 1 << 4;
    return neg ? 1 << 2 : 1 << 5;
  }
  return neg ? 1 << 1 : 1 << 6;
}

function classD(lo: number, hi: number): number {
  const neg = hi < 0;
  const e = hi & 0x7ff00000;
  const mzero = (hi & 0xfffff) === 0 && lo === 0;
  if (e === 0x7ff00000) {
    if (mzero) return neg ? 1 << 0 : 1 << 7;
    return hi & 0x80000 ? 1 << 9 : 1 << 8;
  }
  if (e === 0) {
    if (mzero) return neg ? 1 << 3 : 1 << 4;
    return neg ? 1 << 2 : 1 << 5;
  }
  return neg ? 1 << 1 : 1 << 6;
}

function isNaNS(b: number): boolean {
  return (b & 0x7fffffff) > 0x7f800000;
}
function isSNaNS(b: number): boolean {
  return isNaNS(b) && (b & 0x400000) === 0;
}
function isNaND(lo: number, hi: number): boolean {
  const h = hi & 0x7fffffff;
  return h > 0x7ff00000 || (h === 0x7ff00000 && lo !== 0);
}
function isSNaND(lo: number, hi: number): boolean {
  return isNaND(lo, hi) && (hi & 0x80000) === 0;
}

// ---------------------------------------------------------------------------------------------
// Register access

/** Single-precision bits of f[r], or the canonical NaN if it is not NaN-boxed. */
function sBits(f: Int32Array, r: number): number {
  return f[2 * r + 1] === -1 ? f[2 * r] : CANON_S;
}

function writeS(f: Int32Array, rd: number, v: number): void {
  f[2 * rd] = v !== v ? CANON_S : f32Bits(v);
  f[2 * rd + 1] = -1;
}

function writeD(f: Int32Array, rd: number, v: number): void {
  if (v !== v) {
    f[2 * rd] = 0;
    f[2 * rd + 1] = CANON_D_HI;
    return;
  }
  F64[0] = v;
  f[2 * rd] = I32[0];
  f[2 * rd + 1] = I32[1];
}

function writeX(x: Int32Array, rd: number, lo: number, hi: number): void {
  if (rd !== 0) {
    x[2 * rd] = lo;
    x[2 * rd + 1] = hi;
  }
}

// ---------------------------------------------------------------------------------------------

/** Executes one OP-FP (opcode 0x53) or fused multiply-add (0x43 FMADD, 0x47 FMSUB, 0x4b FNMSUB, 0x4f FNMADD) instruction word (32-bit, uncompressed). Returns false if the encoding is illegal (unknown funct, reserved rounding mode 5/6, or rm=7 with frm invalid (>4)), true after executing it. */
export function executeFp(s: FpState, insn: number): boolean {
  const opcode = insn & 0x7f;
  const rd = (insn >>> 7) & 31;
  const funct3 = (insn >>> 12) & 7;
  const rs1 = (insn >>> 15) & 31;
  const rs2 = (insn >>> 20) & 31;
  const fmt = (insn >>> 25) & 3;
  const f = s.f;
  const rm = funct3 === 7 ? s.frm : funct3;
  const rmOk = rm <= 4;
  flags = 0;

  if (opcode !== 0x53) {
    if ((opcode !== 0x43 && opcode !== 0x47 && opcode !== 0x4b && opcode !== 0x4f) || fmt > 1 || !rmOk) return false;
    const rs3 = insn >>> 27;
    const negP = opcode === 0x4b || opcode === 0x4f;
    const negC = opcode === 0x47 || opcode === 0x4f;
    if (fmt === 0) {
      const ba = sBits(f, rs1);
      const bb = sBits(f, rs2);
      const bc = sBits(f, rs3);
      let r: number;
      if (isNaNS(ba) || isNaNS(bb) || isNaNS(bc)) {
        if (isSNaNS(ba) || isSNaNS(bb) || isSNaNS(bc)) flags |= NV;
        const a = f32FromBits(ba);
        const b = f32FromBits(bb);
        if ((a === 0 && (b === Infinity || b === -Infinity)) || (b === 0 && (a === Infinity || a === -Infinity))) {
          flags |= NV;
        }
        r = NaN;
      } else {
        const a = f32FromBits(ba);
        const b = f32FromBits(bb);
        const c = f32FromBits(bc);
        r = fmaS(negP ? -a : a, b, negC ? -c : c, rm);
      }
      writeS(f, rd, r);
    } else {
      const a = f64FromBits(f[2 * rs1], f[2 * rs1 + 1]);
      const b = f64FromBits(f[2 * rs2], f[2 * rs2 + 1]);
      const c = f64FromBits(f[2 * rs3], f[2 * rs3 + 1]);
      let r: number;
      if (a !== a || b !== b || c !== c) {
        if (
          isSNaND(f[2 * rs1], f[2 * rs1 + 1]) ||
          isSNaND(f[2 * rs2], f[2 * rs2 + 1]) ||
          isSNaND(f[2 * rs3], f[2 * rs3 + 1])
        ) {
          flags |= NV;
        }
        if ((a === 0 && (b === Infinity || b === -Infinity)) || (b === 0 && (a === Infinity || a === -Infinity))) {
          flags |= NV;
        }
        r = NaN;
      } else {
        r = fmaD(negP ? -a : a, b, negC ? -c : c, rm);
      }
      writeD(f, rd, r);
    }
    if (flags) s.fflags |= flags;
    return true;
  }

  const funct7 = insn >>> 25;
  if (fmt > 1) return false;
  const dbl = fmt === 1;

  switch (funct7 >> 2) {
    case 0x00: // FADD
    case 0x01: // FSUB
    case 0x02: // FMUL
    case 0x03: {
      // FDIV
      if (!rmOk) return false;
      const op = funct7 >> 2;
      if (dbl) {
        const lo1 = f[2 * rs1];
        const hi1 = f[2 * rs1 + 1];
        const lo2 = f[2 * rs2];
        const hi2 = f[2 * rs2 + 1];
        let r: number;
        if (isNaND(lo1, hi1) || isNaND(lo2, hi2)) {
          if (isSNaND(lo1, hi1) || isSNaND(lo2, hi2)) flags |= NV;
          r = NaN;
        } else {
          const a = f64FromBits(lo1, hi1);
          const b = f64FromBits(lo2, hi2);
          r = op === 0 ? addD(a, b, rm) : op === 1 ? addD(a, -b, rm) : op === 2 ? mulD(a, b, rm) : divD(a, b, rm);
        }
        writeD(f, rd, r);
      } else {
        const ba = sBits(f, rs1);
        const bb = sBits(f, rs2);
        let r: number;
        if (isNaNS(ba) || isNaNS(bb)) {
          if (isSNaNS(ba) || isSNaNS(bb)) flags |= NV;
          r = NaN;
        } else {
          const a = f32FromBits(ba);
          const b = f32FromBits(bb);
          r = op === 0 ? addS(a, b, rm) : op === 1 ? addS(a, -b, rm) : op === 2 ? mulS(a, b, rm) : divS(a, b, rm);
        }
        writeS(f, rd, r);
      }
      break;
    }
    case 0x0b: {
      // FSQRT
      if (rs2 !== 0 || !rmOk) return false;
      if (dbl) {
        const lo = f[2 * rs1];
        const hi = f[2 * rs1 + 1];
        let r: number;
        if (isNaND(lo, hi)) {
          if (isSNaND(lo, hi)) flags |= NV;
          r = NaN;
        } else r = sqrtD(f64FromBits(lo, hi), rm);
        writeD(f, rd, r);
      } else {
        const ba = sBits(f, rs1);
        let r: number;
        if (isNaNS(ba)) {
          if (isSNaNS(ba)) flags |= NV;
          r = NaN;
        } else r = sqrtS(f32FromBits(ba), rm);
        writeS(f, rd, r);
      }
      break;
    }
    case 0x04: {
      // FSGNJ, FSGNJN, FSGNJX
      if (funct3 > 2) return false;
      if (dbl) {
        const hi1 = f[2 * rs1 + 1];
        const hi2 = f[2 * rs2 + 1];
        const sign = funct3 === 0 ? hi2 : funct3 === 1 ? ~hi2 : hi1 ^ hi2;
        f[2 * rd] = f[2 * rs1];
        f[2 * rd + 1] = (hi1 & 0x7fffffff) | (sign & 0x80000000);
      } else {
        const b1 = sBits(f, rs1);
        const b2 = sBits(f, rs2);
        const sign = funct3 === 0 ? b2 : funct3 === 1 ? ~b2 : b1 ^ b2;
        f[2 * rd] = (b1 & 0x7fffffff) | (sign & 0x80000000);
        f[2 * rd + 1] = -1;
      }
      break;
    }
    case 0x05: {
      // FMIN, FMAX
      if (funct3 > 1) return false;
      const max = funct3 === 1;
      if (dbl) {
        const lo1 = f[2 * rs1];
        const hi1 = f[2 * rs1 + 1];
        const lo2 = f[2 * rs2];
        const hi2 = f[2 * rs2 + 1];
        const n1 = isNaND(lo1, hi1);
        const n2 = isNaND(lo2, hi2);
        if (isSNaND(lo1, hi1) || isSNaND(lo2, hi2)) flags |= NV;
        let pick2: boolean;
        if (n1 && n2) {
          writeD(f, rd, NaN);
          break;
        } else if (n1) pick2 = true;
        else if (n2) pick2 = false;
        else {
          const a = f64FromBits(lo1, hi1);
          const b = f64FromBits(lo2, hi2);
          if (a === b)
            pick2 = max ? hi1 < 0 : hi2 < 0; // only differs for +-0
          else pick2 = max ? b > a : b < a;
        }
        f[2 * rd] = pick2 ? lo2 : lo1;
        f[2 * rd + 1] = pick2 ? hi2 : hi1;
      } else {
        const b1 = sBits(f, rs1);
        const b2 = sBits(f, rs2);
        const n1 = isNaNS(b1);
        const n2 = isNaNS(b2);
        if (isSNaNS(b1) || isSNaNS(b2)) flags |= NV;
        let r: number;
        if (n1 && n2) r = CANON_S;
        else if (n1) r = b2;
        else if (n2) r = b1;
        else {
          const a = f32FromBits(b1);
          const b = f32FromBits(b2);
          if (a === b) r = max ? (b1 < 0 ? b2 : b1) : b2 < 0 ? b2 : b1;
          else r = (max ? b > a : b < a) ? b2 : b1;
        }
        f[2 * rd] = r;
        f[2 * rd + 1] = -1;
      }
      break;
    }
    case 0x08: {
      // FCVT.S.D (fmt S, rs2 1) / FCVT.D.S (fmt D, rs2 0)
      if (!rmOk || rs2 !== (dbl ? 0 : 1)) return false;
      if (dbl) {
        const b = sBits(f, rs1);
        if (isSNaNS(b)) flags |= NV;
        writeD(f, rd, isNaNS(b) ? NaN : f32FromBits(b));
      } else {
        const lo = f[2 * rs1];
        const hi = f[2 * rs1 + 1];
        if (isSNaND(lo, hi)) flags |= NV;
        writeS(f, rd, isNaND(lo, hi) ? NaN : roundF(f64FromBits(lo, hi), 0, rm));
      }
      break;
    }
    case 0x14: {
      // FLE (0), FLT (1), FEQ (2)
      if (funct3 > 2) return false;
      let a: number;
      let b: number;
      let snan: boolean;
      if (dbl) {
        snan = isSNaND(f[2 * rs1], f[2 * rs1 + 1]) || isSNaND(f[2 * rs2], f[2 * rs2 + 1]);
        a = f64FromBits(f[2 * rs1], f[2 * rs1 + 1]);
        b = f64FromBits(f[2 * rs2], f[2 * rs2 + 1]);
      } else {
        const b1 = sBits(f, rs1);
        const b2 = sBits(f, rs2);
        snan = isSNaNS(b1) || isSNaNS(b2);
        a = f32FromBits(b1);
        b = f32FromBits(b2);
      }
      if (a !== a || b !== b) {
        if (snan || funct3 !== 2) flags |= NV;
      }
      const r = funct3 === 2 ? a === b : funct3 === 1 ? a < b : a <= b;
      writeX(s.x, rd, r ? 1 : 0, 0);
      break;
    }
    case 0x18: {
      // FCVT.W/WU/L/LU from S or D
      if (rs2 > 3 || !rmOk) return false;
      let v: number;
      if (dbl) {
        const lo = f[2 * rs1];
        const hi = f[2 * rs1 + 1];
        v = isNaND(lo, hi) ? NaN : f64FromBits(lo, hi);
      } else {
        const b = sBits(f, rs1);
        v = isNaNS(b) ? NaN : f32FromBits(b);
      }
      fpToInt(v, rs2, rm);
      writeX(s.x, rd, outLo, outHi);
      break;
    }
    case 0x1a: {
      // FCVT.S/D from W/WU/L/LU
      if (rs2 > 3 || !rmOk) return false;
      const d = intToDouble(s.x[2 * rs1], s.x[2 * rs1 + 1], rs2);
      if (dbl) writeD(f, rd, finishD(d, intErr, rm));
      else writeS(f, rd, roundF(d, intErr > 0 ? 1 : intErr < 0 ? -1 : 0, rm));
      break;
    }
    case 0x1c: {
      // FMV.X.W / FMV.X.D (funct3 0), FCLASS (funct3 1)
      if (rs2 !== 0 || funct3 > 1) return false;
      if (funct3 === 0) {
        if (dbl) writeX(s.x, rd, f[2 * rs1], f[2 * rs1 + 1]);
        else writeX(s.x, rd, f[2 * rs1], f[2 * rs1] >> 31);
      } else {
        writeX(s.x, rd, dbl ? classD(f[2 * rs1], f[2 * rs1 + 1]) : classS(sBits(f, rs1)), 0);
      }
      break;
    }
    case 0x1e: {
      // FMV.W.X / FMV.D.X
      if (rs2 !== 0 || funct3 !== 0) return false;
      f[2 * rd] = s.x[2 * rs1];
      f[2 * rd + 1] = dbl ? s.x[2 * rs1 + 1] : -1;
      break;
    }
    default:
      return false;
  }
  if (flags) s.fflags |= flags;
  return true;
}

/**
 * A small RISC-V encoder for RV64IMAFDC + Zicsr, used to build test programs.
 *
 * Every function returns the instruction's encoding as an unsigned number (32-bit, or 16-bit for
 * the `c_*` forms). Operands follow assembly order: `lw(rd, imm, rs1)` is `lw rd, imm(rs1)`,
 * `sw(rs2, imm, rs1)` is `sw rs2, imm(rs1)`, `amoadd_w(rd, rs2, rs1)` is `amoadd.w rd, rs2, (rs1)`.
 * Branch and jump offsets are byte offsets from the instruction's own address.
 * Out-of-range operands throw, so generator bugs surface early.
 */

export type Reg = number;

/** Rounding modes; DYN (7) uses fcsr.frm. */
export const RM = { RNE: 0, RTZ: 1, RDN: 2, RUP: 3, RMM: 4, DYN: 7 } as const;

export const CSR = { fflags: 0x001, frm: 0x002, fcsr: 0x003 } as const;

function fail(what: string, v: number): never {
  throw new RangeError(`rv-asm: bad ${what}: ${v}`);
}
function reg(r: number, what = "register"): number {
  if (!Number.isInteger(r) || r < 0 || r > 31) fail(what, r);
  return r;
}
/** A compressed 3-bit register (x8..x15 / f8..f15). */
function creg(r: number): number {
  if (!Number.isInteger(r) || r < 8 || r > 15) fail("compressed register", r);
  return r - 8;
}
function simm(v: number, bits: number, what: string, align = 1): number {
  const lim = 2 ** (bits - 1);
  if (!Number.isInteger(v) || v < -lim || v >= lim || v % align !== 0) fail(what, v);
  return v;
}
function uimm(v: number, bits: number, what: string, align = 1): number {
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits || v % align !== 0) fail(what, v);
  return v;
}
/** Bits hi..lo of v (v may be negative; two's complement). */
function b(v: number, hi: number, lo = hi): number {
  return (v >> lo) & ((1 << (hi - lo + 1)) - 1);
}
function rm3(rm: number): number {
  if (!(rm >= 0 && rm <= 4) && rm !== 7) fail("rounding mode", rm);
  return rm;
}

// ---- base formats --------------------------------------------------------------------------

export function rType(op: number, rd: Reg, f3: number, rs1: Reg, rs2: Reg, f7: number): number {
  return ((f7 << 25) | (reg(rs2) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | op) >>> 0;
}
export function iType(op: number, rd: Reg, f3: number, rs1: Reg, imm: number): number {
  simm(imm, 12, "I-immediate");
  return (((imm & 0xfff) << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | op) >>> 0;
}
export function sType(op: number, f3: number, rs1: Reg, rs2: Reg, imm: number): number {
  simm(imm, 12, "S-immediate");
  return ((b(imm, 11, 5) << 25) | (reg(rs2) << 20) | (reg(rs1) << 15) | (f3 << 12) | (b(imm, 4, 0) << 7) | op) >>> 0;
}
export function bType(op: number, f3: number, rs1: Reg, rs2: Reg, off: number): number {
  simm(off, 13, "branch offset", 2);
  return (
    ((b(off, 12) << 31) |
      (b(off, 10, 5) << 25) |
      (reg(rs2) << 20) |
      (reg(rs1) << 15) |
      (f3 << 12) |
      (b(off, 4, 1) << 8) |
      (b(off, 11) << 7) |
      op) >>>
    0
  );
}
/** imm20 is the value placed in bits 31:12 (0..0xfffff, or its signed form). */
export function uType(op: number, rd: Reg, imm20: number): number {
  if (!Number.isInteger(imm20) || imm20 < -0x80000 || imm20 > 0xfffff) fail("U-immediate", imm20);
  return (((imm20 & 0xfffff) << 12) | (reg(rd) << 7) | op) >>> 0;
}
export function jType(op: number, rd: Reg, off: number): number {
  simm(off, 21, "jump offset", 2);
  return (
    ((b(off, 20) << 31) | (b(off, 10, 1) << 21) | (b(off, 11) << 20) | (b(off, 19, 12) << 12) | (reg(rd) << 7) | op) >>>
    0
  );
}
export function r4Type(op: number, rd: Reg, rm: number, rs1: Reg, rs2: Reg, rs3: Reg, fmt: number): number {
  return (
    ((reg(rs3) << 27) | (fmt << 25) | (reg(rs2) << 20) | (reg(rs1) << 15) | (rm3(rm) << 12) | (reg(rd) << 7) | op) >>> 0
  );
}

const OP = {
  LOAD: 0x03,
  LOAD_FP: 0x07,
  MISC_MEM: 0x0f,
  OP_IMM: 0x13,
  AUIPC: 0x17,
  OP_IMM_32: 0x1b,
  STORE: 0x23,
  STORE_FP: 0x27,
  AMO: 0x2f,
  OP: 0x33,
  LUI: 0x37,
  OP_32: 0x3b,
  MADD: 0x43,
  MSUB: 0x47,
  NMSUB: 0x4b,
  NMADD: 0x4f,
  OP_FP: 0x53,
  BRANCH: 0x63,
  JALR: 0x67,
  JAL: 0x6f,
  SYSTEM: 0x73,
} as const;

// ---- RV64I ---------------------------------------------------------------------------------

export const lui = (rd: Reg, imm20: number) => uType(OP.LUI, rd, imm20);
export const auipc = (rd: Reg, imm20: number) => uType(OP.AUIPC, rd, imm20);
export const jal = (rd: Reg, off: number) => jType(OP.JAL, rd, off);
export const jalr = (rd: Reg, imm: number, rs1: Reg) => iType(OP.JALR, rd, 0, rs1, imm);

const br = (f3: number) => (rs1: Reg, rs2: Reg, off: number) => bType(OP.BRANCH, f3, rs1, rs2, off);
export const beq = br(0);
export const bne = br(1);
export const blt = br(4);
export const bge = br(5);
export const bltu = br(6);
export const bgeu = br(7);

const ld_ = (f3: number) => (rd: Reg, imm: number, rs1: Reg) => iType(OP.LOAD, rd, f3, rs1, imm);
export const lb = ld_(0);
export const lh = ld_(1);
export const lw = ld_(2);
export const ld = ld_(3);
export const lbu = ld_(4);
export const lhu = ld_(5);
export const lwu = ld_(6);

const st_ = (f3: number) => (rs2: Reg, imm: number, rs1: Reg) => sType(OP.STORE, f3, rs1, rs2, imm);
export const sb = st_(0);
export const sh = st_(1);
export const sw = st_(2);
export const sd = st_(3);

const opi = (f3: number) => (rd: Reg, rs1: Reg, imm: number) => iType(OP.OP_IMM, rd, f3, rs1, imm);
export const addi = opi(0);
export const slti = opi(2);
export const sltiu = opi(3);
export const xori = opi(4);
export const ori = opi(6);
export const andi = opi(7);

function shiftImm(op: number, f3: number, hi: number, bits: number) {
  return (rd: Reg, rs1: Reg, shamt: number) =>
    (iType(op, rd, f3, rs1, 0) | (hi << 26) | (uimm(shamt, bits, "shift amount") << 20)) >>> 0;
}
export const slli = shiftImm(OP.OP_IMM, 1, 0, 6);
export const srli = shiftImm(OP.OP_IMM, 5, 0, 6);
export const srai = shiftImm(OP.OP_IMM, 5, 0x10, 6);
export const addiw = (rd: Reg, rs1: Reg, imm: number) => iType(OP.OP_IMM_32, rd, 0, rs1, imm);
export const slliw = shiftImm(OP.OP_IMM_32, 1, 0, 5);
export const srliw = shiftImm(OP.OP_IMM_32, 5, 0, 5);
export const sraiw = shiftImm(OP.OP_IMM_32, 5, 0x10, 5);

const rr = (op: number, f3: number, f7: number) => (rd: Reg, rs1: Reg, rs2: Reg) => rType(op, rd, f3, rs1, rs2, f7);
export const add = rr(OP.OP, 0, 0);
export const sub = rr(OP.OP, 0, 0x20);
export const sll = rr(OP.OP, 1, 0);
export const slt = rr(OP.OP, 2, 0);
export const sltu = rr(OP.OP, 3, 0);
export const xor = rr(OP.OP, 4, 0);
export const srl = rr(OP.OP, 5, 0);
export const sra = rr(OP.OP, 5, 0x20);
export const or = rr(OP.OP, 6, 0);
export const and = rr(OP.OP, 7, 0);
export const addw = rr(OP.OP_32, 0, 0);
export const subw = rr(OP.OP_32, 0, 0x20);
export const sllw = rr(OP.OP_32, 1, 0);
export const srlw = rr(OP.OP_32, 5, 0);
export const sraw = rr(OP.OP_32, 5, 0x20);

export const fence = (pred = 0xf, succ = 0xf) =>
  iType(OP.MISC_MEM, 0, 0, 0, (uimm(pred, 4, "fence pred") << 4) | uimm(succ, 4, "fence succ"));
export const fence_i = () => iType(OP.MISC_MEM, 0, 1, 0, 0);
export const ecall = () => 0x00000073;
export const ebreak = () => 0x00100073;

// ---- M ---------------------------------------------------------------------------------------

export const mul = rr(OP.OP, 0, 1);
export const mulh = rr(OP.OP, 1, 1);
export const mulhsu = rr(OP.OP, 2, 1);
export const mulhu = rr(OP.OP, 3, 1);
export const div = rr(OP.OP, 4, 1);
export const divu = rr(OP.OP, 5, 1);
export const rem = rr(OP.OP, 6, 1);
export const remu = rr(OP.OP, 7, 1);
export const mulw = rr(OP.OP_32, 0, 1);
export const divw = rr(OP.OP_32, 4, 1);
export const divuw = rr(OP.OP_32, 5, 1);
export const remw = rr(OP.OP_32, 6, 1);
export const remuw = rr(OP.OP_32, 7, 1);

// ---- A ---------------------------------------------------------------------------------------

function amo(funct5: number, f3: number) {
  return (rd: Reg, rs2: Reg, rs1: Reg, aq = false, rl = false) =>
    rType(OP.AMO, rd, f3, rs1, rs2, (funct5 << 2) | (aq ? 2 : 0) | (rl ? 1 : 0));
}
export const lr_w = (rd: Reg, rs1: Reg, aq = false, rl = false) => amo(0x02, 2)(rd, 0, rs1, aq, rl);
export const lr_d = (rd: Reg, rs1: Reg, aq = false, rl = false) => amo(0x02, 3)(rd, 0, rs1, aq, rl);
export const sc_w = amo(0x03, 2);
export const sc_d = amo(0x03, 3);
export const amoswap_w = amo(0x01, 2);
export const amoadd_w = amo(0x00, 2);
export const amoxor_w = amo(0x04, 2);
export const amoand_w = amo(0x0c, 2);
export const amoor_w = amo(0x08, 2);
export const amomin_w = amo(0x10, 2);
export const amomax_w = amo(0x14, 2);
export const amominu_w = amo(0x18, 2);
export const amomaxu_w = amo(0x1c, 2);
export const amoswap_d = amo(0x01, 3);
export const amoadd_d = amo(0x00, 3);
export const amoxor_d = amo(0x04, 3);
export const amoand_d = amo(0x0c, 3);
export const amoor_d = amo(0x08, 3);
export const amomin_d = amo(0x10, 3);
export const amomax_d = amo(0x14, 3);
export const amominu_d = amo(0x18, 3);
export const amomaxu_d = amo(0x1c, 3);

// ---- Zicsr -----------------------------------------------------------------------------------

function csrOp(f3: number) {
  return (rd: Reg, csr: number, rs1: Reg) =>
    (((uimm(csr, 12, "csr") << 20) | (reg(rs1) << 15) | (f3 << 12) | (reg(rd) << 7) | OP.SYSTEM) >>> 0);
}
function csrOpI(f3: number) {
  return (rd: Reg, csr: number, imm5: number) =>
    (((uimm(csr, 12, "csr") << 20) | (uimm(imm5, 5, "csr uimm") << 15) | (f3 << 12) | (reg(rd) << 7) | OP.SYSTEM) >>>
      0);
}
export const csrrw = csrOp(1);
export const csrrs = csrOp(2);
export const csrrc = csrOp(3);
export const csrrwi = csrOpI(5);
export const csrrsi = csrOpI(6);
export const csrrci = csrOpI(7);

// ---- F / D -----------------------------------------------------------------------------------

export const flw = (rd: Reg, imm: number, rs1: Reg) => iType(OP.LOAD_FP, rd, 2, rs1, imm);
export const fld = (rd: Reg, imm: number, rs1: Reg) => iType(OP.LOAD_FP, rd, 3, rs1, imm);
export const fsw = (rs2: Reg, imm: number, rs1: Reg) => sType(OP.STORE_FP, 2, rs1, rs2, imm);
export const fsd = (rs2: Reg, imm: number, rs1: Reg) => sType(OP.STORE_FP, 3, rs1, rs2, imm);

/** fmt: 0 = S, 1 = D. */
const fp3 = (f5: number, fmt: number) => (rd: Reg, rs1: Reg, rs2: Reg, rm: number = RM.DYN) =>
  rType(OP.OP_FP, rd, rm3(rm), rs1, rs2, (f5 << 2) | fmt);
const fpf3 = (f5: number, fmt: number, f3: number) => (rd: Reg, rs1: Reg, rs2: Reg) =>
  rType(OP.OP_FP, rd, f3, rs1, rs2, (f5 << 2) | fmt);
/** Unary forms with a fixed rs2 selector. */
const fp1 = (f5: number, fmt: number, sel: number) => (rd: Reg, rs1: Reg, rm: number = RM.DYN) =>
  rType(OP.OP_FP, rd, rm3(rm), rs1, sel, (f5 << 2) | fmt);
const fp1f3 = (f5: number, fmt: number, f3: number) => (rd: Reg, rs1: Reg) =>
  rType(OP.OP_FP, rd, f3, rs1, 0, (f5 << 2) | fmt);

export const fadd_s = fp3(0x00, 0);
export const fsub_s = fp3(0x01, 0);
export const fmul_s = fp3(0x02, 0);
export const fdiv_s = fp3(0x03, 0);
export const fsqrt_s = fp1(0x0b, 0, 0);
export const fsgnj_s = fpf3(0x04, 0, 0);
export const fsgnjn_s = fpf3(0x04, 0, 1);
export const fsgnjx_s = fpf3(0x04, 0, 2);
export const fmin_s = fpf3(0x05, 0, 0);
export const fmax_s = fpf3(0x05, 0, 1);
export const feq_s = fpf3(0x14, 0, 2);
export const flt_s = fpf3(0x14, 0, 1);
export const fle_s = fpf3(0x14, 0, 0);
export const fclass_s = fp1f3(0x1c, 0, 1);
export const fmv_x_w = fp1f3(0x1c, 0, 0);
export const fmv_w_x = fp1f3(0x1e, 0, 0);
export const fcvt_w_s = fp1(0x18, 0, 0);
export const fcvt_wu_s = fp1(0x18, 0, 1);
export const fcvt_l_s = fp1(0x18, 0, 2);
export const fcvt_lu_s = fp1(0x18, 0, 3);
export const fcvt_s_w = fp1(0x1a, 0, 0);
export const fcvt_s_wu = fp1(0x1a, 0, 1);
export const fcvt_s_l = fp1(0x1a, 0, 2);
export const fcvt_s_lu = fp1(0x1a, 0, 3);

export const fadd_d = fp3(0x00, 1);
export const fsub_d = fp3(0x01, 1);
export const fmul_d = fp3(0x02, 1);
export const fdiv_d = fp3(0x03, 1);
export const fsqrt_d = fp1(0x0b, 1, 0);
export const fsgnj_d = fpf3(0x04, 1, 0);
export const fsgnjn_d = fpf3(0x04, 1, 1);
export const fsgnjx_d = fpf3(0x04, 1, 2);
export const fmin_d = fpf3(0x05, 1, 0);
export const fmax_d = fpf3(0x05, 1, 1);
export const feq_d = fpf3(0x14, 1, 2);
export const flt_d = fpf3(0x14, 1, 1);
export const fle_d = fpf3(0x14, 1, 0);
export const fclass_d = fp1f3(0x1c, 1, 1);
export const fmv_x_d = fp1f3(0x1c, 1, 0);
export const fmv_d_x = fp1f3(0x1e, 1, 0);
export const fcvt_w_d = fp1(0x18, 1, 0);
export const fcvt_wu_d = fp1(0x18, 1, 1);
export const fcvt_l_d = fp1(0x18, 1, 2);
export const fcvt_lu_d = fp1(0x18, 1, 3);
export const fcvt_d_w = fp1(0x1a, 1, 0);
export const fcvt_d_wu = fp1(0x1a, 1, 1);
export const fcvt_d_l = fp1(0x1a, 1, 2);
export const fcvt_d_lu = fp1(0x1a, 1, 3);
export const fcvt_s_d = fp1(0x08, 0, 1);
export const fcvt_d_s = fp1(0x08, 1, 0);

const fused = (op: number, fmt: number) => (rd: Reg, rs1: Reg, rs2: Reg, rs3: Reg, rm: number = RM.DYN) =>
  r4Type(op, rd, rm, rs1, rs2, rs3, fmt);
export const fmadd_s = fused(OP.MADD, 0);
export const fmsub_s = fused(OP.MSUB, 0);
export const fnmsub_s = fused(OP.NMSUB, 0);
export const fnmadd_s = fused(OP.NMADD, 0);
export const fmadd_d = fused(OP.MADD, 1);
export const fmsub_d = fused(OP.MSUB, 1);
export const fnmsub_d = fused(OP.NMSUB, 1);
export const fnmadd_d = fused(OP.NMADD, 1);

// ---- C ---------------------------------------------------------------------------------------

function nz(v: number, what: string): number {
  if (v === 0) fail(what, v);
  return v;
}
function nzReg(r: number, what = "register (nonzero)"): number {
  return nz(reg(r, what), what);
}

/** CI format: funct3 | imm[5] | rd | imm[4:0] | op. */
function ci(f3: number, op: number, rd: number, imm6: number): number {
  return (f3 << 13) | (b(imm6, 5) << 12) | (rd << 7) | (b(imm6, 4, 0) << 2) | op;
}

export const c_nop = () => 0x0001;
export const c_ebreak = () => 0x9002;
export const c_addi = (rd: Reg, imm: number) => ci(0, 1, nzReg(rd), nz(simm(imm, 6, "c.addi imm"), "c.addi imm"));
export const c_addiw = (rd: Reg, imm: number) => ci(1, 1, nzReg(rd), simm(imm, 6, "c.addiw imm"));
export const c_li = (rd: Reg, imm: number) => ci(2, 1, nzReg(rd), simm(imm, 6, "c.li imm"));
/** imm is the 6-bit value placed in bits 17:12 of rd (signed, nonzero). */
export function c_lui(rd: Reg, imm: number): number {
  if (rd === 2) fail("c.lui rd", rd);
  return ci(3, 1, nzReg(rd), nz(simm(imm, 6, "c.lui imm"), "c.lui imm"));
}
export function c_addi16sp(imm: number): number {
  nz(simm(imm, 10, "c.addi16sp imm", 16), "c.addi16sp imm");
  return (
    (3 << 13) |
    (b(imm, 9) << 12) |
    (2 << 7) |
    (b(imm, 4) << 6) |
    (b(imm, 6) << 5) |
    (b(imm, 8, 7) << 3) |
    (b(imm, 5) << 2) |
    1
  );
}
export function c_addi4spn(rd: Reg, imm: number): number {
  nz(uimm(imm, 10, "c.addi4spn imm", 4), "c.addi4spn imm");
  return (b(imm, 5, 4) << 11) | (b(imm, 9, 6) << 7) | (b(imm, 2) << 6) | (b(imm, 3) << 5) | (creg(rd) << 2) | 0;
}
export const c_slli = (rd: Reg, sh: number) => ci(0, 2, nzReg(rd), nz(uimm(sh, 6, "c.slli shamt"), "c.slli shamt"));
const cShift = (f2: number) => (rd: Reg, sh: number) =>
  (4 << 13) | (b(nz(uimm(sh, 6, "shamt"), "shamt"), 5) << 12) | (f2 << 10) | (creg(rd) << 7) | (b(sh, 4, 0) << 2) | 1;
export const c_srli = cShift(0);
export const c_srai = cShift(1);
export const c_andi = (rd: Reg, imm: number) =>
  (4 << 13) | (b(simm(imm, 6, "c.andi imm"), 5) << 12) | (2 << 10) | (creg(rd) << 7) | (b(imm, 4, 0) << 2) | 1;
const cArith = (hi: number, f2: number) => (rd: Reg, rs2: Reg) =>
  (4 << 13) | (hi << 12) | (3 << 10) | (creg(rd) << 7) | (f2 << 5) | (creg(rs2) << 2) | 1;
export const c_sub = cArith(0, 0);
export const c_xor = cArith(0, 1);
export const c_or = cArith(0, 2);
export const c_and = cArith(0, 3);
export const c_subw = cArith(1, 0);
export const c_addw = cArith(1, 1);
export const c_mv = (rd: Reg, rs2: Reg) => (4 << 13) | (0 << 12) | (nzReg(rd) << 7) | (nzReg(rs2) << 2) | 2;
export const c_add = (rd: Reg, rs2: Reg) => (4 << 13) | (1 << 12) | (nzReg(rd) << 7) | (nzReg(rs2) << 2) | 2;
export const c_jr = (rs1: Reg) => (4 << 13) | (0 << 12) | (nzReg(rs1) << 7) | 2;
export const c_jalr = (rs1: Reg) => (4 << 13) | (1 << 12) | (nzReg(rs1) << 7) | 2;

// CL/CS: word forms use uimm[5:3] at 12:10 and uimm[2|6] at 6:5; double forms uimm[7:6] at 6:5.
function clsW(f3: number, r: Reg, off: number, rs1: Reg): number {
  uimm(off, 7, "c.lw/sw offset", 4);
  return (f3 << 13) | (b(off, 5, 3) << 10) | (creg(rs1) << 7) | (b(off, 2) << 6) | (b(off, 6) << 5) | (creg(r) << 2);
}
function clsD(f3: number, r: Reg, off: number, rs1: Reg): number {
  uimm(off, 8, "c.ld/sd offset", 8);
  return (f3 << 13) | (b(off, 5, 3) << 10) | (creg(rs1) << 7) | (b(off, 7, 6) << 5) | (creg(r) << 2);
}
export const c_fld = (rd: Reg, off: number, rs1: Reg) => clsD(1, rd, off, rs1);
export const c_lw = (rd: Reg, off: number, rs1: Reg) => clsW(2, rd, off, rs1);
export const c_ld = (rd: Reg, off: number, rs1: Reg) => clsD(3, rd, off, rs1);
export const c_fsd = (rs2: Reg, off: number, rs1: Reg) => clsD(5, rs2, off, rs1);
export const c_sw = (rs2: Reg, off: number, rs1: Reg) => clsW(6, rs2, off, rs1);
export const c_sd = (rs2: Reg, off: number, rs1: Reg) => clsD(7, rs2, off, rs1);

export function c_lwsp(rd: Reg, off: number): number {
  uimm(off, 8, "c.lwsp offset", 4);
  return (2 << 13) | (b(off, 5) << 12) | (nzReg(rd) << 7) | (b(off, 4, 2) << 4) | (b(off, 7, 6) << 2) | 2;
}
function ldspLike(f3: number, rd: number, off: number): number {
  uimm(off, 9, "c.ldsp offset", 8);
  return (f3 << 13) | (b(off, 5) << 12) | (rd << 7) | (b(off, 4, 3) << 5) | (b(off, 8, 6) << 2) | 2;
}
export const c_ldsp = (rd: Reg, off: number) => ldspLike(3, nzReg(rd), off);
export const c_fldsp = (rd: Reg, off: number) => ldspLike(1, reg(rd), off);
export function c_swsp(rs2: Reg, off: number): number {
  uimm(off, 8, "c.swsp offset", 4);
  return (6 << 13) | (b(off, 5, 2) << 9) | (b(off, 7, 6) << 7) | (reg(rs2) << 2) | 2;
}
function sdspLike(f3: number, rs2: number, off: number): number {
  uimm(off, 9, "c.sdsp offset", 8);
  return (f3 << 13) | (b(off, 5, 3) << 10) | (b(off, 8, 6) << 7) | (reg(rs2) << 2) | 2;
}
export const c_sdsp = (rs2: Reg, off: number) => sdspLike(7, rs2, off);
export const c_fsdsp = (rs2: Reg, off: number) => sdspLike(5, rs2, off);

export function c_j(off: number): number {
  simm(off, 12, "c.j offset", 2);
  return (
    (5 << 13) |
    (b(off, 11) << 12) |
    (b(off, 4) << 11) |
    (b(off, 9, 8) << 9) |
    (b(off, 10) << 8) |
    (b(off, 6) << 7) |
    (b(off, 7) << 6) |
    (b(off, 3, 1) << 3) |
    (b(off, 5) << 2) |
    1
  );
}
function cb(f3: number, rs1: Reg, off: number): number {
  simm(off, 9, "c.beqz/bnez offset", 2);
  return (
    (f3 << 13) |
    (b(off, 8) << 12) |
    (b(off, 4, 3) << 10) |
    (creg(rs1) << 7) |
    (b(off, 7, 6) << 5) |
    (b(off, 2, 1) << 3) |
    (b(off, 5) << 2) |
    1
  );
}
export const c_beqz = (rs1: Reg, off: number) => cb(6, rs1, off);
export const c_bnez = (rs1: Reg, off: number) => cb(7, rs1, off);

/** True if an encoding (its low 16 bits) is a compressed instruction. */
export const isCompressed = (enc: number) => (enc & 3) !== 3;

// ---- pseudo-instructions -----------------------------------------------------------------------

const sext12 = (v: bigint) => BigInt.asIntN(12, v);

/** `li rd, v` for any 64-bit value (lui/addiw, then slli/addi steps like GNU as / LLVM). */
export function li(rd: Reg, value: bigint): number[] {
  const v = BigInt.asIntN(64, value);
  if (v >= -(1n << 31n) && v < 1n << 31n) {
    const lo = sext12(v);
    const hi20 = Number(((v - lo) >> 12n) & 0xfffffn);
    if (hi20 === 0) return [addi(rd, 0, Number(lo))];
    const out = [lui(rd, hi20)];
    if (lo !== 0n || (v - lo) >> 12n === 1n << 19n) out.push(addiw(rd, rd, Number(lo)));
    return out;
  }
  const lo = sext12(v);
  let hi = (v - lo) >> 12n;
  let shift = 12;
  while ((hi & 1n) === 0n) {
    hi >>= 1n;
    shift++;
  }
  const out = li(rd, hi);
  out.push(slli(rd, rd, shift));
  if (lo !== 0n) out.push(addi(rd, rd, Number(lo)));
  return out;
}

/**
 * What both translator backends (JavaScript and WebAssembly) know about guest instructions: how a
 * block is cut (classify), immediates, the registers an instruction touches, and exit codes.
 */

/** Longest block, in instructions. */
export const MAX_BLOCK = 64;

/**
 * Exit codes of a translated block: 0..exits-1 name its linkable exits (each direct branch target,
 * the fall-through, an indirect jump); the negative ones are not linked.
 */
/** Leave, then interpret the instruction at pc (one the block could not express). */
export const EXIT_INTERP = -1;
/** Leave without linking (after an MMIO access raised attention, or after fence.i). */
export const EXIT_NOLINK = -2;
/**
 * Conditional branches a block may pass through (not taken) before the one that ends it. Longer
 * superblocks mean fewer trips through the dispatcher (measured: 8 beat 3 on gzip -9 and on boot).
 */
export const MAX_SIDE_EXITS = 8;

/** Decoded facts about one instruction of a block. */
export interface Insn {
  pc: number;
  insn: number;
  len: number;
}

// ------------------------------------------------------------------------------------------------
// Classification

export const KIND_NEXT = 0; // translated, the block goes on
export const KIND_END = 1; // translated, the block ends after it
export const KIND_STOP = 2; // not translated: the block ends before it (the interpreter runs it)
export const KIND_BRANCH = 3; // a conditional branch: a side exit when taken, the block may go on

export function classify(insn: number): number {
  const f3 = (insn >> 12) & 7;
  const f7 = insn >>> 25;
  switch (insn & 0x7f) {
    case 0x13:
      if (f3 === 1) return insn >>> 26 === 0 ? KIND_NEXT : KIND_STOP;
      if (f3 === 5) return insn >>> 26 === 0 || insn >>> 26 === 0x10 ? KIND_NEXT : KIND_STOP;
      return KIND_NEXT;
    case 0x33:
      if (f7 === 0 || f7 === 1) return KIND_NEXT;
      if (f7 === 0x20) return f3 === 0 || f3 === 5 ? KIND_NEXT : KIND_STOP;
      return KIND_STOP;
    case 0x1b:
      if (f3 === 0) return KIND_NEXT;
      if (f3 === 1) return f7 === 0 ? KIND_NEXT : KIND_STOP;
      if (f3 === 5) return f7 === 0 || f7 === 0x20 ? KIND_NEXT : KIND_STOP;
      return KIND_STOP;
    case 0x3b:
      if (f7 === 0) return f3 === 0 || f3 === 1 || f3 === 5 ? KIND_NEXT : KIND_STOP;
      if (f7 === 0x20) return f3 === 0 || f3 === 5 ? KIND_NEXT : KIND_STOP;
      if (f7 === 1) return f3 === 0 || f3 >= 4 ? KIND_NEXT : KIND_STOP;
      return KIND_STOP;
    case 0x37:
    case 0x17:
      return KIND_NEXT;
    case 0x6f:
      return KIND_END;
    case 0x67:
      return f3 === 0 ? KIND_END : KIND_STOP;
    case 0x63:
      return f3 === 2 || f3 === 3 ? KIND_STOP : KIND_BRANCH;
    case 0x03:
      return f3 === 7 ? KIND_STOP : KIND_NEXT;
    case 0x23:
      return f3 <= 3 ? KIND_NEXT : KIND_STOP;
    case 0x0f:
      return f3 === 0 ? KIND_NEXT : f3 === 1 ? KIND_END : KIND_STOP;
    case 0x2f:
    case 0x07:
    case 0x27:
    case 0x53:
    case 0x43:
    case 0x47:
    case 0x4b:
    case 0x4f:
      return KIND_NEXT; // through Hart.executeHelper, which checks the encoding
    case 0x73:
      return csrInBlock(insn) ? KIND_NEXT : KIND_STOP;
    default:
      return KIND_STOP;
  }
}

/**
 * CSRs a block may access through Hart.executeHelper and go on: none whose write changes what a
 * block assumes at entry (satp: the address space; mstatus: MPRV and MPP pick the data TLB) or the
 * instruction count (mcycle, minstret). A write that may make an interrupt pending raises attention,
 * which ends the block after the instruction, as for MMIO.
 */
const CSR_IN_BLOCK = new Set([
  ...[0x001, 0x002, 0x003], // fflags, frm, fcsr
  ...[0xc00, 0xc01, 0xc02], // cycle, time, instret (read-only: a write traps, precisely)
  ...[0x100, 0x104, 0x105, 0x106, 0x10a], // sstatus (no MPRV or MPP in it), sie, stvec, scounteren, senvcfg
  ...[0x140, 0x141, 0x142, 0x143, 0x144], // sscratch, sepc, scause, stval, sip
  ...[0x304, 0x340, 0x341, 0x342, 0x343, 0x344, 0xf14], // mie, mscratch, mepc, mcause, mtval, mip, mhartid
]);
/** CSRs a block may read but not write (csrrs/csrrc with x0 or a zero immediate write nothing). */
const CSR_READ_IN_BLOCK = new Set([0x180, 0x300]); // satp, mstatus

/** A CSR instruction (csrrw, csrrs, csrrc and their immediate forms) that a block may run and go on after. */
export function csrInBlock(insn: number): boolean {
  const f3 = (insn >> 12) & 7;
  if (f3 === 0 || f3 === 4) return false; // ecall, xret, wfi, sfence.vma; reserved
  const csr = insn >>> 20;
  if (CSR_IN_BLOCK.has(csr)) return true;
  return (f3 & 3) !== 1 && ((insn >> 15) & 31) === 0 && CSR_READ_IN_BLOCK.has(csr);
}

export function iImm(insn: number): number {
  return insn >> 20;
}
export function sImm(insn: number): number {
  return ((insn >> 25) << 5) | ((insn >> 7) & 0x1f);
}
export function bImm(insn: number): number {
  return ((insn >> 31) << 12) | (((insn >> 7) & 1) << 11) | (((insn >> 25) & 0x3f) << 5) | (((insn >> 8) & 0xf) << 1);
}
export function jImm(insn: number): number {
  return (
    ((insn >> 31) << 20) | (((insn >> 12) & 0xff) << 12) | (((insn >> 20) & 1) << 11) | (((insn >> 21) & 0x3ff) << 1)
  );
}

/** Registers an instruction reads and writes (integer file), for loads at entry and write-backs. */
export function registersOf(insn: number): { reads: number[]; writes: number[] } {
  const rd = (insn >> 7) & 31,
    rs1 = (insn >> 15) & 31,
    rs2 = (insn >> 20) & 31;
  switch (insn & 0x7f) {
    case 0x13:
    case 0x1b:
    case 0x03:
    case 0x67:
      return { reads: [rs1], writes: [rd] };
    case 0x33:
    case 0x3b:
      return { reads: [rs1, rs2], writes: [rd] };
    case 0x37:
    case 0x17:
    case 0x6f:
      return { reads: [], writes: [rd] };
    case 0x63:
    case 0x23:
      return { reads: [rs1, rs2], writes: [] };
    case 0x07:
      return { reads: [rs1], writes: [] };
    case 0x27:
      return { reads: [rs1], writes: [] };
    case 0x2f:
      return { reads: [rs1, rs2], writes: [rd] };
    case 0x53:
      return { reads: [rs1], writes: [rd] }; // fmv.x, fcvt.x, fclass, compares write rd
    case 0x73: // a CSR instruction (csrInBlock); the immediate forms read no register
      return { reads: (insn >> 12) & 4 ? [] : [rs1], writes: [rd] };
    default:
      return { reads: [], writes: [] };
  }
}

/** How a block ends after its last instruction: */
export const FALL_NONE = 0; // it does not: the last instruction jumps or branches (its own exits)
export const FALL_INTERP = 1; // before an instruction the block cannot express: the interpreter runs it
export const FALL_LINKED = 2; // at the page end or the length limit: a linkable exit to the next instruction

export function fallThrough(insns: Insn[]): number {
  const last = insns[insns.length - 1];
  const kind = classify(last.insn);
  if (kind === KIND_END || kind === KIND_BRANCH) return FALL_NONE;
  const next = last.pc + last.len;
  return insns.length < MAX_BLOCK && (next & 0xfff) !== 0 ? FALL_INTERP : FALL_LINKED;
}

/**
 * The translator's WebAssembly backend: a block of guest instructions becomes a WebAssembly
 * function, which V8 compiles at once with its baseline compiler (Liftoff: microseconds per block,
 * where JavaScript waits in V8's bytecode interpreter until Turbofan, milliseconds later, finds it
 * hot) and later optimizes by itself when the function stays hot.
 *
 * Guest RAM is the WebAssembly memory from address 0 (bus.ts, allocateRam); after it come the
 * hart's registers, exchange slots and TLB sets (HART_AREA), and one byte per RAM page that marks
 * pages holding translated code. A 64-bit guest register is an i64 local inside the block: loaded
 * at entry, written back at every exit and before every call out, as the JavaScript backend does
 * with its int32 pairs (jit.ts has the rules for precise faults, links and loops; this file follows
 * them exit for exit, so the dispatcher treats both kinds of block alike).
 *
 * A block function is (budget: i32, tlb: i32) -> exit: `budget` is how many instructions it may
 * retire (a looping block iterates within it), `tlb` the offset of the hart's current data TLB
 * set. It leaves the pc (f64) and the instructions it retired (i32) in the hart area's slots.
 * Accesses the inline TLB cannot serve, AMOs, F/D and fence.i call the one imported function
 * `slow(op, a, b, c, d)` after the block has made the state precise (registers written back, pc
 * and the count of instructions before this one in the slots): a trap thrown there unwinds
 * through the WebAssembly frames to the hart's run loop.
 */
import {
  fallThrough,
  FALL_INTERP,
  FALL_LINKED,
  bImm,
  EXIT_INTERP,
  EXIT_NOLINK,
  iImm,
  jImm,
  registersOf,
  sImm,
  type Insn,
} from "./block.js";
import { HART_AREA, LINK_SLOT_BYTES } from "./bus.js";

/** A block's exit to the block named in the hub's `next` slot, which the hub (hubBytes) calls next. */
export const EXIT_CHAIN = -3;

/**
 * Entries of a hart's jump cache (pc -> block, for indirect jumps; as QEMU's tb_jmp_cache): the
 * first link slots of its link area, indexed by (pc >> 1) & (JUMP_CACHE_ENTRIES - 1).
 */
export const JUMP_CACHE_ENTRIES = 4096;

/** Operations of the imported `slow` function. */
export const SLOW_LOAD = 0; // + log2(size): a = address lo, b = address hi; returns the low word (high word in the hi slot)
export const SLOW_STORE = 4; // + log2(size): a, b = address, c, d = value
export const SLOW_HELPER = 8; // a = instruction (AMO, F/D): Hart.executeHelper
export const SLOW_FENCE_I = 9;

/** Where the code sits in the memory: what generated code addresses. */
export interface WasmLayout {
  /** Pages (64 KiB) of the memory, which is imported with exactly this size. */
  memoryPages: number;
  /** A shared memory (SMP: the harts' threads run on the same RAM). */
  shared: boolean;
  /** Offset of the hart area (bus.hartArea). */
  hartArea: number;
  /** Offset of the code-page marks (bus.codePagesArea). */
  codePagesArea: number;
  /** Offset of the jump cache (the start of bus.linkArea). */
  jumpCache: number;
}

// ------------------------------------------------------------------------------------------------
// Encoding

const I32 = 0x7f;
const I64 = 0x7e;
const F64 = 0x7c;
const VOID = 0x40;

const OP = {
  unreachable: 0x00,
  block: 0x02,
  loop: 0x03,
  if: 0x04,
  else: 0x05,
  end: 0x0b,
  br: 0x0c,
  brIf: 0x0d,
  return: 0x0f,
  call: 0x10,
  callIndirect: 0x11,
  drop: 0x1a,
  select: 0x1b,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  i32Load: 0x28,
  i64Load: 0x29,
  f64Load: 0x2b,
  i32Load8u: 0x2d,
  i64Load8s: 0x30,
  i64Load8u: 0x31,
  i64Load16s: 0x32,
  i64Load16u: 0x33,
  i64Load32s: 0x34,
  i64Load32u: 0x35,
  i32Store: 0x36,
  i64Store: 0x37,
  f64Store: 0x39,
  i64Store8: 0x3c,
  i64Store16: 0x3d,
  i64Store32: 0x3e,
  i32Const: 0x41,
  i64Const: 0x42,
  f64Const: 0x44,
  i32Eqz: 0x45,
  i32Eq: 0x46,
  i32Ne: 0x47,
  i32LeS: 0x4c,
  i64Eqz: 0x50,
  i64Eq: 0x51,
  i64Ne: 0x52,
  i64LtS: 0x53,
  i64LtU: 0x54,
  i64GeS: 0x59,
  i64GeU: 0x5a,
  f64Eq: 0x61,
  i32Add: 0x6a,
  i32Sub: 0x6b,
  i32Mul: 0x6c,
  i32DivS: 0x6d,
  i32DivU: 0x6e,
  i32RemS: 0x6f,
  i32RemU: 0x70,
  i32And: 0x71,
  i32Or: 0x72,
  i32Shl: 0x74,
  i32ShrS: 0x75,
  i32ShrU: 0x76,
  i64Add: 0x7c,
  i64Sub: 0x7d,
  i64Mul: 0x7e,
  i64DivS: 0x7f,
  i64DivU: 0x80,
  i64RemS: 0x81,
  i64RemU: 0x82,
  i64And: 0x83,
  i64Or: 0x84,
  i64Xor: 0x85,
  i64Shl: 0x86,
  i64ShrS: 0x87,
  i64ShrU: 0x88,
  i32WrapI64: 0xa7,
  i64ExtendI32S: 0xac,
  i64ExtendI32U: 0xad,
  f64ConvertI64S: 0xb9,
  f64Add: 0xa0,
  i64TruncF64S: 0xb0,
  i32Extend8S: 0xc0,
  i32Extend16S: 0xc1,
} as const;

/** A growable byte buffer: generated code is written straight into it. */
export class ByteWriter {
  bytes: Uint8Array<ArrayBuffer> = new Uint8Array(1 << 16);
  length = 0;
  push(b: number): void {
    if (this.length === this.bytes.length) this.grow(1);
    this.bytes[this.length++] = b;
  }
  append(src: Uint8Array): void {
    if (this.length + src.length > this.bytes.length) this.grow(src.length);
    this.bytes.set(src, this.length);
    this.length += src.length;
  }
  private grow(need: number): void {
    const next = new Uint8Array(Math.max(this.bytes.length * 2, this.length + need));
    next.set(this.bytes.subarray(0, this.length));
    this.bytes = next;
  }
  /** A copy of what was written from `start` on. */
  slice(start = 0): Uint8Array<ArrayBuffer> {
    return this.bytes.slice(start, this.length);
  }
}

function uleb(out: ByteWriter, v: number): void {
  do {
    let byte = v % 128;
    v = Math.floor(v / 128);
    if (v !== 0) byte |= 0x80;
    out.push(byte);
  } while (v !== 0);
}

/** Signed LEB128 of an integer (exact for any safe integer; 64-bit values as the guest's sign-extended numbers). */
function sleb(out: ByteWriter, value: number): void {
  if (value >= -0x40000000 && value < 0x40000000) {
    let v = value | 0;
    for (;;) {
      const byte = v & 0x7f;
      v >>= 7;
      if ((v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0)) {
        out.push(byte);
        return;
      }
      out.push(byte | 0x80);
    }
  }
  let v = BigInt(value);
  for (;;) {
    const byte = Number(v & 0x7fn);
    v >>= 7n;
    if ((v === 0n && (byte & 0x40) === 0) || (v === -1n && (byte & 0x40) !== 0)) {
      out.push(byte);
      return;
    }
    out.push(byte | 0x80);
  }
}

function section(out: ByteWriter, id: number, body: ByteWriter): void {
  out.push(id);
  uleb(out, body.length);
  out.append(body.bytes.subarray(0, body.length));
}

/** An imported memory's type: exactly `memoryPages` pages, shared when the layout says so. */
function memoryType(out: ByteWriter, layout: WasmLayout): void {
  out.push(0x02);
  out.push(layout.shared ? 0x03 : 0x01);
  uleb(out, layout.memoryPages);
  uleb(out, layout.memoryPages);
}

function name(out: ByteWriter, s: string): void {
  uleb(out, s.length);
  for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i));
}

const F64_BYTES = new Float64Array(1);
const F64_U8 = new Uint8Array(F64_BYTES.buffer);

// ------------------------------------------------------------------------------------------------
// Code generation

/** OP-IMM and OP by funct3: add, sll, slt, sltu, xor, srl, or, and (SUB and SRA are picked apart by funct7). */
const ALU: readonly number[][] = [
  [OP.i64Add],
  [OP.i64Shl],
  [OP.i64LtS, OP.i64ExtendI32U],
  [OP.i64LtU, OP.i64ExtendI32U],
  [OP.i64Xor],
  [OP.i64ShrU],
  [OP.i64Or],
  [OP.i64And],
];

/** Parameters: budget, tlb, n (instructions retired in this call before the block); then fixed locals. */
const L_BUDGET = 0;
const L_TLB = 1;
const L_N = 2;
const L_VA = 3; // i64 × 6: va, v, t0..t3
const L_V = 4;
const L_T0 = 5;
/** The virtual pc the block runs at, as an i64 (L_BASE_I64) and an f64 (L_BASE): see blockFunction. */
const L_BASE_I64 = 9;
const L_IDX = 10; // i32 × 2: idx, link
const L_LINK = 11;
const L_BASE = 12; // f64
const FIXED_I64 = 7;
const FIXED_I32 = 2;
const FIXED_F64 = 1;
const FIRST_REG_LOCAL = 13;

/** Link slot fields (LINK_SLOT_BYTES each): the target pc it was made for, the target's table index and length, the fetchKey. */
export const LINK_PC = 0;
export const LINK_INDEX = 8;
export const LINK_LENGTH = 12;
export const LINK_KEY = 16;

/** Upper bound of a block's linkable exits (each branch, jump and the fall-through), for its link slots. */
export function exitBound(insns: Insn[]): number {
  let n = 1;
  for (const i of insns) {
    const op = i.insn & 0x7f;
    if (op === 0x63 || op === 0x6f || op === 0x67) n++;
  }
  return n;
}

/**
 * Writes the body of one block's function (locals declaration and code, without the size prefix)
 * to `c` and returns its number of linkable exits. `page` is the block's physical page (RAM
 * offset >> 12), `id` its index in the shared function table, `links` the address of its first link
 * slot (exitBound(insns) of them).
 *
 * The code is position-independent: it reads the virtual pc it runs at from the hart area's pc
 * slot on entry (the dispatcher, or the block that chains to it, stores it there) and computes
 * auipc, link values and exit pcs from it, so one translation serves every virtual address of
 * the same physical code.
 *
 * Each linkable exit tries its link slot first: when the dispatcher has linked it to a block (the
 * slot names its table index) that was made for this target pc and the current fetchKey (implied
 * for a direct jump within the page: the block itself runs from that page) and fits the budget,
 * the exit stores the target pc and tail-calls it; registers go through the hart area. Slots are cleared when their target
 * is dropped (jit.ts), so a link never reaches stale code.
 */
export function blockFunction(
  c: ByteWriter,
  insns: Insn[],
  page: number,
  layout: WasmLayout,
  id: number,
  links: number,
): number {
  const area = layout.hartArea;
  const start = insns[0].pc;
  const local = new Int32Array(32).fill(-1);
  let nRegs = 0;
  const writes = new Set<number>();
  let loops = false;
  for (const i of insns) {
    const r = registersOf(i.insn);
    for (const reg of r.reads) if (reg !== 0 && local[reg] < 0) local[reg] = FIRST_REG_LOCAL + nRegs++;
    for (const reg of r.writes) {
      if (reg === 0) continue;
      if (local[reg] < 0) local[reg] = FIRST_REG_LOCAL + nRegs++;
      writes.add(reg);
    }
    const op = i.insn & 0x7f;
    if ((op === 0x63 && i.pc + bImm(i.insn) === start) || (op === 0x6f && i.pc + jImm(i.insn) === start)) loops = true;
  }
  const written = new Set<number>(loops ? writes : []);
  let exits = 0;
  /** Open structured instructions (block/loop/if), for branch depths. */
  let depth = 0;
  const loopDepth = 0;

  // Locals: the fixed ones, then one i64 per register the block uses.
  uleb(c, 4);
  uleb(c, FIXED_I64);
  c.push(I64);
  uleb(c, FIXED_I32);
  c.push(I32);
  uleb(c, FIXED_F64);
  c.push(F64);
  uleb(c, nRegs);
  c.push(I64);

  const op = (...bytes: number[]): void => {
    for (const b of bytes) c.push(b);
  };
  const i32 = (v: number): void => {
    c.push(OP.i32Const);
    sleb(c, v | 0);
  };
  const i64 = (v: number): void => {
    c.push(OP.i64Const);
    sleb(c, v);
  };
  const f64 = (v: number): void => {
    c.push(OP.f64Const);
    F64_BYTES[0] = v;
    for (let b = 0; b < 8; b++) c.push(F64_U8[b]);
  };
  const mem = (opcode: number, align: number, offset: number): void => {
    c.push(opcode);
    c.push(align);
    uleb(c, offset);
  };
  const get = (l: number): void => op(OP.localGet, l);
  const set = (l: number): void => op(OP.localSet, l);
  const reg = (r: number): void => (r === 0 ? i64(0) : get(local[r]));
  const open = (opcode: number, type: number): void => {
    op(opcode, type);
    depth++;
  };
  const close = (): void => {
    op(OP.end);
    depth--;
  };

  const writeback = (): void => {
    for (const r of written) {
      i32(0);
      get(local[r]);
      mem(OP.i64Store, 3, area + HART_AREA.regs + 8 * r);
    }
  };
  /** Instructions retired so far in this call: n, plus `k` of the current pass. */
  const count = (k: number): void => {
    get(L_N);
    if (k !== 0) {
      i32(k);
      op(OP.i32Add);
    }
  };
  const slots = (pc: () => void, k: number): void => {
    i32(0);
    pc();
    mem(OP.f64Store, 3, area + HART_AREA.pc);
    i32(0);
    count(k);
    mem(OP.i32Store, 2, area + HART_AREA.count);
  };
  /**
   * Chains to the block a link slot names, if the link holds: the slot's address is `base()` +
   * `offset`; `checkPc`/`checkKey`: whether the slot's target pc and fetchKey must be compared
   * (a direct jump within the block's own page needs neither).
   */
  const tryChain = (
    base: () => void,
    offset: number,
    pc: () => void,
    k: number,
    checkPc: boolean,
    checkKey: boolean,
  ) => {
    base();
    mem(OP.i32Load, 2, offset + LINK_INDEX);
    op(OP.localTee, L_LINK);
    i32(0);
    op(OP.i32Ne);
    if (checkPc) {
      pc();
      base();
      mem(OP.f64Load, 3, offset + LINK_PC);
      op(OP.f64Eq, OP.i32And);
    }
    if (checkKey) {
      base();
      mem(OP.i32Load, 2, offset + LINK_KEY);
      i32(0);
      mem(OP.i32Load, 2, area + HART_AREA.fetchKey);
      op(OP.i32Eq, OP.i32And);
    }
    count(k);
    base();
    mem(OP.i32Load, 2, offset + LINK_LENGTH);
    op(OP.i32Add);
    get(L_BUDGET);
    op(OP.i32LeS, OP.i32And);
    open(OP.if, VOID);
    // The next block runs at this pc (its base: blocks are position-independent).
    i32(0);
    pc();
    mem(OP.f64Store, 3, area + HART_AREA.pc);
    i32(0);
    get(L_LINK);
    mem(OP.i32Store, 2, area + HART_AREA.next);
    i32(0);
    count(k);
    mem(OP.i32Store, 2, area + HART_AREA.count);
    i32(EXIT_CHAIN);
    op(OP.return);
    close();
  };
  /**
   * Leaves through exit `code` to `pc` after `k` instructions of this pass. A linkable exit first
   * tries its link; an indirect one (`pcKnown` -1, the target in L_V) then the jump cache, where
   * the dispatcher notes every block it finds by its pc.
   */
  const exit = (pc: () => void, k: number, code: number, pcKnown = -1): void => {
    writeback();
    if (code >= 0) {
      const samePage = pcKnown !== -1 && Math.floor(pcKnown / 4096) === Math.floor(start / 4096);
      const zero = (): void => i32(0);
      // A direct exit to another page leads to another pc in each place the block runs: compare it.
      tryChain(zero, links + code * LINK_SLOT_BYTES, pc, k, !samePage, !samePage);
      if (pcKnown === -1) {
        get(L_V);
        op(OP.i32WrapI64);
        i32(1);
        op(OP.i32ShrU);
        i32(JUMP_CACHE_ENTRIES - 1);
        op(OP.i32And);
        i32(LINK_SLOT_BYTES);
        op(OP.i32Mul);
        set(L_IDX);
        tryChain(() => get(L_IDX), layout.jumpCache, pc, k, true, true);
      }
    }
    slots(pc, k);
    i32(0);
    i32(id);
    mem(OP.i32Store, 2, area + HART_AREA.block);
    i32(code);
    op(OP.return);
  };
  /** The pc `v` had when the block was decoded, where the block runs now: base + (v - start). */
  const constPc = (v: number) => (): void => {
    get(L_BASE);
    if (v !== start) {
      f64(v - start);
      op(OP.f64Add);
    }
  };
  /** The same as a register value (i64). */
  const pcValue = (v: number): void => {
    get(L_BASE_I64);
    if (v !== start) {
      i64(v - start);
      op(OP.i64Add);
    }
  };
  const to = (target: number, k: number, code: number): void => exit(constPc(target), k, code, target);
  /** A control transfer to `target` after `k` instructions of this pass: back to the top when it is the loop. */
  const jump = (target: number, k: number): void => {
    if (target === start && loops) {
      get(L_N);
      i32(k);
      op(OP.i32Add);
      set(L_N);
      // Another pass only when it fits the budget and the page still holds translated code.
      get(L_N);
      i32(insns.length);
      op(OP.i32Add);
      get(L_BUDGET);
      op(OP.i32LeS);
      i32(0);
      mem(OP.i32Load8u, 0, layout.codePagesArea + page);
      op(OP.i32And);
      op(OP.brIf, depth - 1 - loopDepth);
      to(target, 0, exits++);
    } else to(target, k, exits++);
  };
  /** The result (an i64 on the stack) goes to rd. */
  const setRd = (rd: number): void => {
    if (rd === 0) {
      op(OP.drop);
      return;
    }
    set(local[rd]);
    written.add(rd);
  };

  const wrapped = (r: number): void => {
    reg(r);
    op(OP.i32WrapI64);
  };

  // Prologue: the pc the block runs at (the caller stored it), then the registers the block uses.
  i32(0);
  mem(OP.f64Load, 3, area + HART_AREA.pc);
  op(OP.localTee, L_BASE);
  op(OP.i64TruncF64S);
  set(L_BASE_I64);
  for (let r = 1; r < 32; r++) {
    if (local[r] < 0) continue;
    i32(0);
    mem(OP.i64Load, 3, area + HART_AREA.regs + 8 * r);
    set(local[r]);
  }
  if (loops) open(OP.loop, VOID);

  for (let k = 0; k < insns.length; k++) {
    const { pc, insn, len } = insns[k];
    const next = pc + len;
    const rd = (insn >> 7) & 31,
      rs1 = (insn >> 15) & 31,
      rs2 = (insn >> 20) & 31;
    const f3 = (insn >> 12) & 7;
    const f7 = insn >>> 25;
    /** State as at this instruction, before a call out that may trap or read it. */
    const sync = (): void => {
      writeback();
      slots(constPc(pc), k);
    };
    /** After a slow call: when it raised attention, leave right after this instruction. */
    const afterSlow = (loaded: number): void => {
      i32(0);
      mem(OP.i32Load, 2, area + HART_AREA.attention);
      open(OP.if, VOID);
      if (loaded !== 0) {
        i32(0);
        get(local[loaded]);
        mem(OP.i64Store, 3, area + HART_AREA.regs + 8 * loaded);
      }
      slots(constPc(next), k + 1);
      i32(EXIT_NOLINK);
      op(OP.return);
      close();
    };
    switch (insn & 0x7f) {
      case 0x13: {
        if (rd === 0) break;
        const imm = iImm(insn);
        reg(rs1);
        // Shift amounts are the immediate's low six bits (the rest selects SRAI).
        i64(f3 === 1 || f3 === 5 ? imm & 63 : imm);
        op(...(f3 === 5 && insn >>> 26 === 0x10 ? [OP.i64ShrS] : ALU[f3]));
        setRd(rd);
        break;
      }
      case 0x33: {
        if (rd === 0) break;
        if (f7 === 1) {
          mulDiv(f3, rs1, rs2);
          setRd(rd);
          break;
        }
        reg(rs1);
        reg(rs2);
        if (f7 === 0x20) op(f3 === 0 ? OP.i64Sub : OP.i64ShrS);
        else op(...ALU[f3]);
        setRd(rd);
        break;
      }
      case 0x1b: {
        if (rd === 0) break;
        const imm = iImm(insn);
        wrapped(rs1);
        if (f3 === 0) {
          i32(imm);
          op(OP.i32Add);
        } else {
          i32(imm & 31);
          op(f3 === 1 ? OP.i32Shl : f7 === 0 ? OP.i32ShrU : OP.i32ShrS);
        }
        op(OP.i64ExtendI32S);
        setRd(rd);
        break;
      }
      case 0x3b: {
        if (rd === 0) break;
        if (f7 === 1 && f3 !== 0) {
          divW(f3, rs1, rs2);
        } else {
          wrapped(rs1);
          wrapped(rs2);
          if (f7 === 1) op(OP.i32Mul);
          else if (f7 === 0x20) op(f3 === 0 ? OP.i32Sub : OP.i32ShrS);
          else op(f3 === 0 ? OP.i32Add : f3 === 1 ? OP.i32Shl : OP.i32ShrU);
        }
        op(OP.i64ExtendI32S);
        setRd(rd);
        break;
      }
      case 0x37:
        if (rd === 0) break;
        i64((insn & 0xfffff000) | 0);
        setRd(rd);
        break;
      case 0x17:
        if (rd === 0) break;
        pcValue(pc + ((insn & 0xfffff000) | 0));
        setRd(rd);
        break;
      case 0x6f:
        if (rd !== 0) {
          pcValue(next);
          setRd(rd);
        }
        jump(pc + jImm(insn), k + 1);
        break;
      case 0x67: {
        reg(rs1);
        i64(iImm(insn));
        op(OP.i64Add);
        i64(-2);
        op(OP.i64And);
        set(L_V);
        if (rd !== 0) {
          pcValue(next);
          setRd(rd);
        }
        exit(
          () => {
            get(L_V);
            op(OP.f64ConvertI64S);
          },
          k + 1,
          exits++,
        );
        break;
      }
      case 0x63: {
        reg(rs1);
        reg(rs2);
        op([OP.i64Eq, OP.i64Ne, 0, 0, OP.i64LtS, OP.i64GeS, OP.i64LtU, OP.i64GeU][f3]);
        open(OP.if, VOID);
        jump(pc + bImm(insn), k + 1);
        close();
        if (k === insns.length - 1) to(next, k + 1, exits++);
        break;
      }
      case 0x03: {
        const size = 1 << (f3 & 3);
        address(rs1, iImm(insn), size, 0);
        open(OP.if, I64);
        ramOffset(0);
        mem(
          [OP.i64Load8s, OP.i64Load16s, OP.i64Load32s, OP.i64Load, OP.i64Load8u, OP.i64Load16u, OP.i64Load32u][f3],
          f3 & 3,
          0,
        );
        op(OP.else);
        sync();
        i32(SLOW_LOAD + (f3 & 3));
        get(L_VA);
        op(OP.i32WrapI64);
        get(L_VA);
        i64(32);
        op(OP.i64ShrU, OP.i32WrapI64);
        i32(0);
        i32(0);
        op(OP.call, 0);
        switch (f3) {
          case 0:
            op(OP.i32Extend8S, OP.i64ExtendI32S);
            break;
          case 1:
            op(OP.i32Extend16S, OP.i64ExtendI32S);
            break;
          case 2:
            op(OP.i64ExtendI32S);
            break;
          case 3:
            op(OP.i64ExtendI32U);
            i32(0);
            mem(OP.i64Load32u, 2, area + HART_AREA.hi);
            i64(32);
            op(OP.i64Shl, OP.i64Or);
            break;
          case 4:
            i32(255);
            op(OP.i32And, OP.i64ExtendI32U);
            break;
          case 5:
            i32(65535);
            op(OP.i32And, OP.i64ExtendI32U);
            break;
          default:
            op(OP.i64ExtendI32U);
            break;
        }
        if (rd !== 0) {
          op(OP.localTee, local[rd]);
          written.add(rd);
        }
        afterSlow(rd);
        close();
        setRd(rd);
        break;
      }
      case 0x23: {
        const size = 1 << f3;
        address(rs1, sImm(insn), size, 1);
        open(OP.if, VOID);
        ramOffset(1);
        reg(rs2);
        mem([OP.i64Store8, OP.i64Store16, OP.i64Store32, OP.i64Store][f3], f3, 0);
        op(OP.else);
        sync();
        i32(SLOW_STORE + f3);
        get(L_VA);
        op(OP.i32WrapI64);
        get(L_VA);
        i64(32);
        op(OP.i64ShrU, OP.i32WrapI64);
        wrapped(rs2);
        reg(rs2);
        i64(32);
        op(OP.i64ShrU, OP.i32WrapI64);
        op(OP.call, 0, OP.drop);
        afterSlow(0);
        close();
        break;
      }
      case 0x0f:
        if (f3 === 1) {
          // fence.i: drop what other harts wrote (SMP); code after it is fetched afresh.
          sync();
          slowCall(SLOW_FENCE_I, 0);
          exit(constPc(next), k + 1, EXIT_NOLINK);
        }
        break;
      default: {
        // AMO, F/D and CSRs: the hart's own code, with the state made precise first; rd may change.
        sync();
        slowCall(SLOW_HELPER, insn);
        // A CSR write that may make an interrupt pending (sie, sstatus.SIE) leaves, the result in x[rd].
        if ((insn & 0x7f) === 0x73) afterSlow(0);
        for (const r of registersOf(insn).writes) {
          if (r === 0) continue;
          i32(0);
          mem(OP.i64Load, 3, area + HART_AREA.regs + 8 * r);
          set(local[r]);
          written.add(r);
        }
        break;
      }
    }
  }
  const tail = fallThrough(insns);
  const after = insns[insns.length - 1].pc + insns[insns.length - 1].len;
  if (tail === FALL_INTERP) exit(constPc(after), insns.length, EXIT_INTERP);
  else if (tail === FALL_LINKED) to(after, insns.length, exits++);
  if (loops) close();
  op(OP.unreachable, OP.end);
  return exits;

  /** Computes the address into `va` and leaves "the TLB hits" (i32) on the stack; `which`: 0 read, 1 write. */
  function address(base: number, imm: number, size: number, which: number): void {
    reg(base);
    if (imm !== 0) {
      i64(imm);
      op(OP.i64Add);
    }
    op(OP.localTee, L_VA, OP.i32WrapI64);
    i32(12);
    op(OP.i32ShrU);
    i32(255);
    op(OP.i32And);
    set(L_IDX);
    get(L_TLB);
    get(L_IDX);
    i32(3);
    op(OP.i32Shl, OP.i32Add);
    mem(OP.f64Load, 3, which * 2048);
    get(L_VA);
    i64(12);
    op(OP.i64ShrS, OP.f64ConvertI64S, OP.f64Eq);
    if (size > 1) {
      get(L_VA);
      op(OP.i32WrapI64);
      i32(size - 1);
      op(OP.i32And, OP.i32Eqz, OP.i32And);
    }
  }

  /** The RAM offset of `va` through the TLB entry `idx` (on the stack, i32). */
  function ramOffset(which: number): void {
    get(L_TLB);
    get(L_IDX);
    i32(2);
    op(OP.i32Shl, OP.i32Add);
    mem(OP.i32Load, 2, 6144 + which * 1024);
    get(L_VA);
    op(OP.i32WrapI64);
    i32(4095);
    op(OP.i32And, OP.i32Add);
  }

  function slowCall(operation: number, a: number): void {
    i32(operation);
    i32(a);
    i32(0);
    i32(0);
    i32(0);
    op(OP.call, 0, OP.drop);
  }

  /** MUL/MULH/MULHSU/MULHU/DIV/DIVU/REM/REMU of rs1 and rs2, leaving the i64 result. */
  function mulDiv(fn: number, a: number, b: number): void {
    switch (fn) {
      case 0:
        reg(a);
        reg(b);
        op(OP.i64Mul);
        return;
      case 1:
      case 2:
      case 3: {
        mulhu(a, b);
        // Signed corrections: mulh = mulhu - (a < 0 ? b : 0) - (b < 0 ? a : 0); mulhsu only the first.
        if (fn !== 3) {
          reg(a);
          i64(63);
          op(OP.i64ShrS);
          reg(b);
          op(OP.i64And, OP.i64Sub);
        }
        if (fn === 1) {
          reg(b);
          i64(63);
          op(OP.i64ShrS);
          reg(a);
          op(OP.i64And, OP.i64Sub);
        }
        return;
      }
      case 4:
        // b = 0: -1; MIN / -1: MIN (WebAssembly traps on both).
        reg(b);
        op(OP.i64Eqz);
        open(OP.if, I64);
        i64(-1);
        op(OP.else);
        reg(b);
        i64(-1);
        op(OP.i64Eq);
        open(OP.if, I64);
        i64(0);
        reg(a);
        op(OP.i64Sub);
        op(OP.else);
        reg(a);
        reg(b);
        op(OP.i64DivS);
        close();
        close();
        return;
      case 5:
        reg(b);
        op(OP.i64Eqz);
        open(OP.if, I64);
        i64(-1);
        op(OP.else);
        reg(a);
        reg(b);
        op(OP.i64DivU);
        close();
        return;
      default:
        // b = 0: a (rem_s of MIN by -1 is 0 in WebAssembly, as in RISC-V).
        reg(b);
        op(OP.i64Eqz);
        open(OP.if, I64);
        reg(a);
        op(OP.else);
        reg(a);
        reg(b);
        op(fn === 6 ? OP.i64RemS : OP.i64RemU);
        close();
        return;
    }
  }

  /** High 64 bits of the unsigned 128-bit product, from 32-bit halves. */
  function mulhu(a: number, b: number): void {
    const lo32 = (r: number): void => {
      reg(r);
      i64(0xffffffff);
      op(OP.i64And);
    };
    const hi32 = (r: number): void => {
      reg(r);
      i64(32);
      op(OP.i64ShrU);
    };
    // t0 = alo*bhi, t1 = ahi*blo, t2 = (alo*blo >> 32) + (t0 & M) + (t1 & M)
    lo32(a);
    hi32(b);
    op(OP.i64Mul);
    set(L_T0);
    hi32(a);
    lo32(b);
    op(OP.i64Mul);
    set(L_T0 + 1);
    lo32(a);
    lo32(b);
    op(OP.i64Mul);
    i64(32);
    op(OP.i64ShrU);
    get(L_T0);
    i64(0xffffffff);
    op(OP.i64And, OP.i64Add);
    get(L_T0 + 1);
    i64(0xffffffff);
    op(OP.i64And, OP.i64Add);
    set(L_T0 + 2);
    // ahi*bhi + (t0 >> 32) + (t1 >> 32) + (t2 >> 32)
    hi32(a);
    hi32(b);
    op(OP.i64Mul);
    get(L_T0);
    i64(32);
    op(OP.i64ShrU, OP.i64Add);
    get(L_T0 + 1);
    i64(32);
    op(OP.i64ShrU, OP.i64Add);
    get(L_T0 + 2);
    i64(32);
    op(OP.i64ShrU, OP.i64Add);
  }

  /** DIVW/DIVUW/REMW/REMUW of rs1 and rs2, leaving the i32 result. */
  function divW(fn: number, a: number, b: number): void {
    wrapped(b);
    op(OP.i32Eqz);
    open(OP.if, I32);
    if (fn === 4 || fn === 5) i32(-1);
    else wrapped(a);
    op(OP.else);
    if (fn === 4) {
      wrapped(b);
      i32(-1);
      op(OP.i32Eq);
      open(OP.if, I32);
      i32(0);
      wrapped(a);
      op(OP.i32Sub);
      op(OP.else);
      wrapped(a);
      wrapped(b);
      op(OP.i32DivS);
      close();
    } else {
      wrapped(a);
      wrapped(b);
      op(fn === 5 ? OP.i32DivU : fn === 6 ? OP.i32RemS : OP.i32RemU);
    }
    close();
  }
}

/**
 * A module of block functions (exported as b0, b1, ...) over the imported `slow` and memory.
 * `bodies` are the functions' bytes as blockFunction wrote them.
 */
export function moduleBytes(out: ByteWriter, bodies: Uint8Array[], layout: WasmLayout): Uint8Array<ArrayBuffer> {
  out.length = 0;
  const sec = new ByteWriter();
  out.append(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]));
  // Types: 0 slow (i32 × 5) -> i32; 1 block (i32 budget, i32 tlb, i32 n) -> i32.
  sec.append(new Uint8Array([2, 0x60, 5, I32, I32, I32, I32, I32, 1, I32, 0x60, 3, I32, I32, I32, 1, I32]));
  section(out, 1, sec);
  sec.length = 0;
  uleb(sec, 2);
  name(sec, "e");
  name(sec, "slow");
  sec.push(0x00);
  sec.push(0);
  name(sec, "e");
  name(sec, "mem");
  memoryType(sec, layout);
  section(out, 2, sec);
  sec.length = 0;
  uleb(sec, bodies.length);
  for (let i = 0; i < bodies.length; i++) sec.push(1);
  section(out, 3, sec);
  sec.length = 0;
  uleb(sec, bodies.length);
  for (let i = 0; i < bodies.length; i++) {
    name(sec, `b${i}`);
    sec.push(0x00);
    uleb(sec, i + 1);
  }
  section(out, 7, sec);
  sec.length = 0;
  uleb(sec, bodies.length);
  for (const b of bodies) {
    uleb(sec, b.length);
    sec.append(b);
  }
  section(out, 10, sec);
  return out.slice();
}

/**
 * The hub: `run(budget, tlb, id)` calls block `id` of the function table and, while blocks leave
 * through a link (EXIT_CHAIN), the block they name, carrying the count of retired instructions.
 * Only the hub imports the table: V8 gives every instance that imports a table its own copy of
 * the table's dispatch entries, so a table shared by all block modules would cost each new module
 * a copy and each new entry an update of every module.
 */
export function hubBytes(layout: WasmLayout, tableSize: number): Uint8Array<ArrayBuffer> {
  const out = new ByteWriter();
  const sec = new ByteWriter();
  out.append(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]));
  sec.append(new Uint8Array([1, 0x60, 3, I32, I32, I32, 1, I32]));
  section(out, 1, sec);
  sec.length = 0;
  uleb(sec, 2);
  name(sec, "e");
  name(sec, "mem");
  memoryType(sec, layout);
  name(sec, "e");
  name(sec, "table");
  sec.push(0x01);
  sec.push(0x70);
  sec.push(0x00);
  uleb(sec, tableSize);
  section(out, 2, sec);
  sec.length = 0;
  sec.push(1);
  sec.push(0);
  section(out, 3, sec);
  sec.length = 0;
  uleb(sec, 1);
  name(sec, "run");
  sec.push(0x00);
  sec.push(0);
  section(out, 7, sec);
  const area = layout.hartArea;
  const c = new ByteWriter();
  // Locals: n, r (i32).
  c.append(new Uint8Array([1, 2, I32]));
  const bytes = (...b: number[]): void => {
    for (const x of b) c.push(x);
  };
  const load = (offset: number): void => {
    bytes(OP.i32Const, 0, OP.i32Load, 2);
    uleb(c, offset);
  };
  bytes(OP.loop, VOID);
  bytes(OP.localGet, 0, OP.localGet, 1, OP.localGet, 3, OP.localGet, 2, OP.callIndirect, 0, 0);
  bytes(OP.localTee, 4, OP.i32Const);
  sleb(c, EXIT_CHAIN);
  bytes(OP.i32Eq, OP.if, VOID);
  load(area + HART_AREA.next);
  bytes(OP.localSet, 2);
  load(area + HART_AREA.count);
  bytes(OP.localSet, 3, OP.br, 1, OP.end);
  bytes(OP.localGet, 4, OP.return, OP.end, OP.unreachable, OP.end);
  sec.length = 0;
  uleb(sec, 1);
  uleb(sec, c.length);
  sec.append(c.slice());
  section(out, 10, sec);
  return out.slice();
}

/**
 * One RV64GC hart: fetch, decode and execute, CSRs, traps and interrupts, and the Sv39/Sv48 MMU
 * with a software TLB.
 *
 * Representation (chosen for V8, measured): a 64-bit integer register is a pair of int32 words in
 * an Int32Array (x[2i] low, x[2i+1] high); 64-bit arithmetic is done on the halves, BigInt only
 * for the rare wide multiplies and divides. The pc is a JS number holding the sign-extended
 * 64-bit value (exact for every canonical Sv39/Sv48 address and all of RAM).
 *
 * A trap is raised by `throw TRAP` (one preallocated object) after the trap state has been set
 * up, so the hot path never checks for faults after a memory access.
 */
import { Bus, HART_AREA, TLB_SET_BYTES } from "./bus.js";
import { COMPRESSED_TABLE } from "./compressed.js";
import { executeFp } from "./fpu.js";
import {
  CSR, MSTATUS_SIE, MSTATUS_MIE, MSTATUS_SPIE, MSTATUS_MPIE, MSTATUS_SPP, MSTATUS_MPP, MSTATUS_MPP_SHIFT,
  MSTATUS_FS, MSTATUS_MPRV, MSTATUS_SUM, MSTATUS_MXR, MSTATUS_TVM, MSTATUS_TW, MSTATUS_TSR, MSTATUS_HI_FIXED,
  MSTATUS_WRITABLE, SSTATUS_MASK, MIP_SSIP, MIP_STIP, MIP_SEIP, MIP_MSIP, MIP_MTIP, MIP_MEIP, S_INTERRUPTS,
  ALL_INTERRUPTS, CAUSE_FETCH_ACCESS, CAUSE_ILLEGAL_INSTRUCTION, CAUSE_BREAKPOINT, CAUSE_MISALIGNED_LOAD,
  CAUSE_LOAD_ACCESS, CAUSE_MISALIGNED_STORE, CAUSE_STORE_ACCESS, CAUSE_ECALL_U, CAUSE_FETCH_PAGE_FAULT,
  CAUSE_LOAD_PAGE_FAULT, CAUSE_STORE_PAGE_FAULT, CAUSE_ECALL_S, MISA_LO, MISA_HI,
} from "./csr.js";

/** Thrown (never allocated per trap) to unwind an instruction that trapped. */
export const TRAP: { readonly trap: true } = Object.freeze({ trap: true });

export const PRIV_U = 0;
export const PRIV_S = 1;
export const PRIV_M = 3;

const TLB_BITS = 8;
const TLB_SIZE = 1 << TLB_BITS;
const TLB_MASK = TLB_SIZE - 1;
const ACCESS_READ = 0;
const ACCESS_WRITE = 1;
const ACCESS_FETCH = 2;
const TWO32 = 4294967296;
/** 4 KiB pages a leaf PTE of each level maps (Sv39/Sv48: 4 KiB, 2 MiB, 1 GiB, 512 GiB). */
const LEVEL_PAGES = [1, 512, 262144, 134217728];
/** Entries per level of the filter of virtual pages translated code links assume (hashed). */
const LINK_FILTER_BITS = 12;
const LINK_FILTER_MASK = (1 << LINK_FILTER_BITS) - 1;

/** Machine timer as the hart's `time` CSR sees it (ticks of the timebase). */
export interface HartClock {
  now(): number;
}

const defaultClock: HartClock = {
  now: () => Math.floor(performance.now() * 10_000),
};

/** One TLB set: the translations valid for one effective privilege level. */
export class TlbSet {
  readonly readTag: Float64Array;
  readonly writeTag: Float64Array;
  readonly fetchTag: Float64Array;
  readonly readOff: Int32Array;
  readonly writeOff: Int32Array;
  readonly fetchOff: Int32Array;
  /**
   * The level of the leaf PTE each entry came from (read, write, fetch: TLB_SIZE each), so that
   * sfence.vma of one address also drops the entries of a superpage that covers it.
   */
  readonly levels = new Uint8Array(3 * TLB_SIZE);
  /**
   * Whether each entry (same layout as `levels`) came from a global mapping (G set in the leaf or
   * a table above it): valid in every address space, so a satp write keeps it.
   */
  readonly globals = new Uint8Array(3 * TLB_SIZE);
  /** Whether any entry came from a superpage since the last flush (else a page flush is one slot). */
  hasSuperpages = false;
  /**
   * Where the set lives in the WebAssembly memory (translated WebAssembly code reads it there), or
   * -1 for a set of its own. Layout: TLB_SET_BYTES, see bus.ts.
   */
  readonly base: number;
  constructor(buffer?: ArrayBuffer | SharedArrayBuffer, base = -1) {
    const b = buffer ?? new ArrayBuffer(TLB_SET_BYTES);
    const at = buffer ? base : 0;
    this.base = buffer ? base : -1;
    this.readTag = new Float64Array(b, at, TLB_SIZE);
    this.writeTag = new Float64Array(b, at + 8 * TLB_SIZE, TLB_SIZE);
    this.fetchTag = new Float64Array(b, at + 16 * TLB_SIZE, TLB_SIZE);
    this.readOff = new Int32Array(b, at + 24 * TLB_SIZE, TLB_SIZE);
    this.writeOff = new Int32Array(b, at + 28 * TLB_SIZE, TLB_SIZE);
    this.fetchOff = new Int32Array(b, at + 32 * TLB_SIZE, TLB_SIZE);
    this.flush();
  }
  flush(): void {
    this.readTag.fill(NaN);
    this.writeTag.fill(NaN);
    this.fetchTag.fill(NaN);
    this.hasSuperpages = false;
  }
  /** Drops the entries that translate virtual page `tag` (slot `idx`), including superpages over it. */
  flushPage(tag: number, idx: number): void {
    if (this.readTag[idx] === tag) this.readTag[idx] = NaN;
    if (this.writeTag[idx] === tag) this.writeTag[idx] = NaN;
    if (this.fetchTag[idx] === tag) this.fetchTag[idx] = NaN;
    if (!this.hasSuperpages) return;
    flushSuperpages(this.readTag, this.levels, 0, tag);
    flushSuperpages(this.writeTag, this.levels, TLB_SIZE, tag);
    flushSuperpages(this.fetchTag, this.levels, 2 * TLB_SIZE, tag);
  }
  flushData(): void {
    this.readTag.fill(NaN);
    this.writeTag.fill(NaN);
  }
  /** Drops every entry but those of global mappings (a satp write: another address space). */
  flushNonGlobal(): void {
    const g = this.globals;
    const read = this.readTag,
      write = this.writeTag,
      fetch = this.fetchTag;
    for (let i = 0; i < TLB_SIZE; i++) {
      if (g[i] === 0) read[i] = NaN;
      if (g[TLB_SIZE + i] === 0) write[i] = NaN;
      if (g[2 * TLB_SIZE + i] === 0) fetch[i] = NaN;
    }
  }
}

/** Drops the entries of `tags` that came from a superpage covering virtual page `tag`. */
function flushSuperpages(tags: Float64Array, levels: Uint8Array, at: number, tag: number): void {
  for (let i = 0; i < TLB_SIZE; i++) {
    const level = levels[at + i];
    if (level === 0) continue;
    const span = LEVEL_PAGES[level];
    if (Math.floor(tags[i] / span) === Math.floor(tag / span)) tags[i] = NaN;
  }
}

/** Handler for environment calls the hypervisor answers itself (SBI without firmware). */
export type EcallHandler = (hart: Hart) => boolean;

/** What the hart needs of a translator: run guest code until instret reaches `end`. */
export interface Translator {
  execute(end: number): void;
  /** fence.i: code that other harts or devices wrote must not run stale from here on. */
  fenceI(): void;
}

/** Size of the translator's hotness table (entries). */
export const HOT_BITS = 16;
export const HOT_MASK = (1 << HOT_BITS) - 1;

export class Hart {
  readonly bus: Bus;
  readonly hartId: number;
  readonly clock: HartClock;

  // architectural state
  /** In the WebAssembly memory's hart area when RAM is there (hart 0), so translated code reaches it. */
  readonly x: Int32Array;
  readonly f = new Int32Array(64);
  pc = 0;
  priv = PRIV_M;
  fflags = 0;
  frm = 0;
  mstatus = 0; // low word; the high word is fixed (UXL/SXL) plus SD
  mie = 0;
  mip = 0;
  medeleg = 0;
  mideleg = 0;
  mtvec = 0;
  stvec = 0;
  mepc = 0;
  sepc = 0;
  mcauseLo = 0;
  mcauseInterrupt = false;
  scauseLo = 0;
  scauseInterrupt = false;
  mtvalLo = 0;
  mtvalHi = 0;
  stvalLo = 0;
  stvalHi = 0;
  readonly mscratch = new Int32Array(2);
  readonly sscratch = new Int32Array(2);
  satpLo = 0;
  satpHi = 0;
  mcounteren = 0;
  scounteren = 0;
  menvcfg = 0;
  senvcfg = 0;
  mcountinhibit = 0;
  readonly pmpcfg = new Int32Array(32); // 16 64-bit registers as pairs (only even numbers exist on RV64)
  readonly pmpaddr = new Float64Array(64);
  /**
   * Initialized to -0, a non-Smi number, so V8 gives the field a double representation from the
   * start (the constructor then stores +0): the count passes 2^31 during a boot, and a
   * representation change then would deoptimize every translated block at once (measured: ~400
   * blocks re-optimized mid-boot).
   */
  instret = -0;
  reservationValid = false;
  reservationAddr = 0;
  /** The value LR read (shared RAM: SC succeeds only if memory still holds it, as QEMU's cmpxchg). */
  private reservedLo = 0;
  private reservedHi = 0;

  /** Set when the hart executed WFI with nothing pending; the machine sleeps it. */
  waiting = false;
  /** Set to make run() return at the next instruction boundary. */
  stopRequested = false;
  /** Something (mip, mie, status, privilege) changed: re-evaluate interrupts. */
  attention = true;
  ecallHandler: EcallHandler | null = null;
  /**
   * User-mode emulation (src/user): every trap ends run() right after it is taken, so the caller
   * serves it (a U-mode ecall is a system call, a fault a signal) from mcause/mepc/mtval and
   * resumes with `enterUserMode`. Checked only when a trap is taken: the hot path never sees it.
   */
  stopOnTrap = false;

  // MMU: one TLB set per effective privilege (M/bare, S, U). The members below without `private`
  // are read by the translator (jit.ts), which inlines the TLB fast paths into generated code.
  private readonly tlbSets: TlbSet[];
  dataSet: TlbSet;
  fetchSet: TlbSet;
  private fetchPageVa = NaN;
  private fetchPageOff = 0;
  readonly ram8: Uint8Array;
  readonly ram16: Uint16Array;
  readonly ram32: Int32Array;
  readonly ramBase: number;
  readonly ramSize: number;
  /**
   * RAM shared with harts on other threads (SMP): AMOs, LR/SC and the page walker's A/D updates
   * then use Atomics, so they are atomic across harts.
   */
  private readonly ram64: BigInt64Array | null;
  /**
   * Shared RAM: aligned doublewords are read and written as one 8-byte access (a Float64Array
   * element, whose bits V8 moves unchanged, through the `pair` scratch), so that no hart sees half
   * of another's store (RISC-V's single-copy atomicity; Linux reads pointers locklessly).
   */
  readonly sharedRam: boolean;
  readonly ramF64: Float64Array;
  readonly pairF64 = new Float64Array(1);
  readonly pairI32 = new Int32Array(this.pairF64.buffer);
  /** High word of the last 64-bit value produced by a helper that returns the low word. */
  hi = 0;
  /**
   * Changes whenever the virtual-to-physical mapping of instruction fetches may have changed
   * (TLB flush, privilege change): translated code links between blocks are valid only within one key.
   */
  fetchKey = 0;
  /**
   * Per TLB set (M, S, U): bumped when the set's fetch translations that links may assume change;
   * the fetchKey is the active set's epoch and index.
   */
  private readonly tlbEpochs = [0, 0, 0];
  /**
   * The virtual pages (hashed, one table per leaf level, one group of tables per TLB set) whose
   * mapping translated code links and the jump cache assume under the set's current key
   * (`noteLinkTarget`): sfence.vma of one address changes a key only when it may touch one of
   * them, so the links elsewhere survive it.
   */
  private readonly linkedPages = new Uint8Array(3 * (4 << LINK_FILTER_BITS));
  /**
   * Per TLB set: whether a link or jump-cache entry under the current key leads to a page mapped
   * without G. A satp write keeps global translations, and the key too unless this is set (Linux
   * maps the kernel global: its links survive a context switch).
   */
  private readonly linkedNonGlobal = new Uint8Array(3);
  /** Level of the leaf PTE the last walk() ended at, and whether its mapping is global. */
  private walkLevel = 0;
  private walkGlobal = false;

  /** The translator, when one runs this hart (`--engine jit`); null runs the interpreter. */
  translator: Translator | null = null;
  /**
   * Physical RAM pages (index = RAM offset >> 12) holding translated code. Writes to them never hit
   * the write TLB, so the first store to such a page reaches `codeWritten` before it lands.
   */
  codePages: Uint8Array | null = null;
  codeWritten: ((page: number) => void) | null = null;
  /**
   * Dirty-page log for snapshots and live migration (index = RAM offset >> 12), or null when off.
   * A page is marked when a write translation to it enters the TLB and when the page walker sets
   * A/D bits in it; `flushWriteTlb()` at the start of each round makes the next store to every page
   * take that path again.
   */
  dirtyPages: Uint8Array | null = null;
  /**
   * The translator's profile: execution counts of block leaders (the instruction after a control
   * transfer), indexed by RAM halfword offset & HOT_MASK; -1 marks translated code, -2 code that
   * cannot be translated. The interpreter counts, and returns to the translator when it reaches a
   * translated or newly hot leader.
   */
  hotCounts: Int32Array | null = null;
  hotThreshold = 0;

  constructor(bus: Bus, hartId = 0, clock: HartClock = defaultClock) {
    this.bus = bus;
    this.hartId = hartId;
    this.clock = clock;
    this.ram8 = bus.ram;
    this.ram16 = bus.ram16;
    this.ram32 = bus.ram32;
    this.ramBase = bus.ramBase;
    this.ramSize = bus.ramSize;
    this.ram64 = bus.ramBuffer instanceof SharedArrayBuffer ? new BigInt64Array(bus.ramBuffer) : null;
    this.sharedRam = this.ram64 !== null;
    this.ramF64 = new Float64Array(bus.ramBuffer, 0, bus.ramSize >>> 3);
    // Registers and TLB live in the hart's area of the WebAssembly memory, where translated code reads them.
    const area = bus.hartArea(hartId);
    this.x = area >= 0 ? new Int32Array(bus.ramBuffer, area + HART_AREA.regs, 64) : new Int32Array(64);
    this.tlbSets = [0, 1, 2].map((i) =>
      area >= 0 ? new TlbSet(bus.ramBuffer, area + HART_AREA.tlb + i * TLB_SET_BYTES) : new TlbSet(),
    );
    this.dataSet = this.tlbSets[0];
    this.fetchSet = this.tlbSets[0];
    this.instret = 0; // +0, in the double field (see instret)
  }

  // ---------------------------------------------------------------- register helpers

  getX(i: number): bigint {
    return (BigInt(this.x[2 * i + 1]) << 32n) | BigInt(this.x[2 * i] >>> 0);
  }
  setX(i: number, v: bigint): void {
    if (i === 0) return;
    this.x[2 * i] = Number(BigInt.asIntN(32, v));
    this.x[2 * i + 1] = Number(BigInt.asIntN(32, v >> 32n));
  }
  setXNumber(i: number, v: number): void {
    if (i === 0) return;
    this.x[2 * i] = v | 0;
    this.x[2 * i + 1] = Math.floor(v / TWO32) | 0;
  }

  /** Interrupt line input from CLINT / PLIC. */
  setPending(bit: number, level: boolean): void {
    const m = 1 << bit;
    const next = level ? this.mip | m : this.mip & ~m;
    if (next !== this.mip) {
      this.mip = next;
      this.attention = true;
      if (level && (this.mie & m) !== 0) this.waiting = false;
    }
  }

  /** True when an interrupt is pending and enabled in mie (the WFI wake-up condition). */
  hasWakeup(): boolean {
    return (this.mip & this.mie) !== 0;
  }

  // ---------------------------------------------------------------- run loop

  /** Executes up to `budget` instructions; returns how many retired. Stops early on WFI or stop(). */
  run(budget: number): number {
    const start = this.instret;
    const end = start + budget;
    this.stopRequested = false;
    if (this.waiting) return 0; // in WFI: only an interrupt (setPending) or the machine wakes it
    // Traps retire nothing, so they are counted against the budget too: a guest caught in a trap
    // loop (say, a fault at its own trap vector) still hands control back to the machine.
    let traps = 0;
    for (;;) {
      try {
        if (this.translator !== null) this.translator.execute(end);
        else this.interpret(end);
        break;
      } catch (e) {
        if (e !== TRAP) throw e;
        if (++traps > budget) break;
      }
    }
    return this.instret - start;
  }

  /**
   * Takes a pending, enabled interrupt now, as the next instruction boundary would. For lockstep
   * checking, which compares two harts at the same boundary whichever of them noticed it first.
   */
  serviceInterrupts(): void {
    if (!this.attention) return;
    this.attention = false;
    if (this.stopRequested || this.waiting) {
      this.attention = true;
      return;
    }
    const cause = this.pendingInterrupt();
    if (cause >= 0) this.takeTrap(cause, 0, 0, true);
  }

  /** Executes exactly one instruction (after taking a pending interrupt, if any). For tests and tools. */
  step(): void {
    this.run(1);
  }

  /**
   * The interpreter loop: fetch, decode and execute until instret reaches `end`. One function so
   * that V8 keeps the loop, the fetch fast path and the common instructions in one optimized body.
   */
  interpret(end: number): void {
    const x = this.x;
    const hot = this.hotCounts;
    // The first instruction is the caller's business; later block leaders are profiled.
    let leader = false;
    while (this.instret < end) {
    if (this.attention) {
      this.attention = false;
      if (this.stopRequested || this.waiting) return;
      const cause = this.pendingInterrupt();
      if (cause >= 0) {
        this.takeTrap(cause, 0, 0, true);
        leader = true;
      }
    }
    const pc = this.pc;
    let d = pc - this.fetchPageVa;
    if (!(d >= 0 && d < 4096)) {
      this.refillFetch(pc);
      d = pc - this.fetchPageVa;
    }
    const h = (this.fetchPageOff + d) >>> 1;
    let insn = this.ram16[h];
    let len = 4;
    if ((insn & 3) !== 3) {
      insn = COMPRESSED_TABLE[insn];
      len = 2;
    } else if (d !== 4094) {
      insn |= this.ram16[h + 1] << 16;
    } else {
      insn = this.fetchCrossPage(pc, insn);
    }
    if (leader) {
      leader = false;
      if (hot !== null) {
        const count = hot[h & HOT_MASK];
        if (count >= 0) {
          if (count >= this.hotThreshold) return;
          hot[h & HOT_MASK] = count + 1;
        } else if (count === -1) return;
      }
    }
    const rd = (insn >> 6) & 0x3e; // 2*rd
    const rs1 = (insn >> 14) & 0x3e;
    const rs2 = (insn >> 19) & 0x3e;
    let next = pc + len;
    switch (insn & 0x7f) {
      case 0x13: {
        // OP-IMM
        const imm = insn >> 20;
        const alo = x[rs1], ahi = x[rs1 + 1];
        let lo = 0, hi = 0;
        switch ((insn >> 12) & 7) {
          case 0: lo = (alo + imm) | 0; hi = (ahi + (imm >> 31) + ((lo >>> 0) < (alo >>> 0) ? 1 : 0)) | 0; break;
          case 1: {
            if ((insn >>> 26) !== 0) this.illegal(insn);
            const s = imm & 63;
            if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { hi = alo << (s - 32); lo = 0; } else { hi = (ahi << s) | (alo >>> (32 - s)); lo = alo << s; }
            break;
          }
          case 2: lo = ahi < (imm >> 31) || (ahi === (imm >> 31) && (alo >>> 0) < (imm >>> 0)) ? 1 : 0; break;
          case 3: lo = (ahi >>> 0) < ((imm >> 31) >>> 0) || (ahi === (imm >> 31) && (alo >>> 0) < (imm >>> 0)) ? 1 : 0; break;
          case 4: lo = alo ^ imm; hi = ahi ^ (imm >> 31); break;
          case 5: {
            const s = imm & 63;
            const f6 = insn >>> 26;
            if (f6 === 0) {
              if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { lo = ahi >>> (s - 32); hi = 0; } else { lo = (alo >>> s) | (ahi << (32 - s)); hi = ahi >>> s; }
            } else if (f6 === 0x10) {
              if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { lo = ahi >> (s - 32); hi = ahi >> 31; } else { lo = (alo >>> s) | (ahi << (32 - s)); hi = ahi >> s; }
            } else this.illegal(insn);
            break;
          }
          case 6: lo = alo | imm; hi = ahi | (imm >> 31); break;
          default: lo = alo & imm; hi = ahi & (imm >> 31); break;
        }
        x[rd] = lo; x[rd + 1] = hi;
        break;
      }
      case 0x33: {
        // OP
        const alo = x[rs1], ahi = x[rs1 + 1], blo = x[rs2], bhi = x[rs2 + 1];
        const f7 = insn >>> 25;
        let lo = 0, hi = 0;
        if (f7 === 0) {
          switch ((insn >> 12) & 7) {
            case 0: lo = (alo + blo) | 0; hi = (ahi + bhi + ((lo >>> 0) < (alo >>> 0) ? 1 : 0)) | 0; break;
            case 1: {
              const s = blo & 63;
              if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { hi = alo << (s - 32); lo = 0; } else { hi = (ahi << s) | (alo >>> (32 - s)); lo = alo << s; }
              break;
            }
            case 2: lo = ahi < bhi || (ahi === bhi && (alo >>> 0) < (blo >>> 0)) ? 1 : 0; break;
            case 3: lo = (ahi >>> 0) < (bhi >>> 0) || (ahi === bhi && (alo >>> 0) < (blo >>> 0)) ? 1 : 0; break;
            case 4: lo = alo ^ blo; hi = ahi ^ bhi; break;
            case 5: {
              const s = blo & 63;
              if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { lo = ahi >>> (s - 32); hi = 0; } else { lo = (alo >>> s) | (ahi << (32 - s)); hi = ahi >>> s; }
              break;
            }
            case 6: lo = alo | blo; hi = ahi | bhi; break;
            default: lo = alo & blo; hi = ahi & bhi; break;
          }
        } else if (f7 === 0x20) {
          const f3 = (insn >> 12) & 7;
          if (f3 === 0) {
            lo = (alo - blo) | 0; hi = (ahi - bhi - ((alo >>> 0) < (blo >>> 0) ? 1 : 0)) | 0;
          } else if (f3 === 5) {
            const s = blo & 63;
            if (s === 0) { lo = alo; hi = ahi; } else if (s >= 32) { lo = ahi >> (s - 32); hi = ahi >> 31; } else { lo = (alo >>> s) | (ahi << (32 - s)); hi = ahi >> s; }
          } else this.illegal(insn);
        } else if (f7 === 1) {
          lo = this.mulDiv((insn >> 12) & 7, alo, ahi, blo, bhi);
          hi = this.hi;
        } else this.illegal(insn);
        x[rd] = lo; x[rd + 1] = hi;
        break;
      }
      case 0x1b: {
        // OP-IMM-32
        const a = x[rs1];
        const imm = insn >> 20;
        let r = 0;
        switch ((insn >> 12) & 7) {
          case 0: r = (a + imm) | 0; break;
          case 1: if ((insn >>> 25) !== 0) this.illegal(insn); r = a << (imm & 31); break;
          case 5: {
            const f7 = insn >>> 25;
            if (f7 === 0) r = a >>> (imm & 31) | 0; else if (f7 === 0x20) r = a >> (imm & 31); else this.illegal(insn);
            break;
          }
          default: this.illegal(insn);
        }
        x[rd] = r; x[rd + 1] = r >> 31;
        break;
      }
      case 0x3b: {
        // OP-32
        const a = x[rs1], b = x[rs2];
        const f7 = insn >>> 25;
        const f3 = (insn >> 12) & 7;
        let r = 0;
        if (f7 === 0) {
          if (f3 === 0) r = (a + b) | 0; else if (f3 === 1) r = a << (b & 31); else if (f3 === 5) r = (a >>> (b & 31)) | 0; else this.illegal(insn);
        } else if (f7 === 0x20) {
          if (f3 === 0) r = (a - b) | 0; else if (f3 === 5) r = a >> (b & 31); else this.illegal(insn);
        } else if (f7 === 1) {
          r = this.mulDivW(f3, a, b, insn);
        } else this.illegal(insn);
        x[rd] = r; x[rd + 1] = r >> 31;
        break;
      }
      case 0x37: // LUI
        x[rd] = insn & 0xfffff000; x[rd + 1] = insn >> 31;
        break;
      case 0x17: {
        // AUIPC
        const v = pc + (insn & 0xfffff000);
        x[rd] = v | 0; x[rd + 1] = Math.floor(v / TWO32) | 0;
        break;
      }
      case 0x6f: {
        leader = true;
        // JAL
        const imm = ((insn >> 31) << 20) | (((insn >> 12) & 0xff) << 12) | (((insn >> 20) & 1) << 11) | (((insn >> 21) & 0x3ff) << 1);
        x[rd] = next | 0; x[rd + 1] = Math.floor(next / TWO32) | 0;
        next = pc + imm;
        break;
      }
      case 0x67: {
        leader = true;
        // JALR
        const imm = insn >> 20;
        const lo = (x[rs1] + imm) | 0;
        const hi = (x[rs1 + 1] + (imm >> 31) + ((lo >>> 0) < (x[rs1] >>> 0) ? 1 : 0)) | 0;
        x[rd] = next | 0; x[rd + 1] = Math.floor(next / TWO32) | 0;
        next = hi * TWO32 + ((lo & ~1) >>> 0);
        break;
      }
      case 0x63: {
        leader = true;
        // BRANCH
        const alo = x[rs1], ahi = x[rs1 + 1], blo = x[rs2], bhi = x[rs2 + 1];
        let taken: boolean;
        switch ((insn >> 12) & 7) {
          case 0: taken = alo === blo && ahi === bhi; break;
          case 1: taken = alo !== blo || ahi !== bhi; break;
          case 4: taken = ahi < bhi || (ahi === bhi && (alo >>> 0) < (blo >>> 0)); break;
          case 5: taken = !(ahi < bhi || (ahi === bhi && (alo >>> 0) < (blo >>> 0))); break;
          case 6: taken = (ahi >>> 0) < (bhi >>> 0) || (ahi === bhi && (alo >>> 0) < (blo >>> 0)); break;
          case 7: taken = !((ahi >>> 0) < (bhi >>> 0) || (ahi === bhi && (alo >>> 0) < (blo >>> 0))); break;
          default: this.illegal(insn); taken = false;
        }
        if (taken) {
          next = pc + (((insn >> 31) << 12) | (((insn >> 7) & 1) << 11) | (((insn >> 25) & 0x3f) << 5) | (((insn >> 8) & 0xf) << 1));
        }
        break;
      }
      case 0x03: {
        // LOAD
        const imm = insn >> 20;
        const alo = (x[rs1] + imm) | 0;
        const ahi = (x[rs1 + 1] + (imm >> 31) + ((alo >>> 0) < (x[rs1] >>> 0) ? 1 : 0)) | 0;
        let lo = 0, hi = 0;
        const set = this.dataSet;
        const idx = (alo >>> 12) & TLB_MASK;
        const off = set.readTag[idx] === ahi * 1048576 + (alo >>> 12) ? set.readOff[idx] + (alo & 0xfff) : -1;
        switch ((insn >> 12) & 7) {
          case 0: lo = off >= 0 ? (this.ram8[off] << 24) >> 24 : (this.loadSlow(alo, ahi, 1) << 24) >> 24; hi = lo >> 31; break;
          case 1: lo = off >= 0 && (off & 1) === 0 ? (this.ram16[off >> 1] << 16) >> 16 : (this.loadSlow(alo, ahi, 2) << 16) >> 16; hi = lo >> 31; break;
          case 2: lo = off >= 0 && (off & 3) === 0 ? this.ram32[off >> 2] : this.loadSlow(alo, ahi, 4); hi = lo >> 31; break;
          case 3:
            if (off >= 0 && (off & 7) === 0 && !this.sharedRam) { lo = this.ram32[off >> 2]; hi = this.ram32[(off >> 2) + 1]; } else { lo = this.loadSlow(alo, ahi, 8); hi = this.hi; }
            break;
          case 4: lo = off >= 0 ? this.ram8[off] : this.loadSlow(alo, ahi, 1) & 0xff; break;
          case 5: lo = off >= 0 && (off & 1) === 0 ? this.ram16[off >> 1] : this.loadSlow(alo, ahi, 2) & 0xffff; break;
          case 6: lo = off >= 0 && (off & 3) === 0 ? this.ram32[off >> 2] : this.loadSlow(alo, ahi, 4); break;
          default: this.illegal(insn);
        }
        x[rd] = lo; x[rd + 1] = hi;
        break;
      }
      case 0x23: {
        // STORE
        const imm = ((insn >> 25) << 5) | ((insn >> 7) & 0x1f);
        const alo = (x[rs1] + imm) | 0;
        const ahi = (x[rs1 + 1] + (imm >> 31) + ((alo >>> 0) < (x[rs1] >>> 0) ? 1 : 0)) | 0;
        const set = this.dataSet;
        const idx = (alo >>> 12) & TLB_MASK;
        const off = set.writeTag[idx] === ahi * 1048576 + (alo >>> 12) ? set.writeOff[idx] + (alo & 0xfff) : -1;
        const vlo = x[rs2];
        switch ((insn >> 12) & 7) {
          case 0: if (off >= 0) this.ram8[off] = vlo; else this.storeSlow(alo, ahi, 1, vlo, 0); break;
          case 1: if (off >= 0 && (off & 1) === 0) this.ram16[off >> 1] = vlo; else this.storeSlow(alo, ahi, 2, vlo, 0); break;
          case 2: if (off >= 0 && (off & 3) === 0) this.ram32[off >> 2] = vlo; else this.storeSlow(alo, ahi, 4, vlo, 0); break;
          case 3:
            if (off >= 0 && (off & 7) === 0 && !this.sharedRam) { this.ram32[off >> 2] = vlo; this.ram32[(off >> 2) + 1] = x[rs2 + 1]; } else this.storeSlow(alo, ahi, 8, vlo, x[rs2 + 1]);
            break;
          default: this.illegal(insn);
        }
        break;
      }
      case 0x0f: // MISC-MEM: fence, fence.i (this hart's own stores already dropped stale code)
        if (((insn >> 12) & 7) === 1 && this.translator !== null) this.translator.fenceI();
        break;
      case 0x73:
        next = this.system(insn, pc, next);
        leader = true;
        break;
      case 0x2f:
        this.atomic(insn);
        break;
      case 0x07:
        this.fpLoad(insn);
        break;
      case 0x27:
        this.fpStore(insn);
        break;
      case 0x53: case 0x43: case 0x47: case 0x4b: case 0x4f:
        if ((this.mstatus & MSTATUS_FS) === 0 || !executeFp(this, insn)) this.illegal(insn);
        this.mstatus |= MSTATUS_FS;
        break;
      default:
        this.illegal(insn);
    }
    x[0] = 0; x[1] = 0;
    this.pc = next;
    this.instret++;
    }
  }

  // ---------------------------------------------------------------- M extension

  mulDiv(f3: number, alo: number, ahi: number, blo: number, bhi: number): number {
    switch (f3) {
      case 0:
        this.hi = (mulhu32(alo, blo) + Math.imul(ahi, blo) + Math.imul(alo, bhi)) | 0;
        return Math.imul(alo, blo);
      case 1: case 2: case 3: {
        // High 64 bits of the 128-bit product: unsigned, then corrected for signed operands.
        let lo = mulhu64(alo, ahi, blo, bhi);
        let hi = mulhu64Hi;
        if (f3 !== 3 && ahi < 0) { const l = (lo - blo) | 0; hi = (hi - bhi - ((lo >>> 0) < (blo >>> 0) ? 1 : 0)) | 0; lo = l; }
        if (f3 === 1 && bhi < 0) { const l = (lo - alo) | 0; hi = (hi - ahi - ((lo >>> 0) < (alo >>> 0) ? 1 : 0)) | 0; lo = l; }
        this.hi = hi;
        return lo;
      }
    }
    // Division: doubles are exact while both operands are below 2^52; BigInt otherwise.
    if (f3 === 5 || f3 === 7) {
      if (ahi >>> 20 === 0 && bhi >>> 20 === 0 && (bhi | blo) !== 0) {
        const a = ahi * TWO32 + (alo >>> 0), b = bhi * TWO32 + (blo >>> 0);
        const q = Math.floor(a / b);
        let r = a - q * b;
        let qq = q;
        if (r < 0) { qq--; r += b; } else if (r >= b) { qq++; r -= b; }
        const v = f3 === 5 ? qq : r;
        this.hi = Math.floor(v / TWO32) | 0;
        return v | 0;
      }
    }
    const a = (BigInt(ahi) << 32n) | BigInt(alo >>> 0);
    const b = (BigInt(bhi) << 32n) | BigInt(blo >>> 0);
    const au = BigInt.asUintN(64, a), bu = BigInt.asUintN(64, b);
    let r: bigint;
    switch (f3) {
      case 4: r = b === 0n ? -1n : a === -(1n << 63n) && b === -1n ? a : a / b; break;
      case 5: r = bu === 0n ? -1n : au / bu; break;
      case 6: r = b === 0n ? a : a === -(1n << 63n) && b === -1n ? 0n : a % b; break;
      default: r = bu === 0n ? a : au % bu; break;
    }
    this.hi = Number(BigInt.asIntN(32, r >> 32n));
    return Number(BigInt.asIntN(32, r));
  }

  mulDivW(f3: number, a: number, b: number, insn: number): number {
    switch (f3) {
      case 0: return Math.imul(a, b);
      case 4: return b === 0 ? -1 : a === -2147483648 && b === -1 ? a : (a / b) | 0;
      case 5: return b === 0 ? -1 : ((a >>> 0) / (b >>> 0)) | 0;
      case 6: return b === 0 ? a : a === -2147483648 && b === -1 ? 0 : (a % b) | 0;
      case 7: return b === 0 ? a : ((a >>> 0) % (b >>> 0)) | 0;
      default: this.illegal(insn); return 0;
    }
  }

  // ---------------------------------------------------------------- memory: slow paths

  /** Any load the TLB fast path could not serve: misaligned, MMIO, TLB miss. Returns the low word. */
  loadSlow(lo: number, hi: number, size: number): number {
    if ((lo & (size - 1)) !== 0) return this.loadMisaligned(lo, hi, size);
    const pa = this.translate(lo, hi, ACCESS_READ);
    const off = pa - this.ramBase;
    if (off >= 0 && off < this.ramSize) {
      if (size === 8) {
        if (this.sharedRam) {
          this.pairF64[0] = this.ramF64[off >> 3];
          this.hi = this.pairI32[1];
          return this.pairI32[0];
        }
        this.hi = this.ram32[(off >> 2) + 1];
        return this.ram32[off >> 2];
      }
      this.hi = 0;
      if (size === 4) return this.ram32[off >> 2];
      if (size === 2) return this.ram16[off >> 1];
      return this.ram8[off];
    }
    if (size === 8) {
      const l = this.bus.mmioRead(pa, 4);
      const h = this.bus.mmioRead(pa + 4, 4);
      if (l === undefined || h === undefined) this.raise(CAUSE_LOAD_ACCESS, lo, hi);
      this.hi = h! | 0;
      return l! | 0;
    }
    const v = this.bus.mmioRead(pa, size as 1 | 2 | 4);
    if (v === undefined) this.raise(CAUSE_LOAD_ACCESS, lo, hi);
    this.hi = 0;
    return size === 4 ? v! | 0 : v! & (size === 2 ? 0xffff : 0xff);
  }

  private loadMisaligned(lo: number, hi: number, size: number): number {
    // Byte by byte: each byte may sit on another page (and fault on its own).
    let rlo = 0, rhi = 0;
    for (let i = 0; i < size; i++) {
      const blo = (lo + i) | 0;
      const bhi = (hi + ((blo >>> 0) < (lo >>> 0) ? 1 : 0)) | 0;
      const b = this.loadSlow(blo, bhi, 1) & 0xff;
      if (i < 4) rlo |= b << (8 * i); else rhi |= b << (8 * (i - 4));
    }
    this.hi = rhi;
    return rlo;
  }

  storeSlow(lo: number, hi: number, size: number, vlo: number, vhi: number): void {
    if ((lo & (size - 1)) !== 0) {
      // Translate every byte first so a fault leaves memory untouched.
      for (let i = 0; i < size; i++) {
        const blo = (lo + i) | 0;
        this.translate(blo, (hi + ((blo >>> 0) < (lo >>> 0) ? 1 : 0)) | 0, ACCESS_WRITE);
      }
      for (let i = 0; i < size; i++) {
        const blo = (lo + i) | 0;
        const b = i < 4 ? vlo >>> (8 * i) : vhi >>> (8 * (i - 4));
        this.storeSlow(blo, (hi + ((blo >>> 0) < (lo >>> 0) ? 1 : 0)) | 0, 1, b & 0xff, 0);
      }
      return;
    }
    const pa = this.translate(lo, hi, ACCESS_WRITE);
    const off = pa - this.ramBase;
    if (off >= 0 && off < this.ramSize) {
      if (size === 8 && this.sharedRam) {
        this.pairI32[0] = vlo;
        this.pairI32[1] = vhi;
        this.ramF64[off >> 3] = this.pairF64[0];
      } else if (size === 8) { this.ram32[off >> 2] = vlo; this.ram32[(off >> 2) + 1] = vhi; }
      else if (size === 4) this.ram32[off >> 2] = vlo;
      else if (size === 2) this.ram16[off >> 1] = vlo;
      else this.ram8[off] = vlo;
      return;
    }
    let ok: boolean;
    if (size === 8) ok = this.bus.mmioWrite(pa, vlo, 4) && this.bus.mmioWrite(pa + 4, vhi, 4);
    else ok = this.bus.mmioWrite(pa, size === 4 ? vlo : vlo & (size === 2 ? 0xffff : 0xff), size as 1 | 2 | 4);
    if (!ok) this.raise(CAUSE_STORE_ACCESS, lo, hi);
  }

  /** RAM offset for an aligned data access, faulting as the access would; for AMOs and FP. */
  private dataOffset(lo: number, hi: number, size: number, access: number): number {
    if ((lo & (size - 1)) !== 0) this.raise(access === ACCESS_WRITE ? CAUSE_MISALIGNED_STORE : CAUSE_MISALIGNED_LOAD, lo, hi);
    const pa = this.translate(lo, hi, access);
    const off = pa - this.ramBase;
    if (off >= 0 && off < this.ramSize) return off;
    this.raise(access === ACCESS_WRITE ? CAUSE_STORE_ACCESS : CAUSE_LOAD_ACCESS, lo, hi);
    return 0;
  }

  // ---------------------------------------------------------------- MMU

  private refillFetch(pc: number): void {
    const inPage = (pc | 0) & 0xfff;
    this.fetchPageOff = this.fetchOffset(pc) - inPage;
    this.fetchPageVa = pc - inPage;
  }

  /** The upper half of a 32-bit instruction that starts in the last halfword of a page. */
  private fetchCrossPage(pc: number, low: number): number {
    const next = pc + 2;
    const lo = next | 0;
    const hi = Math.floor(next / TWO32) | 0;
    // A fault here belongs to the instruction at pc, with tval naming the second page.
    const pa = this.translate(lo, hi, ACCESS_FETCH);
    const off = pa - this.ramBase;
    if (!(off >= 0 && off < this.ramSize)) this.raise(CAUSE_FETCH_ACCESS, lo, hi);
    return low | (this.ram16[off >> 1] << 16);
  }

  /** Effective privilege for data accesses (MPRV makes M-mode loads and stores act as MPP). */
  private dataPriv(): number {
    if (this.priv === PRIV_M && (this.mstatus & MSTATUS_MPRV) !== 0) return (this.mstatus & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT;
    return this.priv;
  }

  /** Points the active TLB sets at the current privilege; call after priv or MPRV/MPP change. */
  private updateMode(): void {
    const fetchIndex = this.priv === PRIV_M ? 0 : this.priv === PRIV_S ? 1 : 2;
    this.fetchSet = this.tlbSets[fetchIndex];
    this.fetchKey = this.tlbEpochs[fetchIndex] * 4 + fetchIndex;
    const dp = this.dataPriv();
    this.dataSet = this.tlbSets[dp === PRIV_M ? 0 : dp === PRIV_S ? 1 : 2];
    this.fetchPageVa = NaN;
  }

  /** Drops every cached translation of S and U mode (satp write, sfence.vma). */
  flushTlb(): void {
    this.tlbSets[1].flush();
    this.tlbSets[2].flush();
    this.fetchPageVa = NaN;
    this.tlbEpochs[1]++;
    this.tlbEpochs[2]++;
    this.linkedPages.fill(0);
    this.linkedNonGlobal.fill(0);
    this.updateMode();
  }

  /**
   * A satp write with paging on before and after: another address space (Yun keeps no ASIDs), in
   * which global mappings stay valid (the privileged spec lets them serve every address space).
   * A set's key changes only when its links may lead to a non-global page.
   */
  private switchAddressSpace(): void {
    this.fetchPageVa = NaN;
    const span = 4 << LINK_FILTER_BITS;
    for (let set = 1; set <= 2; set++) {
      this.tlbSets[set].flushNonGlobal();
      if (this.linkedNonGlobal[set] === 0) continue;
      this.linkedNonGlobal[set] = 0;
      this.tlbEpochs[set]++;
      this.linkedPages.fill(0, set * span, (set + 1) * span);
    }
    this.updateMode();
  }

  /**
   * sfence.vma of one virtual address: drops its S and U entries (and those of a superpage over
   * it). Linux does this after every page fault it fixes; flushing everything there made every
   * fork refill the TLB and lose every translated-code link hundreds of times.
   */
  flushTlbPage(lo: number, hi: number): void {
    const tag = hi * 1048576 + (lo >>> 12);
    const idx = (lo >>> 12) & TLB_MASK;
    this.tlbSets[1].flushPage(tag, idx);
    this.tlbSets[2].flushPage(tag, idx);
    this.fetchPageVa = NaN;
    const f = this.linkedPages;
    const span = 4 << LINK_FILTER_BITS;
    let changed = false;
    for (let set = 1; set <= 2; set++) {
      let hit = 0;
      for (let level = 0; level < 4; level++) {
        hit |= f[set * span + (level << LINK_FILTER_BITS) + (Math.floor(tag / LEVEL_PAGES[level]) & LINK_FILTER_MASK)];
      }
      if (hit === 0) continue;
      // A link may lead to code on this page: links hold only within one key.
      this.tlbEpochs[set]++;
      f.fill(0, set * span, (set + 1) * span);
      this.linkedNonGlobal[set] = 0;
      changed = true;
    }
    if (changed) this.updateMode();
  }

  /**
   * The translator is about to link to (or cache) the block at `pc`, found through the fetch TLB
   * just now: note its virtual page at the level of the leaf that maps it, for flushTlbPage.
   */
  noteLinkTarget(pc: number): void {
    const lo = pc | 0;
    const tag = (Math.floor(pc / TWO32) | 0) * 1048576 + (lo >>> 12);
    const idx = (lo >>> 12) & TLB_MASK;
    const set = this.fetchSet;
    const hit = set.fetchTag[idx] === tag;
    const level = hit ? set.levels[2 * TLB_SIZE + idx] : 0;
    const index = this.fetchKey & 3;
    if (!hit || set.globals[2 * TLB_SIZE + idx] === 0) this.linkedNonGlobal[index] = 1;
    this.linkedPages[index * (4 << LINK_FILTER_BITS) + (level << LINK_FILTER_BITS) + (Math.floor(tag / LEVEL_PAGES[level]) & LINK_FILTER_MASK)] = 1;
  }

  /** Drops every write translation: the next store to each page goes through translate() again. */
  flushWriteTlb(): void {
    for (const set of this.tlbSets) set.writeTag.fill(NaN);
  }

  /** Drops every cached translation of every mode (RAM was replaced: snapshot restore). */
  flushAllTlbs(): void {
    this.tlbSets[0].flush();
    this.flushTlb();
  }

  /** Drops write translations that point at a physical RAM page (it now holds translated code). */
  purgeWriteTlb(page: number): void {
    const pageOff = page * 4096;
    for (const set of this.tlbSets) {
      for (let i = 0; i < TLB_SIZE; i++) if (set.writeOff[i] === pageOff) set.writeTag[i] = NaN;
    }
  }

  /** RAM offset of the instruction at virtual address `pc`, raising the fetch fault if there is none. */
  fetchOffset(pc: number): number {
    const lo = pc | 0;
    const hi = Math.floor(pc / TWO32) | 0;
    const set = this.fetchSet;
    const idx = (lo >>> 12) & TLB_MASK;
    if (set.fetchTag[idx] === hi * 1048576 + (lo >>> 12)) return set.fetchOff[idx] + (lo & 0xfff);
    const pa = this.translate(lo, hi, ACCESS_FETCH);
    const off = pa - this.ramBase;
    if (!(off >= 0 && off < this.ramSize)) this.raise(CAUSE_FETCH_ACCESS, lo, hi);
    return off;
  }

  /**
   * Executes one instruction that neither transfers control nor depends on the pc (AMO, FP, the CSR
   * instructions of block.ts csrInBlock) for translated code; `this.pc` must point at it so that a
   * trap reports the right address.
   */
  executeHelper(insn: number): void {
    switch (insn & 0x7f) {
      case 0x2f: this.atomic(insn); break;
      case 0x07: this.fpLoad(insn); break;
      case 0x27: this.fpStore(insn); break;
      case 0x73: this.csrInstruction(insn, (insn >> 12) & 7); break; // block.ts csrInBlock
      default:
        if ((this.mstatus & MSTATUS_FS) === 0 || !executeFp(this, insn)) this.illegal(insn);
        this.mstatus |= MSTATUS_FS;
    }
    this.x[0] = 0;
    this.x[1] = 0;
  }

  /**
   * Translates a virtual address for an access, raising the right fault; fills the TLB when the
   * target is RAM. Returns the physical address.
   */
  translate(lo: number, hi: number, access: number): number {
    const priv = access === ACCESS_FETCH ? this.priv : this.dataPriv();
    const cached = this.tlbSets[priv === PRIV_M ? 0 : priv === PRIV_S ? 1 : 2];
    const cidx = (lo >>> 12) & TLB_MASK;
    const ctag = hi * 1048576 + (lo >>> 12);
    if (access === ACCESS_READ) {
      if (cached.readTag[cidx] === ctag) return this.ramBase + cached.readOff[cidx] + (lo & 0xfff);
    } else if (access === ACCESS_WRITE) {
      if (cached.writeTag[cidx] === ctag) return this.ramBase + cached.writeOff[cidx] + (lo & 0xfff);
    } else if (cached.fetchTag[cidx] === ctag) {
      return this.ramBase + cached.fetchOff[cidx] + (lo & 0xfff);
    }
    const mode = this.satpHi >>> 28;
    let pa: number;
    let level = 0;
    let global = 0;
    if (priv === PRIV_M || mode === 0) {
      pa = (hi >>> 0) * TWO32 + (lo >>> 0);
    } else {
      pa = this.walk(lo, hi, access, priv, mode);
      level = this.walkLevel;
      global = this.walkGlobal ? 1 : 0;
    }
    const off = pa - this.ramBase;
    if (off >= 0 && off < this.ramSize) {
      const set = this.tlbSets[priv === PRIV_M ? 0 : priv === PRIV_S ? 1 : 2];
      const idx = (lo >>> 12) & TLB_MASK;
      const tag = hi * 1048576 + (lo >>> 12);
      const pageOff = off - (off & 0xfff);
      set.levels[access * TLB_SIZE + idx] = level;
      set.globals[access * TLB_SIZE + idx] = global;
      if (level !== 0) set.hasSuperpages = true;
      if (access === ACCESS_READ) { set.readTag[idx] = tag; set.readOff[idx] = pageOff; }
      else if (access === ACCESS_WRITE) {
        const codePages = this.codePages;
        if (codePages !== null && codePages[pageOff >>> 12] !== 0) this.codeWritten!(pageOff >>> 12);
        const dirty = this.dirtyPages;
        if (dirty !== null) dirty[pageOff >>> 12] = 1;
        set.writeTag[idx] = tag;
        set.writeOff[idx] = pageOff;
      }
      else { set.fetchTag[idx] = tag; set.fetchOff[idx] = pageOff; }
    }
    return pa;
  }

  private pageFault(access: number, lo: number, hi: number): never {
    this.raise(access === ACCESS_FETCH ? CAUSE_FETCH_PAGE_FAULT : access === ACCESS_WRITE ? CAUSE_STORE_PAGE_FAULT : CAUSE_LOAD_PAGE_FAULT, lo, hi);
  }

  private walk(lo: number, hi: number, access: number, priv: number, mode: number): number {
    const levels = mode === 9 ? 4 : 3;
    if (mode !== 8 && mode !== 9) this.pageFault(access, lo, hi);
    // The address must be sign-extended from bit 38 (Sv39) or 47 (Sv48).
    const top = mode === 9 ? hi >> 15 : hi >> 6;
    if (top !== 0 && top !== -1) this.pageFault(access, lo, hi);
    let table = ((this.satpHi & 0xfff) * TWO32 + (this.satpLo >>> 0)) * 4096;
    let global = 0;
    for (let level = levels - 1; level >= 0; level--) {
      let vpn: number;
      if (level === 0) vpn = (lo >>> 12) & 0x1ff;
      else if (level === 1) vpn = (lo >>> 21) & 0x1ff;
      else if (level === 2) vpn = ((lo >>> 30) | (hi << 2)) & 0x1ff;
      else vpn = (hi >>> 7) & 0x1ff;
      const pteAddr = table + vpn * 8;
      const poff = pteAddr - this.ramBase;
      if (!(poff >= 0 && poff < this.ramSize)) {
        this.raise(access === ACCESS_FETCH ? CAUSE_FETCH_ACCESS : access === ACCESS_WRITE ? CAUSE_STORE_ACCESS : CAUSE_LOAD_ACCESS, lo, hi);
      }
      let pteLo = this.ram32[poff >> 2];
      const pteHi = this.ram32[(poff >> 2) + 1];
      if ((pteLo & 1) === 0 || (pteLo & 6) === 4 || (pteHi >>> 22) !== 0) this.pageFault(access, lo, hi);
      const ppn = (pteHi & 0x3fffff) * 4194304 + (pteLo >>> 10);
      global |= pteLo & 0x20; // G: here and in every table above
      if ((pteLo & 0xa) === 0) {
        // pointer to the next level
        if (level === 0 || (pteLo & 0xd0) !== 0) this.pageFault(access, lo, hi);
        table = ppn * 4096;
        continue;
      }
      // leaf: permissions
      if (access === ACCESS_FETCH) {
        if ((pteLo & 8) === 0) this.pageFault(access, lo, hi);
      } else if (access === ACCESS_WRITE) {
        if ((pteLo & 4) === 0) this.pageFault(access, lo, hi);
      } else if ((pteLo & 2) === 0 && !((this.mstatus & MSTATUS_MXR) !== 0 && (pteLo & 8) !== 0)) {
        this.pageFault(access, lo, hi);
      }
      const user = (pteLo & 0x10) !== 0;
      if (priv === PRIV_U) {
        if (!user) this.pageFault(access, lo, hi);
      } else if (user && (access === ACCESS_FETCH || (this.mstatus & MSTATUS_SUM) === 0)) {
        this.pageFault(access, lo, hi);
      }
      // superpage alignment
      const lowBits = 9 * level;
      const lowMask = lowBits === 0 ? 0 : (1 << lowBits) - 1;
      if (lowBits !== 0 && (ppn % (lowMask + 1)) !== 0) this.pageFault(access, lo, hi);
      // accessed / dirty, set by the hardware walker
      const need = access === ACCESS_WRITE ? 0xc0 : 0x40;
      if ((pteLo & need) !== need) {
        if (this.ram64 !== null) {
          // Another hart may change this PTE meanwhile: update it only if it is still the one read.
          if (Atomics.compareExchange(this.ram32, poff >> 2, pteLo, pteLo | need) !== pteLo) {
            return this.walk(lo, hi, access, priv, mode);
          }
        } else {
          this.ram32[poff >> 2] = pteLo | need;
        }
        pteLo |= need;
        if (this.dirtyPages !== null) this.dirtyPages[poff >>> 12] = 1;
      }
      const vpnLow = ((lo >>> 12) | (hi << 20)) & lowMask;
      this.walkLevel = level;
      this.walkGlobal = global !== 0;
      return (ppn + vpnLow) * 4096 + (lo & 0xfff);
    }
    return this.pageFault(access, lo, hi);
  }

  // ---------------------------------------------------------------- traps and interrupts

  private illegal(insn: number): never {
    // A compressed instruction reports its own 16 bits, not its expansion.
    // (The translator runs helpers without the interpreter's fetch page, so look the pc up again.)
    const parcel = this.ram16[this.fetchOffset(this.pc) >>> 1];
    if ((parcel & 3) !== 3) this.raise(CAUSE_ILLEGAL_INSTRUCTION, parcel, 0);
    this.raise(CAUSE_ILLEGAL_INSTRUCTION, insn, 0);
  }

  /** Takes a synchronous exception at the current pc and unwinds the instruction. */
  raise(cause: number, tvalLo: number, tvalHi: number): never {
    this.takeTrap(cause, tvalLo, tvalHi, false);
    throw TRAP;
  }

  /** Highest-priority interrupt that is pending, enabled and allowed at this privilege, or -1. */
  pendingInterrupt(): number {
    const pending = this.mip & this.mie;
    if (pending === 0) return -1;
    const mLevel = pending & ~this.mideleg;
    if (mLevel !== 0 && (this.priv < PRIV_M || (this.mstatus & MSTATUS_MIE) !== 0)) return highestInterrupt(mLevel);
    const sLevel = pending & this.mideleg;
    if (sLevel !== 0 && (this.priv < PRIV_S || (this.priv === PRIV_S && (this.mstatus & MSTATUS_SIE) !== 0))) {
      return highestInterrupt(sLevel);
    }
    return -1;
  }

  takeTrap(cause: number, tvalLo: number, tvalHi: number, interrupt: boolean): void {
    this.reservationValid = false;
    this.waiting = false;
    const deleg = interrupt ? this.mideleg : this.medeleg;
    if (this.priv <= PRIV_S && ((deleg >>> cause) & 1) !== 0) {
      this.sepc = this.pc;
      this.scauseLo = cause;
      this.scauseInterrupt = interrupt;
      this.stvalLo = tvalLo;
      this.stvalHi = tvalHi;
      let s = this.mstatus;
      s = (s & MSTATUS_SIE) !== 0 ? s | MSTATUS_SPIE : s & ~MSTATUS_SPIE;
      s = this.priv === PRIV_S ? s | MSTATUS_SPP : s & ~MSTATUS_SPP;
      this.mstatus = s & ~MSTATUS_SIE;
      this.priv = PRIV_S;
      const base = this.stvec - (this.stvec % 4 + 4) % 4;
      this.pc = interrupt && (this.stvec & 3) === 1 ? base + 4 * cause : base;
    } else {
      this.mepc = this.pc;
      this.mcauseLo = cause;
      this.mcauseInterrupt = interrupt;
      this.mtvalLo = tvalLo;
      this.mtvalHi = tvalHi;
      let s = this.mstatus;
      s = (s & MSTATUS_MIE) !== 0 ? s | MSTATUS_MPIE : s & ~MSTATUS_MPIE;
      s = (s & ~MSTATUS_MPP) | (this.priv << MSTATUS_MPP_SHIFT);
      this.mstatus = s & ~MSTATUS_MIE;
      this.priv = PRIV_M;
      const base = this.mtvec - (this.mtvec % 4 + 4) % 4;
      this.pc = interrupt && (this.mtvec & 3) === 1 ? base + 4 * cause : base;
    }
    this.updateMode();
    this.attention = true;
    if (this.stopOnTrap) this.stopRequested = true;
  }

  /** Continues in U-mode at `pc` (user-mode emulation: after serving a trap, or at a program's entry). */
  enterUserMode(pc: number): void {
    this.priv = PRIV_U;
    this.pc = pc;
    this.reservationValid = false;
    this.updateMode();
    this.attention = true;
  }

  // ---------------------------------------------------------------- SYSTEM

  private system(insn: number, pc: number, next: number): number {
    const f3 = (insn >> 12) & 7;
    if (f3 !== 0) {
      this.csrInstruction(insn, f3);
      return next;
    }
    const rd = (insn >> 7) & 31;
    if (insn === 0x00000073) {
      // ECALL
      const cause = CAUSE_ECALL_U + this.priv;
      if (cause === CAUSE_ECALL_S && this.ecallHandler !== null && this.ecallHandler(this)) return next;
      this.takeTrap(cause, 0, 0, false);
      throw TRAP;
    }
    if (insn === 0x00100073) {
      this.takeTrap(CAUSE_BREAKPOINT, pc | 0, Math.floor(pc / TWO32) | 0, false);
      throw TRAP;
    }
    if (insn === 0x30200073) {
      // MRET
      if (this.priv < PRIV_M) this.illegal(insn);
      let s = this.mstatus;
      const mpp = (s & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT;
      s = (s & MSTATUS_MPIE) !== 0 ? s | MSTATUS_MIE : s & ~MSTATUS_MIE;
      s |= MSTATUS_MPIE;
      s &= ~MSTATUS_MPP;
      if (mpp !== PRIV_M) s &= ~MSTATUS_MPRV;
      this.mstatus = s;
      this.priv = mpp;
      this.reservationValid = false;
      this.updateMode();
      this.attention = true;
      return this.mepc;
    }
    if (insn === 0x10200073) {
      // SRET
      if (this.priv < PRIV_S || (this.priv === PRIV_S && (this.mstatus & MSTATUS_TSR) !== 0)) this.illegal(insn);
      let s = this.mstatus;
      const spp = (s & MSTATUS_SPP) !== 0 ? PRIV_S : PRIV_U;
      s = (s & MSTATUS_SPIE) !== 0 ? s | MSTATUS_SIE : s & ~MSTATUS_SIE;
      s |= MSTATUS_SPIE;
      s &= ~MSTATUS_SPP;
      s &= ~MSTATUS_MPRV;
      this.mstatus = s;
      this.priv = spp;
      this.reservationValid = false;
      this.updateMode();
      this.attention = true;
      return this.sepc;
    }
    if (insn === 0x10500073) {
      // WFI
      if (this.priv === PRIV_U || (this.priv === PRIV_S && (this.mstatus & MSTATUS_TW) !== 0)) this.illegal(insn);
      if ((this.mip & this.mie) === 0) {
        this.waiting = true;
        this.attention = true;
      }
      return next;
    }
    if ((insn >>> 25) === 0x09 && rd === 0) {
      // SFENCE.VMA
      if (this.priv === PRIV_U || (this.priv === PRIV_S && (this.mstatus & MSTATUS_TVM) !== 0)) this.illegal(insn);
      // One address (any ASID: ASIDs are not kept apart, so dropping more is always right) or all.
      const rs1 = (insn >> 15) & 31;
      if (rs1 !== 0) this.flushTlbPage(this.x[2 * rs1], this.x[2 * rs1 + 1]);
      else this.flushTlb();
      return next;
    }
    this.illegal(insn);
  }

  private csrInstruction(insn: number, f3: number): void {
    const csr = insn >>> 20;
    const rd = (insn >> 7) & 31;
    const rs1 = (insn >> 15) & 31;
    const x = this.x;
    const op = f3 & 3;
    let srcLo: number, srcHi: number;
    if (f3 & 4) { srcLo = rs1; srcHi = 0; } else { srcLo = x[2 * rs1]; srcHi = x[2 * rs1 + 1]; }
    const writes = op === 1 || rs1 !== 0;
    if (((csr >> 8) & 3) > this.priv) this.illegal(insn);
    if (writes && (csr >>> 10) === 3) this.illegal(insn);
    let oldLo = 0, oldHi = 0;
    if (op !== 1 || rd !== 0) {
      oldLo = this.readCsr(csr, insn);
      oldHi = this.hi;
    }
    if (writes) {
      let nlo = srcLo, nhi = srcHi;
      if (op === 2) { nlo = oldLo | srcLo; nhi = oldHi | srcHi; }
      else if (op === 3) { nlo = oldLo & ~srcLo; nhi = oldHi & ~srcHi; }
      this.writeCsr(csr, nlo, nhi, insn);
    }
    if (rd !== 0) { x[2 * rd] = oldLo; x[2 * rd + 1] = oldHi; }
  }

  private counterAllowed(bit: number): boolean {
    if (this.priv === PRIV_M) return true;
    if (((this.mcounteren >> bit) & 1) === 0) return false;
    return this.priv === PRIV_S || ((this.scounteren >> bit) & 1) !== 0;
  }

  private fsCheck(insn: number): void {
    if ((this.mstatus & MSTATUS_FS) === 0) this.illegal(insn);
  }

  private numberResult(v: number): number {
    this.hi = Math.floor(v / TWO32) | 0;
    return v | 0;
  }

  /** Reads a CSR; returns the low word (high word in this.hi). Illegal-instruction for unknown CSRs. */
  readCsr(csr: number, insn = 0): number {
    this.hi = 0;
    switch (csr) {
      case CSR.fflags: this.fsCheck(insn); return this.fflags;
      case CSR.frm: this.fsCheck(insn); return this.frm;
      case CSR.fcsr: this.fsCheck(insn); return (this.frm << 5) | this.fflags;
      case CSR.cycle: if (!this.counterAllowed(0)) this.illegal(insn); return this.numberResult(this.instret);
      case CSR.time: if (!this.counterAllowed(1)) this.illegal(insn); return this.numberResult(this.clock.now());
      case CSR.instret: if (!this.counterAllowed(2)) this.illegal(insn); return this.numberResult(this.instret);
      case CSR.mcycle: case CSR.minstret: return this.numberResult(this.instret);
      case CSR.sstatus: {
        const s = this.mstatus & SSTATUS_MASK;
        this.hi = 2 | ((s & MSTATUS_FS) === MSTATUS_FS ? 0x80000000 : 0); // UXL=2, SD
        return s;
      }
      case CSR.sie: return this.mie & this.mideleg;
      case CSR.sip: return this.mip & this.mideleg;
      case CSR.stvec: return this.numberResult(this.stvec);
      case CSR.scounteren: return this.scounteren;
      case CSR.senvcfg: return this.senvcfg;
      case CSR.sscratch: this.hi = this.sscratch[1]; return this.sscratch[0];
      case CSR.sepc: return this.numberResult(this.sepc);
      case CSR.scause: this.hi = this.scauseInterrupt ? 0x80000000 | 0 : 0; return this.scauseLo;
      case CSR.stval: this.hi = this.stvalHi; return this.stvalLo;
      case CSR.satp:
        if (this.priv === PRIV_S && (this.mstatus & MSTATUS_TVM) !== 0) this.illegal(insn);
        this.hi = this.satpHi; return this.satpLo;
      case CSR.mvendorid: case CSR.marchid: case CSR.mimpid: case CSR.mconfigptr: return 0;
      case CSR.mhartid: return this.hartId;
      case CSR.mstatus:
        this.hi = MSTATUS_HI_FIXED | ((this.mstatus & MSTATUS_FS) === MSTATUS_FS ? 0x80000000 : 0);
        return this.mstatus;
      case CSR.misa: this.hi = MISA_HI; return MISA_LO;
      case CSR.medeleg: return this.medeleg;
      case CSR.mideleg: return this.mideleg;
      case CSR.mie: return this.mie;
      case CSR.mip: return this.mip;
      case CSR.mtvec: return this.numberResult(this.mtvec);
      case CSR.mcounteren: return this.mcounteren;
      case CSR.menvcfg: return this.menvcfg;
      case CSR.mcountinhibit: return this.mcountinhibit;
      case CSR.mscratch: this.hi = this.mscratch[1]; return this.mscratch[0];
      case CSR.mepc: return this.numberResult(this.mepc);
      case CSR.mcause: this.hi = this.mcauseInterrupt ? 0x80000000 | 0 : 0; return this.mcauseLo;
      case CSR.mtval: this.hi = this.mtvalHi; return this.mtvalLo;
      case CSR.mtinst: case CSR.mtval2: return 0;
    }
    if (csr >= 0x3a0 && csr <= 0x3af) {
      if (csr & 1) this.illegal(insn);
      const i = (csr - 0x3a0) >> 1;
      this.hi = this.pmpcfg[2 * i + 1];
      return this.pmpcfg[2 * i];
    }
    if (csr >= 0x3b0 && csr <= 0x3ef) return this.numberResult(this.pmpaddr[csr - 0x3b0]);
    // hpm counters and events: present, always zero
    if ((csr >= 0xb03 && csr <= 0xb1f) || (csr >= 0x323 && csr <= 0x33f)) return 0;
    if (csr >= 0xc03 && csr <= 0xc1f) {
      if (!this.counterAllowed(csr - 0xc00)) this.illegal(insn);
      return 0;
    }
    this.illegal(insn);
  }

  writeCsr(csr: number, lo: number, hi: number, insn = 0): void {
    const num = (hi | 0) * TWO32 + (lo >>> 0);
    switch (csr) {
      case CSR.fflags: this.fsCheck(insn); this.fflags = lo & 0x1f; this.mstatus |= MSTATUS_FS; return;
      case CSR.frm: this.fsCheck(insn); this.frm = lo & 7; this.mstatus |= MSTATUS_FS; return;
      case CSR.fcsr: this.fsCheck(insn); this.fflags = lo & 0x1f; this.frm = (lo >> 5) & 7; this.mstatus |= MSTATUS_FS; return;
      case CSR.sstatus: this.setMstatus((this.mstatus & ~SSTATUS_MASK) | (lo & SSTATUS_MASK)); return;
      case CSR.sie: this.mie = (this.mie & ~this.mideleg) | (lo & this.mideleg); this.attention = true; return;
      case CSR.sip: {
        const m = this.mideleg & MIP_SSIP;
        this.mip = (this.mip & ~m) | (lo & m);
        this.attention = true;
        return;
      }
      case CSR.stvec: this.stvec = num - (((lo & 3) === 2 || (lo & 3) === 3) ? (lo & 2) : 0); return;
      case CSR.scounteren: this.scounteren = lo & 7; return;
      case CSR.senvcfg: this.senvcfg = lo & 1; return;
      case CSR.sscratch: this.sscratch[0] = lo; this.sscratch[1] = hi; return;
      case CSR.sepc: this.sepc = num - (num % 2 === 0 ? 0 : 1); return;
      case CSR.scause: this.scauseLo = lo & 0x3f; this.scauseInterrupt = hi < 0; return;
      case CSR.stval: this.stvalLo = lo; this.stvalHi = hi; return;
      case CSR.satp: {
        if (this.priv === PRIV_S && (this.mstatus & MSTATUS_TVM) !== 0) this.illegal(insn);
        const mode = hi >>> 28;
        if (mode !== 0 && mode !== 8 && mode !== 9) return;
        // ASID: 16 bits writable; PPN: 44 bits
        const oldMode = this.satpHi >>> 28;
        this.satpHi = hi;
        this.satpLo = lo;
        // Paging turned on or off (or Sv39 <-> Sv48): nothing cached holds.
        if (oldMode !== 0 && oldMode === mode) this.switchAddressSpace();
        else this.flushTlb();
        return;
      }
      case CSR.mstatus: this.setMstatus((this.mstatus & ~MSTATUS_WRITABLE) | (lo & MSTATUS_WRITABLE)); return;
      case CSR.misa: return;
      case CSR.medeleg: this.medeleg = lo & 0xb3ff; return; // all but ecall from M and reserved causes
      case CSR.mideleg: this.mideleg = lo & S_INTERRUPTS; this.attention = true; return;
      case CSR.mie: this.mie = lo & ALL_INTERRUPTS; this.attention = true; return;
      case CSR.mip: {
        const m = MIP_SSIP | MIP_STIP | MIP_SEIP;
        this.mip = (this.mip & ~m) | (lo & m);
        this.attention = true;
        return;
      }
      case CSR.mtvec: this.mtvec = num - (((lo & 3) === 2 || (lo & 3) === 3) ? (lo & 2) : 0); return;
      case CSR.mcounteren: this.mcounteren = lo & 7; return;
      case CSR.menvcfg: this.menvcfg = lo & 1; return;
      case CSR.mcountinhibit: this.mcountinhibit = lo & 5; return;
      case CSR.mscratch: this.mscratch[0] = lo; this.mscratch[1] = hi; return;
      case CSR.mepc: this.mepc = num - (num % 2 === 0 ? 0 : 1); return;
      case CSR.mcause: this.mcauseLo = lo & 0x3f; this.mcauseInterrupt = hi < 0; return;
      case CSR.mtval: this.mtvalLo = lo; this.mtvalHi = hi; return;
      case CSR.mtinst: case CSR.mtval2: return;
      case CSR.mcycle: case CSR.minstret: this.instret = num; return;
      case CSR.mvendorid: case CSR.marchid: case CSR.mimpid: case CSR.mhartid: case CSR.mconfigptr:
        this.illegal(insn);
    }
    if (csr >= 0x3a0 && csr <= 0x3af) {
      if (csr & 1) this.illegal(insn);
      const i = (csr - 0x3a0) >> 1;
      this.pmpcfg[2 * i] = lo;
      this.pmpcfg[2 * i + 1] = hi;
      return;
    }
    if (csr >= 0x3b0 && csr <= 0x3ef) {
      this.pmpaddr[csr - 0x3b0] = (hi & 0x3fffff) * TWO32 + (lo >>> 0); // 54-bit address field
      return;
    }
    if ((csr >= 0xb03 && csr <= 0xb1f) || (csr >= 0x323 && csr <= 0x33f)) return;
    this.illegal(insn);
  }

  private setMstatus(v: number): void {
    if (((v & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT) === 2) v &= ~MSTATUS_MPP; // MPP=2 is reserved
    const old = this.mstatus;
    this.mstatus = v;
    const changed = old ^ v;
    if (changed & (MSTATUS_SUM | MSTATUS_MXR)) {
      this.tlbSets[1].flushData();
      this.tlbSets[2].flushData();
    }
    if (changed & (MSTATUS_MPRV | MSTATUS_MPP)) this.updateMode();
    // Only enabling can make a pending interrupt taken (translated code leaves on attention).
    if (v & changed & (MSTATUS_MIE | MSTATUS_SIE)) this.attention = true;
  }

  // ---------------------------------------------------------------- A extension

  private atomic(insn: number): void {
    const x = this.x;
    const f5 = insn >>> 27;
    const f3 = (insn >> 12) & 7;
    const rd = (insn >> 6) & 0x3e;
    const rs1 = (insn >> 14) & 0x3e;
    const rs2 = (insn >> 19) & 0x3e;
    if (f3 !== 2 && f3 !== 3) this.illegal(insn);
    if (this.ram64 !== null) return this.atomicShared(insn);
    const size = f3 === 2 ? 4 : 8;
    const alo = x[rs1], ahi = x[rs1 + 1];
    if (f5 === 2) {
      // LR
      if (((insn >> 20) & 31) !== 0) this.illegal(insn);
      const off = this.dataOffset(alo, ahi, size, ACCESS_READ);
      const w = off >> 2;
      const lo = this.ram32[w];
      const hi = size === 8 ? this.ram32[w + 1] : lo >> 31;
      this.reservationValid = true;
      this.reservationAddr = off;
      x[rd] = lo; x[rd + 1] = hi;
      return;
    }
    const off = this.dataOffset(alo, ahi, size, ACCESS_WRITE);
    const w = off >> 2;
    const blo = x[rs2], bhi = x[rs2 + 1];
    if (f5 === 3) {
      // SC
      if (this.reservationValid && this.reservationAddr === off) {
        this.ram32[w] = blo;
        if (size === 8) this.ram32[w + 1] = bhi;
        x[rd] = 0;
      } else {
        x[rd] = 1;
      }
      x[rd + 1] = 0;
      this.reservationValid = false;
      return;
    }
    const olo = this.ram32[w];
    const ohi = size === 8 ? this.ram32[w + 1] : olo >> 31;
    let nlo: number, nhi: number;
    if (size === 4) {
      switch (f5) {
        case 0x01: nlo = blo; break;
        case 0x00: nlo = (olo + blo) | 0; break;
        case 0x04: nlo = olo ^ blo; break;
        case 0x0c: nlo = olo & blo; break;
        case 0x08: nlo = olo | blo; break;
        case 0x10: nlo = olo < blo ? olo : blo; break;
        case 0x14: nlo = olo > blo ? olo : blo; break;
        case 0x18: nlo = (olo >>> 0) < (blo >>> 0) ? olo : blo; break;
        case 0x1c: nlo = (olo >>> 0) > (blo >>> 0) ? olo : blo; break;
        default: this.illegal(insn);
      }
      this.ram32[w] = nlo;
    } else {
      if (((0x1111111b >>> f5) & 1) === 0) this.illegal(insn);
      nlo = this.amo64(f5, olo, ohi, blo, bhi);
      nhi = this.hi;
      this.ram32[w] = nlo;
      this.ram32[w + 1] = nhi;
    }
    x[rd] = olo; x[rd + 1] = ohi;
  }

  /** The doubleword an AMO (f5, checked by the caller) stores, from old o and operand b: low word returned, high in `hi`. */
  private amo64(f5: number, olo: number, ohi: number, blo: number, bhi: number): number {
    let nlo: number, nhi: number;
    switch (f5) {
      case 0x01: nlo = blo; nhi = bhi; break;
      case 0x00: nlo = (olo + blo) | 0; nhi = (ohi + bhi + ((nlo >>> 0) < (olo >>> 0) ? 1 : 0)) | 0; break;
      case 0x04: nlo = olo ^ blo; nhi = ohi ^ bhi; break;
      case 0x0c: nlo = olo & blo; nhi = ohi & bhi; break;
      case 0x08: nlo = olo | blo; nhi = ohi | bhi; break;
      default: {
        const less = f5 === 0x10 || f5 === 0x14
          ? ohi < bhi || (ohi === bhi && (olo >>> 0) < (blo >>> 0))
          : (ohi >>> 0) < (bhi >>> 0) || (ohi === bhi && (olo >>> 0) < (blo >>> 0));
        const takeOld = f5 === 0x10 || f5 === 0x18 ? less : !less;
        nlo = takeOld ? olo : blo; nhi = takeOld ? ohi : bhi;
      }
    }
    this.hi = nhi;
    return nlo;
  }

  /**
   * The A extension over RAM that other harts' threads share: every read-modify-write is one
   * compare-and-swap (or an Atomics operation), so no store of another hart falls between the read
   * and the write. SC succeeds when memory still holds what LR read (as QEMU's cmpxchg-based SC).
   */
  private atomicShared(insn: number): void {
    const x = this.x;
    const f5 = insn >>> 27;
    const rd = (insn >> 6) & 0x3e;
    const rs1 = (insn >> 14) & 0x3e;
    const rs2 = (insn >> 19) & 0x3e;
    const size = ((insn >> 12) & 7) === 2 ? 4 : 8;
    const ram32 = this.ram32;
    const alo = x[rs1], ahi = x[rs1 + 1];
    if (f5 === 2) {
      if (((insn >> 20) & 31) !== 0) this.illegal(insn);
      const off = this.dataOffset(alo, ahi, size, ACCESS_READ);
      let lo: number, hi: number;
      if (size === 4) {
        lo = Atomics.load(ram32, off >> 2);
        hi = lo >> 31;
      } else {
        const v = Atomics.load(this.ram64!, off >> 3);
        lo = Number(BigInt.asIntN(32, v));
        hi = Number(v >> 32n);
      }
      this.reservationValid = true;
      this.reservationAddr = off;
      this.reservedLo = lo;
      this.reservedHi = hi;
      x[rd] = lo; x[rd + 1] = hi;
      return;
    }
    // SC, AMOSWAP, AMOADD, AMOXOR, AMOOR, AMOAND, AMOMIN, AMOMAX, AMOMINU, AMOMAXU
    if (((0x1111111b >>> f5) & 1) === 0) this.illegal(insn);
    const off = this.dataOffset(alo, ahi, size, ACCESS_WRITE);
    const blo = x[rs2], bhi = x[rs2 + 1];
    if (f5 === 3) {
      let ok = this.reservationValid && this.reservationAddr === off;
      if (ok && size === 4) ok = Atomics.compareExchange(ram32, off >> 2, this.reservedLo, blo) === this.reservedLo;
      else if (ok) {
        const expected = (BigInt(this.reservedHi) << 32n) | BigInt(this.reservedLo >>> 0);
        ok = Atomics.compareExchange(this.ram64!, off >> 3, expected, (BigInt(bhi) << 32n) | BigInt(blo >>> 0)) === expected;
      }
      x[rd] = ok ? 0 : 1;
      x[rd + 1] = 0;
      this.reservationValid = false;
      return;
    }
    if (size === 4) {
      const w = off >> 2;
      let olo: number;
      switch (f5) {
        case 0x01: olo = Atomics.exchange(ram32, w, blo); break;
        case 0x00: olo = Atomics.add(ram32, w, blo); break;
        case 0x04: olo = Atomics.xor(ram32, w, blo); break;
        case 0x0c: olo = Atomics.and(ram32, w, blo); break;
        case 0x08: olo = Atomics.or(ram32, w, blo); break;
        default:
          for (;;) {
            olo = Atomics.load(ram32, w);
            let nlo: number;
            if (f5 === 0x10) nlo = olo < blo ? olo : blo;
            else if (f5 === 0x14) nlo = olo > blo ? olo : blo;
            else if (f5 === 0x18) nlo = (olo >>> 0) < (blo >>> 0) ? olo : blo;
            else nlo = (olo >>> 0) > (blo >>> 0) ? olo : blo;
            if (Atomics.compareExchange(ram32, w, olo, nlo) === olo) break;
          }
      }
      x[rd] = olo; x[rd + 1] = olo >> 31;
      return;
    }
    // 64-bit: a compare-and-swap loop on the doubleword, the new value computed in int32 halves.
    const ram64 = this.ram64!;
    const w = off >> 3;
    let olo: number, ohi: number;
    for (;;) {
      const old = Atomics.load(ram64, w);
      olo = Number(BigInt.asIntN(32, old));
      ohi = Number(old >> 32n);
      const nlo = this.amo64(f5, olo, ohi, blo, bhi);
      const nhi = this.hi;
      if (Atomics.compareExchange(ram64, w, old, (BigInt(nhi) << 32n) | BigInt(nlo >>> 0)) === old) break;
    }
    x[rd] = olo; x[rd + 1] = ohi;
  }

  // ---------------------------------------------------------------- FP loads and stores

  private fpAddress(insn: number, imm: number): number {
    const rs1 = (insn >> 14) & 0x3e;
    const lo = (this.x[rs1] + imm) | 0;
    this.hi = (this.x[rs1 + 1] + (imm >> 31) + ((lo >>> 0) < (this.x[rs1] >>> 0) ? 1 : 0)) | 0;
    return lo;
  }

  private fpLoad(insn: number): void {
    const f3 = (insn >> 12) & 7;
    if ((this.mstatus & MSTATUS_FS) === 0 || (f3 !== 2 && f3 !== 3)) this.illegal(insn);
    const lo = this.fpAddress(insn, insn >> 20);
    const hi = this.hi;
    const rd = (insn >> 6) & 0x3e;
    if (f3 === 2) {
      const v = this.loadSlow(lo, hi, 4);
      this.f[rd] = v; this.f[rd + 1] = -1;
    } else {
      const v = this.loadSlow(lo, hi, 8);
      this.f[rd] = v; this.f[rd + 1] = this.hi;
    }
    this.mstatus |= MSTATUS_FS;
  }

  private fpStore(insn: number): void {
    const f3 = (insn >> 12) & 7;
    if ((this.mstatus & MSTATUS_FS) === 0 || (f3 !== 2 && f3 !== 3)) this.illegal(insn);
    const lo = this.fpAddress(insn, ((insn >> 25) << 5) | ((insn >> 7) & 0x1f));
    const hi = this.hi;
    const rs2 = (insn >> 19) & 0x3e;
    this.storeSlow(lo, hi, f3 === 2 ? 4 : 8, this.f[rs2], this.f[rs2 + 1]);
  }

  // ---------------------------------------------------------------- tools and tests

  getCsr(n: number): bigint {
    const saved = this.priv;
    this.priv = PRIV_M;
    try {
      const lo = this.readCsr(n);
      return (BigInt(this.hi) << 32n) | BigInt(lo >>> 0);
    } finally {
      this.priv = saved;
    }
  }

  setCsr(n: number, v: bigint): void {
    const saved = this.priv;
    this.priv = PRIV_M;
    try {
      this.writeCsr(n, Number(BigInt.asIntN(32, v)), Number(BigInt.asIntN(32, v >> 32n)));
    } finally {
      this.priv = saved;
      this.updateMode();
    }
  }

  /** Sets privilege directly (boot without firmware starts the kernel in S-mode). */
  setPrivilege(priv: number): void {
    this.priv = priv;
    this.updateMode();
    this.attention = true;
  }
}

function highestInterrupt(bits: number): number {
  if (bits & MIP_MEIP) return 11;
  if (bits & MIP_MSIP) return 3;
  if (bits & MIP_MTIP) return 7;
  if (bits & MIP_SEIP) return 9;
  if (bits & MIP_SSIP) return 1;
  if (bits & MIP_STIP) return 5;
  return -1;
}

/** High 32 bits of the unsigned 64-bit product of two 32-bit words, exactly, in doubles. */
export function mulhu32(a: number, b: number): number {
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  return (p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) | 0;
}

/** High word of the last mulhu64 result (module scratch: the hot path allocates nothing). */
let mulhu64Hi = 0;

/** Bits 64..127 of the unsigned product of two 64-bit values; returns bits 64..95, sets mulhu64Hi. */
function mulhu64(alo: number, ahi: number, blo: number, bhi: number): number {
  const p0hi = mulhu32(alo, blo) >>> 0;
  const p1lo = Math.imul(alo, bhi) >>> 0, p1hi = mulhu32(alo, bhi) >>> 0;
  const p2lo = Math.imul(ahi, blo) >>> 0, p2hi = mulhu32(ahi, blo) >>> 0;
  const p3lo = Math.imul(ahi, bhi) >>> 0, p3hi = mulhu32(ahi, bhi) >>> 0;
  const mid = p0hi + p1lo + p2lo; // < 3 * 2^32: exact
  const low = p3lo + p1hi + p2hi + Math.floor(mid / TWO32);
  mulhu64Hi = (p3hi + Math.floor(low / TWO32)) | 0;
  return low | 0;
}

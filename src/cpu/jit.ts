/**
 * The translator: hot guest code becomes WebAssembly (wasm.ts) or JavaScript (here) that V8
 * compiles to machine code; this file is the dispatcher, the cache and the JavaScript backend.
 *
 * Unit of translation is a block (block.ts): straight-line guest instructions within one 4 KiB
 * page, ending at a branch or jump, at an instruction the block cannot express (SYSTEM: the CSR
 * accesses block.ts csrInBlock leaves out, ecall, mret, wfi, sfence.vma; fence.i; reserved
 * encodings), at the page end, or after MAX_BLOCK instructions. Blocks are found by the RAM
 * offset of their first instruction (physical address); a WebAssembly block is
 * position-independent (it computes pc-relative values from the pc it runs at), a JavaScript
 * block embeds the virtual pc it was translated at and is found by both. Nothing else about the
 * CPU state is baked in: privilege, MPRV, FS and TLB contents are read at run time.
 *
 * Tiers: a new block is interpreted (the interpreter is the reference) until it has run the
 * threshold's number of times (WASM_THRESHOLD, or COMPILE_THRESHOLD for JavaScript, which V8
 * optimizes much later); then it is translated (WebAssembly: queued, and compiled in batches).
 * Cold code never pays for compilation. The backend is WebAssembly when RAM is a WebAssembly
 * memory with this hart's area (bus.ts), JavaScript otherwise (SMP: RAM shared between threads).
 *
 * Inside a translated block, guest registers live in locals (JavaScript: int32 lo/hi pairs;
 * WebAssembly: i64), loaded at entry and written back at every exit. Loads and stores test the
 * hart's TLB inline and leave through one slow-path call on a miss; before that call the block
 * writes back the registers it changed, sets pc and instret to the faulting instruction's, so a
 * trap is precise: same pc, same registers, same instret as the interpreter. A slow access that
 * raised `attention` (an MMIO write that made an interrupt pending) ends the block right after that
 * instruction, as the interpreter would take the interrupt there.
 *
 * Chaining: each block remembers the block it went to through each exit (fall-through, taken,
 * indirect) together with the target pc and the hart's fetchKey; the dispatcher follows a link
 * without any lookup while both still match (WebAssembly blocks also follow links among
 * themselves, see WasmBackend). A block that branches back to its own start (a tight loop) loops
 * inside its function, registers in locals, while the budget allows.
 *
 * Self-modifying code: a page with translated code is marked in `hart.codePages` and dropped from
 * the write TLB, so the first store to it (from any privilege or through any alias) reaches
 * `invalidatePage` before it lands. DMA writes call `invalidateRange`. fence.i ends a block, so
 * code after it is fetched afresh.
 *
 * The cache is bounded: past MAX_BLOCKS translated blocks, MAX_SOURCE_BYTES of JavaScript or
 * MAX_WASM_BYTES of WebAssembly, or a full function table, everything is dropped (as QEMU's
 * tb_flush) and hot code is translated again.
 */
import { COMPRESSED_TABLE } from "./compressed.js";
import { HART_AREA, LINK_SLOT_BYTES, LINK_SLOTS } from "./bus.js";
import { HOT_BITS, HOT_MASK, mulhu32, type Hart, type Translator } from "./hart.js";
import {
  blockFunction,
  ByteWriter,
  JUMP_CACHE_ENTRIES,
  exitBound,
  hubBytes,
  LINK_INDEX,
  LINK_KEY,
  LINK_LENGTH,
  LINK_PC,
  moduleBytes,
  SLOW_FENCE_I,
  SLOW_HELPER,
  SLOW_STORE,
  type WasmLayout,
} from "./wasm.js";
import type { SharedCodeMap } from "./smp.js";
import {
  fallThrough,
  FALL_INTERP,
  FALL_NONE,
  bImm,
  classify,
  EXIT_INTERP,
  EXIT_NOLINK,
  iImm,
  jImm,
  KIND_BRANCH,
  KIND_END,
  KIND_STOP,
  MAX_BLOCK,
  MAX_SIDE_EXITS,
  registersOf,
  sImm,
  type Insn,
} from "./block.js";

export const COMPILE_THRESHOLD = 20_000;
/** Runs before a block becomes WebAssembly (compiling it costs far less than JavaScript's Turbofan). */
export const WASM_THRESHOLD = 1000;
/** Blocks compiled into one WebAssembly module. */
const WASM_BATCH = 64;
/** Instructions a queued block may wait for its batch to fill before the batch is compiled anyway. */
const WASM_QUEUE_WAIT = 500_000;
/** The hotness mark of a leader queued for translation: the interpreter runs it meanwhile. */
const HOT_QUEUED = -3;
const MAX_BLOCKS = 40_000;
/** Generated code the cache may hold: JavaScript source, or WebAssembly (whose machine code is larger). */
const MAX_SOURCE_BYTES = 96 * 1024 * 1024;
const MAX_WASM_BYTES = 48 * 1024 * 1024;

/** The code translated blocks become. */
export type Backend = "wasm" | "js";

/** A translated block; `end` is the instret it must not pass (a looping block checks it per iteration). */
type BlockFn = (end: number) => number;

class Block {
  valid = true;
  /** Another block at the same physical address, translated for another virtual pc. */
  alias: Block | null = null;
  readonly links: (Block | null)[];
  /** A typed array, so the dispatcher's load is the same shape for every block. */
  readonly linkPcs: Float64Array;
  linkKey = -1;
  sourceBytes = 0;
  /** WebAssembly: the block's index in the function table (0: a JavaScript block). */
  id = 0;
  /** WebAssembly: address of its first link slot (one per linkable exit). */
  linkSlots = 0;
  /**
   * WebAssembly: addresses of the link slots that lead to this block (cleared when it is dropped);
   * a set, since an indirect exit is linked again whenever its target changes.
   */
  incoming: Set<number> | null = null;
  constructor(
    readonly vpc: number,
    readonly off: number,
    /** Guest instructions in the block, not counting an interpreted tail. */
    readonly length: number,
    readonly fn: BlockFn,
    exits: number,
  ) {
    this.links = new Array<Block | null>(exits).fill(null);
    this.linkPcs = new Float64Array(exits);
  }
}

export interface TranslatorStats {
  backend: Backend;
  /** Blocks seen (interpreted or translated) and translated. */
  blocks: number;
  translated: number;
  /** Bytes of generated code currently cached (JavaScript source or WebAssembly). */
  sourceBytes: number;
  /** Estimated memory held by the cache (source, V8 code and metadata). */
  estimatedBytes: number;
  flushes: number;
  invalidations: number;
  /** Guest instructions executed inside translated code (the rest were interpreted). */
  translatedInstructions: number;
  /** Blocks the dispatcher looked up by address (each link or chain it follows instead saves one). */
  lookups: number;
}

export class Jit implements Translator {
  private readonly hart: Hart;
  private readonly blocks = new Map<number, Block>();
  /** Blocks per physical page, for invalidation. */
  private readonly pageBlocks = new Map<number, Block[]>();
  private readonly codePages: Uint8Array;
  private readonly hot = new Int32Array(1 << HOT_BITS);
  /**
   * Return after each translated block or interpreted stretch (up to the next block leader):
   * lockstep testing compares the architectural state at these points.
   */
  singleStep = false;
  /** Host time spent translating (ms). */
  translateMs = 0;
  private translatedCount = 0;
  private sourceBytes = 0;
  private flushes = 0;
  private invalidations = 0;
  /** Instructions retired in translated blocks (exact at block exits). */
  private jitInstret = -0; // a double field from the start, as Hart.instret (+0 set in the constructor)
  private lookups = -0;
  readonly threshold: number;

  private readonly maxBlocks: number;
  /** SMP: what the harts on other threads translated (null: this hart is alone). */
  private readonly shared: SharedCodeMap | null;
  private sharedEpoch = 0;
  private sharedStale = 0;

  /** What blocks become: WebAssembly when RAM is a WebAssembly memory with this hart's area, else JavaScript. */
  readonly backend: Backend;
  private readonly wasm: WasmBackend | null;
  /** Blocks compiled into one WebAssembly module. */
  private readonly batch: number;
  /** Blocks waiting to be compiled to WebAssembly: (pc, RAM offset) pairs. */
  private queue: number[] = [];
  /** The hart's instret when the first block of the queue was queued. */
  private queuedAt = 0;

  constructor(
    hart: Hart,
    options: { threshold?: number; maxBlocks?: number; shared?: SharedCodeMap; backend?: Backend; batch?: number } = {},
  ) {
    this.hart = hart;
    this.jitInstret = 0;
    this.lookups = 0;
    const shared = options.shared ?? null;
    const bus = hart.bus;
    const wasmCapable = bus.ramMemory !== null && bus.hartArea(hart.hartId) >= 0;
    this.backend = options.backend ?? (wasmCapable ? "wasm" : "js");
    if (this.backend === "wasm" && !wasmCapable)
      throw new Error("WebAssembly translation needs RAM in a WebAssembly memory");
    this.threshold = options.threshold ?? (this.backend === "wasm" ? WASM_THRESHOLD : COMPILE_THRESHOLD);
    this.maxBlocks = options.maxBlocks ?? MAX_BLOCKS;
    // Translating at once (threshold 0, as the tests do) means one block per module.
    this.batch = options.batch ?? (this.threshold === 0 ? 1 : WASM_BATCH);
    const marks = bus.codePagesArea(hart.hartId);
    this.codePages =
      marks >= 0
        ? new Uint8Array(bus.ramBuffer, marks, Math.ceil(hart.ramSize / 4096)).fill(0)
        : new Uint8Array(Math.ceil(hart.ramSize / 4096));
    this.wasm = this.backend === "wasm" ? new WasmBackend(hart) : null;
    this.shared = shared;
    if (shared === null) {
      hart.codePages = this.codePages;
      hart.codeWritten = (page) => this.invalidatePage(page);
    } else {
      // Stores to a page with any hart's code take the slow path, which tells those harts.
      hart.codePages = shared.owners;
      hart.codeWritten = (page) => {
        shared.written(page, hart.hartId);
        if (this.codePages[page] !== 0) this.invalidatePage(page);
      };
      this.sharedEpoch = shared.epoch();
      this.sharedStale = shared.staleCount(hart.hartId);
    }
    hart.bus.onExternalWrite((off, length) => {
      if (this.hart.translator === this) this.invalidateRange(off, length);
    });
    hart.hotCounts = this.hot;
    hart.hotThreshold = this.threshold;
    hart.translator = this;
  }

  /** Detaches from the hart (it goes back to the interpreter). */
  detach(): void {
    this.flush();
    this.hart.codePages = null;
    this.hart.codeWritten = null;
    this.hart.translator = null;
    this.hart.hotCounts = null;
  }

  stats(): TranslatorStats {
    return {
      backend: this.backend,
      blocks: this.translatedCount,
      translated: this.translatedCount,
      sourceBytes: this.sourceBytes,
      // JavaScript: V8 keeps the source string, bytecode and (for hot blocks) machine code, about
      // 4x the source. WebAssembly: Liftoff's machine code (about 4x the bytecode, which V8 keeps
      // too) and the Block objects with their link slots.
      estimatedBytes: this.sourceBytes * (this.backend === "wasm" ? 5 : 4) + this.blocks.size * 160,
      flushes: this.flushes,
      invalidations: this.invalidations,
      translatedInstructions: this.jitInstret,
      lookups: this.lookups,
    };
  }

  /** Runs guest code until instret reaches `end` (or the hart stops, waits, or traps out). */
  execute(end: number): void {
    const h = this.hart;
    if (this.queue.length !== 0 && h.instret - this.queuedAt > WASM_QUEUE_WAIT) this.compileQueue();
    const hot = this.hot;
    let blk: Block | null = null;
    while (h.instret < end) {
      if (h.attention) {
        h.attention = false;
        if (h.stopRequested || h.waiting) return;
        const cause = h.pendingInterrupt();
        if (cause >= 0) h.takeTrap(cause, 0, 0, true);
        blk = null;
      }
      if (blk === null || !blk.valid) {
        const pc = h.pc;
        const off = h.fetchOffset(pc);
        blk = this.find(pc, off);
        if (blk !== null) {
          h.noteLinkTarget(pc);
          if (blk.id !== 0) this.wasm!.remember(blk, pc, h.fetchKey);
        }
        if (blk === null) {
          const slot = (off >>> 1) & HOT_MASK;
          const count = hot[slot];
          // Hot by count, or translated at another virtual address (a shared library in another
          // process): translate for this one. Otherwise the interpreter runs (and profiles) it.
          if (count >= this.threshold || count === -1) blk = this.translate(pc, off);
          if (blk === null) {
            if (count >= 0 && count < this.threshold) hot[slot] = count + 1;
            h.interpret(end);
            if (this.singleStep || h.waiting || h.stopRequested) return;
            continue;
          }
        }
      }
      if (blk.length > end - h.instret) {
        // The budget is exact, as the interpreter's: the tail of a slice is interpreted.
        h.interpret(end);
        blk = null;
        if (this.singleStep || h.waiting || h.stopRequested) return;
        continue;
      }
      // Run translated blocks, following links while they hold and the next block fits the budget:
      // the common case never goes back through the checks above.
      const before = h.instret;
      let exit: number;
      for (;;) {
        exit = blk.fn(this.singleStep ? h.instret + blk.length : end);
        // WebAssembly blocks chain among themselves: continue from the one that left.
        if (blk.id !== 0) blk = this.wasm!.exited();
        if (exit < 0 || h.attention || this.singleStep) break;
        const linked: Block | null = blk.links[exit];
        if (linked === null || blk.linkKey !== h.fetchKey || blk.linkPcs[exit] !== h.pc) break;
        if (!linked.valid || linked.length > end - h.instret) break;
        blk = linked;
      }
      this.jitInstret += h.instret - before;
      if (this.singleStep) return;
      // No lookup past the budget or before a pending interrupt: the next fetch may fault.
      if (exit < 0 || h.instret >= end || h.attention) {
        blk = null;
        continue;
      }
      const key = h.fetchKey;
      if (blk.linkKey === key) {
        const linked: Block | null = blk.links[exit];
        if (linked !== null && blk.linkPcs[exit] === h.pc && linked.valid) {
          blk = linked;
          continue;
        }
      } else {
        blk.links.fill(null);
        blk.linkKey = key;
      }
      const pc = h.pc;
      const next = this.find(pc, h.fetchOffset(pc));
      if (next !== null) {
        h.noteLinkTarget(pc);
        if (next.id !== 0) this.wasm!.remember(next, pc, key);
        blk.links[exit] = next;
        if (next.id !== 0 && blk.id !== 0) this.wasm!.link(blk, exit, next, pc, key);
        blk.linkPcs[exit] = pc;
      }
      blk = next;
    }
  }

  /**
   * The translated block for virtual pc at RAM offset off, if there is one. A WebAssembly block
   * serves every virtual pc (its code is position-independent); a JavaScript block only its own.
   */
  private find(pc: number, off: number): Block | null {
    this.lookups++;
    let b: Block | null = this.blocks.get(off) ?? null;
    while (b !== null) {
      if (b.vpc === pc || b.id !== 0) return b;
      b = b.alias;
    }
    return null;
  }

  /** Translates the block at pc; null (and the leader marked untranslatable) when it has no instructions. */
  private translate(pc: number, off: number): Block | null {
    if (
      this.translatedCount >= this.maxBlocks ||
      this.sourceBytes >= (this.wasm !== null ? MAX_WASM_BYTES : MAX_SOURCE_BYTES) ||
      (this.wasm !== null && !this.wasm.room(this.batch))
    )
      this.flush();
    const slot = (off >>> 1) & HOT_MASK;
    if (this.wasm !== null) {
      // Compiled in batches: a module costs ~0.2 ms to compile and instantiate whatever it holds.
      this.hot[slot] = HOT_QUEUED;
      if (this.queue.length === 0) this.queuedAt = this.hart.instret;
      this.queue.push(pc, off);
      if (this.queue.length < 2 * this.batch) return null;
      this.compileQueue();
      return this.find(pc, off);
    }
    const t0 = performance.now();
    const insns = this.decode(pc, off);
    if (insns.length === 0) {
      this.hot[slot] = -2;
      return null;
    }
    const { source, exits } = generate(insns, off >>> 12, this.shared !== null);
    const factory = new Function(
      "h",
      "x",
      "ram8",
      "ram16",
      "ram32",
      "mulhu32",
      "codePages",
      "ramF64",
      "pairF64",
      "pairI32",
      source,
    ) as (
      h: Hart,
      x: Int32Array,
      ram8: Uint8Array,
      ram16: Uint16Array,
      ram32: Int32Array,
      m: typeof mulhu32,
      codePages: Uint8Array,
      ramF64: Float64Array,
      pairF64: Float64Array,
      pairI32: Int32Array,
    ) => BlockFn;
    const h = this.hart;
    const fn = factory(h, h.x, h.ram8, h.ram16, h.ram32, mulhu32, this.codePages, h.ramF64, h.pairF64, h.pairI32);
    const blk = new Block(pc, off, insns.length, fn, exits);
    blk.sourceBytes = source.length;
    this.register(blk);
    this.translateMs += performance.now() - t0;
    return blk;
  }

  /** Compiles the queued blocks into one WebAssembly module. */
  private compileQueue(): void {
    const t0 = performance.now();
    const queue = this.queue;
    this.queue = [];
    const todo: { pc: number; off: number; insns: Insn[] }[] = [];
    for (let i = 0; i < queue.length; i += 2) {
      const pc = queue[i],
        off = queue[i + 1];
      if (this.find(pc, off) !== null) continue;
      const insns = this.decode(pc, off);
      if (insns.length === 0) this.hot[(off >>> 1) & HOT_MASK] = -2;
      else todo.push({ pc, off, insns });
    }
    if (todo.length > 0) {
      for (const blk of this.wasm!.compile(todo)) this.register(blk);
    }
    this.translateMs += performance.now() - t0;
  }

  /** Enters a new block in the cache and marks its page as holding code. */
  private register(blk: Block): void {
    const h = this.hart;
    const off = blk.off;
    this.sourceBytes += blk.sourceBytes;
    this.translatedCount++;
    blk.alias = this.blocks.get(off) ?? null;
    this.blocks.set(off, blk);
    this.hot[(off >>> 1) & HOT_MASK] = -1;
    const page = off >>> 12;
    let list = this.pageBlocks.get(page);
    if (list === undefined) this.pageBlocks.set(page, (list = []));
    list.push(blk);
    if (this.codePages[page] === 0) {
      this.codePages[page] = 1;
      h.purgeWriteTlb(page);
      this.shared?.claim(h.hartId, page);
    }
  }

  /** Reads the block's instructions (stopping where translation must stop). */
  private decode(pc: number, off: number): Insn[] {
    const ram16 = this.hart.ram16;
    const out: Insn[] = [];
    let pos = 0;
    let branches = 0;
    const pageLeft = 4096 - (off & 0xfff);
    while (out.length < MAX_BLOCK && pos < pageLeft) {
      const p = ram16[(off + pos) >>> 1];
      let insn: number;
      let len: number;
      if ((p & 3) !== 3) {
        insn = COMPRESSED_TABLE[p];
        len = 2;
      } else {
        if (pos + 4 > pageLeft) break; // crosses the page: the interpreter takes it
        insn = p | (ram16[(off + pos + 2) >>> 1] << 16);
        len = 4;
      }
      const kind = classify(insn);
      if (kind === KIND_STOP) break;
      out.push({ pc: pc + pos, insn, len });
      pos += len;
      if (kind === KIND_END) break;
      if (kind === KIND_BRANCH && ++branches > MAX_SIDE_EXITS) break;
    }
    return out;
  }

  /** A store is about to change a page that holds translated code: drop its blocks. */
  invalidatePage(page: number): void {
    this.codePages[page] = 0;
    this.shared?.release(this.hart.hartId, page);
    const list = this.pageBlocks.get(page);
    if (list === undefined) return;
    this.pageBlocks.delete(page);
    this.invalidations++;
    for (const b of list) {
      b.valid = false;
      this.sourceBytes -= b.sourceBytes;
      this.translatedCount--;
      this.blocks.delete(b.off);
      this.hot[(b.off >>> 1) & HOT_MASK] = 0;
      if (b.incoming !== null) this.wasm!.unlink(b);
    }
  }

  /** Bytes in RAM were written other than by this hart's stores (device DMA, loaders, other harts). */
  invalidateRange(off: number, length: number): void {
    if (length <= 0) return;
    const last = (off + length - 1) >>> 12;
    for (let page = off >>> 12; page <= last; page++) if (this.codePages[page] !== 0) this.invalidatePage(page);
  }

  /**
   * SMP, at a slice boundary: drops this hart's code on pages other harts or devices wrote, and its
   * write TLB when some hart started translating a page (so stores to that page take the slow path).
   */
  syncShared(): void {
    const shared = this.shared;
    if (shared === null) return;
    const epoch = shared.epoch();
    if (epoch !== this.sharedEpoch) {
      this.sharedEpoch = epoch;
      this.hart.flushWriteTlb();
    }
    const me = this.hart.hartId;
    const stale = shared.staleCount(me);
    if (stale !== this.sharedStale) {
      this.sharedStale = stale;
      shared.takeStale(me, (page) => {
        if (this.codePages[page] !== 0) this.invalidatePage(page);
      });
    }
  }

  fenceI(): void {
    this.syncShared();
  }

  /** Drops every block (the cache is full, or a caller wants a clean slate). */
  flush(): void {
    for (const list of this.pageBlocks.values()) for (const b of list) b.valid = false;
    if (this.shared !== null) for (const page of this.pageBlocks.keys()) this.shared.release(this.hart.hartId, page);
    this.blocks.clear();
    this.pageBlocks.clear();
    this.codePages.fill(0);
    this.hot.fill(0);
    this.queue = [];
    this.wasm?.reset();
    this.sourceBytes = 0;
    this.translatedCount = 0;
    this.flushes++;
  }
}

// ------------------------------------------------------------------------------------------------
// Code generation

const TWO32 = 4294967296;
const hiOf = (v: number): number => Math.floor(v / TWO32) | 0;

/** JS source of a register's low / high word inside a block. */
const L = (r: number): string => (r === 0 ? "0" : `r${r}l`);
const H = (r: number): string => (r === 0 ? "0" : `r${r}h`);

/**
 * Generates the source of a block factory: `return function block(end) {...}` closing over the
 * hart, its register file, RAM views and the translator's code-page marks. `page` is the block's
 * physical page (RAM offset >> 12).
 *
 * A block whose branch or jump goes back to its own first instruction (a tight loop) runs as a
 * JS loop: registers stay in locals across iterations instead of a write-back, an exit to the
 * dispatcher and a reload per iteration. It loops only while a whole further iteration fits the
 * budget (`end`, exact as everywhere) and while its page still holds translated code (a store to
 * the page drops the block, and the interpreter would see the new code too).
 */
export function generate(insns: Insn[], page = 0, sharedRam = false): { source: string; exits: number } {
  let exits = 0;
  const start = insns[0].pc;
  const used = new Set<number>();
  const writes = new Set<number>();
  let loops = false;
  for (const i of insns) {
    const r = registersOf(i.insn);
    for (const reg of r.reads) if (reg !== 0) used.add(reg);
    for (const reg of r.writes) {
      if (reg === 0) continue;
      used.add(reg);
      writes.add(reg);
    }
    const op = i.insn & 0x7f;
    if ((op === 0x63 && i.pc + bImm(i.insn) === start) || (op === 0x6f && i.pc + jImm(i.insn) === start)) loops = true;
  }
  // An exit from a later iteration must also write back what the previous ones changed further on.
  const written = new Set<number>(loops ? writes : []);
  const body: string[] = [];
  const hasMemory = insns.some((i) => {
    const o = i.insn & 0x7f;
    return o === 0x03 || o === 0x23;
  });

  const writeback = (): string => [...written].map((r) => `x[${2 * r}] = r${r}l; x[${2 * r + 1}] = r${r}h;`).join(" ");
  const exit = (pc: number | string, count: number, code: number): string =>
    `${writeback()} h.pc = ${pc}; h.instret += ${count}; return ${code};`;
  /** A control transfer to `target` after `count` instructions: back to the top when it is the loop. */
  const jump = (target: number, count: number): string =>
    target === start && loops
      ? `h.instret += ${count}; if (h.instret <= end - ${insns.length} && codePages[${page}] !== 0) continue; ` +
        `${writeback()} h.pc = ${target}; return ${exits++};`
      : exit(target, count, exits++);

  for (let k = 0; k < insns.length; k++) {
    const { pc, insn, len } = insns[k];
    const next = pc + len;
    const rd = (insn >> 7) & 31,
      rs1 = (insn >> 15) & 31,
      rs2 = (insn >> 20) & 31;
    const f3 = (insn >> 12) & 7;
    const a = L(rs1),
      ah = H(rs1),
      b = L(rs2),
      bh = H(rs2);
    const dl = L(rd),
      dh = H(rd);
    const emit = (s: string): void => {
      body.push(s);
    };
    const set64 = (lo: string, hi: string): void => {
      if (rd === 0) return;
      emit(`t = ${lo}; u = ${hi}; ${dl} = t; ${dh} = u;`);
      written.add(rd);
    };
    const set32 = (v: string): void => {
      if (rd === 0) return;
      emit(`${dl} = ${v}; ${dh} = ${dl} >> 31;`);
      written.add(rd);
    };
    const setConst = (v: number): void => {
      if (rd === 0) return;
      emit(`${dl} = ${v | 0}; ${dh} = ${hiOf(v)};`);
      written.add(rd);
    };
    /** Before a call that may trap or read state: registers, pc and instret as at this instruction. */
    const sync = `${writeback()} h.pc = ${pc}; h.instret += ${k};`;
    const unsync = `h.instret -= ${k};`;
    /**
     * After a slow access: if it raised attention, end the block after this instruction. `sync` has
     * written the registers back already; only a loaded rd is newer (`loaded`: its write-back).
     */
    const afterSlow = (loaded = ""): string =>
      `if (h.attention) { ${loaded} h.pc = ${next}; h.instret += 1; return ${EXIT_NOLINK}; }`;

    switch (insn & 0x7f) {
      case 0x13: {
        const imm = iImm(insn);
        const ih = imm >> 31;
        switch (f3) {
          case 0:
            if (rs1 === 0) setConst(imm);
            else if (imm === 0) set64(a, ah);
            else set64(`(${a} + ${imm}) | 0`, `(${ah} + ${ih} + ((t >>> 0) < (${a} >>> 0) ? 1 : 0)) | 0`);
            break;
          case 1: {
            const s = imm & 63;
            if (s === 0) set64(a, ah);
            else if (s >= 32) set64("0", `${a} << ${s - 32}`);
            else set64(`${a} << ${s}`, `(${ah} << ${s}) | (${a} >>> ${32 - s})`);
            break;
          }
          case 2:
            set64(`${ah} < ${ih} || (${ah} === ${ih} && (${a} >>> 0) < ${imm >>> 0}) ? 1 : 0`, "0");
            break;
          case 3:
            set64(`(${ah} >>> 0) < ${ih >>> 0} || (${ah} === ${ih} && (${a} >>> 0) < ${imm >>> 0}) ? 1 : 0`, "0");
            break;
          case 4:
            set64(`${a} ^ ${imm}`, `${ah} ^ ${ih}`);
            break;
          case 5: {
            const s = imm & 63;
            const arith = insn >>> 26 === 0x10;
            if (s === 0) set64(a, ah);
            else if (s >= 32) set64(arith ? `${ah} >> ${s - 32}` : `${ah} >>> ${s - 32}`, arith ? `${ah} >> 31` : "0");
            else set64(`(${a} >>> ${s}) | (${ah} << ${32 - s})`, arith ? `${ah} >> ${s}` : `${ah} >>> ${s}`);
            break;
          }
          case 6:
            set64(`${a} | ${imm}`, `${ah} | ${ih}`);
            break;
          default:
            set64(`${a} & ${imm}`, `${ah} & ${ih}`);
            break;
        }
        break;
      }
      case 0x33: {
        const f7 = insn >>> 25;
        if (f7 === 0) {
          switch (f3) {
            case 0:
              set64(`(${a} + ${b}) | 0`, `(${ah} + ${bh} + ((t >>> 0) < (${a} >>> 0) ? 1 : 0)) | 0`);
              break;
            case 1:
              if (rd !== 0) {
                emit(
                  `s = ${b} & 63; if (s === 0) { t = ${a}; u = ${ah}; } else if (s >= 32) { u = ${a} << (s - 32); t = 0; } else { u = (${ah} << s) | (${a} >>> (32 - s)); t = ${a} << s; } ${dl} = t; ${dh} = u;`,
                );
                written.add(rd);
              }
              break;
            case 2:
              set64(`${ah} < ${bh} || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0)) ? 1 : 0`, "0");
              break;
            case 3:
              set64(`(${ah} >>> 0) < (${bh} >>> 0) || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0)) ? 1 : 0`, "0");
              break;
            case 4:
              set64(`${a} ^ ${b}`, `${ah} ^ ${bh}`);
              break;
            case 5:
              if (rd !== 0) {
                emit(
                  `s = ${b} & 63; if (s === 0) { t = ${a}; u = ${ah}; } else if (s >= 32) { t = ${ah} >>> (s - 32); u = 0; } else { t = (${a} >>> s) | (${ah} << (32 - s)); u = ${ah} >>> s; } ${dl} = t; ${dh} = u;`,
                );
                written.add(rd);
              }
              break;
            case 6:
              set64(`${a} | ${b}`, `${ah} | ${bh}`);
              break;
            default:
              set64(`${a} & ${b}`, `${ah} & ${bh}`);
              break;
          }
        } else if (f7 === 0x20) {
          if (f3 === 0) set64(`(${a} - ${b}) | 0`, `(${ah} - ${bh} - ((${a} >>> 0) < (${b} >>> 0) ? 1 : 0)) | 0`);
          else if (rd !== 0) {
            emit(
              `s = ${b} & 63; if (s === 0) { t = ${a}; u = ${ah}; } else if (s >= 32) { t = ${ah} >> (s - 32); u = ${ah} >> 31; } else { t = (${a} >>> s) | (${ah} << (32 - s)); u = ${ah} >> s; } ${dl} = t; ${dh} = u;`,
            );
            written.add(rd);
          }
        } else {
          // M extension
          if (f3 === 0)
            set64(
              `Math.imul(${a}, ${b})`,
              `(mulhu32(${a}, ${b}) + Math.imul(${ah}, ${b}) + Math.imul(${a}, ${bh})) | 0`,
            );
          else set64(`h.mulDiv(${f3}, ${a}, ${ah}, ${b}, ${bh})`, "h.hi");
        }
        break;
      }
      case 0x1b: {
        const imm = iImm(insn);
        if (f3 === 0) set32(`(${a} + ${imm}) | 0`);
        else if (f3 === 1) set32(`${a} << ${imm & 31}`);
        else set32(insn >>> 25 === 0 ? `(${a} >>> ${imm & 31}) | 0` : `${a} >> ${imm & 31}`);
        break;
      }
      case 0x3b: {
        const f7 = insn >>> 25;
        if (f7 === 0) {
          if (f3 === 0) set32(`(${a} + ${b}) | 0`);
          else if (f3 === 1) set32(`${a} << (${b} & 31)`);
          else set32(`(${a} >>> (${b} & 31)) | 0`);
        } else if (f7 === 0x20) {
          set32(f3 === 0 ? `(${a} - ${b}) | 0` : `${a} >> (${b} & 31)`);
        } else if (f3 === 0) set32(`Math.imul(${a}, ${b})`);
        else set32(`h.mulDivW(${f3}, ${a}, ${b}, 0)`);
        break;
      }
      case 0x37:
        setConst((insn & 0xfffff000) | 0);
        break;
      case 0x17:
        setConst(pc + ((insn & 0xfffff000) | 0));
        break;
      case 0x6f:
        setConst(next);
        emit(jump(pc + jImm(insn), k + 1));
        break;
      case 0x67: {
        const imm = iImm(insn);
        emit(`t = (${a} + ${imm}) | 0; u = (${ah} + ${imm >> 31} + ((t >>> 0) < (${a} >>> 0) ? 1 : 0)) | 0;`);
        emit(`n = u * ${TWO32} + ((t & -2) >>> 0);`);
        setConst(next);
        emit(exit("n", k + 1, exits++));
        break;
      }
      case 0x63: {
        let cond: string;
        switch (f3) {
          case 0:
            cond = `${a} === ${b} && ${ah} === ${bh}`;
            break;
          case 1:
            cond = `${a} !== ${b} || ${ah} !== ${bh}`;
            break;
          case 4:
            cond = `${ah} < ${bh} || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0))`;
            break;
          case 5:
            cond = `!(${ah} < ${bh} || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0)))`;
            break;
          case 6:
            cond = `(${ah} >>> 0) < (${bh} >>> 0) || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0))`;
            break;
          default:
            cond = `!((${ah} >>> 0) < (${bh} >>> 0) || (${ah} === ${bh} && (${a} >>> 0) < (${b} >>> 0)))`;
            break;
        }
        emit(`if (${cond}) { ${jump(pc + bImm(insn), k + 1)} }`);
        if (k === insns.length - 1) emit(exit(next, k + 1, exits++));
        break;
      }
      case 0x03: {
        const imm = iImm(insn);
        const size = 1 << (f3 & 3);
        emit(
          `t = (${a} + ${imm}) | 0; u = (${ah} + ${imm >> 31} + ((t >>> 0) < (${a} >>> 0) ? 1 : 0)) | 0; i = (t >>> 12) & 255;`,
        );
        const hit = `rT[i] === u * 1048576 + (t >>> 12)${size > 1 ? ` && (t & ${size - 1}) === 0` : ""}`;
        const o = "o = rO[i] + (t & 4095);";
        let fast: string, slowLo: string, slowHi: string;
        switch (f3) {
          case 0:
            fast = `${o} v = (ram8[o] << 24) >> 24; w = v >> 31;`;
            slowLo = "(h.loadSlow(t, u, 1) << 24) >> 24";
            slowHi = "v >> 31";
            break;
          case 1:
            fast = `${o} v = (ram16[o >> 1] << 16) >> 16; w = v >> 31;`;
            slowLo = "(h.loadSlow(t, u, 2) << 16) >> 16";
            slowHi = "v >> 31";
            break;
          case 2:
            fast = `${o} v = ram32[o >> 2]; w = v >> 31;`;
            slowLo = "h.loadSlow(t, u, 4)";
            slowHi = "v >> 31";
            break;
          case 3:
            // Shared RAM: one 8-byte access (see Hart.sharedRam).
            fast = sharedRam
              ? `${o} pairF64[0] = ramF64[o >> 3]; v = pairI32[0]; w = pairI32[1];`
              : `${o} v = ram32[o >> 2]; w = ram32[(o >> 2) + 1];`;
            slowLo = "h.loadSlow(t, u, 8)";
            slowHi = "h.hi";
            break;
          case 4:
            fast = `${o} v = ram8[o]; w = 0;`;
            slowLo = "h.loadSlow(t, u, 1) & 255";
            slowHi = "0";
            break;
          case 5:
            fast = `${o} v = ram16[o >> 1]; w = 0;`;
            slowLo = "h.loadSlow(t, u, 2) & 65535";
            slowHi = "0";
            break;
          default:
            fast = `${o} v = ram32[o >> 2]; w = 0;`;
            slowLo = "h.loadSlow(t, u, 4)";
            slowHi = "0";
            break;
        }
        const assign = rd !== 0 ? `${dl} = v; ${dh} = w;` : "";
        if (rd !== 0) written.add(rd);
        emit(
          `if (${hit}) { ${fast} } else { ${sync} v = ${slowLo}; w = ${slowHi}; ${assign} ${afterSlow(rd !== 0 ? `x[${2 * rd}] = v; x[${2 * rd + 1}] = w;` : "")} ${unsync} }`,
        );
        emit(assign);
        break;
      }
      case 0x23: {
        const imm = sImm(insn);
        const size = 1 << f3;
        emit(
          `t = (${a} + ${imm}) | 0; u = (${ah} + ${imm >> 31} + ((t >>> 0) < (${a} >>> 0) ? 1 : 0)) | 0; i = (t >>> 12) & 255;`,
        );
        const hit = `wT[i] === u * 1048576 + (t >>> 12)${size > 1 ? ` && (t & ${size - 1}) === 0` : ""}`;
        const o = "o = wO[i] + (t & 4095);";
        let fast: string;
        switch (f3) {
          case 0:
            fast = `${o} ram8[o] = ${b};`;
            break;
          case 1:
            fast = `${o} ram16[o >> 1] = ${b};`;
            break;
          case 2:
            fast = `${o} ram32[o >> 2] = ${b};`;
            break;
          default:
            fast = sharedRam
              ? `${o} pairI32[0] = ${b}; pairI32[1] = ${bh}; ramF64[o >> 3] = pairF64[0];`
              : `${o} ram32[o >> 2] = ${b}; ram32[(o >> 2) + 1] = ${bh};`;
            break;
        }
        emit(
          `if (${hit}) { ${fast} } else { ${sync} h.storeSlow(t, u, ${size}, ${b}, ${f3 === 3 ? bh : "0"}); ${afterSlow()} ${unsync} }`,
        );
        break;
      }
      case 0x0f:
        // fence.i: drop what other harts wrote (SMP); code after it is fetched afresh.
        if (f3 === 1) emit(`h.translator.fenceI(); ${exit(next, k + 1, EXIT_NOLINK)}`);
        break;
      default: {
        // AMO, F/D and CSRs: the hart's own code, with state made precise first; rd may change. A
        // CSR write that may make an interrupt pending leaves (its result is in x[rd] already).
        emit(`${sync} h.executeHelper(${insn}); ${(insn & 0x7f) === 0x73 ? afterSlow() : ""} ${unsync}`);
        const { writes } = registersOf(insn);
        for (const r of writes) if (r !== 0) emit(`r${r}l = x[${2 * r}]; r${r}h = x[${2 * r + 1}];`);
        break;
      }
    }
  }
  const tail = fallThrough(insns);
  if (tail !== FALL_NONE) {
    const last = insns[insns.length - 1];
    body.push(exit(last.pc + last.len, insns.length, tail === FALL_INTERP ? EXIT_INTERP : exits++));
  }
  const regs = [...used].sort((p, q) => p - q);
  const decl = regs.map((r) => `r${r}l = x[${2 * r}], r${r}h = x[${2 * r + 1}]`);
  const head = [
    "let t = 0, u = 0, v = 0, w = 0, s = 0, i = 0, o = 0, n = 0;",
    decl.length ? `let ${decl.join(", ")};` : "",
    hasMemory ? "const D = h.dataSet, rT = D.readTag, rO = D.readOff, wT = D.writeTag, wO = D.writeOff;" : "",
  ];
  const code = loops ? `for (;;) {\n${body.join("\n")}\n}` : body.join("\n");
  const source = `"use strict";\nreturn function block(end) {\n${head.filter((l) => l).join("\n")}\n${code}\n};`;
  return { source, exits };
}

// ------------------------------------------------------------------------------------------------
// WebAssembly

/** Function table entries (block ids); ids are not reused before a flush. */
const WASM_TABLE_SIZE = 65536;

/**
 * Compiles blocks to WebAssembly over the hart's memory (wasm.ts) and wraps each as a BlockFn:
 * the wrapper passes the budget and the data TLB set, and takes the pc and retired count from the
 * hart area's slots. Blocks sit in one function table, so that they tail-call each other through
 * their link slots (wasm.ts, blockFunction) without coming back here.
 */
class WasmBackend {
  private readonly layout: WasmLayout;
  private readonly imports: WebAssembly.Imports;
  private readonly table: WebAssembly.Table;
  private readonly slotPc: Float64Array;
  /** count, hi, attention, block, fetchKey (HART_AREA from `count`). */
  private readonly slots: Int32Array;
  /** The link area: f64 view (pc) and i32 view (index, length, key), indexed by byte address / 8 and / 4. */
  private readonly linkF64: Float64Array;
  private readonly linkI32: Int32Array;
  private readonly linkArea: number;
  /** Blocks by table index (dropped ones too: one may be the last to exit, having overwritten its own page). */
  private byId: (Block | null)[] = [null];
  /** The next free link slot (the jump cache takes the first ones). */
  private nextSlot = JUMP_CACHE_ENTRIES;
  private readonly code = new ByteWriter();
  /** The hub's entry: runs block `id` and the blocks it chains to (wasm.ts, hubBytes). */
  private readonly run: (budget: number, tlb: number, id: number) => number;
  private readonly module = new ByteWriter();

  constructor(private readonly hart: Hart) {
    const bus = hart.bus;
    const memory = bus.ramMemory!;
    const area = bus.hartArea(hart.hartId);
    this.layout = {
      memoryPages: memory.buffer.byteLength / 65536,
      shared: bus.ramBuffer instanceof SharedArrayBuffer,
      hartArea: area,
      codePagesArea: bus.codePagesArea(hart.hartId),
      jumpCache: bus.linkArea(hart.hartId),
    };
    this.slotPc = new Float64Array(bus.ramBuffer, area + HART_AREA.pc, 1);
    this.slots = new Int32Array(bus.ramBuffer, area + HART_AREA.count, 5);
    this.linkArea = bus.linkArea(hart.hartId);
    this.linkF64 = new Float64Array(bus.ramBuffer);
    this.linkI32 = new Int32Array(bus.ramBuffer);
    this.table = new WebAssembly.Table({ element: "anyfunc", initial: WASM_TABLE_SIZE });
    const h = hart;
    const slots = this.slots;
    const slotPc = this.slotPc;
    // The state is precise here (the block wrote registers, pc and the count back): as the
    // interpreter at this instruction. A trap thrown below unwinds the blocks.
    const slow = (op: number, a: number, b: number, c: number, d: number): number => {
      h.pc = slotPc[0];
      const k = slots[0];
      h.instret += k;
      let r = 0;
      if (op < SLOW_STORE) {
        r = h.loadSlow(a, b, 1 << op);
        slots[1] = h.hi;
      } else if (op < SLOW_HELPER) h.storeSlow(a, b, 1 << (op - SLOW_STORE), c, d);
      else if (op === SLOW_HELPER) h.executeHelper(a);
      else if (op === SLOW_FENCE_I) h.translator!.fenceI();
      h.instret -= k;
      slots[2] = h.attention ? 1 : 0;
      return r;
    };
    this.imports = { e: { slow, mem: memory } };
    const hub = new WebAssembly.Instance(new WebAssembly.Module(hubBytes(this.layout, WASM_TABLE_SIZE)), {
      e: { mem: memory, table: this.table },
    });
    this.run = hub.exports.run as (budget: number, tlb: number, id: number) => number;
  }

  /** Whether `blocks` more blocks fit the table and the link slots. */
  room(blocks: number): boolean {
    return this.byId.length + blocks < WASM_TABLE_SIZE && this.nextSlot + blocks * (MAX_BLOCK + 1) <= LINK_SLOTS;
  }

  /** Compiles blocks into one module and returns them as Blocks. */
  compile(todo: { pc: number; off: number; insns: Insn[] }[]): Block[] {
    const bodies: Uint8Array[] = [];
    const made: { id: number; slots: number; exits: number }[] = [];
    for (const t of todo) {
      const id = this.byId.length + made.length;
      const slots = this.linkArea + this.nextSlot * LINK_SLOT_BYTES;
      this.nextSlot += exitBound(t.insns);
      this.code.length = 0;
      const exits = blockFunction(this.code, t.insns, t.off >>> 12, this.layout, id, slots);
      bodies.push(this.code.slice());
      made.push({ id, slots, exits });
    }
    const bytes = moduleBytes(this.module, bodies, this.layout);
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), this.imports);
    const h = this.hart;
    const slots = this.slots;
    const slotPc = this.slotPc;
    const overhead = (bytes.length - bodies.reduce((n, b) => n + b.length, 0)) / bodies.length;
    const run = this.run;
    return todo.map((t, i) => {
      const id = made[i].id;
      this.table.set(id, instance.exports[`b${i}`] as () => number);
      const fn = (end: number): number => {
        slots[4] = h.fetchKey;
        slotPc[0] = h.pc;
        const exit = run(end - h.instret, h.dataSet.base, id);
        h.instret += slots[0];
        h.pc = slotPc[0];
        return exit;
      };
      const blk = new Block(t.pc, t.off, t.insns.length, fn, made[i].exits);
      blk.id = made[i].id;
      blk.linkSlots = made[i].slots;
      blk.incoming = new Set();
      blk.sourceBytes = Math.ceil(bodies[i].length + overhead);
      this.byId.push(blk);
      return blk;
    });
  }

  /** The block whose exit ended the last call (blocks chain inside WebAssembly). */
  exited(): Block {
    return this.byId[this.slots[3]]!;
  }

  /** Links `from`'s exit to `to`, made for target pc and the fetchKey now in force. */
  link(from: Block, exit: number, to: Block, pc: number, key: number): void {
    const at = from.linkSlots + exit * LINK_SLOT_BYTES;
    this.writeSlot(at, pc, to, key);
    if (to.incoming !== null) to.incoming.add(at);
  }

  /** Notes in the jump cache that `blk` runs at `pc` under fetchKey `key` (for indirect jumps). */
  remember(blk: Block, pc: number, key: number): void {
    this.writeSlot(this.jumpCacheEntry(pc), pc, blk, key);
  }

  /** A link slot or jump-cache entry at `at` leads to `to`, for target pc and fetchKey `key`. */
  private writeSlot(at: number, pc: number, to: Block, key: number): void {
    this.linkF64[(at + LINK_PC) / 8] = pc;
    this.linkI32[(at + LINK_LENGTH) >>> 2] = to.length;
    this.linkI32[(at + LINK_KEY) >>> 2] = key;
    this.linkI32[(at + LINK_INDEX) >>> 2] = to.id;
  }

  private jumpCacheEntry(pc: number): number {
    return this.linkArea + (((pc | 0) >>> 1) & (JUMP_CACHE_ENTRIES - 1)) * LINK_SLOT_BYTES;
  }

  /** `blk` is dropped: no link leads to it any more. */
  unlink(blk: Block): void {
    for (const at of blk.incoming!) this.linkI32[(at + LINK_INDEX) >>> 2] = 0;
    // The jump cache may name it at any pc it ran at (its code is position-independent).
    const first = (this.linkArea + LINK_INDEX) >>> 2;
    const stride = LINK_SLOT_BYTES >>> 2;
    const last = first + JUMP_CACHE_ENTRIES * stride;
    for (let at = first; at < last; at += stride) if (this.linkI32[at] === blk.id) this.linkI32[at] = 0;
    blk.incoming = null;
  }

  /** Every block is dropped (a flush). */
  reset(): void {
    // The table holds the functions (and so their modules) alive until their entries are overwritten.
    for (let id = 1; id < this.byId.length; id++) this.table.set(id, null);
    this.linkI32.fill(0, this.linkArea >>> 2, (this.linkArea + this.nextSlot * LINK_SLOT_BYTES) >>> 2);
    this.nextSlot = JUMP_CACHE_ENTRIES;
    this.byId = [null];
  }
}

import type { MmioDevice } from "../cpu/bus.js";
import type { Persistent } from "./persist.js";
import { type InterruptTarget, MIP_MEIP, MIP_SEIP } from "./interrupts.js";

export const PLIC_BASE = 0x0c00_0000;
export const PLIC_SIZE = 0x60_0000;
/** Sources 1..95 (source 0 means "none"); the device tree's riscv,ndev is PLIC_SOURCES - 1. */
export const PLIC_SOURCES = 96;
/** QEMU virt implements 3 priority bits. */
const PRIORITY_MASK = 7;
const WORDS = PLIC_SOURCES / 32;

const PENDING_BASE = 0x1000;
const ENABLE_BASE = 0x2000;
const ENABLE_STRIDE = 0x80;
const CONTEXT_BASE = 0x20_0000;
const CONTEXT_STRIDE = 0x1000;

export interface PlicState {
  priority: number[];
  pending: number[];
  claimed: number[];
  level: number[];
  enable: number[];
  threshold: number[];
}

/**
 * SiFive PLIC as on QEMU virt. Context 2h is hart h's M-mode (MEIP), 2h+1 its S-mode (SEIP).
 * Sources are level-triggered: the gateway holds a claimed source back until it is completed.
 */
export class Plic implements MmioDevice, Persistent<PlicState> {
  readonly name = "plic";
  private readonly targets: InterruptTarget[];
  private readonly contexts: number;
  private readonly priority = new Uint8Array(PLIC_SOURCES);
  private readonly pending = new Uint32Array(WORDS);
  /** Claimed and not yet completed: the gateway forwards nothing new for these. */
  private readonly claimed = new Uint32Array(WORDS);
  /** Current device line levels. */
  private readonly level = new Uint32Array(WORDS);
  private readonly enable: Uint32Array;
  private readonly threshold: Uint8Array;

  constructor(targets: InterruptTarget[]) {
    this.targets = targets;
    this.contexts = targets.length * 2;
    this.enable = new Uint32Array(this.contexts * WORDS);
    this.threshold = new Uint8Array(this.contexts);
    this.update();
  }

  /** Drive device line `source` (1..95). */
  setLevel(source: number, level: boolean): void {
    if (source <= 0 || source >= PLIC_SOURCES) return;
    const w = source >> 5;
    const bit = 1 << (source & 31);
    const wasHigh = (this.level[w] & bit) !== 0;
    if (wasHigh === level) return;
    if (level) {
      this.level[w] |= bit;
      if (!(this.claimed[w] & bit)) this.pending[w] |= bit;
    } else {
      this.level[w] &= ~bit;
      // A level source that drops before being claimed no longer requests service (as QEMU).
      if (!(this.claimed[w] & bit)) this.pending[w] &= ~bit;
    }
    this.update();
  }

  /** Push every context's external-interrupt level to its hart. */
  update(): void {
    for (let ctx = 0; ctx < this.contexts; ctx++) {
      const h = ctx >> 1;
      this.targets[h].setPending(ctx & 1 ? MIP_SEIP : MIP_MEIP, this.best(ctx) !== 0);
    }
  }

  /** Highest-priority pending+enabled source above the context's threshold (lowest id wins ties), or 0. */
  private best(ctx: number): number {
    const th = this.threshold[ctx];
    let bestId = 0;
    let bestPrio = th;
    const base = ctx * WORDS;
    for (let w = 0; w < WORDS; w++) {
      let bits = this.pending[w] & this.enable[base + w];
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        const id = (w << 5) | b;
        const p = this.priority[id];
        if (p > bestPrio) {
          bestPrio = p;
          bestId = id;
        }
      }
    }
    return bestId;
  }

  read(offset: number, size: 1 | 2 | 4): number {
    const word = this.readWord(offset & ~3);
    if (size === 4) return word;
    const shift = (offset & 3) * 8;
    return (word >>> shift) & (size === 1 ? 0xff : 0xffff);
  }

  write(offset: number, value: number, size: 1 | 2 | 4): void {
    const aligned = offset & ~3;
    let word = value >>> 0;
    if (size !== 4) {
      const shift = (offset & 3) * 8;
      const mask = (size === 1 ? 0xff : 0xffff) << shift;
      // Read-modify-write, except claim/complete whose read has a side effect.
      const old = this.isClaimReg(aligned) ? 0 : this.readWord(aligned);
      word = ((old & ~mask) | ((value << shift) & mask)) >>> 0;
    }
    this.writeWord(aligned, word);
  }

  private isClaimReg(off: number): boolean {
    return off >= CONTEXT_BASE && (off - CONTEXT_BASE) % CONTEXT_STRIDE === 4;
  }

  private readWord(off: number): number {
    if (off < PENDING_BASE) {
      const src = off >> 2;
      return src < PLIC_SOURCES ? this.priority[src] : 0;
    }
    if (off < ENABLE_BASE) {
      const w = (off - PENDING_BASE) >> 2;
      return w < WORDS ? this.pending[w] : 0;
    }
    if (off < CONTEXT_BASE) {
      const ctx = Math.floor((off - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((off - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      return ctx < this.contexts && w < WORDS ? this.enable[ctx * WORDS + w] : 0;
    }
    const ctx = Math.floor((off - CONTEXT_BASE) / CONTEXT_STRIDE);
    if (ctx >= this.contexts) return 0;
    const reg = (off - CONTEXT_BASE) % CONTEXT_STRIDE;
    if (reg === 0) return this.threshold[ctx];
    if (reg === 4) return this.claim(ctx);
    return 0;
  }

  private claim(ctx: number): number {
    const id = this.best(ctx);
    if (id !== 0) {
      const w = id >> 5;
      const bit = 1 << (id & 31);
      this.pending[w] &= ~bit;
      this.claimed[w] |= bit;
      this.update();
    }
    return id;
  }

  private complete(ctx: number, id: number): void {
    if (id <= 0 || id >= PLIC_SOURCES) return;
    const w = id >> 5;
    const bit = 1 << (id & 31);
    // The spec ignores completions for sources not enabled in this context (Linux's EOI relies on it).
    if (!(this.enable[ctx * WORDS + w] & bit) || !(this.claimed[w] & bit)) return;
    this.claimed[w] &= ~bit;
    if (this.level[w] & bit) this.pending[w] |= bit;
    this.update();
  }

  private writeWord(off: number, value: number): void {
    if (off < PENDING_BASE) {
      const src = off >> 2;
      if (src > 0 && src < PLIC_SOURCES) {
        this.priority[src] = value & PRIORITY_MASK;
        this.update();
      }
      return;
    }
    if (off < ENABLE_BASE) return; // pending bits are read-only
    if (off < CONTEXT_BASE) {
      const ctx = Math.floor((off - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((off - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      if (ctx < this.contexts && w < WORDS) {
        this.enable[ctx * WORDS + w] = w === 0 ? value & ~1 : value; // source 0 does not exist
        this.update();
      }
      return;
    }
    const ctx = Math.floor((off - CONTEXT_BASE) / CONTEXT_STRIDE);
    if (ctx >= this.contexts) return;
    const reg = (off - CONTEXT_BASE) % CONTEXT_STRIDE;
    if (reg === 0) {
      this.threshold[ctx] = value & PRIORITY_MASK;
      this.update();
    } else if (reg === 4) {
      this.complete(ctx, value);
    }
  }

  save(): PlicState {
    return {
      priority: Array.from(this.priority),
      pending: Array.from(this.pending),
      claimed: Array.from(this.claimed),
      level: Array.from(this.level),
      enable: Array.from(this.enable),
      threshold: Array.from(this.threshold),
    };
  }

  restore(state: PlicState): void {
    this.priority.set(state.priority.slice(0, PLIC_SOURCES));
    this.pending.set(state.pending.slice(0, WORDS));
    this.claimed.set(state.claimed.slice(0, WORDS));
    this.level.set(state.level.slice(0, WORDS));
    this.enable.fill(0);
    this.enable.set(state.enable.slice(0, this.enable.length));
    this.threshold.fill(0);
    this.threshold.set(state.threshold.slice(0, this.contexts));
    this.update();
  }
}

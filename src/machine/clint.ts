import type { MmioDevice } from "../cpu/bus.js";
import type { Persistent } from "./persist.js";
import { type Clock, type InterruptTarget, MIP_MSIP, MIP_MTIP } from "./interrupts.js";

export const CLINT_BASE = 0x0200_0000;
export const CLINT_SIZE = 0x1_0000;

const MSIP_BASE = 0x0000;
const MTIMECMP_BASE = 0x4000;
const MTIME = 0xbff8;
const TWO32 = 0x1_0000_0000;
const TWO64 = TWO32 * TWO32;

export interface ClintState {
  msip: number[];
  mtimecmpLo: number[];
  mtimecmpHi: number[];
  /** mtime = clock.now() + mtimeOffset */
  mtimeOffset: number;
}

/**
 * SiFive CLINT / ACLINT MSWI + MTIMER pair, as on QEMU virt.
 *
 * Its registers live in one buffer: with harts on several threads (SMP) each thread has a Clint
 * over the same SharedArrayBuffer (from `Clint.allocate`), so that a hart's own timer and software
 * interrupt are served in its thread, and `harts` stands for the other threads' harts by targets
 * that only wake them.
 */
export class Clint implements MmioDevice, Persistent<ClintState> {
  readonly name = "clint";
  private readonly harts: InterruptTarget[];
  private readonly clock: Clock;
  /** [mtimeOffset] (mtime = clock.now() + mtimeOffset) */
  private readonly offset: Float64Array;
  private readonly cmpLo: Uint32Array;
  private readonly cmpHi: Uint32Array;
  private readonly msip: Uint8Array;
  /** High half of mtime captured by a low-half read, so a split 64-bit load cannot tear. */
  private latchedHi = 0;
  private hiLatched = false;

  /** Registers of `harts` harts in their reset state, in memory that threads can share. */
  static allocate(harts: number, shared = true): ArrayBuffer | SharedArrayBuffer {
    const bytes = 8 + 8 * harts + harts;
    const buffer = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
    new Uint32Array(buffer, 8, 2 * harts).fill(0xffff_ffff);
    return buffer;
  }

  constructor(harts: InterruptTarget[], clock: Clock, registers?: ArrayBuffer | SharedArrayBuffer) {
    this.harts = harts;
    this.clock = clock;
    const n = harts.length;
    const buffer = registers ?? Clint.allocate(n, false);
    if (buffer.byteLength !== 8 + 9 * n) throw new Error(`CLINT registers for ${n} harts expected`);
    this.offset = new Float64Array(buffer, 0, 1);
    this.cmpLo = new Uint32Array(buffer, 8, n);
    this.cmpHi = new Uint32Array(buffer, 8 + 4 * n, n);
    this.msip = new Uint8Array(buffer, 8 + 8 * n, n);
    for (let h = 0; h < n; h++) harts[h].setPending(MIP_MSIP, this.msip[h] === 1);
    this.update();
  }

  private get mtimeOffset(): number {
    return this.offset[0];
  }
  private set mtimeOffset(v: number) {
    this.offset[0] = v;
  }

  /** Hart `hart`'s software-interrupt bit (SMP: read by the hart's own thread). */
  softwarePending(hart: number): boolean {
    return this.msip[hart] === 1;
  }

  /** Whether hart `hart`'s timer has fired (mtime >= mtimecmp). */
  timerPending(hart: number): boolean {
    return this.mtime() >= this.cmpHi[hart] * TWO32 + this.cmpLo[hart];
  }

  /** Current mtime in ticks: a 64-bit counter, so it wraps to 0 past 2^64 - 1. */
  mtime(): number {
    const t = this.clock.now() + this.mtimeOffset;
    return t >= TWO64 ? t - TWO64 : t;
  }

  /** Recompute every hart's MTIP from mtime >= mtimecmp. */
  update(): void {
    const t = this.mtime();
    for (let h = 0; h < this.harts.length; h++) {
      this.harts[h].setPending(MIP_MTIP, t >= this.cmpHi[h] * TWO32 + this.cmpLo[h]);
    }
  }

  /**
   * Earliest clock.now() value at which some hart's MTIP becomes set (already-due deadlines
   * included, so a caller never sleeps past one); Infinity when every mtimecmp is all-ones.
   * With `hart`, only that hart's comparator is considered.
   */
  nextDeadline(hart?: number): number {
    let best = Infinity;
    const from = hart ?? 0;
    const to = hart === undefined ? this.harts.length : hart + 1;
    for (let h = from; h < to; h++) {
      if (this.cmpHi[h] === 0xffff_ffff && this.cmpLo[h] === 0xffff_ffff) continue;
      const cmp = this.cmpHi[h] * TWO32 + this.cmpLo[h];
      if (cmp < best) best = cmp;
    }
    if (best === Infinity) return best;
    // After mtime wrapped, the comparators count from the wrap.
    const offset = this.clock.now() + this.mtimeOffset >= TWO64 ? this.mtimeOffset - TWO64 : this.mtimeOffset;
    return best - offset;
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
      word = ((this.peekWord(aligned) & ~mask) | ((value << shift) & mask)) >>> 0;
    }
    this.writeWord(aligned, word);
  }

  private readWord(off: number): number {
    if (off === MTIME) {
      const t = this.mtime();
      this.latchedHi = Math.floor(t / TWO32) >>> 0;
      this.hiLatched = true;
      return (t % TWO32) >>> 0;
    }
    if (off === MTIME + 4 && this.hiLatched) {
      this.hiLatched = false;
      return this.latchedHi;
    }
    this.hiLatched = false;
    return this.peekWord(off);
  }

  /** Register value without side effects. */
  private peekWord(off: number): number {
    const n = this.harts.length;
    if (off >= MSIP_BASE && off < MSIP_BASE + 4 * n) return this.msip[(off - MSIP_BASE) >> 2];
    if (off >= MTIMECMP_BASE && off < MTIMECMP_BASE + 8 * n) {
      const h = (off - MTIMECMP_BASE) >> 3;
      return off & 4 ? this.cmpHi[h] : this.cmpLo[h];
    }
    if (off === MTIME || off === MTIME + 4) {
      const t = this.mtime();
      return off === MTIME ? (t % TWO32) >>> 0 : Math.floor(t / TWO32) >>> 0;
    }
    return 0;
  }

  private writeWord(off: number, value: number): void {
    this.hiLatched = false;
    const n = this.harts.length;
    if (off >= MSIP_BASE && off < MSIP_BASE + 4 * n) {
      const h = (off - MSIP_BASE) >> 2;
      this.msip[h] = value & 1;
      this.harts[h].setPending(MIP_MSIP, this.msip[h] === 1);
      return;
    }
    if (off >= MTIMECMP_BASE && off < MTIMECMP_BASE + 8 * n) {
      const h = (off - MTIMECMP_BASE) >> 3;
      if (off & 4) this.cmpHi[h] = value;
      else this.cmpLo[h] = value;
      this.update();
      return;
    }
    if (off === MTIME || off === MTIME + 4) {
      const t = this.mtime();
      let lo = (t % TWO32) >>> 0;
      let hi = Math.floor(t / TWO32) >>> 0;
      if (off === MTIME) lo = value;
      else hi = value;
      this.mtimeOffset = hi * TWO32 + lo - this.clock.now();
      this.update();
    }
  }

  save(): ClintState {
    return {
      msip: Array.from(this.msip),
      mtimecmpLo: Array.from(this.cmpLo),
      mtimecmpHi: Array.from(this.cmpHi),
      mtimeOffset: this.mtimeOffset,
    };
  }

  restore(state: ClintState): void {
    const n = this.harts.length;
    for (let h = 0; h < n; h++) {
      this.msip[h] = (state.msip[h] ?? 0) & 1;
      this.cmpLo[h] = state.mtimecmpLo[h] ?? 0xffff_ffff;
      this.cmpHi[h] = state.mtimecmpHi[h] ?? 0xffff_ffff;
      this.harts[h].setPending(MIP_MSIP, this.msip[h] === 1);
    }
    this.mtimeOffset = state.mtimeOffset;
    this.hiLatched = false;
    this.update();
  }
}

/**
 * The machine's timebase, shared by the harts' `time` CSR, the CLINT and the SBI timer: host time
 * while the VM runs, frozen while it is paused, and set on restore so that guest time goes on from
 * where the snapshot left it. Its two numbers live in a buffer that the hart threads of an SMP
 * machine share, so every hart reads the same time.
 */
import type { HartClock } from "../cpu/hart.js";
import { TIMEBASE_HZ } from "../machine/interrupts.js";

const TICKS_PER_MS = TIMEBASE_HZ / 1000;

export class VmClock implements HartClock {
  /** [host time (ms since the epoch) at which the guest's time was 0 while running, the guest's time while paused (ticks) or NaN] */
  private readonly words: Float64Array;
  /** performance.timeOrigin of this thread: host times are comparable across threads. */
  private readonly timeOrigin = performance.timeOrigin;

  /** `shared`: the buffer of another VmClock (from `buffer`), in another thread. */
  constructor(shared?: SharedArrayBuffer) {
    this.words = new Float64Array(shared ?? new SharedArrayBuffer(16));
    if (shared === undefined) {
      this.words[0] = this.hostMs();
      this.words[1] = NaN;
    }
  }

  /** The buffer to give a VmClock in another thread. */
  get buffer(): SharedArrayBuffer {
    return this.words.buffer as SharedArrayBuffer;
  }

  private hostMs(): number {
    return this.timeOrigin + performance.now();
  }

  now(): number {
    const frozen = this.words[1];
    if (frozen === frozen) return frozen; // not NaN: paused
    return Math.floor((this.hostMs() - this.words[0]) * TICKS_PER_MS);
  }
  get paused(): boolean {
    return !Number.isNaN(this.words[1]);
  }
  pause(): void {
    if (!this.paused) this.words[1] = this.now();
  }
  resume(): void {
    if (!this.paused) return;
    this.words[0] = this.hostMs() - this.words[1] / TICKS_PER_MS;
    this.words[1] = NaN;
  }
  /** Sets the current time (ticks), keeping the paused or running state. */
  set(ticks: number): void {
    if (this.paused) this.words[1] = ticks;
    else this.words[0] = this.hostMs() - ticks / TICKS_PER_MS;
  }
}

/** CPU time this process has used so far, user and system, all threads, in µs (CPU caps). */
export function processCpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

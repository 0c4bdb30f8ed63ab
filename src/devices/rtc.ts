import type { IrqLine, MmioDevice, Persistent } from "./device.js";

export const RTC_BASE = 0x0010_1000;
export const RTC_SIZE = 0x1000;
export const RTC_IRQ = 11;

const TIME_LOW = 0x00;
const TIME_HIGH = 0x04;
const ALARM_LOW = 0x08;
const ALARM_HIGH = 0x0c;
const IRQ_ENABLED = 0x10;
const CLEAR_ALARM = 0x14;
const ALARM_STATUS = 0x18;
const CLEAR_INTERRUPT = 0x1c;

const MASK32 = 0xffff_ffffn;
const MASK64 = 0xffff_ffff_ffff_ffffn;

export interface RtcState {
  /** Decimal strings: bigints are not JSON-serializable. */
  tickOffset: string;
  alarmNext: string;
  timeHigh: number;
  alarmRunning: boolean;
  irqPending: boolean;
  irqEnabled: boolean;
}

/** Nanoseconds since the Unix epoch from the host's wall clock. */
export const systemWallClock = (): bigint => BigInt(Date.now()) * 1_000_000n;

/** Goldfish RTC (as on QEMU virt). Guest time = wall clock + an offset the guest may set. */
export class GoldfishRtc implements MmioDevice, Persistent<RtcState> {
  readonly name = "rtc";
  private readonly irq: IrqLine;
  private readonly wallClock: () => bigint;
  private tickOffset = 0n;
  private alarmNext = 0n;
  private timeHigh = 0;
  private alarmRunning = false;
  private irqPending = false;
  private irqEnabled = false;
  private irqLevel = false;

  constructor(irq: IrqLine, wallClock: () => bigint = systemWallClock) {
    this.irq = irq;
    this.wallClock = wallClock;
  }

  /** Guest-visible time in ns. */
  now(): bigint {
    return (this.wallClock() + this.tickOffset) & MASK64;
  }

  /** Fire the alarm if it is due; call from the machine loop. */
  update(): void {
    if (this.alarmRunning && this.now() >= this.alarmNext) {
      this.alarmRunning = false;
      this.irqPending = true;
    }
    this.updateIrq();
  }

  /** Nanoseconds until the armed alarm fires (0 when due), or Infinity with no alarm armed. */
  nsUntilAlarm(): number {
    if (!this.alarmRunning) return Infinity;
    const left = this.alarmNext - this.now();
    return left > 0n ? Number(left) : 0;
  }

  /** Wall-clock time (in the injected clock's ns) at which the armed alarm fires, or undefined. */
  alarmDeadline(): bigint | undefined {
    return this.alarmRunning ? this.alarmNext - this.tickOffset : undefined;
  }

  private updateIrq(): void {
    const level = this.irqPending && this.irqEnabled;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.irq(level);
    }
  }

  /** Registers are 32-bit words; a narrower read answers its bytes of the word. */
  read(offset: number, size: 1 | 2 | 4): number {
    const word = this.readWord(offset & ~3);
    if (size === 4) return word;
    return (word >>> ((offset & 3) * 8)) & (size === 1 ? 0xff : 0xffff);
  }

  private readWord(offset: number): number {
    switch (offset) {
      case TIME_LOW: {
        const t = this.now();
        this.timeHigh = Number(t >> 32n);
        return Number(t & MASK32);
      }
      case TIME_HIGH:
        return this.timeHigh;
      case ALARM_LOW:
        return Number(this.alarmNext & MASK32);
      case ALARM_HIGH:
        return Number(this.alarmNext >> 32n);
      case IRQ_ENABLED:
        return this.irqEnabled ? 1 : 0;
      case ALARM_STATUS:
        return this.alarmRunning ? 1 : 0;
      default:
        return 0;
    }
  }

  write(offset: number, value: number, _size: 1 | 2 | 4): void {
    const v = BigInt(value >>> 0);
    switch (offset & ~3) {
      case TIME_LOW: {
        // Linux writes TIME_HIGH first; the low write commits both halves.
        const wanted = (BigInt(this.timeHigh) << 32n) | v;
        this.tickOffset = wanted - this.wallClock();
        break;
      }
      case TIME_HIGH:
        this.timeHigh = value >>> 0;
        break;
      case ALARM_LOW:
        this.alarmNext = (this.alarmNext & ~MASK32 & MASK64) | v;
        this.alarmRunning = true;
        this.update();
        return;
      case ALARM_HIGH:
        this.alarmNext = (v << 32n) | (this.alarmNext & MASK32);
        break;
      case IRQ_ENABLED:
        this.irqEnabled = (value & 1) !== 0;
        break;
      case CLEAR_ALARM:
        this.alarmRunning = false;
        break;
      case CLEAR_INTERRUPT:
        this.irqPending = false;
        break;
    }
    this.updateIrq();
  }

  save(): RtcState {
    return {
      tickOffset: this.tickOffset.toString(),
      alarmNext: this.alarmNext.toString(),
      timeHigh: this.timeHigh,
      alarmRunning: this.alarmRunning,
      irqPending: this.irqPending,
      irqEnabled: this.irqEnabled,
    };
  }

  restore(state: RtcState): void {
    this.tickOffset = BigInt(state.tickOffset);
    this.alarmNext = BigInt(state.alarmNext);
    this.timeHigh = state.timeHigh >>> 0;
    this.alarmRunning = state.alarmRunning;
    this.irqPending = state.irqPending;
    this.irqEnabled = state.irqEnabled;
    this.irqLevel = this.irqPending && this.irqEnabled;
    this.irq(this.irqLevel);
  }
}

/**
 * A miniature virtio-mmio driver for tests, following the steps of Linux's virtio_mmio.c and
 * virtio_ring.c: reset, ACKNOWLEDGE, DRIVER, feature negotiation with FEATURES_OK read back,
 * queue setup (QueueSel, QueueNumMax, QueueNum, addresses, QueueReady), DRIVER_OK; then
 * descriptor chains written into guest RAM, the available ring published and QueueNotify written.
 */
import { Bus } from "../../../src/cpu/bus.js";
import type { MmioDevice } from "../../../src/cpu/bus.js";
import {
  REG,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
} from "../../../src/devices/virtio/mmio.js";

export const RAM_BASE = 0x8000_0000;
export const RAM_SIZE = 1024 * 1024;

export const F_INDIRECT = 1n << 28n;
export const F_EVENT_IDX = 1n << 29n;
export const F_VERSION_1 = 1n << 32n;

export const DESC_NEXT = 1;
export const DESC_WRITE = 2;
export const DESC_INDIRECT = 4;

/** Guest RAM with typed accessors by physical address. */
export class Guest {
  readonly bus = new Bus(RAM_BASE, RAM_SIZE);
  readonly irq = { level: false, changes: 0 };
  readonly logs: string[] = [];
  readonly irqLine = (level: boolean): void => {
    this.irq.level = level;
    this.irq.changes++;
  };
  readonly log = (line: string): void => {
    this.logs.push(line);
  };
  private readonly dv = new DataView(this.bus.ramBuffer);

  off(pa: number): number {
    return pa - RAM_BASE;
  }
  w8(pa: number, v: number): void {
    this.dv.setUint8(this.off(pa), v);
  }
  w16(pa: number, v: number): void {
    this.dv.setUint16(this.off(pa), v, true);
  }
  w32(pa: number, v: number): void {
    this.dv.setUint32(this.off(pa), v >>> 0, true);
  }
  w64(pa: number, v: number): void {
    this.dv.setUint32(this.off(pa), v % 4294967296, true);
    this.dv.setUint32(this.off(pa) + 4, Math.floor(v / 4294967296), true);
  }
  r8(pa: number): number {
    return this.dv.getUint8(this.off(pa));
  }
  r16(pa: number): number {
    return this.dv.getUint16(this.off(pa), true);
  }
  r32(pa: number): number {
    return this.dv.getUint32(this.off(pa), true);
  }
  put(pa: number, bytes: Uint8Array | number[]): void {
    this.bus.ram.set(bytes, this.off(pa));
  }
  get(pa: number, len: number): Uint8Array {
    return this.bus.ram.slice(this.off(pa), this.off(pa) + len);
  }
  fill(pa: number, len: number, v: number): void {
    this.bus.ram.fill(v, this.off(pa), this.off(pa) + len);
  }
}

/** One segment of a chain: guest-physical address, length, device-writable or not. */
export interface Seg {
  pa: number;
  len: number;
  write?: boolean;
}

export class Driver {
  readonly dev: MmioDevice;
  readonly g: Guest;
  constructor(dev: MmioDevice, g: Guest) {
    this.dev = dev;
    this.g = g;
  }

  reg(off: number): number {
    return this.dev.read(off, 4) >>> 0;
  }
  set(off: number, v: number): void {
    this.dev.write(off, v, 4);
  }
  status(): number {
    return this.reg(REG.STATUS);
  }

  deviceFeatures(): bigint {
    this.set(REG.DEVICE_FEATURES_SEL, 1);
    const hi = BigInt(this.reg(REG.DEVICE_FEATURES));
    this.set(REG.DEVICE_FEATURES_SEL, 0);
    const lo = BigInt(this.reg(REG.DEVICE_FEATURES));
    return (hi << 32n) | lo;
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, then accept `wanted & offered` (or exactly `exact`), set
   * FEATURES_OK and read it back. Returns the accepted features, or undefined when refused.
   */
  negotiate(wanted: bigint = ~0n, exact?: bigint): bigint | undefined {
    this.set(REG.STATUS, 0);
    this.set(REG.STATUS, STATUS_ACKNOWLEDGE);
    this.set(REG.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const accepted = exact ?? this.deviceFeatures() & wanted;
    this.set(REG.DRIVER_FEATURES_SEL, 1);
    this.set(REG.DRIVER_FEATURES, Number(accepted >> 32n));
    this.set(REG.DRIVER_FEATURES_SEL, 0);
    this.set(REG.DRIVER_FEATURES, Number(accepted & 0xffff_ffffn));
    this.set(REG.STATUS, this.status() | STATUS_FEATURES_OK);
    return this.status() & STATUS_FEATURES_OK ? accepted : undefined;
  }

  /** vm_setup_vq: rings packed from `base` (descriptors, available ring, then used ring 4-aligned). */
  setupQueue(index: number, size: number, base: number): TestQueue {
    this.set(REG.QUEUE_SEL, index);
    if (this.reg(REG.QUEUE_READY) !== 0) throw new Error(`queue ${index} already ready`);
    const max = this.reg(REG.QUEUE_NUM_MAX);
    if (max === 0 || size > max) throw new Error(`queue ${index}: max ${max}`);
    const desc = base;
    const avail = desc + 16 * size;
    const used = Math.ceil((avail + 6 + 2 * size) / 4) * 4;
    this.g.fill(desc, used + 6 + 8 * size - desc, 0);
    this.set(REG.QUEUE_NUM, size);
    this.set(REG.QUEUE_DESC_LOW, desc >>> 0);
    this.set(REG.QUEUE_DESC_HIGH, 0);
    this.set(REG.QUEUE_DRIVER_LOW, avail >>> 0);
    this.set(REG.QUEUE_DRIVER_HIGH, 0);
    this.set(REG.QUEUE_DEVICE_LOW, used >>> 0);
    this.set(REG.QUEUE_DEVICE_HIGH, 0);
    this.set(REG.QUEUE_READY, 1);
    return new TestQueue(this, index, size, desc, avail, used);
  }

  driverOk(): void {
    this.set(REG.STATUS, this.status() | STATUS_DRIVER_OK);
  }

  /** The interrupt handler: read InterruptStatus, acknowledge it, return it. */
  ackInterrupt(): number {
    const isr = this.reg(REG.INTERRUPT_STATUS);
    this.set(REG.INTERRUPT_ACK, isr);
    return isr;
  }

  config8(off: number): number {
    return this.dev.read(REG.CONFIG + off, 1);
  }
  config16(off: number): number {
    return this.dev.read(REG.CONFIG + off, 2);
  }
  config32(off: number): number {
    return this.dev.read(REG.CONFIG + off, 4) >>> 0;
  }
  /** virtio_cread64 over MMIO: two 32-bit reads, low word first. */
  config64(off: number): number {
    return this.config32(off) + this.config32(off + 4) * 4294967296;
  }
}

/** The driver's side of one split virtqueue. */
export class TestQueue {
  private nextDesc = 0;
  availIdx = 0;
  lastUsed = 0;
  constructor(
    readonly d: Driver,
    readonly index: number,
    readonly size: number,
    readonly desc: number,
    readonly avail: number,
    readonly used: number,
  ) {}

  private get g(): Guest {
    return this.d.g;
  }

  writeDesc(i: number, pa: number, len: number, flags: number, next: number): void {
    const at = this.desc + 16 * i;
    this.g.w64(at, pa);
    this.g.w32(at + 8, len);
    this.g.w16(at + 12, flags);
    this.g.w16(at + 14, next);
  }

  /** Writes a chain into free descriptors (allocated round-robin) and returns its head. */
  addChain(segs: Seg[]): number {
    const idx = segs.map(() => this.nextDesc++ % this.size);
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      this.writeDesc(idx[k], s.pa, s.len, (s.write ? DESC_WRITE : 0) | (last ? 0 : DESC_NEXT), last ? 0 : idx[k + 1]);
    });
    return idx[0];
  }

  /** Writes an indirect table at `table` and one descriptor pointing at it; returns its head. */
  addIndirect(table: number, segs: Seg[]): number {
    segs.forEach((s, k) => {
      const last = k === segs.length - 1;
      const at = table + 16 * k;
      this.g.w64(at, s.pa);
      this.g.w32(at + 8, s.len);
      this.g.w16(at + 12, (s.write ? DESC_WRITE : 0) | (last ? 0 : DESC_NEXT));
      this.g.w16(at + 14, last ? 0 : k + 1);
    });
    const head = this.nextDesc++ % this.size;
    this.writeDesc(head, table, 16 * segs.length, DESC_INDIRECT, 0);
    return head;
  }

  /** Puts a head in the available ring and publishes the new index. */
  publish(...heads: number[]): void {
    for (const h of heads) {
      this.g.w16(this.avail + 4 + 2 * (this.availIdx % this.size), h);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    this.g.w16(this.avail + 2, this.availIdx);
  }

  kick(): void {
    this.d.set(REG.QUEUE_NOTIFY, this.index);
  }

  /** publish + kick. */
  submit(...heads: number[]): void {
    this.publish(...heads);
    this.kick();
  }

  usedIdx(): number {
    return this.g.r16(this.used + 2);
  }
  usedFlags(): number {
    return this.g.r16(this.used);
  }
  availEvent(): number {
    return this.g.r16(this.used + 4 + 8 * this.size);
  }
  setUsedEvent(v: number): void {
    this.g.w16(this.avail + 4 + 2 * this.size, v);
  }
  setAvailFlags(v: number): void {
    this.g.w16(this.avail, v);
  }

  /** New used entries since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const out: { id: number; len: number }[] = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      const e = this.used + 4 + 8 * (this.lastUsed % this.size);
      out.push({ id: this.g.r32(e), len: this.g.r32(e + 4) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}

/**
 * virtio-mmio, version 2 (virtio 1.2 §4.2): the register window every Yun virtio device sits
 * behind. Modern devices only: VIRTIO_F_VERSION_1 is offered and required, so a legacy driver gets
 * FEATURES_OK refused.
 *
 * A device (blk, net, console, rng) extends VirtioMmioDevice, fills `config`, and implements
 * `queueNotified()` by popping chains from its queues, answering them and calling `complete()`.
 * The transport turns any VirtqueueError raised on the way into DEVICE_NEEDS_RESET: one log line,
 * a configuration-change interrupt, and no further queue processing until the driver resets the
 * device by writing 0 to Status.
 *
 * The interrupt is a level line: high while InterruptStatus is non-zero.
 */
import type { IrqLine, MmioDevice, Persistent } from "../device.js";
import { DescriptorChain, Virtqueue, VirtqueueError, type GuestRam, type VirtqueueState } from "./queue.js";

/** Board placement (as on QEMU virt): slot n at BASE + n·STRIDE, PLIC source IRQ_BASE + n. */
export const VIRTIO_MMIO_BASE = 0x1000_1000;
export const VIRTIO_MMIO_STRIDE = 0x1000;
/** Size of each window (and of its device-tree `reg`). */
export const VIRTIO_MMIO_SIZE = 0x1000;
/**
 * QEMU virt has 8 slots (0x1000_1000..0x1000_8fff, PLIC sources 1-8); Yun continues the windows past
 * them (nothing else lives below 0x1010_0000), so disks, a network card, vsock and a display fit at
 * once. Slots from 8 on take PLIC sources from 12 (10 and 11 are the UART's and the RTC's).
 */
export const VIRTIO_MMIO_SLOTS = 16;
export const VIRTIO_MMIO_IRQ_BASE = 1;
/** The PLIC source of slot 8 and up. */
export const VIRTIO_MMIO_HIGH_IRQ_BASE = 12;

export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_GPU = 16;
export const VIRTIO_ID_INPUT = 18;

export const VIRTIO_MMIO_MAGIC = 0x7472_6976; // "virt"
/** Vendor ID "YUN\0" little-endian. */
export const VIRTIO_VENDOR_YUN = 0x004e_5559;

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Transport feature bits (all in the low word except VERSION_1, bit 32 = bit 0 of the high word). */
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;

export const INT_USED_BUFFER = 1;
export const INT_CONFIG_CHANGE = 2;

/** Register offsets (virtio-mmio version 2). */
export const REG = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

/** Options every virtio device takes. */
export interface VirtioOptions {
  /** Name in log lines and MMIO errors (default "virtio-blk" etc.). */
  name?: string;
  /** Receives one line per driver error, already prefixed "yun: <name>: " (default console.error). */
  log?: (line: string) => void;
}

/** What a concrete device tells the transport about itself. */
export interface VirtioDeviceSpec {
  deviceId: number;
  defaultName: string;
  /** Device-specific feature bits 0..23 (the transport adds INDIRECT_DESC, EVENT_IDX and VERSION_1). */
  features: number;
  /** One entry per virtqueue: its QueueNumMax and the most bytes one chain may carry each way. */
  queues: readonly { size: number; maxBytes?: number }[];
  configSize: number;
}

export interface VirtioMmioState<S> {
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  driverFeaturesLo: number;
  driverFeaturesHi: number;
  queueSel: number;
  interruptStatus: number;
  configGeneration: number;
  shmSel: number;
  queues: VirtqueueState[];
  device: S;
}

export abstract class VirtioMmioDevice<S> implements MmioDevice, Persistent<VirtioMmioState<S>> {
  readonly name: string;
  readonly deviceId: number;
  protected readonly mem: GuestRam;
  protected readonly queues: readonly Virtqueue[];
  /** Device configuration space (little-endian), read by the driver at offset 0x100. */
  protected readonly config: Uint8Array;
  protected readonly configView: DataView;

  private readonly irq: IrqLine;
  private readonly logLine: (line: string) => void;
  private readonly featuresLo: number;
  private readonly featuresHi: number;

  private status = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeaturesLo = 0;
  private driverFeaturesHi = 0;
  private queueSel = 0;
  private interruptStatus = 0;
  private configGeneration = 0;
  private shmSel = 0;
  private irqLevel = false;

  constructor(mem: GuestRam, irq: IrqLine, spec: VirtioDeviceSpec, options: VirtioOptions = {}) {
    this.mem = mem;
    this.irq = irq;
    this.deviceId = spec.deviceId;
    this.name = options.name ?? spec.defaultName;
    this.logLine = options.log ?? ((line) => console.error(line));
    this.featuresLo = ((spec.features & 0x00ff_ffff) | (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_EVENT_IDX)) >>> 0;
    this.featuresHi = 1 << (VIRTIO_F_VERSION_1 - 32);
    this.queues = spec.queues.map((q, i) => new Virtqueue(mem, i, q.size, q.maxBytes));
    this.config = new Uint8Array(spec.configSize);
    this.configView = new DataView(this.config.buffer);
  }

  // ---- what a device implements ----

  /** The driver notified queue `index` (or DRIVER_OK arrived): process what it made available. */
  protected abstract queueNotified(index: number): void;
  protected abstract saveDevice(): S;
  protected abstract restoreDevice(state: S): void;
  /** Device-specific part of a reset (Status = 0). */
  protected resetDevice(): void {}
  /** A driver write to the configuration space; ignored unless a device overrides it. */
  protected configWrite(_offset: number, _value: number, _size: 1 | 2 | 4): void {}

  // ---- what the transport offers a device ----

  /** A chain holder big enough for any chain of any of this device's queues. */
  protected newChain(): DescriptorChain {
    let capacity = 0;
    for (const q of this.queues) capacity = Math.max(capacity, q.chainCapacity);
    return new DescriptorChain(this.mem, capacity);
  }

  /** True when the driver negotiated feature `bit` (0..63). */
  protected negotiated(bit: number): boolean {
    if (!(this.status & STATUS_FEATURES_OK)) return false;
    return bit < 32 ? ((this.driverFeaturesLo >>> bit) & 1) === 1 : ((this.driverFeaturesHi >>> (bit - 32)) & 1) === 1;
  }

  /** The driver finished setup (DRIVER_OK) and the device has not failed: queues may be processed. */
  protected get live(): boolean {
    return (
      (this.status & (STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_NEEDS_RESET)) ===
      (STATUS_DRIVER_OK | STATUS_FEATURES_OK)
    );
  }

  /** True when queue `index` may be processed now. */
  protected queueLive(index: number): boolean {
    return this.live && this.queues[index].ready;
  }

  /**
   * Ends a batch on queue q: tells the driver whether further notifications are wanted, and raises
   * the used-buffer interrupt if entries were pushed and the driver did not suppress it.
   * Returns true when the interrupt was raised.
   */
  protected complete(q: Virtqueue, notifyWanted = true): boolean {
    if (!q.ready || !this.live) return false;
    q.setNotify(notifyWanted);
    if (!q.takeInterrupt()) return false;
    this.interruptStatus |= INT_USED_BUFFER;
    this.updateIrq();
    return true;
  }

  /** The device changed its configuration space: bump ConfigGeneration and interrupt the driver. */
  protected configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if (this.status & STATUS_DRIVER_OK) {
      this.interruptStatus |= INT_CONFIG_CHANGE;
      this.updateIrq();
    }
  }

  /** The driver broke the rules: DEVICE_NEEDS_RESET, one log line, a config-change interrupt. */
  protected fail(message: string): void {
    if (this.status & STATUS_NEEDS_RESET) return;
    this.status |= STATUS_NEEDS_RESET;
    this.log(`${message}; the device stops until the driver resets it`);
    if (this.status & STATUS_DRIVER_OK) {
      this.interruptStatus |= INT_CONFIG_CHANGE;
      this.updateIrq();
    }
  }

  protected log(message: string): void {
    this.logLine(`yun: ${this.name}: ${message}`);
  }

  /** Runs a device's queue handler, turning a driver's rule break into DEVICE_NEEDS_RESET. */
  private runQueue(index: number): void {
    try {
      this.queueNotified(index);
    } catch (e) {
      if (!(e instanceof VirtqueueError)) throw e;
      this.fail(`${e.message}`);
    }
  }

  /** Catches a VirtqueueError from host-initiated work (received frames, console input). */
  protected guard(e: unknown): void {
    if (!(e instanceof VirtqueueError)) throw e;
    this.fail(e.message);
  }

  private updateIrq(): void {
    const level = this.interruptStatus !== 0;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.irq(level);
    }
  }

  // ---- MMIO ----

  read(offset: number, size: 1 | 2 | 4): number {
    if (offset >= REG.CONFIG) return this.readConfig(offset - REG.CONFIG, size);
    // Control registers are 32 bits wide and aligned; anything else reads as 0.
    if (size !== 4 || (offset & 3) !== 0) return 0;
    const q = this.queues[this.queueSel] as Virtqueue | undefined;
    switch (offset) {
      case REG.MAGIC:
        return VIRTIO_MMIO_MAGIC;
      case REG.VERSION:
        return 2;
      case REG.DEVICE_ID:
        return this.deviceId;
      case REG.VENDOR_ID:
        return VIRTIO_VENDOR_YUN;
      case REG.DEVICE_FEATURES:
        return this.deviceFeaturesSel === 0 ? this.featuresLo : this.deviceFeaturesSel === 1 ? this.featuresHi : 0;
      case REG.QUEUE_NUM_MAX:
        return q ? q.maxSize : 0;
      case REG.QUEUE_READY:
        return q?.ready ? 1 : 0;
      case REG.INTERRUPT_STATUS:
        return this.interruptStatus;
      case REG.STATUS:
        return this.status;
      case REG.QUEUE_DESC_LOW:
        return q ? q.descLo : 0;
      case REG.QUEUE_DESC_HIGH:
        return q ? q.descHi : 0;
      case REG.QUEUE_DRIVER_LOW:
        return q ? q.driverLo : 0;
      case REG.QUEUE_DRIVER_HIGH:
        return q ? q.driverHi : 0;
      case REG.QUEUE_DEVICE_LOW:
        return q ? q.deviceLo : 0;
      case REG.QUEUE_DEVICE_HIGH:
        return q ? q.deviceHi : 0;
      case REG.SHM_LEN_LOW:
      case REG.SHM_LEN_HIGH:
      case REG.SHM_BASE_LOW:
      case REG.SHM_BASE_HIGH:
        // No shared memory regions: every region's length reads as ~0 ("does not exist").
        return 0xffff_ffff;
      case REG.CONFIG_GENERATION:
        return this.configGeneration;
      default:
        return 0;
    }
  }

  write(offset: number, value: number, size: 1 | 2 | 4): void {
    if (offset >= REG.CONFIG) {
      this.configWrite(offset - REG.CONFIG, value, size);
      return;
    }
    if (size !== 4 || (offset & 3) !== 0) return;
    const v = value >>> 0;
    const q = this.queues[this.queueSel] as Virtqueue | undefined;
    switch (offset) {
      case REG.DEVICE_FEATURES_SEL:
        this.deviceFeaturesSel = v;
        break;
      case REG.DRIVER_FEATURES:
        if (this.status & STATUS_FEATURES_OK) break; // fixed once accepted
        if (this.driverFeaturesSel === 0) this.driverFeaturesLo = v;
        else if (this.driverFeaturesSel === 1) this.driverFeaturesHi = v;
        break;
      case REG.DRIVER_FEATURES_SEL:
        this.driverFeaturesSel = v;
        break;
      case REG.QUEUE_SEL:
        this.queueSel = v;
        break;
      case REG.QUEUE_NUM:
        if (q && !q.ready) q.size = v;
        break;
      case REG.QUEUE_READY:
        if (q) this.setQueueReady(q, (v & 1) === 1);
        break;
      case REG.QUEUE_NOTIFY: {
        const index = v & 0xffff;
        if (index < this.queues.length && this.queueLive(index)) this.runQueue(index);
        break;
      }
      case REG.INTERRUPT_ACK:
        this.interruptStatus &= ~v;
        this.updateIrq();
        break;
      case REG.STATUS:
        this.writeStatus(v & 0xff);
        break;
      case REG.QUEUE_DESC_LOW:
        if (q && !q.ready) q.descLo = v;
        break;
      case REG.QUEUE_DESC_HIGH:
        if (q && !q.ready) q.descHi = v;
        break;
      case REG.QUEUE_DRIVER_LOW:
        if (q && !q.ready) q.driverLo = v;
        break;
      case REG.QUEUE_DRIVER_HIGH:
        if (q && !q.ready) q.driverHi = v;
        break;
      case REG.QUEUE_DEVICE_LOW:
        if (q && !q.ready) q.deviceLo = v;
        break;
      case REG.QUEUE_DEVICE_HIGH:
        if (q && !q.ready) q.deviceHi = v;
        break;
      case REG.SHM_SEL:
        this.shmSel = v;
        break;
    }
  }

  private readConfig(offset: number, size: 1 | 2 | 4): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const o = offset + i;
      v = v * 256 + (o < this.config.length ? this.config[o] : 0);
    }
    return v;
  }

  private setQueueReady(q: Virtqueue, ready: boolean): void {
    if (!ready) {
      q.ready = false;
      return;
    }
    if (q.ready) return;
    const err = q.enable(this.negotiated(VIRTIO_F_EVENT_IDX), this.negotiated(VIRTIO_F_INDIRECT_DESC));
    if (err) this.fail(err);
  }

  private writeStatus(v: number): void {
    if (v === 0) {
      this.reset();
      return;
    }
    if (v & STATUS_FEATURES_OK && !(this.status & STATUS_FEATURES_OK) && !this.featuresAcceptable()) {
      v &= ~STATUS_FEATURES_OK;
      this.log(
        this.driverFeaturesHi & 1
          ? "the driver asked for features the device does not offer; FEATURES_OK refused"
          : "the driver did not accept VIRTIO_F_VERSION_1 (legacy virtio is not supported); FEATURES_OK refused",
      );
    }
    const wasReady = this.live;
    // The driver cannot clear bits except by resetting, and NEEDS_RESET is the device's to set.
    this.status = (v & ~STATUS_NEEDS_RESET) | (this.status & STATUS_NEEDS_RESET);
    if (!wasReady && this.live) {
      // Buffers made available before DRIVER_OK (and host input queued meanwhile) are served now.
      for (let i = 0; i < this.queues.length && this.live; i++) if (this.queues[i].ready) this.runQueue(i);
    }
  }

  private featuresAcceptable(): boolean {
    const extraLo = this.driverFeaturesLo & ~this.featuresLo;
    const extraHi = this.driverFeaturesHi & ~this.featuresHi;
    return extraLo === 0 && extraHi === 0 && (this.driverFeaturesHi & 1) === 1;
  }

  private reset(): void {
    this.status = 0;
    this.deviceFeaturesSel = this.driverFeaturesSel = 0;
    this.driverFeaturesLo = this.driverFeaturesHi = 0;
    this.queueSel = 0;
    this.shmSel = 0;
    for (const q of this.queues) q.reset();
    this.interruptStatus = 0;
    this.updateIrq();
    this.resetDevice();
  }

  // ---- snapshots ----

  save(): VirtioMmioState<S> {
    return {
      status: this.status,
      deviceFeaturesSel: this.deviceFeaturesSel,
      driverFeaturesSel: this.driverFeaturesSel,
      driverFeaturesLo: this.driverFeaturesLo,
      driverFeaturesHi: this.driverFeaturesHi,
      queueSel: this.queueSel,
      interruptStatus: this.interruptStatus,
      configGeneration: this.configGeneration,
      shmSel: this.shmSel,
      queues: this.queues.map((q) => q.save()),
      device: this.saveDevice(),
    };
  }

  restore(state: VirtioMmioState<S>): void {
    if (!Array.isArray(state.queues) || state.queues.length !== this.queues.length) {
      throw new Error(
        `cannot restore ${this.name}: the snapshot has ${state.queues?.length} queues, the device ${this.queues.length}`,
      );
    }
    this.status = state.status & 0xff;
    this.deviceFeaturesSel = state.deviceFeaturesSel >>> 0;
    this.driverFeaturesSel = state.driverFeaturesSel >>> 0;
    this.driverFeaturesLo = state.driverFeaturesLo >>> 0;
    this.driverFeaturesHi = state.driverFeaturesHi >>> 0;
    this.queueSel = state.queueSel >>> 0;
    this.interruptStatus = state.interruptStatus & (INT_USED_BUFFER | INT_CONFIG_CHANGE);
    this.configGeneration = state.configGeneration >>> 0;
    this.shmSel = state.shmSel >>> 0;
    const eventIdx = this.negotiated(VIRTIO_F_EVENT_IDX);
    const indirect = this.negotiated(VIRTIO_F_INDIRECT_DESC);
    for (let i = 0; i < this.queues.length; i++) {
      const err = this.queues[i].restore(state.queues[i], eventIdx, indirect);
      if (err) throw new Error(`cannot restore ${this.name}: ${err}`);
    }
    this.restoreDevice(state.device);
    this.irqLevel = this.interruptStatus !== 0;
    this.irq(this.irqLevel);
  }
}

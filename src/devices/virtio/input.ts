/**
 * virtio-input (virtio 1.2 §5.8), as QEMU's virtio-keyboard and virtio-tablet: event queue 0 carries
 * evdev events (type, code, value) to the driver, status queue 1 brings LED changes back, which are
 * taken and dropped. The configuration space answers the driver's select/subsel queries (name,
 * serial, device ids, property bits, event-type bitmaps, absolute axis ranges) from a fixed
 * description.
 *
 * Host events wait in a bounded queue until the driver posts buffers; a batch (ending in SYN_REPORT)
 * that does not fit is dropped whole, as QEMU does, so a guest that never reads costs bounded memory.
 */
import type { IrqLine } from "../device.js";
import { VIRTIO_ID_INPUT, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import type { DescriptorChain, GuestRam } from "./queue.js";

const QUEUE_SIZE = 64;
const EVENTQ = 0;
const STATUSQ = 1;
/** Most events waiting for the driver. */
export const INPUT_MAX_PENDING = 4096;

export const EV_SYN = 0x00;
export const EV_KEY = 0x01;
export const EV_REL = 0x02;
export const EV_ABS = 0x03;
export const EV_LED = 0x11;
export const EV_REP = 0x14;
export const SYN_REPORT = 0;
export const BTN_LEFT = 0x110;
export const BTN_RIGHT = 0x111;
export const BTN_MIDDLE = 0x112;
export const REL_WHEEL = 0x08;
export const ABS_X = 0x00;
export const ABS_Y = 0x01;
/** The tablet's axes run from 0 to this (QEMU's range). */
export const TABLET_ABS_MAX = 0x7fff;

export const INPUT_CFG = {
  UNSET: 0x00,
  ID_NAME: 0x01,
  ID_SERIAL: 0x02,
  ID_DEVIDS: 0x03,
  PROP_BITS: 0x10,
  EV_BITS: 0x11,
  ABS_INFO: 0x12,
} as const;

const CONFIG_SIZE = 8 + 128;

export interface AbsInfo {
  min: number;
  max: number;
  fuzz: number;
  flat: number;
  res: number;
}

/** What the device tells the driver about itself. */
export interface InputDescription {
  name: string;
  serial: string;
  ids: { bustype: number; vendor: number; product: number; version: number };
  /** Event codes per event type (EV_KEY, EV_REL, ...). */
  events: ReadonlyMap<number, readonly number[]>;
  abs: ReadonlyMap<number, AbsInfo>;
}

const BUS_VIRTUAL = 0x06;

/** Linux key codes QEMU's virtio-keyboard announces: every code of a PC keyboard. */
const KEYBOARD_CODES: number[] = [];
for (let k = 1; k <= 0x7f; k++) KEYBOARD_CODES.push(k);

export const KEYBOARD_DESCRIPTION: InputDescription = {
  name: "QEMU Virtio Keyboard",
  serial: "",
  ids: { bustype: BUS_VIRTUAL, vendor: 0x0627, product: 0x0001, version: 0x0001 },
  events: new Map<number, number[]>([
    [EV_KEY, KEYBOARD_CODES],
    [EV_REP, []],
    [EV_LED, [0, 1, 2]], // NUML, CAPSL, SCROLLL
  ]),
  abs: new Map(),
};

export const TABLET_DESCRIPTION: InputDescription = {
  name: "QEMU Virtio Tablet",
  serial: "",
  ids: { bustype: BUS_VIRTUAL, vendor: 0x0627, product: 0x0003, version: 0x0001 },
  events: new Map<number, number[]>([
    [EV_KEY, [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]],
    [EV_REL, [REL_WHEEL]],
    [EV_ABS, [ABS_X, ABS_Y]],
  ]),
  abs: new Map([
    [ABS_X, { min: 0, max: TABLET_ABS_MAX, fuzz: 0, flat: 0, res: 0 }],
    [ABS_Y, { min: 0, max: TABLET_ABS_MAX, fuzz: 0, flat: 0, res: 0 }],
  ]),
};

export interface VirtioInputState {
  select: number;
  subsel: number;
  /** Events not yet taken by the driver, as flat (type, code, value) triples. */
  pending: number[];
  /** Tablet buttons held (bit 0 left, 1 middle, 2 right). */
  buttons: number;
}

export class VirtioInput extends VirtioMmioDevice<VirtioInputState> {
  readonly description: InputDescription;
  private readonly chain: DescriptorChain;
  private readonly kick: (() => void) | undefined;
  private readonly event = new Uint8Array(8);
  private readonly eventView = new DataView(this.event.buffer);
  /** Flat (type, code, value) triples waiting for buffers. */
  private pending: number[] = [];
  private pendingHead = 0;
  private select = 0;
  private subsel = 0;
  private buttons = 0;
  /** Batches dropped because the queue was full. */
  dropped = 0;

  constructor(
    mem: GuestRam,
    irq: IrqLine,
    description: InputDescription,
    options: VirtioOptions & { kick?: () => void } = {},
  ) {
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_INPUT,
        defaultName: "virtio-input",
        features: 0,
        queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE }],
        configSize: CONFIG_SIZE,
      },
      options,
    );
    this.description = description;
    this.kick = options.kick;
    this.chain = this.newChain();
  }

  // ---- host side ----

  /** A key (Linux key code) went down or up. */
  key(code: number, down: boolean): void {
    this.send([EV_KEY, code, down ? 1 : 0, EV_SYN, SYN_REPORT, 0]);
  }

  /** Several keys in one report, e.g. shift then a letter. */
  keys(changes: readonly { code: number; down: boolean }[]): void {
    const batch: number[] = [];
    for (const k of changes) batch.push(EV_KEY, k.code, k.down ? 1 : 0);
    batch.push(EV_SYN, SYN_REPORT, 0);
    this.send(batch);
  }

  /**
   * The tablet: absolute position (0..TABLET_ABS_MAX each way), buttons held (bit 0 left, 1 middle,
   * 2 right) and wheel clicks (positive: up).
   */
  pointer(x: number, y: number, buttons: number, wheel = 0): void {
    const batch = [EV_ABS, ABS_X, clampAxis(x), EV_ABS, ABS_Y, clampAxis(y)];
    const codes = [BTN_LEFT, BTN_MIDDLE, BTN_RIGHT];
    for (let b = 0; b < 3; b++) {
      const bit = 1 << b;
      if ((buttons & bit) !== (this.buttons & bit)) batch.push(EV_KEY, codes[b], buttons & bit ? 1 : 0);
    }
    this.buttons = buttons & 7;
    if (wheel !== 0) batch.push(EV_REL, REL_WHEEL, wheel | 0);
    batch.push(EV_SYN, SYN_REPORT, 0);
    this.send(batch);
  }

  /** Events waiting for the driver to post buffers. */
  get pendingEvents(): number {
    return (this.pending.length - this.pendingHead) / 3;
  }

  /** Queues a batch of (type, code, value) triples and hands over what the driver has room for. */
  send(batch: readonly number[]): void {
    if (this.pendingEvents + batch.length / 3 > INPUT_MAX_PENDING) {
      this.dropped++;
      return;
    }
    for (const v of batch) this.pending.push(v);
    if (!this.queueLive(EVENTQ)) return;
    try {
      if (this.deliver()) this.kick?.();
    } catch (e) {
      this.guard(e);
    }
  }

  private deliver(): boolean {
    const q = this.queues[EVENTQ];
    const c = this.chain;
    let delivered = false;
    while (this.pendingHead < this.pending.length && this.live && q.pop(c)) {
      const p = this.pendingHead;
      this.eventView.setUint16(0, this.pending[p], true);
      this.eventView.setUint16(2, this.pending[p + 1], true);
      this.eventView.setInt32(4, this.pending[p + 2], true);
      q.push(c.head, c.write(0, this.event, 0, 8));
      this.pendingHead += 3;
      delivered = true;
    }
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
    } else if (this.pendingHead > 3 * 1024) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    if (delivered) this.complete(q);
    return delivered;
  }

  protected queueNotified(index: number): void {
    if (index === EVENTQ) {
      this.deliver();
      return;
    }
    if (index === STATUSQ) {
      // LED state from the driver: taken and dropped (no host LEDs to light).
      const q = this.queues[STATUSQ];
      while (this.live && q.pop(this.chain)) q.push(this.chain.head, 0);
      this.complete(q);
    }
  }

  // ---- configuration space ----

  protected override configWrite(offset: number, value: number, size: 1 | 2 | 4): void {
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      const byte = (value >>> (8 * i)) & 0xff;
      if (o === 0) this.select = byte;
      else if (o === 1) this.subsel = byte;
    }
    if (offset <= 1) this.fillConfig();
  }

  private fillConfig(): void {
    const cfg = this.config;
    const v = this.configView;
    cfg.fill(0);
    cfg[0] = this.select;
    cfg[1] = this.subsel;
    const d = this.description;
    let size = 0;
    switch (this.select) {
      case INPUT_CFG.ID_NAME:
      case INPUT_CFG.ID_SERIAL: {
        if (this.subsel !== 0) break;
        const text = Buffer.from(this.select === INPUT_CFG.ID_NAME ? d.name : d.serial, "utf8").subarray(0, 128);
        cfg.set(text, 8);
        size = text.length;
        break;
      }
      case INPUT_CFG.ID_DEVIDS:
        if (this.subsel !== 0) break;
        v.setUint16(8, d.ids.bustype, true);
        v.setUint16(10, d.ids.vendor, true);
        v.setUint16(12, d.ids.product, true);
        v.setUint16(14, d.ids.version, true);
        size = 8;
        break;
      case INPUT_CFG.EV_BITS: {
        const codes = d.events.get(this.subsel);
        if (!codes) break;
        for (const code of codes) {
          if (code < 1024) {
            cfg[8 + (code >> 3)] |= 1 << (code & 7);
            size = Math.max(size, (code >> 3) + 1);
          }
        }
        // A type with no codes (EV_REP) still answers with one zero byte: "supported".
        if (size === 0) size = 1;
        break;
      }
      case INPUT_CFG.ABS_INFO: {
        const info = d.abs.get(this.subsel);
        if (!info) break;
        v.setUint32(8, info.min, true);
        v.setUint32(12, info.max, true);
        v.setUint32(16, info.fuzz, true);
        v.setUint32(20, info.flat, true);
        v.setUint32(24, info.res, true);
        size = 20;
        break;
      }
    }
    cfg[2] = size;
  }

  protected override resetDevice(): void {
    this.select = this.subsel = 0;
    this.fillConfig();
  }

  // ---- snapshots ----

  protected saveDevice(): VirtioInputState {
    return {
      select: this.select,
      subsel: this.subsel,
      pending: this.pending.slice(this.pendingHead),
      buttons: this.buttons,
    };
  }

  protected restoreDevice(state: VirtioInputState): void {
    if (
      !Array.isArray(state.pending) ||
      state.pending.length % 3 !== 0 ||
      state.pending.length > 3 * INPUT_MAX_PENDING
    ) {
      throw new Error("the pending events are not a list of (type, code, value) triples");
    }
    this.select = state.select & 0xff;
    this.subsel = state.subsel & 0xff;
    this.pending = state.pending.map((n) => Number(n) | 0);
    this.pendingHead = 0;
    this.buttons = state.buttons & 7;
    this.fillConfig();
  }
}

function clampAxis(v: number): number {
  return Math.max(0, Math.min(TABLET_ABS_MAX, Math.round(v)));
}

/**
 * The guest's side of a virtio-vsock device for tests, as Linux's virtio_transport drives it:
 * receive buffers posted, packets sent with header and payload in separate descriptors.
 */
import assert from "node:assert/strict";
import { REG, STATUS_NEEDS_RESET } from "../../../src/devices/virtio/mmio.js";
import { VirtioVsock } from "../../../src/devices/virtio/vsock.js";
import { Driver, Guest, RAM_BASE, type TestQueue } from "./driver.js";

const RXQ = RAM_BASE + 0x1000;
const TXQ = RAM_BASE + 0x5000;
const EVQ = RAM_BASE + 0x9000;
const RXBUF = RAM_BASE + 0x10000; // 16 receive buffers of 4 KiB + header
const TXBUF = RAM_BASE + 0x30000;
export const EVBUF = RAM_BASE + 0xf0000;
export const RXBUF_BASE = RXBUF;
const RX_BUF_BYTES = 44 + 4096;

export interface Packet {
  srcCid: number;
  dstCid: number;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
  data: Uint8Array;
}

/** The guest's side, as Linux's virtio_transport drives it: receive buffers posted, packets sent. */
export class GuestSide {
  private nextRx = 0;
  private txAt = 0;
  constructor(
    readonly g: Guest,
    readonly d: Driver,
    readonly rx: TestQueue,
    readonly tx: TestQueue,
    readonly ev: TestQueue,
  ) {}

  postRx(n: number): void {
    const heads: number[] = [];
    for (let i = 0; i < n; i++) {
      const pa = RXBUF + (this.nextRx++ % 16) * 0x1100;
      heads.push(this.rx.addChain([{ pa, len: RX_BUF_BYTES, write: true }]));
      this.rxAddr.set(heads[heads.length - 1], pa);
    }
    this.rx.submit(...heads);
  }
  private readonly rxAddr = new Map<number, number>();

  /** Packets the device put into receive buffers since the last call. */
  received(): Packet[] {
    return this.rx.takeUsed().map((u) => {
      const pa = this.rxAddr.get(u.id)!;
      const h = this.g.get(pa, 44);
      const v = new DataView(h.buffer);
      const len = v.getUint32(24, true);
      assert.equal(u.len, 44 + len, "used length is header + payload");
      return {
        srcCid: v.getUint32(0, true),
        dstCid: v.getUint32(8, true),
        srcPort: v.getUint32(16, true),
        dstPort: v.getUint32(20, true),
        len,
        type: v.getUint16(28, true),
        op: v.getUint16(30, true),
        flags: v.getUint32(32, true),
        bufAlloc: v.getUint32(36, true),
        fwdCnt: v.getUint32(40, true),
        data: this.g.get(pa + 44, len),
      };
    });
  }

  /** Sends one packet (header and payload in separate descriptors, as Linux does). */
  send(p: Partial<Packet> & { op: number; srcPort: number; dstPort: number }, headerBytes = 44): void {
    const h = new Uint8Array(44);
    const v = new DataView(h.buffer);
    const data = p.data ?? new Uint8Array(0);
    v.setUint32(0, p.srcCid ?? 3, true);
    v.setUint32(8, p.dstCid ?? 2, true);
    v.setUint32(16, p.srcPort, true);
    v.setUint32(20, p.dstPort, true);
    v.setUint32(24, p.len ?? data.length, true);
    v.setUint16(28, p.type ?? 1, true);
    v.setUint16(30, p.op, true);
    v.setUint32(32, p.flags ?? 0, true);
    v.setUint32(36, p.bufAlloc ?? 65536, true);
    v.setUint32(40, p.fwdCnt ?? 0, true);
    const at = TXBUF + (this.txAt++ % 8) * 0x11000;
    this.g.put(at, h.subarray(0, headerBytes));
    const segs = [{ pa: at, len: headerBytes }];
    if (data.length > 0) {
      this.g.put(at + 0x100, data);
      segs.push({ pa: at + 0x100, len: data.length });
    }
    this.tx.submit(this.tx.addChain(segs));
    this.tx.takeUsed();
  }

  get needsReset(): boolean {
    return (this.d.reg(REG.STATUS) & STATUS_NEEDS_RESET) !== 0;
  }
}

export function setup(opts: { guestCid?: number } = {}) {
  const g = new Guest();
  let kicks = 0;
  const dev = new VirtioVsock(g.bus, g.irqLine, { ...opts, log: g.log, kick: () => kicks++ });
  const d = new Driver(dev, g);
  d.negotiate();
  const rx = d.setupQueue(0, 64, RXQ);
  const tx = d.setupQueue(1, 64, TXQ);
  const ev = d.setupQueue(2, 16, EVQ);
  d.driverOk();
  return { g, dev, d, guest: new GuestSide(g, d, rx, tx, ev), kicks: () => kicks };
}

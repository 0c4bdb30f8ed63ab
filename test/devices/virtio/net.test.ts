import { test } from "node:test";
import assert from "node:assert/strict";
import type { NetBackend } from "../../../src/devices/netdev.js";
import { REG, VIRTIO_ID_NET } from "../../../src/devices/virtio/mmio.js";
import { BACKLOG_FRAMES, VIRTIO_NET_F_MRG_RXBUF, VirtioNet, parseMac } from "../../../src/devices/virtio/net.js";
import { Driver, F_EVENT_IDX, Guest, RAM_BASE, type TestQueue } from "./driver.js";

const RXQ = RAM_BASE + 0x1000;
const TXQ = RAM_BASE + 0x6000;
const TXBUF = RAM_BASE + 0x10000;
const RXPOOL = RAM_BASE + 0x20000;
const F_MRG = 1n << BigInt(VIRTIO_NET_F_MRG_RXBUF);

class FakeNet implements NetBackend {
  readonly sent: Uint8Array[] = [];
  deliver: (frame: Uint8Array) => boolean = () => {
    throw new Error("not attached");
  };
  /** When set, every transmitted frame comes straight back (a loopback cable). */
  echo = false;
  send(frame: Uint8Array): void {
    this.sent.push(frame.slice());
    if (this.echo) this.deliver(frame);
  }
  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
  }
  close(): void {}
}

function frame(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed * 17 + (i >> 8)) & 0xff);
}

/** Receive-side driver state: which buffer each posted descriptor head points at. */
class RxRing {
  private readonly bufOf = new Map<number, number>();
  /** Next pool slot to post. */
  slot = 0;
  constructor(
    readonly g: Guest,
    readonly q: TestQueue,
    readonly bufSize: number,
    readonly slots: number,
  ) {}

  /** Posts n receive buffers (one writable descriptor each, as Linux does with mergeable buffers). */
  post(n: number, kick = true): void {
    const heads: number[] = [];
    for (let i = 0; i < n; i++) {
      const pa = RXPOOL + (this.slot++ % this.slots) * this.bufSize;
      const h = this.q.addChain([{ pa, len: this.bufSize, write: true }]);
      this.bufOf.set(h, pa);
      heads.push(h);
    }
    this.q.publish(...heads);
    if (kick) this.q.kick();
  }

  /** Reassembles received frames from the used ring (virtio_net_hdr num_buffers groups buffers). */
  frames(): { numBuffers: number; data: Uint8Array; hdr: Uint8Array }[] {
    const used = this.q.takeUsed();
    const out: { numBuffers: number; data: Uint8Array; hdr: Uint8Array }[] = [];
    for (let i = 0; i < used.length;) {
      const pa = this.bufOf.get(used[i].id)!;
      const hdr = this.g.get(pa, 12);
      const numBuffers = hdr[10] | (hdr[11] << 8);
      const parts = [this.g.get(pa + 12, used[i].len - 12)];
      for (let k = 1; k < numBuffers; k++) parts.push(this.g.get(this.bufOf.get(used[i + k].id)!, used[i + k].len));
      out.push({ numBuffers, data: new Uint8Array(Buffer.concat(parts)), hdr });
      i += Math.max(1, numBuffers);
    }
    return out;
  }
}

function setupNet(
  opts: { wanted?: bigint; bufSize?: number; slots?: number; qsize?: number; driverOk?: boolean } = {},
) {
  const g = new Guest();
  const net = new FakeNet();
  let kicks = 0;
  const dev = new VirtioNet(g.bus, g.irqLine, net, { mac: "52:54:00:ab:cd:ef", log: g.log, kick: () => kicks++ });
  const d = new Driver(dev, g);
  const features = d.negotiate(opts.wanted ?? ~0n);
  assert.ok(features !== undefined);
  const qsize = opts.qsize ?? 256;
  const rxq = d.setupQueue(0, qsize, RXQ);
  const tx = d.setupQueue(1, qsize, TXQ);
  if (opts.driverOk !== false) d.driverOk();
  const rx = new RxRing(g, rxq, opts.bufSize ?? 2048, opts.slots ?? 64);
  return { g, net, dev, d, rx, tx, features, kicks: () => kicks };
}

test("config space holds the MAC and link status; features are as advertised", () => {
  const { d, dev } = setupNet();
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_NET);
  const f = d.deviceFeatures();
  for (const bit of [5, 15, 16, 28, 29, 32]) assert.ok(f & (1n << BigInt(bit)), `feature ${bit}`);
  assert.equal(f & 0xffffn & ~((1n << 5n) | (1n << 15n)), 0n, "no checksum or GSO offloads");
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((i) => d.config8(i)),
    [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef],
  );
  assert.equal(d.config16(6), 1, "VIRTIO_NET_S_LINK_UP");
  assert.deepEqual(dev.mac, Uint8Array.from([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
});

test("MAC addresses are validated with a clear message", () => {
  assert.deepEqual(parseMac("02-00-00-00-00-01"), Uint8Array.from([2, 0, 0, 0, 0, 1]));
  assert.throws(() => parseMac("52:54:00:12:34"), /invalid MAC address "52:54:00:12:34": expected six hex bytes/);
  assert.throws(() => parseMac("zz:54:00:12:34:56"), /invalid MAC address/);
  assert.throws(() => parseMac(new Uint8Array(5)), /a MAC address has 6 bytes, not 5/);
});

test("transmit strips the virtio header and hands whole frames to the backend", () => {
  const { g, net, tx, dev, d } = setupNet();
  const f = frame(1514, 1);
  g.fill(TXBUF, 12, 0);
  g.put(TXBUF + 0x100, f.subarray(0, 600));
  g.put(TXBUF + 0x1000, f.subarray(600));
  const h1 = tx.addChain([
    { pa: TXBUF, len: 12 },
    { pa: TXBUF + 0x100, len: 600 },
    { pa: TXBUF + 0x1000, len: 914 },
  ]);
  // Header and data in one descriptor, sent through an indirect table.
  g.put(TXBUF + 0x3000 + 12, frame(60, 2));
  const h2 = tx.addIndirect(TXBUF + 0x5000, [{ pa: TXBUF + 0x3000, len: 72 }]);
  // A chain holding only a header carries no frame.
  const h3 = tx.addChain([{ pa: TXBUF, len: 12 }]);
  tx.submit(h1, h2, h3);
  assert.equal(net.sent.length, 2);
  assert.deepEqual(net.sent[0], f);
  assert.deepEqual(net.sent[1], frame(60, 2));
  assert.deepEqual(tx.takeUsed(), [
    { id: h1, len: 0 },
    { id: h2, len: 0 },
    { id: h3, len: 0 },
  ]);
  assert.equal(g.irq.level, true);
  assert.equal(d.ackInterrupt(), 1);
  assert.deepEqual(dev.stats(), { rxPackets: 0, rxBytes: 0, rxDrops: 0, txPackets: 2, txBytes: 1574, txDrops: 1 });
});

test("receive with MRG_RXBUF spreads a frame over several buffers and sets num_buffers", () => {
  const { g, net, rx, dev, kicks, features } = setupNet({ bufSize: 512 });
  assert.ok(features! & F_MRG);
  rx.post(4);
  assert.equal(g.irq.level, false);
  const f = frame(1200, 3);
  assert.equal(net.deliver(f), true);
  const got = rx.frames();
  assert.equal(got.length, 1);
  assert.equal(got[0].numBuffers, 3);
  assert.deepEqual(got[0].hdr.subarray(0, 10), new Uint8Array(10), "no offload fields");
  assert.deepEqual(got[0].data, f);
  assert.equal(g.irq.level, true);
  assert.equal(kicks(), 1, "the VM loop is woken");
  // One buffer left: a 400-byte frame fits in it.
  assert.equal(net.deliver(frame(400, 4)), true);
  const got2 = rx.frames();
  assert.equal(got2[0].numBuffers, 1);
  assert.deepEqual(got2[0].data, frame(400, 4));
  assert.deepEqual(dev.stats(), { rxPackets: 2, rxBytes: 1600, rxDrops: 0, txPackets: 0, txBytes: 0, txDrops: 0 });
});

test("a frame that does not fit the posted buffers waits, untouched buffers are reused later", () => {
  const { net, rx, dev } = setupNet({ bufSize: 512 });
  rx.post(2);
  assert.equal(net.deliver(frame(1500, 5)), true, "queued, not dropped");
  assert.equal(dev.backlog, 1);
  assert.equal(rx.frames().length, 0, "no partial frame in the used ring");
  rx.post(2);
  const got = rx.frames();
  assert.equal(got.length, 1);
  assert.equal(got[0].numBuffers, 3);
  assert.deepEqual(got[0].data, frame(1500, 5));
  assert.equal(dev.backlog, 0);
});

test("without MRG_RXBUF each frame takes one buffer with num_buffers 1; a frame too big is dropped", () => {
  const { net, rx, dev, features } = setupNet({ wanted: ~F_MRG, bufSize: 1526 });
  assert.equal(features! & F_MRG, 0n);
  rx.post(2);
  assert.equal(net.deliver(frame(1514, 6)), true);
  const got = rx.frames();
  assert.equal(got[0].numBuffers, 1);
  assert.deepEqual(got[0].data, frame(1514, 6));
  assert.equal(net.deliver(frame(4000, 7)), false);
  assert.equal(dev.stats().rxDrops, 1);
  assert.equal(net.deliver(frame(100, 8)), true, "the remaining buffer still serves");
  assert.deepEqual(rx.frames()[0].data, frame(100, 8));
});

test("backlog: frames wait while the guest has no buffers, drain in order, overflow is refused", () => {
  const { net, rx, dev, g } = setupNet({ bufSize: 2048, wanted: ~F_EVENT_IDX });
  assert.equal(rx.q.usedFlags(), 1, "no backlog: the device does not need rx notifications");
  for (let i = 0; i < BACKLOG_FRAMES; i++) assert.equal(net.deliver(frame(100 + i, i)), true);
  assert.equal(rx.q.usedFlags(), 0, "backlog: the device wants rx notifications");
  assert.equal(net.deliver(frame(64, 999)), false, "backlog full");
  assert.equal(dev.backlog, BACKLOG_FRAMES);
  assert.equal(dev.stats().rxDrops, 1);
  assert.equal(g.irq.level, false);
  let next = 0;
  while (next < BACKLOG_FRAMES) {
    rx.post(48);
    const got = rx.frames();
    assert.ok(got.length > 0);
    for (const f of got) {
      assert.deepEqual(f.data, frame(100 + next, next), `frame ${next}`);
      next++;
    }
  }
  assert.equal(dev.backlog, 0);
  assert.equal(rx.q.usedFlags(), 1);
  assert.equal(g.irq.level, true);
  assert.equal(dev.stats().rxPackets, BACKLOG_FRAMES);
});

test("backlog of large frames wraps around its byte ring and keeps every byte", () => {
  const { net, rx, dev } = setupNet({ bufSize: 4096, slots: 128 });
  const big = (i: number) => frame(60000, 100 + i);
  let pushed = 0;
  while (net.deliver(big(pushed))) pushed++;
  assert.equal(pushed, 17, "1 MiB of backlog holds 17 frames of 60000 bytes");
  let got = 0;
  const check = () => {
    for (const f of rx.frames()) assert.deepEqual(f.data, big(got++), `frame ${got}`);
  };
  // 15 buffers of 4096 carry one frame; drain 5 frames, then the ring wraps.
  rx.post(75);
  check();
  assert.equal(got, 5);
  for (let i = 0; i < 5; i++) assert.equal(net.deliver(big(pushed++)), true, `wrapped frame ${i}`);
  assert.equal(net.deliver(big(pushed)), false, "full again");
  while (dev.backlog > 0) {
    rx.post(60);
    check();
  }
  assert.equal(got, pushed);
});

test("frames received before DRIVER_OK are delivered once the driver is ready", () => {
  const { net, rx, d } = setupNet({ driverOk: false });
  assert.equal(net.deliver(frame(70, 9)), true);
  rx.post(4);
  assert.equal(rx.frames().length, 0);
  d.driverOk();
  assert.deepEqual(rx.frames()[0].data, frame(70, 9));
});

test("EVENT_IDX on the receive queue: avail_event only moves while frames wait", () => {
  const { net, rx } = setupNet({ bufSize: 2048 });
  rx.post(2);
  const before = rx.q.availEvent();
  assert.equal(net.deliver(frame(64, 1)), true);
  assert.equal(rx.q.availEvent(), before, "buffers available: no notification wanted");
  assert.equal(net.deliver(frame(64, 2)), true);
  assert.equal(net.deliver(frame(64, 3)), true, "queued");
  assert.equal(rx.q.availEvent(), 2, "notify me when buffer index 2 is made available");
  rx.post(1);
  assert.equal(rx.frames().length, 3);
});

test("a loopback backend that answers during transmit delivers into the receive queue", () => {
  const { net, rx, tx, g } = setupNet({ bufSize: 2048 });
  net.echo = true;
  rx.post(4);
  const f = frame(98, 11);
  g.fill(TXBUF, 12, 0);
  g.put(TXBUF + 12, f);
  tx.submit(tx.addChain([{ pa: TXBUF, len: 12 + 98 }]));
  assert.deepEqual(net.sent[0], f);
  assert.deepEqual(rx.frames()[0].data, f);
  assert.equal(tx.takeUsed().length, 1);
});

test("unplugging the link raises a configuration interrupt and stops traffic", () => {
  const { net, rx, d, dev, g } = setupNet();
  rx.post(2);
  dev.setLink(false);
  assert.equal(d.config16(6), 0);
  assert.equal(d.reg(REG.CONFIG_GENERATION), 1);
  assert.equal(d.ackInterrupt(), 2);
  assert.equal(net.deliver(frame(64, 1)), false);
  dev.setLink(true);
  assert.equal(d.config16(6), 1);
  assert.equal(d.reg(REG.CONFIG_GENERATION), 2);
  assert.equal(net.deliver(frame(64, 1)), true);
  assert.equal(g.irq.level, true);
});

test("save/restore carries the backlog and queue indices; the new device continues", () => {
  const { net, rx, dev, g } = setupNet({ bufSize: 2048 });
  rx.post(1);
  assert.equal(net.deliver(frame(80, 1)), true);
  assert.equal(net.deliver(frame(81, 2)), true);
  assert.equal(net.deliver(frame(82, 3)), true);
  assert.equal(dev.backlog, 2);
  assert.deepEqual(rx.frames()[0].data, frame(80, 1));
  const state = JSON.parse(JSON.stringify(dev.save()));
  assert.equal(state.device.backlog.length, 2);
  assert.equal(state.queues[0].lastAvail, 1);
  assert.equal(state.queues[0].usedIdx, 1);

  const net2 = new FakeNet();
  const dev2 = new VirtioNet(g.bus, g.irqLine, net2, { mac: "52:54:00:ab:cd:ef", log: g.log });
  dev2.restore(state);
  assert.equal(dev2.backlog, 2);
  // The driver (same guest memory) posts more buffers and notifies the restored device.
  rx.post(4, false);
  dev2.write(REG.QUEUE_NOTIFY, 0, 4);
  const got = rx.frames();
  assert.equal(got.length, 2);
  assert.deepEqual(got[0].data, frame(81, 2));
  assert.deepEqual(got[1].data, frame(82, 3));
  assert.equal(rx.q.usedIdx(), 3, "the used ring continues after the entry from before the snapshot");
  assert.equal(net2.deliver(frame(90, 4)), true);
  assert.deepEqual(rx.frames()[0].data, frame(90, 4));
  assert.equal(g.logs.length, 0);
});

/**
 * The virtio surfaces a guest drives: split-virtqueue descriptors (the queue alone, fed raw ring
 * memory), and each device (blk, net, console, rng) through its virtio-mmio window, fed chains that
 * are mostly well formed and then corrupted field by field, with notifies, host input and resets in
 * between.
 *
 * Properties: nothing but the documented VirtqueueError leaves pop(), and nothing leaves an MMIO
 * access; every segment of a popped chain lies inside RAM; the interrupt line follows
 * InterruptStatus; the block backend is only asked for whole sectors inside the disk; after any of
 * it, a reset plus a well-formed request works; save() survives JSON and restore() unchanged.
 */
import fc from "fast-check";
import { Bus } from "../../src/cpu/bus.js";
import { DescriptorChain, Virtqueue, VirtqueueError } from "../../src/devices/virtio/queue.js";
import {
  REG,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  type VirtioMmioDevice,
} from "../../src/devices/virtio/mmio.js";
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VirtioBlk } from "../../src/devices/virtio/blk.js";
import { MAX_FRAME, VirtioNet } from "../../src/devices/virtio/net.js";
import { VirtioConsole } from "../../src/devices/virtio/console.js";
import { VirtioRng } from "../../src/devices/virtio/rng.js";
import { VirtioVsock, type VsockConnection } from "../../src/devices/virtio/vsock.js";
import { BlockIoError, type BlockBackend } from "../../src/devices/block.js";
import { Guest, RAM_BASE, RAM_SIZE } from "../../test/devices/virtio/driver.js";
import { fillRandom, leakGuard, must, timed, type Campaign, type Session } from "../campaign.js";

// ---------------------------------------------------------------------------------------------
// The queue alone: raw ring memory

const Q_RAM = 64 * 1024;
const Q_BASE = 0x8000_0000;

/** One case: queue geometry, ring memory contents and the pops and pushes to attempt. */
interface QueueCase {
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  /** Where the three rings start (offsets into RAM, deliberately unaligned or outside at times). */
  desc: number;
  avail: number;
  used: number;
  /** Seed of the bytes filling RAM before the structured writes. */
  noise: number;
  /** Structured writes over the noise: [offset, u16 value]. */
  pokes: [number, number][];
  pops: number;
}

const queueCase: fc.Arbitrary<QueueCase> = fc.record({
  size: fc.constantFrom(1, 2, 4, 8, 16, 64, 256),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  desc: fc.oneof(fc.constantFrom(0, 0x1000, Q_RAM - 16), fc.nat(Q_RAM + 64)),
  avail: fc.oneof(fc.constantFrom(0x5000, Q_RAM - 6), fc.nat(Q_RAM + 64)),
  used: fc.oneof(fc.constantFrom(0x6000, Q_RAM - 8), fc.nat(Q_RAM + 64)),
  noise: fc.integer(),
  pokes: fc.array(fc.tuple(fc.nat(Q_RAM - 2), fc.oneof(fc.nat(8), fc.nat(0xffff))), { maxLength: 24 }),
  pops: fc.nat(300),
});

export const virtqueueCampaign: Campaign = {
  name: "virtqueue",
  surface: "device",
  testRuns: 3000,
  batchRuns: 20000,
  weight: 3,
  open(): Session {
    const bus = new Bus(Q_BASE, Q_RAM);
    const q = new Virtqueue(bus, 0, 256);
    const chain = new DescriptorChain(bus, q.chainCapacity);
    const ram = bus.ram;
    // Noise comes from one random pool at a case-chosen offset: a copy, not a generator loop.
    const pool = new Uint8Array(4 * Q_RAM);
    fillRandom(pool, 0x5eed);
    const property = fc.property(
      queueCase,
      timed((c: QueueCase) => {
        const at = (c.noise >>> 0) % (3 * Q_RAM);
        ram.set(pool.subarray(at, at + Q_RAM));
        // Plausible indices: the avail idx a few ahead, heads in range, nexts in range.
        for (const [off, v] of c.pokes) {
          ram[off] = v & 0xff;
          ram[off + 1] = v >>> 8;
        }
        q.reset();
        q.size = c.size;
        q.descLo = Q_BASE + c.desc;
        q.driverLo = Q_BASE + c.avail;
        q.deviceLo = Q_BASE + c.used;
        const err = q.enable(c.eventIdx, c.indirect);
        if (err !== undefined) {
          must(!q.ready, "a queue that failed to enable is not ready");
          return;
        }
        let popped = 0;
        for (let k = 0; k < c.pops; k++) {
          let got: boolean;
          try {
            got = q.pop(chain);
          } catch (e) {
            if (e instanceof VirtqueueError) break;
            throw e;
          }
          if (!got) break;
          popped++;
          must(popped <= c.size, `pop() handed out ${popped} chains from a ring of ${c.size}`);
          must(chain.head < c.size, `head ${chain.head} beyond the queue size`);
          must(chain.count <= q.chainCapacity, "chain longer than its capacity");
          let r = 0;
          let w = 0;
          for (let i = 0; i < chain.count; i++) {
            must(
              chain.offsets[i] >= 0 && chain.offsets[i] + chain.lengths[i] <= Q_RAM,
              `segment ${i} at ${chain.offsets[i]}+${chain.lengths[i]} outside RAM`,
            );
            if (i < chain.readCount) r += chain.lengths[i];
            else w += chain.lengths[i];
          }
          must(r === chain.readBytes && w === chain.writeBytes, "byte counts disagree with the segments");
          q.push(chain.head, chain.writeBytes);
          q.setNotify(k % 2 === 0);
          q.takeInterrupt();
        }
        const saved = q.save();
        const copy = new Virtqueue(bus, 0, 256);
        must(copy.restore(JSON.parse(JSON.stringify(saved)), c.eventIdx, c.indirect) === undefined, "restore refused");
        must(JSON.stringify(copy.save()) === JSON.stringify(saved), "save/restore round trip differs");
      }),
    );
    return { property, check: leakGuard("virtqueue"), close: () => {} };
  },
};

// ---------------------------------------------------------------------------------------------
// Devices through their MMIO window

const QBASE = RAM_BASE + 0x1000;
const QSTRIDE = 0x4000;
const TABLE = RAM_BASE + 0x10000;
const DATA = RAM_BASE + 0x20000;
const DATA_SIZE = 0x40000;
const DISK_SIZE = 256 * 1024;

/** An in-memory disk that fails the case when the device asks for anything but whole sectors inside it. */
class CheckedDisk implements BlockBackend {
  readonly data = new Uint8Array(DISK_SIZE);
  readonly serial = "fuzz-disk";
  readOnly = false;
  bad: [number, number] = [0, 0];
  private check(offset: number, len: number): void {
    must(
      offset % 512 === 0 && len % 512 === 0 && offset >= 0 && offset + len <= DISK_SIZE,
      `the device asked the backend for ${offset}+${len}`,
    );
    if (offset < this.bad[1] && offset + len > this.bad[0]) throw new BlockIoError(`I/O error at ${offset}`);
  }
  get size(): number {
    return DISK_SIZE;
  }
  read(offset: number, buf: Uint8Array): void {
    this.check(offset, buf.length);
    buf.set(this.data.subarray(offset, offset + buf.length));
  }
  write(offset: number, data: Uint8Array): void {
    must(!this.readOnly, "a write reached a read-only backend");
    this.check(offset, data.length);
    this.data.set(data, offset);
  }
  flush(): void {}
  discard(offset: number, length: number): void {
    this.check(offset, length);
  }
  writeZeroes(offset: number, length: number): void {
    this.check(offset, length);
    this.data.fill(0, offset, offset + length);
  }
  close(): void {}
}

interface Seg {
  off: number;
  len: number;
  write: boolean;
}
/** A chain as the driver meant it, then corruptions of its descriptors. */
interface ChainSpec {
  segs: Seg[];
  indirect: boolean;
}
interface DeviceCase {
  /** Driver feature words (masked with what the device offers most of the time). */
  featuresLo: number;
  featuresHi: number;
  rawFeatures: boolean;
  sizes: number[];
  /** Ring placement: standard, or a random address. */
  rings: (number | null)[];
  chains: ChainSpec[];
  /** [descriptor index, field 0..3, value] */
  corrupt: [number, number, number][];
  availExtra: number;
  usedEvent: number;
  availFlags: number;
  /** Request headers: [type, sector lo, sector hi] per chain (blk); otherwise payload seed. */
  headers: [number, number, number][];
  seed: number;
  /** Notifies: queue index (may be out of range) and, at -1, host input. */
  kicks: number[];
  hostLens: number[];
  /** Random register writes thrown in: [offset, value]. */
  regs: [number, number][];
  readOnly: boolean;
}

const u32 = fc.nat(0xffff_ffff);
const segArb: fc.Arbitrary<Seg> = fc.record({
  off: fc.oneof(fc.nat(DATA_SIZE - 1), fc.constantFrom(-0x20000, -0x1000, DATA_SIZE - 8, RAM_SIZE, 0x7fff_ffff)),
  len: fc.oneof(fc.nat(0x2000), fc.constantFrom(0, 1, 12, 16, 512, 513, 4096, 0x10000, 0x8000_0000, 0xffff_ffff)),
  write: fc.boolean(),
});
const deviceCase = (queues: number): fc.Arbitrary<DeviceCase> =>
  fc.record({
    featuresLo: u32,
    featuresHi: fc.oneof(fc.constant(1), u32),
    rawFeatures: fc.boolean(),
    sizes: fc.array(fc.oneof(fc.constantFrom(1, 2, 8, 64, 256), fc.nat(600)), {
      minLength: queues,
      maxLength: queues,
    }),
    rings: fc.array(fc.oneof(fc.constant(null), fc.constant(null), fc.constant(null), u32), {
      minLength: queues,
      maxLength: queues,
    }),
    chains: fc.array(
      fc.record({
        segs: fc.array(segArb, { minLength: 0, maxLength: 6 }),
        indirect: fc.boolean(),
      }),
      { maxLength: 6 },
    ),
    corrupt: fc.array(fc.tuple(fc.nat(40), fc.nat(3), u32), { maxLength: 3 }),
    availExtra: fc.oneof(fc.constant(0), fc.constant(0), fc.nat(0xffff)),
    usedEvent: fc.nat(0xffff),
    availFlags: fc.nat(3),
    headers: fc.array(
      fc.tuple(
        fc.oneof(fc.constantFrom(0, 1, 4, 8, 11, 13), u32),
        fc.oneof(fc.nat(600), u32),
        fc.oneof(fc.constant(0), fc.constant(0), u32),
      ),
      { minLength: 6, maxLength: 6 },
    ),
    seed: fc.integer(),
    kicks: fc.array(fc.oneof(fc.nat(queues - 1), fc.constantFrom(-1, queues, 0xffff)), { minLength: 1, maxLength: 6 }),
    hostLens: fc.array(fc.oneof(fc.nat(1600), fc.constantFrom(0, 13, 14, 60, MAX_FRAME, MAX_FRAME + 1)), {
      maxLength: 3,
    }),
    regs: fc.array(fc.tuple(fc.nat(0x1ff), u32), { maxLength: 3 }),
    readOnly: fc.boolean(),
  });

/** A device, the guest around it, and how to check that it still works. */
interface Rig {
  g: Guest;
  dev: VirtioMmioDevice<unknown>;
  queues: number;
  /** Host-side input of `len` bytes (frames, console input), when the device has any. */
  host?: (len: number, seed: number) => void;
  /** Before a case: per-device knobs. */
  prepare?: (c: DeviceCase) => void;
  /** Writes request headers into the chains' first segments. */
  headers?: (c: DeviceCase) => void;
  /** After a reset: a well-formed request on a fresh setup must succeed. */
  works: (d: MiniDriver) => void;
}

/** A driver that talks registers directly, with none of the test driver's own checks in the way. */
class MiniDriver {
  constructor(
    readonly g: Guest,
    readonly dev: VirtioMmioDevice<unknown>,
  ) {}
  reg(off: number): number {
    return this.dev.read(off, 4) >>> 0;
  }
  set(off: number, v: number): void {
    this.dev.write(off, v, 4);
  }
  /** Standard placement of queue i: descriptors, then the available ring, then the used ring. */
  layout(i: number, size: number): { desc: number; avail: number; used: number } {
    const desc = QBASE + i * QSTRIDE;
    const avail = desc + 16 * size;
    const used = Math.ceil((avail + 6 + 2 * size) / 4) * 4;
    return { desc, avail, used };
  }
  setupQueue(i: number, size: number, at: number | null): void {
    this.set(REG.QUEUE_SEL, i);
    this.set(REG.QUEUE_NUM, size);
    const l = at === null ? this.layout(i, Math.min(size, 256)) : { desc: at, avail: at + 0x1000, used: at + 0x2000 };
    if (at === null) this.g.fill(l.desc, l.used + 6 + 8 * Math.min(size, 256) - l.desc, 0);
    this.set(REG.QUEUE_DESC_LOW, l.desc >>> 0);
    this.set(REG.QUEUE_DESC_HIGH, 0);
    this.set(REG.QUEUE_DRIVER_LOW, l.avail >>> 0);
    this.set(REG.QUEUE_DRIVER_HIGH, 0);
    this.set(REG.QUEUE_DEVICE_LOW, l.used >>> 0);
    this.set(REG.QUEUE_DEVICE_HIGH, 0);
    this.set(REG.QUEUE_READY, 1);
  }
  start(lo: number, hi: number): void {
    this.set(REG.STATUS, 0);
    this.set(REG.STATUS, STATUS_ACKNOWLEDGE);
    this.set(REG.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    this.set(REG.DRIVER_FEATURES_SEL, 1);
    this.set(REG.DRIVER_FEATURES, hi);
    this.set(REG.DRIVER_FEATURES_SEL, 0);
    this.set(REG.DRIVER_FEATURES, lo);
    this.set(REG.STATUS, this.reg(REG.STATUS) | STATUS_FEATURES_OK);
  }
  offered(): [number, number] {
    this.set(REG.DEVICE_FEATURES_SEL, 0);
    const lo = this.reg(REG.DEVICE_FEATURES);
    this.set(REG.DEVICE_FEATURES_SEL, 1);
    return [lo, this.reg(REG.DEVICE_FEATURES)];
  }
  /** A standard, fully negotiated setup of every queue at size 64. */
  standard(queues: number): void {
    const [lo, hi] = this.offered();
    this.start(lo, hi);
    must(this.reg(REG.STATUS) & STATUS_FEATURES_OK, "FEATURES_OK refused for the offered features");
    for (let i = 0; i < queues; i++) this.setupQueue(i, 64, null);
    this.set(REG.STATUS, this.reg(REG.STATUS) | STATUS_DRIVER_OK);
    must(this.reg(REG.STATUS) === 15, `status ${this.reg(REG.STATUS)} after a clean setup`);
  }
  /** Puts one chain (descriptors 0..) in queue i at size 64 and notifies; returns the used entries. */
  request(i: number, segs: { pa: number; len: number; write?: boolean }[]): { id: number; len: number }[] {
    const l = this.layout(i, 64);
    const g = this.g;
    const before = g.r16(l.used + 2);
    segs.forEach((s, k) => {
      const at = l.desc + 16 * k;
      const last = k === segs.length - 1;
      g.w64(at, s.pa);
      g.w32(at + 8, s.len);
      g.w16(at + 12, (s.write ? 2 : 0) | (last ? 0 : 1));
      g.w16(at + 14, last ? 0 : k + 1);
    });
    const idx = g.r16(l.avail + 2);
    g.w16(l.avail + 4 + 2 * (idx % 64), 0);
    g.w16(l.avail + 2, (idx + 1) & 0xffff);
    this.set(REG.QUEUE_NOTIFY, i);
    const out: { id: number; len: number }[] = [];
    for (let u = before; u !== g.r16(l.used + 2); u = (u + 1) & 0xffff) {
      const e = l.used + 4 + 8 * (u % 64);
      out.push({ id: g.r32(e), len: g.r32(e + 4) });
    }
    return out;
  }
}

function runDeviceCase(rig: Rig, d: MiniDriver, c: DeviceCase): void {
  const { g, dev } = rig;
  g.logs.length = 0;
  rig.prepare?.(c);
  fillRandom(g.bus.ram, c.seed, DATA - RAM_BASE, DATA - RAM_BASE + 2048);
  // Setup: offered features (or raw words), each queue placed and sized as the case says.
  const [offLo, offHi] = d.offered();
  // Mostly what the device offers, with INDIRECT_DESC and EVENT_IDX (bits 28, 29) on or off.
  const lo = c.rawFeatures ? c.featuresLo : (c.featuresLo | ~(3 << 28)) & offLo;
  const hi = c.rawFeatures ? c.featuresHi : offHi;
  d.start(lo >>> 0, hi >>> 0);
  const sizes = c.sizes;
  for (let i = 0; i < rig.queues; i++) d.setupQueue(i, sizes[i], c.rings[i]);
  d.set(REG.STATUS, d.reg(REG.STATUS) | STATUS_DRIVER_OK);

  // Chains in queue k % queues, descriptors allocated from 0 (each queue's table at its standard spot).
  rig.headers?.(c);
  const next = new Array<number>(rig.queues).fill(0);
  const heads: number[][] = Array.from({ length: rig.queues }, () => []);
  c.chains.forEach((ch, k) => {
    const qi = k % rig.queues;
    const size = Math.min(Math.max(sizes[qi], 1), 256);
    const l = d.layout(qi, size);
    const segs = ch.segs.length === 0 ? [{ off: 0, len: 0, write: false }] : ch.segs;
    const pa = (s: Seg) => DATA + s.off;
    if (ch.indirect) {
      const table = TABLE + 0x400 * k;
      segs.forEach((s, j) => {
        const at = table + 16 * j;
        g.w64(at, Math.max(0, pa(s)));
        g.w32(at + 8, s.len);
        g.w16(at + 12, (s.write ? 2 : 0) | (j < segs.length - 1 ? 1 : 0));
        g.w16(at + 14, j + 1);
      });
      const head = next[qi]++ % size;
      const at = l.desc + 16 * head;
      g.w64(at, table);
      g.w32(at + 8, 16 * segs.length);
      g.w16(at + 12, 4);
      g.w16(at + 14, 0);
      heads[qi].push(head);
    } else {
      const first = next[qi] % size;
      segs.forEach((s, j) => {
        const i = next[qi]++ % size;
        const at = l.desc + 16 * i;
        g.w64(at, Math.max(0, pa(s)));
        g.w32(at + 8, s.len);
        g.w16(at + 12, (s.write ? 2 : 0) | (j < segs.length - 1 ? 1 : 0));
        g.w16(at + 14, (i + 1) % size);
      });
      heads[qi].push(first);
    }
  });
  for (const [index, field, value] of c.corrupt) {
    const at = d.layout(0, 256).desc + 16 * index;
    if (field === 0) g.w32(at, value);
    else if (field === 1) g.w32(at + 4, value);
    else if (field === 2) g.w32(at + 8, value);
    else g.w32(at + 12, value);
  }
  for (let qi = 0; qi < rig.queues; qi++) {
    const size = Math.min(Math.max(sizes[qi], 1), 256);
    if (c.rings[qi] !== null) continue;
    const l = d.layout(qi, size);
    heads[qi].forEach((h, k) => g.w16(l.avail + 4 + 2 * (k % size), h));
    g.w16(l.avail, c.availFlags);
    g.w16(l.avail + 2, (heads[qi].length + (qi === 0 ? c.availExtra : 0)) & 0xffff);
    g.w16(l.avail + 4 + 2 * size, c.usedEvent);
  }
  for (const [off, v] of c.regs) d.set(off & ~3, v);
  let h = 0;
  for (const k of c.kicks) {
    if (k === -1 && rig.host && h < c.hostLens.length) rig.host(c.hostLens[h++], c.seed + h);
    else d.set(REG.QUEUE_NOTIFY, k >>> 0);
  }
  while (rig.host && h < c.hostLens.length) rig.host(c.hostLens[h++], c.seed + h);

  // The line follows InterruptStatus; a device that stopped said why once.
  const isr = d.reg(REG.INTERRUPT_STATUS);
  must(g.irq.level === (isr !== 0), `interrupt line ${g.irq.level} with InterruptStatus ${isr}`);
  const status = d.reg(REG.STATUS);
  if (status & STATUS_NEEDS_RESET) {
    must(
      g.logs.some((l) => l.endsWith("the device stops until the driver resets it")),
      "NEEDS_RESET without its log line",
    );
  }
  // One line per refused FEATURES_OK and one per stop: a case makes at most a few.
  must(g.logs.length <= 3 + c.regs.length, `${g.logs.length} log lines for one case`);

  // Snapshots: the state survives JSON and a restore unchanged.
  const saved = JSON.stringify(dev.save());
  dev.restore(JSON.parse(saved));
  must(JSON.stringify(dev.save()) === saved, "save/restore round trip differs");

  // Recovery: a reset and a clean setup, then a well-formed request works.
  d.set(REG.STATUS, 0);
  must(d.reg(REG.STATUS) === 0 && d.reg(REG.INTERRUPT_STATUS) === 0 && !g.irq.level, "reset left state behind");
  d.standard(rig.queues);
  rig.works(d);
}

function deviceCampaign(name: string, build: () => Rig): Campaign {
  return {
    name,
    surface: "device",
    testRuns: 600,
    batchRuns: 5000,
    open(): Session {
      const rig = build();
      const d = new MiniDriver(rig.g, rig.dev);
      const property = fc.property(
        deviceCase(rig.queues),
        timed((c: DeviceCase) => runDeviceCase(rig, d, c)),
      );
      return { property, check: leakGuard(name), close: () => {} };
    },
  };
}

export const virtioBlkCampaign = deviceCampaign("virtio-blk", () => {
  const g = new Guest();
  const disk = new CheckedDisk();
  const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log }) as unknown as VirtioMmioDevice<unknown>;
  const HDR = RAM_BASE + 0x18000;
  return {
    g,
    dev,
    queues: 1,
    prepare: (c) => {
      disk.bad = c.seed % 7 === 0 ? [4096, 8192] : [0, 0];
    },
    headers: (c) => {
      // Chains whose first segment is in the data area get a request header there.
      c.chains.forEach((ch, k) => {
        const s = ch.segs[0];
        if (!s || s.off < 0 || s.off + 16 > DATA_SIZE) return;
        const [type, lo, hi] = c.headers[k % c.headers.length];
        g.w32(DATA + s.off, type);
        g.w32(DATA + s.off + 4, 0);
        g.w32(DATA + s.off + 8, lo);
        g.w32(DATA + s.off + 12, hi);
      });
    },
    works: (d) => {
      disk.bad = [0, 0];
      g.w32(HDR, VIRTIO_BLK_T_IN);
      g.w32(HDR + 4, 0);
      g.w64(HDR + 8, 3);
      g.w8(HDR + 0x100, 0xee);
      const used = d.request(0, [
        { pa: HDR, len: 16 },
        { pa: DATA, len: 512, write: true },
        { pa: HDR + 0x100, len: 1, write: true },
      ]);
      must(used.length === 1 && used[0].len === 513, `read after reset: used ${JSON.stringify(used)}`);
      must(g.r8(HDR + 0x100) === VIRTIO_BLK_S_OK, "read after reset: status not OK");
      const got = g.get(DATA, 512);
      for (let i = 0; i < 512; i++) must(got[i] === disk.data[3 * 512 + i], "read after reset: wrong data");
    },
  };
});

export const virtioNetCampaign = deviceCampaign("virtio-net", () => {
  const g = new Guest();
  const sent: number[] = [];
  let deliver: (f: Uint8Array) => boolean = () => false;
  const frame = new Uint8Array(MAX_FRAME + 1);
  const dev = new VirtioNet(
    g.bus,
    g.irqLine,
    {
      send: (f) => {
        must(f.length >= 14 && f.length <= MAX_FRAME, `a ${f.length}-byte frame reached the backend`);
        sent.push(f.length);
      },
      attach: (fn) => (deliver = fn),
      close: () => {},
    },
    { mac: "52:54:00:12:34:56", log: g.log },
  ) as unknown as VirtioMmioDevice<unknown>;
  return {
    g,
    dev,
    queues: 2,
    host: (len, seed) => {
      fillRandom(frame, seed, 0, Math.min(len, 64));
      deliver(frame.subarray(0, len));
    },
    prepare: (c) => {
      sent.length = 0;
      // Frames the guest never takes stay queued across resets (up to 1 MiB); start each case
      // with a short backlog so save() stays cheap.
      const net = dev as unknown as VirtioNet;
      if (net.backlog > 4) net.restore({ ...net.save(), device: { linkUp: true, backlog: [] } });
      (dev as unknown as VirtioNet).setLink(c.seed % 5 !== 0);
    },
    works: (d) => {
      (dev as unknown as VirtioNet).setLink(true);
      sent.length = 0;
      g.fill(DATA, 12, 0);
      const used = d.request(1, [{ pa: DATA, len: 12 + 60 }]);
      must(used.length === 1 && sent.length === 1 && sent[0] === 60, "transmit after reset failed");
    },
  };
});

export const virtioConsoleCampaign = deviceCampaign("virtio-console", () => {
  const g = new Guest();
  let out = 0;
  const input = new Uint8Array(2048);
  const dev = new VirtioConsole(g.bus, g.irqLine, (b) => (out += b.length), {
    log: g.log,
    size: { cols: 80, rows: 24 },
  });
  const rig: Rig = {
    g,
    dev: dev as unknown as VirtioMmioDevice<unknown>,
    queues: 2,
    host: (len, seed) => {
      fillRandom(input, seed, 0, Math.min(len, input.length));
      dev.input(input.subarray(0, Math.min(len, input.length)));
    },
    prepare: () => {
      // Host input the guest never takes would pile up across cases: drop it (restore does).
      if (dev.pendingInput > 4096) dev.restore({ ...dev.save(), device: { cols: 80, rows: 24, pending: "" } });
      out = 0;
    },
    works: (d) => {
      out = 0;
      const used = d.request(1, [{ pa: DATA, len: 5 }]);
      must(used.length === 1 && out === 5, "console output after reset failed");
    },
  };
  return rig;
});

export const virtioRngCampaign = deviceCampaign("virtio-rng", () => {
  const g = new Guest();
  const dev = new VirtioRng(g.bus, g.irqLine, { log: g.log }) as unknown as VirtioMmioDevice<unknown>;
  return {
    g,
    dev,
    queues: 1,
    works: (d) => {
      const used = d.request(0, [{ pa: DATA, len: 32, write: true }]);
      must(used.length === 1 && used[0].len === 32, "entropy after reset failed");
    },
  };
});

export const virtioVsockCampaign = deviceCampaign("virtio-vsock", () => {
  const g = new Guest();
  const dev = new VirtioVsock(g.bus, g.irqLine, { log: g.log });
  const bytes = new Uint8Array(2048);
  const open: VsockConnection[] = [];
  const ignore = { data: () => {}, end: () => {}, close: () => {} };
  // The guest's requests are accepted: random packets then reach live connections too.
  dev.listen((conn) => conn.accept(ignore));
  const rig: Rig = {
    g,
    dev: dev as unknown as VirtioMmioDevice<unknown>,
    queues: 3,
    host: (len, seed) => {
      // Host traffic: a connection to a guest port, then bytes on the connections open so far.
      if (seed % 3 === 0 && dev.connectionsOpen < 64) open.push(dev.connect(Math.abs(seed) % 4096, ignore));
      fillRandom(bytes, seed, 0, Math.min(len, bytes.length));
      for (const c of open) c.write(bytes.slice(0, Math.min(len, bytes.length)));
    },
    prepare: () => {
      // Connections from earlier cases would pile up: start each case without any.
      open.length = 0;
      dev.closeAll("next case");
    },
    works: (d) => {
      // A reset for a packet of no connection: the transmit chain comes back used.
      g.fill(DATA, 44, 0);
      g.w32(DATA, 3);
      g.w32(DATA + 8, 2);
      g.w16(DATA + 28, 1);
      g.w16(DATA + 30, 5);
      const used = d.request(1, [{ pa: DATA, len: 44 }]);
      must(used.length === 1, "transmit after reset failed");
    },
  };
  return rig;
});

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  VirtioBlk,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../../../src/devices/virtio/blk.js";
import { REG, VIRTIO_ID_BLOCK } from "../../../src/devices/virtio/mmio.js";
import { Driver, F_EVENT_IDX, Guest, type Seg, type TestQueue } from "./driver.js";
import { DATA, DISK_SIZE, MemDisk, QBASE, request, setupBlk, statusOf } from "./blkhelp.js";

function submit(q: TestQueue, segs: Seg[]): number {
  const head = q.addChain(segs);
  q.submit(head);
  return head;
}

test("identifies as a modern block device with the advertised features and config", () => {
  const g = new Guest();
  const dev = new VirtioBlk(g.bus, g.irqLine, new MemDisk(DISK_SIZE), { log: g.log });
  const d = new Driver(dev, g);
  assert.equal(d.reg(REG.MAGIC), 0x74726976);
  assert.equal(d.reg(REG.VERSION), 2);
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_BLOCK);
  const f = d.deviceFeatures();
  for (const bit of [2, 6, 9, 13, 14, 28, 29, 32]) assert.ok(f & (1n << BigInt(bit)), `feature bit ${bit}`);
  assert.equal(f & (1n << BigInt(VIRTIO_BLK_F_RO)), 0n);
  assert.equal(d.config64(0), DISK_SIZE / 512, "capacity in sectors");
  assert.equal(d.config32(12), 254, "seg_max");
  assert.equal(d.config32(20), 512, "blk_size");
  assert.equal(d.config32(36), 0x3fffff, "max_discard_sectors");
  assert.equal(d.config32(40), 1, "max_discard_seg");
  assert.equal(d.config32(44), 8, "discard_sector_alignment");
  assert.equal(d.config32(48), 0x3fffff, "max_write_zeroes_sectors");
  assert.equal(d.config32(52), 1, "max_write_zeroes_seg");
  assert.equal(d.config8(56), 1, "write_zeroes_may_unmap");
  // Byte and halfword access to the same field, as readb/readw would.
  assert.equal(d.config8(1), (DISK_SIZE / 512) >> 8);
  assert.equal(d.config16(0), (DISK_SIZE / 512) & 0xffff);
  assert.equal(d.config32(200), 0, "beyond the config space reads 0");
});

test("read request across two data segments fills guest memory and interrupts", () => {
  const { g, disk, q, d } = setupBlk();
  const head = submit(
    q,
    request(g, VIRTIO_BLK_T_IN, 3, [
      { pa: DATA, len: 512, write: true },
      { pa: DATA + 0x1000, len: 1024, write: true },
    ]),
  );
  assert.deepEqual(q.takeUsed(), [{ id: head, len: 1537 }]);
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(g.get(DATA, 512), disk.data.subarray(3 * 512, 4 * 512));
  assert.deepEqual(g.get(DATA + 0x1000, 1024), disk.data.subarray(4 * 512, 6 * 512));
  assert.equal(g.irq.level, true);
  assert.equal(d.ackInterrupt(), 1);
  assert.equal(g.irq.level, false);
});

test("write, flush (before completion), and read back; stats count them", () => {
  const { g, disk, q, dev } = setupBlk();
  const payload = Uint8Array.from({ length: 2048 }, (_, i) => (i * 13) & 0xff);
  g.put(DATA, payload);
  submit(q, request(g, VIRTIO_BLK_T_OUT, 100, [{ pa: DATA, len: 2048 }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(disk.data.subarray(100 * 512, 100 * 512 + 2048), payload);

  let usedAtFlush = -1;
  disk.onFlush = () => (usedAtFlush = q.usedIdx());
  submit(q, request(g, VIRTIO_BLK_T_FLUSH, 0, []));
  assert.equal(usedAtFlush, 1, "flush ran before the request entered the used ring");
  assert.equal(q.usedIdx(), 2);
  assert.equal(disk.flushes, 1);
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);

  g.fill(DATA + 0x4000, 2048, 0);
  submit(q, request(g, VIRTIO_BLK_T_IN, 100, [{ pa: DATA + 0x4000, len: 2048, write: true }]));
  assert.deepEqual(g.get(DATA + 0x4000, 2048), payload);
  assert.deepEqual(dev.stats(), {
    readRequests: 1,
    readBytes: 2048,
    writeRequests: 1,
    writeBytes: 2048,
    flushes: 1,
    discards: 0,
    writeZeroes: 0,
    errors: 0,
  });
});

test("requests larger than the transfer chunk move intact", () => {
  const { g, disk, q } = setupBlk();
  const len = 600 * 1024;
  submit(q, request(g, VIRTIO_BLK_T_IN, 8, [{ pa: DATA, len, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(g.get(DATA, len), disk.data.subarray(8 * 512, 8 * 512 + len));
  g.fill(DATA, len, 0x5a);
  submit(q, request(g, VIRTIO_BLK_T_OUT, 2048, [{ pa: DATA, len }]));
  assert.ok(disk.data.subarray(2048 * 512, 2048 * 512 + len).every((b) => b === 0x5a));
});

test("GET_ID returns the backend serial, NUL-padded to 20 bytes", () => {
  const { g, q } = setupBlk();
  g.fill(DATA, 20, 0xff);
  const head = submit(q, request(g, VIRTIO_BLK_T_GET_ID, 0, [{ pa: DATA, len: 20, write: true }]));
  assert.deepEqual(q.takeUsed(), [{ id: head, len: 21 }]);
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  const id = g.get(DATA, 20);
  assert.equal(Buffer.from(id.subarray(0, 13)).toString(), "yun-disk-0001");
  assert.ok(id.subarray(13).every((b) => b === 0));
});

/** One discard / write-zeroes segment at DATA+0x8000. */
function dwz(g: Guest, sector: number, count: number, flags: number): Seg[] {
  const seg = DATA + 0x8000;
  g.w64(seg, sector);
  g.w32(seg + 8, count);
  g.w32(seg + 12, flags);
  return [{ pa: seg, len: 16 }];
}

test("discard and write-zeroes reach the backend with the unmap flag; bad flags are UNSUPP", () => {
  const { g, disk, q, dev } = setupBlk();
  submit(q, request(g, VIRTIO_BLK_T_DISCARD, 0, dwz(g, 64, 16, 0)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(disk.discards, [[64 * 512, 16 * 512]]);

  submit(q, request(g, VIRTIO_BLK_T_WRITE_ZEROES, 0, dwz(g, 10, 4, 1)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(disk.zeroes, [[10 * 512, 4 * 512, true]]);
  assert.ok(disk.data.subarray(10 * 512, 14 * 512).every((b) => b === 0));
  submit(q, request(g, VIRTIO_BLK_T_WRITE_ZEROES, 0, dwz(g, 20, 1, 0)));
  assert.deepEqual(disk.zeroes[1], [20 * 512, 512, false]);

  submit(q, request(g, VIRTIO_BLK_T_DISCARD, 0, dwz(g, 0, 1, 1)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_UNSUPP, "discard with the unmap flag");
  submit(q, request(g, VIRTIO_BLK_T_WRITE_ZEROES, 0, dwz(g, 0, 1, 4)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_UNSUPP, "unknown write-zeroes flag");
  submit(q, request(g, VIRTIO_BLK_T_DISCARD, 0, [...dwz(g, 0, 1, 0), { pa: DATA + 0x9000, len: 16 }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_UNSUPP, "two segments, max_discard_seg is 1");
  submit(q, request(g, VIRTIO_BLK_T_DISCARD, 0, dwz(g, DISK_SIZE / 512 - 1, 2, 0)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR, "range past the end");
  submit(q, request(g, 10 /* GET_LIFETIME */, 0, [{ pa: DATA, len: 16, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_UNSUPP, "unknown request type");
  assert.equal(disk.discards.length, 1);
  assert.equal(dev.stats().discards, 1);
  assert.equal(dev.stats().writeZeroes, 2);
});

test("out-of-range, partial-sector and backend failures answer IOERR and the device keeps working", () => {
  const { g, disk, q, dev } = setupBlk();
  const last = DISK_SIZE / 512;
  submit(q, request(g, VIRTIO_BLK_T_IN, last - 1, [{ pa: DATA, len: 1024, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  submit(q, request(g, VIRTIO_BLK_T_OUT, 2 ** 60, [{ pa: DATA, len: 512 }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  submit(q, request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 100, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  disk.bad = [4096, 8192];
  submit(q, request(g, VIRTIO_BLK_T_IN, 8, [{ pa: DATA, len: 512, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  assert.equal(dev.stats().errors, 4);
  assert.equal(q.takeUsed().length, 4);
  submit(q, request(g, VIRTIO_BLK_T_IN, last - 1, [{ pa: DATA, len: 512, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.equal(g.logs.length, 0, "status errors are not driver errors");
});

test("a read-only backend advertises RO, refuses writes and still reads", () => {
  const { g, disk, q, features } = setupBlk({ readOnly: true });
  assert.ok(features! & (1n << BigInt(VIRTIO_BLK_F_RO)));
  const before = disk.data.slice(0, 1024);
  g.fill(DATA, 1024, 1);
  submit(q, request(g, VIRTIO_BLK_T_OUT, 0, [{ pa: DATA, len: 1024 }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  submit(q, request(g, VIRTIO_BLK_T_WRITE_ZEROES, 0, dwz(g, 0, 1, 0)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  submit(q, request(g, VIRTIO_BLK_T_DISCARD, 0, dwz(g, 0, 1, 0)));
  assert.equal(statusOf(g), VIRTIO_BLK_S_IOERR);
  assert.deepEqual(disk.data.slice(0, 1024), before);
  submit(q, request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 1024, write: true }]));
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(g.get(DATA, 1024), before);
});

test("indirect descriptors carry a whole request", () => {
  const { g, disk, q } = setupBlk();
  const segs = request(g, VIRTIO_BLK_T_IN, 40, [
    { pa: DATA, len: 512, write: true },
    { pa: DATA + 0x2000, len: 512, write: true },
    { pa: DATA + 0x3000, len: 1024, write: true },
  ]);
  const head = q.addIndirect(DATA + 0x10000, segs);
  q.submit(head);
  assert.deepEqual(q.takeUsed(), [{ id: head, len: 2049 }]);
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
  assert.deepEqual(g.get(DATA + 0x2000, 512), disk.data.subarray(41 * 512, 42 * 512));
  assert.deepEqual(g.get(DATA + 0x3000, 1024), disk.data.subarray(42 * 512, 44 * 512));
});

test("several requests in one notify complete in order with one interrupt", () => {
  const { g, q } = setupBlk();
  const heads = [0, 1, 2, 3].map((i) =>
    q.addChain(request(g, VIRTIO_BLK_T_IN, i, [{ pa: DATA + i * 512, len: 512, write: true }], i)),
  );
  q.submit(...heads);
  assert.deepEqual(
    q.takeUsed().map((e) => e.id),
    heads,
  );
  assert.equal(g.irq.changes, 1);
  for (let i = 0; i < 4; i++) assert.equal(statusOf(g, i), VIRTIO_BLK_S_OK);
});

test("EVENT_IDX: used_event suppresses interrupts until passed; avail_event tracks consumption", () => {
  const { g, q, d, features } = setupBlk();
  assert.ok(features! & F_EVENT_IDX);
  const read = (slot: number) =>
    q.addChain(request(g, VIRTIO_BLK_T_IN, slot, [{ pa: DATA + slot * 512, len: 512, write: true }], slot));
  // First completion always interrupts (nothing signalled yet).
  q.submit(read(0));
  assert.equal(g.irq.level, true);
  d.ackInterrupt();
  assert.equal(q.availEvent(), 1, "device asks to be notified when avail passes index 1");
  // Driver asks for an interrupt only once used index passes 3 (used_event = 3).
  q.setUsedEvent(3);
  q.submit(read(1));
  q.submit(read(2));
  assert.equal(g.irq.level, false, "used idx 2 and 3 do not pass used_event 3 yet");
  assert.equal(q.usedIdx(), 3);
  q.submit(read(3));
  assert.equal(g.irq.level, true, "used idx 4 passes used_event 3");
  assert.equal(q.availEvent(), 4);
  d.ackInterrupt();
  // The driver disables callbacks the Linux way: used_event far behind.
  q.setUsedEvent(0);
  q.submit(read(4));
  assert.equal(g.irq.level, false);
  // The avail flags NO_INTERRUPT is ignored under EVENT_IDX.
  q.setAvailFlags(1);
  q.setUsedEvent(5);
  q.submit(read(5));
  assert.equal(g.irq.level, true);
});

test("without EVENT_IDX the NO_INTERRUPT flag suppresses interrupts and NO_NOTIFY stays clear", () => {
  const { g, q, features } = setupBlk({ wanted: ~F_EVENT_IDX });
  assert.equal(features! & F_EVENT_IDX, 0n);
  q.setAvailFlags(1);
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 512, write: true }])));
  assert.equal(q.usedIdx(), 1);
  assert.equal(g.irq.level, false);
  assert.equal(q.usedFlags(), 0, "the block queue always wants notifications");
  q.setAvailFlags(0);
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 512, write: true }])));
  assert.equal(g.irq.level, true);
});

test("requests made available before DRIVER_OK are served when it is set", () => {
  const g = new Guest();
  const disk = new MemDisk(DISK_SIZE);
  const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const q = d.setupQueue(0, 64, QBASE);
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 512, write: true }])));
  assert.equal(q.usedIdx(), 0, "nothing before DRIVER_OK");
  d.driverOk();
  assert.equal(q.usedIdx(), 1);
  assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
});

test("save/restore mid-operation keeps queue indices and the device continues", () => {
  const { g, disk, dev, q, d } = setupBlk();
  const rd = (slot: number, sector: number) =>
    q.addChain(request(g, VIRTIO_BLK_T_IN, sector, [{ pa: DATA + slot * 512, len: 512, write: true }], slot));
  q.submit(rd(0, 1), rd(1, 2));
  // A third request is made available but not yet notified; the interrupt is still pending.
  q.publish(rd(2, 3));
  const state = JSON.parse(JSON.stringify(dev.save()));
  assert.equal(state.queues[0].lastAvail, 2);
  assert.equal(state.queues[0].usedIdx, 2);

  const irq2 = { level: false };
  const dev2 = new VirtioBlk(g.bus, (l) => (irq2.level = l), disk, { log: g.log });
  dev2.restore(state);
  assert.equal(irq2.level, true, "pending interrupt restored");
  const d2 = new Driver(dev2, g);
  assert.equal(d2.status(), d.status());
  d2.ackInterrupt();
  assert.equal(irq2.level, false);
  // As Linux's virtqueue_enable_cb would after consuming the first two entries.
  q.setUsedEvent(2);
  d2.set(REG.QUEUE_NOTIFY, 0);
  assert.equal(q.usedIdx(), 3);
  assert.equal(statusOf(g, 2), VIRTIO_BLK_S_OK);
  assert.deepEqual(g.get(DATA + 1024, 512), disk.data.subarray(3 * 512, 4 * 512));
  assert.equal(irq2.level, true);
});

test("restore into a machine whose RAM cannot hold the rings fails with a clear error", () => {
  const { dev } = setupBlk();
  const state = dev.save();
  state.queues[0].descLo = 0x1000; // below RAM
  const g = new Guest();
  const other = new VirtioBlk(g.bus, g.irqLine, new MemDisk(DISK_SIZE), { log: g.log });
  assert.throws(
    () => other.restore(state),
    /cannot restore virtio-blk: queue 0: the descriptor table lies outside guest RAM/,
  );
});

test("a disk whose size is not a whole number of sectors is refused", () => {
  const g = new Guest();
  const disk = new MemDisk(1024);
  Object.defineProperty(disk, "size", { value: 1000 });
  assert.throws(
    () => new VirtioBlk(g.bus, g.irqLine, disk),
    /virtio-blk: disk size 1000 is not a multiple of 512 bytes/,
  );
});

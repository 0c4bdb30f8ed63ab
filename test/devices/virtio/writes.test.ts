/**
 * Every guest-RAM range a virtio device writes is announced through Bus.externalWrite, so the
 * translator never runs stale code from a page a disk read or a received frame refilled, and the
 * dirty-page log of snapshots and migration sees device writes. The devices are driven as Linux
 * drives them (test/devices/virtio/driver.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Hart } from "../../../src/cpu/hart.js";
import { Jit } from "../../../src/cpu/jit.js";
import { VirtioBlk, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from "../../../src/devices/virtio/blk.js";
import { VirtioNet } from "../../../src/devices/virtio/net.js";
import type { NetBackend } from "../../../src/devices/netdev.js";
import { Driver, Guest, RAM_BASE, F_INDIRECT, type Seg } from "./driver.js";
import { MemDisk, QBASE, DATA, request, statusOf, STATUS } from "./blkhelp.js";
import * as A from "../../support/rv-asm.js";

/** The queues' rings live in [QBASE, QBASE + 0x2000) and [RAM_BASE + 0x60000, + 0x2000). */
const inRings = (pa: number) =>
  (pa >= QBASE && pa < QBASE + 0x2000) || (pa >= RAM_BASE + 0x60000 && pa < RAM_BASE + 0x62000);

/** A virtio-blk and the RAM ranges (physical) announced as written, split into rings and buffers. */
function watchedBlk(wanted: bigint = ~0n) {
  const g = new Guest();
  const disk = new MemDisk(1024 * 1024);
  const written: [number, number][] = [];
  const rings: [number, number][] = [];
  g.bus.onExternalWrite((off, len) => (inRings(RAM_BASE + off) ? rings : written).push([RAM_BASE + off, len]));
  const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log });
  const d = new Driver(dev, g);
  assert.ok(d.negotiate(wanted) !== undefined);
  const q = d.setupQueue(0, 64, QBASE);
  d.driverOk();
  return { g, disk, d, q, written, rings };
}

const sorted = (r: [number, number][]) => [...r].sort((a, b) => a[0] - b[0]);

test("a disk read announces the buffers it filled, and only those", () => {
  const { g, disk, q, written } = watchedBlk(~F_INDIRECT);
  const data: Seg[] = [
    { pa: DATA, len: 4096, write: true },
    { pa: DATA + 0x3000, len: 512, write: true },
  ];
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_IN, 8, data)));
  assert.equal(statusOf(g), 0);
  assert.deepEqual(g.get(DATA, 16), disk.data.slice(8 * 512, 8 * 512 + 16), "the read happened");
  assert.deepEqual(sorted(written), [
    [STATUS, 1],
    [DATA, 4096],
    [DATA + 0x3000, 512],
  ]);

  // A write request: the device only writes the status byte.
  written.length = 0;
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_OUT, 0, [{ pa: DATA, len: 1024 }], 1)));
  assert.deepEqual(written, [[STATUS + 1, 1]]);
});

test("chains in indirect tables are followed", () => {
  const { g, q, written } = watchedBlk();
  const table = RAM_BASE + 0x40000;
  const segs = request(g, VIRTIO_BLK_T_IN, 0, [
    { pa: DATA + 0x1000, len: 2048, write: true },
    { pa: DATA + 0x8000, len: 1024, write: true },
  ]);
  q.submit(q.addIndirect(table, segs));
  assert.equal(statusOf(g), 0);
  assert.deepEqual(sorted(written), [
    [STATUS, 1],
    [DATA + 0x1000, 2048],
    [DATA + 0x8000, 1024],
  ]);
});

test("queues set up again after a reset, at other addresses, still announce their writes", () => {
  const { g, d, written } = watchedBlk();
  const q2 = (d.negotiate(), d.setupQueue(0, 16, RAM_BASE + 0x60000));
  d.driverOk();
  q2.submit(q2.addChain(request(g, VIRTIO_BLK_T_IN, 1, [{ pa: DATA + 0x5000, len: 512, write: true }])));
  assert.deepEqual(sorted(written), [
    [STATUS, 1],
    [DATA + 0x5000, 512],
  ]);
});

test("a received frame is announced where it landed", () => {
  const g = new Guest();
  let deliver: ((f: Uint8Array) => boolean) | null = null;
  const backend: NetBackend = {
    send: () => {},
    attach: (fn) => (deliver = fn),
    close: () => {},
  };
  const written: [number, number][] = [];
  g.bus.onExternalWrite((off, len) => {
    if (!inRings(RAM_BASE + off)) written.push([RAM_BASE + off, len]);
  });
  const dev = new VirtioNet(g.bus, g.irqLine, backend, { mac: "52:54:00:12:34:56", log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const rx = d.setupQueue(0, 16, QBASE);
  d.setupQueue(1, 16, QBASE + 0x1000);
  d.driverOk();
  rx.submit(rx.addChain([{ pa: DATA, len: 2048, write: true }]));
  written.length = 0;
  assert.equal(deliver!(new Uint8Array(60).fill(0xab)), true);
  // The 12-byte header and the 60-byte frame, each announced as it is written, inside the buffer.
  const bytes = new Set<number>();
  for (const [pa, len] of written) {
    assert.ok(pa >= DATA && pa + len <= DATA + 2048, `write [${pa.toString(16)}, +${len}) outside the buffer`);
    for (let i = 0; i < len; i++) bytes.add(pa + i);
  }
  assert.equal(bytes.size, 72);
  assert.ok(bytes.has(DATA) && bytes.has(DATA + 71));
});

test("translated code overwritten by a disk read runs as the new code", () => {
  const g = new Guest();
  const hart = new Hart(g.bus, 0, { now: () => 0 });
  const jit = new Jit(hart, { threshold: 0 });
  const code = RAM_BASE + 0x80000;
  const WFI = 0x10500073;
  const put = (pa: number, words: number[]) => words.forEach((w, i) => g.w32(pa + 4 * i, w));
  put(code, [A.addi(10, 10, 1), WFI]);
  const runOnce = () => {
    hart.waiting = false;
    hart.pc = code;
    while (!hart.waiting && hart.run(1000) > 0);
  };
  runOnce();
  runOnce();
  assert.equal(hart.getX(10), 2n);
  assert.ok(jit.stats().translated >= 1, "the block was translated");

  // The disk's sector 3 holds "addi a0, a0, 7; wfi"; the guest reads it over the code page.
  const disk = new MemDisk(64 * 1024);
  const sector = new DataView(disk.data.buffer, 3 * 512, 512);
  sector.setUint32(0, A.addi(10, 10, 7), true);
  sector.setUint32(4, WFI, true);
  const d = new Driver(new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log }), g);
  d.negotiate();
  const q = d.setupQueue(0, 16, QBASE);
  d.driverOk();
  q.submit(q.addChain(request(g, VIRTIO_BLK_T_IN, 3, [{ pa: code, len: 512, write: true }])));
  assert.equal(g.r32(code), A.addi(10, 10, 7), "the read landed");
  runOnce();
  assert.equal(hart.getX(10), 9n, "the hart ran the stale translation");
});

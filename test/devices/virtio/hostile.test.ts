/**
 * Descriptor chains that break the virtqueue rules. Each must put the device into
 * DEVICE_NEEDS_RESET with a configuration-change interrupt and exactly one log line, without
 * throwing out of the MMIO write, in bounded time, without touching guest memory; and the device
 * must work again once the driver resets it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from "../../../src/devices/virtio/blk.js";
import { REG, STATUS_DRIVER_OK, STATUS_NEEDS_RESET } from "../../../src/devices/virtio/mmio.js";
import { VirtioNet } from "../../../src/devices/virtio/net.js";
import { DATA, QBASE, request, setupBlk, statusOf } from "./blkhelp.js";
import {
  DESC_INDIRECT,
  DESC_NEXT,
  DESC_WRITE,
  Driver,
  F_INDIRECT,
  Guest,
  RAM_BASE,
  RAM_SIZE,
  type TestQueue,
} from "./driver.js";

const QSIZE = 128;
const TABLE = DATA + 0x10000;

interface Case {
  name: string;
  expect: RegExp;
  /** Features to leave out of negotiation. */
  without?: bigint;
  /** Builds the bad chain and makes it available (the harness notifies). */
  build: (q: TestQueue, g: Guest) => void;
}

function hdr(g: Guest): number {
  request(g, VIRTIO_BLK_T_IN, 0, []);
  return RAM_BASE + 0x10000;
}

function writeTable(g: Guest, at: number, entries: [number, number, number, number][]): void {
  entries.forEach(([pa, len, flags, next], k) => {
    g.w64(at + 16 * k, pa);
    g.w32(at + 16 * k + 8, len);
    g.w16(at + 16 * k + 12, flags);
    g.w16(at + 16 * k + 14, next);
  });
}

const cases: Case[] = [
  {
    name: "next index out of range",
    expect: /links to descriptor 200 beyond its table of 128/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, DESC_NEXT, 200);
      q.publish(0);
    },
  },
  {
    name: "a loop (chain longer than the queue size)",
    expect: /longer than the queue size 128/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, DESC_NEXT, 1);
      q.writeDesc(1, DATA, 512, DESC_NEXT, 0);
      q.publish(0);
    },
  },
  {
    name: "a self-loop",
    expect: /longer than the queue size/,
    build: (q, g) => {
      q.writeDesc(5, hdr(g), 16, DESC_NEXT | DESC_WRITE, 5);
      q.publish(5);
    },
  },
  {
    name: "nested indirect table",
    expect: /nests an indirect table/,
    build: (q, g) => {
      writeTable(g, TABLE, [
        [hdr(g), 16, DESC_NEXT, 1],
        [TABLE + 0x100, 32, DESC_INDIRECT, 0],
      ]);
      q.writeDesc(0, TABLE, 32, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "indirect table length not a multiple of 16",
    expect: /indirect table of 40 bytes \(not a multiple of 16\)/,
    build: (q) => {
      q.writeDesc(0, TABLE, 40, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "empty indirect table",
    expect: /indirect table of 0 bytes/,
    build: (q) => {
      q.writeDesc(0, TABLE, 0, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "indirect table larger than allowed",
    expect: /indirect table of 2048 descriptors/,
    build: (q) => {
      q.writeDesc(0, RAM_BASE, 2048 * 16, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "indirect table outside RAM",
    expect: /indirect table outside guest RAM/,
    build: (q) => {
      q.writeDesc(0, RAM_BASE + RAM_SIZE - 16, 32, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "a loop inside an indirect table",
    expect: /loops inside its indirect table of 2/,
    build: (q, g) => {
      writeTable(g, TABLE, [
        [hdr(g), 16, DESC_NEXT, 1],
        [DATA, 16, DESC_NEXT, 0],
      ]);
      q.writeDesc(0, TABLE, 32, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "next out of range inside an indirect table",
    expect: /links to descriptor 7 beyond its table of 2/,
    build: (q, g) => {
      writeTable(g, TABLE, [
        [hdr(g), 16, DESC_NEXT, 7],
        [DATA, 16, 0, 0],
      ]);
      q.writeDesc(0, TABLE, 32, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "INDIRECT together with NEXT",
    expect: /both INDIRECT and NEXT/,
    build: (q) => {
      q.writeDesc(0, TABLE, 32, DESC_INDIRECT | DESC_NEXT, 1);
      q.publish(0);
    },
  },
  {
    name: "indirect descriptor without VIRTIO_F_INDIRECT_DESC",
    expect: /without VIRTIO_F_INDIRECT_DESC/,
    without: F_INDIRECT,
    build: (q, g) => {
      writeTable(g, TABLE, [[hdr(g), 16, 0, 0]]);
      q.writeDesc(0, TABLE, 16, DESC_INDIRECT, 0);
      q.publish(0);
    },
  },
  {
    name: "buffer below RAM",
    expect: /points at 0x1000 \(\+16\) outside guest RAM/,
    build: (q) => {
      q.writeDesc(0, 0x1000, 16, 0, 0);
      q.publish(0);
    },
  },
  {
    name: "buffer crossing the end of RAM",
    expect: /outside guest RAM/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, DESC_NEXT, 1);
      q.writeDesc(1, RAM_BASE + RAM_SIZE - 8, 16, DESC_WRITE, 0);
      q.publish(0);
    },
  },
  {
    name: "buffer with the high address word set",
    expect: /points at 0x10080020000 \(\+512\) outside guest RAM/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, DESC_NEXT, 1);
      q.writeDesc(1, DATA + 2 ** 40, 512, DESC_WRITE, 0);
      q.publish(0);
    },
  },
  {
    name: "length of 4 GiB - 1",
    expect: /outside guest RAM/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, DESC_NEXT, 1);
      q.writeDesc(1, DATA, 0xffff_ffff, DESC_WRITE, 0);
      q.publish(0);
    },
  },
  {
    name: "a writable descriptor before a readable one",
    expect: /readable descriptor after a writable one/,
    build: (q, g) => {
      q.writeDesc(0, DATA, 512, DESC_WRITE | DESC_NEXT, 1);
      q.writeDesc(1, hdr(g), 16, 0, 0);
      q.publish(0);
    },
  },
  {
    name: "available index jumping more than the queue size",
    expect: /available index jumped from 0 to 129, more than the queue size 128/,
    build: (q, g) => {
      q.addChain(request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 512, write: true }]));
      g.w16(q.avail + 2, 129);
    },
  },
  {
    name: "available ring naming a descriptor beyond the queue",
    expect: /names descriptor 500 beyond the queue size 128/,
    build: (q, g) => {
      g.w16(q.avail + 4, 500);
      g.w16(q.avail + 2, 1);
    },
  },
  {
    name: "block request without a status byte",
    expect: /lacks its 16-byte header or its status byte/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 16, 0, 0);
      q.publish(0);
    },
  },
  {
    name: "block request with a short header",
    expect: /lacks its 16-byte header/,
    build: (q, g) => {
      q.writeDesc(0, hdr(g), 8, DESC_NEXT, 1);
      q.writeDesc(1, DATA, 1, DESC_WRITE, 0);
      q.publish(0);
    },
  },
];

for (const c of cases) {
  test(`hostile: ${c.name} -> NEEDS_RESET, one log line, RAM untouched, device recovers`, () => {
    const { g, d, q, disk } = setupBlk({ qsize: QSIZE, wanted: ~(c.without ?? 0n) });
    c.build(q, g);
    const before = g.bus.ram.slice();
    const t0 = performance.now();
    assert.doesNotThrow(() => q.kick());
    assert.ok(performance.now() - t0 < 200, "bounded time");
    assert.ok(d.status() & STATUS_NEEDS_RESET, "DEVICE_NEEDS_RESET");
    assert.ok(d.status() & STATUS_DRIVER_OK, "other status bits kept");
    assert.equal(d.reg(REG.INTERRUPT_STATUS), 2, "configuration-change interrupt");
    assert.equal(g.irq.level, true);
    assert.deepEqual(g.bus.ram, before, "guest memory untouched");
    assert.equal(g.logs.length, 1);
    assert.match(g.logs[0], /^yun: virtio-blk: queue 0: /);
    assert.match(g.logs[0], c.expect);
    assert.match(g.logs[0], /the device stops until the driver resets it$/);

    // Stopped: further notifies do nothing and log nothing; status writes keep NEEDS_RESET.
    q.kick();
    d.set(REG.STATUS, d.status());
    assert.ok(d.status() & STATUS_NEEDS_RESET);
    assert.equal(g.logs.length, 1);

    // The driver resets and sets the device up again; it works.
    d.ackInterrupt();
    assert.ok(d.negotiate() !== undefined);
    assert.equal(g.irq.level, false);
    const q2 = d.setupQueue(0, QSIZE, QBASE);
    d.driverOk();
    assert.equal(d.status() & STATUS_NEEDS_RESET, 0);
    const head = q2.addChain(request(g, VIRTIO_BLK_T_IN, 2, [{ pa: DATA, len: 512, write: true }]));
    q2.submit(head);
    assert.deepEqual(q2.takeUsed(), [{ id: head, len: 513 }]);
    assert.equal(statusOf(g), VIRTIO_BLK_S_OK);
    assert.deepEqual(g.get(DATA, 512), disk.data.subarray(1024, 1536));
    assert.equal(g.logs.length, 1);
  });
}

test("hostile: a chain longer than the queue through 256 descriptors all chained is bounded", () => {
  const { g, d, q } = setupBlk({ qsize: 256, wanted: ~0n });
  // 0 -> 1 -> ... -> 255 -> 0: visits every descriptor before the loop is seen.
  for (let i = 0; i < 256; i++) q.writeDesc(i, DATA, 16, DESC_NEXT, (i + 1) % 256);
  q.publish(0);
  const t0 = performance.now();
  q.kick();
  assert.ok(performance.now() - t0 < 100);
  assert.ok(d.status() & STATUS_NEEDS_RESET);
  assert.match(g.logs[0], /longer than the queue size 256/);
});

test("hostile: requests before the bad one complete; those after it wait for the reset", () => {
  const { g, d, q } = setupBlk({ qsize: QSIZE });
  const good = q.addChain(request(g, VIRTIO_BLK_T_IN, 0, [{ pa: DATA, len: 512, write: true }]));
  q.writeDesc(20, 0x10, 16, 0, 0);
  const after = q.addChain(request(g, VIRTIO_BLK_T_OUT, 0, [{ pa: DATA, len: 512 }], 1));
  q.submit(good, 20, after);
  assert.deepEqual(
    q.takeUsed().map((e) => e.id),
    [good],
  );
  assert.equal(statusOf(g, 1), 0xee, "not executed");
  assert.ok(d.status() & STATUS_NEEDS_RESET);
});

test("hostile: a transmit chain of absurd length (net) and a receive buffer smaller than the header", () => {
  const g = new Guest();
  const sent: Uint8Array[] = [];
  let deliver: (f: Uint8Array) => boolean = () => false;
  const dev = new VirtioNet(
    g.bus,
    g.irqLine,
    { send: (f) => sent.push(f.slice()), attach: (fn) => (deliver = fn), close: () => {} },
    { mac: "52:54:00:12:34:56", log: g.log },
  );
  const d = new Driver(dev, g);
  d.negotiate();
  d.setupQueue(0, 64, QBASE);
  const tx = d.setupQueue(1, 64, QBASE + 0x4000);
  d.driverOk();
  // 12-byte header + 2 x 40000 bytes: more than any Ethernet frame.
  tx.submit(
    tx.addChain([
      { pa: DATA, len: 12 },
      { pa: DATA + 0x100, len: 40000 },
      { pa: DATA + 0x100, len: 40000 },
    ]),
  );
  assert.equal(sent.length, 0);
  assert.ok(d.status() & STATUS_NEEDS_RESET);
  assert.match(g.logs[0], /^yun: virtio-net: queue 1: chain 0 carries more than 65565 bytes/);
  assert.equal(g.irq.level, true);

  // Reset, then a receive buffer of 8 bytes with MRG_RXBUF.
  d.ackInterrupt();
  d.negotiate();
  const rx2 = d.setupQueue(0, 64, QBASE);
  d.setupQueue(1, 64, QBASE + 0x4000);
  d.driverOk();
  rx2.submit(rx2.addChain([{ pa: DATA, len: 8, write: true }]));
  assert.doesNotThrow(() => deliver(new Uint8Array(60)));
  assert.ok(d.status() & STATUS_NEEDS_RESET);
  assert.match(
    g.logs[1],
    /^yun: virtio-net: queue 0: receive buffer 0 has 8 writable bytes, less than the 12-byte header/,
  );
  assert.equal(dev.backlog, 1, "the frame waits for the reset device");
});

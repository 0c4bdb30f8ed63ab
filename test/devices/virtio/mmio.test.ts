/** The virtio-mmio transport: registers, feature negotiation, queue setup, reset, interrupts. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  REG,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  VIRTIO_ID_RNG,
} from "../../../src/devices/virtio/mmio.js";
import { VirtioRng } from "../../../src/devices/virtio/rng.js";
import { VirtioBlk } from "../../../src/devices/virtio/blk.js";
import { Driver, F_EVENT_IDX, F_INDIRECT, F_VERSION_1, Guest, RAM_BASE, RAM_SIZE } from "./driver.js";
import { MemDisk, QBASE } from "./blkhelp.js";

function rng() {
  const g = new Guest();
  const dev = new VirtioRng(g.bus, g.irqLine, { log: g.log });
  return { g, dev, d: new Driver(dev, g) };
}

test("identification registers, features words, shared memory and unaligned access", () => {
  const { d, dev } = rng();
  assert.equal(dev.name, "virtio-rng");
  assert.equal(d.reg(REG.MAGIC), 0x74726976);
  assert.equal(d.reg(REG.VERSION), 2);
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_RNG);
  assert.equal(d.reg(REG.VENDOR_ID), 0x004e5559);
  assert.equal(d.deviceFeatures(), F_VERSION_1 | F_INDIRECT | F_EVENT_IDX);
  d.set(REG.DEVICE_FEATURES_SEL, 2);
  assert.equal(d.reg(REG.DEVICE_FEATURES), 0);
  d.set(REG.SHM_SEL, 0);
  for (const r of [REG.SHM_LEN_LOW, REG.SHM_LEN_HIGH, REG.SHM_BASE_LOW, REG.SHM_BASE_HIGH]) {
    assert.equal(d.reg(r), 0xffffffff, "no shared memory region: length ~0");
  }
  assert.equal(d.reg(REG.CONFIG_GENERATION), 0);
  assert.equal(d.reg(REG.STATUS), 0);
  // Control registers are 32-bit only: narrower or unaligned accesses read 0 and write nothing.
  assert.equal(dev.read(REG.MAGIC, 1), 0);
  assert.equal(dev.read(REG.MAGIC + 2, 2), 0);
  dev.write(REG.STATUS, STATUS_ACKNOWLEDGE, 1);
  assert.equal(d.status(), 0);
  assert.equal(d.reg(0x0f0), 0, "reserved register");
});

test("feature negotiation: VERSION_1 is required and only offered bits may be accepted", () => {
  const { d, g } = rng();
  assert.equal(d.negotiate(~0n, F_EVENT_IDX), undefined, "legacy driver refused");
  assert.equal(d.status() & STATUS_FEATURES_OK, 0);
  assert.equal(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  assert.match(g.logs[0], /^yun: virtio-rng: the driver did not accept VIRTIO_F_VERSION_1 \(legacy virtio/);
  assert.equal(d.negotiate(~0n, F_VERSION_1 | (1n << 5n)), undefined, "unoffered bit refused");
  assert.match(g.logs[1], /features the device does not offer/);
  assert.equal(d.negotiate(~0n, F_VERSION_1 | (1n << 40n)), undefined, "unoffered high bit refused");
  assert.equal(d.negotiate(), F_VERSION_1 | F_INDIRECT | F_EVENT_IDX);
  assert.equal(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  // Once FEATURES_OK is set the driver's features are fixed.
  d.set(REG.DRIVER_FEATURES_SEL, 1);
  d.set(REG.DRIVER_FEATURES, 0);
  d.set(REG.STATUS, d.status() | STATUS_DRIVER_OK);
  assert.equal(d.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
  assert.equal(g.logs.length, 3);
});

test("queue registers: NumMax per queue, absent queues, ready readback and disable", () => {
  const g = new Guest();
  const dev = new VirtioBlk(g.bus, g.irqLine, new MemDisk(1 << 20), { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  d.set(REG.QUEUE_SEL, 0);
  assert.equal(d.reg(REG.QUEUE_NUM_MAX), 256);
  d.set(REG.QUEUE_SEL, 1);
  assert.equal(d.reg(REG.QUEUE_NUM_MAX), 0, "blk has one queue");
  assert.equal(d.reg(REG.QUEUE_READY), 0);
  d.set(REG.QUEUE_READY, 1); // ignored for an absent queue
  assert.equal(d.reg(REG.QUEUE_READY), 0);
  const q = d.setupQueue(0, 16, QBASE);
  assert.equal(d.reg(REG.QUEUE_READY), 1);
  assert.equal(d.reg(REG.QUEUE_DESC_LOW), q.desc);
  // Addresses are fixed while ready.
  d.set(REG.QUEUE_DESC_LOW, 0);
  assert.equal(d.reg(REG.QUEUE_DESC_LOW), q.desc);
  d.set(REG.QUEUE_READY, 0);
  assert.equal(d.reg(REG.QUEUE_READY), 0);
  assert.equal(g.logs.length, 0);
});

test("bad queue setup puts the device in NEEDS_RESET with one log line", () => {
  const setups: [string, (d: Driver) => void, RegExp][] = [
    ["size not a power of 2", (d) => d.set(REG.QUEUE_NUM, 100), /size 100 is not a power of 2 between 1 and 64/],
    ["size above QueueNumMax", (d) => d.set(REG.QUEUE_NUM, 128), /size 128 is not a power of 2/],
    ["size 0", (d) => d.set(REG.QUEUE_NUM, 0), /size 0 is not/],
    [
      "used ring outside RAM",
      (d) => d.set(REG.QUEUE_DEVICE_LOW, RAM_BASE + RAM_SIZE - 8),
      /the used ring lies outside/,
    ],
    ["descriptor table above 4 GiB", (d) => d.set(REG.QUEUE_DESC_HIGH, 1), /the descriptor table lies outside/],
    ["misaligned descriptor table", (d) => d.set(REG.QUEUE_DESC_LOW, RAM_BASE + 0x1008), /misaligned rings/],
  ];
  for (const [what, spoil, expect] of setups) {
    const { d, g } = rng();
    d.negotiate();
    d.set(REG.QUEUE_SEL, 0);
    d.set(REG.QUEUE_NUM, 64);
    d.set(REG.QUEUE_DESC_LOW, RAM_BASE + 0x1000);
    d.set(REG.QUEUE_DRIVER_LOW, RAM_BASE + 0x2000);
    d.set(REG.QUEUE_DEVICE_LOW, RAM_BASE + 0x3000);
    spoil(d);
    assert.doesNotThrow(() => d.set(REG.QUEUE_READY, 1));
    assert.equal(d.reg(REG.QUEUE_READY), 0, what);
    assert.ok(d.status() & STATUS_NEEDS_RESET, what);
    assert.equal(g.logs.length, 1, what);
    assert.match(g.logs[0], expect, what);
    // Before DRIVER_OK there is no configuration interrupt (virtio 1.2 §2.1.2).
    assert.equal(g.irq.level, false, what);
    d.driverOk();
    assert.equal(d.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    d.set(REG.STATUS, 0);
    assert.equal(d.status(), 0, "reset clears NEEDS_RESET");
  }
});

test("reset clears status, features, queues and the interrupt line", () => {
  const { d, g } = rng();
  d.negotiate();
  const q = d.setupQueue(0, 8, RAM_BASE + 0x1000);
  d.driverOk();
  q.submit(q.addChain([{ pa: RAM_BASE + 0x8000, len: 16, write: true }]));
  assert.equal(g.irq.level, true);
  assert.equal(d.reg(REG.INTERRUPT_STATUS), 1);
  d.set(REG.STATUS, 0);
  assert.equal(g.irq.level, false);
  assert.equal(d.reg(REG.INTERRUPT_STATUS), 0);
  assert.equal(d.status(), 0);
  d.set(REG.QUEUE_SEL, 0);
  assert.equal(d.reg(REG.QUEUE_READY), 0);
  assert.equal(d.reg(REG.QUEUE_DESC_LOW), 0);
  // A notify on a reset device is ignored.
  q.submit(q.addChain([{ pa: RAM_BASE + 0x8000, len: 16, write: true }]));
  assert.equal(q.usedIdx(), 1);
});

test("InterruptACK clears only the acknowledged bits; the line follows InterruptStatus", () => {
  const g = new Guest();
  const disk = new MemDisk(1 << 20);
  const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const q = d.setupQueue(0, 8, QBASE);
  d.driverOk();
  // A used-buffer interrupt, then a configuration interrupt from a driver error on top.
  q.writeDesc(0, RAM_BASE + 0x10000, 16, 1, 1);
  q.writeDesc(1, RAM_BASE + 0x11000, 1, 2, 0);
  g.w32(RAM_BASE + 0x10000, 8); // GET_ID with no room for the id: status only
  q.submit(0);
  assert.equal(d.reg(REG.INTERRUPT_STATUS), 1);
  q.writeDesc(2, 0x10, 16, 0, 0);
  q.submit(2);
  assert.equal(d.reg(REG.INTERRUPT_STATUS), 3);
  d.set(REG.INTERRUPT_ACK, 1);
  assert.equal(d.reg(REG.INTERRUPT_STATUS), 2);
  assert.equal(g.irq.level, true);
  d.set(REG.INTERRUPT_ACK, 2);
  assert.equal(g.irq.level, false);
});

test("notifies for absent or disabled queues are ignored", () => {
  const { d, g } = rng();
  d.negotiate();
  d.driverOk();
  assert.doesNotThrow(() => d.set(REG.QUEUE_NOTIFY, 0));
  assert.doesNotThrow(() => d.set(REG.QUEUE_NOTIFY, 7));
  assert.doesNotThrow(() => d.set(REG.QUEUE_NOTIFY, 0xffff_ffff));
  assert.equal(g.logs.length, 0);
  assert.equal(d.status() & STATUS_NEEDS_RESET, 0);
});

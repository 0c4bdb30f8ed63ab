import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ABS_X,
  BTN_LEFT,
  EV_ABS,
  EV_KEY,
  EV_SYN,
  INPUT_CFG,
  INPUT_MAX_PENDING,
  KEYBOARD_DESCRIPTION,
  TABLET_DESCRIPTION,
  VirtioInput,
} from "../../../src/devices/virtio/input.js";
import { REG } from "../../../src/devices/virtio/mmio.js";
import { Driver, Guest, RAM_BASE } from "./driver.js";

const EVENTS = RAM_BASE + 0x20000;

function setup(description = KEYBOARD_DESCRIPTION) {
  const g = new Guest();
  const dev = new VirtioInput(g.bus, g.irqLine, description, { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const evq = d.setupQueue(0, 64, RAM_BASE + 0x1000);
  const stq = d.setupQueue(1, 64, RAM_BASE + 0x3000);
  d.driverOk();
  const select = (sel: number, sub: number) => {
    dev.write(REG.CONFIG, sel, 1);
    dev.write(REG.CONFIG + 1, sub, 1);
    return d.config8(2);
  };
  /** Posts n event buffers, as the driver does at probe. */
  const post = (n: number, from = 0) => {
    for (let i = 0; i < n; i++) evq.publish(evq.addChain([{ pa: EVENTS + 8 * (from + i), len: 8, write: true }]));
    evq.kick();
  };
  const event = (i: number) => [g.r16(EVENTS + 8 * i), g.r16(EVENTS + 8 * i + 2), g.r32(EVENTS + 8 * i + 4) | 0];
  return { g, dev, d, evq, stq, select, post, event };
}

test("the configuration space answers name, ids, event bits and axis ranges", () => {
  const t = setup();
  const size = t.select(INPUT_CFG.ID_NAME, 0);
  const name = Buffer.from(Array.from({ length: size }, (_, i) => t.d.config8(8 + i))).toString();
  assert.equal(name, "QEMU Virtio Keyboard");
  assert.equal(t.select(INPUT_CFG.ID_DEVIDS, 0), 8);
  assert.equal(t.d.config16(8), 0x06, "BUS_VIRTUAL");
  const keyBits = t.select(INPUT_CFG.EV_BITS, EV_KEY);
  assert.ok(keyBits >= 16);
  assert.equal((t.d.config8(8 + (30 >> 3)) >> (30 & 7)) & 1, 1, "KEY_A");
  assert.equal(t.select(INPUT_CFG.EV_BITS, EV_ABS), 0, "a keyboard has no axes");
  assert.equal(t.select(0x77, 0), 0, "an unknown selector has size 0");

  const tab = setup(TABLET_DESCRIPTION);
  assert.equal(tab.select(INPUT_CFG.ABS_INFO, ABS_X), 20);
  assert.equal(tab.d.config32(12), 0x7fff, "max");
  assert.equal(tab.select(INPUT_CFG.EV_BITS, EV_ABS), 1);
  assert.equal(tab.d.config8(8) & 3, 3, "ABS_X and ABS_Y");
});

test("keys reach the event queue as EV_KEY and SYN_REPORT, waiting for buffers if need be", () => {
  const t = setup();
  t.dev.key(30, true);
  assert.equal(t.dev.pendingEvents, 2, "no buffers yet: held");
  t.post(4);
  assert.deepEqual(
    t.evq.takeUsed().map((u) => u.len),
    [8, 8],
  );
  assert.deepEqual(t.event(0), [EV_KEY, 30, 1]);
  assert.deepEqual(t.event(1), [EV_SYN, 0, 0]);
  t.dev.key(30, false);
  assert.deepEqual(t.event(2), [EV_KEY, 30, 0]);
  assert.equal(t.g.irq.level, true);
});

test("the tablet reports position, button changes and wheel", () => {
  const t = setup(TABLET_DESCRIPTION);
  t.post(16);
  t.dev.pointer(100, 200, 1);
  t.dev.pointer(100, 200, 1);
  const got = t.evq.takeUsed().length;
  const events = Array.from({ length: got }, (_, i) => t.event(i));
  assert.deepEqual(events.slice(0, 4), [
    [EV_ABS, 0, 100],
    [EV_ABS, 1, 200],
    [EV_KEY, BTN_LEFT, 1],
    [EV_SYN, 0, 0],
  ]);
  assert.equal(events.filter((e) => e[0] === EV_KEY).length, 1, "a held button is reported once");
});

test("a guest that never reads costs bounded memory; the status queue is drained", () => {
  const t = setup();
  for (let i = 0; i < INPUT_MAX_PENDING; i++) t.dev.key(30, i % 2 === 0);
  assert.ok(t.dev.pendingEvents <= INPUT_MAX_PENDING);
  assert.ok(t.dev.dropped > 0);
  t.g.put(EVENTS, [0x11, 0, 1, 0, 1, 0, 0, 0]);
  t.stq.submit(t.stq.addChain([{ pa: EVENTS, len: 8 }]));
  assert.deepEqual(
    t.stq.takeUsed().map((u) => u.len),
    [0],
  );
});

test("pending events survive a snapshot", () => {
  const t = setup();
  t.dev.key(31, true);
  const saved = JSON.parse(JSON.stringify(t.dev.save()));
  const u = setup();
  u.dev.restore(saved);
  assert.equal(u.dev.pendingEvents, 2);
  assert.throws(() => u.dev.restore({ ...saved, device: { ...saved.device, pending: [1, 2] } }), /triples/);
});

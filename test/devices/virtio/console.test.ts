import { test } from "node:test";
import assert from "node:assert/strict";
import { REG, VIRTIO_ID_CONSOLE } from "../../../src/devices/virtio/mmio.js";
import { VirtioConsole, type VirtioConsoleOptions } from "../../../src/devices/virtio/console.js";
import { Driver, Guest, RAM_BASE } from "./driver.js";

const RXQ = RAM_BASE + 0x1000;
const TXQ = RAM_BASE + 0x3000;
const BUF = RAM_BASE + 0x10000;
const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

function setupConsole(opts: Omit<VirtioConsoleOptions, "log" | "kick"> = {}, driverOk = true) {
  const g = new Guest();
  const out: Uint8Array[] = [];
  let kicks = 0;
  const dev = new VirtioConsole(g.bus, g.irqLine, (b) => out.push(b), { ...opts, log: g.log, kick: () => kicks++ });
  const d = new Driver(dev, g);
  const features = d.negotiate();
  const rx = d.setupQueue(0, 64, RXQ);
  const tx = d.setupQueue(1, 64, TXQ);
  if (driverOk) d.driverOk();
  return { g, dev, d, rx, tx, out, features, kicks: () => kicks };
}

test("guest output reaches the output callback in order, in arrays the callee may keep", () => {
  const { g, tx, out, d } = setupConsole();
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_CONSOLE);
  g.put(BUF, text("hello, "));
  g.put(BUF + 0x100, text("world\n"));
  const h1 = tx.addChain([
    { pa: BUF, len: 7 },
    { pa: BUF + 0x100, len: 6 },
  ]);
  g.put(BUF + 0x200, text("$ "));
  const h2 = tx.addChain([{ pa: BUF + 0x200, len: 2 }]);
  tx.submit(h1, h2);
  assert.deepEqual(out.map(str), ["hello, world\n", "$ "]);
  g.put(BUF, text("XXXXXXX"));
  assert.equal(str(out[0]), "hello, world\n", "not a view of guest memory");
  assert.deepEqual(tx.takeUsed(), [
    { id: h1, len: 0 },
    { id: h2, len: 0 },
  ]);
  assert.equal(g.irq.level, true);
});

test("host input waits for receive buffers, then fills them across buffers", () => {
  const { g, rx, dev, kicks } = setupConsole();
  dev.input(text("ls -l"));
  dev.input(text("\n"));
  assert.equal(dev.pendingInput, 6);
  assert.equal(g.irq.level, false);
  assert.equal(kicks(), 0);
  const h1 = rx.addChain([{ pa: BUF, len: 4, write: true }]);
  const h2 = rx.addChain([{ pa: BUF + 0x100, len: 64, write: true }]);
  rx.submit(h1, h2);
  assert.deepEqual(rx.takeUsed(), [
    { id: h1, len: 4 },
    { id: h2, len: 2 },
  ]);
  assert.equal(str(g.get(BUF, 4)) + str(g.get(BUF + 0x100, 2)), "ls -l\n");
  assert.equal(dev.pendingInput, 0);
  assert.equal(g.irq.level, true);
});

test("input with buffers already posted is delivered at once and wakes the VM loop", () => {
  const { g, rx, dev, kicks, d } = setupConsole();
  const heads = [0, 1, 2].map((i) => rx.addChain([{ pa: BUF + i * 0x100, len: 16, write: true }]));
  rx.submit(...heads);
  assert.equal(rx.usedIdx(), 0, "no input, buffers stay posted");
  dev.input(text("y"));
  assert.deepEqual(rx.takeUsed(), [{ id: heads[0], len: 1 }]);
  assert.equal(str(g.get(BUF, 1)), "y");
  assert.equal(kicks(), 1);
  assert.equal(d.ackInterrupt(), 1);
  // 40 bytes: 16 + 16 + the rest waits.
  dev.input(text("0123456789abcdefghijklmnopqrstuvwxyzABCD"));
  assert.equal(rx.takeUsed().length, 2);
  assert.equal(dev.pendingInput, 24 - 16);
  assert.equal(str(g.get(BUF + 0x100, 16)), "0123456789abcdef");
  assert.equal(str(g.get(BUF + 0x200, 16)), "ghijklmnopqrstuv");
});

test("input typed before DRIVER_OK is delivered once the driver is ready", () => {
  const { g, rx, dev, d } = setupConsole({}, false);
  dev.input(text("early"));
  rx.submit(rx.addChain([{ pa: BUF, len: 16, write: true }]));
  assert.equal(rx.usedIdx(), 0);
  d.driverOk();
  assert.equal(str(g.get(BUF, 5)), "early");
  assert.equal(rx.usedIdx(), 1);
});

test("terminal size: 80x24 by default; SIZE offered with a size option; resize interrupts", () => {
  const plain = setupConsole();
  assert.equal(plain.features! & 1n, 0n, "no VIRTIO_CONSOLE_F_SIZE");
  assert.equal(plain.d.config16(0), 80);
  assert.equal(plain.d.config16(2), 24);
  assert.equal(plain.d.config32(4), 1, "max_nr_ports");

  const sized = setupConsole({ size: { cols: 132, rows: 43 } });
  assert.equal(sized.features! & 1n, 1n);
  assert.equal(sized.d.config16(0), 132);
  assert.equal(sized.d.config16(2), 43);
  sized.dev.resize(100, 30);
  assert.equal(sized.d.config16(0), 100);
  assert.equal(sized.d.config16(2), 30);
  assert.equal(sized.d.reg(REG.CONFIG_GENERATION), 1);
  assert.equal(sized.d.ackInterrupt(), 2);
});

test("save/restore keeps pending input and the terminal size", () => {
  const { g, dev, rx } = setupConsole({ size: { cols: 90, rows: 20 } });
  dev.input(text("abc"));
  dev.input(text("def"));
  rx.submit(rx.addChain([{ pa: BUF, len: 2, write: true }]));
  assert.equal(dev.pendingInput, 4);
  const state = JSON.parse(JSON.stringify(dev.save()));
  const dev2 = new VirtioConsole(g.bus, g.irqLine, () => {}, { size: { cols: 80, rows: 24 }, log: g.log });
  dev2.restore(state);
  assert.equal(dev2.pendingInput, 4);
  const d2 = new Driver(dev2, g);
  assert.equal(d2.config16(0), 90);
  rx.publish(rx.addChain([{ pa: BUF + 0x100, len: 16, write: true }]));
  d2.set(REG.QUEUE_NOTIFY, 0);
  assert.deepEqual(
    rx.takeUsed().map((e) => e.len),
    [2, 4],
  );
  assert.equal(str(g.get(BUF + 0x100, 4)), "cdef");
});

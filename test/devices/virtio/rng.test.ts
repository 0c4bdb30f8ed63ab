import { test } from "node:test";
import assert from "node:assert/strict";
import { VirtioRng, RNG_MAX_BYTES_PER_REQUEST } from "../../../src/devices/virtio/rng.js";
import { Driver, Guest, RAM_BASE } from "./driver.js";

const BUF = RAM_BASE + 0x10000;

function setupRng() {
  const g = new Guest();
  const dev = new VirtioRng(g.bus, g.irqLine, { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const q = d.setupQueue(0, 64, RAM_BASE + 0x1000);
  d.driverOk();
  return { g, dev, d, q };
}

test("every writable buffer comes back full of varied random bytes", () => {
  const { g, q, dev } = setupRng();
  const h1 = q.addChain([{ pa: BUF, len: 256, write: true }]);
  const h2 = q.addChain([
    { pa: BUF + 0x1000, len: 64, write: true },
    { pa: BUF + 0x2000, len: 64, write: true },
  ]);
  q.submit(h1, h2);
  assert.deepEqual(q.takeUsed(), [
    { id: h1, len: 256 },
    { id: h2, len: 128 },
  ]);
  const a = g.get(BUF, 256);
  assert.ok(new Set(a).size > 100, "not constant");
  assert.ok(new Set(g.get(BUF + 0x2000, 64)).size > 20, "second segment filled too");
  q.submit(q.addChain([{ pa: BUF, len: 256, write: true }]));
  assert.notDeepEqual(g.get(BUF, 256), a, "fresh bytes on every request");
  assert.equal(g.irq.level, true);
  assert.equal(dev.served, 640);
});

test("a huge request is answered with at most 64 KiB", () => {
  const { g, q } = setupRng();
  g.fill(BUF, 128 * 1024, 0);
  q.submit(q.addChain([{ pa: BUF, len: 128 * 1024, write: true }]));
  assert.deepEqual(
    q.takeUsed().map((e) => e.len),
    [RNG_MAX_BYTES_PER_REQUEST],
  );
  assert.ok(
    g.get(BUF + RNG_MAX_BYTES_PER_REQUEST, 1024).every((b) => b === 0),
    "nothing beyond the limit",
  );
});

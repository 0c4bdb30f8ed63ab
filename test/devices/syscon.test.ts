import { test } from "node:test";
import assert from "node:assert/strict";
import { SysCon, type PowerEvent } from "../../src/devices/syscon.js";

function setup() {
  const events: PowerEvent[] = [];
  return { events, syscon: new SysCon((e) => events.push(e)) };
}

test("poweroff, reset and failure codes", () => {
  const { syscon, events } = setup();
  syscon.write(0, 0x5555, 4);
  syscon.write(0, 0x7777, 4);
  syscon.write(0, 0x3333 | (42 << 16), 4);
  assert.deepEqual(events, [
    { kind: "poweroff", code: 0 },
    { kind: "reset", code: 0 },
    { kind: "fail", code: 42 },
  ]);
});

test("syscon-poweroff regmap read-modify-write works; other writes are ignored", () => {
  const { syscon, events } = setup();
  const v = syscon.read(0, 4);
  assert.equal(v, 0);
  syscon.write(4, 0x5555, 4);
  syscon.write(0, 0x1234, 4);
  assert.equal(events.length, 0);
  syscon.write(0, (v & ~0xffffffff) | 0x5555, 4);
  assert.deepEqual(events, [{ kind: "poweroff", code: 0 }]);
  assert.deepEqual(JSON.parse(JSON.stringify(syscon.save())), {});
});

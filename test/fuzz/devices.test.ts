/**
 * The device fuzz campaigns (fuzz/campaigns) with a fixed seed and a few runs each, plus the
 * regression cases of what they found.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runFixed, type Campaign } from "../../fuzz/campaign.js";
import { campaigns } from "../../fuzz/campaigns/index.js";
import { Clint } from "../../src/machine/clint.js";
import { GoldfishRtc } from "../../src/devices/rtc.js";

for (const c of campaigns.filter((x: Campaign) => x.surface === "device")) {
  test(`fuzz ${c.name}: ${c.testRuns} cases, fixed seed`, async () => {
    const r = await runFixed(c);
    assert.equal(r.failure, undefined, r.failure);
    assert.equal(r.cases, c.testRuns);
  });
}

test("regression (mmio-clint): mtime wraps past 2^64 - 1, so mtimecmp at its maximum raises no timer interrupt", () => {
  let now = 0;
  let mtip = false;
  const clint = new Clint([{ setPending: (bit, level) => bit === 7 && (mtip = level) }], { now: () => now });
  clint.write(0xbff8, 0xffff_f000, 4);
  clint.write(0xbffc, 0xffff_ffff, 4);
  now += 1_000_000; // mtime passes 2^64 and wraps to about 1e6
  clint.write(0x4000, 0xffff_ffff, 4);
  clint.write(0x4004, 0xffff_ffff, 4);
  assert.equal(mtip, false, "MTIP stays clear: no mtime is past all-ones");
  assert.equal(clint.read(0xbffc, 4), 0, "mtime's high word wrapped to 0");
  clint.write(0x4000, 2_000_000, 4);
  clint.write(0x4004, 0, 4);
  assert.equal(mtip, false);
  assert.equal(clint.nextDeadline(), now + 2_000_000 - (1_000_000 - 0x1000), "deadline counted from the wrap");
  now += 2_000_000;
  clint.update();
  assert.equal(mtip, true);
});

test("regression (mmio-rtc): a narrow read answers its own bytes of the register", () => {
  const rtc = new GoldfishRtc(
    () => {},
    () => 0x1122_3344_5566_7788n,
  );
  assert.equal(rtc.read(0, 4), 0x5566_7788);
  assert.equal(rtc.read(0, 1), 0x88);
  assert.equal(rtc.read(1, 1), 0x77);
  assert.equal(rtc.read(2, 2), 0x5566);
  assert.equal(rtc.read(4, 1), 0x44, "TIME_HIGH latched by the low read");
});

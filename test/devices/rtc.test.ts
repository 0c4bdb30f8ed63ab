import { test } from "node:test";
import assert from "node:assert/strict";
import { GoldfishRtc } from "../../src/devices/rtc.js";

const TIME_LOW = 0x00, TIME_HIGH = 0x04, ALARM_LOW = 0x08, ALARM_HIGH = 0x0c, IRQ_ENABLED = 0x10;
const CLEAR_ALARM = 0x14, ALARM_STATUS = 0x18, CLEAR_INTERRUPT = 0x1c;

function setup(start = 1_700_000_000_123_456_789n) {
  const wall = { ns: start };
  const irq = { level: false };
  const rtc = new GoldfishRtc((l) => (irq.level = l), () => wall.ns);
  return { rtc, wall, irq };
}

/** goldfish_rtc_read_time: low first (latching high), then high. */
function readTime(rtc: GoldfishRtc): bigint {
  const lo = BigInt(rtc.read(TIME_LOW, 4));
  const hi = BigInt(rtc.read(TIME_HIGH, 4));
  return (hi << 32n) | lo;
}

function write64(rtc: GoldfishRtc, lowOff: number, v: bigint): void {
  rtc.write(lowOff + 4, Number(v >> 32n), 4);
  rtc.write(lowOff, Number(v & 0xffffffffn), 4);
}

test("time reads the wall clock; the low read latches the high word", () => {
  const { rtc, wall } = setup();
  assert.equal(readTime(rtc), wall.ns);
  wall.ns = 0x1_ffff_ffffn;
  const lo = rtc.read(TIME_LOW, 4);
  wall.ns = 0x2_0000_0000n;
  assert.equal(rtc.read(TIME_HIGH, 4), 1);
  assert.equal(lo, 0xffffffff);
});

test("the default wall clock is Unix-epoch nanoseconds", () => {
  const rtc = new GoldfishRtc(() => {});
  const t = readTime(rtc);
  const now = BigInt(Date.now()) * 1_000_000n;
  assert.ok(t <= now && now - t < 5_000_000_000n);
});

test("setting the time (high then low) offsets it from the wall clock", () => {
  const { rtc, wall } = setup();
  write64(rtc, TIME_LOW, 1_000_000_000_000_000_000n);
  assert.equal(readTime(rtc), 1_000_000_000_000_000_000n);
  wall.ns += 5n;
  assert.equal(readTime(rtc), 1_000_000_000_000_000_005n);
});

test("alarm arms on low write, fires in update(), interrupts when enabled", () => {
  const { rtc, wall, irq } = setup(1000n);
  rtc.write(IRQ_ENABLED, 1, 4);
  assert.equal(rtc.read(IRQ_ENABLED, 4), 1);
  write64(rtc, ALARM_LOW, 0x1_0000_0000n + 2000n);
  assert.equal(rtc.read(ALARM_HIGH, 4), 1);
  assert.equal(rtc.read(ALARM_LOW, 4), 2000);
  assert.equal(rtc.read(ALARM_STATUS, 4), 1);
  assert.equal(rtc.alarmDeadline(), 0x1_0000_0000n + 2000n);
  rtc.update();
  assert.equal(irq.level, false);
  wall.ns = 0x1_0000_0000n + 2000n;
  rtc.update();
  assert.equal(irq.level, true);
  assert.equal(rtc.read(ALARM_STATUS, 4), 0);
  assert.equal(rtc.alarmDeadline(), undefined);
  rtc.write(CLEAR_INTERRUPT, 1, 4);
  assert.equal(irq.level, false);
});

test("an alarm in the past fires at once; CLEAR_ALARM disarms; disabled irq stays low", () => {
  const { rtc, wall, irq } = setup(5000n);
  write64(rtc, ALARM_LOW, 10n);
  assert.equal(irq.level, false, "IRQ_ENABLED is 0");
  rtc.write(IRQ_ENABLED, 1, 4);
  assert.equal(irq.level, true, "pending interrupt shows once enabled");
  rtc.write(CLEAR_INTERRUPT, 1, 4);
  write64(rtc, ALARM_LOW, 9000n);
  rtc.write(CLEAR_ALARM, 1, 4);
  wall.ns = 10000n;
  rtc.update();
  assert.equal(irq.level, false);
  assert.equal(rtc.read(ALARM_STATUS, 4), 0);
});

test("save/restore round-trips through JSON", () => {
  const { rtc } = setup(100n);
  write64(rtc, TIME_LOW, 1n << 40n);
  rtc.write(IRQ_ENABLED, 1, 4);
  write64(rtc, ALARM_LOW, (1n << 40n) + 50n);
  const state = JSON.parse(JSON.stringify(rtc.save()));
  const other = setup(100n);
  other.rtc.restore(state);
  assert.equal(readTime(other.rtc), 1n << 40n);
  assert.equal(other.rtc.read(ALARM_STATUS, 4), 1);
  other.wall.ns = 150n;
  other.rtc.update();
  assert.equal(other.irq.level, true);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { Clint } from "../../src/machine/clint.js";
import type { Clock, InterruptTarget } from "../../src/machine/interrupts.js";

class FakeHart implements InterruptTarget {
  mip = 0;
  setPending(bit: number, level: boolean): void {
    if (level) this.mip |= 1 << bit;
    else this.mip &= ~(1 << bit);
  }
  has(bit: number): boolean {
    return (this.mip & (1 << bit)) !== 0;
  }
}

class FakeClock implements Clock {
  t = 0;
  now(): number {
    return this.t;
  }
}

function setup(n = 2) {
  const harts = Array.from({ length: n }, () => new FakeHart());
  const clock = new FakeClock();
  return { harts, clock, clint: new Clint(harts, clock) };
}

/** A 64-bit access as the bus performs it: two 4-byte halves, low first. */
function ld(c: Clint, off: number): number {
  const lo = c.read(off, 4);
  const hi = c.read(off + 4, 4);
  return hi * 2 ** 32 + lo;
}
function sd(c: Clint, off: number, v: number): void {
  c.write(off, v % 2 ** 32, 4);
  c.write(off + 4, Math.floor(v / 2 ** 32), 4);
}

test("mtimecmp resets to all ones and no timer is pending", () => {
  const { clint, harts } = setup();
  assert.equal(clint.read(0x4000, 4), 0xffff_ffff);
  assert.equal(clint.read(0x4004, 4), 0xffff_ffff);
  assert.equal(clint.nextDeadline(), Infinity);
  assert.equal(harts[0].has(7), false);
});

test("msip drives MSIP per hart, only bit 0", () => {
  const { clint, harts } = setup();
  clint.write(0x4, 1, 4);
  assert.equal(harts[1].has(3), true);
  assert.equal(harts[0].has(3), false);
  assert.equal(clint.read(0x4, 4), 1);
  clint.write(0x4, 0xfffffffe, 4);
  assert.equal(harts[1].has(3), false);
  assert.equal(clint.read(0x4, 4), 0);
});

test("mtime follows the clock and 64-bit reads do not tear", () => {
  const { clint, clock } = setup();
  clock.t = 12345;
  assert.equal(ld(clint, 0xbff8), 12345);
  clock.t = 2 ** 32 - 1;
  const lo = clint.read(0xbff8, 4);
  clock.t = 2 ** 32; // carry between the halves
  const hi = clint.read(0xbffc, 4);
  assert.equal(hi * 2 ** 32 + lo, 2 ** 32 - 1);
  assert.equal(clint.read(0xbffc, 4), 1); // a lone high read sees the live value
});

test("mtimecmp via sd raises and clears MTIP, including halves writes", () => {
  const { clint, clock, harts } = setup();
  clock.t = 1000;
  sd(clint, 0x4008, 1500); // hart 1
  assert.equal(harts[1].has(7), false);
  assert.equal(clint.nextDeadline(), 1500);
  assert.equal(clint.nextDeadline(1), 1500);
  assert.equal(clint.nextDeadline(0), Infinity);
  clock.t = 1499;
  clint.update();
  assert.equal(harts[1].has(7), false);
  clock.t = 1500;
  clint.update();
  assert.equal(harts[1].has(7), true);
  // The RV32-style sequence: high to all ones, low, then high.
  clint.write(0x400c, 0xffffffff, 4);
  assert.equal(harts[1].has(7), false);
  clint.write(0x4008, 5000, 4);
  clint.write(0x400c, 0, 4);
  assert.equal(harts[1].has(7), false);
  assert.equal(ld(clint, 0x4008), 5000);
  // Values above 2^32 compare on both halves.
  sd(clint, 0x4000, 2 ** 32 + 7);
  clock.t = 2 ** 32 + 6;
  clint.update();
  assert.equal(harts[0].has(7), false);
  clock.t = 2 ** 32 + 7;
  clint.update();
  assert.equal(harts[0].has(7), true);
});

test("byte and halfword accesses", () => {
  const { clint } = setup();
  clint.write(0x4000, 0x34, 1);
  clint.write(0x4001, 0x12, 1);
  assert.equal(clint.read(0x4000, 4), 0xffff1234);
  clint.write(0x4002, 0, 2);
  assert.equal(clint.read(0x4000, 2), 0x1234);
  assert.equal(clint.read(0x4000, 4), 0x1234);
});

test("writing mtime adjusts an offset; deadlines are in clock time", () => {
  const { clint, clock, harts } = setup(1);
  clock.t = 100;
  sd(clint, 0xbff8, 1_000_000);
  assert.equal(ld(clint, 0xbff8), 1_000_000);
  clock.t = 150;
  assert.equal(ld(clint, 0xbff8), 1_000_050);
  sd(clint, 0x4000, 1_000_100);
  assert.equal(clint.nextDeadline(), 200);
  clock.t = 200;
  clint.update();
  assert.equal(harts[0].has(7), true);
  // High-half write alone.
  clint.write(0xbffc, 1, 4);
  assert.equal(clint.read(0xbffc, 4), 1);
});

test("save/restore round-trips through JSON", () => {
  const { clint, clock } = setup();
  clock.t = 10;
  sd(clint, 0xbff8, 500);
  sd(clint, 0x4008, 900);
  clint.write(0x0, 1, 4);
  const state = JSON.parse(JSON.stringify(clint.save()));
  const other = setup();
  other.clock.t = 10;
  other.clint.restore(state);
  assert.equal(ld(other.clint, 0xbff8), 500);
  assert.equal(ld(other.clint, 0x4008), 900);
  assert.equal(other.harts[0].has(3), true);
  other.clock.t = 410;
  other.clint.update();
  assert.equal(other.harts[1].has(7), true);
});

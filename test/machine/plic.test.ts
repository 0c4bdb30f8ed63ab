import { test } from "node:test";
import assert from "node:assert/strict";
import { Plic } from "../../src/machine/plic.js";
import type { InterruptTarget } from "../../src/machine/interrupts.js";

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

const MEIP = 11;
const SEIP = 9;
const enableReg = (ctx: number, word = 0) => 0x2000 + 0x80 * ctx + 4 * word;
const threshold = (ctx: number) => 0x200000 + 0x1000 * ctx;
const claim = (ctx: number) => 0x200004 + 0x1000 * ctx;

function setup(n = 2) {
  const harts = Array.from({ length: n }, () => new FakeHart());
  return { harts, plic: new Plic(harts) };
}

test("a level interrupt flows through priority, enable and threshold to SEIP", () => {
  const { plic, harts } = setup();
  const sctx = 1; // hart 0 S-mode
  plic.setLevel(10, true);
  assert.equal(plic.read(0x1000, 4), 1 << 10);
  assert.equal(harts[0].has(SEIP), false, "priority 0 never interrupts");
  plic.write(4 * 10, 1, 4);
  assert.equal(harts[0].has(SEIP), false, "not enabled");
  plic.write(enableReg(sctx), 1 << 10, 4);
  assert.equal(harts[0].has(SEIP), true);
  assert.equal(harts[0].has(MEIP), false);
  assert.equal(harts[1].has(SEIP), false);
  plic.write(threshold(sctx), 1, 4);
  assert.equal(harts[0].has(SEIP), false, "priority must exceed threshold");
  plic.write(threshold(sctx), 0, 4);
  assert.equal(harts[0].has(SEIP), true);
});

test("claim/complete gateway semantics for level-triggered sources", () => {
  const { plic, harts } = setup(1);
  plic.write(4 * 10, 1, 4);
  plic.write(enableReg(1), 1 << 10, 4);
  plic.setLevel(10, true);
  assert.equal(plic.read(claim(1), 4), 10);
  assert.equal(harts[0].has(SEIP), false, "claimed source is no longer pending");
  assert.equal(plic.read(0x1000, 4), 0);
  assert.equal(plic.read(claim(1), 4), 0, "nothing else to claim");
  // Line still high at completion: pending again.
  plic.write(claim(1), 10, 4);
  assert.equal(harts[0].has(SEIP), true);
  assert.equal(plic.read(claim(1), 4), 10);
  // Device is serviced and lowers its line before completion: stays quiet.
  plic.setLevel(10, false);
  plic.setLevel(10, true); // re-raised while claimed: held back by the gateway
  assert.equal(plic.read(0x1000, 4), 0);
  plic.setLevel(10, false);
  plic.write(claim(1), 10, 4);
  assert.equal(harts[0].has(SEIP), false);
  assert.equal(plic.read(0x1000, 4), 0);
  // A line that drops before being claimed no longer requests.
  plic.setLevel(10, true);
  assert.equal(harts[0].has(SEIP), true);
  plic.setLevel(10, false);
  assert.equal(harts[0].has(SEIP), false);
});

test("completion of a source not enabled in the context is ignored", () => {
  const { plic } = setup(1);
  plic.write(4 * 5, 1, 4);
  plic.write(enableReg(1), 1 << 5, 4);
  plic.setLevel(5, true);
  assert.equal(plic.read(claim(1), 4), 5);
  plic.write(enableReg(1), 0, 4);
  plic.write(claim(1), 5, 4);
  plic.write(enableReg(1), 1 << 5, 4);
  assert.equal(plic.read(claim(1), 4), 0, "still claimed");
  // Linux's masked EOI: enable, complete, disable.
  plic.write(claim(1), 5, 4);
  assert.equal(plic.read(claim(1), 4), 5);
});

test("highest priority wins, lowest id breaks ties; sources above 31", () => {
  const { plic, harts } = setup(1);
  for (const s of [3, 7, 40, 95]) plic.write(4 * s, 2, 4);
  plic.write(4 * 40, 5, 4);
  plic.write(enableReg(0, 0), 0xffffffff, 4);
  plic.write(enableReg(0, 1), 0xffffffff, 4);
  plic.write(enableReg(0, 2), 0xffffffff, 4);
  assert.equal(plic.read(enableReg(0, 0), 4), 0xfffffffe, "source 0 is hardwired off");
  for (const s of [95, 7, 3, 40]) plic.setLevel(s, true);
  assert.equal(harts[0].has(MEIP), true);
  assert.equal(plic.read(0x1008, 4), 0x80000000);
  assert.equal(plic.read(claim(0), 4), 40);
  assert.equal(plic.read(claim(0), 4), 3);
  assert.equal(plic.read(claim(0), 4), 7);
  assert.equal(plic.read(claim(0), 4), 95);
  assert.equal(plic.read(claim(0), 4), 0);
  assert.equal(harts[0].has(MEIP), false);
  plic.write(4 * 3, 0xff, 4);
  assert.equal(plic.read(4 * 3, 4), 7, "3 priority bits");
});

test("contexts map to harts: 2h is M-mode, 2h+1 is S-mode", () => {
  const { plic, harts } = setup(2);
  plic.write(4 * 1, 1, 4);
  plic.write(enableReg(2), 1 << 1, 4); // hart 1 M
  plic.setLevel(1, true);
  assert.equal(harts[1].has(MEIP), true);
  assert.equal(harts[1].has(SEIP), false);
  assert.equal(harts[0].mip, 0);
  plic.write(enableReg(3), 1 << 1, 4); // hart 1 S too
  assert.equal(harts[1].has(SEIP), true);
  assert.equal(plic.read(claim(3), 4), 1);
  assert.equal(harts[1].mip, 0, "a claim by one context removes it from all");
});

test("save/restore round-trips through JSON", () => {
  const { plic } = setup(1);
  plic.write(4 * 9, 3, 4);
  plic.write(enableReg(1), 1 << 9, 4);
  plic.write(threshold(1), 1, 4);
  plic.setLevel(9, true);
  assert.equal(plic.read(claim(1), 4), 9);
  const state = JSON.parse(JSON.stringify(plic.save()));
  const other = setup(1);
  other.plic.restore(state);
  assert.equal(other.plic.read(threshold(1), 4), 1);
  assert.equal(other.harts[0].has(SEIP), false);
  other.plic.write(claim(1), 9, 4);
  assert.equal(other.harts[0].has(SEIP), true, "line still high at completion");
});

/**
 * Harts on two threads over one shared RAM (as an SMP machine runs them): AMOs and LR/SC are
 * atomic across harts, aligned doubleword stores are never seen half done, and code that one hart
 * rewrites is not run stale by the other after a fence.i. Under both engines.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { SharedCodeMap } from "../../src/cpu/smp.js";
import * as A from "../support/rv-asm.js";

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 1 << 20;
const CODE = RAM_BASE + 0x1000;
const DATA = RAM_BASE + 0x8000;
const A0 = 10,
  A1 = 11,
  A2 = 12,
  A3 = 13,
  A4 = 14,
  T1 = 6,
  T2 = 7,
  T3 = 28,
  T4 = 29,
  S0 = 8;

/** Data words, at DATA + offset. */
const COUNT_W = 0,
  COUNT_D = 8,
  COUNT_LRSC = 16,
  PATTERN = 24,
  TORN = 32,
  DONE = 40,
  FINISHED = 48;

/** `li rd, value` for an unsigned 32-bit value (lui + addi, then zero-extended). */
function li(rd: number, value: number): number[] {
  const lo = (value << 20) >> 20;
  const hi = ((value - lo) >>> 12) & 0xfffff;
  return [A.lui(rd, hi), A.addi(rd, rd, lo), A.slli(rd, rd, 32), A.srli(rd, rd, 32)];
}

/** Resolves a program with labels: entries are words or [label] / (pc) => word. */
function assemble(parts: (number | string | ((at: (l: string) => number, pc: number) => number))[]): number[] {
  const labels = new Map<string, number>();
  let pc = 0;
  for (const p of parts) {
    if (typeof p === "string") labels.set(p, pc);
    else pc += 4;
  }
  const out: number[] = [];
  pc = 0;
  for (const p of parts) {
    if (typeof p === "string") continue;
    out.push(typeof p === "number" ? p : p((l) => labels.get(l)! - pc, pc));
    pc += 4;
  }
  return out;
}

function runHarts(program: number[], iterations: number, jit: boolean, setup?: (ram: DataView) => void) {
  const ram = new SharedArrayBuffer(RAM_SIZE);
  const view = new DataView(ram);
  program.forEach((w, i) => view.setUint32(CODE - RAM_BASE + 4 * i, w >>> 0, true));
  view.setUint32(DATA - RAM_BASE + 56, iterations, true);
  setup?.(view);
  const code = SharedCodeMap.allocate(RAM_SIZE, 2);
  const harts = [0, 1].map(
    (hartId) =>
      new Promise<{ instret: number }>((resolve, reject) => {
        const w = new Worker(new URL("../support/smp-hart.js", import.meta.url), {
          workerData: { ram, ramBase: RAM_BASE, hartId, pc: CODE, jit, code, doneAddr: DATA + DONE, budget: 5e8 },
        });
        w.once("message", resolve);
        w.once("error", reject);
      }),
  );
  return { harts: Promise.all(harts), view };
}

// Each hart: N times { amoadd.w, amoadd.d, an LR/SC increment, store its doubleword pattern and
// check that a doubleword load sees a whole pattern }; then it counts itself finished, and the
// last one sets DONE.
const counting = assemble([
  ...li(S0, DATA),
  A.lw(A1, 56, S0), // iterations
  A.addi(T1, 0, 1),
  A.addi(A2, S0, COUNT_D),
  A.addi(A3, S0, COUNT_LRSC),
  A.addi(A4, S0, PATTERN),
  // hart 0 stores all zeros, hart 1 all ones
  A.sub(T4, 0, A0),
  "loop",
  A.amoadd_w(0, T1, S0),
  A.amoadd_d(0, T1, A2),
  "retry",
  A.lr_w(T2, A3),
  A.addi(T2, T2, 1),
  A.sc_w(T3, T2, A3),
  (at) => A.bne(T3, 0, at("retry")),
  A.sd(T4, 0, A4),
  A.ld(T2, 0, A4),
  (at) => A.beq(T2, 0, at("whole")),
  A.addi(T3, 0, -1),
  (at) => A.beq(T2, T3, at("whole")),
  A.addi(T3, S0, TORN),
  A.amoadd_w(0, T1, T3),
  "whole",
  A.addi(A1, A1, -1),
  (at) => A.bne(A1, 0, at("loop")),
  A.addi(T3, S0, FINISHED),
  A.amoadd_w(T2, T1, T3),
  (at) => A.beq(T2, 0, at("spin")), // the first to finish waits for the other
  A.sw(T1, DONE, S0),
  "spin",
  (at) => A.jal(0, at("spin")),
]);

for (const engine of ["interp", "jit"] as const) {
  test(`${engine}: AMOs and LR/SC count exactly across two hart threads; no torn doubleword`, async () => {
    const n = 200_000;
    const { harts, view } = runHarts(counting, n, engine === "jit");
    await harts;
    const at = (off: number) => view.getUint32(DATA - RAM_BASE + off, true);
    assert.equal(at(COUNT_W), 2 * n, "amoadd.w");
    assert.equal(Number(view.getBigUint64(DATA - RAM_BASE + COUNT_D, true)), 2 * n, "amoadd.d");
    assert.equal(at(COUNT_LRSC), 2 * n, "lr.w/sc.w");
    assert.equal(at(TORN), 0, "doubleword loads that saw half of another hart's store");
  });
}

// Hart 1 keeps calling a function at FN and adds what it returns to SUM until FLAG is set, then
// runs fence.i and calls it once more, storing that result in AFTER. Hart 0 waits until hart 1
// has called the function many times (it is translated by then), rewrites it to return 2, sets
// FLAG and waits. The call after fence.i must see the new code.
const FN = CODE + 0x800;
const SUM = 64,
  FLAG = 72,
  AFTER = 80,
  CALLS = 88;
const crossModifying = assemble([
  ...li(S0, DATA),
  ...li(A4, FN),
  (at) => A.bne(A0, 0, at("caller")),
  // hart 0: wait for 20 000 calls, rewrite "addi a0, zero, 1" into "addi a0, zero, 2", set FLAG
  ...li(T3, 20_000),
  "wait",
  A.lw(T2, CALLS, S0),
  (at) => A.bltu(T2, T3, at("wait")),
  ...li(T2, A.addi(A0, 0, 2)),
  A.sw(T2, 0, A4),
  A.addi(T2, 0, 1),
  A.sw(T2, FLAG, S0),
  "park",
  (at) => A.jal(0, at("park")),
  "caller",
  A.addi(T1, 0, 1),
  "call",
  A.jalr(1, 0, A4),
  A.ld(T2, SUM, S0),
  A.add(T2, T2, A0),
  A.sd(T2, SUM, S0),
  A.addi(T3, S0, CALLS),
  A.amoadd_w(0, T1, T3),
  A.lw(T2, FLAG, S0),
  (at) => A.beq(T2, 0, at("call")),
  A.fence_i(),
  A.jalr(1, 0, A4),
  A.sd(A0, AFTER, S0),
  A.sw(T1, DONE, S0),
  "end",
  (at) => A.jal(0, at("end")),
]);

test("jit: code one hart rewrites runs new on the other after its fence.i", async () => {
  const { harts, view } = runHarts(crossModifying, 0, true, (v) => {
    v.setUint32(FN - RAM_BASE, A.addi(A0, 0, 1), true);
    v.setUint32(FN - RAM_BASE + 4, A.jalr(0, 0, 1), true);
  });
  await harts;
  const calls = view.getUint32(DATA - RAM_BASE + CALLS, true);
  assert.ok(calls >= 20_000, `calls before the rewrite: ${calls}`);
  assert.equal(Number(view.getBigUint64(DATA - RAM_BASE + AFTER, true)), 2, "the call after fence.i ran the new code");
});

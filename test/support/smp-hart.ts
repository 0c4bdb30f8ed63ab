// A hart on a thread of its own over shared RAM, for test/cpu/smp.test.ts: runs from `pc` until
// the word at `doneAddr` is non-zero (or the instruction budget is spent) and reports its instret.
import { parentPort, workerData } from "node:worker_threads";
import { Bus } from "../../src/cpu/bus.js";
import { Hart } from "../../src/cpu/hart.js";
import { Jit } from "../../src/cpu/jit.js";
import { SharedCodeMap, type SharedCodeBuffers } from "../../src/cpu/smp.js";

const d = workerData as {
  ram: SharedArrayBuffer;
  ramBase: number;
  hartId: number;
  pc: number;
  jit: boolean;
  code: SharedCodeBuffers;
  doneAddr: number;
  budget: number;
};
const bus = new Bus(d.ramBase, d.ram.byteLength, true, d.ram);
const hart = new Hart(bus, d.hartId, { now: () => 0 });
const jit = d.jit ? new Jit(hart, { threshold: 50, shared: new SharedCodeMap(d.code) }) : null;
hart.pc = d.pc;
hart.setXNumber(10, d.hartId);
const done = (d.doneAddr - d.ramBase) >> 2;
while (hart.instret < d.budget && Atomics.load(bus.ram32, done) === 0) {
  hart.run(20_000);
  jit?.syncShared();
}
parentPort!.postMessage({ instret: hart.instret, pc: hart.pc });

// Differential tests: random RV64GC programs run on qemu-riscv64 (the oracle) and on Yun's hart;
// registers, fcsr and the scratch memory must match.
//
//   node --test dist/test/cpu/diff.test.js
//   YUN_DIFF_SEEDS=500       add 500 more seeds per class (1000..1499)
//   YUN_DIFF_SEEDS=42,77-80  add exactly these seeds
//   YUN_DIFF_CLASS=fp_d,rvc  only these classes: alu mul amo mem fp_s fp_d fpx_s fpx_d rvc branch csr
//                            (fpx_s / fpx_d / mul also select the directed edge-case matrices)
//   YUN_DIFF_LENGTH=400      body length (units; default 200)
import { test } from "node:test";
import assert from "node:assert/strict";
import { CLASSES, LOAD_ADDR, generate, type InsnClass, type Program } from "../diff/generate.js";
import { haveQemu } from "../diff/qemu.js";
import { haveBinutils } from "../support/gnu.js";
import { checkSeed } from "../diff/diff.js";
import { intMatrixBodies, matrixBodies } from "../diff/matrix.js";

const BASE_SEEDS = Array.from({ length: 40 }, (_, i) => i + 1);

function extraSeeds(spec: string | undefined): number[] {
  if (!spec) return [];
  if (/^\d+$/.test(spec.trim())) return Array.from({ length: Number(spec) }, (_, i) => 1000 + i);
  return spec.split(",").filter(Boolean).flatMap((part) => {
    const m = /^(\d+)-(\d+)$/.exec(part.trim());
    if (!m) return [Number(part)];
    const out: number[] = [];
    for (let s = Number(m[1]); s <= Number(m[2]); s++) out.push(s);
    return out;
  });
}

const seeds = [...BASE_SEEDS, ...extraSeeds(process.env.YUN_DIFF_SEEDS)];
const only = process.env.YUN_DIFF_CLASS?.split(",").map((s) => s.trim());
const length = Number(process.env.YUN_DIFF_LENGTH ?? 200);
const skip = haveQemu() ? false : "qemu-riscv64 not installed (apt-get install qemu-user); differential tests skipped";
if (skip) console.log(`# ${skip}`);
if (!skip && !haveBinutils()) console.log("# riscv64 binutils missing: failure reports will show hex instead of disassembly");

for (const cls of CLASSES as readonly InsnClass[]) {
  if (only && !only.includes(cls)) continue;
  test(`yun matches qemu-riscv64: ${cls}`, { skip }, () => {
    const failures: string[] = [];
    for (const seed of seeds) {
      const report = checkSeed(cls, seed, { length });
      if (report) failures.push(report);
      if (failures.length >= 3) break;
    }
    if (failures.length > 0) {
      // Full report for the first failure; later ones trimmed to their header and culprit.
      const rest = failures.slice(1).map((f) => f.split("\nbody (")[0]);
      assert.fail([failures[0], ...rest].join("\n\n"));
    }
  });
}

// Long compressed bodies span pages; seeds are picked so a 32-bit instruction straddles a boundary.
function straddles(p: Program): boolean {
  for (let a = p.bodyStart; a < p.bodyEnd; ) {
    const len = (p.segment[a - LOAD_ADDR] & 3) === 3 ? 4 : 2;
    if (len === 4 && a % 4096 === 4094) return true;
    a += len;
  }
  return false;
}
test("yun matches qemu-riscv64: rvc, page-straddling bodies", { skip: skip || (only && !only.includes("rvc")) }, () => {
  let found = 0;
  for (let seed = 1; seed < 200 && found < 3; seed++) {
    if (!straddles(generate(seed, "rvc", { length: 2500 }))) continue;
    found++;
    const report = checkSeed("rvc", seed, { length: 2500 });
    if (report) assert.fail(report.split("\nbody (")[0]);
  }
  assert.equal(found, 3);
});

// Directed grids: every op over edge-case operands (and every rounding mode), each result stored.
const matrices: [string, InsnClass, () => number[][]][] = [
  ["FP edge-case matrix (s)", "fpx_s", () => matrixBodies("s")],
  ["FP edge-case matrix (d)", "fpx_d", () => matrixBodies("d")],
  ["integer edge-case matrix", "mul", intMatrixBodies],
];
for (const [name, cls, bodies] of matrices) {
  test(`yun matches qemu-riscv64: ${name}`, { skip: skip || (only && !only.includes(cls)) }, () => {
    const failures: string[] = [];
    bodies().forEach((body, i) => {
      if (failures.length >= 3) return;
      const report = checkSeed(cls, i, { body });
      if (report) failures.push(`${name}, program ${i}: ` + report.split("\nbody (")[0]);
    });
    if (failures.length > 0) assert.fail(failures.join("\n\n"));
  });
}

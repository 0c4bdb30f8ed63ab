// Self-checks of the differential harness against qemu alone: determinism, the dump layout, and a
// hand-computed program.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as A from "../support/rv-asm.js";
import { CLASSES, SP_OFF, SCRATCH, generate, interestingInt } from "./generate.js";
import { Rng } from "../support/rng.js";
import { haveQemu, runQemu } from "./qemu.js";
import { parseDump } from "./diff.js";

const skip = !haveQemu() && "qemu-riscv64 not installed (apt-get install qemu-user)";

test("qemu runs are deterministic", { skip }, () => {
  for (const cls of CLASSES) {
    const p = generate(7, cls);
    assert.deepEqual(runQemu(p), runQemu(p), `class ${cls}`);
  }
});

test("generation is deterministic", () => {
  for (const cls of CLASSES) assert.deepEqual(generate(3, cls).segment, generate(3, cls).segment);
  assert.notDeepEqual(generate(3, "alu").segment, generate(4, "alu").segment);
});

test("empty body dumps the initial state", { skip }, () => {
  for (const cls of CLASSES) {
    const p = generate(11, cls, { truncate: 0 });
    const d = parseDump(runQemu(p));
    assert.deepEqual(d.x, p.xInit);
    assert.deepEqual(d.f, p.fInit);
    assert.equal(d.fcsr, BigInt(p.frm0 << 5));
    assert.deepEqual(d.mem, p.scratchInit);
  }
});

test("hand-computed program", { skip }, () => {
  const body = [
    A.addi(5, 0, 5),
    A.addi(6, 0, 7),
    A.mul(7, 5, 6),
    A.sd(7, 0, 2),
    A.addi(8, 0, -1),
    A.srli(9, 8, 60),
    A.addiw(10, 8, 0),
    A.lui(11, 0x80000),
    A.csrrwi(0, A.CSR.frm, 0),
    A.fcvt_d_w(1, 7, A.RM.RNE),
    A.fadd_d(2, 1, 1, A.RM.RNE),
    A.fmv_d_x(3, 0),
    A.fdiv_d(4, 1, 3),
    A.fcvt_s_w(5, 5),
  ];
  const p = generate(1, "alu", { body });
  const d = parseDump(runQemu(p));
  assert.equal(d.x[0], 0n);
  assert.equal(d.x[2], BigInt(p.outAddr - SCRATCH + SP_OFF));
  assert.equal(d.x[5], 5n);
  assert.equal(d.x[6], 7n);
  assert.equal(d.x[7], 35n);
  assert.equal(d.x[9], 0xfn);
  assert.equal(d.x[10], 0xffffffffffffffffn);
  assert.equal(d.x[11], 0xffffffff80000000n);
  assert.equal(d.x[12], p.xInit[12]);
  assert.equal(d.f[1], 0x4041800000000000n); // 35.0
  assert.equal(d.f[2], 0x4051800000000000n); // 70.0
  assert.equal(d.f[3], 0n);
  assert.equal(d.f[4], 0x7ff0000000000000n); // +inf
  assert.equal(d.f[5], 0xffffffff40a00000n); // 5.0f, NaN-boxed
  assert.equal(d.fcsr, 0x08n); // DZ, frm = RNE
  const mem = new DataView(d.mem.buffer);
  assert.equal(mem.getBigUint64(SP_OFF - SCRATCH, true), 35n);
  assert.deepEqual(d.mem.subarray(0, 1024), p.scratchInit.subarray(0, 1024));
});

test("li pseudo-instruction loads any 64-bit value", { skip }, () => {
  const r = new Rng(99);
  const regs = [1, ...Array.from({ length: 29 }, (_, i) => i + 3)];
  for (let round = 0; round < 4; round++) {
    const vals = regs.map(() => (r.bool(0.3) ? BigInt.asUintN(64, BigInt(r.int(-5000, 5000)) << BigInt(r.int(0, 60))) : interestingInt(r)));
    const body = regs.flatMap((rd, i) => A.li(rd, vals[i]));
    const d = parseDump(runQemu(generate(1, "alu", { body })));
    regs.forEach((rd, i) => assert.equal(d.x[rd], vals[i], `x${rd} <- 0x${vals[i].toString(16)}`));
  }
});

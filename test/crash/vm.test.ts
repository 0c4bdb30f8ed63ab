/**
 * SIGKILL of `yun run` while its guest writes and fsyncs records to a qcow2 and a raw disk (issue
 * 22, item 7): a few rounds of fuzz/crash-vm.ts on one boot with both disks (`npm run crash` runs
 * a hundred of each). After every kill qemu-img check finds no corruption and every record the
 * guest saw durable is there.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAVE_DEBIAN } from "../cloud/helpers.js";
import { vmCrashRounds } from "../../fuzz/crash-vm.js";

test(
  "SIGKILL of yun run mid-write on a qcow2 and a raw disk: fsync'd records survive, no corruption",
  { skip: !HAVE_DEBIAN, timeout: 900_000 },
  async () => {
    const r = await vmCrashRounds({ formats: ["qcow2", "raw"], rounds: 4, seed: 7 });
    assert.deepEqual(r.violations, []);
    assert.equal(r.kills, 4);
    assert.equal(r.checks.clean + r.checks.leaks, 2, "qemu-img check ran on each qcow2 round");
    assert.equal(r.checks.corrupt, 0);
    assert.ok(r.recordsVerified >= 4, `only ${r.recordsVerified} records checked`);
  },
);

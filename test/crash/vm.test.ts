/**
 * SIGKILL of `yun run` while its guest writes and fsyncs records to a qcow2 and a raw disk (issue
 * 22, item 7): a few rounds of fuzz/crash-vm.ts (`npm run crash` runs a hundred of each). After
 * every kill qemu-img check finds no corruption and every record the guest saw durable is there.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAVE_DEBIAN } from "../cloud/helpers.js";
import { vmCrashRounds } from "../../fuzz/crash-vm.js";

for (const format of ["qcow2", "raw"] as const) {
  test(
    `SIGKILL of yun run mid-write on a ${format} disk: fsync'd records survive, no corruption`,
    { skip: !HAVE_DEBIAN, timeout: 600_000 },
    async () => {
      const r = await vmCrashRounds({ format, rounds: 2, seed: format === "qcow2" ? 7 : 8 });
      assert.deepEqual(r.violations, []);
      assert.equal(r.kills, 2);
      if (format === "qcow2") assert.equal(r.checks.clean + r.checks.leaks, 2);
      assert.ok(r.recordsVerified >= 2, `only ${r.recordsVerified} records checked`);
    },
  );
}

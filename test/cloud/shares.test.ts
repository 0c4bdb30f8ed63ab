// The share service through the REST API: a project's shares, their attachments to instances
// (read-only or not), tenancy (another project's share is 404) and what an instance's VM is given.
// No VM boots here: test/e2e/shares.test.ts mounts a share in two VMs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { startCloud, tenant, refusal, HAVE_DEBIAN, type TestCloud } from "./helpers.js";

let t: TestCloud;
before(async () => {
  t = await startCloud();
});
after(async () => {
  await t.close();
});

test(
  "shares: create, attach read-only or not, tenancy, delete",
  { skip: !HAVE_DEBIAN && "no debian-tiny image" },
  async () => {
    const A = await tenant(t, "share-a");
    const B = await tenant(t, "share-b");
    const s = await A.member.createShare("team-data");
    assert.equal(s.tag, "team-data");
    const dir = join(t.home, "cloud", "shares", s.id);
    assert.ok(statSync(dir).isDirectory(), "the share's directory is under $YUN_HOME");
    assert.equal((await refusal(() => A.member.createShare("team-data"))).status, 409);
    assert.equal((await refusal(() => A.reader.createShare("other"))).status, 403);
    assert.deepEqual(
      (await A.member.listShares()).map((x) => x.name),
      ["team-data"],
    );

    const vm1 = await A.member.createInstance({ name: "v1", image: "debian-tiny", flavor: "tiny", start: false });
    const vm2 = await A.member.createInstance({ name: "v2", image: "debian-tiny", flavor: "tiny", start: false });
    await A.member.attachShare("v1", "team-data");
    const both = await A.member.attachShare("v2", s.id, true);
    assert.deepEqual(both.attachments, [
      { instance: vm1.id, readOnly: false },
      { instance: vm2.id, readOnly: true },
    ]);
    // What each VM is built with (yun run --share TAG=DIR[:ro]).
    assert.deepEqual(t.cloud.shares.specsFor(vm1.id), [{ tag: "team-data", path: dir, readOnly: false }]);
    assert.deepEqual(t.cloud.shares.specsFor(vm2.id), [{ tag: "team-data", path: dir, readOnly: true }]);

    // Project B sees nothing of it, and cannot attach it to its own instance.
    const bvm = await B.member.createInstance({ name: "b1", image: "debian-tiny", flavor: "tiny", start: false });
    assert.deepEqual(await B.member.listShares(), []);
    for (const fn of [
      () => B.member.getShare(s.id),
      () => B.member.deleteShare(s.id),
      () => B.member.attachShare(bvm.id, s.id),
      () => B.member.attachShare(vm1.id, s.id),
    ]) {
      assert.equal((await refusal(fn)).status, 404);
    }
    assert.deepEqual(t.cloud.shares.specsFor(bvm.id), []);

    // Attached: not deletable. Detached (and an instance deleted): gone with its files.
    assert.equal((await refusal(() => A.member.deleteShare("team-data"))).status, 409);
    await A.member.detachShare("v1", "team-data");
    assert.equal((await refusal(() => A.member.detachShare("v1", "team-data"))).status, 409);
    await A.member.deleteInstance(vm2.id);
    assert.deepEqual((await A.member.getShare(s.id)).attachments, []);
    await A.member.deleteShare("team-data");
    assert.ok(!existsSync(dir));
    assert.equal((await refusal(() => A.member.getShare(s.id))).status, 404);
    await A.member.deleteInstance(vm1.id);
    await B.member.deleteInstance(bvm.id);
  },
);

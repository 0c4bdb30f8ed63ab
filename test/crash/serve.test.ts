/**
 * Crash consistency of `yun serve` (issue 22, items 4 and 7): the operation journal, what a
 * restart's reconcile() finishes or rolls back, the invariant checker itself, and a few rounds of
 * the crash campaign (fuzz/crash-serve.ts; `npm run crash` runs a hundred).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { YunClient } from "../../src/cloud/client.js";
import { checkCloudInvariants } from "../../src/cloud/invariants.js";
import { cloudMonitorProcesses } from "../../src/cloud/compute/driver.js";
import { createQcow2 } from "../../src/storage/image.js";
import { HAVE_DEBIAN, startCloud, tempHome, tenant } from "../cloud/helpers.js";
import { killDaemon, serveCrashRounds, startDaemon } from "../../fuzz/crash-serve.js";
import { sleep } from "../e2e/harness.js";

const sha = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

function events(
  home: string,
): { action: string; resource: string; outcome: string; user_name: string; message: string }[] {
  const db = new Database(join(home, "cloud", "yun.db"), { readonly: true });
  try {
    return db.prepare("SELECT * FROM events ORDER BY id").all() as never;
  } finally {
    db.close();
  }
}

function killMonitors(home: string): void {
  for (const m of cloudMonitorProcesses(home)) {
    for (const target of [-m.pid, m.pid]) {
      try {
        process.kill(target, "SIGKILL");
      } catch {}
    }
  }
}

test(
  "kill -9 of the daemon while it creates an instance: the restart audits the create, as its caller",
  { skip: !HAVE_DEBIAN, timeout: 180_000 },
  async () => {
    const home = tempHome();
    let d = await startDaemon(home);
    try {
      const adminToken = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
      const admin = new YunClient({ server: d.url, token: adminToken });
      const project = await admin.createProject({ name: "p" });
      const user = await admin.createUser({ name: "carol", role: "member", project: project.id });
      const carol = new YunClient({ server: d.url, token: (await admin.createToken(user.id)).token });
      // The create answers once the VM monitor answers; the daemon dies as soon as it has spawned it.
      const pending = carol
        .createInstance({ name: "web", image: "debian-tiny", flavor: "tiny" })
        .catch((e: Error) => e);
      for (let i = 0; i < 600 && cloudMonitorProcesses(home).length === 0; i++) await sleep(10);
      assert.equal(cloudMonitorProcesses(home).length, 1, "the monitor was spawned");
      await killDaemon(d);
      assert.ok((await pending) instanceof Error, "the create was cut off before its answer");

      d = await startDaemon(home);
      const created = events(home).filter((e) => e.action === "instance.create");
      assert.equal(created.length, 1, JSON.stringify(events(home)));
      assert.equal(created[0].user_name, "carol");
      assert.equal(created[0].outcome, "ok");
      assert.match(created[0].resource, /^ins-/);
      assert.match(
        created[0].message,
        /^the server stopped before it answered; after the restart instance web is (running|stopped)$/,
      );
      assert.deepEqual(checkCloudInvariants(home), []);
    } finally {
      await killDaemon(d);
      killMonitors(home);
      rmSync(home, { recursive: true, force: true });
    }
  },
);

test("a snapshot cut off after its files moved is rolled back at the restart, and audited", async () => {
  const home = tempHome();
  let t = await startCloud({ home });
  try {
    const ten = await tenant(t, "p");
    const vol = await ten.member.createVolume({ name: "data", sizeGiB: 1 });
    const volPath = join(home, "cloud", "volumes", `${vol.id}.qcow2`);
    const before = sha(volPath);
    // What createSnapshot leaves when the process dies between its file moves and its commit:
    // the journal row with its intent, the volume's file renamed to the snapshot's, a new overlay.
    const snapPath = join(home, "cloud", "snapshots", "snp-aaaaaaaaaa.qcow2");
    const db = t.cloud.db;
    db.prepare(
      "INSERT INTO operations (started_at, user_id, user_name, project_id, action, resource, applied, intent) VALUES (?, NULL, 'p-member', ?, 'volume.snapshot', ?, 0, ?)",
    ).run(new Date().toISOString(), ten.project.id, vol.id, JSON.stringify({ snapshot: snapPath, volume: volPath }));
    renameSync(volPath, snapPath);
    createQcow2(volPath, { backing: { path: snapPath, format: "qcow2" } });
    await t.close();

    t = await startCloud({ home });
    assert.equal(sha(volPath), before, "the volume has its own file back");
    assert.ok(!existsSync(snapPath));
    const e = events(home).find((x) => x.action === "volume.snapshot")!;
    assert.equal(e.outcome, "interrupted");
    assert.equal(e.user_name, "p-member");
    assert.match(e.message, /nothing changed \(the volume's file was moved back\)/);
    assert.deepEqual(checkCloudInvariants(home), []);
  } finally {
    await t.close();
    rmSync(home, { recursive: true, force: true });
  }
});

test("an instance create cut off before its disk was made is finished at the restart, and audited", async () => {
  const home = tempHome();
  let t = await startCloud({ home });
  try {
    const ten = await tenant(t, "p");
    const i = await ten.member.createInstance({ name: "web", image: "debian-tiny", flavor: "tiny", start: false });
    // What a kill right after the create's first transaction leaves: the row, its journal entry
    // marked applied, no disk and no event.
    const db = t.cloud.db;
    db.prepare("DELETE FROM events WHERE action = 'instance.create'").run();
    db.prepare(
      "INSERT INTO operations (started_at, user_name, project_id, action, resource, applied) VALUES (?, 'p-member', ?, 'instance.create', 'web', 1)",
    ).run(new Date().toISOString(), ten.project.id);
    rmSync(join(home, "cloud", "instances", i.id), { recursive: true });
    await t.close();

    t = await startCloud({ home });
    assert.ok(existsSync(join(home, "cloud", "instances", i.id, "root.qcow2")));
    const e = events(home).find((x) => x.action === "instance.create")!;
    assert.equal(e.outcome, "ok");
    assert.equal(e.resource, i.id);
    assert.equal(e.user_name, "p-member");
    assert.equal(
      e.message,
      "the server stopped before it answered; its root disk was created at the restart; after the restart instance web is stopped",
    );
    const member = new YunClient({ server: t.url, token: ten.memberToken });
    assert.equal((await member.getInstance(i.id)).state, "stopped");
    assert.deepEqual(checkCloudInvariants(home), []);
  } finally {
    await t.close();
    rmSync(home, { recursive: true, force: true });
  }
});

test("the restart sweeps files no record owns, but keeps a running VM's lock and a snapshot still in use", async () => {
  const home = tempHome();
  let t = await startCloud({ home });
  try {
    const ten = await tenant(t, "p");
    const vol = await ten.member.createVolume({ name: "data", sizeGiB: 1 });
    const snap = await ten.member.createSnapshot(vol.id, "s1");
    await t.close();
    const cloud = join(home, "cloud");
    const lock = join(cloud, "volumes", `${vol.id}.qcow2.yun-lock`);
    writeFileSync(lock, `${process.pid}\n`); // held by a live process
    writeFileSync(join(cloud, "snapshots", "snp-bbbbbbbbbb.qcow2"), "deleted, not yet removed");
    writeFileSync(join(cloud, "images", "img-cccccccccc.raw"), "an upload cut off");
    writeFileSync(join(cloud, "volumes", "vol-dddddddddd.qcow2"), "a create cut off");
    mkdirSync(join(cloud, "instances", "ins-eeeeeeeeee"));

    t = await startCloud({ home });
    assert.ok(existsSync(lock), "the lock of a recorded volume stays");
    assert.ok(existsSync(join(cloud, "snapshots", `${snap.id}.qcow2`)));
    for (const f of [
      "snapshots/snp-bbbbbbbbbb.qcow2",
      "images/img-cccccccccc.raw",
      "volumes/vol-dddddddddd.qcow2",
      "instances/ins-eeeeeeeeee",
    ])
      assert.ok(!existsSync(join(cloud, f)), `${f} was swept`);
    assert.deepEqual(checkCloudInvariants(home), []);
  } finally {
    await t.close();
    rmSync(home, { recursive: true, force: true });
  }
});

test("the invariant checker names each broken invariant", async () => {
  const t = await startCloud();
  const home = t.home;
  try {
    const ten = await tenant(t, "p");
    const i = await ten.member.createInstance({ name: "web", image: "debian-tiny", flavor: "tiny", start: false });
    const vol = await ten.member.createVolume({ name: "data", sizeGiB: 1 });
    assert.deepEqual(checkCloudInvariants(home), []);
    const cloud = join(home, "cloud");
    rmSync(join(cloud, "volumes", `${vol.id}.qcow2`));
    mkdirSync(join(cloud, "instances", "ins-ffffffffff"));
    const db = t.cloud.db;
    db.prepare("UPDATE instances SET state = 'building' WHERE id = ?").run(i.id);
    db.prepare("DELETE FROM events WHERE action = 'volume.create'").run();
    db.prepare("UPDATE usage_intervals SET end_ms = 1 WHERE resource_id = ?").run(i.id);
    db.prepare(
      "INSERT INTO operations (started_at, user_name, project_id, action, resource) VALUES ('x', 'p-member', ?, 'volume.delete', ?)",
    ).run(ten.project.id, vol.id);
    const v = checkCloudInvariants(home).join("\n");
    assert.match(v, /operation \d+ \(volume\.delete vol-\w+ by p-member\) was never finished/);
    assert.match(v, /instance web \(ins-\w+\) is left building/);
    assert.match(v, /volume data \(vol-\w+\): its file .* is missing or unreadable/);
    assert.match(v, /instances\/ins-ffffffffff belongs to no instance \(an orphan directory\)/);
    assert.match(v, /metering: ins-\w+ disk should be open at 2, is not open/);
    assert.match(v, /audit: volume data \(vol-\w+\) has no volume\.create event/);
  } finally {
    await t.close();
  }
});

test(
  "crash campaign: SIGKILL of yun serve at random points, invariants and audit after every restart",
  { skip: !HAVE_DEBIAN, timeout: 300_000 },
  async () => {
    const r = await serveCrashRounds({ rounds: 5, seed: 2207 });
    assert.deepEqual(r.violations, []);
    assert.equal(r.kills, 5 + r.restartKills);
    assert.ok(r.requests > 10, `only ${r.requests} requests`);
  },
);

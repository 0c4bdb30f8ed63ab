/**
 * Metering with an injectable clock: intervals open and close with state transitions, a periodic
 * tick bounds what a crash can lose, and usage over a window counts only the overlap.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDatabase } from "../../src/cloud/db.js";
import { Meter, usageCsv } from "../../src/cloud/metering/meter.js";
import { startCloud } from "./helpers.js";

function meterWithClock() {
  const dir = mkdtempSync(join(tmpdir(), "yun-meter-"));
  const db = openDatabase(join(dir, "m.db"));
  let now = Date.parse("2026-01-01T00:00:00Z");
  const m = new Meter(db, () => now);
  return {
    m,
    advance: (s: number) => (now += s * 1000),
    at: () => now,
    done: () => {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("an instance that ran 60 s with 1 vCPU reports 60 vCPU-seconds; paused time does not count", () => {
  const { m, advance, at, done } = meterWithClock();
  const t0 = at();
  m.open("prj-a", "ins-a", "web", "cpu", 1);
  m.open("prj-a", "ins-a", "web", "memory", 0.25);
  advance(30);
  m.close("ins-a", ["cpu"]); // paused for 100 s
  advance(100);
  m.open("prj-a", "ins-a", "web", "cpu", 1); // resumed
  advance(30);
  m.close("ins-a", ["cpu", "memory"]);
  advance(500);
  const u = m.usage("prj-a", t0, at());
  assert.equal(u.vcpuSeconds, 60);
  assert.equal(u.instances[0].vcpuSeconds, 60);
  // Memory is held while paused too: 160 s of 0.25 GiB.
  assert.ok(Math.abs(u.memoryGiBHours - (0.25 * 160) / 3600) < 1e-6);
  // A window counts only its overlap: [t0+10 s, t0+40 s] holds 20 s of running.
  assert.equal(m.usage("prj-a", t0 + 10_000, t0 + 40_000).vcpuSeconds, 20);
  // Two vCPUs count twice; other projects are apart.
  m.open("prj-a", "ins-b", "big", "cpu", 2);
  advance(10);
  m.close("ins-b", ["cpu"]);
  assert.equal(m.usage("prj-a", t0, at()).vcpuSeconds, 80);
  assert.equal(m.usage("prj-b", t0, at()).vcpuSeconds, 0);
  done();
});

test("after a crash an interval closes at its last tick: at most one tick is lost", () => {
  const { m, advance, at, done } = meterWithClock();
  const t0 = at();
  m.open("prj-a", "ins-a", "web", "cpu", 1);
  for (let i = 0; i < 30; i++) {
    advance(2);
    m.tick();
  }
  advance(1.5); // the daemon dies 1.5 s after its last tick; the VM died with nobody watching
  m.closeAtLastTick("ins-a", ["cpu"]);
  advance(100);
  assert.equal(m.usage("prj-a", t0, at()).vcpuSeconds, 60);
  done();
});

test("usage CSV: a header, one line per resource, the total", () => {
  const { m, advance, at, done } = meterWithClock();
  const t0 = at();
  m.open("prj-a", "ins-a", "web, the first", "cpu", 1);
  advance(60);
  m.close("ins-a", ["cpu"]);
  const csv = usageCsv(m.usage("prj-a", t0, at()));
  assert.deepEqual(csv.trim().split("\n"), [
    "project,resource,name,from,to,vcpu_seconds,memory_gib_hours,disk_gib_hours",
    'prj-a,ins-a,"web, the first",2026-01-01T00:00:00.000Z,2026-01-01T00:01:00.000Z,60,0,0',
    "prj-a,total,,2026-01-01T00:00:00.000Z,2026-01-01T00:01:00.000Z,60,0,0",
  ]);
  done();
});

test("through the API with an injected clock: disk GiB-hours accrue while an instance exists", async () => {
  let now = Date.parse("2026-03-01T12:00:00Z");
  const t = await startCloud({ now: () => now });
  try {
    const vm = await t.admin.createInstance({ name: "d1", image: "debian-tiny", flavor: "tiny", start: false });
    now += 3600_000; // one hour
    const vol = await t.admin.createVolume({ name: "v", sizeGiB: 3 });
    now += 1800_000; // half an hour more
    await t.admin.deleteInstance(vm.id);
    await t.admin.deleteVolume(vol.id);
    now += 3600_000; // nothing exists any more
    const u = await t.admin.usage();
    // 2 GiB for 1.5 h, 3 GiB for 0.5 h.
    assert.equal(u.diskGiBHours, 4.5);
    assert.equal(u.vcpuSeconds, 0);
    const byId = Object.fromEntries(u.instances.map((i) => [i.id, i]));
    assert.equal(byId[vm.id].diskGiBHours, 3);
    assert.equal(byId[vol.id].diskGiBHours, 1.5);
  } finally {
    await t.close();
  }
});

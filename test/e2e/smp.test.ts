// SMP end to end, on one Debian boot with 2 vCPUs: the guest sees two CPUs and runs two processes
// on both at once; the VM pauses, snapshots and restores in a new process with both harts where
// they were, and migrates live to another process, its counter going on each time; a CPU cap
// holds both vCPUs together to their share.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  Yun,
  ConsoleSession,
  sleep,
  TEST_TIMEOUT,
  vmJson,
  headless as headlessVm,
  attach,
  counter,
  incoming,
  socketOf,
  assertCapped,
  cappedShare,
} from "./harness.js";

const tag = `smp${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), "yun-smp-"));
const children: Yun[] = [];

const headless = (name: string, ...args: string[]) => headlessVm(children, name, ...args);

/** Busy (user + nice + system) ticks of each CPU from /proc/stat. */
async function busyTicks(c: ConsoleSession): Promise<number[]> {
  const out = await c.sh("grep '^cpu[0-9]' /proc/stat");
  return out
    .trim()
    .split("\n")
    .map((line) => {
      const f = line.trim().split(/\s+/).slice(1).map(Number);
      return f[0] + f[1] + f[2];
    });
}

/** Guest uptime in centiseconds. */
async function uptime(c: ConsoleSession): Promise<number> {
  return Math.round(Number((await c.sh("cut -d' ' -f1 /proc/uptime")).trim()) * 100);
}

test(
  "a 2-vCPU guest: two CPUs at work, snapshot and restore, live migration",
  { timeout: TEST_TIMEOUT * 2 },
  async (t) => {
    try {
      const a = await headless(`${tag}-a`, "--cpus", "2");
      const ca = await attach(a.socket);
      await ca.waitFor("the shell prompt", (s) => s.includes("~ # "), 200_000);

      await t.test("the guest sees two CPUs and runs two processes on both at once", async () => {
        assert.equal((await ca.sh("nproc")).trim(), "2");
        assert.equal((await ca.sh("grep -c ^processor /proc/cpuinfo")).trim(), "2");
        assert.equal(vmJson<{ cpus: number }>("describe", `${tag}-a`).cpus, 2);
        const b0 = await busyTicks(ca);
        const u0 = await uptime(ca);
        const out = await ca.sh(
          "w() { i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo done$1; }; w 1 & p=$!; w 2 & q=$!; wait $p $q",
          180_000,
        );
        const elapsed = (await uptime(ca)) - u0;
        const b1 = await busyTicks(ca);
        assert.match(out, /done1/);
        assert.match(out, /done2/);
        assert.equal(b1.length, 2);
        const shares = b1.map((b, i) => (b - b0[i]) / elapsed);
        t.diagnostic(`busy share of each CPU while both loops ran: ${shares.map((s) => s.toFixed(2)).join(", ")}`);
        for (const [i, s] of shares.entries())
          assert.ok(s > 0.5, `CPU ${i} was busy ${(s * 100).toFixed(0)} % of the job`);
        const m = vmJson<{ instret: number }>("metrics", `${tag}-a`);
        assert.ok(m.instret > 1e9, `instructions retired by both harts: ${m.instret}`);
      });

      await ca.sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 1; done &");
      await sleep(2000);
      const snap = join(dir, "snap");
      let atSnapshot = 0;
      await t.test("pause, resume and a snapshot of both harts", async () => {
        assert.equal(vmJson<{ state: string }>("pause", `${tag}-a`).state, "paused");
        const before = vmJson<{ instret: number }>("metrics", `${tag}-a`).instret;
        await sleep(500);
        assert.equal(vmJson<{ instret: number }>("metrics", `${tag}-a`).instret, before, "a paused guest runs nothing");
        assert.equal(vmJson<{ state: string }>("resume", `${tag}-a`).state, "running");
        atSnapshot = await counter(ca);
        vmJson("snapshot", `${tag}-a`, snap);
        assert.equal((await ca.sh("echo $((6*7))")).trim(), "42");
        vmJson("stop", `${tag}-a`);
        assert.equal((await a.yun.exited).code, 0, a.yun.console);
      });

      let b: { yun: Yun; socket: string };
      await t.test("restore in a new process: two CPUs, the counter goes on", async () => {
        b = await headless(`${tag}-b`, "--restore", snap);
        const cb = await attach(b.socket);
        const v = await counter(cb);
        assert.ok(v >= atSnapshot && v <= atSnapshot + 3, `counter ${v} right after restore (was ${atSnapshot})`);
        assert.equal((await cb.sh("nproc")).trim(), "2");
        // Both restored harts take work (the counter loop is a job of this shell too: wait for the two).
        const out = await cb.sh(
          "w() { i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done; }; w & p=$!; w & q=$!; wait $p $q; echo ok",
        );
        assert.match(out, /ok/);
        await sleep(2000);
        assert.ok((await counter(cb)) > v, "the counter runs on");
        cb.close();
      });

      await t.test("a 2-vCPU guest capped at half a core, both vCPUs busy, uses half a core", async () => {
        const r = await cappedShare(children, `${tag}-c`, snap, 0.5, 2);
        t.diagnostic(
          `capped 2-vCPU guest used ${(r.share * 100).toFixed(1)} % of a core; the host had ${r.hostIdleCores.toFixed(2)} cores idle`,
        );
        assertCapped(r, 0.5);
      });

      await t.test("live migration of the 2-vCPU guest", async () => {
        const { dest, port, token } = await incoming(children, "--cpus", "2");
        const before = await counter(await attach(b.socket));
        const r = vmJson<{ downtimeMs: number; totalMs: number; rounds: number }>(
          "migrate",
          `${tag}-b`,
          port,
          "--token",
          token,
        );
        t.diagnostic(`migration: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms, ${r.rounds} rounds`);
        // Pre-copy: the pause is a small part of the migration (stop-and-copy would be all of it); the
        // downtime's figure is the benchmark's row (npm run bench -- --only lifecycle), not a timed test.
        assert.ok(
          r.downtimeMs < 1000 && r.downtimeMs < r.totalMs / 3,
          `downtime ${r.downtimeMs} ms of ${r.totalMs} ms`,
        );
        assert.equal((await b.yun.exited).code, 0, "the source exits once the VM left");
        const socket = await socketOf(`${tag}-b`, dest.child.pid!);
        const cd = await attach(socket);
        const v = await counter(cd);
        assert.ok(v >= before, `counter ${v} on the destination (was ${before})`);
        assert.equal((await cd.sh("nproc")).trim(), "2");
        await sleep(2500);
        assert.ok((await counter(cd)) > v, "the counter runs on at the destination");
        cd.close();
        vmJson("stop", `${tag}-b`);
        assert.equal((await dest.exited).code, 0);
      });
    } finally {
      for (const c of children) c.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

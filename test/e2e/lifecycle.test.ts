// VM lifecycle end to end, on one Debian boot: a headless VM driven through its control API
// (yun vm ...), a counter in the guest that must survive a snapshot + restore in a new process
// (full and incremental) and a live migration between two processes, a CPU cap, and snapshots
// that are corrupt, truncated or of another version being refused with nothing started.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  Yun,
  sleep,
  TEST_TIMEOUT,
  yunSync,
  vmJson,
  headless as headlessVm,
  attach,
  counter,
  incoming,
  socketOf,
  assertCapped,
  cappedShare,
} from "./harness.js";

const tag = `lc${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), "yun-lifecycle-"));
const children: Yun[] = [];

const yun = yunSync;
const headless = (name: string, ...args: string[]) => headlessVm(children, name, ...args);

test(
  "a VM's life: control API, snapshot and restore, live migration, CPU cap, bad snapshots",
  { timeout: TEST_TIMEOUT * 2 },
  async (t) => {
    try {
      const a = await headless(`${tag}-a`);
      const ca = await attach(a.socket);
      await ca.waitFor("the shell prompt", (s) => s.includes("~ # "), 200_000);

      await t.test("yun vm describe, pause and resume", async () => {
        const d = vmJson<{ state: string; memoryMiB: number; pid: number }>("describe", `${tag}-a`);
        assert.equal(d.state, "running");
        assert.equal(d.memoryMiB, 256);
        assert.equal(d.pid, a.yun.child.pid);
        assert.equal(vmJson<{ state: string }>("pause", `${tag}-a`).state, "paused");
        const before = vmJson<{ instret: number }>("metrics", `${tag}-a`).instret;
        await sleep(500);
        assert.equal(vmJson<{ instret: number }>("metrics", `${tag}-a`).instret, before, "a paused guest runs nothing");
        assert.equal(vmJson<{ state: string }>("resume", `${tag}-a`).state, "running");
        assert.equal((await ca.sh("echo $((6*7))")).trim(), "42");
        const bad = yun("vm", "resume", "nonexistent-vm");
        assert.equal(bad.code, 1);
        assert.match(bad.err, /no running VM named nonexistent-vm/);
      });

      await ca.sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 1; done &");
      await sleep(3000);
      const full = join(dir, "full");
      const incr = join(dir, "incr");
      let atSnapshot = 0;
      await t.test("full and incremental snapshots while the counter runs", async () => {
        const s1 = vmJson<{ pages: number; ms: number }>("snapshot", `${tag}-a`, full);
        assert.ok(s1.pages > 1000, `a full snapshot stores the pages in use (${s1.pages})`);
        await sleep(2000);
        atSnapshot = await counter(ca);
        const s2 = vmJson<{ pages: number }>("snapshot", `${tag}-a`, incr, "--incremental");
        assert.ok(s2.pages < s1.pages / 4, `incremental: ${s2.pages} pages vs ${s1.pages}`);
        assert.ok(statSync(join(incr, "memory.bin")).size < statSync(join(full, "memory.bin")).size / 4);
        assert.equal(vmJson<{ state: string }>("stop", `${tag}-a`).state, "stopped");
        const exit = await a.yun.exited;
        assert.equal(exit.code, 0, a.yun.console);
      });

      await t.test("bad snapshots are refused and nothing starts", () => {
        const cases: [string, (d: string) => void, RegExp][] = [
          [
            "corrupt memory",
            (d) => {
              const p = join(d, "memory.bin");
              const b = readFileSync(p);
              b[b.length - 100] ^= 0xff;
              writeFileSync(p, b);
            },
            /memory\.bin is corrupt \(checksum mismatch\)/,
          ],
          ["truncated memory", (d) => truncateSync(join(d, "memory.bin"), 1000), /truncated/],
          [
            "another version",
            (d) => {
              const p = join(d, "snapshot.json");
              writeFileSync(p, readFileSync(p, "utf8").replace('"version":1', '"version":99'));
            },
            /format version 99/,
          ],
          [
            "edited state",
            (d) => {
              const p = join(d, "snapshot.json");
              writeFileSync(p, readFileSync(p, "utf8").replace('"memoryMiB":256', '"memoryMiB":512'));
            },
            /snapshot\.json is corrupt/,
          ],
        ];
        for (const [what, damage, message] of cases) {
          const copy = join(dir, `bad-${what.replace(/ /g, "-")}`);
          cpSync(full, copy, { recursive: true });
          damage(copy);
          const r = yun("run", "--headless", "--restore", copy, "--name", `${tag}-bad`);
          assert.equal(r.code, 1, `${what}: exit ${r.code}: ${r.err}`);
          assert.match(r.err, message, what);
          assert.equal(r.err.trim().split("\n").length, 1, `${what}: one clear line: ${r.err}`);
          assert.ok(!yun("vm", "list").out.includes(`${tag}-bad`), `${what}: no VM started`);
        }
      });

      let b: { yun: Yun; socket: string };
      await t.test("restore in a new process: the counter goes on from its value", async (st) => {
        b = await headless(`${tag}-b`, "--restore", incr);
        await b.yun.waitFor("the restore message", (s) => /restored .* in \d+ ms/.test(s), 10_000);
        // How fast is the lifecycle benchmark's row (npm run bench -- --only lifecycle), not a test's.
        st.diagnostic(`restoring a 256 MiB guest took ${/in (\d+) ms/.exec(b.yun.stderr)![1]} ms`);
        const cb = await attach(b.socket);
        const v = await counter(cb);
        assert.ok(v >= atSnapshot && v <= atSnapshot + 3, `counter ${v} right after restore (was ${atSnapshot})`);
        await sleep(2500);
        assert.ok((await counter(cb)) > v, "the counter runs on");
        cb.close();
      });

      await t.test("live migration between two processes while the counter runs", async () => {
        const { dest, port, token } = await incoming(children);
        const before = await counter(await attach(b.socket));
        // A wrong token is refused on both sides; the destination waits on for the real source.
        const wrong = yun("vm", "migrate", `${tag}-b`, port, "--token", "x".repeat(43));
        assert.equal(wrong.code, 1, wrong.err);
        assert.match(wrong.err, /the destination refused: the migration token is wrong/);
        await dest.waitFor("the refusal", (s) => /refused a migration connection from .*token is wrong/.test(s), 5000);
        assert.equal(vmJson<{ state: string }>("describe", `${tag}-b`).state, "running", "the source runs on");
        const r = vmJson<{ downtimeMs: number; totalMs: number; rounds: number }>(
          "migrate",
          `${tag}-b`,
          port,
          "--token",
          token,
        );
        // Pre-copy: the pause is a small part of the migration (stop-and-copy would be all of it); the
        // downtime's figure is the benchmark's row (npm run bench -- --only lifecycle), not a timed test.
        assert.ok(
          r.downtimeMs < 1000 && r.downtimeMs < r.totalMs / 3,
          `downtime ${r.downtimeMs} ms of ${r.totalMs} ms`,
        );
        t.diagnostic(`migration: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms, ${r.rounds} rounds`);
        const exit = await b.yun.exited;
        assert.equal(exit.code, 0, "the source exits once the VM left");
        // The destination registers under the same name once the source is gone.
        const socket = await socketOf(`${tag}-b`, dest.child.pid!);
        const cd = await attach(socket);
        const v = await counter(cd);
        assert.ok(v >= before, `counter ${v} on the destination (was ${before})`);
        await sleep(2500);
        assert.ok((await counter(cd)) > v, "the counter runs on at the destination");
        cd.close();
        vmJson("stop", `${tag}-b`);
        assert.equal((await dest.exited).code, 0);
      });

      await t.test("a CPU cap of 0.25 holds a busy guest to a quarter of a core", async () => {
        const r = await cappedShare(children, `${tag}-c`, full, 0.25, 1);
        t.diagnostic(
          `capped guest used ${(r.share * 100).toFixed(1)} % of a core; the host had ${r.hostIdleCores.toFixed(2)} cores idle`,
        );
        assertCapped(r, 0.25);
      });
    } finally {
      for (const c of children) c.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

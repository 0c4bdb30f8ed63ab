// The guest agent end to end, on one debian-tiny boot: yun vm exec and the host client
// (src/vmm/agent.ts) over the VM's virtio-vsock: exit codes, a missing program, stdin, separate
// stdout and stderr, timeouts, background processes, files (10 MiB both ways), and an agent killed
// in the guest (a clear error, then init brings it back).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Yun, TEST_TIMEOUT, yunSync, headless } from "./harness.js";
import { AgentError, GuestAgent, type BackgroundProcess } from "../../src/vmm/agent.js";
import { findVm } from "../../src/vmm/registry.js";
import { imageDir, yunHome } from "../../src/images/paths.js";

const name = `agent${process.pid}`;
const children: Yun[] = [];

/** Why the test cannot run here (the image was built without the agent), or false. */
function skipReason(): string | false {
  try {
    const m = JSON.parse(readFileSync(join(imageDir("debian-tiny"), "manifest.json"), "utf8")) as {
      rootfs?: { agent?: string | null };
    };
    return m.rootfs?.agent
      ? false
      : "the debian-tiny image has no guest agent (yun image pull debian-tiny rebuilds it)";
  } catch {
    return "no debian-tiny image (yun image pull debian-tiny)";
  }
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

test(
  "the guest agent: exec, stdin and output streams, timeouts, background, files, restart",
  { timeout: TEST_TIMEOUT * 2, skip: skipReason() },
  async (t) => {
    try {
      await headless(children, name, "--no-net");
      const entry = findVm(join(yunHome(), "vms"), name);
      assert.ok(entry?.vsockSocket, "the VM registers its vsock socket");
      const agent = new GuestAgent(entry.vsockSocket);
      await agent.waitReady(200_000);

      await t.test("yun vm exec: output and exit code", () => {
        const hi = yunSync("vm", "exec", name, "--", "echo", "hi");
        assert.equal(hi.out, "hi\n");
        assert.equal(hi.code, 0);
        const three = yunSync("vm", "exec", name, "--", "sh", "-c", "echo bye >&2; exit 3");
        assert.equal(three.code, 3);
        assert.equal(three.err, "bye\n");
        const none = yunSync("vm", "exec", "no-such-vm", "--", "true");
        assert.equal(none.code, 1);
        assert.match(none.err, /no running VM named no-such-vm/);
      });

      await t.test("a missing program is exit code 127, not an error", async () => {
        const r = await agent.exec(["/no/such/program", "x"]);
        assert.equal(r.exitCode, 127);
        assert.match(r.stderr, /command not found/);
      });

      await t.test("stdin reaches cat; stdout and stderr arrive separately", async () => {
        const cat = await agent.exec(["cat"], { stdin: "line one\nline two\n" });
        assert.equal(cat.stdout, "line one\nline two\n");
        const out: string[] = [];
        const err: string[] = [];
        const r = await agent.exec(
          { shell: 'echo "to out"; echo "to err" >&2; echo "$GREETING from $(pwd)"' },
          {
            env: { GREETING: "hello" },
            cwd: "/tmp",
            onStdout: (b) => out.push(b.toString()),
            onStderr: (b) => err.push(b.toString()),
          },
        );
        assert.equal(r.exitCode, 0);
        assert.equal(out.join(""), "to out\nhello from /tmp\n");
        assert.equal(err.join(""), "to err\n");
      });

      await t.test("a timeout kills the command", async () => {
        const t0 = Date.now();
        const r = await agent.exec(["sleep", "60"], { timeoutMs: 1000 });
        assert.equal(r.timedOut, true);
        assert.equal(r.signal, 9);
        assert.ok(Date.now() - t0 < 30_000, `ended after ${Date.now() - t0} ms`);
      });

      await t.test("background processes: start, list, kill", async () => {
        const pid = await agent.background(["sleep", "300"]);
        assert.ok(pid > 1);
        const running = (await agent.processes()).find((p) => p.pid === pid);
        assert.equal(running?.running, true);
        assert.equal(running?.command, "sleep 300");
        await agent.kill(pid, 9);
        let after: BackgroundProcess | undefined = running;
        for (let i = 0; i < 50 && after?.running; i++) {
          await new Promise((r) => setTimeout(r, 100));
          after = (await agent.processes()).find((p) => p.pid === pid);
        }
        assert.equal(after?.running, false);
        assert.equal(after?.signal, 9);
        await assert.rejects(agent.kill(1), AgentError);
      });

      await t.test("files: 10 MiB written and read back, list, stat, mkdir, rename, remove", async () => {
        const data = randomBytes(10 * 1024 * 1024);
        const t0 = performance.now();
        assert.equal(await agent.writeFile("/tmp/big", data), data.length);
        const writeMs = performance.now() - t0;
        const t1 = performance.now();
        const back = await agent.readFile("/tmp/big");
        const readMs = performance.now() - t1;
        assert.equal(sha256(back), sha256(data));
        const guestSum = await agent.exec(["sha256sum", "/tmp/big"]);
        assert.equal(guestSum.stdout.split(" ")[0], sha256(data));
        t.diagnostic(
          `10 MiB: write ${(10 / (writeMs / 1000)).toFixed(1)} MiB/s, read ${(10 / (readMs / 1000)).toFixed(1)} MiB/s`,
        );

        await agent.mkdir("/tmp/d/e", { parents: true });
        await agent.writeFile("/tmp/d/e/f.txt", "contents", { mode: 0o600 });
        const st = await agent.stat("/tmp/d/e/f.txt");
        assert.deepEqual([st.type, st.size, st.mode], ["file", 8, 0o600]);
        await agent.rename("/tmp/d/e/f.txt", "/tmp/d/g.txt");
        assert.deepEqual(
          (await agent.list("/tmp/d")).map((e) => [e.name, e.type]),
          [
            ["e", "dir"],
            ["g.txt", "file"],
          ],
        );
        assert.equal((await agent.readFile("/tmp/d/g.txt")).toString(), "contents");
        await assert.rejects(agent.readFile("/tmp/d/missing"), /No such file or directory/);
        await assert.rejects(agent.remove("/tmp/d"), /not empty/i);
        await agent.remove("/tmp/d", { recursive: true });
        await assert.rejects(agent.stat("/tmp/d"), /No such file/);
      });

      await t.test("exec round trip of true (measured, not asserted)", async () => {
        const times: number[] = [];
        for (let i = 0; i < 20; i++) {
          const t0 = performance.now();
          assert.equal((await agent.exec(["true"])).exitCode, 0);
          times.push(performance.now() - t0);
        }
        times.sort((a, b) => a - b);
        t.diagnostic(`exec true: p50 ${times[10].toFixed(1)} ms, min ${times[0].toFixed(1)} ms`);
      });

      await t.test("after restoring a snapshot in place, the agent answers on the same socket", async () => {
        const snap = mkdtempSync(join(tmpdir(), "yun-agent-snap-"));
        try {
          await agent.writeFile("/tmp/before", "1");
          assert.equal(yunSync("vm", "snapshot", name, snap).code, 0);
          await agent.writeFile("/tmp/after", "2");
          const restored = yunSync("vm", "restore", name, snap);
          assert.equal(restored.code, 0, restored.err);
          await agent.waitReady(60_000);
          assert.equal((await agent.exec(["cat", "/tmp/before"])).stdout, "1");
          assert.deepEqual(
            (await agent.list("/tmp")).filter((e) => e.name === "after"),
            [],
            "the guest is the snapshot's",
          );
        } finally {
          rmSync(snap, { recursive: true, force: true });
        }
      });

      await t.test("an agent killed in the guest: the caller gets a clear error, init restarts it", async () => {
        await assert.rejects(
          agent.exec(["killall", "-9", "yun-agent"]),
          /closed the connection before the command finished/,
        );
        await agent.waitReady(60_000);
        assert.equal((await agent.exec(["echo", "back"])).stdout, "back\n");
      });
    } finally {
      for (const c of children) c.kill();
    }
  },
);

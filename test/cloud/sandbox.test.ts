/**
 * Sandboxes end to end, through the SDK (`yun/sdk`) against an in-process cloud: one template
 * built from debian-tiny (one boot), then every sandbox restored from it. Create, streamed run,
 * files in and out, pause and connect (a background process survives: memory was restored, not
 * rebooted), fork (sees the parent's files, then diverges), identity (urandom, machine-id, MAC),
 * network none, another project's 404, timeouts, kill.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Sandbox, YunApiError } from "yun/sdk";
import type { Template } from "../../src/cloud/types.js";
import { HAVE_DEBIAN, startCloud, tenant } from "./helpers.js";

const BIN = resolve(fileURLToPath(import.meta.url), "../../../../bin/yun.js");

/** The yun CLI as a child (async: the cloud it talks to runs in this process). */
function yun(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => done({ code, stdout, stderr }));
  });
}

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

async function waitFor<T>(what: string, ms: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

test(
  "sandboxes from a template: run, files, pause/connect, fork, identity, isolation, timeout, kill",
  { skip: !HAVE_DEBIAN && "no debian-tiny image (yun image pull debian-tiny)", timeout: 20 * 60_000 },
  async () => {
    const c = await startCloud();
    try {
      const a = await tenant(c, "sbx-a");
      const b = await tenant(c, "sbx-b");
      const conn = { server: c.url, token: a.memberToken };

      // One boot: the template (a command run through the agent lands in its disk).
      await a.member.request("POST", "/api/v1/templates", {
        body: { name: "tiny", from: "debian-tiny", run: ["echo built > /root/template-mark"] },
      });
      const tpl = await waitFor("the template build", 10 * 60_000, async () => {
        const t = await a.member.request<Template>("GET", "/api/v1/templates/tiny");
        if (t.state === "error") throw new Error(`the template build failed: ${t.error}`);
        return t.state === "ready" ? t : undefined;
      });
      assert.equal(tpl.image, "debian-tiny");

      // Create and a streamed run: the sandbox's envs, the template's file, stderr, the exit code.
      const s1 = await Sandbox.create({ ...conn, template: "tiny", timeoutMs: 600_000, envs: { GREETING: "hello" } });
      assert.equal(s1.details.state, "running");
      let streamed = "";
      const r = await s1.commands.run("echo $GREETING; cat /root/template-mark; echo oops >&2; exit 3", {
        onStdout: (d) => (streamed += d),
      });
      assert.equal(r.exitCode, 3);
      assert.equal(streamed, "hello\nbuilt\n");
      assert.equal(r.stderr, "oops\n");
      assert.equal((await s1.commands.run("echo $GREETING", { envs: { GREETING: "override" } })).stdout, "override\n");
      assert.equal((await s1.commands.run("pwd", { cwd: "/tmp" })).stdout, "/tmp\n");

      // Files in and out, byte for byte (and as the guest sees them).
      const data = randomBytes(300 * 1024 + 7);
      assert.equal((await s1.files.write("/root/in.bin", data)).bytes, data.length);
      const back = await s1.files.read("/root/in.bin", { format: "bytes" });
      assert.equal(sha256(back), sha256(data));
      assert.equal((await s1.commands.run("sha256sum /root/in.bin")).stdout.split(" ")[0], sha256(data));
      const entries = await s1.files.list("/root");
      assert.deepEqual(
        entries.filter((e) => e.name === "in.bin").map((e) => [e.type, e.size]),
        [["file", data.length]],
      );
      await assert.rejects(s1.files.read("/nonexistent"), /No such file/);

      // The CLI: exec streams and exits with the command's code; files get; list.
      const env = { YUN_SERVER: c.url, YUN_TOKEN: a.memberToken };
      const x = await yun(["sandbox", "exec", s1.sandboxId, "--", "sh", "-c", "echo out; echo err >&2; exit 7"], env);
      assert.deepEqual(x, { code: 7, stdout: "out\n", stderr: "err\n" });
      const tmp = mkdtempSync(join(tmpdir(), "yun-sbx-test-"));
      try {
        const got = await yun(["sandbox", "files", "get", s1.sandboxId, "/root/in.bin", join(tmp, "out.bin")], env);
        assert.equal(got.code, 0, got.stderr);
        assert.equal(sha256(readFileSync(join(tmp, "out.bin"))), sha256(data));
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
      const listed = await yun(["sandbox", "list"], env);
      assert.match(listed.stdout, new RegExp(`${s1.sandboxId}\\s+running`));
      const missing = await yun(["sandbox", "exec", "sbx-aaaaaaaaaa", "--", "true"], env);
      assert.deepEqual([missing.code, missing.stderr], [1, "yun: no sandbox sbx-aaaaaaaaaa\n"]);

      // Another project sees nothing.
      const foreign = await Sandbox.connect(s1.sandboxId, { server: c.url, token: b.memberToken }).catch((e) => e);
      assert.ok(foreign instanceof YunApiError && foreign.status === 404, String(foreign));
      assert.equal((await Sandbox.list({ server: c.url, token: b.memberToken })).length, 0);

      // A second sandbox of the same template, without network: its own identity.
      const s2 = await Sandbox.create({ ...conn, template: "tiny", network: "none", timeoutMs: 600_000 });
      const probe =
        "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /etc/machine-id; cat /sys/class/net/eth0/address";
      const [i1, i2] = await Promise.all([s1.commands.run(probe), s2.commands.run(probe)]);
      const [rand1, id1, mac1] = i1.stdout.trim().split("\n");
      const [rand2, id2, mac2] = i2.stdout.trim().split("\n");
      assert.match(rand1, /^[0-9a-f]{64}$/);
      assert.notEqual(rand1, rand2, "two sandboxes of one template read the same /dev/urandom bytes");
      assert.match(id1, /^[0-9a-f]{32}$/);
      assert.notEqual(id1, id2);
      assert.equal(mac1, s1.details.mac);
      assert.equal(mac2, s2.details.mac);
      assert.notEqual(mac1, mac2);

      // NAT reaches the host (the cloud's own port through the gateway); none does not.
      const port = new URL(c.url).port;
      const reach = `wget -q -T 5 -O /dev/null http://10.0.2.2:${port}/ && echo reached || echo unreachable`;
      assert.equal((await s1.commands.run(reach)).stdout, "reached\n");
      assert.equal((await s2.commands.run(reach)).stdout, "unreachable\n");

      // Quotas count sandboxes; the audit log has them.
      const q = await c.admin.getQuotas(a.project.id);
      assert.equal(q.used.instances, 2);

      // Pause and connect: the disk and the memory (a running process) come back.
      const bg = await s1.commands.run("sleep 100000", { background: true });
      assert.ok(bg.pid > 0);
      await s1.pause();
      assert.equal(s1.details.state, "paused");
      await assert.rejects(s1.commands.run("true"), (e: YunApiError) => e.status === 409);
      const s1b = await Sandbox.connect(s1.sandboxId, conn);
      assert.equal(s1b.details.state, "running");
      assert.equal((await s1b.commands.run(`kill -0 ${bg.pid} && echo alive`)).stdout, "alive\n");
      assert.equal((await s1b.commands.run("sha256sum /root/in.bin")).stdout.split(" ")[0], sha256(data));

      // Fork: the child sees the parent's file, then each writes its own.
      const s3 = await s1b.fork();
      assert.notEqual(s3.sandboxId, s1b.sandboxId);
      assert.equal((await s3.commands.run("sha256sum /root/in.bin")).stdout.split(" ")[0], sha256(data));
      await s1b.files.write("/root/who", "parent");
      await s3.files.write("/root/who", "child");
      assert.equal(await s1b.files.read("/root/who"), "parent");
      assert.equal(await s3.files.read("/root/who"), "child");
      const [f1, f3] = await Promise.all([s1b.commands.run(probe), s3.commands.run(probe)]);
      assert.notEqual(f1.stdout.split("\n")[0], f3.stdout.split("\n")[0], "a fork reads its parent's urandom bytes");
      assert.notEqual(f1.stdout.split("\n")[1], f3.stdout.split("\n")[1]);

      // A timeout ends a sandbox.
      await s2.setTimeout(1000);
      await waitFor("the timeout", 30_000, async () => ((await s2.isRunning()) ? undefined : true));
      await assert.rejects(s2.commands.run("true"), (e: YunApiError) => e.status === 404);

      // Kill: gone from the list, quota freed, its events in the audit log.
      await s1b.kill();
      await s3.kill();
      assert.equal((await Sandbox.list(conn)).length, 0);
      assert.equal((await c.admin.getQuotas(a.project.id)).used.instances, 0);
      const events = await a.member.request<{ items: { action: string; resource: string }[] }>("GET", "/api/v1/events");
      const actions = new Set(events.items.map((e) => e.action));
      for (const act of ["sandbox.create", "sandbox.pause", "sandbox.fork", "sandbox.kill"])
        assert.ok(actions.has(act), `no ${act} in the audit log`);
    } finally {
      await c.close();
    }
  },
);

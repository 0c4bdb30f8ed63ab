/**
 * Acceptance of issue 13's instances (the full Debian image): `yun keypair create k`, `yun instance
 * create --image debian --key k --user-data FILE web1`, then `yun instance ssh web1 -- hostname`
 * answers web1 through Debian's openssh-client; cloud-init applied the #cloud-config (packages:
 * hello, runcmd); after `yun instance reboot web1` the runcmd did not run again. Also times each
 * phase (create answered, first SSH command answered). Skips, saying why, without the full image.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { REAL_IMAGES, tempHome } from "./helpers.js";
import { fullImageTestsOff } from "../support/full-image.js";

const BIN = resolve(fileURLToPath(import.meta.url), "../../../../bin/yun.js");

/** Why the test cannot run here, or null. */
function missing(): string | null {
  const off = fullImageTestsOff();
  if (off) return off;
  const manifest = join(REAL_IMAGES, "debian", "manifest.json");
  if (!existsSync(manifest)) return `no full Debian image at ${join(REAL_IMAGES, "debian")} (yun image pull debian)`;
  const m = JSON.parse(readFileSync(manifest, "utf8")) as { packages?: { name: string }[] };
  if (!m.packages?.some((p) => p.name === "cloud-init"))
    return `the image at ${manifest} has no cloud-init: not the full image`;
  if (spawnSync("ssh", ["-V"]).error) return "no ssh client here (apt-get install openssh-client)";
  if (spawnSync("ssh-keygen", ["-?"]).error) return "no ssh-keygen here (apt-get install openssh-client)";
  return null;
}
const SKIP = missing();
if (SKIP) process.stderr.write(`debian-ssh: skipped: ${SKIP}\n`);

function yun(home: string, url: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, YUN_HOME: home, YUN_SERVER: url },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (code) => res({ code: code ?? 1, out, err }));
  });
}

/** `yun instance ssh web1 -- CMD`, retried until it answers (the guest boots, sshd starts, cloud-init runs). */
async function sshUntil(home: string, url: string, cmd: string, ok: (out: string) => boolean, ms: number) {
  const deadline = Date.now() + ms;
  let last = { code: -1, out: "", err: "" };
  while (Date.now() < deadline) {
    last = await yun(home, url, "instance", "ssh", "web1", "--", cmd);
    if (last.code === 0 && ok(last.out)) return last;
    await new Promise((r) => setTimeout(r, 3000));
  }
  throw new Error(`ssh web1 -- ${cmd}: no answer in ${ms / 1000} s; last: ${JSON.stringify(last)}`);
}

test(
  "full image: create --key, instance ssh answers the host name, cloud-config ran once, not again after reboot",
  { skip: SKIP ?? false, timeout: 1_800_000 },
  async () => {
    const home = tempHome();
    let serve: ChildProcess | null = null;
    let url = "";
    try {
      serve = spawn(process.execPath, [BIN, "serve", "--port", "0"], {
        env: { ...process.env, YUN_HOME: home },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let log = "";
      serve.stdout!.on("data", (d: Buffer) => (log += d.toString()));
      serve.stderr!.on("data", (d: Buffer) => (log += d.toString()));
      const deadline = Date.now() + 30_000;
      while (!url) {
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(log);
        if (m) url = m[1];
        else if (Date.now() > deadline) throw new Error(`yun serve did not start: ${log}`);
        else await new Promise((r) => setTimeout(r, 100));
      }
      let r = await yun(home, url, "keypair", "create", "k");
      assert.equal(r.code, 0, r.err);
      assert.ok(existsSync(join(home, "keys", "k")), "the private key stays on this machine");
      const userData = join(home, "user-data");
      writeFileSync(
        userData,
        "#cloud-config\npackages: [hello]\nruncmd:\n  - [sh, -c, 'echo ran >> /var/lib/yun-runcmd.log']\n",
      );
      const t0 = Date.now();
      r = await yun(
        home,
        url,
        "instance",
        "create",
        "--image",
        "debian",
        "--key",
        "k",
        "--user-data",
        userData,
        "web1",
      );
      assert.equal(r.code, 0, r.err + r.out);
      const tCreated = Date.now();
      const first = await sshUntil(home, url, "hostname", (o) => o.trim() === "web1", 900_000);
      const tSsh = Date.now();
      assert.equal(first.out.trim(), "web1");
      // cloud-init finishes its final stage after sshd is up: wait for it, then check its work.
      await sshUntil(
        home,
        url,
        "cloud-init status --wait >/dev/null 2>&1; cloud-init status",
        (o) => /done/.test(o),
        900_000,
      );
      r = await yun(home, url, "instance", "ssh", "web1", "--", "hello");
      assert.equal(r.out.trim(), "Hello, world!", r.err);
      r = await yun(home, url, "instance", "ssh", "web1", "--", "cat /var/lib/yun-runcmd.log");
      assert.equal(r.out, "ran\n", r.err);

      r = await yun(home, url, "instance", "reboot", "web1");
      assert.equal(r.code, 0, r.err);
      await new Promise((res) => setTimeout(res, 5000));
      await sshUntil(
        home,
        url,
        "cloud-init status --wait >/dev/null 2>&1; cloud-init status",
        (o) => /done/.test(o),
        900_000,
      );
      r = await yun(home, url, "instance", "ssh", "web1", "--", "cat /var/lib/yun-runcmd.log");
      assert.equal(r.out, "ran\n", "runcmd ran again after the reboot: " + r.out + r.err);
      process.stderr.write(
        `debian-ssh: create answered in ${((tCreated - t0) / 1000).toFixed(1)} s, first SSH command in ${((tSsh - tCreated) / 1000).toFixed(1)} s more\n`,
      );
    } finally {
      // The VM monitor outlives the daemon (its own process group): delete the instance first.
      if (url) await yun(home, url, "instance", "delete", "web1");
      serve?.kill("SIGTERM");
      if (serve) await new Promise((res) => serve!.once("exit", res));
      rmSync(home, { recursive: true, force: true });
    }
  },
);

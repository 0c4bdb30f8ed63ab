import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { joinNetwork, networkSocketPath, type NetworkLink } from "../../src/net/hub.js";
import { parseMac } from "../../src/net/ethernet.js";

const dir = mkdtempSync(join(tmpdir(), "yun-net-"));
const links: NetworkLink[] = [];
after(() => {
  for (const l of links) l.close();
  rmSync(dir, { recursive: true, force: true });
});

async function join_(name: string, idleMs = 300): Promise<NetworkLink> {
  const l = await joinNetwork(name, dir, { idleMs });
  links.push(l);
  return l;
}

function frame(dst: string, src: string, tag: string): Uint8Array {
  const body = Buffer.from(tag);
  const f = new Uint8Array(14 + Math.max(46, body.length));
  f.set(parseMac(dst), 0);
  f.set(parseMac(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  f.set(body, 14);
  return f;
}

function tagOf(f: Uint8Array): string {
  return Buffer.from(f.subarray(14)).toString().replace(/\0+$/, "");
}

/** Collects tags a link receives. */
function inbox(link: NetworkLink): string[] {
  const got: string[] = [];
  link.attach((f) => {
    got.push(tagOf(f));
    return true;
  });
  return got;
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const A = "52:54:00:00:01:0a";
const B = "52:54:00:00:01:0b";
const C = "52:54:00:00:01:0c";

test("two clients of one network exchange frames through a daemon; another network sees nothing", async () => {
  const a = await join_("lan");
  const b = await join_("lan");
  const c = await join_("other");
  assert.equal(a.daemonPid, b.daemonPid, "one daemon per network");
  assert.notEqual(c.daemonPid, a.daemonPid, "a different name is a different daemon");
  assert.ok(existsSync(networkSocketPath(dir, "lan")));
  const gotA = inbox(a);
  const gotB = inbox(b);
  const gotC = inbox(c);
  a.send(frame("ff:ff:ff:ff:ff:ff", A, "hello from a"));
  await until(() => gotB.length === 1, "b to get the broadcast");
  b.send(frame(A, B, "unicast to a"));
  await until(() => gotA.length === 1, "a to get b's reply");
  // A burst of full-size frames arrives whole and in order.
  const big: string[] = [];
  for (let i = 0; i < 300; i++) big.push(`frame ${i} `.padEnd(1400, "x"));
  for (const t of big) a.send(frame(B, A, t));
  await until(() => gotB.length === 301, "the burst");
  assert.deepEqual(gotB, ["hello from a", ...big]);
  c.send(frame("ff:ff:ff:ff:ff:ff", C, "from the other network"));
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(gotA, ["unicast to a"]);
  assert.deepEqual(gotC, [], "frames never cross networks");
  assert.equal(gotB.includes("from the other network"), false);
});

test("the daemon exits by itself after its last client leaves", async () => {
  const a = await join_("ephemeral", 300);
  const b = await join_("ephemeral", 300);
  const pid = a.daemonPid;
  assert.ok(alive(pid));
  a.close();
  await new Promise((r) => setTimeout(r, 600));
  assert.ok(alive(pid), "one client is still there");
  b.close();
  await until(() => !alive(pid), "the daemon to exit", 5000);
  assert.equal(existsSync(networkSocketPath(dir, "ephemeral")), false, "its socket file is gone");
});

test("clients starting at once in separate processes end up on one daemon", async () => {
  const hub = pathToFileURL(join(import.meta.dirname, "../../src/net/hub.js")).href;
  const script = `
    const { joinNetwork } = await import(${JSON.stringify(hub)});
    const l = await joinNetwork("race", ${JSON.stringify(dir)}, { idleMs: 300 });
    process.stdout.write(String(l.daemonPid));
    setTimeout(() => { l.close(); }, 300);`;
  const run = () =>
    new Promise<string>((resolve, reject) => {
      const p = spawn(process.execPath, ["--input-type=module", "-e", script], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`client exited with ${code}`))));
    });
  const pids = await Promise.all([run(), run(), run()]);
  assert.equal(new Set(pids).size, 1, `daemon pids ${pids.join(", ")}`);
  assert.match(pids[0], /^\d+$/);
});

test("a stale socket file is replaced, and clients reconnect when the daemon dies", async () => {
  writeFileSync(networkSocketPath(dir, "stale"), "");
  const a = await join_("stale", 300);
  const b = await join_("stale", 300);
  const gotB = inbox(b);
  const old = a.daemonPid;
  process.kill(old, "SIGKILL");
  await until(() => a.connected && b.connected && a.daemonPid !== old && b.daemonPid !== old, "both to reconnect");
  assert.equal(a.daemonPid, b.daemonPid);
  a.send(frame("ff:ff:ff:ff:ff:ff", A, "after the restart"));
  await until(() => gotB.includes("after the restart"), "a frame through the new daemon");
});

test("bad network names and unusable directories are refused with a clear message", async () => {
  await assert.rejects(joinNetwork("../etc", dir), /invalid network name "\.\.\/etc"/);
  await assert.rejects(joinNetwork("", dir), /invalid network name ""/);
  await assert.rejects(joinNetwork("x".repeat(33), dir), /invalid network name/);
  await assert.rejects(joinNetwork("ok", join(dir, "d".repeat(120))), /over the 107-byte limit/);
  writeFileSync(join(dir, "file"), "");
  await assert.rejects(joinNetwork("ok", join(dir, "file", "net")), /cannot join network "ok": cannot create/);
});

/**
 * The VM monitor without Linux: a tiny "kernel" counts in a RAM word forever. Snapshots (full and
 * incremental) restore it exactly, live migration over loopback moves it, the control API answers
 * over its socket and HTTP, and bad snapshots are refused before anything is built.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:net";
import { VmMonitor, ConsoleHistory, CONSOLE_HISTORY_BYTES, type MonitorOptions } from "../../src/vmm/monitor.js";
import { ControlServer } from "../../src/vmm/control.js";
import { MonitorConnection, MonitorError } from "../../src/vmm/client.js";
import {
  listenForMigration,
  receiveMigration,
  migrateTo,
  MigrationError,
  newMigrationToken,
  type IncomingMachine,
} from "../../src/vmm/migrate.js";
import { SnapshotError } from "../../src/vmm/snapshot.js";
import type { VmSpec } from "../../src/vmm/spec.js";
import * as A from "../support/rv-asm.js";
import { counter, counterKernel } from "../support/counter-kernel.js";

const T0 = 5;
const T1 = 6;
const dir = mkdtempSync(join(tmpdir(), "yun-monitor-"));
const kernelPath = join(dir, "Image");
writeFileSync(kernelPath, counterKernel());

const spec = (name: string): VmSpec => ({
  name,
  memoryMiB: 64,
  cpus: 1,
  engine: "jit",
  append: "",
  kernel: kernelPath,
  initrd: null,
  firmware: null,
  disks: [],
  net: { kind: "none" },
  mac: "52:54:00:00:00:01",
  cpuCap: null,
});

const opts = (): MonitorOptions => ({
  netDir: join(dir, "net"),
  runDir: join(dir, "run"),
  ownedDir: null,
  log: () => {},
  echo: null,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("snapshot and restore: the counter and the hart go on exactly where they were", async () => {
  const { monitor: a } = await VmMonitor.boot(spec("snap"), opts());
  const running = a.run();
  await sleep(200);
  assert.ok(counter(a) > 1000, "the guest counts");
  a.pause();
  const paused = counter(a);
  await sleep(100);
  assert.equal(counter(a), paused, "a paused guest does not run");
  const instret = a.machine.hart.instret;
  const full = a.snapshot(join(dir, "s-full"), false);
  assert.ok(full.pages >= 2 && full.pages < 64, `a 64 MiB guest using two pages stores few (${full.pages})`);
  assert.equal(a.state, "paused", "a snapshot of a paused VM leaves it paused");
  a.resume();
  await sleep(100);
  a.pause();
  const later = counter(a);
  const incr = a.snapshot(join(dir, "s-incr"), true);
  assert.ok(incr.pages >= 1 && incr.pages <= 4, `incremental: only the pages written since (${incr.pages})`);
  a.stop();
  await running;

  const { monitor: b } = await VmMonitor.restore(join(dir, "s-full"), opts(), {});
  assert.equal(counter(b), paused);
  assert.equal(b.machine.hart.instret, instret);
  const { monitor: c } = await VmMonitor.restore(join(dir, "s-incr"), opts(), { name: "other" });
  assert.equal(counter(c), later, "the incremental snapshot applies on top of its parent");
  assert.equal(c.spec.name, "other");
  const runC = c.run();
  await sleep(100);
  assert.ok(counter(c) > later, "the restored guest runs on");
  c.stop();
  await runC;
  b.machine.close();
});

test("bad snapshots are refused with a sentence before anything is built", async () => {
  const { monitor: a } = await VmMonitor.boot(spec("bad"), opts());
  a.snapshot(join(dir, "b-full"), false);
  a.machine.close();
  const json = join(dir, "b-full", "snapshot.json");
  const mem = join(dir, "b-full", "memory.bin");
  const goodJson = readFileSync(json);
  const goodMem = readFileSync(mem);
  const expectRefused = async (re: RegExp) => {
    await assert.rejects(
      VmMonitor.restore(join(dir, "b-full"), opts(), {}),
      (e: Error) => e instanceof SnapshotError && re.test(e.message),
    );
  };
  const m2 = Buffer.from(goodMem);
  m2[m2.length - 1] ^= 1;
  writeFileSync(mem, m2);
  await expectRefused(/memory\.bin is corrupt/);
  writeFileSync(mem, goodMem.subarray(0, 100));
  await expectRefused(/truncated/);
  writeFileSync(mem, goodMem);
  writeFileSync(json, goodJson.toString().replace('"version":1', '"version":2'));
  await expectRefused(/version 2, but this Yun reads version 1/);
  writeFileSync(json, goodJson.toString().replace('"memoryMiB":64', '"memoryMiB":65'));
  await expectRefused(/corrupt \(checksum mismatch\)/);
  writeFileSync(json, "{not json");
  await expectRefused(/not JSON/);
  rmSync(json);
  await expectRefused(/holds no snapshot/);
  writeFileSync(json, goodJson);
  // An incremental snapshot whose parent was replaced by another snapshot.
  const { monitor: p } = await VmMonitor.boot(spec("parent"), opts());
  p.snapshot(join(dir, "p-full"), false);
  p.snapshot(join(dir, "p-incr"), true);
  p.machine.close();
  rmSync(join(dir, "p-full"), { recursive: true });
  const { monitor: q } = await VmMonitor.boot(spec("parent"), opts());
  q.snapshot(join(dir, "p-full"), false);
  q.machine.close();
  await assert.rejects(VmMonitor.restore(join(dir, "p-incr"), opts(), {}), /was replaced by another snapshot/);
  assert.throws(() => q.snapshot(join(dir, "p-full"), false), /is not empty/);
});

/** What a destination for spec(name) offers: the same machine, from its own "command line". */
const machineFor = (s: VmSpec): IncomingMachine => ({
  memoryMiB: s.memoryMiB,
  cpus: s.cpus,
  engine: s.engine,
  append: s.append,
  kernel: s.kernel,
  initrd: s.initrd,
  firmware: s.firmware,
  disks: [],
  net: s.net,
  cpuCap: s.cpuCap,
});

test("live migration over loopback moves the running guest; a failed one leaves the source running", async () => {
  const { monitor: src } = await VmMonitor.boot(spec("mig"), opts());
  const runSrc = src.run();
  await sleep(100);
  const token = newMigrationToken();
  // Nobody listening: the source runs on.
  const { server: closed, port: deadPort } = await listenForMigration("127.0.0.1", 0);
  closed.close();
  await assert.rejects(migrateTo(src, { host: "127.0.0.1", port: deadPort, token }), MigrationError);
  assert.equal(src.state, "running");
  const c0 = counter(src);
  await sleep(50);
  assert.ok(counter(src) > c0, "still running after the failed attempt");

  // Cancelled once the destination heard from the source: both sides give up, the source runs on.
  const cancel = new AbortController();
  const l1 = await listenForMigration("127.0.0.1", 0);
  const doomed = receiveMigration(l1, {
    ...opts(),
    token,
    machine: machineFor(spec("mig")),
    onStage: () => cancel.abort(),
  }).then(
    () => null,
    (e: unknown) => e,
  );
  await assert.rejects(
    migrateTo(src, { host: "127.0.0.1", port: l1.port, token }, cancel.signal),
    /migration cancelled; the VM runs on here/,
  );
  assert.ok((await doomed) instanceof MigrationError, "the destination gives up too");
  assert.equal(src.state, "running");
  const c1 = counter(src);
  await sleep(50);
  assert.ok(counter(src) > c1, "still running after the cancelled attempt");

  const listener = await listenForMigration("127.0.0.1", 0);
  const incoming = receiveMigration(listener, {
    ...opts(),
    token,
    machine: { ...machineFor(spec("mig")), name: "mig" },
  });
  const result = await migrateTo(src, { host: "127.0.0.1", port: listener.port, token });
  await runSrc;
  assert.equal(src.state, "stopped");
  const { monitor: dst } = await incoming;
  // Pre-copy: the pause is a small part of the migration (stop-and-copy would be all of it); the
  // downtime's figure is the benchmark's row (npm run bench -- --only lifecycle), not a timed test.
  assert.ok(
    result.downtimeMs < 1000 && result.downtimeMs < result.totalMs / 3,
    `downtime ${result.downtimeMs} ms of ${result.totalMs} ms`,
  );
  assert.ok(result.rounds >= 1);
  const at = counter(dst);
  assert.ok(at >= c0, "the destination has the guest's memory");
  const runDst = dst.run();
  await sleep(100);
  assert.ok(counter(dst) > at, "and runs it");
  dst.stop();
  await runDst;
});

test("the control API: socket and HTTP, errors that keep the connection", async () => {
  const { monitor: m } = await VmMonitor.boot(spec("api"), opts());
  const running = m.run();
  const control = new ControlServer(m);
  const sock = join(dir, "api.sock");
  await control.listenSocket(sock);
  const port = await control.listenHttp(0, "s3cret-token");
  const c = await MonitorConnection.connect(sock);
  assert.equal((await c.request<{ name: string; state: string }>("describe")).state, "running");
  assert.equal((await c.request<{ state: string }>("pause")).state, "paused");
  await assert.rejects(
    c.request("frobnicate"),
    (e: Error) => e instanceof MonitorError && /unknown operation/.test(e.message),
  );
  await assert.rejects(c.request("snapshot", {}), /"dir" must be a non-empty string/);
  await assert.rejects(c.request("migrate", { host: "127.0.0.1", port: 99999 }), /port number/);
  await assert.rejects(c.request("migrate", { host: "127.0.0.1", port: 9 }), /"token" must be a non-empty string/);
  await assert.rejects(
    c.request("migrate", { host: "127.0.0.1", port: 9, token: "short" }),
    /at least 128 random bits/,
  );
  assert.equal((await c.request<{ state: string }>("resume")).state, "running", "the connection survived the errors");
  const metrics = await c.request<{ instret: number; exits: { mmio: number } }>("metrics");
  assert.ok(metrics.instret > 0);

  // watch: one line per state change after the ok.
  const watcher = connect(sock);
  let events = "";
  watcher.on("data", (b: Buffer) => (events += b.toString()));
  watcher.write('{"id":1,"op":"watch"}\n');
  for (let i = 0; i < 100 && !events.includes("\n"); i++) await sleep(10);
  await c.request("pause");
  await c.request("resume");
  for (let i = 0; i < 100 && events.split("\n").length < 4; i++) await sleep(10);
  const lines = events
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(lines[0], { id: 1, ok: true, result: { state: "running" } });
  assert.deepEqual(lines.slice(1), [
    { event: "state", state: "paused" },
    { event: "state", state: "running" },
  ]);
  watcher.destroy();

  // A malformed line gets an error answer, and the next request is still served.
  const raw = connect(sock);
  let text = "";
  raw.on("data", (b: Buffer) => (text += b.toString()));
  raw.write('this is not json\n{"id":7,"op":"describe"}\n');
  for (let i = 0; i < 100 && text.split("\n").length < 3; i++) await sleep(10);
  const [first, second] = text.split("\n").map((l) => (l ? JSON.parse(l) : null));
  assert.equal(first.ok, false);
  assert.match(first.error, /one JSON object per line/);
  assert.equal(second.id, 7);
  assert.equal(second.ok, true);
  raw.destroy();

  const http = async (method: string, path: string, body?: string, token = "s3cret-token") => {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, {
      method,
      body,
      headers: { authorization: `Bearer ${token}` },
    });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  };
  assert.equal((await http("GET", "/vm", undefined, "wrong")).status, 401, "HTTP needs the token");
  assert.equal((await fetch(`http://127.0.0.1:${port}/vm`)).status, 401);
  assert.equal((await http("GET", "/vm")).json.name, "api");
  assert.equal((await http("POST", "/vm/pause")).json.state, "paused");
  assert.equal((await http("POST", "/vm/pause")).status, 200, "pausing twice is fine");
  assert.equal((await http("GET", "/vm/pause")).status, 405);
  assert.equal((await http("GET", "/nope")).status, 404);
  assert.equal((await http("POST", "/vm/snapshot", "[1,2]")).status, 400);
  const snap = await http("POST", "/vm/snapshot", JSON.stringify({ dir: join(dir, "api-snap") }));
  assert.equal(snap.status, 200);
  assert.ok((snap.json.pages as number) > 0);
  assert.equal((await http("POST", "/vm/stop")).json.state, "stopped");
  await running;
  assert.equal((await http("POST", "/vm/resume")).status, 409, "a stopped VM cannot resume");
  c.close();
  await control.close();
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test("the console history keeps the last 1 MiB in order, across wrap-around and oversized writes", () => {
  const h = new ConsoleHistory();
  assert.deepEqual(h.contents(), new Uint8Array(0));
  h.append(Uint8Array.from([1, 2, 3]));
  assert.deepEqual(h.contents(), Uint8Array.from([1, 2, 3]));
  const chunk = new Uint8Array(700 * 1024).map((_, i) => i & 0xff);
  h.append(chunk);
  h.append(chunk); // 1.4 MiB + 3 bytes written: the oldest 0.4 MiB are gone
  const kept = h.contents();
  assert.equal(kept.length, CONSOLE_HISTORY_BYTES);
  assert.deepEqual(kept.subarray(kept.length - chunk.length), chunk, "the newest bytes last");
  const huge = new Uint8Array(CONSOLE_HISTORY_BYTES + 5).map((_, i) => (i * 7) & 0xff);
  h.append(huge);
  assert.deepEqual(h.contents(), huge.subarray(5));
});

test("restore in place: the running VM becomes the snapshot's; a bad snapshot changes nothing", async () => {
  const { monitor: m } = await VmMonitor.boot(spec("inplace"), opts());
  const running = m.run();
  await sleep(100);
  m.pause();
  const at = counter(m);
  m.snapshot(join(dir, "inplace"), false);
  m.resume();
  await sleep(150);
  const later = counter(m);
  assert.ok(later > at);
  await assert.rejects(m.restoreInPlace(join(dir, "no-such-snapshot")), /holds no snapshot/);
  await sleep(50);
  assert.ok(counter(m) > later, "still the same VM, running on");
  const r = await m.restoreInPlace(join(dir, "inplace"));
  assert.ok(r.ms >= 0);
  const back = counter(m);
  assert.ok(back >= at && back < later, `counter ${back}: back at the snapshot's ${at} (was ${later})`);
  await sleep(50);
  assert.ok(counter(m) > back, "and running from there");
  assert.equal(m.state, "running");
  m.stop();
  await running;
});

test("reset boots the machine again: fresh RAM, the counter starts over; metrics carry on", async () => {
  const { monitor: m } = await VmMonitor.boot(spec("reset"), opts());
  const running = m.run();
  await sleep(150);
  const before = counter(m);
  const instretBefore = m.metrics().instret;
  assert.ok(before > 1000);
  const old = m.machine;
  m.reset();
  for (let i = 0; i < 100 && m.machine === old; i++) await sleep(10);
  assert.notEqual(m.machine, old, "a new machine");
  await sleep(20);
  assert.ok(counter(m) < before, `the counter started over (${counter(m)} < ${before})`);
  assert.ok(m.metrics().instret >= instretBefore, "instructions retired accumulate across resets");
  assert.equal(m.state, "running");
  m.stop();
  await running;
});

/** A Linux Image header, then a loop storing "x" to the UART forever. */
function printerKernel(): Uint8Array {
  const image = new Uint8Array(4096);
  const dv = new DataView(image.buffer);
  dv.setUint32(0, A.jal(0, 64), true);
  image.set(new TextEncoder().encode("RISCV"), 0x30);
  dv.setUint32(0x38, 0x05435352, true);
  const code = [A.lui(T0, 0x10000), A.addi(T1, 0, 0x78), A.sb(T1, 0, T0), A.jal(0, -4)];
  code.forEach((w, i) => dv.setUint32(64 + 4 * i, w, true));
  return image;
}

test("a guest held by a CPU cap, always in debt, still has its console output flushed", async () => {
  const path = join(dir, "printer");
  writeFileSync(path, printerKernel());
  const { monitor: m } = await VmMonitor.boot({ ...spec("printer"), kernel: path, cpuCap: 0.1 }, opts());
  const running = m.run();
  try {
    await sleep(400);
    const out = m.history.contents();
    assert.ok(out.length > 1000, `console output arrived under the cap (${out.length} bytes)`);
    assert.ok(out.every((b) => b === 0x78));
  } finally {
    m.stop();
    await running;
  }
});

/**
 * Live migration's handshake, played by an attacker. The destination is a real receiveMigration in
 * this process (root); the attacker is another local user (nobody) speaking the wire format by hand
 * (test/support/migration-peer.ts), or a source that knows the token and lies in its description.
 * Connections without the token or with a wrong one are refused on both sides and the real source
 * migrates afterwards; a description naming host files is never acted on; a second connection
 * during a migration is refused at once; TLS with a CA or a pinned certificate; and random or
 * mutated frames (fast-check, fixed seed) always end in one clear error, never a crash or a hang.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, createHmac, randomBytes, X509Certificate } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { VmMonitor, type MonitorOptions } from "../../src/vmm/monitor.js";
import {
  listenForMigration,
  receiveMigration,
  migrateTo,
  MigrationError,
  newMigrationToken,
  type IncomingMachine,
  type IncomingOptions,
} from "../../src/vmm/migrate.js";
import type { VmSpec } from "../../src/vmm/spec.js";
import { createRaw } from "../../src/storage/image.js";
import { counter, counterKernel } from "../support/counter-kernel.js";

const PEER = fileURLToPath(new URL("../support/migration-peer.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "yun-migrate-"));
chmodSync(dir, 0o755); // the attacker (nobody) runs nothing from here, but may look
const kernelPath = join(dir, "Image");
writeFileSync(kernelPath, counterKernel());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const spec = (name: string, disks: VmSpec["disks"] = []): VmSpec => ({
  name,
  memoryMiB: 64,
  cpus: 1,
  engine: "jit",
  append: "",
  kernel: kernelPath,
  initrd: null,
  firmware: null,
  disks,
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

/** The destination's own machine: the counter kernel, 64 MiB, no network, these disks. */
const machine = (disks: IncomingMachine["disks"] = []): IncomingMachine => ({
  memoryMiB: 64,
  cpus: 1,
  engine: "jit",
  append: "",
  kernel: kernelPath,
  initrd: null,
  firmware: null,
  disks,
  net: { kind: "none" },
  cpuCap: null,
});

const listeners: import("node:net").Server[] = [];

/** Waits until the monitor's guest has counted (it runs), and returns the count. */
async function counted(m: VmMonitor): Promise<number> {
  for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(10)) {
    if (counter(m) > 0) return counter(m);
  }
  throw new Error("the guest did not start counting within 20 s");
}

/** A destination waiting on a fresh listener; `stages` collects what it reports. */
async function destination(
  token: string,
  extra: Partial<IncomingOptions> = {},
  listen: Parameters<typeof listenForMigration>[2] = {},
) {
  const listener = await listenForMigration("127.0.0.1", 0, { handshakeTimeoutMs: 1000, ...listen });
  listeners.push(listener.server);
  const stages: string[] = [];
  let settled = false;
  const result = receiveMigration(listener, {
    ...opts(),
    token,
    machine: machine(),
    onStage: (stage, detail) => stages.push(`${stage}: ${detail}`),
    ...extra,
  }).finally(() => (settled = true));
  result.catch(() => {}); // looked at by the test when it matters
  return { listener, port: listener.port, stages, result, settled: () => settled };
}

/** Runs the attacker peer as user nobody; resolves with what it saw. */
function asNobody(
  port: number,
  mode: string,
  ...args: string[]
): { seen: Promise<{ frames: { type: number; json: { error?: string } }[]; closedMs: number }>; poke: () => void } {
  const child = spawn(
    "setpriv",
    ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, PEER, String(port), mode, ...args],
    { stdio: ["pipe", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stdout.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr.on("data", (b: Buffer) => (err += b.toString()));
  const seen = new Promise<{ frames: { type: number; json: { error?: string } }[]; closedMs: number }>(
    (resolve, reject) =>
      child.on("close", (code) => {
        if (code !== 0 || out === "") reject(new Error(`the peer failed (${code}): ${err}`));
        else resolve(JSON.parse(out) as { frames: { type: number; json: { error?: string } }[]; closedMs: number });
      }),
  );
  return { seen, poke: () => child.stdin.write("go\n") };
}

const T_ERROR = 9;
const T_CHALLENGE = 8;

/** A file whose access time is set far in the past, so that any read of it would move it. */
function canary(name: string, bytes = 1024 * 1024): { path: string; untouched: () => void } {
  const path = join(dir, name);
  writeFileSync(path, randomBytes(bytes));
  const old = new Date("2001-01-01T00:00:00Z");
  utimesSync(path, old, old);
  const hash = createHash("sha256").update(readFileSync(path)).digest("hex");
  utimesSync(path, old, old); // reading it for the hash moved it
  return {
    path,
    untouched: () => {
      assert.equal(statSync(path).atimeMs, old.getTime(), `${name} was read`);
      assert.equal(statSync(path).mtimeMs, old.getTime(), `${name} was written`);
      // (comparing contents would read it; its mtime says it was not written)
      void hash;
    },
  };
}

const shadowHash = (): string => createHash("sha256").update(readFileSync("/etc/shadow")).digest("hex");

test("another user without the token, or with a wrong one, is refused on both sides; the real source then migrates", async () => {
  const token = newMigrationToken();
  const d = await destination(token);
  const bait = canary("bait.img");
  const shadow = shadowHash();

  // Silence: closed after the handshake timeout, with the reason.
  const silent = await asNobody(d.port, "silent").seen;
  assert.equal(silent.frames[0].type, T_CHALLENGE, "the destination speaks first: a challenge");
  assert.equal(silent.frames.at(-1)!.type, T_ERROR);
  assert.match(silent.frames.at(-1)!.json.error!, /no proof of the token within 1 s/);
  assert.ok(silent.closedMs >= 900 && silent.closedMs < 3000, `closed after ${silent.closedMs} ms`);

  for (const [mode, args, reason] of [
    ["garbage", [], /protocol error/],
    ["no-proof", [bait.path, "/etc/shadow"], /the migration token is wrong/],
    ["proof", [newMigrationToken(), bait.path, "/etc/shadow"], /the migration token is wrong/],
  ] as const) {
    const seen = await asNobody(d.port, mode, ...args).seen;
    const last = seen.frames.at(-1)!;
    assert.equal(last.type, T_ERROR, `${mode}: refused with an ERROR frame`);
    assert.match(last.json.error!, reason, mode);
    assert.ok(seen.closedMs < 2000, `${mode}: closed at once (${seen.closedMs} ms)`);
  }
  assert.equal(d.settled(), false, "the destination still waits for the real source");
  assert.equal(d.stages.filter((s) => s.startsWith("refused: 127.0.0.1:")).length, 4, d.stages.join("\n"));
  assert.ok(
    d.stages.every((s) => s.startsWith("refused")),
    "nothing but refusals so far",
  );
  bait.untouched();
  assert.equal(shadowHash(), shadow);

  // The real source, with the token.
  const { monitor: src } = await VmMonitor.boot(spec("real"), opts());
  const runSrc = src.run();
  await sleep(100);
  const result = await migrateTo(src, { host: "127.0.0.1", port: d.port, token });
  await runSrc;
  const { monitor: dst } = await d.result;
  assert.ok(result.pages > 0);
  const at = counter(dst);
  const runDst = dst.run();
  await sleep(100);
  assert.ok(counter(dst) > at, "the destination runs the VM");
  dst.stop();
  await runDst;
  // The token was single-use: the listener is gone.
  const { monitor: late } = await VmMonitor.boot(spec("late"), opts());
  await assert.rejects(
    migrateTo(late, { host: "127.0.0.1", port: d.port, token }),
    /cannot reach 127\.0\.0\.1:\d+: connect ECONNREFUSED/,
  );
  late.machine.close();
});

test("a source that knows the token but names host files: never opened, never renamed; the destination's own disks are used", async () => {
  const srcDisk = join(dir, "src-disk.img");
  createRaw(srcDisk, 1024 * 1024);
  const ownDisk = join(dir, "own-disk.img");
  createRaw(ownDisk, 1024 * 1024);
  const bait = canary("named.img");
  const shadow = shadowHash();
  const { monitor: src } = await VmMonitor.boot(
    spec("liar", [{ path: srcDisk, format: "raw", readOnly: false }]),
    opts(),
  );
  const runSrc = src.run();
  await sleep(50);

  const attempt = async (lie: Partial<VmSpec>, ownedDir: string | null, disks: IncomingMachine["disks"]) => {
    const token = newMigrationToken();
    const d = await destination(token, { machine: machine(disks) });
    src.spec = { ...spec("liar"), ...lie };
    if (ownedDir !== null) src.adoptOwnedDir(ownedDir);
    else src.releaseOwnedDir();
    const outcome = await migrateTo(src, { host: "127.0.0.1", port: d.port, token }).then(
      (r) => r,
      (e: Error) => e,
    );
    return { d, outcome };
  };

  // The source says its disk is the bait file; the destination names none of its own: refused.
  let { d, outcome } = await attempt({ disks: [{ path: bait.path, format: "raw", readOnly: false }] }, null, []);
  assert.ok(outcome instanceof MigrationError);
  assert.match(outcome.message, /the destination refused: the VM's disk \/dev\/vda does not move with it: name it/);
  await assert.rejects(d.result, /refused the incoming VM/);
  assert.equal(src.state, "running", "the source runs on");

  // It says a host file is a throwaway disk in its "directory of throwaway disks": the destination
  // would rename that directory into its own and open the file. (A stand-in for /etc and
  // /etc/shadow: were the check broken, the test must not move the host's /etc.) Refused; the
  // directory is where it was, the file unread.
  const hostDir = join(dir, "etc");
  mkdirSync(hostDir);
  const hostFile = canary("etc/shadow", 4096);
  const before = statSync(hostDir).ino;
  ({ d, outcome } = await attempt({ disks: [{ path: hostFile.path, format: "raw", readOnly: false }] }, hostDir, []));
  assert.ok(outcome instanceof MigrationError);
  assert.match(outcome.message, /throwaway disk .*\/etc\/shadow is not in this destination's run directory/);
  assert.equal(statSync(hostDir).ino, before);
  hostFile.untouched();
  assert.equal(shadowHash(), shadow);

  // A throwaway directory of the right shape, but another user's: refused.
  const foreign = join(dir, "run", "4242-abcdef");
  mkdirSync(foreign, { recursive: true });
  writeFileSync(join(foreign, "root.qcow2"), "");
  spawnSync("chown", ["-R", "nobody:nogroup", foreign]);
  ({ d, outcome } = await attempt(
    { disks: [{ path: join(foreign, "root.qcow2"), format: "qcow2", readOnly: false }] },
    foreign,
    [],
  ));
  assert.ok(outcome instanceof MigrationError);
  assert.match(outcome.message, /belongs to another user/);

  // A shape that does not fit: refused with what to change.
  ({ d, outcome } = await attempt(
    { memoryMiB: 128, disks: [{ path: srcDisk, format: "raw", readOnly: false }] },
    null,
    [],
  ));
  assert.ok(outcome instanceof MigrationError);
  assert.match(
    outcome.message,
    /the VM has 128 MiB of memory and this destination 64 MiB \(start it with --memory 128\)/,
  );

  // The destination names its own disk of the right size: the migration goes through on it.
  ({ d, outcome } = await attempt({ disks: [{ path: bait.path, format: "raw", readOnly: false }] }, null, [
    { path: ownDisk, format: "raw", readOnly: false },
  ]));
  assert.ok(!(outcome instanceof Error), String(outcome));
  await runSrc;
  const { monitor: dst } = await d.result;
  assert.deepEqual(
    (dst.describe().disks as { path: string }[]).map((x) => x.path),
    [ownDisk],
    "the destination's own disk",
  );
  dst.machine.close();
  bait.untouched();
});

test("one at a time: a second connection during a migration is refused at once, and the migration completes", async () => {
  const token = newMigrationToken();
  const { monitor: src } = await VmMonitor.boot(spec("busy"), opts());
  // Pages in use from 8 MiB up, so that the copy takes a while.
  src.machine.bus.ram.fill(0xa5, 8 << 20);
  const runSrc = src.run();
  await sleep(50);
  let probe: ReturnType<typeof asNobody> | null = null;
  let d: Awaited<ReturnType<typeof destination>> | null = null;
  d = await destination(token, {
    onStage: (stage) => {
      if (stage === "connected") probe!.poke();
    },
  });
  probe = asNobody(d.port, "probe-on-stdin");
  await sleep(300); // the peer is up and waiting for its cue
  const result = await migrateTo(src, { host: "127.0.0.1", port: d.port, token });
  const seen = await probe.seen;
  assert.deepEqual(
    seen.frames.map((f) => [f.type, f.json.error]),
    [[T_ERROR, "a migration is already in progress"]],
  );
  assert.ok(seen.closedMs < 1000, `refused in ${seen.closedMs} ms`);
  await runSrc;
  const { monitor: dst } = await d.result;
  assert.ok(result.bytes > 50e6, `${result.bytes} bytes`);
  assert.equal(dst.machine.bus.ram[40 << 20], 0xa5, "the pages arrived");
  dst.machine.close();
});

test("TLS: a pinned or CA-signed certificate carries the migration; a wrong one, or none, is refused and the listener waits on", async () => {
  const made = (name: string) => {
    const cert = join(dir, `${name}.crt`);
    const key = join(dir, `${name}.key`);
    const r = spawnSync("openssl", [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout",
      key,
      "-out",
      cert,
    ]);
    assert.equal(r.status, 0, r.stderr?.toString());
    return { cert: readFileSync(cert, "utf8"), key: readFileSync(key, "utf8") };
  };
  const good = made("good");
  const other = made("other");
  const fingerprint = new X509Certificate(good.cert).fingerprint256;
  for (const how of ["ca", "fingerprint"] as const) {
    const token = newMigrationToken();
    const d = await destination(token, {}, { tls: good });
    const { monitor: src } = await VmMonitor.boot(spec(`tls-${how}`), opts());
    const runSrc = src.run();
    // The guest must have run before the copy: under load its first slice can come after a fixed
    // sleep, and a migration of a guest that never ran carries a counter of 0.
    const before = await counted(src);
    const to = (tls?: { ca?: string; fingerprint?: string }) => ({ host: "127.0.0.1", port: d.port, token, tls });
    await assert.rejects(migrateTo(src, to()), /before the handshake \(if the destination uses TLS, give --tls-ca/);
    await assert.rejects(
      migrateTo(src, to({ ca: other.cert })),
      /cannot reach 127\.0\.0\.1:\d+ over TLS: .*certificate/,
    );
    await assert.rejects(
      migrateTo(src, to({ fingerprint: new X509Certificate(other.cert).fingerprint256 })),
      /is not the pinned one/,
    );
    assert.equal(src.state, "running");
    assert.equal(d.settled(), false, "the destination waits on");
    const result = await migrateTo(src, to(how === "ca" ? { ca: good.cert } : { fingerprint }));
    assert.ok(result.pages > 0);
    await runSrc;
    const { monitor: dst } = await d.result;
    assert.ok(counter(dst) >= before, `the destination carries the count (${counter(dst)} < ${before})`);
    dst.machine.close();
  }
});

// ------------------------------------------------------------------------------ property-based

/** Sends `bytes` on a fresh connection; resolves with the frames received and whether it was closed. */
function exchange(
  port: number,
  answer: (challenge: Buffer | null) => Buffer[],
  timeoutMs: number,
  endAfter = false,
): Promise<{ frames: { type: number; payload: Buffer }[]; closed: boolean }> {
  return new Promise((resolve) => {
    const frames: { type: number; payload: Buffer }[] = [];
    let buf = Buffer.alloc(0);
    let answered = false;
    const s: Socket = connect({ host: "127.0.0.1", port });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ frames, closed: false });
    }, timeoutMs);
    s.on("data", (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32LE(1)) {
        const len = buf.readUInt32LE(1);
        frames.push({ type: buf[0], payload: buf.subarray(5, 5 + len) });
        buf = buf.subarray(5 + len);
        if (!answered && frames.length === 1) {
          answered = true;
          const nonce = frames[0].type === T_CHALLENGE ? JSON.parse(frames[0].payload.toString()).nonce : "";
          for (const part of answer(Buffer.from(nonce, "base64"))) if (s.writable) s.write(part);
          if (endAfter) s.end();
        }
      }
    });
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve({ frames, closed: true });
    });
  });
}

function frame(type: number, payload: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeUInt32LE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

const goodHello = (): Record<string, unknown> => ({
  version: 2,
  spec: spec("fuzz"),
  disks: [],
  ownedDir: null,
  sourcePid: 1234,
  nonce: randomBytes(32).toString("base64"),
});

/** Random, framed and mutated inputs (everything but a correct proof of the token). */
const unproved = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((b) => [Buffer.from(b)]),
  fc
    .array(fc.record({ type: fc.integer({ min: 0, max: 12 }), payload: fc.uint8Array({ maxLength: 200 }) }), {
      maxLength: 4,
    })
    .map((fs) => fs.map((f) => frame(f.type, f.payload))),
  // A proper HELLO whose proof or body was changed in one byte, or cut short.
  fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }), cut: fc.boolean() }).map((m) => ({ m })),
  // A length that announces more than the destination takes before the handshake.
  fc.integer({ min: 64 * 1024 + 1, max: 0xffffffff }).map((len) => {
    const h = Buffer.alloc(5);
    h[0] = 1;
    h.writeUInt32LE(len, 1);
    return [h];
  }),
);

test("property: unproved input (random, framed, mutated) never crashes or holds the destination; the real source migrates after", async () => {
  const token = newMigrationToken();
  const d = await destination(token, {}, { handshakeTimeoutMs: 300 });
  let cases = 0;
  await fc.assert(
    fc.asyncProperty(unproved, async (input) => {
      cases++;
      const t0 = Date.now();
      const got = await exchange(
        d.port,
        (nonce) => {
          if (Array.isArray(input)) return input;
          const body = Buffer.from(JSON.stringify(goodHello()));
          const proof = createHmac("sha256", token)
            .update("yun migration hello\0")
            .update(nonce!)
            .update(body)
            .digest();
          const whole = Buffer.concat([proof, body]);
          const at = input.m.at % whole.length;
          const bad = input.m.cut ? whole.subarray(0, at) : Buffer.from(whole);
          if (!input.m.cut) bad[at] ^= input.m.xor;
          return [frame(1, bad)];
        },
        3000,
      );
      assert.ok(got.closed, `closed within 3 s (${Date.now() - t0} ms)`);
      assert.equal(got.frames[0]?.type, T_CHALLENGE);
      const last = got.frames.at(-1)!;
      assert.equal(last.type, T_ERROR, "ends with an ERROR frame");
      const why = (JSON.parse(last.payload.toString()) as { error: string }).error;
      assert.match(why, /^(the migration token is wrong|no proof of the token within 0\.3 s|protocol error: [^\n]+)$/);
      assert.equal(d.settled(), false, "the destination waits on");
    }),
    { seed: 22, numRuns: 120 },
  );
  assert.equal(cases, 120);
  const { monitor: src } = await VmMonitor.boot(spec("after-fuzz"), opts());
  const runSrc = src.run();
  await migrateTo(src, { host: "127.0.0.1", port: d.port, token });
  await runSrc;
  (await d.result).monitor.machine.close();
});

/** JSON values, for mutating the HELLO's fields. */
const anyJson = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 30 }),
  fc.constant("/etc/shadow"),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 3 }),
);

test("property: a proved source sending mutated HELLOs or random frames ends in one clear error, never a crash or a hang", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        field: fc.constantFrom(
          "version",
          "spec",
          "disks",
          "ownedDir",
          "sourcePid",
          "name",
          "memoryMiB",
          "specDisks",
          "none",
        ),
        value: anyJson,
        after: fc.array(
          fc.record({ type: fc.integer({ min: 0, max: 10 }), payload: fc.uint8Array({ maxLength: 64 }) }),
          { maxLength: 3 },
        ),
        pages: fc.option(fc.record({ count: fc.integer({ min: 0, max: 3 }), page: fc.nat() }), { nil: undefined }),
      }),
      async (c) => {
        const token = newMigrationToken();
        const d = await destination(token, { machine: { ...machine(), memoryMiB: 16 } });
        const h = goodHello();
        const s = { ...(h.spec as VmSpec), memoryMiB: 16 } as Record<string, unknown>;
        h.spec = s;
        if (c.field === "name" || c.field === "memoryMiB") s[c.field] = c.value;
        else if (c.field === "specDisks") s.disks = c.value;
        else if (c.field !== "none") h[c.field] = c.value;
        const body = Buffer.from(JSON.stringify(h));
        const after: Buffer[] = [];
        if (c.pages) {
          const { count, page } = c.pages;
          const p = Buffer.alloc(4 + 4 * count + 4096 * count);
          p.writeUInt32LE(count, 0);
          for (let i = 0; i < count; i++) p.writeUInt32LE(page + i, 4 + 4 * i);
          after.push(frame(3, p));
        }
        for (const f of c.after) after.push(frame(f.type, f.payload));
        const t0 = Date.now();
        await exchange(
          d.port,
          (nonce) => {
            const proof = createHmac("sha256", token)
              .update("yun migration hello\0")
              .update(nonce!)
              .update(body)
              .digest();
            return [frame(1, Buffer.concat([proof, body])), ...after];
          },
          5000,
          true,
        );
        const outcome = await Promise.race([
          d.result.then(
            () => "resolved",
            (e: unknown) => e,
          ),
          sleep(5000).then(() => "hung"),
        ]);
        assert.ok(
          outcome instanceof MigrationError,
          `a MigrationError, not ${String(outcome)} (${Date.now() - t0} ms)`,
        );
        assert.match(outcome.message, /^[^\n]{10,}$/, "one clear line");
      },
    ),
    { seed: 22, numRuns: 200 },
  );
});

test.after(() => {
  for (const l of listeners) l.close();
  rmSync(dir, { recursive: true, force: true });
});

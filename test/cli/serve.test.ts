// `yun serve` beyond loopback: HTTPS and WSS with a certificate made by openssl here, the CLI as
// its client (YUN_SERVER=https://..., the certificate trusted through NODE_EXTRA_CA_CERTS), and
// the refusal to serve plain HTTP on a non-loopback address without --insecure.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { ROOT, YUN } from "../e2e/harness.js";
import { isLoopback, upgradeOriginAllowed } from "../../src/cloud/security.js";
import { localUrl, readServeRecord, serveRecordPath } from "../../src/cloud/endpoint.js";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { listen } from "../../src/cloud/server.js";

let dir: string;
let cert: string;
let key: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "yun-tls-"));
  cert = join(dir, "cert.pem");
  key = join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" }); // prettier-ignore
});
after(() => rmSync(dir, { recursive: true, force: true }));

interface Served {
  child: ChildProcess;
  out: () => string;
  exited: Promise<number>;
}

/** Starts `yun serve ARGS` with a fresh YUN_HOME; resolves once it listens (or has exited). */
function serve(home: string, args: string[]): Promise<Served & { url?: string }> {
  const child = spawn(process.execPath, [YUN, "serve", "--port", "0", ...args], {
    cwd: ROOT,
    env: { ...process.env, YUN_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number>((r) => child.once("exit", (code) => r(code ?? -1)));
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      const m = /listening on (https?:\/\/\S+?)\/ /.exec(out);
      if (m) {
        clearInterval(timer);
        resolve({ child, out: () => out, exited, url: m[1] });
      }
    }, 50);
    void exited.then(() => {
      clearInterval(timer);
      resolve({ child, out: () => out, exited });
    });
  });
}

/** `yun ARGS` as a child process; answers its exit code and output. */
function yun(env: NodeJS.ProcessEnv, args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [YUN, ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("close", (code) => resolve({ code: code ?? -1, out, err }));
  });
}

test("yun serve --tls-cert/--tls-key serves HTTPS and WSS; the CLI trusts it through NODE_EXTRA_CA_CERTS", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-tls-home-"));
  const s = await serve(home, ["--listen", "127.0.0.1", "--tls-cert", cert, "--tls-key", key]);
  try {
    assert.ok(s.url, s.out());
    assert.match(s.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const token = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
    const env = { YUN_HOME: home, YUN_SERVER: s.url, YUN_TOKEN: token };

    // Trusted: the CLI works over HTTPS.
    let r = await yun({ ...env, NODE_EXTRA_CA_CERTS: cert }, [
      "instance",
      "create",
      "t1",
      "--image",
      "debian-tiny",
      "--flavor",
      "tiny",
      "--stopped",
    ]);
    assert.equal(r.code, 1, "no debian image in this YUN_HOME: the API answers (over TLS) with a 404");
    assert.match(r.err, /no image debian/);
    r = await yun({ ...env, NODE_EXTRA_CA_CERTS: cert }, ["flavor", "list"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^flv-\S+ +tiny /m);
    // Not trusted: refused with the reason and the way out.
    r = await yun(env, ["flavor", "list"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /certificate/);
    assert.match(r.err, /NODE_EXTRA_CA_CERTS/);
    // Plain HTTP to the TLS port gets no API answer.
    const plain = await fetch(s.url.replace("https:", "http:") + "/api/v1/whoami").then(
      (res) => res.status,
      () => "refused",
    );
    assert.notEqual(plain, 200);

    // WSS: the console handshake goes through TLS to the upgrade handler (401 for a bad token).
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${s.url!.replace("https:", "wss:")}/api/v1/instances/x/console`, ["bearer.nope"], {
        ca: readFileSync(cert),
      });
      ws.on("unexpected-response", (_q, res) => resolve(res.statusCode ?? 0));
      ws.on("error", () => resolve(-1));
    });
    assert.equal(status, 401);
    // The security headers come over HTTPS too.
    r = await yun({ ...env, NODE_EXTRA_CA_CERTS: cert }, ["instance", "list", "--json"]);
    assert.equal(r.code, 0, r.err);
  } finally {
    s.child.kill("SIGTERM");
    await s.exited;
    rmSync(home, { recursive: true, force: true });
  }
});

test("yun serve refuses plain HTTP beyond loopback without --insecure, and bad TLS files", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-tls-home-"));
  try {
    let s = await serve(home, ["--listen", "0.0.0.0"]);
    assert.equal(await s.exited, 2);
    assert.match(
      s.out(),
      /--listen 0\.0\.0\.0 is reachable from other machines.*--tls-cert FILE --tls-key FILE.*--insecure/,
    );

    s = await serve(home, ["--listen", "0.0.0.0", "--tls-cert", cert]);
    assert.equal(await s.exited, 2);
    assert.match(s.out(), /--tls-cert and --tls-key go together/);

    writeFileSync(join(dir, "junk.pem"), "not a certificate\n");
    s = await serve(home, ["--tls-cert", join(dir, "junk.pem"), "--tls-key", key]);
    assert.equal(await s.exited, 2);
    assert.match(s.out(), /junk\.pem is not a PEM certificate/);

    s = await serve(home, ["--tls-cert", cert, "--tls-key", join(dir, "missing.pem")]);
    assert.equal(await s.exited, 2);
    assert.match(s.out(), /cannot read the private key .*missing\.pem: ENOENT/);

    // With --insecure it serves plain HTTP on all addresses.
    s = await serve(home, ["--listen", "0.0.0.0", "--insecure"]);
    assert.ok(s.url, s.out());
    assert.match(s.url, /^http:\/\/0\.0\.0\.0:\d+$/);
    const res = await fetch(s.url.replace("0.0.0.0", "127.0.0.1") + "/api/openapi.json");
    assert.equal(res.status, 200);
    // The CLI reaches a daemon on every address through loopback.
    assert.equal(readServeRecord(home)?.url, s.url.replace("0.0.0.0", "127.0.0.1"));
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test("loopback addresses are told apart from the others", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
    assert.ok(isLoopback(h), h);
  for (const h of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "example.org", "128.0.0.1"])
    assert.ok(!isLoopback(h), h);
});

test("a WebSocket's Origin must be the server itself: scheme, host and port", () => {
  const req = (origin: string | undefined, host: string | undefined) =>
    ({ headers: { origin, host } }) as unknown as import("node:http").IncomingMessage;
  assert.ok(upgradeOriginAllowed(req(undefined, "h:1"), false), "no Origin: not a browser");
  assert.ok(upgradeOriginAllowed(req("http://h:1", "h:1"), false));
  assert.ok(upgradeOriginAllowed(req("https://H", "h:443"), true), "default port and case");
  assert.ok(upgradeOriginAllowed(req("http://h", "h:80"), false));
  assert.ok(!upgradeOriginAllowed(req("http://h:1", "h:1"), true), "http page, https server");
  assert.ok(!upgradeOriginAllowed(req("https://h:1", "h:1"), false));
  assert.ok(!upgradeOriginAllowed(req("http://h:2", "h:1"), false));
  assert.ok(!upgradeOriginAllowed(req("http://evil.example", "h:1"), false));
  assert.ok(!upgradeOriginAllowed(req("null", "h:1"), false));
  assert.ok(!upgradeOriginAllowed(req("http://h:1", undefined), false), "no Host");
});

test("the CLI finds a yun serve on another port through $YUN_HOME/cloud/serve.json; flags and YUN_SERVER come first", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-serve-home-"));
  const record = serveRecordPath(home);
  // No YUN_SERVER, no token in the environment: what a new user's shell has.
  const env = { YUN_HOME: home, YUN_SERVER: undefined, YUN_TOKEN: undefined };
  try {
    const s = await serve(home, []); // --port 0: a port nobody could guess
    assert.ok(s.url, s.out());
    assert.ok(existsSync(record), "yun serve recorded its address");
    assert.equal(statSync(record).mode & 0o777, 0o600, "the record is owner-only");
    const rec = JSON.parse(readFileSync(record, "utf8")) as { pid: number; url: string; tls: boolean };
    assert.deepEqual([rec.pid, rec.url, rec.tls], [s.child.pid, s.url, false]);

    let r = await yun(env, ["flavor", "list"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^flv-\S+ +tiny /m);
    // --server, then YUN_SERVER, win over the record.
    r = await yun(env, ["flavor", "list", "--server", "http://127.0.0.1:1"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot reach the Yun server at http:\/\/127\.0\.0\.1:1:/);
    r = await yun({ ...env, YUN_SERVER: "http://127.0.0.1:2" }, ["flavor", "list"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot reach the Yun server at http:\/\/127\.0\.0\.1:2:/);

    // A second daemon on the same state is refused, naming the first.
    const twin = await serve(home, []);
    assert.equal(await twin.exited, 1);
    assert.match(twin.out(), new RegExp(`another yun serve \\(pid ${s.child.pid}\\) already serves .* at ${s.url}/`));

    // A clean stop removes the record.
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0);
    assert.ok(!existsSync(record), "the record is gone after yun serve stopped");

    // Killed, the daemon leaves its record: the dead pid makes it stale; the CLI drops it and a
    // new daemon starts.
    const killed = await serve(home, []);
    assert.ok(killed.url, killed.out());
    killed.child.kill("SIGKILL");
    await killed.exited;
    assert.ok(existsSync(record));
    r = await yun(env, ["flavor", "list"]);
    assert.doesNotMatch(r.err, new RegExp(killed.url!.replace(/[.:/]/g, "\\$&")), "not the dead daemon's address");
    assert.ok(!existsSync(record), "the stale record was removed");
    const again = await serve(home, []);
    assert.ok(again.url, again.out());
    again.child.kill("SIGTERM");
    assert.equal(await again.exited, 0);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test("a serve record is stale when its pid is gone or is not yun serve; local URLs go through loopback", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-serve-home-"));
  try {
    mkdirSync(join(home, "cloud"));
    const write = (pid: number): void =>
      writeFileSync(serveRecordPath(home), JSON.stringify({ pid, url: "http://127.0.0.1:9", tls: false }));
    const sleeper = spawn("sleep", ["30"]);
    try {
      write(sleeper.pid!); // alive, but not yun serve (a reused pid)
      assert.equal(readServeRecord(home), null);
      assert.ok(!existsSync(serveRecordPath(home)));
    } finally {
      sleeper.kill();
    }
    write(2 ** 22 + 1); // above Linux's pid_max: no such process
    assert.equal(readServeRecord(home), null);
    writeFileSync(serveRecordPath(home), "{not json");
    assert.equal(readServeRecord(home), null);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
  assert.equal(localUrl("0.0.0.0", 8470, false), "http://127.0.0.1:8470");
  assert.equal(localUrl("::", 8470, true), "https://[::1]:8470");
  assert.equal(localUrl("::1", 1, false), "http://[::1]:1");
  assert.equal(localUrl("10.0.0.5", 443, true), "https://10.0.0.5:443");
});

test("the CLI waits for a yun serve that is still starting (yun serve & yun instance create ...)", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-serve-home-"));
  // Stands in for a daemon busy re-attaching to its VMs: a live process named like yun serve.
  const daemon = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)", "serve"]);
  const cloud = new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0 });
  await cloud.bootstrap();
  const server = await listen(cloud, "127.0.0.1", 0);
  const record = (state: string, url: string): void =>
    writeFileSync(serveRecordPath(home), JSON.stringify({ pid: daemon.pid, state, url, tls: false }));
  try {
    record("starting", "");
    const started = Date.now();
    const cli = yun({ YUN_HOME: home, YUN_SERVER: undefined, YUN_TOKEN: undefined }, ["flavor", "list"]);
    await new Promise((r) => setTimeout(r, 1500));
    record("listening", `http://127.0.0.1:${server.port}`);
    const r = await cli;
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^flv-\S+ +tiny /m);
    assert.ok(Date.now() - started >= 1500, "the CLI waited for the daemon to listen");
  } finally {
    daemon.kill();
    await server.close();
    cloud.close();
    rmSync(home, { recursive: true, force: true });
  }
});

// The monitor's command-line surface without booting anything: bad flags and arguments of
// `yun run` (monitor flags) and `yun vm` exit 2 with one line that says what is wrong; a VM that
// is not running is exit 1; a snapshot that is not one is refused before anything starts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const home = mkdtempSync(join(tmpdir(), "yun-vmcli-"));

function yun(...args: string[]) {
  const r = spawnSync(process.execPath, [join(ROOT, "bin", "yun.js"), ...args], {
    encoding: "utf8",
    env: { ...process.env, YUN_HOME: home },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// Token files: one readable by other users, one too short to be a secret.
const open = join(home, "open.token");
writeFileSync(open, "x".repeat(43) + "\n", { mode: 0o644 });
const short = join(home, "short.token");
writeFileSync(short, "abc\n", { mode: 0o600 });

test("yun run: monitor flags are checked before anything starts", () => {
  const cases: [string[], RegExp][] = [
    [["--cpus", "2", "--firmware", "none"], /--cpus 2 needs the OpenSBI firmware/],
    [["--cpus", "9"], /--cpus takes a vCPU count 1-8, got "9"/],
    [["--cpu-cap", "0"], /--cpu-cap takes a fraction of a host core/],
    [["--cpu-cap", "1.5"], /at most --cpus \(1\)/],
    [["--api-port", "70000"], /--api-port takes a port number/],
    [["--incoming", "x:y"], /--incoming takes \[ADDR:\]PORT, got "x:y"/],
    [["--restore", "/tmp/x", "--memory", "512"], /--memory cannot go with --restore/],
    [["--restore", "/tmp/x", "--incoming", "1"], /--restore and --incoming contradict each other/],
    [["--incoming-token-file", "/tmp/x"], /--incoming-token-file goes with --incoming/],
    [["--incoming", "0", "--incoming-tls-cert", "/tmp/c"], /--incoming-tls-cert and --incoming-tls-key go together/],
    [["--incoming", "0", "--incoming-token-file", open], /token file .* is open to other users \(chmod 600 /],
    [["--incoming", "0", "--incoming-token-file", short], /at least 128 random bits/],
    [["--incoming", "0", "--incoming-token-file", join(home, "none")], /cannot read token file .*: ENOENT/],
  ];
  for (const [args, message] of cases) {
    const r = yun("run", ...args);
    assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code} ${r.err}`);
    assert.match(r.err, message, args.join(" "));
    assert.equal(r.err.trim().split("\n").length, 1, `${args.join(" ")}: one line: ${r.err}`);
  }
});

test("yun run --restore refuses what is not a snapshot, with one line and exit 1", () => {
  const notSnap = join(home, "empty");
  mkdirSync(notSnap);
  let r = yun("run", "--headless", "--restore", notSnap);
  assert.equal(r.code, 1);
  assert.match(r.err, /holds no snapshot \(no snapshot\.json\)/);
  const bad = join(home, "bad");
  mkdirSync(bad);
  writeFileSync(
    join(bad, "snapshot.json"),
    JSON.stringify({ format: "yun-snapshot", version: 7, checksum: "", body: {} }),
  );
  r = yun("run", "--headless", "--restore", bad);
  assert.equal(r.code, 1);
  assert.match(r.err, /format version 7, but this Yun reads version 1/);
});

test("yun vm: usage errors exit 2, a VM that is not running exits 1", () => {
  assert.equal(yun("vm").code, 2);
  assert.equal(yun("vm", "--help").code, 0);
  const cases: [string[], RegExp][] = [
    [["vm", "snapshot", "web"], /snapshot needs NAME and DIR/],
    [["vm", "migrate", "web", "notaport"], /migrate needs NAME and \[HOST:\]PORT/],
    [["vm", "migrate", "web", "7000"], /migrate needs the destination's one-time token: --token T or --token-file F/],
    [["vm", "migrate", "web", "7000", "--token", "short"], /--token: .*at least 128 random bits/],
    [["vm", "migrate", "web", "7000", "--token-file", open], /is open to other users/],
    [["vm", "migrate", "web", "7000", "--token", "x".repeat(43), "--tls-fingerprint", "ab:cd"], /64 hex digits/],
    [
      ["vm", "migrate", "web", "7000", "--token", "x".repeat(43), "--tls-ca", join(home, "none.pem")],
      /--tls-ca: cannot read/,
    ],
    [["vm", "pause", "web", "--token", "x".repeat(43)], /--token goes with migrate/],
    [["vm", "frob", "web"], /unknown command "frob"/],
    [["vm", "pause"], /a VM NAME is required/],
    [["vm", "list", "--bogus"], /Unknown option '--bogus'/],
  ];
  for (const [args, message] of cases) {
    const r = yun(...args);
    assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code} ${r.err}`);
    assert.match(r.err, message, args.join(" "));
  }
  const r = yun("vm", "stop", "nothing-here");
  assert.equal(r.code, 1);
  assert.match(r.err, /no running VM named nothing-here \(see yun vm list\)/);
  assert.equal(yun("vm", "list").out, "no VMs are running\n");
  assert.deepEqual(JSON.parse(yun("vm", "list", "--json").out), []);
});

test.after(() => rmSync(home, { recursive: true, force: true }));

// Live migration through the real CLI, without Linux: a VM whose "kernel" counts in RAM
// (test/support/counter-kernel.ts) moves from one `yun run` to another over TLS, the token handed
// over in a file. A destination whose flags do not fit is refused with what to change, a wrong token
// is refused on both sides, and the real source then migrates and its VM runs on at the destination.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { X509Certificate } from "node:crypto";
import { counterKernel } from "../support/counter-kernel.js";
import { newMigrationToken } from "../../src/vmm/migrate.js";

const YUN = join(fileURLToPath(new URL("../../../", import.meta.url)), "bin", "yun.js");
const home = mkdtempSync(join(tmpdir(), "yun-migcli-"));
const env = { ...process.env, YUN_HOME: home };
const kernel = join(home, "Image");
writeFileSync(kernel, counterKernel());
const machine = ["--kernel", kernel, "--firmware", "none", "--no-net", "--memory", "64"];

function yun(...args: string[]) {
  const r = spawnSync(process.execPath, [YUN, ...args], { encoding: "utf8", env, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A `yun run` in the background, its standard error collected. */
function start(...args: string[]) {
  const child = spawn(process.execPath, [YUN, "run", "--headless", ...args], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  child.stderr.on("data", (b: Buffer) => (err += b.toString()));
  const waitFor = async (re: RegExp, ms = 30_000): Promise<RegExpExecArray> => {
    for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 50))) {
      const m = re.exec(err);
      if (m) return m;
      if (child.exitCode !== null) break;
    }
    assert.fail(`no ${re} from yun run ${args.join(" ")}: ${err}`);
  };
  return { child, exited, waitFor, err: () => err };
}

test("yun vm migrate over TLS with a token file: bad fits and wrong tokens refused, then the VM moves", async () => {
  const cert = join(home, "dest.crt");
  const key = join(home, "dest.key");
  const ssl = spawnSync("openssl", [
    ..."req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost".split(" "),
    ..."-addext subjectAltName=IP:127.0.0.1 -keyout".split(" "),
    key,
    "-out",
    cert,
  ]);
  assert.equal(ssl.status, 0, ssl.stderr?.toString());
  const tokenFile = join(home, "token");
  writeFileSync(tokenFile, newMigrationToken() + "\n", { mode: 0o600 });
  const wrongFile = join(home, "wrong");
  writeFileSync(wrongFile, newMigrationToken() + "\n", { mode: 0o600 });
  const tlsDest = ["--incoming-token-file", tokenFile, "--incoming-tls-cert", cert, "--incoming-tls-key", key];

  const src = start("--name", "mover", ...machine);
  const children = [src];
  try {
    for (let i = 0; i < 100 && !yun("vm", "list").out.includes("mover"); i++)
      await new Promise((r) => setTimeout(r, 100));

    // A destination for 128 MiB: the VM (64 MiB) does not fit; the destination exits with the reason.
    const big = start("--incoming", "0", ...tlsDest, ...machine.slice(0, -1), "128");
    children.push(big);
    let port = (
      await big.waitFor(
        /waiting for a migration on 127\.0\.0\.1:(\d+) \(TLS, certificate SHA-256 ([0-9A-F:]+); token in /,
      )
    )[1];
    let r = yun("vm", "migrate", "mover", port, "--token-file", tokenFile, "--tls-ca", cert);
    assert.equal(r.code, 1, r.err);
    assert.match(
      r.err,
      /the destination refused: the VM has 64 MiB of memory and this destination 128 MiB \(start it with --memory 64\)/,
    );
    assert.equal(await big.exited, 1);
    assert.match(big.err(), /yun run: refused the incoming VM: the VM has 64 MiB/);

    const dest = start("--incoming", "0", ...tlsDest, ...machine);
    children.push(dest);
    const m = await dest.waitFor(
      /waiting for a migration on 127\.0\.0\.1:(\d+) \(TLS, certificate SHA-256 ([0-9A-F:]+); token in /,
    );
    port = m[1];
    assert.equal(
      m[2],
      new X509Certificate(readFileSync(cert)).fingerprint256,
      "the printed fingerprint is the certificate's",
    );
    // No TLS, a wrong token: refused, and the destination waits on.
    r = yun("vm", "migrate", "mover", port, "--token-file", tokenFile);
    assert.equal(r.code, 1);
    assert.match(r.err, /before the handshake \(if the destination uses TLS, give --tls-ca or --tls-fingerprint\)/);
    r = yun("vm", "migrate", "mover", port, "--token-file", wrongFile, "--tls-fingerprint", m[2]);
    assert.equal(r.code, 1);
    assert.match(r.err, /yun vm: the destination refused: the migration token is wrong/);
    await dest.waitFor(/refused a migration connection from 127\.0\.0\.1:\d+: the migration token is wrong/);
    assert.equal(JSON.parse(yun("vm", "describe", "mover").out).state, "running", "the source runs on");

    r = yun("vm", "migrate", "mover", port, "--token-file", tokenFile, "--tls-ca", cert);
    assert.equal(r.code, 0, r.err);
    assert.ok(JSON.parse(r.out).downtimeMs >= 0);
    assert.equal(await src.exited, 0, "the source exits once its VM left");
    for (let i = 0; i < 100; i++) {
      const e = (JSON.parse(yun("vm", "list", "--json").out) as { name: string; pid: number }[]).find(
        (v) => v.name === "mover",
      );
      if (e?.pid === dest.child.pid) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    const d = JSON.parse(yun("vm", "describe", "mover").out) as { pid: number; state: string; memoryMiB: number };
    assert.deepEqual([d.pid, d.state, d.memoryMiB], [dest.child.pid, "running", 64]);
    const i1 = JSON.parse(yun("vm", "metrics", "mover").out).instret as number;
    await new Promise((res) => setTimeout(res, 300));
    assert.ok(JSON.parse(yun("vm", "metrics", "mover").out).instret > i1, "the VM runs at the destination");
    assert.equal(yun("vm", "stop", "mover").code, 0);
    assert.equal(await dest.exited, 0);
  } finally {
    for (const c of children) if (c.child.exitCode === null) c.child.kill("SIGKILL");
    rmSync(home, { recursive: true, force: true });
  }
});

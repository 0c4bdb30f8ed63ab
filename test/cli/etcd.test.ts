/**
 * End to end: `yun serve --etcd URL` keeps the cloud's records in a real etcd, and the yun CLI
 * creates and lists a resource through it; a second yun serve on the same etcd (its own
 * YUN_HOME) lists it too, and the records survive both servers.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { BIN, serveProcess } from "../cloud/serve-process.js";
import { tempHome } from "../cloud/helpers.js";
import { ETCD_MISSING, startEtcd } from "../cloud/etcd-server.js";

function yun(env: Record<string, string>, ...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

test(
  "yun serve --etcd: the CLI creates and lists a network; another server sees it",
  { skip: ETCD_MISSING ?? false },
  async () => {
    const etcd = await startEtcd();
    const first = await serveProcess(["--etcd", etcd.url]);
    let second: Awaited<ReturnType<typeof serveProcess>> | undefined;
    try {
      const env = { YUN_HOME: first.home, YUN_SERVER: first.url, YUN_TOKEN: first.token };
      const made = yun(env, "network", "create", "blue", "--cidr", "10.7.0.0/24");
      assert.equal(made.status, 0, made.out);
      const listed = yun(env, "network", "list", "--json");
      assert.equal(listed.status, 0, listed.out);
      const nets = (JSON.parse(listed.out) as { items: { name: string; cidr: string }[] }).items;
      assert.deepEqual(
        nets.map((n) => [n.name, n.cidr]),
        [["blue", "10.7.0.0/24"]],
      );
      // The record is in etcd, not in the server's SQLite.
      const client = new Etcd3({ hosts: etcd.url });
      try {
        const keys = await client.getAll().prefix("/yun/v1/t/networks/").keys();
        assert.equal(keys.length, 1);
      } finally {
        client.close();
      }
      // A second API server with its own YUN_HOME on the same etcd: same records, same token.
      // The admin token is a record in etcd; this home gets the file the CLI reads it from.
      const home = tempHome();
      mkdirSync(join(home, "cloud"), { recursive: true, mode: 0o700 });
      writeFileSync(join(home, "cloud", "admin.token"), `${first.token}\n`, { mode: 0o600 });
      second = await serveProcess(["--etcd", etcd.url], home);
      const other = yun(
        { YUN_HOME: second.home, YUN_SERVER: second.url, YUN_TOKEN: first.token },
        "network",
        "list",
        "--json",
      );
      assert.equal(other.status, 0, other.out);
      assert.deepEqual(
        (JSON.parse(other.out) as { items: { name: string }[] }).items.map((n) => n.name),
        ["blue"],
      );
    } finally {
      await second?.stop();
      await first.stop();
      await etcd.stop();
    }
  },
);

test("yun serve --etcd with a bad URL exits 2 with one sentence", () => {
  const r = yun({ YUN_HOME: tempHome() }, "serve", "--etcd", "localhost:2379");
  assert.equal(r.status, 2, r.out);
  assert.match(r.out, /--etcd takes URLs like http:\/\/HOST:PORT separated by commas; "localhost:2379" is not one/);
});

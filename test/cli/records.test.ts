/**
 * `yun cloud export|import`: a single-host cloud's records move into etcd and back. A cloud made
 * with SQLite is exported; the file imported into a real etcd gives an export with the same
 * records; `yun serve --etcd` then serves them (the old admin token works); an occupied target, a
 * running server, a file that is not an export and an existing output file are refused in one line.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { BIN, serveProcess } from "../cloud/serve-process.js";
import { tempHome } from "../cloud/helpers.js";
import { ETCD_MISSING, startEtcd } from "../cloud/etcd-server.js";

function yun(env: Record<string, string>, ...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

/** Every record of an export, table by table, in primary-key order. */
function dump(file: string): Record<string, unknown[]> {
  const db = new Database(file, { readonly: true });
  try {
    const tables = db
      .prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name",
      )
      .all() as { name: string }[];
    return Object.fromEntries(tables.map(({ name }) => [name, db.prepare(`SELECT * FROM ${name} ORDER BY 1`).all()]));
  } finally {
    db.close();
  }
}

test(
  "a SQLite cloud exported and imported into etcd keeps every record, and yun serve --etcd serves them",
  { skip: ETCD_MISSING ?? false },
  async () => {
    const origin = await serveProcess();
    let etcd: Awaited<ReturnType<typeof startEtcd>> | undefined;
    let served: Awaited<ReturnType<typeof serveProcess>> | undefined;
    try {
      const env = { YUN_HOME: origin.home, YUN_SERVER: origin.url, YUN_TOKEN: origin.token };
      assert.equal(yun(env, "network", "create", "blue", "--cidr", "10.7.0.0/24").status, 0);
      assert.equal(yun(env, "project", "create", "green").status, 0);
      assert.equal(yun(env, "user", "create", "ann", "--role", "member", "--in", "green").status, 0);
      const file = join(origin.home, "export.db");
      // A running cloud exports (one consistent copy); its home is refused as an import target.
      const out = yun({ YUN_HOME: origin.home }, "cloud", "export", file);
      assert.equal(out.status, 0, out.out);
      assert.match(out.out, /^exported \d+ records from sqlite:.*yun\.db to .*export\.db \(.*1 networks/);
      assert.equal(statSync(file).mode & 0o777, 0o600, "the export holds token hashes: owner-only");
      const busy = yun({ YUN_HOME: origin.home }, "cloud", "import", file, "--replace");
      assert.equal(busy.status, 1, busy.out);
      assert.match(busy.out, /yun serve \(pid \d+\) is running on .*; stop it first/);
      await origin.stop(true);

      const again = yun({ YUN_HOME: origin.home }, "cloud", "export", file);
      assert.equal(again.status, 1);
      assert.match(again.out, /export\.db exists; give a new file name/);

      etcd = await startEtcd();
      const imported = yun({ YUN_HOME: tempHome() }, "cloud", "import", file, "--etcd", etcd.url);
      assert.equal(imported.status, 0, imported.out);
      assert.match(imported.out, /^imported \d+ records from .* into etcd:/);
      const twice = yun({ YUN_HOME: tempHome() }, "cloud", "import", file, "--etcd", etcd.url);
      assert.equal(twice.status, 1, twice.out);
      assert.match(twice.out, /already holds records \(.*\); give --replace/);

      // What etcd holds now, exported: the same records as the SQLite cloud's.
      const back = join(origin.home, "back.db");
      const exported = yun({ YUN_HOME: tempHome() }, "cloud", "export", back, "--etcd", etcd.url);
      assert.equal(exported.status, 0, exported.out);
      assert.deepEqual(dump(back), dump(file));
      // --replace into a SQLite home, from the etcd export: the same records again.
      const home = tempHome();
      const replaced = yun({ YUN_HOME: home }, "cloud", "import", back, "--replace");
      assert.equal(replaced.status, 0, replaced.out);
      assert.deepEqual(dump(join(home, "cloud", "yun.db")), dump(file));

      // A yun serve on the cluster serves the moved cloud to the old admin token.
      const served_home = tempHome();
      mkdirSync(join(served_home, "cloud"), { recursive: true, mode: 0o700 });
      writeFileSync(join(served_home, "cloud", "admin.token"), `${origin.token}\n`, { mode: 0o600 });
      served = await serveProcess(["--etcd", etcd.url], served_home);
      const listed = yun(
        { YUN_HOME: served.home, YUN_SERVER: served.url, YUN_TOKEN: origin.token },
        "network",
        "list",
        "--json",
      );
      assert.equal(listed.status, 0, listed.out);
      assert.deepEqual(
        (JSON.parse(listed.out) as { items: { name: string }[] }).items.map((n) => n.name),
        ["blue"],
      );
    } finally {
      await origin.stop(true);
      await served?.stop();
      await etcd?.stop();
    }
  },
);

test("yun cloud import of a file that is not an export, and of a missing file: one line, exit 1", () => {
  const home = tempHome();
  const junk = join(home, "junk.db");
  writeFileSync(junk, "not a database at all, but long enough to look like a header".repeat(100));
  const r = yun({ YUN_HOME: home }, "cloud", "import", junk);
  assert.equal(r.status, 1, r.out);
  assert.match(r.out, /^yun cloud import: .*junk\.db is not a yun cloud export: file is not a database\n$/);
  const missing = yun({ YUN_HOME: home }, "cloud", "import", join(home, "nothing.db"));
  assert.equal(missing.status, 1);
  assert.match(missing.out, /nothing\.db does not exist/);
  assert.equal(existsSync(join(home, "cloud", "yun.db")), false, "a failed import makes no database");
  const none = yun({ YUN_HOME: home }, "cloud", "export", join(home, "out.db"));
  assert.equal(none.status, 1);
  assert.match(none.out, /there is no cloud in /);
  const bad = yun({ YUN_HOME: home }, "cloud", "frobnicate", "x");
  assert.equal(bad.status, 2);
  assert.match(bad.out, /unknown command "frobnicate"/);
});

/**
 * The Store contract, against both implementations: SQLite (two connections to one file) and etcd
 * (two stores on one real etcd, as two API servers would be). Then the quota test through two
 * clouds that share one etcd: concurrent creates never exceed the quota.
 */
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Store } from "../../src/cloud/store/store.js";
import { SqliteStore } from "../../src/cloud/store/sqlite.js";
import { EtcdStore, parseEtcdUrls } from "../../src/cloud/store/etcd.js";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { listen } from "../../src/cloud/server.js";
import { YunClient, YunApiError } from "../../src/cloud/client.js";
import { tempHome } from "./helpers.js";
import { ETCD_MISSING, startEtcd, type EtcdServer } from "./etcd-server.js";

const NOW = "2026-01-01T00:00:00.000Z";

function addProject(s: Store, id: string, name: string): void {
  s.db.prepare("INSERT INTO projects VALUES (?, ?, 10, 16, 8192, 200, ?)").run(id, name, NOW);
}
function names(s: Store): string[] {
  return (s.db.prepare("SELECT name FROM projects ORDER BY name").all() as { name: string }[]).map((r) => r.name);
}

interface Impl {
  name: string;
  skip: string | false;
  /** Opens a store on the shared records (a new connection each call). */
  open(): Promise<Store>;
  setup(): Promise<void>;
  teardown(): Promise<void>;
}

let etcd: EtcdServer | undefined;
let dbDir = "";
const impls: Impl[] = [
  {
    name: "sqlite",
    skip: false,
    open: async () => new SqliteStore(join(dbDir, "yun.db")),
    setup: async () => {
      dbDir = mkdtempSync(join(tmpdir(), "yun-store-"));
    },
    teardown: async () => rmSync(dbDir, { recursive: true, force: true }),
  },
  {
    name: "etcd",
    skip: ETCD_MISSING ?? false,
    open: () => EtcdStore.open([etcd!.url]),
    setup: async () => {
      etcd = await startEtcd();
    },
    teardown: async () => etcd?.stop(),
  },
];

for (const impl of impls) {
  describe(`Store contract: ${impl.name}`, { skip: impl.skip }, () => {
    let a: Store;
    let b: Store;
    before(async () => {
      await impl.setup();
      a = await impl.open();
      b = await impl.open();
    });
    after(async () => {
      await a?.close();
      await b?.close();
      await impl.teardown();
    });

    test("a transaction's changes are seen by the other server; one that throws changes nothing", async () => {
      const out = await a.transact(() => {
        addProject(a, "prj-aaaaaaaaaa", "alpha");
        return 42;
      });
      assert.equal(out, 42);
      await assert.rejects(
        a.transact(() => {
          addProject(a, "prj-bbbbbbbbbb", "beta");
          throw new Error("refused");
        }),
        /refused/,
      );
      assert.deepEqual(names(a), ["alpha"]);
      await b.sync();
      assert.deepEqual(names(b), ["alpha"]);
      // A constraint violation is a throw too.
      await assert.rejects(
        b.transact(() => addProject(b, "prj-cccccccccc", "alpha")),
        /UNIQUE/,
      );
      await a.sync();
      assert.deepEqual(names(a), ["alpha"]);
    });

    test("updates, deletes and cascades reach the other server", async () => {
      await a.transact(() => {
        a.db.prepare("INSERT INTO users VALUES ('usr-aaaaaaaaaa', 'ann', 'prj-aaaaaaaaaa', 'member', ?)").run(NOW);
        a.db.prepare("INSERT INTO tokens VALUES ('hash1', 'usr-aaaaaaaaaa', ?)").run(NOW);
        a.db.prepare("UPDATE projects SET q_instances = 3 WHERE id = 'prj-aaaaaaaaaa'").run();
      });
      await b.sync();
      assert.equal((b.db.prepare("SELECT count(*) AS n FROM tokens").get() as { n: number }).n, 1);
      assert.equal((b.db.prepare("SELECT q_instances AS q FROM projects").get() as { q: number }).q, 3);
      // Deleting the user deletes its tokens (ON DELETE CASCADE), on both servers.
      await b.transact(() => b.db.prepare("DELETE FROM users WHERE id = 'usr-aaaaaaaaaa'").run());
      await a.sync();
      assert.equal((a.db.prepare("SELECT count(*) AS n FROM tokens").get() as { n: number }).n, 0);
      assert.equal((a.db.prepare("SELECT count(*) AS n FROM users").get() as { n: number }).n, 0);
    });

    test("autoincrement ids stay unique across servers", async () => {
      const insert = (s: Store) =>
        s.transact(() =>
          Number(
            s.db
              .prepare(
                "INSERT INTO events (at, user_name, project_id, action, resource, outcome) VALUES (?, 'x', 'p', 'a', 'r', 'ok')",
              )
              .run(NOW).lastInsertRowid,
          ),
        );
      const ids = await Promise.all([insert(a), insert(b), insert(a), insert(b), insert(a), insert(b)]);
      assert.equal(new Set(ids).size, 6, `ids ${ids.join(",")}`);
      await a.sync();
      await b.sync();
      assert.equal((a.db.prepare("SELECT count(*) AS n FROM events").get() as { n: number }).n, 6);
      assert.equal((b.db.prepare("SELECT count(*) AS n FROM events").get() as { n: number }).n, 6);
    });

    test("concurrent check-then-insert transactions on two servers never exceed a limit", async () => {
      const limit = 5;
      const create = (s: Store, i: number) =>
        s.transact(() => {
          const n = (s.db.prepare("SELECT count(*) AS n FROM networks").get() as { n: number }).n;
          if (n >= limit) throw new Error("quota exceeded");
          s.db
            .prepare("INSERT INTO networks VALUES (?, ?, 'prj-aaaaaaaaaa', '10.1.0.0/24', ?)")
            .run(`net-${String(i).padStart(10, "0")}`, `n${i}`, NOW);
        });
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => create(i % 2 ? a : b, i)));
      assert.equal(results.filter((r) => r.status === "fulfilled").length, limit);
      for (const r of results) if (r.status === "rejected") assert.match((r.reason as Error).message, /quota exceeded/);
      await a.sync();
      await b.sync();
      assert.equal((a.db.prepare("SELECT count(*) AS n FROM networks").get() as { n: number }).n, limit);
      assert.equal((b.db.prepare("SELECT count(*) AS n FROM networks").get() as { n: number }).n, limit);
    });

    test("the records outlive the servers: a store opened again finds them", async () => {
      await a.close();
      a = await impl.open();
      assert.deepEqual(names(a), ["alpha"]);
      assert.equal((a.db.prepare("SELECT count(*) AS n FROM networks").get() as { n: number }).n, 5);
    });

    test("replaceAll (yun cloud import) swaps every record, in more than one etcd transaction holds", async () => {
      const projects = Array.from({ length: 250 }, (_, i) => ({
        id: `prj-${String(i).padStart(10, "0")}`,
        name: `p${i}`,
        q_instances: 1,
        q_vcpus: 1,
        q_memory_mib: 256,
        q_disk_gib: 1,
        created_at: NOW,
      }));
      const users = projects.map((p, i) => ({
        id: `usr-${String(i).padStart(10, "0")}`,
        name: "u",
        project_id: p.id,
        role: "member",
        created_at: NOW,
      }));
      await a.replaceAll([
        { table: "projects", rows: projects },
        { table: "users", rows: users },
      ]);
      await b.sync();
      for (const s of [a, b]) {
        assert.equal(names(s).length, 250);
        assert.equal((s.db.prepare("SELECT count(*) AS n FROM users").get() as { n: number }).n, 250);
        assert.equal((s.db.prepare("SELECT count(*) AS n FROM networks").get() as { n: number }).n, 0);
      }
      // And back to what the other tests left, through the other server.
      await b.replaceAll([{ table: "projects", rows: [{ ...projects[0]!, id: "prj-aaaaaaaaaa", name: "alpha" }] }]);
      await a.sync();
      assert.deepEqual(names(a), ["alpha"]);
    });

    if (impl.name === "etcd")
      test("a change outside a transaction is refused (it would reach no other server)", () => {
        assert.throws(() => addProject(a, "prj-dddddddddd", "delta"), /only inside a Store transaction/);
        assert.deepEqual(names(a), ["alpha"]);
      });
  });
}

test("--etcd URLs: one clear sentence for a bad one", () => {
  assert.deepEqual(parseEtcdUrls("http://10.0.0.1:2379, http://10.0.0.2:2379"), [
    "http://10.0.0.1:2379",
    "http://10.0.0.2:2379",
  ]);
  assert.throws(() => parseEtcdUrls("10.0.0.1:2379"), /takes URLs like http:\/\/HOST:PORT.*"10.0.0.1:2379" is not one/);
  assert.throws(() => parseEtcdUrls(","), /at least one URL/);
});

test("an etcd that does not answer is one error, not a hang", { skip: ETCD_MISSING ?? false }, async () => {
  await assert.rejects(EtcdStore.open(["http://127.0.0.1:9"], { timeoutMs: 2000 }), /did not answer/);
});

test(
  "two API servers on one etcd: 20 concurrent creates against a quota of 5 create 5",
  { skip: ETCD_MISSING ?? false },
  async () => {
    const server = await startEtcd();
    const homes = [tempHome(), tempHome()];
    const clouds: Cloud[] = [];
    const running: { close(): Promise<void> }[] = [];
    try {
      for (const home of homes) {
        const store = await EtcdStore.open([server.url]);
        clouds.push(new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0, store }));
      }
      // The first server's bootstrap makes the admin token; the second finds the records there.
      const { adminToken } = await clouds[0].bootstrap();
      assert.ok(adminToken);
      assert.equal((await clouds[1].bootstrap()).adminToken, null);
      const urls: string[] = [];
      for (const c of clouds) {
        const r = await listen(c, "127.0.0.1", 0, { limits: { apiRate: 0 } });
        running.push(r);
        urls.push(`http://127.0.0.1:${r.port}`);
      }
      const admins = urls.map((u) => new YunClient({ server: u, token: adminToken! }));
      await admins[0].createProject({ name: "team", quotas: { diskGiB: 5 } });
      const results = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) =>
          admins[i % 2].inProject("team").createVolume({ name: `v${i}`, sizeGiB: 1 }),
        ),
      );
      const made = results.filter((r) => r.status === "fulfilled").length;
      assert.equal(made, 5, `created ${made} volumes against a disk quota of 5 GiB`);
      for (const r of results)
        if (r.status === "rejected") {
          assert.ok(r.reason instanceof YunApiError, String(r.reason));
          assert.equal(r.reason.code, "quota_exceeded");
        }
      // Both servers list the same five, and the quota's use agrees.
      for (const admin of admins) {
        const vols = await admin.inProject("team").listVolumes();
        assert.equal(vols.length, 5);
        assert.equal((await admin.getQuotas("team")).used.diskGiB, 5);
      }
    } finally {
      for (const r of running) await r.close();
      for (const c of clouds) await c.close();
      await server.stop();
      for (const h of homes) rmSync(h, { recursive: true, force: true });
    }
  },
);

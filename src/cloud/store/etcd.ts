/**
 * The clustered store: the records live in etcd, one key per record
 * (`/yun/v1/t/<table>/<primary key>` → the row as JSON), so several API servers share one cloud.
 *
 * Each server keeps a local SQL view of the keyspace (an in-memory SQLite database with the same
 * schema, loaded at open and kept current by a watch), which services read as they read the
 * SQLite store. A transaction:
 *  1. takes this process's turn, then the cluster's write lock (`/yun/v1/lock`, a key under this
 *     server's lease: a server that dies lets go within the lease's TTL);
 *  2. waits until the view holds every commit so far (the mod revision of `/yun/v1/revision`,
 *     which every commit writes);
 *  3. runs fn in a SQLite transaction on the view, collects the records it changed (temporary
 *     triggers), and rolls the view back;
 *  4. commits the changes as one etcd transaction that compares the lock's holder and the mod
 *     revision of `/yun/v1/revision` read in step 2 (compare-and-swap: it applies only if nothing
 *     else committed since), then applies them to the view and lets go of the lock.
 * So transactions are serialized cluster-wide as BEGIN IMMEDIATE serializes them on one SQLite
 * file, and a quota check and the create it allows are one atomic unit.
 */
import Database from "better-sqlite3";
import { randomUUID } from "node:crypto";
import { type DeleteBuilder, Etcd3, type IKeyValue, type Lease, type PutBuilder, type Watcher } from "etcd3";
import { type DB, journaled, migrate, recordTables, SCHEMA_VERSION } from "../db.js";
import type { Store, TableRows } from "./store.js";

const PREFIX = "/yun/v1/";
const TABLES = `${PREFIX}t/`;
/** Written by every commit: its mod revision is the revision of the latest commit. */
const REVISION = `${PREFIX}revision`;
const LOCK = `${PREFIX}lock`;
/** Operations per etcd transaction in replaceAll (etcd's --max-txn-ops is 128 by default). */
const MAX_TXN_OPS = 100;
const SCHEMA = `${PREFIX}schema`;

export interface EtcdStoreOptions {
  /** TTL of this server's lease on the write lock, in seconds (default 10). */
  leaseTtlSeconds?: number;
  /** How long to wait for etcd to answer at open, or for the lock, in ms (default 15 000). */
  timeoutMs?: number;
}

interface Table {
  name: string;
  key: string;
  integerKey: boolean;
  columns: string[];
  upsert: Database.Statement;
  remove: Database.Statement;
  read: Database.Statement;
}

interface Change {
  key: string;
  value: string | null;
}

/** Thrown inside the view's transaction to roll it back once the changes are collected. */
class RollBack {
  constructor(readonly changes: Change[]) {}
}

/** The records in etcd were written by another version of yun. */
class SchemaMismatch extends Error {}

/** Parses `--etcd URL[,URL...]`: http(s)://HOST:PORT each. */
export function parseEtcdUrls(spec: string): string[] {
  const urls = spec
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u !== "");
  if (urls.length === 0) throw new Error("--etcd needs at least one URL, e.g. --etcd http://127.0.0.1:2379");
  for (const u of urls) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(u);
    } catch {
      parsed = undefined;
    }
    if (!parsed || !/^https?:$/.test(parsed.protocol) || parsed.port === "" || parsed.pathname.length > 1)
      throw new Error(`--etcd takes URLs like http://HOST:PORT separated by commas; "${u}" is not one`);
  }
  return urls;
}

export class EtcdStore implements Store {
  readonly location: string;
  readonly db: DB;
  private readonly client: Etcd3;
  private readonly holder = randomUUID();
  private readonly tables = new Map<string, Table>();
  private readonly timeoutMs: number;
  private readonly leaseTtl: number;
  private lease: Lease | null = null;
  private watcher: Watcher | null = null;
  /** The etcd revision the view holds everything up to. */
  private applied = 0;
  private waiters: { revision: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Serializes this process's transactions (then the etcd lock serializes the servers). */
  private tail: Promise<unknown> = Promise.resolve();
  /** The view may be written: by apply() or inside a transaction's fn. */
  private writable = false;
  private failure: Error | null = null;
  private closed = false;

  private constructor(urls: string[], opts: EtcdStoreOptions) {
    this.location = `etcd:${urls.join(",")}`;
    this.timeoutMs = opts.timeoutMs ?? 15_000;
    this.leaseTtl = opts.leaseTtlSeconds ?? 10;
    this.client = new Etcd3({ hosts: urls, dialTimeout: Math.min(this.timeoutMs, 5000) });
    this.db = new Database(":memory:");
    this.db.pragma("foreign_keys = ON");
    migrate(this.db);
    this.db.function("yun_guard", () => {
      if (!this.writable) throw new Error("the cloud's records change only inside a Store transaction");
      return 1;
    });
    this.db.exec("CREATE TEMP TABLE yun_changes (tbl TEXT NOT NULL, pk)");
    for (const name of recordTables(this.db)) this.tables.set(name, this.describe(name));
  }

  /** Connects to etcd (the URLs of one cluster), checks the schema and loads the records. */
  static async open(urls: string[], opts: EtcdStoreOptions = {}): Promise<EtcdStore> {
    const store = new EtcdStore(urls, opts);
    try {
      await store.within(
        store.checkSchema().catch((err: Error) => {
          if (err instanceof SchemaMismatch) throw err;
          throw new Error(`etcd at ${urls.join(",")} did not answer (${err.message.trim()})`);
        }),
        `etcd at ${urls.join(",")} did not answer`,
      );
      await store.load();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  private describe(name: string): Table {
    const info = this.db.prepare(`PRAGMA table_info(${name})`).all() as { name: string; type: string; pk: number }[];
    const pk = info.find((c) => c.pk === 1);
    if (!pk) throw new Error(`table ${name} has no primary key`);
    const columns = info.map((c) => c.name);
    const set = columns.filter((c) => c !== pk.name).map((c) => `${c} = excluded.${c}`);
    this.db.exec(`
      CREATE TEMP TRIGGER yun_${name}_i AFTER INSERT ON main.${name}
        BEGIN SELECT yun_guard(); INSERT INTO yun_changes VALUES ('${name}', NEW.${pk.name}); END;
      CREATE TEMP TRIGGER yun_${name}_u AFTER UPDATE ON main.${name}
        BEGIN SELECT yun_guard(); INSERT INTO yun_changes VALUES ('${name}', OLD.${pk.name}), ('${name}', NEW.${pk.name}); END;
      CREATE TEMP TRIGGER yun_${name}_d AFTER DELETE ON main.${name}
        BEGIN SELECT yun_guard(); INSERT INTO yun_changes VALUES ('${name}', OLD.${pk.name}); END;
    `);
    return {
      name,
      key: pk.name,
      integerKey: pk.type.toUpperCase() === "INTEGER",
      columns,
      upsert: this.db.prepare(
        `INSERT INTO ${name} (${columns.join(", ")}) VALUES (${columns.map((c) => `@${c}`).join(", ")})` +
          (set.length > 0 ? ` ON CONFLICT (${pk.name}) DO UPDATE SET ${set.join(", ")}` : " ON CONFLICT DO NOTHING"),
      ),
      remove: this.db.prepare(`DELETE FROM ${name} WHERE ${pk.name} = ?`),
      read: this.db.prepare(`SELECT * FROM ${name} WHERE ${pk.name} = ?`),
    };
  }

  private async checkSchema(): Promise<void> {
    const r = await this.client
      .if(SCHEMA, "Create", "==", 0)
      .then(this.client.put(SCHEMA).value(String(SCHEMA_VERSION)))
      .else(this.client.get(SCHEMA))
      .commit();
    if (r.succeeded) return;
    const kv = r.responses[0]?.response_range?.kvs?.[0];
    const version = Number(kv?.value.toString());
    if (version > SCHEMA_VERSION)
      throw new SchemaMismatch(
        `the cloud's records in etcd are at schema version ${version}, newer than this yun (${SCHEMA_VERSION}); upgrade yun`,
      );
    if (version !== SCHEMA_VERSION)
      throw new SchemaMismatch(
        `the cloud's records in etcd are at schema version ${version}, older than this yun (${SCHEMA_VERSION}); ` +
          "export them with the yun that wrote them",
      );
  }

  /** Loads every record into an empty view and watches for what comes next. */
  private async load(): Promise<void> {
    const r = await this.within(this.client.getAll().prefix(TABLES).exec(), "etcd did not answer");
    this.apply(r.kvs.map((kv) => ({ key: kv.key.toString(), value: kv.value.toString() })));
    this.applied = Number(r.header.revision);
    this.watcher = await this.client
      .watch()
      .prefix(PREFIX)
      .startRevision(String(this.applied + 1))
      .create();
    this.watcher.on("data", (res) => this.onWatch(res.events.map((e) => ({ type: e.type, kv: e.kv }))));
    // A watch that cannot go on (its revisions compacted away) leaves the view behind for good.
    this.watcher.on("error", (err) => this.fail(new Error(`the etcd watch failed: ${err.message}`)));
  }

  private onWatch(events: { type: "Put" | "Delete"; kv: IKeyValue }[]): void {
    const changes: Change[] = [];
    let top = this.applied;
    for (const e of events) {
      const revision = Number(e.kv.mod_revision);
      if (revision <= this.applied) continue; // this server applied its own commit already
      top = Math.max(top, revision);
      const key = e.kv.key.toString();
      if (key.startsWith(TABLES)) changes.push({ key, value: e.type === "Put" ? e.kv.value.toString() : null });
    }
    try {
      if (changes.length > 0) this.apply(changes);
    } catch (err) {
      // The view cannot follow etcd any more: every wait fails at once with why, not a timeout.
      this.fail(new Error(`this server's view of the etcd records failed: ${(err as Error).message}`));
      return;
    }
    this.advance(top);
  }

  private advance(revision: number): void {
    if (revision <= this.applied) return;
    this.applied = revision;
    const ready = this.waiters.filter((w) => w.revision <= revision);
    this.waiters = this.waiters.filter((w) => w.revision > revision);
    for (const w of ready) w.resolve();
  }

  private fail(err: Error): void {
    this.failure = err;
    for (const w of this.waiters) w.reject(err);
    this.waiters = [];
  }

  /** Writes changes (records as JSON, or null: gone) into the view, in order. */
  private apply(changes: Change[]): void {
    this.writable = true;
    try {
      this.db.transaction(() => {
        // A batch may name a child before its parent; the whole batch is consistent.
        this.db.pragma("defer_foreign_keys = ON");
        for (const c of changes) {
          const rest = c.key.slice(TABLES.length);
          const slash = rest.indexOf("/");
          const table = this.tables.get(rest.slice(0, slash));
          if (!table) continue; // a table of a newer schema
          const pk = rest.slice(slash + 1);
          if (c.value === null) table.remove.run(table.integerKey ? Number(pk) : pk);
          else {
            const row = JSON.parse(c.value) as Record<string, unknown>;
            const params: Record<string, unknown> = {};
            for (const col of table.columns) params[col] = row[col] ?? null;
            table.upsert.run(params);
          }
        }
        this.db.prepare("DELETE FROM yun_changes").run();
      })();
    } finally {
      this.writable = false;
    }
  }

  private waitFor(revision: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (revision <= this.applied) return Promise.resolve();
    return this.within(
      new Promise<void>((resolve, reject) => this.waiters.push({ revision, resolve, reject })),
      `the etcd watch did not deliver revision ${revision}`,
    );
  }

  /** The mod revision of the latest commit, once the view holds it. */
  private async catchUp(): Promise<number> {
    const r = await this.within(this.client.get(REVISION).exec(), "etcd did not answer");
    const latest = Number(r.kvs[0]?.mod_revision ?? 0);
    await this.waitFor(latest);
    return latest;
  }

  sync(): Promise<void> {
    return this.catchUp().then(() => undefined);
  }

  transact<T>(fn: () => T): Promise<T> {
    const run = this.tail.then(() => this.run(fn));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async run<T>(fn: () => T): Promise<T> {
    if (this.closed) throw new Error("the cloud's store is closed");
    await this.acquire();
    try {
      const seen = await this.catchUp();
      let out!: T;
      let changes: Change[] = [];
      this.writable = true;
      try {
        this.db.transaction(() => {
          out = journaled(this.db, fn);
          throw new RollBack(this.collect());
        })();
      } catch (err) {
        if (!(err instanceof RollBack)) throw err;
        changes = err.changes;
      } finally {
        this.writable = false;
      }
      if (changes.length === 0) return out;
      const ops = changes.map((c) =>
        c.value === null ? this.client.delete().key(c.key) : this.client.put(c.key).value(c.value),
      );
      const r = await this.within(
        this.client
          .if(LOCK, "Value", "==", this.holder)
          .and(REVISION, "Mod", "==", seen)
          .then(...ops, this.client.put(REVISION).value(this.holder))
          .commit(),
        "etcd did not answer the commit",
      );
      if (!r.succeeded)
        throw new Error(
          "the cloud's records changed under this server's lock (its etcd lease lapsed); nothing was changed",
        );
      this.apply(changes);
      this.advance(Number(r.header.revision));
      return out;
    } finally {
      // Unreleased (etcd unreachable), the lock lapses with this server's lease.
      await this.release().catch(() => undefined);
    }
  }

  async replaceAll(tables: TableRows): Promise<void> {
    const run = this.tail.then(async () => {
      if (this.closed) throw new Error("the cloud's store is closed");
      await this.acquire();
      try {
        await this.catchUp();
        // The records that go (children first), then the new ones (parents first), so every
        // server's view, which applies them batch by batch, never holds a record without its
        // parent. The last transaction writes the revision every commit writes.
        const changes: Change[] = [];
        const wanted = new Set<string>();
        const puts: Change[] = [];
        for (const { table: name, rows } of tables) {
          const table = this.tables.get(name);
          if (!table) throw new Error(`this yun has no table ${name}`);
          for (const row of rows) {
            const key = `${TABLES}${name}/${String(row[table.key])}`;
            wanted.add(key);
            puts.push({ key, value: JSON.stringify(row) });
          }
        }
        for (const name of recordTables(this.db).reverse()) {
          const table = this.tables.get(name)!;
          for (const { pk } of this.db.prepare(`SELECT ${table.key} AS pk FROM ${name}`).all() as { pk: unknown }[]) {
            const key = `${TABLES}${name}/${String(pk)}`;
            if (!wanted.has(key)) changes.push({ key, value: null });
          }
        }
        changes.push(...puts);
        for (let i = 0, last = false; !last;) {
          const chunk = changes.slice(i, i + MAX_TXN_OPS - 1);
          i += chunk.length;
          last = i >= changes.length;
          const ops: (PutBuilder | DeleteBuilder)[] = chunk.map((c) =>
            c.value === null ? this.client.delete().key(c.key) : this.client.put(c.key).value(c.value),
          );
          if (last) ops.push(this.client.put(REVISION).value(this.holder));
          const r = await this.within(
            this.client
              .if(LOCK, "Value", "==", this.holder)
              .then(...ops)
              .commit(),
            "etcd did not answer the import",
          );
          if (!r.succeeded)
            throw new Error("this server lost the cloud's etcd lock (its lease lapsed) in the middle of the import");
        }
        // The watch brings the new records into this view, as it does into every server's.
        await this.catchUp();
      } finally {
        await this.release().catch(() => undefined);
      }
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** The records fn changed: deletions first, so a name freed and taken again applies in order. */
  private collect(): Change[] {
    const touched = this.db.prepare("SELECT DISTINCT tbl, pk FROM yun_changes").all() as { tbl: string; pk: unknown }[];
    const gone: Change[] = [];
    const written: Change[] = [];
    for (const { tbl, pk } of touched) {
      const table = this.tables.get(tbl)!;
      const row = table.read.get(pk) as Record<string, unknown> | undefined;
      const key = `${TABLES}${tbl}/${String(pk)}`;
      if (row === undefined) gone.push({ key, value: null });
      else written.push({ key, value: JSON.stringify(row) });
    }
    return [...gone, ...written];
  }

  private async leaseId(): Promise<string> {
    if (this.lease === null || this.lease.revoked()) {
      const lease = this.client.lease(this.leaseTtl);
      lease.on("lost", () => {
        if (this.lease === lease) this.lease = null;
      });
      this.lease = lease;
    }
    return this.within(this.lease.grant(), "etcd did not grant a lease");
  }

  private async acquire(): Promise<void> {
    const lease = await this.leaseId();
    const deadline = Date.now() + this.timeoutMs * 2;
    for (let attempt = 0; ; attempt++) {
      const r = await this.within(
        this.client.if(LOCK, "Create", "==", 0).then(this.client.put(LOCK).value(this.holder).lease(lease)).commit(),
        "etcd did not answer",
      );
      if (r.succeeded) return;
      if (Date.now() > deadline)
        throw new Error("another API server has held the cloud's etcd lock too long; try again");
      // Another server commits meanwhile; its transactions take a few milliseconds.
      await new Promise((resolve) => setTimeout(resolve, Math.min(1 + attempt, 10) * (0.5 + Math.random())));
    }
  }

  private async release(): Promise<void> {
    await this.client.if(LOCK, "Value", "==", this.holder).then(this.client.delete().key(LOCK)).commit();
  }

  private within<T>(p: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} within ${this.timeoutMs / 1000} s`)), this.timeoutMs);
    });
    return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.tail;
    this.fail(new Error("the cloud's store is closed"));
    await this.watcher?.cancel().catch(() => undefined);
    if (this.lease) await this.lease.revoke().catch(() => undefined);
    this.client.close();
    if (this.db.open) this.db.close();
  }
}

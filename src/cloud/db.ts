/**
 * The cloud's state: one SQLite database (WAL) with numbered schema migrations recorded in
 * schema_migrations. Every state change runs in a `BEGIN IMMEDIATE` transaction (immediate()), so
 * checks and writes (quota, state machine) are atomic against other requests and other processes.
 */
import Database from "better-sqlite3";
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import { closeSync, openSync } from "node:fs";

export type DB = Database.Database;

/** Migrations in order; never edit one that has shipped, add the next. */
const MIGRATIONS: string[] = [
  // 1: the whole first schema.
  `
  CREATE TABLE projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    q_instances INTEGER NOT NULL, q_vcpus INTEGER NOT NULL, q_memory_mib INTEGER NOT NULL, q_disk_gib INTEGER NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE users (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'reader')), created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
  );
  CREATE TABLE tokens (
    hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, created_at TEXT NOT NULL
  );
  CREATE TABLE flavors (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
    disk_gib INTEGER NOT NULL, created_at TEXT NOT NULL
  );
  CREATE TABLE images (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT REFERENCES projects(id), format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL,
    kernel TEXT, initrd TEXT, firmware TEXT, created_at TEXT NOT NULL
  );
  CREATE UNIQUE INDEX images_name ON images (ifnull(project_id, ''), name);
  CREATE TABLE networks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id), cidr TEXT NOT NULL,
    created_at TEXT NOT NULL, UNIQUE (project_id, name)
  );
  CREATE TABLE keypairs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    public_key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (project_id, name)
  );
  CREATE TABLE instances (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    state TEXT NOT NULL, image_id TEXT NOT NULL, flavor_id TEXT NOT NULL,
    vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, disk_gib INTEGER NOT NULL,
    network_id TEXT REFERENCES networks(id), address TEXT, mac TEXT NOT NULL, keypair_id TEXT,
    user_data TEXT, error TEXT, pid INTEGER, socket TEXT, dir TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (project_id, name)
  );
  CREATE TABLE volumes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    size_gib INTEGER NOT NULL, instance_id TEXT REFERENCES instances(id), attached_at INTEGER,
    snapshot_id TEXT, path TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (project_id, name)
  );
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    volume_id TEXT NOT NULL, size_gib INTEGER NOT NULL, path TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
  );
  CREATE TABLE usage_intervals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT NOT NULL, resource_id TEXT NOT NULL,
    resource_name TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('cpu', 'memory', 'disk')),
    amount REAL NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER, last_ms INTEGER NOT NULL
  );
  CREATE INDEX usage_open ON usage_intervals (resource_id) WHERE end_ms IS NULL;
  CREATE INDEX usage_project ON usage_intervals (project_id, start_ms);
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, user_name TEXT NOT NULL, project_id TEXT NOT NULL,
    action TEXT NOT NULL, resource TEXT NOT NULL, outcome TEXT NOT NULL, message TEXT
  );
  CREATE INDEX events_project ON events (project_id, id);
  `,
  // 2: the actor's user id in the audit log (names are unique only within a project, and a user
  // deleted and created again under the same name is someone else). Older events get the id where
  // the name still means exactly one user of the event's project or the admin project (admins act
  // across projects); the others keep only the name (user_id NULL), as do the daemon's own.
  `
  ALTER TABLE events ADD COLUMN user_id TEXT;
  UPDATE events SET user_id = (
    SELECT u.id FROM users u JOIN projects p ON p.id = u.project_id
    WHERE u.name = events.user_name AND (u.project_id = events.project_id OR (p.name = 'admin' AND u.role = 'admin'))
  )
  WHERE user_name != 'system' AND (
    SELECT count(*) FROM users u JOIN projects p ON p.id = u.project_id
    WHERE u.name = events.user_name AND (u.project_id = events.project_id OR (p.name = 'admin' AND u.role = 'admin'))
  ) = 1;
  CREATE INDEX events_user ON events (user_id, id);
  `,
  // 3: the operation journal (crash consistency of the audit log; see Cloud.reconcile). A row is
  // written when a mutating request starts; `applied` is set by the first transaction that changes
  // state on its behalf (in that same transaction); the row is deleted in the transaction that
  // writes its audit event. Rows left by a crash are finished or rolled back at the next start.
  `
  CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, user_id TEXT, user_name TEXT NOT NULL,
    project_id TEXT NOT NULL, action TEXT NOT NULL, resource TEXT NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0, intent TEXT
  );
  `,
  // 4: port forwards of instances (host port -> guest port through the VM's user-mode NAT); a
  // host port is taken by one forward on this machine. NAT instances get an address of their own
  // (they all had 10.0.2.15): cleared here, each is given one from the NAT pool when it next boots.
  `
  CREATE TABLE forwards (
    id TEXT PRIMARY KEY, instance_id TEXT NOT NULL REFERENCES instances(id), project_id TEXT NOT NULL,
    host_addr TEXT NOT NULL, host_port INTEGER NOT NULL UNIQUE, guest_port INTEGER NOT NULL, created_at TEXT NOT NULL
  );
  CREATE INDEX forwards_instance ON forwards (instance_id);
  UPDATE instances SET address = NULL WHERE network_id IS NULL;
  `,
  // 5: the metering tick is one record (when the daemon last saw its resources running) instead
  // of a write to every open interval: with etcd each write is a key, and a tick over hundreds
  // of resources was hundreds of keys every few seconds (more than one etcd transaction may hold).
  // An interval closed at the last tick ends at max(its start, that tick), as before.
  `
  CREATE TABLE meter_ticks (id INTEGER PRIMARY KEY CHECK (id = 1), last_ms INTEGER NOT NULL);
  INSERT INTO meter_ticks SELECT 1, max(last_ms) FROM usage_intervals HAVING count(*) > 0;
  `,
  // 6: object storage (src/cloud/objects). Access keys of users (the secret is kept: SigV4 checks
  // an HMAC made with it); buckets (names unique across the cloud, as S3's are), objects and
  // multipart uploads, whose bytes are content-addressed blobs on disk (column blob: their
  // sha256); request counts per project and hour; a quota on a project's stored bytes (a table of
  // its own, so rows of projects keep their columns; no row: the default); usage intervals of
  // kind 'object' (GiB stored in a bucket), for which the kind's CHECK is widened (SQLite cannot
  // alter a CHECK: the table is copied).
  `
  CREATE TABLE access_keys (
    id TEXT PRIMARY KEY, secret TEXT NOT NULL, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL
  );
  CREATE INDEX access_keys_user ON access_keys (user_id);
  CREATE TABLE buckets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, project_id TEXT NOT NULL REFERENCES projects(id),
    acl TEXT NOT NULL CHECK (acl IN ('private', 'public-read')), created_at TEXT NOT NULL
  );
  CREATE TABLE objects (
    id TEXT PRIMARY KEY, bucket_id TEXT NOT NULL REFERENCES buckets(id), key TEXT NOT NULL, blob TEXT NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, content_type TEXT NOT NULL, meta TEXT NOT NULL,
    acl TEXT NOT NULL CHECK (acl IN ('private', 'public-read')), modified_at TEXT NOT NULL, UNIQUE (bucket_id, key)
  );
  CREATE INDEX objects_blob ON objects (blob);
  CREATE TABLE uploads (
    id TEXT PRIMARY KEY, bucket_id TEXT NOT NULL REFERENCES buckets(id), key TEXT NOT NULL,
    content_type TEXT NOT NULL, meta TEXT NOT NULL, acl TEXT NOT NULL, created_at TEXT NOT NULL
  );
  CREATE TABLE upload_parts (
    id TEXT PRIMARY KEY, upload_id TEXT NOT NULL REFERENCES uploads(id), part INTEGER NOT NULL, blob TEXT NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, modified_at TEXT NOT NULL, UNIQUE (upload_id, part)
  );
  CREATE INDEX upload_parts_blob ON upload_parts (blob);
  CREATE TABLE object_requests (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL, hour_ms INTEGER NOT NULL,
    reads INTEGER NOT NULL, writes INTEGER NOT NULL
  );
  CREATE INDEX object_requests_project ON object_requests (project_id, hour_ms);
  CREATE TABLE object_quotas (project_id TEXT PRIMARY KEY REFERENCES projects(id), bytes INTEGER NOT NULL);
  CREATE TABLE usage_intervals_v6 (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT NOT NULL, resource_id TEXT NOT NULL,
    resource_name TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('cpu', 'memory', 'disk', 'object')),
    amount REAL NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER, last_ms INTEGER NOT NULL
  );
  INSERT INTO usage_intervals_v6 SELECT id, project_id, resource_id, resource_name, kind, amount, start_ms, end_ms, last_ms FROM usage_intervals;
  DROP TABLE usage_intervals;
  ALTER TABLE usage_intervals_v6 RENAME TO usage_intervals;
  CREATE INDEX usage_open ON usage_intervals (resource_id) WHERE end_ms IS NULL;
  CREATE INDEX usage_project ON usage_intervals (project_id, start_ms);
  `,
  // 7: instances with a graphical display (virtio-gpu + keyboard + tablet, shown over VNC).
  `
  ALTER TABLE instances ADD COLUMN display INTEGER NOT NULL DEFAULT 0 CHECK (display IN (0, 1));
  `,
  // 8: sandboxes (src/cloud/sandboxes): templates (an image booted, commands run, snapshotted) and
  // the sandboxes restored from them; a sandbox's name is its id (lookups go by id or name).
  `
  CREATE TABLE sandbox_templates (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id), image TEXT NOT NULL,
    run TEXT NOT NULL, memory_mib INTEGER NOT NULL, vcpus INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('building', 'ready', 'error')), error TEXT, created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
  );
  CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    template_id TEXT NOT NULL REFERENCES sandbox_templates(id),
    state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'paused')), vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL, network TEXT NOT NULL CHECK (network IN ('nat', 'none')), mac TEXT NOT NULL,
    envs TEXT NOT NULL, metadata TEXT NOT NULL, timeout_at INTEGER NOT NULL, pid INTEGER, snapshot TEXT,
    ancestors TEXT NOT NULL, created_at TEXT NOT NULL
  );
  CREATE INDEX sandboxes_project ON sandboxes (project_id);
  `,
  // 9: shares (src/cloud/shares): directories of a project that instances mount over virtio-9p;
  // an attachment per (share, instance), read-only or not, gone with its instance. (Every table has
  // a one-column primary key: the etcd store replicates rows by it.)
  `
  CREATE TABLE shares (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id),
    created_at TEXT NOT NULL, UNIQUE (project_id, name)
  );
  CREATE TABLE share_attachments (
    id TEXT PRIMARY KEY, share_id TEXT NOT NULL REFERENCES shares(id),
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    read_only INTEGER NOT NULL CHECK (read_only IN (0, 1)), attached_at TEXT NOT NULL,
    UNIQUE (share_id, instance_id)
  );
  CREATE INDEX share_attachments_instance ON share_attachments (instance_id);
  `,
];

/** The schema version this code expects. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/** Opens (creating if needed) the database at `path` and brings its schema up to date. */
export function openDatabase(path: string): DB {
  // SQLite creates the -wal and -shm files with the database file's mode.
  closeSync(openSync(path, "a", 0o600));
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.pragma("foreign_keys = ON");
  db.pragma("busy_timeout = 5000");
  migrate(db);
  return db;
}

export function migrate(db: DB): void {
  db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)");
  const row = db.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number | null };
  const current = row.v ?? 0;
  if (current > MIGRATIONS.length) {
    throw new Error(
      `the cloud database is at schema version ${current}, newer than this yun (${MIGRATIONS.length}); upgrade yun`,
    );
  }
  for (let v = current + 1; v <= MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v - 1]);
      db.prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)").run(v, new Date().toISOString());
    }).immediate();
  }
}

/** The tables that hold records (not SQLite's or the migrations' own). */
export function recordTables(db: DB): string[] {
  const names = (
    db
      .prepare(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name",
      )
      .all() as { name: string }[]
  ).map((r) => r.name);
  // Parents before children (foreign keys), so a store that applies rows in order never sees a
  // record whose parent is missing.
  const parents = new Map(
    names.map((n) => [
      n,
      (db.prepare(`PRAGMA foreign_key_list(${n})`).all() as { table: string }[])
        .map((f) => f.table)
        .filter((t) => t !== n),
    ]),
  );
  const out: string[] = [];
  const visit = (n: string, path: Set<string>): void => {
    if (out.includes(n) || path.has(n)) return;
    path.add(n);
    for (const p of parents.get(n) ?? []) if (parents.has(p)) visit(p, path);
    out.push(n);
  };
  for (const n of names) visit(n, new Set());
  return out;
}

/** The journal row (operations.id) of the request being served, carried through its async calls. */
const currentOperation = new AsyncLocalStorage<{ id: number }>();

/** Runs fn (and everything it awaits) on behalf of journal operation `id`. */
export function withOperation<T>(id: number, fn: () => T): T {
  return currentOperation.run({ id }, fn);
}

/** Runs fn outside any journal operation: the journal's own bookkeeping does not apply one. */
export function withoutOperation<T>(fn: () => T): T {
  return currentOperation.exit(fn);
}

/** The journal operation of the request being served, if any. */
export function operationId(): number | undefined {
  return currentOperation.getStore()?.id;
}

/**
 * Runs fn in a BEGIN IMMEDIATE transaction (the write lock is taken before anything is read).
 * Inside a request with a journal operation, a transaction that changed anything also marks the
 * operation applied, atomically with the change, so a restart knows whether it took effect.
 */
export function immediate<T>(db: DB, fn: () => T): T {
  return db.transaction(() => journaled(db, fn)).immediate();
}

/**
 * Runs fn (inside a transaction the caller opened) and, inside a request with a journal
 * operation, marks that operation applied if fn changed anything.
 */
export function journaled<T>(db: DB, fn: () => T): T {
  const op = operationId();
  if (op === undefined) return fn();
  const before = totalChanges(db);
  const out = fn();
  if (totalChanges(db) !== before) db.prepare("UPDATE operations SET applied = 1 WHERE id = ?").run(op);
  return out;
}

function totalChanges(db: DB): number {
  return (db.prepare("SELECT total_changes() AS n").get() as { n: number }).n;
}

const B32 = "abcdefghijklmnopqrstuvwxyz234567";

/** `n` random base32 characters. */
export function randomB32(n: number): string {
  const bytes = randomBytes(n);
  let s = "";
  for (let i = 0; i < n; i++) s += B32[bytes[i] & 31];
  return s;
}

/** A new id: prefix, '-', 10 random base32 characters (e.g. ins-k2j4m9q0ab). */
export function newId(prefix: string): string {
  return `${prefix}-${randomB32(10)}`;
}

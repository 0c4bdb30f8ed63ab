/**
 * Moving a cloud's records between stores: `yun cloud export` writes every record into one SQLite
 * database file (the store's own schema, so a file written by an older yun is brought up to date
 * by the same migrations on import), and `yun cloud import` loads such a file into a store (the
 * SQLite file of a YUN_HOME, or etcd): how a single-host cloud moves onto an etcd cluster.
 *
 * Only records move. The files they name (disks, images, snapshots under $YUN_HOME) stay where
 * they are: an import on the same host, or into a cluster whose hosts share that directory, finds
 * them; elsewhere, copy $YUN_HOME's data along.
 */
import Database from "better-sqlite3";
import { chmodSync, copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type DB, migrate, recordTables } from "../db.js";
import type { Store, TableRows } from "./store.js";

/** How many records each table holds. */
export function countRecords(db: DB): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of recordTables(db)) out[t] = (db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n;
  return out;
}

/** Writes the store's records into a new SQLite file at `file` (owner-only); returns the counts. */
export async function exportRecords(store: Store, file: string): Promise<Record<string, number>> {
  if (existsSync(file)) throw new Error(`${file} exists; give a new file name`);
  await store.sync();
  // One consistent copy: VACUUM INTO reads in a single transaction.
  store.db.prepare("VACUUM main INTO ?").run(file);
  chmodSync(file, 0o600);
  return countRecords(store.db);
}

/** Reads an export (any schema version this yun can migrate from) as rows per table. */
export function readExport(file: string): TableRows {
  if (!existsSync(file)) throw new Error(`${file} does not exist`);
  // The migrations run on a copy: the user's file stays as it was.
  const dir = mkdtempSync(join(tmpdir(), "yun-import-"));
  const copy = join(dir, "records.db");
  let db: DB | null = null;
  try {
    copyFileSync(file, copy);
    try {
      db = new Database(copy);
      const ok = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
      if (!ok) throw new Error("it has no schema_migrations table");
      migrate(db);
      db.pragma("foreign_keys = ON");
      const problems = db.pragma("foreign_key_check") as unknown[];
      if (problems.length > 0) throw new Error(`${problems.length} records name a parent record that is missing`);
    } catch (e) {
      throw new Error(`${file} is not a yun cloud export: ${(e as Error).message}`);
    }
    const rows: TableRows = [];
    for (const t of recordTables(db)) {
      rows.push({ table: t, rows: db.prepare(`SELECT * FROM ${t}`).all() as Record<string, unknown>[] });
    }
    return rows;
  } finally {
    db?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Loads an export (readExport's rows) into `store`. A store that already holds records (a cloud that ran) is refused
 * unless `replace`: then its records are replaced by the file's.
 */
export async function importRecords(
  store: Store,
  rows: TableRows,
  opts: { replace?: boolean } = {},
): Promise<Record<string, number>> {
  await store.sync();
  const held = Object.entries(countRecords(store.db)).filter(([, n]) => n > 0);
  if (held.length > 0 && opts.replace !== true) {
    throw new Error(
      `${store.location} already holds records (${held.map(([t, n]) => `${n} ${t}`).join(", ")}); ` +
        "give --replace to replace them with the file's",
    );
  }
  await store.replaceAll(rows);
  return countRecords(store.db);
}

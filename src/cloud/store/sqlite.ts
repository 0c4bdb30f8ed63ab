/**
 * The embedded store: one SQLite database file (WAL). A transaction is `BEGIN IMMEDIATE`
 * (db.ts immediate()), which takes SQLite's write lock before reading, so transactions are
 * serialized against other requests and other processes on the same file.
 */
import { type DB, immediate, openDatabase, recordTables } from "../db.js";
import type { Store, TableRows } from "./store.js";

export class SqliteStore implements Store {
  readonly location: string;
  readonly db: DB;

  /** Opens (creating if needed) the database at `path` and brings its schema up to date. */
  constructor(path: string) {
    this.location = `sqlite:${path}`;
    this.db = openDatabase(path);
  }

  transact<T>(fn: () => T): Promise<T> {
    // Runs at once, before the caller's next await: the same ordering as a synchronous call.
    try {
      return Promise.resolve(immediate(this.db, fn));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  sync(): Promise<void> {
    return Promise.resolve();
  }

  replaceAll(tables: TableRows): Promise<void> {
    try {
      this.db
        .transaction(() => {
          this.db.pragma("defer_foreign_keys = ON");
          for (const table of recordTables(this.db).reverse()) this.db.prepare(`DELETE FROM ${table}`).run();
          for (const { table, rows } of tables) {
            if (rows.length === 0) continue;
            const columns = Object.keys(rows[0]!);
            const insert = this.db.prepare(
              `INSERT INTO ${table} (${columns.join(", ")}) VALUES (${columns.map((c) => `@${c}`).join(", ")})`,
            );
            for (const row of rows) insert.run(row);
          }
        })
        .immediate();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  close(): Promise<void> {
    if (this.db.open) this.db.close();
    return Promise.resolve();
  }
}

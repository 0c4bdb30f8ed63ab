/**
 * The cloud's state behind one interface, with two implementations: SQLite (one host, the
 * default: sqlite.ts) and etcd (a cluster of API servers: etcd.ts).
 *
 * The records are one table per resource family (projects, users, tokens, flavors, images,
 * networks, keypairs, instances, volumes, snapshots, forwards, usage_intervals, events,
 * operations; schema and migrations in ../db.ts). Services read them with SQL through `db`, and
 * change them only inside `transact()`: everything one call changes is one atomic unit, and two
 * calls never interleave, in this process or across API servers. Quotas and state transitions
 * are checked and written in the same call, so they stay exact however many servers there are.
 */
import type { DB } from "../db.js";

/** Every record of every table, tables in an order where parents come before children. */
export type TableRows = { table: string; rows: Record<string, unknown>[] }[];

export interface Store {
  /** Where the records live, for messages: `sqlite:PATH` or `etcd:URL,...`. */
  readonly location: string;
  /**
   * The records as SQL tables. SQLite: the database itself. etcd: a local view that follows the
   * etcd keyspace (one key per record) through a watch.
   */
  readonly db: DB;
  /**
   * Runs fn as one atomic, serialized unit and resolves with its result; a throw changes nothing.
   * fn is synchronous and reads and writes only through `db` (no I/O it could not repeat), and
   * sees every change committed before it, by any server. Inside a request with a journal
   * operation, a call that changed anything also marks the operation applied (see db.ts).
   */
  transact<T>(fn: () => T): Promise<T>;
  /**
   * Brings `db` up to every change committed so far by any server (a read barrier; SQLite: at
   * once). An API server calls it before serving a request, so a client that changed something
   * through one server reads its change through another.
   */
  sync(): Promise<void>;
  /**
   * Replaces every record with `tables` (`yun cloud import`, see transfer.ts). SQLite: one
   * transaction. etcd: more records than one etcd transaction holds, so in several under the
   * cluster's write lock; the API servers on that cluster are to be stopped meanwhile.
   */
  replaceAll(tables: TableRows): Promise<void>;
  close(): Promise<void>;
}

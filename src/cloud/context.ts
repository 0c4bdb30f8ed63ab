/**
 * What a service's logic uses of the cloud around it: the records, the clock, roles and the one
 * place tenancy is enforced (a resource looked up by id or name within the caller's project, so
 * another project's resource is indistinguishable from a missing one: 404).
 */
import type { DB } from "./db.js";
import type { Store } from "./store/store.js";
import type { Principal } from "./cloud.js";
import type { Quotas } from "./types.js";

export interface ServiceContext {
  readonly store: Store;
  /** The records as SQL tables (store.db). */
  readonly db: DB;
  /** Now, as the records write times. */
  iso(): string;
  /** 403 unless the caller may change its project's resources. */
  requireWrite(p: Principal): void;
  /** The project a request acts in: the caller's, or for an admin the one `?project=` names. */
  actingProject(p: Principal, query: string | undefined): string;
  /** The row of `table` named by id or name that the caller may see (else 404 "no WHAT NAME"). */
  scoped<T extends { project_id: string }>(
    p: Principal,
    table: string,
    what: string,
    idOrName: string,
    projectQuery?: string,
  ): T;
  /** Throws quota_exceeded naming the first quota that `add` would overrun (inside a transaction). */
  checkQuota(projectId: string, add: Partial<Quotas>): void;
  /** Records an audit event (inside the transaction of the change it describes). */
  audit(
    actor: { id: string | null; name: string } | string,
    projectId: string,
    action: string,
    resource: string,
    outcome: string,
    message?: string | null,
  ): void;
  /** The rows of `table` the caller may list, oldest first. */
  listScoped<T>(p: Principal, table: string, projectQuery?: string): T[];
}

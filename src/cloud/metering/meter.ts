/**
 * Metering: usage is a set of intervals per resource and kind (cpu: vCPUs while running; memory:
 * GiB while running or paused; disk: GiB while the disk exists). An interval opens and closes with
 * state transitions (inside the transition's transaction); a periodic tick records when the daemon
 * last saw its resources (one record, meter_ticks), so after a daemon crash an interval whose VM is
 * gone closes at the last tick (at most one tick lost) and one whose VM still runs stays open.
 * Object storage: object (GiB a bucket holds, re-opened as it changes; see objects/service.ts),
 * and request counts per project and hour (table object_requests).
 */
import type { DB } from "../db.js";
import type { InstanceUsage, Usage } from "../types.js";

export type MeterKind = "cpu" | "memory" | "disk" | "object";

export class Meter {
  constructor(
    private readonly db: DB,
    private readonly now: () => number,
  ) {}

  open(projectId: string, resourceId: string, name: string, kind: MeterKind, amount: number, at = this.now()): void {
    this.db
      .prepare(
        `INSERT INTO usage_intervals (project_id, resource_id, resource_name, kind, amount, start_ms, last_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(projectId, resourceId, name, kind, amount, at, at);
  }

  /** Closes the open intervals of `resourceId` of the given kinds at `at`. */
  close(resourceId: string, kinds: MeterKind[], at = this.now()): void {
    const st = this.db.prepare(
      "UPDATE usage_intervals SET end_ms = max(start_ms, ?), last_ms = max(start_ms, ?) WHERE resource_id = ? AND kind = ? AND end_ms IS NULL",
    );
    for (const k of kinds) st.run(at, at, resourceId, k);
  }

  /** Closes open intervals at their last tick (the resource stopped while nobody watched). */
  closeAtLastTick(resourceId: string, kinds: MeterKind[]): void {
    const st = this.db.prepare(
      `UPDATE usage_intervals SET end_ms = max(start_ms, coalesce((SELECT last_ms FROM meter_ticks), 0)),
         last_ms = max(start_ms, coalesce((SELECT last_ms FROM meter_ticks), 0))
       WHERE resource_id = ? AND kind = ? AND end_ms IS NULL`,
    );
    for (const k of kinds) st.run(resourceId, k);
  }

  isOpen(resourceId: string, kind: MeterKind): boolean {
    return (
      this.db
        .prepare("SELECT 1 FROM usage_intervals WHERE resource_id = ? AND kind = ? AND end_ms IS NULL")
        .get(resourceId, kind) !== undefined
    );
  }

  tick(at = this.now()): void {
    this.db
      .prepare(
        "INSERT INTO meter_ticks VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET last_ms = excluded.last_ms WHERE excluded.last_ms > last_ms",
      )
      .run(at);
  }

  /** Usage of `projectId` between fromMs and toMs (open intervals count until now). */
  usage(projectId: string, fromMs: number, toMs: number): Usage {
    const now = this.now();
    const rows = this.db
      .prepare(
        `SELECT resource_id AS id, resource_name AS name, kind, amount, start_ms AS s, end_ms AS e
         FROM usage_intervals WHERE project_id = ? AND start_ms < ? AND (end_ms IS NULL OR end_ms > ?)
         ORDER BY id`,
      )
      .all(projectId, toMs, fromMs) as {
      id: string;
      name: string;
      kind: MeterKind;
      amount: number;
      s: number;
      e: number | null;
    }[];
    const per = new Map<string, InstanceUsage>();
    let cpuMs = 0;
    let memMs = 0;
    let diskMs = 0;
    let objectMs = 0;
    for (const r of rows) {
      const ms = Math.max(0, Math.min(r.e ?? now, toMs) - Math.max(r.s, fromMs)) * r.amount;
      let u = per.get(r.id);
      if (!u) {
        u = { id: r.id, name: r.name, vcpuSeconds: 0, memoryGiBHours: 0, diskGiBHours: 0, objectGiBHours: 0 };
        per.set(r.id, u);
      }
      if (r.kind === "cpu") {
        cpuMs += ms;
        u.vcpuSeconds += ms / 1000;
      } else if (r.kind === "memory") {
        memMs += ms;
        u.memoryGiBHours += ms / 3_600_000;
      } else if (r.kind === "object") {
        objectMs += ms;
        u.objectGiBHours += ms / 3_600_000;
      } else {
        diskMs += ms;
        u.diskGiBHours += ms / 3_600_000;
      }
    }
    const round = (x: number, d: number): number => Math.round(x * 10 ** d) / 10 ** d;
    const items = [...per.values()].map((u) => ({
      ...u,
      vcpuSeconds: round(u.vcpuSeconds, 3),
      memoryGiBHours: round(u.memoryGiBHours, 6),
      diskGiBHours: round(u.diskGiBHours, 6),
      objectGiBHours: round(u.objectGiBHours, 6),
    }));
    const hour = 3_600_000;
    const requests = this.db
      .prepare(
        "SELECT ifnull(sum(reads), 0) AS reads, ifnull(sum(writes), 0) AS writes FROM object_requests WHERE project_id = ? AND hour_ms < ? AND hour_ms > ?",
      )
      .get(projectId, toMs, fromMs - hour) as { reads: number; writes: number };
    return {
      project: projectId,
      from: new Date(fromMs).toISOString(),
      to: new Date(Math.min(toMs, now)).toISOString(),
      vcpuSeconds: round(cpuMs / 1000, 3),
      memoryGiBHours: round(memMs / 3_600_000, 6),
      diskGiBHours: round(diskMs / 3_600_000, 6),
      objectGiBHours: round(objectMs / 3_600_000, 6),
      objectRequests: requests,
      instances: items,
    };
  }
}

/** Usage as CSV: a header line, then one line per resource, then the project's total. */
export function usageCsv(u: Usage): string {
  const q = (s: string): string => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const lines = ["project,resource,name,from,to,vcpu_seconds,memory_gib_hours,disk_gib_hours"];
  for (const i of u.instances) {
    lines.push([u.project, i.id, q(i.name), u.from, u.to, i.vcpuSeconds, i.memoryGiBHours, i.diskGiBHours].join(","));
  }
  lines.push([u.project, "total", "", u.from, u.to, u.vcpuSeconds, u.memoryGiBHours, u.diskGiBHours].join(","));
  return lines.join("\n") + "\n";
}

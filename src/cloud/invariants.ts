/**
 * The cloud's invariants, checked from the outside: its database (read-only), its files under
 * $YUN_HOME/cloud and the processes of the host. They hold whenever no request is in flight, in
 * particular right after a (re)start's reconcile(), whatever killed the previous run:
 * - every record's files exist and open; every file belongs to a record (no orphans);
 * - every live VM monitor of this cloud belongs to a running or paused instance, and every running
 *   or paused instance has its monitor; no instance is left in a transient state;
 * - metering matches the records (one open disk interval per instance and volume, of its size;
 *   cpu for running instances, memory for running and paused ones; object per bucket, at the GiB
 *   it holds), so quota usage, computed from the same records, does too;
 * - object storage: every record's blob is on disk and every blob belongs to a record, with no
 *   temporary file left;
 * - the audit log is complete: the journal holds no unfinished operation, every instance and
 *   volume has its successful create event, every one created and gone has its delete event, every
 *   snapshot its volume.snapshot event.
 * checkCloudInvariants answers the violations as sentences (none: all hold).
 */
import Database from "better-sqlite3";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { openDiskImage } from "../storage/image.js";
import { processAlive } from "../vmm/registry.js";
import { cloudMonitorProcesses } from "./compute/driver.js";

interface Row {
  [k: string]: string | number | null;
}

/** Whether a disk image opens (its header, tables and backing chain). */
function opens(path: string): boolean {
  try {
    openDiskImage(path, { readOnly: true, lock: false }).close();
    return true;
  } catch {
    return false;
  }
}

/** The `--name` of process `pid`, or null. */
function monitorName(pid: number): string | null {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const i = cmd.indexOf("--name");
    return i >= 0 ? cmd[i + 1] : null;
  } catch {
    return null;
  }
}

export function checkCloudInvariants(home: string): string[] {
  const dir = join(home, "cloud");
  const db = new Database(join(dir, "yun.db"), { readonly: true, fileMustExist: true });
  const v: string[] = [];
  try {
    const all = (sql: string, ...args: unknown[]) => db.prepare(sql).all(...args) as Row[];
    const instances = all("SELECT * FROM instances");
    const volumes = all("SELECT * FROM volumes");
    const snapshots = all("SELECT * FROM snapshots");
    const images = all("SELECT * FROM images WHERE source = 'upload'");

    // ---- the journal
    for (const op of all("SELECT * FROM operations"))
      v.push(`operation ${op.id} (${op.action} ${op.resource} by ${op.user_name}) was never finished`);

    // ---- instances and their VMs
    const ids = new Set(instances.map((r) => r.id as string));
    for (const r of instances) {
      const what = `instance ${r.name} (${r.id})`;
      const state = r.state as string;
      if (!["running", "paused", "stopped", "error"].includes(state)) v.push(`${what} is left ${state}`);
      if (state !== "error") {
        if (!opens(join(r.dir as string, "root.qcow2")))
          v.push(`${what} is ${state} but its root disk is missing or unreadable`);
        if ((r.user_data !== null || r.keypair_id !== null) && !existsSync(join(r.dir as string, "seed.ext4")))
          v.push(`${what} has user data or a key but no seed disk`);
      }
      const pid = r.pid as number | null;
      if (state === "running" || state === "paused") {
        if (pid === null || !processAlive(pid) || monitorName(pid) !== r.id)
          v.push(`${what} is ${state} but its VM monitor (pid ${pid}) is not running`);
      } else if (pid !== null) v.push(`${what} is ${state} but still records pid ${pid}`);
    }
    for (const m of cloudMonitorProcesses(home)) {
      const owner = instances.find((r) => r.id === m.name);
      if (!owner || owner.pid !== m.pid || !["running", "paused"].includes(owner.state as string))
        v.push(`VM monitor pid ${m.pid} (${m.name}) belongs to no running instance (an orphan)`);
    }

    // ---- volumes, snapshots, images and their files
    for (const r of volumes) {
      if (!opens(r.path as string)) v.push(`volume ${r.name} (${r.id}): its file ${r.path} is missing or unreadable`);
      if (r.instance_id !== null && !ids.has(r.instance_id as string))
        v.push(`volume ${r.name} (${r.id}) is attached to instance ${r.instance_id}, which does not exist`);
    }
    for (const r of snapshots)
      if (!existsSync(r.path as string)) v.push(`snapshot ${r.name} (${r.id}): its file ${r.path} is missing`);
    for (const r of images)
      if (!existsSync(r.path as string)) v.push(`image ${r.name} (${r.id}): its file ${r.path} is missing`);
    const owned = (sub: string, rows: Row[]) => {
      const paths = new Set(rows.map((r) => r.path as string));
      for (const f of readdirSync(join(dir, sub))) {
        const path = join(dir, sub, f);
        const base = path.replace(/\.yun-lock$/, "");
        if (paths.has(base)) continue;
        v.push(`${sub}/${f} belongs to no record (an orphan file)`);
      }
    };
    owned("volumes", volumes);
    owned("snapshots", snapshots);
    owned("images", images);
    for (const d of readdirSync(join(dir, "instances")))
      if (!ids.has(d)) v.push(`instances/${d} belongs to no instance (an orphan directory)`);

    // ---- object storage: every record's blob is on disk, every blob a record's, no temporaries
    const blobRefs = new Set(
      all("SELECT blob FROM objects UNION SELECT blob FROM upload_parts").map((r) => r.blob as string),
    );
    const blobDir = join(dir, "objects", "blobs");
    const onDisk = new Set<string>();
    if (existsSync(blobDir))
      for (const d of readdirSync(blobDir)) for (const f of readdirSync(join(blobDir, d))) onDisk.add(f);
    for (const b of blobRefs) if (!onDisk.has(b)) v.push(`object storage: blob ${b} of a record is missing`);
    for (const b of onDisk) if (!blobRefs.has(b)) v.push(`objects/blobs/${b} belongs to no record (an orphan blob)`);
    const tmpDir = join(dir, "objects", "tmp");
    if (existsSync(tmpDir))
      for (const f of readdirSync(tmpDir)) v.push(`objects/tmp/${f} is a temporary file left behind`);

    // ---- metering (and so quota usage) against the records
    const open = new Map<string, number>();
    for (const r of all("SELECT resource_id, kind, amount FROM usage_intervals WHERE end_ms IS NULL")) {
      const key = `${r.resource_id} ${r.kind}`;
      if (open.has(key)) v.push(`metering: ${r.resource_id} has two open ${r.kind} intervals`);
      open.set(key, r.amount as number);
    }
    const want = new Map<string, number>();
    for (const r of instances) {
      want.set(`${r.id} disk`, r.disk_gib as number);
      if (r.state === "running") want.set(`${r.id} cpu`, r.vcpus as number);
      if (r.state === "running" || r.state === "paused") want.set(`${r.id} memory`, (r.memory_mib as number) / 1024);
    }
    for (const r of volumes) want.set(`${r.id} disk`, r.size_gib as number);
    for (const r of all(
      "SELECT b.id AS id, (SELECT ifnull(sum(size), 0) FROM objects WHERE bucket_id = b.id) AS bytes FROM buckets b",
    ))
      want.set(`${r.id} object`, (r.bytes as number) / 1024 ** 3);
    for (const [key, amount] of want)
      if (open.get(key) !== amount)
        v.push(`metering: ${key} should be open at ${amount}, is ${open.get(key) ?? "not open"}`);
    for (const key of open.keys()) if (!want.has(key)) v.push(`metering: ${key} is open for no record`);

    // ---- the audit log
    const okEvents = new Set(
      all("SELECT action, resource FROM events WHERE outcome = 'ok'").map((e) => `${e.action} ${e.resource}`),
    );
    for (const r of instances)
      if (!okEvents.has(`instance.create ${r.id}`))
        v.push(`audit: instance ${r.name} (${r.id}) has no instance.create event`);
    for (const r of volumes)
      if (!okEvents.has(`volume.create ${r.id}`))
        v.push(`audit: volume ${r.name} (${r.id}) has no volume.create event`);
    for (const r of snapshots)
      if (!okEvents.has(`volume.snapshot ${r.volume_id}`))
        v.push(`audit: snapshot ${r.name} (${r.id}) has no volume.snapshot event on volume ${r.volume_id}`);
    const vols = new Set(volumes.map((r) => r.id as string));
    for (const key of okEvents) {
      const [action, resource] = key.split(" ");
      if (
        action === "instance.create" &&
        resource.startsWith("ins-") &&
        !ids.has(resource) &&
        !okEvents.has(`instance.delete ${resource}`)
      )
        v.push(`audit: instance ${resource} is gone without an instance.delete event`);
      if (
        action === "volume.create" &&
        resource.startsWith("vol-") &&
        !vols.has(resource) &&
        !okEvents.has(`volume.delete ${resource}`)
      )
        v.push(`audit: volume ${resource} is gone without a volume.delete event`);
    }
  } finally {
    db.close();
  }
  return v;
}

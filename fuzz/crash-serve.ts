/**
 * Crash rounds for `yun serve`: a real daemon (node bin/yun.js serve, its own YUN_HOME) serves two
 * concurrent streams of random requests of a member (instances created, started, stopped and
 * deleted, some with real VM monitors; volumes created, deleted, attached, detached, snapshotted;
 * snapshots deleted and cloned) and is SIGKILLed at a random moment. After the restart (whose
 * reconcile() settles what the kill cut off) every invariant of src/cloud/invariants.ts must hold,
 * the quota usage the API reports must equal the records, and every request of the round must have
 * its audit event: the answered ones with the outcome the client got, the cut-off ones with what
 * the restart made of them ("ok" if their change had committed, "interrupted" if not).
 *
 * The state carries over from round to round, so what one restart leaves is the next round's
 * starting point. VMs really boot (the debian image), but only a few creates and starts ask for
 * one and at most two run at a time: a boot costs 10-20 s of a core, a request milliseconds.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { YunApiError, YunClient } from "../src/cloud/client.js";
import { checkCloudInvariants } from "../src/cloud/invariants.js";
import { cloudMonitorProcesses } from "../src/cloud/compute/driver.js";
import type { Instance, Snapshot, Volume } from "../src/cloud/types.js";
import { YUN, sleep } from "../test/e2e/harness.js";
import { REAL_IMAGES } from "../test/cloud/helpers.js";
import { Rng } from "../test/support/rng.js";

export interface ServeCrashOptions {
  rounds: number;
  seed?: number;
  log?: (line: string) => void;
  /** Kill the daemon within this many ms of a round's first request (default 1500). */
  maxKillMs?: number;
}

export interface ServeCrashReport {
  rounds: number;
  kills: number;
  violations: string[];
  seconds: number;
  /** Requests sent; answered; cut off by the kill (and of those, how the restart audited them). */
  requests: number;
  answered: number;
  cutOff: number;
  recoveredOk: number;
  recoveredInterrupted: number;
  /** Instances the restarts found running and re-attached; monitors started. */
  reattached: number;
  vmStarts: number;
  /** Cut-off requests without an event, and without an effect: the daemon died before reading them. */
  unreceived: number;
  /** Restarts killed too (during their own start and reconcile) before the one that was checked. */
  restartKills: number;
}

export interface Daemon {
  child: ChildProcess;
  url: string;
  out: () => string;
}

/** Starts `yun serve --port 0` on `home`; resolves once it listens (after its reconcile). */
export function startDaemon(home: string): Promise<Daemon> {
  const child = spawn(process.execPath, [YUN, "serve", "--port", "0"], {
    env: { ...process.env, YUN_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(out);
      if (m) {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve({ child, url: m[1], out: () => out });
      }
    }, 20);
    const deadline = setTimeout(() => {
      clearInterval(timer);
      child.kill("SIGKILL");
      reject(new Error(`yun serve did not listen within 120 s: ${out}`));
    }, 120_000);
    child.once("exit", (code, signal) => {
      clearInterval(timer);
      clearTimeout(deadline);
      reject(new Error(`yun serve exited (${code ?? signal}) before it listened: ${out}`));
    });
  });
}

/** Starts `yun serve` and SIGKILLs it after `ms`, wherever it is (its restart's reconcile, say). */
async function startAndKill(home: string, ms: number): Promise<void> {
  const child = spawn(process.execPath, [YUN, "serve", "--port", "0"], {
    env: { ...process.env, YUN_HOME: home },
    stdio: "ignore",
  });
  const exited = new Promise((r) => child.once("exit", r));
  await sleep(ms);
  child.kill("SIGKILL");
  await exited;
}

export async function killDaemon(d: Daemon): Promise<void> {
  if (d.child.exitCode !== null || d.child.signalCode !== null) return;
  const gone = new Promise((r) => d.child.once("exit", r));
  d.child.kill("SIGKILL");
  await gone;
}

/** One request of a round: what it was, and what the client got. */
interface Sent {
  action: string;
  /** The id (or, for a create, the name) the request named. */
  resource: string;
  /** The id the answer gave a created resource; the name a snapshot was to get. */
  id?: string;
  name?: string;
  /** "ok", an error code, or null: cut off by the kill. */
  outcome: string | null;
}

/** What the workers know of the project (refreshed from the API at each round's start). */
interface Model {
  instances: Instance[];
  volumes: Volume[];
  snapshots: Snapshot[];
}

export async function serveCrashRounds(opts: ServeCrashOptions): Promise<ServeCrashReport> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const rng = new Rng(opts.seed ?? 1);
  const maxKillMs = opts.maxKillMs ?? 1500;
  const report: ServeCrashReport = {
    rounds: 0,
    kills: 0,
    violations: [],
    seconds: 0,
    requests: 0,
    answered: 0,
    cutOff: 0,
    recoveredOk: 0,
    recoveredInterrupted: 0,
    reattached: 0,
    vmStarts: 0,
    unreceived: 0,
    restartKills: 0,
  };
  const root = mkdtempSync(join(tmpdir(), "yun-crash-serve-"));
  const home = join(root, "home");
  mkdirSync(home, { recursive: true });
  if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
  let daemon = await startDaemon(home);
  let names = 0;
  try {
    const adminToken = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
    let admin = new YunClient({ server: daemon.url, token: adminToken });
    const project = await admin.createProject({
      name: "crash",
      quotas: { instances: 6, vcpus: 16, memoryMiB: 4096, diskGiB: 40 },
    });
    const user = await admin.createUser({ name: "alice", role: "member", project: project.id });
    const token = (await admin.createToken(user.id)).token;

    for (let round = 1; round <= opts.rounds; round++) {
      const t0 = Date.now();
      let member = new YunClient({ server: daemon.url, token });
      const model: Model = {
        instances: await member.listInstances(),
        volumes: await member.listVolumes(),
        snapshots: await member.listSnapshots(),
      };
      const lastEvent = maxEventId(home);
      const sent: Sent[] = [];
      let killed = false;
      const send = async (op: Op): Promise<unknown> => {
        const s: Sent = { action: op.action, resource: op.resource, name: op.name, outcome: null };
        sent.push(s);
        try {
          const r = await op.call(member);
          s.outcome = "ok";
          if (r && typeof r === "object" && "id" in r) s.id = String((r as { id: unknown }).id);
          return r;
        } catch (e) {
          if (e instanceof YunApiError && e.status !== 0) s.outcome = e.code;
          else if (!killed) throw e;
          return undefined;
        }
      };
      const worker = async (): Promise<void> => {
        while (!killed) {
          const op = pickOp(rng, model, () => `r${round}n${++names}`);
          if (op === null) {
            await sleep(20);
            continue;
          }
          if (op.vm) report.vmStarts++;
          const r = await send(op);
          if (r !== undefined) op.apply?.(model, r);
          if (op.refresh && !killed) await refresh(member, model).catch(() => undefined);
        }
      };
      const workers = [worker(), worker()];
      await sleep(rng.int(0, maxKillMs));
      killed = true;
      await killDaemon(daemon);
      report.kills++;
      await Promise.allSettled(workers);
      const after = daemon.out();
      // Now and then the restart is killed as well, in its own reconcile: recovery must be idempotent.
      if (rng.bool(0.2)) {
        await startAndKill(home, rng.int(100, 1500));
        report.kills++;
        report.restartKills++;
      }
      daemon = await startDaemon(home);
      const re = /re-attached to (\d+) running VM/.exec(daemon.out());
      if (re) report.reattached += Number(re[1]);
      member = new YunClient({ server: daemon.url, token });
      admin = new YunClient({ server: daemon.url, token: adminToken });

      const problems = checkCloudInvariants(home);
      problems.push(...(await checkQuota(admin, project.id)));
      problems.push(...checkRoundAudit(home, lastEvent, sent, report));
      report.requests += sent.length;
      report.answered += sent.filter((s) => s.outcome !== null).length;
      report.cutOff += sent.filter((s) => s.outcome === null).length;
      report.rounds++;
      for (const p of problems) report.violations.push(`serve round ${round}: ${p}`);
      if (problems.length > 0 && /internal error/.test(after))
        report.violations.push(`serve round ${round}: daemon output: ${after.slice(-800)}`);
      const cut = sent.filter((s) => s.outcome === null).map((s) => s.action);
      log(
        `serve round ${round}: ${sent.length} requests, cut off: ${cut.join(", ") || "none"}; ` +
          `${problems.length === 0 ? "invariants hold" : problems.length + " violation(s)"} in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
      );
      if (problems.length > 0) for (const p of problems.slice(0, 5)) log(`  ${p}`);
    }
  } finally {
    await killDaemon(daemon);
    // The monitors the daemon started for this campaign's instances (found by their sockets).
    for (const m of cloudMonitorProcesses(home)) {
      try {
        process.kill(-m.pid, "SIGKILL");
      } catch {}
      try {
        process.kill(m.pid, "SIGKILL");
      } catch {}
    }
    rmSync(root, { recursive: true, force: true });
    report.seconds = (Date.now() - started) / 1000;
  }
  return report;
}

async function refresh(c: YunClient, m: Model): Promise<void> {
  m.instances = await c.listInstances();
  m.volumes = await c.listVolumes();
  m.snapshots = await c.listSnapshots();
}

interface Op {
  action: string;
  resource: string;
  call: (c: YunClient) => Promise<unknown>;
  apply?: (m: Model, result: unknown) => void;
  /** Re-read the model afterwards (the change touched more than one resource). */
  refresh?: boolean;
  /** Starts a VM. */
  vm?: boolean;
  /** The name a snapshot is to get. */
  name?: string;
}

/** A random request that makes sense in the model's state (or now and then one that does not). */
function pickOp(rng: Rng, m: Model, name: () => string): Op | null {
  const running = m.instances.filter((i) => ["running", "building", "paused"].includes(i.state));
  const stopped = m.instances.filter((i) => i.state === "stopped" || i.state === "error");
  const free = m.volumes.filter((v) => v.instance === null);
  const attached = m.volumes.filter((v) => v.instance !== null);
  const choices: (() => Op | null)[] = [];
  const w = (n: number, f: () => Op | null) => {
    for (let i = 0; i < n; i++) choices.push(f);
  };
  const crowded = m.instances.length >= 5 || m.volumes.length >= 8;
  w(crowded ? 1 : 4, () => {
    const n = name();
    const start = running.length < 2 && rng.bool(0.15);
    return {
      action: "instance.create",
      resource: n,
      vm: start,
      call: (c) => c.createInstance({ name: n, image: "debian-tiny", flavor: "tiny", start }),
      apply: (mm, r) => mm.instances.push(r as Instance),
    };
  });
  if (m.instances.length > 0)
    w(crowded ? 5 : 2, () => {
      const i = rng.pick(m.instances);
      return {
        action: "instance.delete",
        resource: i.id,
        call: (c) => c.deleteInstance(i.id),
        apply: (mm) => (mm.instances = mm.instances.filter((x) => x.id !== i.id)),
        refresh: true,
      };
    });
  if (stopped.length > 0 && running.length < 2)
    w(1, () => {
      const i = rng.pick(stopped);
      return { action: "instance.start", resource: i.id, vm: true, call: (c) => c.startInstance(i.id), refresh: true };
    });
  if (running.length > 0)
    w(3, () => {
      const i = rng.pick(running);
      return { action: "instance.stop", resource: i.id, call: (c) => c.stopInstance(i.id), refresh: true };
    });
  w(crowded ? 1 : 4, () => {
    const n = name();
    const snap = m.snapshots.length > 0 && rng.bool(0.3) ? rng.pick(m.snapshots) : undefined;
    return {
      action: "volume.create",
      resource: n,
      call: (c) => c.createVolume(snap ? { name: n, snapshot: snap.id } : { name: n, sizeGiB: 1 }),
      apply: (mm, r) => mm.volumes.push(r as Volume),
    };
  });
  if (m.volumes.length > 0)
    w(crowded ? 4 : 2, () => {
      const v = rng.pick(m.volumes);
      return {
        action: "volume.delete",
        resource: v.id,
        call: (c) => c.deleteVolume(v.id),
        apply: (mm) => (mm.volumes = mm.volumes.filter((x) => x.id !== v.id)),
      };
    });
  if (free.length > 0 && m.instances.length > 0)
    w(3, () => {
      const v = rng.pick(free);
      const i = stopped.length > 0 ? rng.pick(stopped) : rng.pick(m.instances);
      return { action: "volume.attach", resource: v.id, call: (c) => c.attachVolume(v.id, i.id), refresh: true };
    });
  if (attached.length > 0)
    w(3, () => {
      const v = rng.pick(attached);
      return { action: "volume.detach", resource: v.id, call: (c) => c.detachVolume(v.id), refresh: true };
    });
  if (m.volumes.length > 0)
    w(3, () => {
      const v = rng.pick(m.volumes);
      const n = name();
      return {
        action: "volume.snapshot",
        resource: v.id,
        name: n,
        call: (c) => c.createSnapshot(v.id, n),
        apply: (mm, r) => mm.snapshots.push(r as Snapshot),
      };
    });
  if (m.snapshots.length > 0)
    w(m.snapshots.length > 6 ? 4 : 1, () => {
      const s = rng.pick(m.snapshots);
      return {
        action: "snapshot.delete",
        resource: s.id,
        call: (c) => c.deleteSnapshot(s.id),
        apply: (mm) => (mm.snapshots = mm.snapshots.filter((x) => x.id !== s.id)),
      };
    });
  return rng.pick(choices)();
}

function maxEventId(home: string): number {
  const db = new Database(join(home, "cloud", "yun.db"), { readonly: true });
  try {
    return (db.prepare("SELECT ifnull(max(id), 0) AS n FROM events").get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/** Quota usage as the API reports it against the sums of the records. */
async function checkQuota(admin: YunClient, project: string): Promise<string[]> {
  const q = await admin.getQuotas(project);
  const instances = await admin.request<{ items: Instance[] }>("GET", "/api/v1/instances", { query: { project } });
  const volumes = await admin.request<{ items: Volume[] }>("GET", "/api/v1/volumes", { query: { project } });
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const want = {
    instances: instances.items.length,
    vcpus: sum(instances.items.map((i) => i.vcpus)),
    memoryMiB: sum(instances.items.map((i) => i.memoryMiB)),
    diskGiB: sum(instances.items.map((i) => i.diskGiB)) + sum(volumes.items.map((v) => v.sizeGiB)),
  };
  const out: string[] = [];
  for (const k of Object.keys(want) as (keyof typeof want)[])
    if (q.used[k] !== want[k]) out.push(`quota usage ${k} is ${q.used[k]}, the records sum to ${want[k]}`);
  return out;
}

/**
 * Every request of the round has its event: matched by action and by resource (the id, or for a
 * create the name, or the id of what the name became). Answered ones with the outcome the client
 * saw; cut-off ones with "ok" (applied), "interrupted" (not), or an error (refused before the kill).
 */
function checkRoundAudit(home: string, lastEvent: number, sent: Sent[], report: ServeCrashReport): string[] {
  const db = new Database(join(home, "cloud", "yun.db"), { readonly: true });
  try {
    const events = db
      .prepare("SELECT id, action, resource, outcome, user_name FROM events WHERE id > ? ORDER BY id")
      .all(lastEvent) as { id: number; action: string; resource: string; outcome: string; user_name: string }[];
    const idOf = (name: string): string | undefined =>
      (
        db
          .prepare("SELECT id FROM instances WHERE name = ? UNION SELECT id FROM volumes WHERE name = ?")
          .get(name, name) as { id: string } | undefined
      )?.id;
    const exists = (id: string): boolean =>
      ["instances", "volumes", "snapshots"].some((t) => db.prepare(`SELECT 1 FROM ${t} WHERE id = ?`).get(id));
    const snapshotNamed = (name: string): boolean => !!db.prepare("SELECT 1 FROM snapshots WHERE name = ?").get(name);
    const used = new Set<number>();
    const out: string[] = [];
    for (const s of sent) {
      const targets = new Set([s.resource, s.id, idOf(s.resource)]);
      const e = events.find(
        (ev) =>
          !used.has(ev.id) &&
          ev.user_name === "alice" &&
          ev.action === s.action &&
          targets.has(ev.resource) &&
          (s.outcome === null || ev.outcome === s.outcome),
      );
      if (!e && s.outcome === null) {
        // Sent, but the daemon died before it read the request: then nothing may have changed.
        const effect = s.action.endsWith(".create")
          ? idOf(s.resource) !== undefined
          : s.action.endsWith(".delete")
            ? !exists(s.resource) &&
              !events.some((ev) => ev.action === s.action && ev.resource === s.resource && ev.outcome === "ok")
            : s.action === "volume.snapshot"
              ? snapshotNamed(s.name ?? "")
              : false;
        if (!effect) {
          report.unreceived++;
          continue;
        }
        out.push(`audit: ${s.action} ${s.resource} took effect (cut off by the kill) but has no event`);
        continue;
      }
      if (!e) {
        out.push(`audit: no event for ${s.action} ${s.resource} (${s.outcome})`);
        continue;
      }
      used.add(e.id);
      if (s.outcome === null) {
        if (e.outcome === "ok") report.recoveredOk++;
        else if (e.outcome === "interrupted") report.recoveredInterrupted++;
      }
    }
    return out;
  } finally {
    db.close();
  }
}

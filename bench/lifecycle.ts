/**
 * VM lifecycle benchmark: snapshot, restore and live migration of a busy 256 MiB Debian guest,
 * Yun beside QEMU TCG on the same kernel, initramfs and root disk.
 *
 * The guest runs a counter and rewrites 8 MiB of tmpfs in a loop (a steady stream of dirty pages).
 *   Yun   `yun run --headless` driven through its control API: `snapshot` (time and size),
 *         `yun run --restore` (from spawn until its control API reports the VM running), `migrate` to a `yun run --incoming`
 *         process on 127.0.0.1 (total time, downtime, rounds as the source reports them).
 *   QEMU  qemu-system-riscv64 -M virt driven through QMP: `migrate` to `exec:cat > FILE` (the
 *         snapshot), a second QEMU with `-incoming exec:cat FILE` (restore: spawn until QMP says
 *         running), and `migrate` to a third QEMU with `-incoming tcp:127.0.0.1:PORT` (total time
 *         and downtime from `query-migrate`).
 * Afterwards the counter must still run on Yun's destination (checked through its console).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageInfo } from "../src/images/store.js";
import { createQcow2 } from "../src/storage/image.js";
import { MonitorConnection, openConsole } from "../src/vmm/client.js";
import { qemuVirtArgs } from "./qemu.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));
const PROMPT = "~ # ";
const APPEND = "console=ttyS0 cryptomgr.notests root=/dev/vda";
const WORKLOAD =
  "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 1; done & " +
  "while true; do dd if=/dev/zero of=/tmp/x bs=1M count=8 2>/dev/null; done &";

export interface LifecycleResult {
  engine: "yun" | "qemu";
  snapshotMs?: number;
  snapshotMiB?: number;
  restoreMs?: number;
  migrateTotalMs?: number;
  migrateDowntimeMs?: number;
  error?: string;
}

/** Text from a stream, with waits for a pattern. */
export class Text {
  text = "";
  private waiters: (() => void)[] = [];
  private ended = false;
  feed(s: string): void {
    this.text += s;
    this.wake();
  }
  end(): void {
    this.ended = true;
    this.wake();
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  wait(what: string, re: RegExp, timeoutS: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutS * 1000);
      const check = (): void => {
        const m = re.exec(this.text.slice(from));
        if (m) {
          clearTimeout(timer);
          resolve(m);
        } else if (this.ended) {
          clearTimeout(timer);
          reject(new Error(`ended while waiting for ${what}: ${this.text.slice(-300)}`));
        } else this.waiters.push(check);
      };
      check();
    });
  }
}

const children = new Set<ChildProcess>();
/** Spawns a guest process whose output (stdout and stderr) collects in `out`; killLifecycleGuests() ends it. */
export function start(cmd: string, args: string[]): { child: ChildProcess; out: Text } {
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
  children.add(child);
  const out = new Text();
  child.stdout!.on("data", (b: Buffer) => out.feed(b.toString("latin1")));
  child.stderr!.on("data", (b: Buffer) => out.feed(b.toString("latin1")));
  child.stdin!.on("error", () => {});
  child.on("exit", () => {
    children.delete(child);
    out.end();
  });
  return { child, out };
}

export function killLifecycleGuests(): void {
  for (const c of children) c.kill("SIGKILL");
}

/** Reads the guest's counter through a console (`write` types, `out` collects); waits for it to exist. */
async function readCounter(write: (s: string) => void, out: Text, timeoutS: number, where: string): Promise<number> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const n = Math.floor(Math.random() * 1e6);
    const from = out.text.length;
    write(`echo "C$((${n}))=$(cat /tmp/c 2>/dev/null)."\n`);
    // A line the console dropped (QEMU's UART under load) is typed again after 5 s.
    const m = await out.wait("the counter", new RegExp(`C${n}=(\\d*)\\.`), 5, from).catch(() => null);
    if (m && m[1] !== "") return Number(m[1]);
    if (Date.now() > deadline) {
      const tail = out.text.slice(-200).replace(/\s+/g, " ");
      throw new Error(`the guest's counter never appeared on the ${where}'s console (it ends: ${tail})`);
    }
    await new Promise((done) => setTimeout(done, 500));
  }
}

/** Waits until a Unix socket accepts connections. */
export async function socketReady(path: string, timeoutS: number): Promise<void> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(path, () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${path} never accepted connections`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

async function yunLifecycle(image: ImageInfo, dir: string, timeoutS: number): Promise<LifecycleResult> {
  const name = `bench-lc-${process.pid}`;
  const r: LifecycleResult = { engine: "yun" };
  start(process.execPath, [YUN, "run", "--headless", "--name", name, "--api-socket", join(dir, "a.sock")]);
  await socketReady(join(dir, "a.sock"), 60);
  let con = new Text();
  let sock = await openConsole(join(dir, "a.sock"), true);
  sock.on("data", (b: Buffer) => con.feed(b.toString("latin1")));
  sock.resume();
  await con.wait("the shell", new RegExp(PROMPT.replace(/[#]/g, "\\$&")), timeoutS);
  sock.write(WORKLOAD + "\n");
  await readCounter((s) => sock.write(s), con, 30, "source");
  await new Promise((done) => setTimeout(done, 3000));
  const api = await MonitorConnection.connect(join(dir, "a.sock"));
  const snap = await api.request<{ ms: number; bytes: number }>("snapshot", { dir: join(dir, "yun-snap") }, 120_000);
  r.snapshotMs = snap.ms;
  r.snapshotMiB = snap.bytes / 1048576;

  // Restore: from spawning the process until its control API reports the VM running (as QEMU's row:
  // from spawn until QMP reports the incoming VM loaded).
  const t0 = performance.now();
  const restored = start(process.execPath, [
    YUN,
    "run",
    "--headless",
    "--restore",
    join(dir, "yun-snap"),
    "--name",
    `${name}-r`,
    "--api-socket",
    join(dir, "r.sock"),
  ]);
  await socketReady(join(dir, "r.sock"), 60);
  const rc = await MonitorConnection.connect(join(dir, "r.sock"));
  const st = await rc.request<{ state: string }>("describe");
  r.restoreMs = performance.now() - t0;
  if (st.state !== "running") throw new Error(`the restored VM is ${st.state}`);
  await restored.out.wait("the restore message", /in (\d+) ms/, 10);
  await rc.request("stop").catch(() => {});
  rc.close();

  const dest = start(process.execPath, [
    YUN,
    "run",
    "--headless",
    "--incoming",
    "0",
    "--api-socket",
    join(dir, "d.sock"),
  ]);
  const waiting = await dest.out.wait(
    "the destination",
    /migration on 127\.0\.0\.1:(\d+) \(one-time token ([\w-]+)\)/,
    30,
  );
  const mig = await api.request<{ totalMs: number; downtimeMs: number }>(
    "migrate",
    { host: "127.0.0.1", port: Number(waiting[1]), token: waiting[2] },
    600_000,
  );
  api.close();
  r.migrateTotalMs = mig.totalMs;
  r.migrateDowntimeMs = mig.downtimeMs;
  sock.destroy();
  await socketReady(join(dir, "d.sock"), 30);
  sock = await openConsole(join(dir, "d.sock"), false);
  con = new Text();
  sock.on("data", (b: Buffer) => con.feed(b.toString("latin1")));
  sock.resume();
  const a = await readCounter((s) => sock.write(s), con, 30, "destination");
  await new Promise((done) => setTimeout(done, 2000));
  const b = await readCounter((s) => sock.write(s), con, 30, "destination");
  sock.destroy();
  if (!(b > a)) throw new Error(`the counter stopped after migration (${a}, ${b})`);
  const dc = await MonitorConnection.connect(join(dir, "d.sock"));
  await dc.request("stop").catch(() => {});
  dc.close();
  return r;
}

/** A QMP connection: commands in, answers out (events skipped). */
class Qmp {
  private readonly out = new Text();
  private sock!: net.Socket;
  async open(path: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      try {
        this.sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path, () => resolve(s));
          s.once("error", reject);
        });
        break;
      } catch {
        await new Promise((done) => setTimeout(done, 100));
      }
    }
    this.sock.on("data", (b: Buffer) => this.out.feed(b.toString("utf8")));
    await this.out.wait("the QMP greeting", /"QMP"/, 10);
    await this.cmd("qmp_capabilities");
  }
  async cmd(execute: string, args?: unknown): Promise<Record<string, unknown>> {
    const from = this.out.text.length;
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + "\n");
    const m = await this.out.wait(execute, /\{"return": (.*)\}\r?\n|\{"error": (.*)\}\r?\n/, 30, from);
    if (m[2]) throw new Error(`QMP ${execute}: ${m[2]}`);
    return JSON.parse(m[1]) as Record<string, unknown>;
  }
  close(): void {
    this.sock.destroy();
  }
}

async function qemuLifecycle(qemu: string, image: ImageInfo, dir: string, timeoutS: number): Promise<LifecycleResult> {
  const r: LifecycleResult = { engine: "qemu" };
  const disk = join(dir, "qemu-root.qcow2");
  createQcow2(disk, { backing: { path: image.rootDisk, format: "raw" } });
  const base = (qmp: string): string[] =>
    qemuVirtArgs(image, APPEND, [
      "-drive",
      `file=${disk},format=qcow2,if=none,id=hd0`,
      "-device",
      "virtio-blk-device,drive=hd0",
      "-qmp",
      `unix:${qmp},server=on,wait=off`,
    ]);
  const src = start(qemu, base(join(dir, "q1.qmp")));
  await src.out.wait("the shell", /~ # /, timeoutS);
  src.child.stdin!.write(WORKLOAD + "\n");
  await readCounter((s) => src.child.stdin!.write(s), src.out, 30, "source");
  await new Promise((done) => setTimeout(done, 3000));
  const q1 = new Qmp();
  await q1.open(join(dir, "q1.qmp"));
  const file = join(dir, "qemu-snap.bin");
  let t0 = performance.now();
  await q1.cmd("migrate", { uri: `exec:cat > ${file}` });
  for (;;) {
    const s = await q1.cmd("query-migrate");
    if (s.status === "completed") break;
    if (s.status === "failed") throw new Error("QEMU snapshot failed");
    await new Promise((done) => setTimeout(done, 20));
  }
  r.snapshotMs = performance.now() - t0;
  r.snapshotMiB = statSync(file).size / 1048576;
  await q1.cmd("cont"); // migration to a file leaves the source paused

  t0 = performance.now();
  const restored = start(qemu, [...base(join(dir, "q2.qmp")), "-incoming", `exec:cat ${file}`]);
  const q2 = new Qmp();
  await q2.open(join(dir, "q2.qmp"));
  for (;;) {
    const s = await q2.cmd("query-status");
    if (s.status === "paused" || s.status === "running") break;
    await new Promise((done) => setTimeout(done, 10));
  }
  r.restoreMs = performance.now() - t0;
  q2.close();
  restored.child.kill("SIGKILL");

  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const dest = start(qemu, [...base(join(dir, "q3.qmp")), "-incoming", `tcp:127.0.0.1:${port}`]);
  const q3 = new Qmp();
  await q3.open(join(dir, "q3.qmp"));
  await q1.cmd("migrate", { uri: `tcp:127.0.0.1:${port}` });
  for (;;) {
    const s = await q1.cmd("query-migrate");
    if (s.status === "completed") {
      r.migrateTotalMs = s["total-time"] as number;
      r.migrateDowntimeMs = s.downtime as number;
      break;
    }
    if (s.status === "failed") throw new Error("QEMU migration failed");
    await new Promise((done) => setTimeout(done, 20));
  }
  q1.close();
  src.child.kill("SIGKILL");
  // (Yun's destination is checked for a running counter; QEMU's console answers after an incoming
  // migration only sometimes on this loaded machine, so its row rests on query-migrate alone.)
  q3.close();
  dest.child.kill("SIGKILL");
  return r;
}

export async function runLifecycleBench(opts: {
  image: ImageInfo;
  qemu?: string;
  timeoutS: number;
  log: (line: string) => void;
}): Promise<LifecycleResult[]> {
  const out: LifecycleResult[] = [];
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-lc-"));
  try {
    for (const engine of ["yun", "qemu"] as const) {
      if (engine === "qemu" && !opts.qemu) continue;
      opts.log(`lifecycle: ${engine}`);
      try {
        out.push(
          engine === "yun"
            ? await yunLifecycle(opts.image, dir, opts.timeoutS)
            : await qemuLifecycle(opts.qemu!, opts.image, dir, opts.timeoutS),
        );
      } catch (e) {
        out.push({ engine, error: (e as Error).message });
      } finally {
        killLifecycleGuests();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

export function formatLifecycleTable(results: LifecycleResult[]): string {
  const yun = results.find((r) => r.engine === "yun");
  const qemu = results.find((r) => r.engine === "qemu");
  const rows: [string, keyof LifecycleResult][] = [
    ["snapshot of a busy 256 MiB guest (ms)", "snapshotMs"],
    ["snapshot size (MiB)", "snapshotMiB"],
    ["restore: process spawned to VM running (ms)", "restoreMs"],
    ["live migration, total (ms)", "migrateTotalMs"],
    ["live migration, downtime (ms)", "migrateDowntimeMs"],
  ];
  const f = (v: unknown) => (typeof v === "number" ? v.toFixed(v < 10 ? 1 : 0) : "–");
  const lines = ["| lifecycle | yun | qemu TCG | yun / qemu |", "|---|---|---|---|"];
  for (const [label, key] of rows) {
    const a = yun?.[key];
    const b = qemu?.[key];
    const ratio = typeof a === "number" && typeof b === "number" && b > 0 ? `${(a / b).toFixed(2)}` : "–";
    lines.push(`| ${label} | ${f(a)} | ${f(b)} | ${ratio} |`);
  }
  for (const r of results) if (r.error) lines.push(`\n${r.engine}: ${r.error}`);
  return lines.join("\n") + "\n";
}

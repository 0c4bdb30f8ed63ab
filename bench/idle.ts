/**
 * Idle benchmark: what a VM costs the host while its guest sits at the shell prompt, Yun beside
 * QEMU TCG with the same kernel, initramfs, root disk (a throwaway qcow2 overlay on the image's
 * root.ext4) and a user-mode network card.
 *
 *   idle N vCPUs  `yun run --cpus N` (its defaults: root disk overlay, user-mode NAT) and
 *                 qemu-system-riscv64 -M virt -smp N with -netdev user. After the prompt the guest
 *                 is left alone for a settling time (the end of the boot: the kernel's deferred
 *                 work, the translator's last compiles); then the host CPU time of the whole
 *                 process (every thread: utime + stime of /proc/PID/stat) is read over a window
 *                 and given as a percentage of one host core.
 *   VMM memory    At the end of the 1-vCPU window: the process's resident set (VmRSS), and the
 *                 part of it that is guest RAM the guest has touched: the resident pages (Rss in
 *                 /proc/PID/smaps) of the mapping that holds guest RAM. An anonymous page becomes
 *                 resident when it is first written, so that is exactly the RAM the guest (or a
 *                 device, or the loader) wrote; pages it never touched cost the host nothing.
 *                 The overhead is the rest: code, V8's heap, translated code, buffers.
 *                 Yun's guest RAM is a WebAssembly memory, whose reservation is the largest
 *                 mapping of the process; QEMU's is the smallest mapping at least the guest's
 *                 size (its translation buffer is a larger one).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageInfo } from "../src/images/store.js";
import { createQcow2 } from "../src/storage/image.js";
import { qemuVirtArgs, QEMU_MEMORY_MIB } from "./qemu.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));
const PROMPT = "~ # ";
const APPEND = "console=ttyS0 cryptomgr.notests root=/dev/vda";
/** Targets of issue 14. */
export const IDLE_TARGET_PERCENT = 0.3;
export const OVERHEAD_TARGET_MIB = 64;
/** Clock ticks per second of /proc/PID/stat's times (Linux: USER_HZ, 100 on every architecture). */
const USER_HZ = 100;

export interface IdleBenchOptions {
  image: ImageInfo;
  /** qemu-system-riscv64 to compare with (undefined: Yun only). */
  qemu?: string;
  /** Seconds left alone after the prompt before measuring (default 30), and the window (default 60). */
  settleS?: number;
  windowS?: number;
  timeoutS: number;
  verbose: boolean;
  log: (line: string) => void;
}

export interface IdleMeasure {
  /** Host CPU over the window, % of one core. */
  cpuPercent: number;
  /** Resident set at the end of the window (MiB). */
  rssMiB: number;
  /** Resident guest RAM (MiB): what the guest has touched. */
  guestMiB: number;
  bootS: number;
}

export interface IdleResult {
  cpus: number;
  engine: "yun" | "qemu";
  measure?: IdleMeasure;
  error?: string;
}

const live = new Set<ChildProcess>();

/** Kills every VM this module started (bench/main.ts calls it on exit and on signals). */
export function killIdleGuests(): void {
  for (const c of live) c.kill("SIGKILL");
  live.clear();
}

/** utime + stime of every thread of `pid`, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After "pid (comm) ": state is field 0, utime field 11, stime field 12.
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
}

/** VmRSS (MiB), and the Rss (MiB) of the mapping that holds guest RAM. */
export function memoryOf(pid: number, engine: "yun" | "qemu", guestMiB: number): { rssMiB: number; guestMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  const maps: { sizeKiB: number; rssKiB: number }[] = [];
  let current: { sizeKiB: number; rssKiB: number } | null = null;
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      current = { sizeKiB: 0, rssKiB: 0 };
      maps.push(current);
    } else if (current !== null) {
      const m = /^(Size|Rss):\s+(\d+) kB/.exec(line);
      if (m?.[1] === "Size") current.sizeKiB = Number(m[2]);
      else if (m?.[1] === "Rss") current.rssKiB = Number(m[2]);
    }
  }
  const big = maps.filter((m) => m.sizeKiB >= guestMiB * 1024).sort((a, b) => a.sizeKiB - b.sizeKiB);
  const ram = big[0];
  return { rssMiB: rssKiB / 1024, guestMiB: (ram?.rssKiB ?? NaN) / 1024 };
}

function waitForPrompt(child: ChildProcess, timeoutS: number, verbose: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = "";
    const timer = setTimeout(
      () => done(new Error(`timed out after ${timeoutS} s waiting for the prompt`)),
      timeoutS * 1000,
    );
    const feed = (chunk: Buffer): void => {
      const s = chunk.toString("latin1");
      if (verbose) process.stderr.write(s);
      text = (text + s).slice(-4096);
      if (text.includes(PROMPT)) done();
    };
    const exit = (code: number | null, signal: string | null): void =>
      done(new Error(`exited (${signal ?? `code ${code}`}) before the prompt: ${text.slice(-300)}`));
    const done = (error?: Error): void => {
      clearTimeout(timer);
      child.stdout!.off("data", feed);
      child.off("exit", exit);
      if (error) reject(error);
      else resolve();
    };
    child.stdout!.on("data", feed);
    child.stderr!.on("data", (c: Buffer) => verbose && process.stderr.write(c));
    child.on("exit", exit);
  });
}

async function measure(
  engine: "yun" | "qemu",
  cpus: number,
  opts: IdleBenchOptions,
  dir: string,
): Promise<IdleMeasure> {
  let child: ChildProcess;
  if (engine === "yun") {
    child = spawn(process.execPath, [YUN, "run", "--cpus", String(cpus)], { stdio: ["pipe", "pipe", "pipe"] });
  } else {
    const root = join(dir, `root-${cpus}.qcow2`);
    createQcow2(root, { backing: { path: opts.image.rootDisk, format: "raw" } });
    const args = qemuVirtArgs(
      opts.image,
      APPEND,
      [
        "-drive",
        `file=${root},format=qcow2,if=none,id=hd0`,
        "-device",
        "virtio-blk-device,drive=hd0",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
      ],
      cpus,
    );
    child = spawn(opts.qemu!, args, { stdio: ["pipe", "pipe", "pipe"] });
  }
  live.add(child);
  child.stdin!.on("error", () => {});
  try {
    const t0 = performance.now();
    await waitForPrompt(child, opts.timeoutS, opts.verbose);
    const bootS = (performance.now() - t0) / 1000;
    await new Promise((r) => setTimeout(r, (opts.settleS ?? 30) * 1000));
    const pid = child.pid!;
    const c0 = cpuSeconds(pid);
    const w0 = performance.now();
    await new Promise((r) => setTimeout(r, (opts.windowS ?? 60) * 1000));
    const c1 = cpuSeconds(pid);
    const w1 = performance.now();
    const mem = memoryOf(pid, engine, QEMU_MEMORY_MIB);
    return { cpuPercent: (100 * (c1 - c0)) / ((w1 - w0) / 1000), bootS, ...mem };
  } finally {
    child.stdin!.write("poweroff -f\n");
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(kill);
    live.delete(child);
  }
}

/** Runs the idle rows: 1 and 4 vCPUs, Yun then QEMU, one VM at a time (they must not share the host). */
export async function runIdleBench(opts: IdleBenchOptions): Promise<IdleResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "yun-idle-"));
  const results: IdleResult[] = [];
  try {
    for (const cpus of [1, 4]) {
      for (const engine of ["yun", "qemu"] as const) {
        if (engine === "qemu" && opts.qemu === undefined) continue;
        opts.log(`bench idle: ${engine}, ${cpus} vCPU${cpus > 1 ? "s" : ""} ...`);
        try {
          const m = await measure(engine, cpus, opts, dir);
          opts.log(
            `bench idle: ${engine} ${cpus} vCPU: ${m.cpuPercent.toFixed(2)} % of a core, RSS ${m.rssMiB.toFixed(0)} MiB ` +
              `(guest RAM touched ${m.guestMiB.toFixed(0)} MiB), boot ${m.bootS.toFixed(1)} s`,
          );
          results.push({ cpus, engine, measure: m });
        } catch (e) {
          results.push({ cpus, engine, error: (e as Error).message });
          opts.log(`bench idle: ${engine} ${cpus} vCPU FAILED: ${(e as Error).message}`);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

function table(header: string[], body: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join(" | ")
      .trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...body.map(line)].join("\n");
}

export function formatIdleTable(results: IdleResult[]): string {
  const find = (engine: string, cpus: number): IdleResult | undefined =>
    results.find((r) => r.engine === engine && r.cpus === cpus);
  const body: string[][] = [];
  for (const cpus of [1, 4]) {
    const y = find("yun", cpus);
    const q = find("qemu", cpus);
    const cell = (r: IdleResult | undefined): string =>
      r === undefined ? "-" : r.measure ? r.measure.cpuPercent.toFixed(2) : "failed";
    const ratio =
      y?.measure && q?.measure && q.measure.cpuPercent > 0
        ? `${(y.measure.cpuPercent / q.measure.cpuPercent).toFixed(1)}x`
        : "-";
    body.push([`idle ${cpus} vCPU${cpus > 1 ? "s" : ""}`, cell(y), cell(q), ratio, `<= ${IDLE_TARGET_PERCENT} %`]);
  }
  const y = find("yun", 1)?.measure;
  const q = find("qemu", 1)?.measure;
  const mem = (m: IdleMeasure | undefined): string =>
    m === undefined
      ? "-"
      : `RSS ${m.rssMiB.toFixed(0)}, guest ${m.guestMiB.toFixed(0)}, overhead ${(m.rssMiB - m.guestMiB).toFixed(0)}`;
  const memRatio = y && q ? `${((y.rssMiB - y.guestMiB) / (q.rssMiB - q.guestMiB)).toFixed(1)}x` : "-";
  body.push(["VMM memory", mem(y), mem(q), memRatio, `overhead <= ${OVERHEAD_TARGET_MIB} MiB`]);
  return (
    table(["row", "yun", "qemu TCG", "yun / qemu", "target"], body) +
    `\n  idle rows: host CPU, % of one core; VMM memory: MiB, 1 vCPU, ${QEMU_MEMORY_MIB} MiB guest; ` +
    "overhead = RSS - guest RAM touched; the ratio compares the overheads."
  );
}

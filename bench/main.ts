/**
 * Boot benchmark: Yun and QEMU side by side, on the same kernel, initrd and command line.
 *
 *   npm run bench -- [--only yun|qemu|boot|cpu|micro|io|lifecycle|smp|disk|idle|full|exec|sandbox] [--engine interp|jit|both] [--firmware dynamic|none|both]
 *                    [--runs N] [--json] [--verbose]
 *
 * After the boots, the CPU workloads of bench/cpu.ts run (interp, jit and QEMU on the same code),
 * then the I/O benchmark of bench/io.ts (virtio-blk and VM-to-VM TCP from inside the guest, Yun
 * beside QEMU).
 *
 * Every run boots the Debian image (`yun image pull debian-tiny`, under $YUN_HOME) to its shell prompt
 * and powers it off with `poweroff -f`. For each run it measures the wall time to the
 * "yun: init ready" line of /init, to the shell prompt and to power-off, and the number of guest
 * instructions retired by the prompt.
 *
 *   Yun    runs in this process (each run in a fresh worker thread, so every boot starts with a cold
 *          JIT as `yun run` does) through VirtMachine; times count from the machine's construction.
 *          Instructions are the hart's instret; MIPS is instret / (wall time - host sleep while the
 *          guest sat in WFI). Both firmware paths: OpenSBI fw_dynamic, and no firmware (Yun's own SBI).
 *   QEMU   qemu-system-riscv64 -M virt (TCG) as a child process with the image's fw_dynamic.bin as
 *          -bios; times count from spawn. A second run with `-icount shift=0` (one instruction per
 *          virtual nanosecond) reads the guest clock at the prompt (/proc/timer_list "now at N nsecs",
 *          and the idle time from /proc/uptime): N - idle ns is the number of instructions the guest
 *          retired, which gives QEMU's instruction count and MIPS.
 *
 * Nothing is written to disk but the I/O benchmark's scratch disks (in the temporary directory,
 * removed afterwards); --json prints the results as JSON after the tables.
 */
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { delimiter, join } from "node:path";
import { parseArgs } from "node:util";
import { findImage, readManifest, type ImageInfo } from "../src/images/store.js";
import { INIT_READY_MARKER } from "../src/images/initramfs.js";
import { yunHome } from "../src/images/paths.js";
import { DEFAULT_APPEND } from "../src/cli/run.js";
import { VirtMachine, type Engine } from "../src/vmm/virt.js";
import { formatCpuTable, runCpuBench, type CpuRow } from "./cpu.js";
import { formatIoTable, killIoGuests, runIoBench, type IoResult } from "./io.js";
import { formatFullTable, runFullBench, type FullBench } from "./full.js";
import { formatLifecycleTable, killLifecycleGuests, runLifecycleBench, type LifecycleResult } from "./lifecycle.js";
import { qemuVirtArgs } from "./qemu.js";
import { formatSmpTable, runSmpBench, type SmpResult } from "./smp.js";
import { formatDiskBootTable, runDiskBootBench, type DiskBootResult } from "./diskboot.js";
import { formatIdleTable, killIdleGuests, runIdleBench, type IdleResult } from "./idle.js";
import { formatExecTable, runExecBench } from "./exec.js";
import { formatSandboxTable, runSandboxBench } from "./sandbox.js";

/** The busybox shell's prompt in /root (PS1='\w \$ '). */
const SHELL_PROMPT = "~ # ";
const MEMORY_MIB = 256;
const DEFAULT_TIMEOUT_S = 300;
const QEMU = "qemu-system-riscv64";

const HELP = `Usage: npm run bench -- [options]   (or: node dist/bench/main.js [options])

Boots the Debian image to its shell prompt with Yun and with QEMU and compares them.

Options:
  --only yun|qemu          run one engine only (default: both)
  --only boot|cpu|micro|io|lifecycle|smp|disk|idle|full|exec|sandbox
                           run only the boots, the CPU workloads (bare-metal kernel, guest jobs and
                           kernel micro-workloads), the micro-workloads alone, the I/O, the VM
                           lifecycle, the SMP benchmark, the disk boots through U-Boot, an idle VM's
                           host CPU and memory, the full Debian image's boot and apt-get, or the
                           cloud's sandboxes (create to first command, pause, resume, fork)
                           (default: all; full only when pulled; sandbox only when named)
  --engine interp|jit|both Yun's CPU engine for the boots and the bare-metal kernel (default: both);
                           the guest workloads run on jit, or on interp when only it is given
  --firmware dynamic|none|both
                           Yun's firmware path: OpenSBI fw_dynamic, none (Yun's built-in SBI),
                           or both (default)
  --runs N                 boots per configuration; the table shows the median (default: 1)
  --timeout S              give up on a boot after S seconds (default: ${DEFAULT_TIMEOUT_S})
  --json                   print the results as JSON after the table
  --verbose                copy the guest consoles to stderr
  -h, --help               show this help

The image comes from $YUN_HOME (default ~/.local/share/yun); get it with: npx yun image pull debian-tiny
QEMU rows need qemu-system-riscv64 on PATH (Debian: apt-get install qemu-system-misc).
`;

// ------------------------------------------------------------------------------------------ results

/** One boot. Times are seconds from machine construction (Yun) or spawn (QEMU). */
interface RunResult {
  initS?: number;
  shellS?: number;
  offS?: number;
  /** Guest instructions retired by "yun: init ready" (Yun only). */
  instrToInit?: number;
  /** Guest instructions retired by the shell prompt. */
  instrToShell?: number;
  /** Seconds to the prompt the host was busy running the guest (Yun: wall minus WFI sleep). */
  busyToShellS?: number;
  /** Guest instructions per microsecond of busy time to the prompt. */
  mips?: number;
  /** -icount runs: /proc/uptime read at the prompt (seconds since boot, seconds idle). */
  uptime?: { total: number; idle: number; nowNs?: number };
  error?: string;
}

interface Summary {
  id: string;
  engine: string;
  runs: RunResult[];
  median: Omit<RunResult, "error" | "uptime">;
  /** Why the configuration did not run (e.g. QEMU not installed). */
  skipped?: string;
  /** True when instrToShell / mips are derived from another row (QEMU without icount). */
  derived?: boolean;
  failed: number;
}

function median(values: (number | undefined)[]): number | undefined {
  const v = values.filter((x): x is number => x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1]! + v[mid]!) / 2;
}

function summarize(id: string, engine: string, runs: RunResult[]): Summary {
  const ok = runs.filter((r) => r.error === undefined);
  const m = (k: keyof Omit<RunResult, "error" | "uptime">): number | undefined => median(ok.map((r) => r[k]));
  return {
    id,
    engine,
    runs,
    median: {
      initS: m("initS"),
      shellS: m("shellS"),
      offS: m("offS"),
      instrToInit: m("instrToInit"),
      instrToShell: m("instrToShell"),
      busyToShellS: m("busyToShellS"),
      mips: m("mips"),
    },
    failed: runs.length - ok.length,
  };
}

// ------------------------------------------------------------------------------------------ console matching

/** Waits for a sequence of patterns in console output, calling each step's action when it matches. */
class Expect {
  private buf = "";
  private tailText = "";
  private readonly steps: { name: string; pattern: string | RegExp; action: (m: RegExpExecArray | null) => void }[];

  constructor(steps: Expect["steps"]) {
    this.steps = [...steps];
  }

  /** Name of the step being waited for, or undefined when all have matched. */
  get waitingFor(): string | undefined {
    return this.steps[0]?.name;
  }

  /** The last few hundred characters of output, for error messages. */
  tail(): string {
    const t = this.tailText
      .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
      .replace(/\r/g, "")
      .trimEnd();
    return t.split("\n").slice(-6).join("\n");
  }

  feed(text: string): void {
    this.tailText = (this.tailText + text).slice(-2000);
    this.buf += text;
    for (;;) {
      const step = this.steps[0];
      if (step === undefined) break;
      let end: number;
      let match: RegExpExecArray | null = null;
      if (typeof step.pattern === "string") {
        const at = this.buf.indexOf(step.pattern);
        if (at < 0) break;
        end = at + step.pattern.length;
      } else {
        match = step.pattern.exec(this.buf);
        if (match === null) break;
        end = match.index + match[0].length;
      }
      this.buf = this.buf.slice(end);
      this.steps.shift();
      step.action(match);
    }
    if (this.buf.length > 16384) this.buf = this.buf.slice(-4096);
  }
}

// ------------------------------------------------------------------------------------------ Yun (worker side)

interface YunJob {
  kernel: string;
  initrd: string;
  firmware: string | null;
  append: string;
  engine: Engine;
}

type YunEvent =
  | { type: "output"; text: string }
  | { type: "mark"; mark: "init" | "shell"; t: number; instret: number; idleMs: number }
  | { type: "done"; t: number; instret: number; idleMs: number; power: string }
  | { type: "error"; message: string };

async function yunWorker(job: YunJob): Promise<void> {
  const port = parentPort!;
  const post = (e: YunEvent): void => port.postMessage(e);
  try {
    const kernel = readFileSync(job.kernel);
    const initrd = readFileSync(job.initrd);
    const firmware = job.firmware === null ? null : readFileSync(job.firmware);
    const mark = (which: "init" | "shell", t: number): void => {
      post({ type: "mark", mark: which, t, instret: machine.hart.instret, idleMs: machine.idleMs });
    };
    const expect = new Expect([
      {
        name: `"${INIT_READY_MARKER}"`,
        pattern: INIT_READY_MARKER,
        action: () => mark("init", performance.now() - t0),
      },
      {
        name: "the shell prompt",
        pattern: SHELL_PROMPT,
        action: () => {
          mark("shell", performance.now() - t0);
          machine.input(Buffer.from("poweroff -f\n"));
        },
      },
    ]);
    const t0 = performance.now();
    const machine = new VirtMachine({
      kernel,
      initrd,
      firmware,
      firmwareKind: firmware === null ? "none" : "dynamic",
      append: job.append,
      memoryMiB: MEMORY_MIB,
      engine: job.engine,
      output: (bytes) => {
        const text = Buffer.from(bytes).toString("latin1");
        post({ type: "output", text });
        expect.feed(text);
      },
    });
    const power = await machine.run();
    const t = performance.now() - t0;
    post({
      type: "done",
      t,
      instret: machine.hart.instret,
      idleMs: machine.idleMs,
      power: `${power.kind} ${power.code}`,
    });
  } catch (e) {
    post({ type: "error", message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  }
}

// ------------------------------------------------------------------------------------------ Yun (main side)

const liveWorkers = new Set<Worker>();
const liveChildren = new Set<ChildProcess>();

interface Options {
  verbose: boolean;
  timeoutS: number;
}

function runYun(job: YunJob, opts: Options): Promise<RunResult> {
  return new Promise((resolve) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { yunBenchJob: job } });
    liveWorkers.add(worker);
    const expectTail = new Expect([]);
    const result: RunResult = {};
    let stage = `"${INIT_READY_MARKER}"`;
    let settled = false;
    const finish = (error?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) {
        const tail = expectTail.tail();
        result.error = tail ? `${error}\n  last console output:\n    ${tail.split("\n").join("\n    ")}` : error;
      }
      liveWorkers.delete(worker);
      void worker.terminate().then(() => resolve(result));
    };
    const timer = setTimeout(
      () => finish(`timed out after ${opts.timeoutS} s waiting for ${stage}`),
      opts.timeoutS * 1000,
    );
    worker.on("message", (e: YunEvent) => {
      switch (e.type) {
        case "output":
          expectTail.feed(e.text);
          if (opts.verbose) process.stderr.write(e.text);
          break;
        case "mark":
          if (e.mark === "init") {
            result.initS = e.t / 1000;
            result.instrToInit = e.instret;
            stage = "the shell prompt";
          } else {
            result.shellS = e.t / 1000;
            result.instrToShell = e.instret;
            result.busyToShellS = (e.t - e.idleMs) / 1000;
            result.mips = e.instret / ((e.t - e.idleMs) * 1000);
            stage = "power-off";
          }
          break;
        case "done":
          result.offS = e.t / 1000;
          if (result.shellS === undefined) finish(`the guest stopped (${e.power}) before ${stage}`);
          else if (!e.power.startsWith("poweroff")) finish(`the guest stopped with ${e.power} instead of powering off`);
          else finish();
          break;
        case "error":
          finish(`Yun failed: ${e.message}`);
          break;
      }
    });
    worker.on("error", (err) => finish(`Yun worker failed: ${err.stack ?? err.message}`));
    // Messages the worker posted just before it ended may still be in flight: let them land first.
    worker.on("exit", (code) => setTimeout(() => finish(`Yun worker exited (code ${code}) before ${stage}`), 200));
  });
}

// ------------------------------------------------------------------------------------------ QEMU

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {}
  }
  return undefined;
}

function qemuVersion(path: string): string {
  const r = spawnSync(path, ["--version"], { encoding: "utf8", timeout: 10_000 });
  const m = /version\s+(\S+)/.exec(r.stdout ?? "");
  return m?.[1] ?? "unknown";
}

function runQemu(qemu: string, image: ImageInfo, append: string, icount: boolean, opts: Options): Promise<RunResult> {
  return new Promise((resolve) => {
    const args = qemuVirtArgs(image, append);
    if (icount) args.push("-icount", "shift=0");
    const result: RunResult = {};
    let settled = false;
    let stderr = "";
    let exitedAt: number | undefined;
    /** Console output since the icount run's measuring command was sent. */
    let capture: string | undefined;
    const send = (text: string): void => {
      if (child.stdin?.writable) child.stdin.write(text);
    };
    const steps: ConstructorParameters<typeof Expect>[0] = [
      { name: `"${INIT_READY_MARKER}"`, pattern: INIT_READY_MARKER, action: () => (result.initS = now()) },
      {
        name: "the shell prompt",
        pattern: SHELL_PROMPT,
        action: () => {
          result.shellS = now();
          capture = "";
          send(icount ? "grep -m1 'now at' /proc/timer_list; cat /proc/uptime\n" : "poweroff -f\n");
        },
      },
    ];
    if (icount) {
      steps.push({
        name: "the output of cat /proc/uptime",
        pattern: /^\s*(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$/m,
        action: (m) => {
          const total = Number(m![1]);
          const idle = Number(m![2]);
          // /proc/uptime has 10 ms resolution; /proc/timer_list gives the same clock in nanoseconds.
          const ns = /now at (\d+) nsecs/.exec(capture ?? "");
          result.uptime = { total, idle, ...(ns ? { nowNs: Number(ns[1]) } : {}) };
          // One instruction per virtual nanosecond; time the CPU sat idle retired nothing.
          const elapsedNs = ns ? Number(ns[1]) : total * 1e9;
          result.instrToShell = Math.round(Math.max(0, elapsedNs - idle * 1e9));
          send("poweroff -f\n");
        },
      });
    }
    const expect = new Expect(steps);
    const finish = (error?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) {
        const tail = expect.tail() || stderr.trim().split("\n").slice(-6).join("\n");
        result.error = tail ? `${error}\n  last output:\n    ${tail.split("\n").join("\n    ")}` : error;
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      if (result.instrToShell !== undefined && result.shellS !== undefined) {
        result.busyToShellS = result.shellS;
        result.mips = result.instrToShell / (result.shellS * 1e6);
      }
      resolve(result);
    };
    const t0 = performance.now();
    const now = (): number => (performance.now() - t0) / 1000;
    const child = spawn(qemu, args, { stdio: ["pipe", "pipe", "pipe"] });
    liveChildren.add(child);
    const timer = setTimeout(
      () => finish(`timed out after ${opts.timeoutS} s waiting for ${expect.waitingFor ?? "QEMU to exit"}`),
      opts.timeoutS * 1000,
    );
    child.stdin!.on("error", () => {});
    child.stdout!.on("data", (chunk: Buffer) => {
      const text = chunk.toString("latin1");
      if (opts.verbose) process.stderr.write(text);
      if (capture !== undefined) capture = (capture + text).slice(-8192);
      expect.feed(text);
    });
    child.stderr!.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString("utf8")).slice(-4000);
      if (opts.verbose) process.stderr.write(chunk);
    });
    child.on("error", (err) => {
      liveChildren.delete(child);
      finish(`could not run ${qemu}: ${err.message}`);
    });
    child.on("exit", (code, signal) => {
      exitedAt = now();
      liveChildren.delete(child);
      result.offS = exitedAt;
      if (expect.waitingFor !== undefined) {
        finish(`QEMU exited (${signal ?? `code ${code}`}) before ${expect.waitingFor}`);
      } else if (code !== 0) {
        finish(`QEMU exited with ${signal ?? `code ${code}`}`);
      } else {
        finish();
      }
    });
  });
}

// ------------------------------------------------------------------------------------------ table

function fmt(x: number | undefined, digits: number, approx = false): string {
  if (x === undefined) return "-";
  return (approx ? "~" : "") + x.toFixed(digits);
}

function printTable(rows: Summary[], qemuShellS: number | undefined): void {
  const header = [
    "engine",
    "boot to init (s)",
    "boot to shell (s)",
    "power-off (s)",
    "guest instr to shell (M)",
    "MIPS",
    "vs QEMU (shell)",
  ];
  const body: string[][] = rows.map((r) => {
    const m = r.median;
    if (r.skipped !== undefined) return [r.engine, `skipped: ${r.skipped}`, "", "", "", "", ""];
    if (m.shellS === undefined) {
      return [r.engine, "failed", "", "", "", "", ""];
    }
    const ratio = qemuShellS !== undefined ? `${(m.shellS / qemuShellS).toFixed(2)}x` : "-";
    const failed = r.failed > 0 ? ` (${r.failed}/${r.runs.length} failed)` : "";
    return [
      r.engine + failed,
      fmt(m.initS, 2),
      fmt(m.shellS, 2),
      fmt(m.offS, 2),
      fmt(m.instrToShell === undefined ? undefined : m.instrToShell / 1e6, 0, r.derived),
      fmt(m.mips, 1, r.derived),
      ratio,
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join(" | ")
      .trimEnd();
  process.stdout.write(line(header) + "\n");
  process.stdout.write(widths.map((w) => "-".repeat(w)).join("-|-") + "\n");
  for (const b of body) process.stdout.write(line(b) + "\n");
}

// ------------------------------------------------------------------------------------------ main

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        only: { type: "string" },
        engine: { type: "string", default: "both" },
        firmware: { type: "string", default: "both" },
        runs: { type: "string", default: "1" },
        timeout: { type: "string", default: String(DEFAULT_TIMEOUT_S) },
        json: { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const only = values.only;
  if (
    only !== undefined &&
    ![
      "yun",
      "qemu",
      "cpu",
      "micro",
      "boot",
      "io",
      "lifecycle",
      "smp",
      "disk",
      "idle",
      "full",
      "exec",
      "sandbox",
    ].includes(only)
  ) {
    process.stderr.write(
      `bench: --only takes yun, qemu, boot, cpu, micro, io, lifecycle, smp, disk, idle, full, exec or sandbox, got "${only}"\n`,
    );
    return 2;
  }
  const engineArg = values.engine!;
  if (engineArg !== "interp" && engineArg !== "jit" && engineArg !== "both") {
    process.stderr.write(`bench: --engine takes interp, jit or both, got "${engineArg}"\n`);
    return 2;
  }
  const engines: Engine[] = engineArg === "both" ? ["jit", "interp"] : [engineArg];
  const fwArg = values.firmware!;
  if (fwArg !== "dynamic" && fwArg !== "none" && fwArg !== "both") {
    process.stderr.write(`bench: --firmware takes dynamic, none or both, got "${fwArg}"\n`);
    return 2;
  }
  if (!/^[1-9]\d*$/.test(values.runs!)) {
    process.stderr.write(`bench: --runs takes a positive whole number, got "${values.runs}"\n`);
    return 2;
  }
  const runs = Number(values.runs);
  const timeoutS = Number(values.timeout);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    process.stderr.write(`bench: --timeout takes a number of seconds, got "${values.timeout}"\n`);
    return 2;
  }
  const opts: Options = { verbose: values.verbose!, timeoutS };
  if (only === "exec") {
    // yun exec: no VM and no image, so none of the rest applies.
    const log = (s: string): void => void process.stderr.write(s + "\n");
    const execRows = await runExecBench({ qemu: findOnPath("qemu-riscv64"), runs: Math.max(runs, 3), log });
    process.stdout.write(
      `\nyun exec vs qemu-riscv64 (user mode), same Debian riscv64 root; wall time from spawn to exit, median of ${Math.max(runs, 3)}\n\n${formatExecTable(execRows)}\n`,
    );
    return execRows.some((r) => r.error !== undefined) ? 1 : 0;
  }

  if (only === "sandbox") {
    // The cloud's sandboxes: one template boot, then restores only (no QEMU counterpart).
    const log = (s: string): void => void process.stderr.write(s + "\n");
    const n = Math.max(runs, 5);
    const rows = await runSandboxBench({ runs: n, log });
    process.stdout.write(
      `\nsandboxes (debian-tiny template, 256 MiB, 1 vCPU), through the SDK, ${n} in a row\n\n${formatSandboxTable(rows)}\n`,
    );
    return 0;
  }

  const image = findImage("debian-tiny");
  if (image === undefined) {
    process.stderr.write(
      `bench: the Debian image is not in ${join(yunHome(), "images", "debian-tiny")}.\n` +
        `Build it first with:  npx yun image pull debian-tiny\n`,
    );
    return 1;
  }
  const append = DEFAULT_APPEND;
  const log = (s: string): void => void process.stderr.write(s + "\n");

  const notes: string[] = [];
  const qemu = only === "yun" ? undefined : findOnPath(QEMU);
  const qemuVer = qemu !== undefined ? qemuVersion(qemu) : undefined;
  if (only !== "yun" && qemu === undefined) {
    notes.push(`QEMU rows skipped: ${QEMU} is not on PATH (Debian: apt-get install qemu-system-misc).`);
  }
  const skippedRows: Summary[] =
    only !== "yun" && qemu === undefined
      ? ["qemu", "qemu-icount"].map((id) => ({
          id,
          engine: id === "qemu" ? "qemu TCG" : "qemu TCG -icount shift=0",
          runs: [],
          median: {},
          skipped: "not installed",
          failed: 0,
        }))
      : [];

  const cpu = cpus()[0]?.model.trim() ?? "unknown CPU";
  log(`bench: image ${image.dir} (Linux ${image.kernelVersion})`);
  log(`bench: command line "${append}", ${MEMORY_MIB} MiB, 1 hart; ${runs} run(s) per configuration`);

  const rows: Summary[] = [];
  const runMany = async (id: string, engine: string, one: () => Promise<RunResult>): Promise<Summary> => {
    const results: RunResult[] = [];
    for (let i = 1; i <= runs; i++) {
      log(`bench: ${engine}: run ${i}/${runs} ...`);
      const r = await one();
      if (r.error !== undefined) log(`bench: ${engine}: run ${i} FAILED: ${r.error}`);
      else {
        const instr = r.instrToShell !== undefined ? `, ${(r.instrToShell / 1e6).toFixed(0)} M instructions` : "";
        log(
          `bench: ${engine}: run ${i}: init ${fmt(r.initS, 2)} s, shell ${fmt(r.shellS, 2)} s, off ${fmt(r.offS, 2)} s${instr}`,
        );
      }
      results.push(r);
    }
    const s = summarize(id, engine, results);
    rows.push(s);
    return s;
  };

  const boots =
    only !== "cpu" &&
    only !== "micro" &&
    only !== "io" &&
    only !== "lifecycle" &&
    only !== "smp" &&
    only !== "disk" &&
    only !== "idle" &&
    only !== "full";
  if (only !== "qemu" && boots) {
    const fws: ("dynamic" | "none")[] = fwArg === "both" ? ["dynamic", "none"] : [fwArg];
    for (const fw of fws) {
      // The no-firmware path is measured on the first engine only.
      for (const eng of fw === "none" && fws.length > 1 ? engines.slice(0, 1) : engines) {
        const job: YunJob = {
          kernel: image.kernel,
          initrd: image.initrd,
          firmware: fw === "dynamic" ? image.firmware.dynamic : null,
          append,
          engine: eng,
        };
        const engine = fw === "dynamic" ? `yun ${eng} (OpenSBI fw_dynamic)` : `yun ${eng} (no firmware, Yun SBI)`;
        await runMany(`yun-${eng}-${fw}`, engine, () => runYun(job, opts));
      }
    }
  }
  let qemuPlain: Summary | undefined;
  if (qemu !== undefined && boots) {
    qemuPlain = await runMany("qemu", `qemu ${qemuVer} TCG`, () => runQemu(qemu, image, append, false, opts));
    const icount = await runMany("qemu-icount", `qemu ${qemuVer} TCG -icount shift=0`, () =>
      runQemu(qemu, image, append, true, opts),
    );
    // The plain run retires the same guest work; take its instruction count from the icount run.
    const instr = icount.median.instrToShell;
    if (instr !== undefined && qemuPlain.median.shellS !== undefined) {
      qemuPlain.median.instrToShell = instr;
      qemuPlain.median.mips = instr / (qemuPlain.median.shellS * 1e6);
      qemuPlain.derived = true;
    }
  }

  rows.push(...skippedRows);
  if (boots)
    process.stdout.write(
      `\nBoot benchmark: Linux ${image.kernelVersion}, "${append}", ${MEMORY_MIB} MiB, 1 hart` +
        ` (median of ${runs} run${runs === 1 ? "" : "s"})\n` +
        `Host: ${cpu}, ${cpus().length} CPUs, Node ${process.version}\n\n`,
    );
  if (boots) printTable(rows, qemuPlain?.median.shellS);
  const footnotes = [
    'Times are wall seconds from machine construction (Yun) or process spawn (QEMU) to the "yun: init ready" line, the shell prompt, and power-off.',
    "Yun: instructions are the hart's instret at the prompt; MIPS = instret / (wall time - host sleep while the guest waited in WFI).",
  ];
  if (qemu !== undefined) {
    footnotes.push(
      "QEMU -icount shift=0 (1 instruction = 1 virtual ns): instructions = guest clock at the prompt (/proc/timer_list, ns) - idle time (/proc/uptime); MIPS = that / wall time to the prompt.",
      "~ QEMU TCG (no icount): instruction count taken from the icount run; MIPS = that / its own wall time to the prompt.",
    );
  }
  process.stdout.write("\n" + [...footnotes, ...notes].map((n) => `  ${n}`).join("\n") + "\n");

  let cpuRows: CpuRow[] = [];
  if (only === undefined || only === "cpu" || only === "micro") {
    log(
      `bench: CPU workloads (${engineArg === "both" ? "interp, jit" : engineArg}${qemu !== undefined ? ", QEMU" : ""}) ...`,
    );
    // Interpreter first, as the table reads best that way; --engine picks one.
    cpuRows = await runCpuBench(
      image,
      qemu !== undefined,
      log,
      engineArg === "both" ? ["interp", "jit"] : [engineArg],
      {
        groups: only === "micro" ? ["micro"] : undefined,
        timeoutS,
      },
    );
    process.stdout.write(
      `\nCPU benchmark: guest code on the interpreter, the translator and QEMU TCG\n\n${formatCpuTable(cpuRows)}\n`,
    );
  }

  let ioRows: IoResult[] = [];
  if (only === undefined || only === "io") {
    log("bench: I/O (virtio-blk, VM-to-VM TCP; Yun and QEMU) ...");
    ioRows = await runIoBench({ image, qemu, engines: ["yun", "qemu"], timeoutS, verbose: opts.verbose, log });
    process.stdout.write(
      `\nI/O benchmark: from inside the guest; disks: 64 MiB sequential, dd bs=1M direct I/O; network: 16 MiB ` +
        `through busybox nc between two VMs (Yun: yun run --net, QEMU: -netdev socket)\n\n${formatIoTable(ioRows)}\n`,
    );
  }

  let lifecycleRows: LifecycleResult[] = [];
  if (only === undefined || only === "lifecycle") {
    log("bench: VM lifecycle (snapshot, restore, live migration; Yun and QEMU) ...");
    lifecycleRows = await runLifecycleBench({ image, qemu, timeoutS, log });
    process.stdout.write(
      `\nVM lifecycle: a 256 MiB guest running a counter and rewriting 8 MiB of tmpfs in a loop; ` +
        `QEMU through QMP (migrate to a file, -incoming, migrate over TCP)\n\n${formatLifecycleTable(lifecycleRows)}\n`,
    );
  }

  let smpRows: SmpResult[] = [];
  if (only === undefined || only === "smp") {
    log("bench: SMP (a two-process job with 1 and 2 vCPUs; Yun and QEMU) ...");
    smpRows = await runSmpBench({ image, qemu, timeoutS, log });
    process.stdout.write(
      `\nSMP: CPU-bound jobs of two processes, guest time (/proc/uptime); Yun runs a thread per vCPU, ` +
        `QEMU MTTCG a thread per vCPU\n\n${formatSmpTable(smpRows)}\n`,
    );
  }

  let diskRows: DiskBootResult[] = [];
  if (only === undefined || only === "disk") {
    log("bench: disk boots through OpenSBI and U-Boot (GRUB, extlinux; Yun and QEMU) ...");
    diskRows = await runDiskBootBench({ image, qemu, timeoutS, log });
    process.stdout.write(
      `\nDisk boot: OpenSBI fw_dynamic, Debian's U-Boot (qemu-riscv64_smode), then GRUB or extlinux, the image's ` +
        `kernel and a busybox initramfs to its marker line; same files on both, times from spawn\n\n${formatDiskBootTable(diskRows)}\n`,
    );
  }

  let idleRows: IdleResult[] = [];
  if (only === undefined || only === "idle") {
    log("bench: an idle VM at its shell (host CPU, VMM memory; Yun and QEMU) ...");
    idleRows = await runIdleBench({ image, qemu, timeoutS, verbose: opts.verbose, log });
    process.stdout.write(
      `\nIdle VM at its shell: root disk and user-mode network; host CPU of the whole process over 60 s, ` +
        `30 s after the prompt; memory from /proc (guest = resident pages of guest RAM)\n\n${formatIdleTable(idleRows)}\n`,
    );
  }

  let full: FullBench | undefined;
  const fullImage = findImage("debian");
  if (only === "full" && readManifest(fullImage?.dir ?? "")?.build === undefined) {
    notes.push("full image rows skipped: the full Debian image is not pulled (npx yun image pull debian, as root)");
  } else if ((only === undefined || only === "full") && fullImage !== undefined && readManifest(fullImage.dir)?.build) {
    log("bench: the full Debian image (boot to systemd running, apt-get install python3; Yun and QEMU) ...");
    full = await runFullBench({ image: fullImage, qemu, timeoutS: Math.max(timeoutS, 900), log });
    process.stdout.write(
      `\nFull Debian image: yun run --image debian vs qemu-system-riscv64 with the same kernel, initrd and disk, ` +
        `${1024} MiB, 1 hart\n\n${formatFullTable(full)}\n`,
    );
  }

  const failed =
    diskRows.filter((r) => r.error !== undefined).length +
    (full?.results.filter((r) => r.error !== undefined).length ?? 0) +
    lifecycleRows.filter((r) => r.error !== undefined).length +
    idleRows.filter((r) => r.error !== undefined).length +
    smpRows.filter((r) => r.error !== undefined).length +
    rows.reduce((n, r) => n + r.failed, 0) +
    cpuRows.filter((r) => r.error !== undefined).length +
    ioRows.filter((r) => r.error !== undefined).length;
  if (values.json) {
    const json = {
      date: new Date().toISOString(),
      host: { cpu, cpus: cpus().length, node: process.version, platform: `${process.platform}-${process.arch}` },
      image: {
        dir: image.dir,
        kernelVersion: image.kernelVersion,
        kernel: image.kernel,
        initrd: image.initrd,
        firmware: image.firmware.dynamic,
      },
      append,
      memoryMiB: MEMORY_MIB,
      runs,
      qemu: qemu !== undefined ? { path: qemu, version: qemuVer } : null,
      results: rows.map((r) => ({
        id: r.id,
        engine: r.engine,
        ...(r.skipped !== undefined ? { skipped: r.skipped } : {}),
        median: r.median,
        derived: r.derived ?? false,
        runs: r.runs,
      })),
      notes,
      cpu: cpuRows,
      io: ioRows,
      lifecycle: lifecycleRows,
      smp: smpRows,
      disk: diskRows,
      idle: idleRows,
      full,
    };
    process.stdout.write("\n" + JSON.stringify(json, null, 2) + "\n");
  }
  if (failed > 0) {
    process.stderr.write(`bench: ${failed} run(s) failed; see the messages above\n`);
    return 1;
  }
  return 0;
}

function killAll(): void {
  for (const c of liveChildren) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
  liveChildren.clear();
  for (const w of liveWorkers) void w.terminate();
  liveWorkers.clear();
  killIoGuests();
  killLifecycleGuests();
  killIdleGuests();
}

const job = (workerData as { yunBenchJob?: YunJob } | null)?.yunBenchJob;
if (!isMainThread && job !== undefined) {
  await yunWorker(job);
} else if (isMainThread) {
  process.on("exit", killAll);
  for (const [sig, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
    ["SIGHUP", 129],
  ] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: interrupted (${sig}); stopping the guests\n`);
      killAll();
      process.exit(code);
    });
  }
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (e) {
    killAll();
    process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  }
}

/**
 * CPU benchmarks: the interpreter, the translator and qemu-system-riscv64 (TCG) on the same guest code.
 *
 *   kernel   bench/kernels/sha256.c, a bare-metal M-mode program (SHA-256 over 64 KiB, 40 times),
 *            compiled here with riscv64-linux-gnu-gcc; it powers off through the test device.
 *            Yun runs it on a bare hart (each engine in a fresh worker); QEMU with -bios none.
 *   job      issue 14's CPU-bound jobs in the booted debian-tiny guest (busybox): sha256sum, gzip -9,
 *            an awk floating-point loop, bc -l, a shell arithmetic loop, a fork/exec loop, sort.
 *   micro    issue 14's kernel-heavy micro-workloads: bench/kernels/micro.c, a static Linux program
 *            (getppid loop, page faults, pipe ping-pong, mmap/munmap) on a small raw disk that the
 *            guest copies to /tmp; Yun and QEMU attach the same file read-only as /dev/vda.
 *
 * Guest rows boot once per engine (Yun: one worker, 1 hart, 256 MiB; QEMU: the same kernel,
 * initramfs, command line and disk) and type each workload at the shell; a row is the wall time
 * between typing it and its marker line, and its guest instructions are the hart's instret between
 * the two (the same count is used for QEMU's MIPS). Times are host wall time; MIPS = guest
 * instructions / wall time.
 */
import { Worker, parentPort } from "node:worker_threads";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Bus } from "../src/cpu/bus.js";
import { Hart } from "../src/cpu/hart.js";
import { Jit, type TranslatorStats } from "../src/cpu/jit.js";
import { SysCon, SYSCON_BASE, SYSCON_SIZE } from "../src/devices/syscon.js";
import type { ImageInfo } from "../src/images/store.js";
import { DEFAULT_APPEND } from "../src/cli/run.js";
import { VirtMachine, type Engine } from "../src/vmm/virt.js";
import { qemuVirtArgs } from "./qemu.js";

export interface CpuRow {
  workload: string;
  engine: "interp" | "jit" | "qemu";
  group?: CpuGroup;
  /** Issue 14's target for the ratio Yun / QEMU (guest rows). */
  target?: number;
  seconds: number;
  /** Guest rows: host CPU time of the engine between the markers (s), robust to a busy host. */
  cpuSeconds?: number;
  instructions: number;
  mips: number;
  translator?: TranslatorStats;
  /** Yun's translator between the markers: instructions run in translated code, and dispatcher lookups. */
  translatedInstructions?: number;
  lookups?: number;
  error?: string;
}

const KERNEL_SOURCE = fileURLToPath(new URL("../../bench/kernels/sha256.c", import.meta.url));
const KERNEL_LDS = fileURLToPath(new URL("../../bench/kernels/link.ld", import.meta.url));
const RAM_BASE = 0x8000_0000;

/** Compiles the bare-metal kernel; returns the ELF path (in a temporary directory) or an error. */
export function buildKernel(): { elf: string; dir: string } | { error: string } {
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-"));
  const elf = join(dir, "sha256.elf");
  const r = spawnSync(
    "riscv64-linux-gnu-gcc",
    [
      "-O2",
      "-march=rv64gc",
      "-mabi=lp64d",
      "-mcmodel=medany",
      "-nostdlib",
      "-ffreestanding",
      "-fno-pic",
      "-static",
      "-Wl,--build-id=none",
      "-Wl,--no-warn-rwx-segments",
      "-T",
      KERNEL_LDS,
      "-o",
      elf,
      KERNEL_SOURCE,
    ],
    { encoding: "utf8" },
  );
  if (r.error || r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return { error: `riscv64-linux-gnu-gcc failed: ${r.error?.message ?? r.stderr.trim()}` };
  }
  return { elf, dir };
}

/** Loads an ELF's PT_LOAD segments into RAM; returns the entry point. */
function loadElf(bus: Bus, elf: Uint8Array): number {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(dv.getBigUint64(32, true));
  const phnum = dv.getUint16(56, true);
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * 56;
    if (dv.getUint32(p, true) !== 1) continue;
    const off = Number(dv.getBigUint64(p + 8, true));
    const pa = Number(dv.getBigUint64(p + 24, true));
    const size = Number(dv.getBigUint64(p + 32, true));
    bus.load(pa, elf.subarray(off, off + size));
  }
  return Number(dv.getBigUint64(24, true));
}

/** Runs the kernel on a bare hart in this thread. */
export function runKernelHere(elfPath: string, engine: Engine): CpuRow {
  const bus = new Bus(RAM_BASE, 16 << 20);
  let off = false;
  bus.map(SYSCON_BASE, SYSCON_SIZE, new SysCon(() => (off = true)));
  const hart = new Hart(bus, 0, { now: () => Math.floor(performance.now() * 10_000) });
  const jit = engine === "jit" ? new Jit(hart) : null;
  hart.pc = loadElf(bus, readFileSync(elfPath));
  const t0 = performance.now();
  while (!off && !hart.waiting && hart.instret < 5e9) hart.run(1_000_000);
  const seconds = (performance.now() - t0) / 1000;
  const row: CpuRow = {
    workload: "sha256 kernel",
    engine,
    seconds,
    instructions: hart.instret,
    mips: hart.instret / seconds / 1e6,
  };
  if (!off) row.error = `the kernel did not power off (pc 0x${hart.pc.toString(16)})`;
  if (jit) row.translator = jit.stats();
  return row;
}

function inWorker<T>(job: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { yunCpuBenchJob: job } });
    w.once("message", (m: T) => {
      resolve(m);
      void w.terminate();
    });
    w.once("error", reject);
  });
}

export async function runKernelQemu(elfPath: string, instructions: number): Promise<CpuRow> {
  const t0 = performance.now();
  const r = spawnSync(
    "qemu-system-riscv64",
    ["-M", "virt", "-m", "64", "-nographic", "-bios", "none", "-kernel", elfPath],
    {
      timeout: 120_000,
    },
  );
  const seconds = (performance.now() - t0) / 1000;
  const row: CpuRow = {
    workload: "sha256 kernel",
    engine: "qemu",
    seconds,
    instructions,
    mips: instructions / seconds / 1e6,
  };
  if (r.error || r.status !== 0) row.error = `qemu-system-riscv64: ${r.error?.message ?? `exit ${r.status}`}`;
  return row;
}

// ------------------------------------------------------------------------------------------ guest workloads

/** Row groups: the bare-metal kernel, the busybox jobs in the guest, the kernel-heavy micro-workloads. */
export type CpuGroup = "kernel" | "job" | "micro";
export const CPU_GROUPS: readonly CpuGroup[] = ["kernel", "job", "micro"];

export interface GuestWorkload {
  name: string;
  group: "job" | "micro";
  /** One shell command line, typed at the guest's prompt. */
  command: string;
  /** Issue 14's target: Yun's time at most this many times QEMU TCG's. */
  target: number;
}

/** Where the guest puts the micro-workload program it reads from its disk. */
const MICRO_PATH = "/tmp/micro";
const JOB_TARGET = 2;
const MICRO_TARGET = 2.5;

/**
 * The guest rows of issue 14, each on its own row. Sizes make each take roughly 1-10 s on QEMU TCG
 * 7.2 on a 2-core host (the fork/exec loop runs 250 times, not 500: 500 took 14 s there).
 * busybox awk has no math library here (no sqrt/sin), so its floating-point loop sums a series.
 */
export const GUEST_WORKLOADS: readonly GuestWorkload[] = [
  {
    name: "sha256sum 4 × 2.9 MB",
    group: "job",
    command: "busybox sha256sum /tmp/in /tmp/in /tmp/in /tmp/in > /dev/null",
    target: JOB_TARGET,
  },
  { name: "gzip -9 2.9 MB", group: "job", command: "busybox gzip -9 -c /tmp/in > /dev/null", target: JOB_TARGET },
  {
    name: "awk float loop 100k",
    group: "job",
    command: `awk 'BEGIN { s = 0; for (i = 0; i < 100000; i++) s += 4 * (1 - 2 * (i % 2)) / (2 * i + 1); printf "%.10f\\n", s }' > /dev/null`,
    target: JOB_TARGET,
  },
  {
    name: "bc -l 4*a(1), 500 digits",
    group: "job",
    command: "echo 'scale=500; 4*a(1)' | bc -l > /dev/null",
    target: JOB_TARGET,
  },
  {
    name: "shell arithmetic loop 100k",
    group: "job",
    command: "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
    target: JOB_TARGET,
  },
  {
    name: "fork/exec /bin/true × 250",
    group: "job",
    command: "for i in $(seq 250); do /bin/true; done",
    target: JOB_TARGET,
  },
  { name: "sort 100 000 lines", group: "job", command: "sort /tmp/sortin > /dev/null", target: JOB_TARGET },
  { name: "getppid × 1M", group: "micro", command: `${MICRO_PATH} getppid 1000000`, target: MICRO_TARGET },
  {
    name: "page faults 3 × 64 MiB",
    group: "micro",
    command: `${MICRO_PATH} pagefault 3`,
    target: MICRO_TARGET,
  },
  { name: "pipe ping-pong × 10k", group: "micro", command: `${MICRO_PATH} pipe 10000`, target: MICRO_TARGET },
  {
    name: "mmap/munmap 64 KiB × 40k",
    group: "micro",
    command: `${MICRO_PATH} mmap 40000`,
    target: MICRO_TARGET,
  },
];

/** The micro-workload program on a raw disk image of its own: the guest copies its first `bytes` bytes off /dev/vda. */
export interface MicroDisk {
  path: string;
  bytes: number;
}

const MICRO_SOURCE = fileURLToPath(new URL("../../bench/kernels/micro.c", import.meta.url));

/** Compiles bench/kernels/micro.c (static) and writes it to a raw disk image padded to whole 4 KiB blocks. */
export function buildMicroDisk(dir: string): MicroDisk | { error: string } {
  const elf = join(dir, "micro");
  const r = spawnSync("riscv64-linux-gnu-gcc", ["-static", "-O2", "-s", "-o", elf, MICRO_SOURCE], {
    encoding: "utf8",
  });
  if (r.error || r.status !== 0) {
    return { error: `riscv64-linux-gnu-gcc failed: ${r.error?.message ?? r.stderr.trim()}` };
  }
  const program = readFileSync(elf);
  const path = join(dir, "micro.img");
  writeFileSync(path, Buffer.concat([program, Buffer.alloc((4096 - (program.length % 4096)) % 4096)]));
  return { path, bytes: program.length };
}

/** The QEMU options that attach the micro-workload disk read-only as /dev/vda, as Yun's `disks` does. */
function qemuMicroDrive(disk: MicroDisk | undefined): string[] {
  if (disk === undefined) return [];
  return [
    "-drive",
    `file=${disk.path},format=raw,if=none,id=micro,readonly=on`,
    "-device",
    "virtio-blk-device,drive=micro",
  ];
}

/** The guest's setup: the jobs' inputs and, with a micro disk, the micro-workload program. */
function guestSetup(micro: MicroDisk | undefined): string {
  const steps = [
    "seq 1 400000 > /tmp/in",
    `awk 'BEGIN { srand(1); for (i = 0; i < 100000; i++) print int(rand() * 1000000000) }' > /tmp/sortin`,
  ];
  if (micro) steps.push(`head -c ${micro.bytes} /dev/vda > ${MICRO_PATH}`, `chmod +x ${MICRO_PATH}`);
  return `${steps.join("; ")}; echo SET''UP\n`;
}

interface ScriptIo {
  write(text: string): void;
  /** Workload `index` is about to be typed. */
  started(index: number): void;
  /** Workload `index` printed its marker; `status` is its exit status. */
  finished(index: number, status: number): void;
  /** Every workload has run: the guest should power off. */
  done(): void;
  /** Nothing came in time; `what` is what was awaited. */
  stuck(what: string): void;
}

/**
 * Types the setup and then each workload at the guest's shell, one at a time. A workload ends at its
 * marker line "DONE<index> <exit status>"; markers are typed as DO''NE so the shell's echo of the
 * command line never matches. Each stage (boot, setup, each workload) has `timeoutS` seconds.
 */
class ShellScript {
  private text = "";
  /** The last console output, for error messages. */
  private recent = "";
  /** -2: booting, -1: setup, 0..: the workload running. */
  private stage = -2;
  private marker: RegExp | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly commands: readonly string[],
    private readonly setup: string,
    private readonly timeoutS: number,
    private readonly io: ScriptIo,
  ) {
    this.arm();
  }

  /** What the script waits for. */
  get waitingFor(): string {
    if (this.stage === -2) return "the shell prompt";
    if (this.stage === -1) return "the setup";
    if (this.stage < this.commands.length) return `workload ${this.stage + 1} (${this.commands[this.stage]})`;
    return "power-off";
  }

  /** The last lines of console output, without terminal escapes. */
  get tail(): string {
    const lines = this.recent
      .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
      .replace(/\r/g, "")
      .trimEnd()
      .split("\n");
    return lines.slice(-4).join(" | ");
  }

  feed(chunk: string): void {
    this.text += chunk;
    this.recent = (this.recent + chunk).slice(-1000);
    if (this.stage === -2 && this.text.includes("~ # ")) {
      this.stage = -1;
      this.text = "";
      this.arm();
      this.io.write(this.setup);
    } else if (this.stage === -1 && /(^|\n)SETUP/.test(this.text)) {
      this.next();
    } else if (this.marker) {
      const m = this.marker.exec(this.text);
      if (m) {
        this.io.finished(this.stage, Number(m[1]));
        this.next();
      }
    }
    if (this.text.length > 20000) this.text = this.text.slice(-2000);
  }

  cancel(): void {
    clearTimeout(this.timer);
  }

  private next(): void {
    this.stage++;
    this.text = "";
    if (this.stage === this.commands.length) {
      this.marker = undefined;
      this.cancel();
      this.io.done();
      return;
    }
    this.marker = new RegExp(`(?:^|\\n)DONE${this.stage} (\\d+)`);
    this.arm();
    this.io.started(this.stage);
    this.io.write(`${this.commands[this.stage]}; echo DO''NE${this.stage} $?\n`);
  }

  private arm(): void {
    this.cancel();
    this.timer = setTimeout(
      () => this.io.stuck(`${this.waitingFor}; the console's last lines: ${this.tail}`),
      this.timeoutS * 1000,
    );
  }
}

interface GuestTiming {
  name: string;
  seconds: number;
  /** Host CPU time the engine spent between the markers (s): what the wall time would be on an idle host. */
  cpuSeconds: number;
  /** Guest instructions between the markers (Yun only). */
  instructions: number;
  /** Of them, run in translated code; and the dispatcher's block lookups (Yun's translator only). */
  translatedInstructions?: number;
  lookups?: number;
  status: number;
}

interface GuestRun {
  rows: GuestTiming[];
  stats?: TranslatorStats;
  error?: string;
}

interface GuestJob {
  image: ImageInfo;
  engine: Engine;
  workloads: GuestWorkload[];
  micro?: MicroDisk;
  timeoutS: number;
}

/** Boots the image on Yun (1 hart, 256 MiB) and runs the workloads; times and instret between the markers. */
async function guestWorker(job: GuestJob): Promise<GuestRun> {
  const rows: GuestTiming[] = [];
  let error: string | undefined;
  let t0 = 0;
  let i0 = 0;
  let c0 = process.cpuUsage();
  let s0: TranslatorStats | undefined;
  const script = new ShellScript(
    job.workloads.map((w) => w.command),
    guestSetup(job.micro),
    job.timeoutS,
    {
      write: (text) => machine.input(Buffer.from(text)),
      started: () => {
        t0 = performance.now();
        i0 = machine.hart.instret;
        c0 = process.cpuUsage();
        s0 = machine.jit?.stats();
      },
      finished: (i, status) => {
        const s1 = machine.jit?.stats();
        rows.push({
          name: job.workloads[i].name,
          seconds: (performance.now() - t0) / 1000,
          cpuSeconds: cpuSecondsSince(c0),
          instructions: machine.hart.instret - i0,
          translatedInstructions: s0 && s1 ? s1.translatedInstructions - s0.translatedInstructions : undefined,
          lookups: s0 && s1 ? s1.lookups - s0.lookups : undefined,
          status,
        });
      },
      done: () => machine.input(Buffer.from("poweroff -f\n")),
      stuck: (what) => {
        error = `timed out after ${job.timeoutS} s waiting for ${what}`;
        machine.stop();
      },
    },
  );
  const machine: VirtMachine = new VirtMachine({
    kernel: readFileSync(job.image.kernel),
    initrd: readFileSync(job.image.initrd),
    firmware: readFileSync(job.image.firmware.dynamic),
    firmwareKind: "dynamic",
    append: DEFAULT_APPEND,
    memoryMiB: 256,
    engine: job.engine,
    disks: job.micro ? [{ path: job.micro.path, readOnly: true, format: "raw" }] : [],
    output: (bytes) => script.feed(Buffer.from(bytes).toString("latin1")),
  });
  try {
    const power = await machine.run();
    if (error === undefined && rows.length < job.workloads.length) {
      error = `the guest stopped (${power.kind} ${power.code}) before ${script.waitingFor}`;
    }
  } finally {
    script.cancel();
  }
  return { rows, stats: machine.jit?.stats(), error };
}

/** This process's CPU time (user + system, all threads: the worker runs the guest, the rest waits) since `from` (s). */
function cpuSecondsSince(from: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(from);
  return (d.user + d.system) / 1e6;
}

/** Linux's fixed unit of /proc/PID/stat times. */
const USER_HZ = 100;

/** A child's CPU time so far (user + system, all threads, from /proc/PID/stat; s), NaN when unreadable. */
function childCpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
  } catch {
    return NaN;
  }
}

/** The same workloads under QEMU (same kernel, initramfs, command line and disk): wall time between the markers. */
function guestQemu(
  image: ImageInfo,
  workloads: GuestWorkload[],
  micro: MicroDisk | undefined,
  timeoutS: number,
): Promise<GuestRun> {
  return new Promise((resolve) => {
    const child = spawn("qemu-system-riscv64", qemuVirtArgs(image, DEFAULT_APPEND, qemuMicroDrive(micro)), {
      stdio: ["pipe", "pipe", "ignore"],
    });
    const rows: GuestTiming[] = [];
    let error: string | undefined;
    let t0 = 0;
    let c0 = 0;
    const script = new ShellScript(
      workloads.map((w) => w.command),
      guestSetup(micro),
      timeoutS,
      {
        write: (text) => child.stdin.write(text),
        started: () => {
          t0 = performance.now();
          c0 = childCpuSeconds(child.pid);
        },
        finished: (i, status) =>
          rows.push({
            name: workloads[i].name,
            seconds: (performance.now() - t0) / 1000,
            cpuSeconds: childCpuSeconds(child.pid) - c0,
            instructions: 0,
            status,
          }),
        done: () => child.stdin.write("poweroff -f\n"),
        stuck: (what) => {
          error = `timed out after ${timeoutS} s waiting for ${what}`;
          child.kill("SIGKILL");
        },
      },
    );
    child.stdout.on("data", (chunk: Buffer) => script.feed(chunk.toString("latin1")));
    child.stdin.on("error", () => {});
    child.on("exit", (code, signal) => {
      script.cancel();
      if (error === undefined && rows.length < workloads.length) {
        error = `QEMU exited (${signal ?? `code ${code}`}) before ${script.waitingFor}`;
      }
      resolve({ rows, error });
    });
    child.on("error", (e) => {
      script.cancel();
      resolve({ rows, error: `qemu-system-riscv64: ${e.message}` });
    });
  });
}

/** Turns a guest run into rows: one per workload, with the run's error on those that did not finish. */
function guestRows(
  workloads: GuestWorkload[],
  run: GuestRun,
  engine: CpuRow["engine"],
  instructions: Map<string, number>,
): CpuRow[] {
  return workloads.map((w) => {
    const g = run.rows.find((r) => r.name === w.name);
    const base = { workload: w.name, group: w.group, target: w.target, engine };
    if (g === undefined)
      return { ...base, seconds: NaN, instructions: 0, mips: NaN, error: run.error ?? "did not run" };
    const n = engine === "qemu" ? (instructions.get(w.name) ?? 0) : g.instructions;
    if (engine !== "qemu") instructions.set(w.name, n);
    const row: CpuRow = {
      ...base,
      seconds: g.seconds,
      cpuSeconds: g.cpuSeconds,
      instructions: n,
      mips: n / g.seconds / 1e6,
    };
    if (g.status !== 0) row.error = `exited with status ${g.status}`;
    if (engine !== "qemu" && run.stats) row.translator = run.stats;
    if (engine !== "qemu" && g.translatedInstructions !== undefined) {
      row.translatedInstructions = g.translatedInstructions;
      row.lookups = g.lookups;
    }
    return row;
  });
}

export interface CpuBenchOptions {
  /** Row groups to run (default: all). */
  groups?: readonly CpuGroup[];
  /** Only the guest workloads whose name contains this text. */
  match?: string;
  /** Seconds each stage of a guest run (boot, setup, one workload) may take (default 300). */
  timeoutS?: number;
}

/**
 * Runs the CPU benchmarks; returns the rows (errors are recorded in them, not thrown). The kernel
 * runs on every engine given; the guest workloads on the translator (what `yun run` uses) unless
 * only the interpreter is given.
 */
export async function runCpuBench(
  image: ImageInfo | undefined,
  withQemu: boolean,
  log: (line: string) => void,
  engines: readonly ("interp" | "jit")[] = ["interp", "jit"],
  options: CpuBenchOptions = {},
): Promise<CpuRow[]> {
  const groups = options.groups ?? CPU_GROUPS;
  const timeoutS = options.timeoutS ?? 300;
  const rows: CpuRow[] = [];
  if (groups.includes("kernel")) {
    const kernel = buildKernel();
    if ("error" in kernel) {
      log(`cpu bench: skipping the kernel: ${kernel.error}`);
    } else {
      try {
        for (const engine of engines) {
          rows.push(
            await inWorker<CpuRow>({ kind: "kernel", elf: kernel.elf, engine }).catch((e: Error): CpuRow => ({
              workload: "sha256 kernel",
              engine,
              seconds: NaN,
              instructions: 0,
              mips: NaN,
              error: e.message,
            })),
          );
        }
        if (withQemu) rows.push(await runKernelQemu(kernel.elf, rows[rows.length - 1].instructions));
      } finally {
        rmSync(kernel.dir, { recursive: true, force: true });
      }
    }
    for (const r of rows) r.group = "kernel";
  }
  const workloads = GUEST_WORKLOADS.filter(
    (w) => groups.includes(w.group) && (options.match === undefined || w.name.includes(options.match)),
  );
  if (!image || workloads.length === 0) return rows;
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-guest-"));
  try {
    let micro: MicroDisk | undefined;
    let runnable = workloads;
    if (workloads.some((w) => w.group === "micro")) {
      const built = buildMicroDisk(dir);
      if ("error" in built) {
        log(`cpu bench: skipping the micro-workloads: ${built.error}`);
        runnable = workloads.filter((w) => w.group !== "micro");
        for (const w of workloads.filter((x) => x.group === "micro")) {
          rows.push({
            workload: w.name,
            group: w.group,
            target: w.target,
            engine: "jit",
            seconds: NaN,
            instructions: 0,
            mips: NaN,
            error: built.error,
          });
        }
      } else micro = built;
    }
    const engine: Engine = engines.includes("jit") ? "jit" : engines[0];
    const instructions = new Map<string, number>();
    log(`cpu bench: ${runnable.length} guest workloads on yun ${engine} ...`);
    const yun = await inWorker<GuestRun>({ kind: "guest", image, engine, workloads: runnable, micro, timeoutS }).catch(
      (e: Error): GuestRun => ({ rows: [], error: `the Yun worker failed: ${e.message}` }),
    );
    rows.push(...guestRows(runnable, yun, engine, instructions));
    if (withQemu) {
      log(`cpu bench: ${runnable.length} guest workloads on QEMU ...`);
      rows.push(...guestRows(runnable, await guestQemu(image, runnable, micro, timeoutS), "qemu", instructions));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

function pad(cells: string[], widths: number[]): string {
  return cells
    .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
    .join("  ")
    .trimEnd();
}

/** The bare-metal kernel's rows (every engine) and the guest rows as Yun beside QEMU with issue 14's targets. */
export function formatCpuTable(rows: CpuRow[]): string {
  const lines: string[] = [];
  const kernel = rows.filter((r) => r.group === "kernel");
  if (kernel.length > 0) {
    const q = kernel.find((x) => x.engine === "qemu" && !x.error);
    lines.push("bare-metal kernel (sha256, M-mode)   engine    time (s)   guest instr   MIPS    vs qemu (time)");
    for (const r of kernel) {
      if (r.error) {
        lines.push(`${r.workload.padEnd(36)} ${r.engine.padEnd(8)} error: ${r.error}`);
        continue;
      }
      const ratio = q ? `${(r.seconds / q.seconds).toFixed(2)}x` : "-";
      lines.push(
        `${r.workload.padEnd(36)} ${r.engine.padEnd(8)} ${r.seconds.toFixed(3).padStart(9)}  ${(r.instructions / 1e6).toFixed(1).padStart(10)} M ${r.mips.toFixed(0).padStart(6)}    ${ratio}`,
      );
    }
    lines.push("");
  }
  const guest = rows.filter((r) => r.group === "job" || r.group === "micro");
  const names = [...new Set(guest.map((r) => r.workload))];
  if (names.length > 0) {
    const yunEngine = guest.find((r) => r.engine !== "qemu")?.engine ?? "jit";
    const header = [
      "guest workload (debian-tiny, 1 hart)",
      `yun ${yunEngine} (s)`,
      "guest instr (M)",
      "qemu (s)",
      "yun/qemu",
      "yun cpu (s)",
      "qemu cpu (s)",
      "yun/qemu cpu",
      "target",
      "met?",
    ];
    const body: string[][] = [];
    const errors: string[] = [];
    for (const name of names) {
      const y = guest.find((r) => r.workload === name && r.engine !== "qemu");
      const q = guest.find((r) => r.workload === name && r.engine === "qemu");
      const ok = (r: CpuRow | undefined): r is CpuRow => r !== undefined && r.error === undefined;
      const ratio = ok(y) && ok(q) ? y.seconds / q.seconds : undefined;
      const cpu = (r: CpuRow | undefined): number | undefined =>
        ok(r) && r.cpuSeconds !== undefined && Number.isFinite(r.cpuSeconds) ? r.cpuSeconds : undefined;
      const yc = cpu(y);
      const qc = cpu(q);
      const cpuRatio = yc !== undefined && qc !== undefined && qc > 0 ? yc / qc : undefined;
      const judged = cpuRatio ?? ratio;
      const target = (y ?? q)?.target;
      for (const r of [y, q]) if (r?.error) errors.push(`${name} on ${r.engine}: ${r.error}`);
      body.push([
        name,
        ok(y) ? y.seconds.toFixed(2) : y ? "error" : "-",
        ok(y) ? (y.instructions / 1e6).toFixed(0) : "-",
        ok(q) ? q.seconds.toFixed(2) : q ? "error" : "-",
        ratio !== undefined ? `${ratio.toFixed(2)}×` : "-",
        yc !== undefined ? yc.toFixed(2) : "-",
        qc !== undefined ? qc.toFixed(2) : "-",
        cpuRatio !== undefined ? `${cpuRatio.toFixed(2)}×` : "-",
        target !== undefined ? `≤ ${target}×` : "-",
        judged === undefined || target === undefined ? "-" : judged <= target ? "yes" : "no",
      ]);
    }
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
    lines.push(pad(header, widths), widths.map((w) => "-".repeat(w)).join("  "));
    for (const b of body) lines.push(pad(b, widths));
    for (const e of errors) lines.push(`  error: ${e}`);
    lines.push(
      "  times: wall seconds between typing the command and its marker; cpu: the engine's host CPU seconds over the",
      "  same span (Yun's process, QEMU's from /proc), which a busy host inflates far less; met? judges the cpu ratio.",
    );
  }
  for (const r of rows) {
    if (r.translatedInstructions === undefined || r.error !== undefined || r.instructions === 0) continue;
    lines.push(
      `  ${r.workload}: ${((100 * r.translatedInstructions) / r.instructions).toFixed(1)} % of the instructions translated, ${((r.lookups ?? 0) / 1e6).toFixed(2)} M dispatcher lookups`,
    );
  }
  const t = rows.filter((r) => r.translator && r.group !== "kernel").pop()?.translator;
  if (t) {
    lines.push(
      `translation cache (last guest run): ${t.translated} blocks, ${(t.sourceBytes / 1e6).toFixed(1)} MB of ${t.backend === "wasm" ? "WebAssembly" : "JavaScript source"}, ~${(t.estimatedBytes / 1e6).toFixed(1)} MB estimated, ${t.flushes} flushes, ${t.invalidations} invalidations`,
    );
  }
  return lines.join("\n");
}

// Worker side.
const job = (await import("node:worker_threads")).workerData?.yunCpuBenchJob as
  { kind: "kernel"; elf: string; engine: Engine } | ({ kind: "guest" } & GuestJob) | undefined;
if (job && parentPort) {
  if (job.kind === "kernel") parentPort.postMessage(runKernelHere(job.elf, job.engine));
  else parentPort.postMessage(await guestWorker(job));
}

// Standalone: node dist/bench/cpu.js [--no-qemu] [--only kernel|job|micro] [--match TEXT] [--json]
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1] && !job) {
  const { findImage } = await import("../src/images/store.js");
  const { values } = parseArgs({
    options: {
      "no-qemu": { type: "boolean", default: false },
      only: { type: "string" },
      match: { type: "string" },
      timeout: { type: "string", default: "300" },
      json: { type: "boolean", default: false },
    },
  });
  const only = values.only as CpuGroup | undefined;
  if (only !== undefined && !CPU_GROUPS.includes(only)) {
    process.stderr.write(`cpu bench: --only takes ${CPU_GROUPS.join(", ")}, got "${only}"\n`);
    process.exit(2);
  }
  const rows = await runCpuBench(
    findImage("debian-tiny"),
    !values["no-qemu"],
    (l) => process.stderr.write(l + "\n"),
    ["interp", "jit"],
    { groups: only ? [only] : CPU_GROUPS, match: values.match, timeoutS: Number(values.timeout) },
  );
  process.stdout.write(formatCpuTable(rows) + "\n");
  if (values.json) process.stdout.write(JSON.stringify(rows, null, 2) + "\n");
}

/**
 * CPU benchmarks: the interpreter, the translator and qemu-system-riscv64 (TCG) on the same guest code.
 *
 *   kernel   bench/kernels/sha256.c, a bare-metal M-mode program (SHA-256 over 64 KiB, 40 times),
 *            compiled here with riscv64-linux-gnu-gcc; it powers off through the test device.
 *            Yun runs it on a bare hart (each engine in a fresh worker); QEMU with -bios none.
 *   guest    Debian's busybox in the booted guest: sha256sum and gzip -9 over a fixed 3 MB file
 *            (`seq 1 400000`), timed between console markers; the guest instructions are the
 *            hart's instret between the markers (the same count is used for QEMU's MIPS).
 *
 * Times are host wall time; MIPS = guest instructions / wall time.
 */
import { Worker, parentPort } from "node:worker_threads";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
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
  seconds: number;
  instructions: number;
  mips: number;
  translator?: TranslatorStats;
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

/** The commands run at the guest shell; markers are typed with quotes so the echoed command line never matches. */
const GUEST_SETUP = "seq 1 400000 > /tmp/in; echo SET''UP\n";
const GUEST_WORKLOADS: { name: string; command: string }[] = [
  { name: "busybox sha256sum 2.9 MB", command: "busybox sha256sum /tmp/in > /dev/null" },
  { name: "busybox gzip -9 2.9 MB", command: "busybox gzip -9 -c /tmp/in > /dev/null" },
];

interface GuestTiming {
  name: string;
  seconds: number;
  instructions: number;
}

async function guestWorker(job: {
  image: ImageInfo;
  engine: Engine;
}): Promise<{ rows: GuestTiming[]; stats?: TranslatorStats; error?: string }> {
  const rows: GuestTiming[] = [];
  let text = "";
  let stage = -1; // -1: boot, 0..n: workloads
  let t0 = 0,
    i0 = 0;
  let setupSent = false;
  let resolveDone: () => void = () => {};
  const done = new Promise<void>((r) => (resolveDone = r));
  const machine: VirtMachine = new VirtMachine({
    kernel: readFileSync(job.image.kernel),
    initrd: readFileSync(job.image.initrd),
    firmware: readFileSync(job.image.firmware.dynamic),
    firmwareKind: "dynamic",
    append: DEFAULT_APPEND,
    memoryMiB: 256,
    engine: job.engine,
    output: (bytes) => {
      text += Buffer.from(bytes).toString("latin1");
      const next = (): void => {
        stage++;
        if (stage === GUEST_WORKLOADS.length) {
          machine.input(Buffer.from("poweroff -f\n"));
          return;
        }
        t0 = performance.now();
        i0 = machine.hart.instret;
        machine.input(Buffer.from(`${GUEST_WORKLOADS[stage].command}; echo DO''NE${stage}\n`));
      };
      if (stage === -1 && !setupSent && text.includes("~ # ")) {
        setupSent = true;
        machine.input(Buffer.from(GUEST_SETUP));
      }
      if (stage === -1 && /(^|\n)SETUP/.test(text)) {
        text = "";
        next();
      } else if (stage >= 0 && stage < GUEST_WORKLOADS.length && new RegExp(`(^|\\n)DONE${stage}`).test(text)) {
        rows.push({
          name: GUEST_WORKLOADS[stage].name,
          seconds: (performance.now() - t0) / 1000,
          instructions: machine.hart.instret - i0,
        });
        text = "";
        next();
      }
      if (text.length > 20000) text = text.slice(-2000);
    },
  });
  void machine.run().then(() => resolveDone());
  await done;
  if (rows.length < GUEST_WORKLOADS.length) return { rows, error: "the guest stopped before the workloads finished" };
  return { rows, stats: machine.jit?.stats() };
}

/** The same commands under QEMU: wall time between the markers. */
function guestQemu(image: ImageInfo): Promise<{ rows: { name: string; seconds: number }[]; error?: string }> {
  return new Promise((resolve) => {
    const args = qemuVirtArgs(image, DEFAULT_APPEND);
    const child = spawn("qemu-system-riscv64", args, { stdio: ["pipe", "pipe", "ignore"] });
    const rows: { name: string; seconds: number }[] = [];
    let text = "";
    let stage = -1;
    let t0 = 0;
    let setupSent = false;
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    const next = (): void => {
      stage++;
      if (stage === GUEST_WORKLOADS.length) {
        child.stdin.write("poweroff -f\n");
        return;
      }
      t0 = performance.now();
      child.stdin.write(`${GUEST_WORKLOADS[stage].command}; echo DO''NE${stage}\n`);
    };
    child.stdout.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (stage === -1 && !setupSent && text.includes("~ # ")) {
        setupSent = true;
        child.stdin.write(GUEST_SETUP);
      }
      if (stage === -1 && /(^|\n)SETUP/.test(text)) {
        text = "";
        next();
      } else if (stage >= 0 && stage < GUEST_WORKLOADS.length && new RegExp(`(^|\\n)DONE${stage}`).test(text)) {
        rows.push({ name: GUEST_WORKLOADS[stage].name, seconds: (performance.now() - t0) / 1000 });
        text = "";
        next();
      }
    });
    child.stdin.on("error", () => {});
    child.on("exit", () => {
      clearTimeout(timer);
      resolve(
        rows.length === GUEST_WORKLOADS.length
          ? { rows }
          : { rows, error: "QEMU stopped before the workloads finished" },
      );
    });
    child.on("error", (e) => resolve({ rows, error: e.message }));
  });
}

/** Runs every CPU benchmark; returns the rows (errors are recorded in them, not thrown). */
export async function runCpuBench(
  image: ImageInfo | undefined,
  withQemu: boolean,
  log: (line: string) => void,
  engines: readonly ("interp" | "jit")[] = ["interp", "jit"],
): Promise<CpuRow[]> {
  const rows: CpuRow[] = [];
  const kernel = buildKernel();
  if ("error" in kernel) {
    log(`cpu bench: skipping the kernel: ${kernel.error}`);
  } else {
    try {
      for (const engine of engines) {
        rows.push(await inWorker<CpuRow>({ kind: "kernel", elf: kernel.elf, engine }));
      }
      if (withQemu) rows.push(await runKernelQemu(kernel.elf, rows[rows.length - 1].instructions));
    } finally {
      rmSync(kernel.dir, { recursive: true, force: true });
    }
  }
  if (image) {
    const byName = new Map<string, number>();
    for (const engine of engines) {
      const r = await inWorker<{ rows: GuestTiming[]; stats?: TranslatorStats; error?: string }>({
        kind: "guest",
        image,
        engine,
      });
      for (const g of r.rows) {
        rows.push({
          workload: g.name,
          engine,
          seconds: g.seconds,
          instructions: g.instructions,
          mips: g.instructions / g.seconds / 1e6,
          translator: r.stats,
        });
        byName.set(g.name, g.instructions);
      }
      if (r.error)
        rows.push({ workload: "guest workloads", engine, seconds: NaN, instructions: 0, mips: NaN, error: r.error });
    }
    if (withQemu) {
      const q = await guestQemu(image);
      for (const g of q.rows) {
        const n = byName.get(g.name) ?? 0;
        rows.push({ workload: g.name, engine: "qemu", seconds: g.seconds, instructions: n, mips: n / g.seconds / 1e6 });
      }
      if (q.error)
        rows.push({
          workload: "guest workloads",
          engine: "qemu",
          seconds: NaN,
          instructions: 0,
          mips: NaN,
          error: q.error,
        });
    }
  }
  return rows;
}

/** The rows as a table with ratios to QEMU per workload. */
export function formatCpuTable(rows: CpuRow[]): string {
  const lines = ["workload                     engine    time (s)   guest instr   MIPS    vs qemu (time)"];
  for (const r of rows) {
    if (r.error) {
      lines.push(`${r.workload.padEnd(28)} ${r.engine.padEnd(8)} error: ${r.error}`);
      continue;
    }
    const q = rows.find((x) => x.workload === r.workload && x.engine === "qemu" && !x.error);
    const ratio = q ? `${(r.seconds / q.seconds).toFixed(2)}x` : "-";
    lines.push(
      `${r.workload.padEnd(28)} ${r.engine.padEnd(8)} ${r.seconds.toFixed(3).padStart(9)}  ${(r.instructions / 1e6).toFixed(1).padStart(10)} M ${r.mips.toFixed(0).padStart(6)}    ${ratio}`,
    );
  }
  const t = rows.filter((r) => r.translator && r.workload !== "sha256 kernel").pop()?.translator;
  if (t) {
    lines.push(
      `translation cache (last guest run): ${t.translated} blocks, ${(t.sourceBytes / 1e6).toFixed(1)} MB of ${t.backend === "wasm" ? "WebAssembly" : "JavaScript source"}, ~${(t.estimatedBytes / 1e6).toFixed(1)} MB estimated, ${t.flushes} flushes, ${t.invalidations} invalidations`,
    );
  }
  return lines.join("\n");
}

// Worker side.
const job = (await import("node:worker_threads")).workerData?.yunCpuBenchJob as
  { kind: "kernel"; elf: string; engine: Engine } | { kind: "guest"; image: ImageInfo; engine: Engine } | undefined;
if (job && parentPort) {
  if (job.kind === "kernel") parentPort.postMessage(runKernelHere(job.elf, job.engine));
  else parentPort.postMessage(await guestWorker(job));
}

// Standalone: node dist/bench/cpu.js
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1] && !job) {
  const { findImage } = await import("../src/images/store.js");
  const rows = await runCpuBench(findImage("debian-tiny"), !process.argv.includes("--no-qemu"), (l) =>
    process.stderr.write(l + "\n"),
  );
  process.stdout.write(formatCpuTable(rows) + "\n");
  if (process.argv.includes("--json")) process.stdout.write(JSON.stringify(rows, null, 2) + "\n");
}

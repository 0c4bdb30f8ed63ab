/**
 * SMP benchmark: CPU-bound jobs of two processes in a Debian guest with 1 and with 2 vCPUs,
 * Yun (`yun run --cpus N`, a thread per hart) beside QEMU TCG (`-smp N -accel tcg,thread=multi`,
 * MTTCG: a thread per vCPU), on the same kernel, initramfs and root disk. Each job is two copies
 * of one of issue 14's CPU jobs (a busybox shell arithmetic loop; an awk floating-point loop), run
 * in the background and waited for; its time is the guest's (/proc/uptime), which runs with host
 * time. Speed-up = time with 1 vCPU / time with 2. Targets (issue 14): Yun's speed-up ≥ 1.8× and
 * Yun's time with 2 vCPUs ≤ 2× QEMU MTTCG's.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageInfo } from "../src/images/store.js";
import { createQcow2 } from "../src/storage/image.js";
import { MonitorConnection, openConsole } from "../src/vmm/client.js";
import { killLifecycleGuests, socketReady, start, Text } from "./lifecycle.js";
import { qemuVirtArgs } from "./qemu.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));
const PROMPT = /~ # /;
const APPEND = "console=ttyS0 cryptomgr.notests root=/dev/vda";
const SPEEDUP_TARGET = 1.8;
const VS_QEMU_TARGET = 2;

/** Each job runs `work` twice in parallel. Sizes: about 4-7 s for the pair on QEMU with 1 vCPU. */
export const SMP_JOBS: readonly { name: string; work: string }[] = [
  { name: "2 × shell arithmetic loop 60k", work: "i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done" },
  {
    name: "2 × awk float loop 60k",
    work: `awk 'BEGIN { s = 0; for (i = 0; i < 60000; i++) s += 4 * (1 - 2 * (i % 2)) / (2 * i + 1); print s }' > /dev/null`,
  },
];

/** The shell line of job `index`: prints "JOB<index> <uptime before> <uptime after>". */
function jobLine(index: number): string {
  return (
    `w() { ${SMP_JOBS[index].work}; }; ` +
    `read a b < /proc/uptime; w & p=$!; w & q=$!; wait $p $q; read c d < /proc/uptime; ` +
    `echo "JOB${index} $a $c"`
  );
}

export interface SmpResult {
  engine: "yun" | "qemu";
  cpus: number;
  job: string;
  /** The job's time in the guest (s). */
  jobS?: number;
  error?: string;
}

/** Types each job at a shell whose output collects in `out`, one after the other; returns their guest times (s). */
async function runJobs(write: (s: string) => void, out: Text, timeoutS: number): Promise<number[]> {
  const times: number[] = [];
  for (let k = 0; k < SMP_JOBS.length; k++) {
    const from = out.text.length;
    write(jobLine(k) + "\n");
    const m = await out.wait(SMP_JOBS[k].name, new RegExp(`JOB${k} (\\d+\\.\\d+) (\\d+\\.\\d+)`), timeoutS, from);
    times.push(Number(m[2]) - Number(m[1]));
  }
  return times;
}

async function yunJobs(cpus: number, dir: string, timeoutS: number): Promise<number[]> {
  const sock = join(dir, `yun-${cpus}.sock`);
  start(process.execPath, [
    YUN,
    "run",
    "--headless",
    "--cpus",
    String(cpus),
    "--name",
    `bench-smp-${process.pid}-${cpus}`,
    "--api-socket",
    sock,
  ]);
  await socketReady(sock, 60);
  const con = new Text();
  const s = await openConsole(sock, true);
  s.on("data", (b: Buffer) => con.feed(b.toString("latin1")));
  s.resume();
  await con.wait("the shell", PROMPT, timeoutS);
  const t = await runJobs((line) => s.write(line), con, timeoutS);
  s.destroy();
  const api = await MonitorConnection.connect(sock);
  await api.request("stop").catch(() => {});
  api.close();
  return t;
}

async function qemuJobs(
  qemu: string,
  image: ImageInfo,
  cpus: number,
  dir: string,
  timeoutS: number,
): Promise<number[]> {
  const disk = join(dir, `qemu-${cpus}.qcow2`);
  createQcow2(disk, { backing: { path: image.rootDisk, format: "raw" } });
  const drive = ["-drive", `file=${disk},format=qcow2,if=none,id=hd0`, "-device", "virtio-blk-device,drive=hd0"];
  const g = start(qemu, qemuVirtArgs(image, APPEND, [...drive, "-accel", "tcg,thread=multi"], cpus));
  await g.out.wait("the shell", PROMPT, timeoutS);
  const t = await runJobs((line) => g.child.stdin!.write(line), g.out, timeoutS);
  g.child.kill("SIGKILL");
  return t;
}

export async function runSmpBench(opts: {
  image: ImageInfo;
  qemu?: string;
  timeoutS: number;
  log: (line: string) => void;
}): Promise<SmpResult[]> {
  const out: SmpResult[] = [];
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-smp-"));
  try {
    for (const engine of ["yun", "qemu"] as const) {
      if (engine === "qemu" && !opts.qemu) continue;
      for (const cpus of [1, 2]) {
        opts.log(`smp: ${engine}, ${cpus} vCPU${cpus > 1 ? "s" : ""}`);
        try {
          const times =
            engine === "yun"
              ? await yunJobs(cpus, dir, opts.timeoutS)
              : await qemuJobs(opts.qemu!, opts.image, cpus, dir, opts.timeoutS);
          SMP_JOBS.forEach((j, k) => out.push({ engine, cpus, job: j.name, jobS: times[k] }));
        } catch (e) {
          for (const j of SMP_JOBS) out.push({ engine, cpus, job: j.name, error: (e as Error).message });
        } finally {
          killLifecycleGuests();
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

export function formatSmpTable(results: SmpResult[]): string {
  const f = (v: number | undefined): string => (v === undefined ? "–" : v.toFixed(2));
  const lines = [
    `| job | yun 1 vCPU (s) | yun 2 vCPUs (s) | yun speed-up (≥ ${SPEEDUP_TARGET}×) | qemu 1 vCPU (s) | ` +
      `qemu 2 vCPUs (s) | qemu speed-up | yun/qemu, 2 vCPUs (≤ ${VS_QEMU_TARGET}×) |`,
    "|---|---|---|---|---|---|---|---|",
  ];
  const met = (ok: boolean): string => (ok ? "met" : "not met");
  for (const job of SMP_JOBS) {
    const get = (engine: string, cpus: number): number | undefined =>
      results.find((r) => r.engine === engine && r.cpus === cpus && r.job === job.name)?.jobS;
    const y1 = get("yun", 1);
    const y2 = get("yun", 2);
    const q1 = get("qemu", 1);
    const q2 = get("qemu", 2);
    const yunUp = y1 !== undefined && y2 !== undefined && y2 > 0 ? y1 / y2 : undefined;
    const qemuUp = q1 !== undefined && q2 !== undefined && q2 > 0 ? q1 / q2 : undefined;
    const vs = y2 !== undefined && q2 !== undefined && q2 > 0 ? y2 / q2 : undefined;
    lines.push(
      `| ${job.name} | ${f(y1)} | ${f(y2)} | ` +
        `${yunUp === undefined ? "–" : `${yunUp.toFixed(2)}× ${met(yunUp >= SPEEDUP_TARGET)}`} | ${f(q1)} | ${f(q2)} | ` +
        `${qemuUp === undefined ? "–" : `${qemuUp.toFixed(2)}×`} | ` +
        `${vs === undefined ? "–" : `${vs.toFixed(2)}× ${met(vs <= VS_QEMU_TARGET)}`} |`,
    );
  }
  const errors = new Set(
    results.filter((r) => r.error).map((r) => `${r.engine} ${r.cpus} vCPU${r.cpus > 1 ? "s" : ""}: ${r.error}`),
  );
  for (const e of errors) lines.push(`\n${e}`);
  return lines.join("\n") + "\n";
}

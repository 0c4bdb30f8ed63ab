/**
 * SMP benchmark: a CPU-bound job of two processes in a Debian guest with 1 and with 2 vCPUs,
 * Yun (`yun run --cpus N`, a thread per hart) beside QEMU TCG (`-smp N`, MTTCG: a thread per
 * vCPU), on the same kernel, initramfs and root disk. The job is two busybox shell loops of
 * ITERATIONS additions each, run in the background and waited for; its time is the guest's
 * (/proc/uptime), which runs with host time. Speed-up = time with 1 vCPU / time with 2.
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
const ITERATIONS = 150_000;
const JOB =
  `w() { i=0; while [ $i -lt ${ITERATIONS} ]; do i=$((i+1)); done; }; ` +
  `read a b < /proc/uptime; w & p=$!; w & q=$!; wait $p $q; read c d < /proc/uptime; ` +
  `echo "JOB $a $c"`;

export interface SmpResult {
  engine: "yun" | "qemu";
  cpus: number;
  /** The job's time in the guest (s). */
  jobS?: number;
  error?: string;
}

/** Types the job at a shell whose output collects in `out`; resolves with its guest time (s). */
async function runJob(write: (s: string) => void, out: Text, timeoutS: number): Promise<number> {
  const from = out.text.length;
  write(JOB + "\n");
  const m = await out.wait("the job", /JOB (\d+\.\d+) (\d+\.\d+)/, timeoutS, from);
  return Number(m[2]) - Number(m[1]);
}

async function yunJob(cpus: number, dir: string, timeoutS: number): Promise<number> {
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
  const t = await runJob((line) => s.write(line), con, timeoutS);
  s.destroy();
  const api = await MonitorConnection.connect(sock);
  await api.request("stop").catch(() => {});
  api.close();
  return t;
}

async function qemuJob(qemu: string, image: ImageInfo, cpus: number, dir: string, timeoutS: number): Promise<number> {
  const disk = join(dir, `qemu-${cpus}.qcow2`);
  createQcow2(disk, { backing: { path: image.rootDisk, format: "raw" } });
  const drive = ["-drive", `file=${disk},format=qcow2,if=none,id=hd0`, "-device", "virtio-blk-device,drive=hd0"];
  const g = start(qemu, qemuVirtArgs(image, APPEND, drive, cpus));
  await g.out.wait("the shell", PROMPT, timeoutS);
  const t = await runJob((line) => g.child.stdin!.write(line), g.out, timeoutS);
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
          const jobS =
            engine === "yun"
              ? await yunJob(cpus, dir, opts.timeoutS)
              : await qemuJob(opts.qemu!, opts.image, cpus, dir, opts.timeoutS);
          out.push({ engine, cpus, jobS });
        } catch (e) {
          out.push({ engine, cpus, error: (e as Error).message });
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
  const get = (engine: string, cpus: number) => results.find((r) => r.engine === engine && r.cpus === cpus)?.jobS;
  const f = (v: number | undefined) => (v === undefined ? "–" : v.toFixed(2));
  const lines = [
    `| two processes × ${ITERATIONS} shell additions | 1 vCPU (s) | 2 vCPUs (s) | speed-up |`,
    "|---|---|---|---|",
  ];
  for (const engine of ["yun", "qemu"]) {
    const a = get(engine, 1);
    const b = get(engine, 2);
    if (a === undefined && b === undefined) continue;
    const speedup = a !== undefined && b !== undefined && b > 0 ? `${(a / b).toFixed(2)}×` : "–";
    lines.push(`| ${engine === "yun" ? "yun" : "qemu TCG"} | ${f(a)} | ${f(b)} | ${speedup} |`);
  }
  const y2 = get("yun", 2);
  const q2 = get("qemu", 2);
  if (y2 !== undefined && q2 !== undefined) lines.push(`\nyun / qemu with 2 vCPUs: ${(y2 / q2).toFixed(2)}×`);
  for (const r of results) if (r.error) lines.push(`\n${r.engine} ${r.cpus} vCPU: ${r.error}`);
  return lines.join("\n") + "\n";
}

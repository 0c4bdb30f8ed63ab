/**
 * `yun exec` beside qemu-riscv64 (user mode), same programs, same root (Debian riscv64 packages,
 * test/support/riscv-root.ts), same arguments; wall time from spawn to exit, median of `runs`:
 *
 *   busybox true          start-up: Node, the loader, ld.so and libc's initialisation
 *   busybox-static true   start-up without the dynamic loader
 *   sha256sum 16 MiB      CPU-bound: busybox's sha256sum of a file of random bytes
 *   coreutils sort        sort -n of 200 000 numbers
 *   python3 -c            CPython's start-up and a small json script
 *   fork/exec × 200       busybox sh running /bin/true 200 times: fork, execve, wait4 in yun exec's
 *                         kernel (qemu-riscv64's execve runs the host's /bin/true natively, so its
 *                         column is a lower bound, not the same work)
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execTestRoot } from "../test/support/riscv-root.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));

export interface ExecRow {
  name: string;
  yunS: number | null;
  qemuS: number | null;
  error?: string;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function timed(command: string, args: string[], cwd: string): number {
  const t = performance.now();
  const r = spawnSync(command, args, { cwd, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (r.status !== 0)
    throw new Error(`${command} ${args.join(" ")} exited with ${r.status}: ${r.stderr.trim().split("\n").pop()}`);
  return (performance.now() - t) / 1000;
}

export async function runExecBench(options: {
  qemu: string | undefined;
  runs: number;
  log: (s: string) => void;
}): Promise<ExecRow[]> {
  const root = await execTestRoot();
  const work = mkdtempSync(join(tmpdir(), "yun-exec-bench-"));
  try {
    writeFileSync(join(work, "blob"), randomBytes(16 << 20));
    writeFileSync(
      join(work, "numbers"),
      Array.from({ length: 200_000 }, (_, i) => String((i * 7919) % 1_000_003)).join("\n") + "\n",
    );
    const workloads: [string, string, string[]][] = [
      ["busybox true (start-up)", "/usr/bin/busybox", ["true"]],
      ["busybox-static true (start-up)", "/usr/bin/busybox-static", ["true"]],
      ["busybox sha256sum 16 MiB", "/usr/bin/busybox", ["sha256sum", "blob"]],
      ["coreutils sort -n 200 000 lines", "/usr/bin/sort", ["-n", "numbers"]],
      [
        "python3 -c (json, arithmetic)",
        "/usr/bin/python3.13",
        ["-c", "import json; print(json.dumps([i * i for i in range(10000)])[-20:])"],
      ],
      [
        "fork/exec /bin/true × 200 (busybox sh)",
        "/usr/bin/busybox",
        ["sh", "-c", "for i in $(seq 200); do /bin/true; done"],
      ],
    ];
    const rows: ExecRow[] = [];
    for (const [name, program, args] of workloads) {
      options.log(`bench: exec ${name} ...`);
      const row: ExecRow = { name, yunS: null, qemuS: null };
      try {
        const yun: number[] = [];
        const qemu: number[] = [];
        for (let i = 0; i < options.runs; i++) {
          yun.push(timed(process.execPath, [YUN, "exec", "--root", root, program, ...args], work));
          if (options.qemu !== undefined)
            qemu.push(timed(options.qemu, ["-L", root, join(root, program), ...args], work));
        }
        row.yunS = median(yun);
        row.qemuS = qemu.length > 0 ? median(qemu) : null;
      } catch (e) {
        row.error = (e as Error).message;
      }
      rows.push(row);
    }
    return rows;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export function formatExecTable(rows: ExecRow[]): string {
  const lines = ["| workload | Yun (s) | qemu-riscv64 (s) | Yun / QEMU |", "|---|---|---|---|"];
  for (const r of rows) {
    if (r.error !== undefined) {
      lines.push(`| ${r.name} | error: ${r.error} | | |`);
      continue;
    }
    const ratio = r.yunS !== null && r.qemuS !== null ? `${(r.yunS / r.qemuS).toFixed(1)}×` : "";
    lines.push(`| ${r.name} | ${r.yunS?.toFixed(2) ?? ""} | ${r.qemuS?.toFixed(2) ?? ""} | ${ratio} |`);
  }
  return lines.join("\n");
}

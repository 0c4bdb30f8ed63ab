/**
 * Sandboxes (issue 15): an in-process cloud on a temporary YUN_HOME (the images of this one linked
 * in), one debian-tiny template built, then `runs` sandboxes created one after another; each row
 * times, through the SDK as a user would:
 *
 *   create → first run('echo hi')   Sandbox.create until the first command's output is back
 *   pause                           snapshot of memory and disk, monitor stopped
 *   connect (resume)                restore until the agent answers
 *   fork                            snapshot of a running sandbox and a second one restored from it
 *
 * Issue 15's targets: create → first run p50 ≤ 150 ms, p95 ≤ 300 ms; resume ≤ 300 ms; fork ≤ 500 ms.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cloud } from "../src/cloud/cloud.js";
import { MonitorDriver } from "../src/cloud/compute/driver.js";
import { listen } from "../src/cloud/server.js";
import { YunClient } from "../src/cloud/client.js";
import type { Template } from "../src/cloud/types.js";
import { yunHome } from "../src/images/paths.js";
import { Sandbox } from "../src/sdk/index.js";

export interface SandboxBenchRow {
  name: string;
  samplesMs: number[];
  target: string;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

export function formatSandboxTable(rows: SandboxBenchRow[]): string {
  const lines = ["| step | n | p50 (ms) | p95 (ms) | target |", "|---|---|---|---|---|"];
  for (const r of rows)
    lines.push(
      `| ${r.name} | ${r.samplesMs.length} | ${Math.round(percentile(r.samplesMs, 50))} | ${Math.round(percentile(r.samplesMs, 95))} | ${r.target} |`,
    );
  return lines.join("\n") + "\n";
}

/** Kills what the bench's cloud started (monitors carry its YUN_HOME in their environment). */
function killMonitorsOf(home: string): void {
  const mark = Buffer.from(`YUN_HOME=${home}\0`);
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/environ`).includes(mark)) process.kill(Number(pid), "SIGKILL");
    } catch {}
  }
}

export async function runSandboxBench(options: { runs: number; log: (s: string) => void }): Promise<SandboxBenchRow[]> {
  const home = mkdtempSync(join(tmpdir(), "yun-sandbox-bench-"));
  symlinkSync(join(yunHome(), "images"), join(home, "images"));
  const before = process.env.YUN_HOME;
  process.env.YUN_HOME = home;
  const cloud = new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0 });
  try {
    await cloud.bootstrap();
    const server = await listen(cloud, "127.0.0.1", 0, {});
    const url = `http://127.0.0.1:${server.port}`;
    const token = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
    const admin = new YunClient({ server: url, token });
    const conn = { server: url, token };
    try {
      options.log("sandbox: building the template (one debian-tiny boot)");
      await admin.request("POST", "/api/v1/templates", { body: { name: "bench", from: "debian-tiny" } });
      for (;;) {
        const t = await admin.request<Template>("GET", "/api/v1/templates/bench");
        if (t.state === "error") throw new Error(`the template build failed: ${t.error}`);
        if (t.state === "ready") break;
        await new Promise((r) => setTimeout(r, 500));
      }
      const create: number[] = [];
      const pause: number[] = [];
      const resume: number[] = [];
      const fork: number[] = [];
      for (let i = 0; i < options.runs; i++) {
        let t = performance.now();
        const s = await Sandbox.create({ ...conn, template: "bench" });
        const r = await s.commands.run("echo hi");
        if (r.stdout !== "hi\n") throw new Error(`echo hi answered ${JSON.stringify(r.stdout)}`);
        create.push(performance.now() - t);
        t = performance.now();
        await s.pause();
        pause.push(performance.now() - t);
        t = performance.now();
        const again = await Sandbox.connect(s.sandboxId, conn);
        resume.push(performance.now() - t);
        t = performance.now();
        const child = await again.fork();
        fork.push(performance.now() - t);
        await child.kill();
        await again.kill();
        options.log(
          `sandbox ${i + 1}/${options.runs}: create→echo ${Math.round(create[i])} ms, pause ${Math.round(pause[i])}, resume ${Math.round(resume[i])}, fork ${Math.round(fork[i])}`,
        );
      }
      return [
        { name: "create → first run('echo hi')", samplesMs: create, target: "p50 ≤ 150, p95 ≤ 300" },
        { name: "pause (256 MiB guest)", samplesMs: pause, target: "≤ 1 s per GiB touched" },
        { name: "connect (resume)", samplesMs: resume, target: "≤ 300" },
        { name: "fork", samplesMs: fork, target: "≤ 500" },
      ];
    } finally {
      await server.close();
    }
  } finally {
    await cloud.close();
    killMonitorsOf(home);
    rmSync(home, { recursive: true, force: true });
    process.env.YUN_HOME = before;
  }
}

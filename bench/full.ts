/**
 * The full Debian image (`yun image pull debian`) in the benchmark: boot to `systemctl
 * is-system-running --wait` answered, then `apt-get install -y python3` in the guest, on Yun
 * (`yun run --image debian`) and on QEMU TCG with the same kernel, initrd, command line and disk
 * (each on its own qcow2 overlay of the image's disk.img), plus the image's build time and size.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { readManifest, type ImageInfo } from "../src/images/store.js";
import { start } from "./lifecycle.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));
const MEMORY_MIB = 1024;
const ROOT_PROMPT = /root@debian:~# $/m;

export interface FullResult {
  engine: "yun" | "qemu";
  /** Seconds from spawn to the autologin root prompt. */
  shellS?: number;
  /** Seconds from spawn to `systemctl is-system-running --wait` answered, and what it said. */
  runningS?: number;
  state?: string;
  /** Seconds `apt-get install -y python3` took in the guest. */
  aptPython3S?: number;
  error?: string;
}

export interface FullBench {
  results: FullResult[];
  buildSeconds?: number;
  sizeBytes: number;
  packages: number;
}

async function one(engine: "yun" | "qemu", image: ImageInfo, qemu: string | undefined, timeoutS: number, dir: string) {
  const r: FullResult = { engine };
  const overlay = join(dir, `${engine}.qcow2`);
  const made =
    engine === "yun"
      ? spawnSync(process.execPath, [YUN, "disk", "create", "-b", image.rootDisk, "-F", "raw", overlay], {
          encoding: "utf8",
        })
      : spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", image.rootDisk, "-F", "raw", overlay], {
          encoding: "utf8",
        });
  if (made.status !== 0) return { ...r, error: `cannot make the overlay: ${made.stderr || made.error?.message}` };
  const append = `console=ttyS0 root=${image.rootDevice}`;
  const { child, out } =
    engine === "yun"
      ? start(process.execPath, [YUN, "run", "--image", image.name, "--root", overlay, "--memory", String(MEMORY_MIB)])
      : start(qemu!, [
          ...["-M", "virt", "-m", String(MEMORY_MIB), "-smp", "1", "-nographic", "-bios", image.firmware.dynamic],
          ...["-kernel", image.kernel, "-initrd", image.initrd, "-append", append],
          ...["-drive", `file=${overlay},format=qcow2,if=none,id=d`, "-device", "virtio-blk-device,drive=d"],
          ...["-netdev", "user,id=n", "-device", "virtio-net-device,netdev=n"],
        ]);
  const t0 = Date.now();
  const secs = () => (Date.now() - t0) / 1000;
  try {
    await out.wait("the root prompt", ROOT_PROMPT, timeoutS);
    r.shellS = secs();
    let from = out.text.length;
    child.stdin!.write("echo STATE=$(systemctl is-system-running --wait)\n");
    r.state = (await out.wait("systemctl is-system-running", /STATE=(\w+)/, timeoutS, from))[1];
    r.runningS = secs();
    from = out.text.length;
    const a0 = Date.now();
    child.stdin!.write("apt-get install -y -q python3 >/tmp/apt.log 2>&1; echo APT=$?\n");
    const code = (await out.wait("apt-get install python3", /APT=(\d+)/, timeoutS * 2, from))[1];
    if (code !== "0") r.error = `apt-get install python3 exited ${code}`;
    else r.aptPython3S = (Date.now() - a0) / 1000;
  } catch (e) {
    r.error = (e as Error).message.slice(0, 300);
  } finally {
    child.kill("SIGKILL");
  }
  return r;
}

export async function runFullBench(opts: {
  image: ImageInfo;
  qemu: string | undefined;
  timeoutS: number;
  log: (s: string) => void;
}): Promise<FullBench> {
  const m = readManifest(opts.image.dir);
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-full-"));
  const results: FullResult[] = [];
  try {
    for (const engine of ["yun", "qemu"] as const) {
      if (engine === "qemu" && opts.qemu === undefined) continue;
      opts.log(`bench: full image on ${engine} ...`);
      results.push(await one(engine, opts.image, opts.qemu, opts.timeoutS, dir));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    results,
    buildSeconds: m?.build?.seconds,
    sizeBytes: opts.image.sizeBytes,
    packages: opts.image.packages.length,
  };
}

export function formatFullTable(b: FullBench): string {
  const yun = b.results.find((r) => r.engine === "yun");
  const qemu = b.results.find((r) => r.engine === "qemu");
  const rows: [string, keyof FullResult][] = [
    ["boot to the root shell (s)", "shellS"],
    ["boot to systemctl is-system-running answered (s)", "runningS"],
    ["apt-get install -y python3 (s)", "aptPython3S"],
  ];
  const f = (v: unknown) => (typeof v === "number" ? v.toFixed(v < 10 ? 1 : 0) : "–");
  const lines = ["| full Debian image | yun | qemu TCG | yun / qemu |", "|---|---|---|---|"];
  for (const [label, key] of rows) {
    const a = yun?.[key];
    const c = qemu?.[key];
    const ratio = typeof a === "number" && typeof c === "number" && c > 0 ? (a / c).toFixed(2) : "–";
    lines.push(`| ${label} | ${f(a)} | ${f(c)} | ${ratio} |`);
  }
  lines.push(`| systemctl is-system-running | ${yun?.state ?? "–"} | ${qemu?.state ?? "–"} | |`);
  lines.push(
    `\nimage: ${b.packages} packages, ${(b.sizeBytes / 2 ** 20).toFixed(0)} MiB on the host, built in ${b.buildSeconds ?? "–"} s`,
  );
  for (const r of b.results) if (r.error) lines.push(`${r.engine}: ${r.error}`);
  return lines.join("\n") + "\n";
}

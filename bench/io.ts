/**
 * I/O benchmark: para-virtual disk and network throughput measured from inside the guest, Yun
 * beside QEMU TCG on the same kernel, initramfs and root disk.
 *
 *   disk   One boot per engine with four extra virtio-blk disks: a 64 MiB raw and a 64 MiB qcow2
 *          disk full of random data (host-made), and an empty raw and an empty qcow2 target. For
 *          each format the guest reads the data disk sequentially with
 *          `dd if=/dev/vdX of=/dev/null bs=1M iflag=direct`, copies it into tmpfs (untimed), then
 *          writes it to the empty target with `dd ... bs=1M oflag=direct conv=fsync` (for qcow2
 *          every cluster is allocated on the way).
 *   net    Two VMs per engine on one virtual Ethernet (Yun: `yun run --net`, a switch daemon;
 *          QEMU: `-netdev socket` listen/connect), static addresses; one sends 16 MiB of zeroes with
 *          `dd | nc`, the other receives with `nc -l > /dev/null` (busybox nc, as users would).
 *
 * Times are host-side: from the guest printing a marker line before the command to the marker
 * after it, so they include nothing of the boot and little of the console. Yun runs as the `yun
 * run` CLI in child processes (with the default JIT), QEMU as qemu-system-riscv64 -M virt, 256 MiB
 * and one hart each. Both use the image's OpenSBI fw_dynamic.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageInfo } from "../src/images/store.js";
import { convertDisk, createQcow2, createRaw } from "../src/storage/image.js";
import { qemuVirtArgs } from "./qemu.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));
const PROMPT = "~ # ";
const APPEND = "console=ttyS0 cryptomgr.notests root=/dev/vda";
const MIB = 1024 * 1024;

export type IoEngine = "yun" | "qemu";

export interface IoBenchOptions {
  image: ImageInfo;
  /** qemu-system-riscv64 to compare with (undefined: Yun only). */
  qemu?: string;
  engines: IoEngine[];
  /** Size of each disk test (default 64 MiB) and of the network transfer (default 16 MiB). */
  diskMiB?: number;
  netMiB?: number;
  /** Per-boot and per-command limit. */
  timeoutS: number;
  /** Copy the guest consoles to stderr. */
  verbose: boolean;
  log: (line: string) => void;
}

/** One measurement. `mbps` is MiB per second (guest bytes / wall seconds). */
export interface IoResult {
  test: IoTest;
  engine: IoEngine;
  mbps?: number;
  seconds?: number;
  error?: string;
}

export type IoTest = "boot" | "disk-read-raw" | "disk-write-raw" | "disk-read-qcow2" | "disk-write-qcow2" | "net-tcp";

const TEST_NAMES: Record<IoTest, string> = {
  boot: "boot to shell with root disk (s)",
  "disk-read-raw": "disk read, raw (MiB/s)",
  "disk-write-raw": "disk write, raw (MiB/s)",
  "disk-read-qcow2": "disk read, qcow2 (MiB/s)",
  "disk-write-qcow2": "disk write, qcow2 new clusters (MiB/s)",
  "net-tcp": "VM-to-VM TCP, nc (MiB/s)",
};

// ------------------------------------------------------------------------------------------ guests

/** A guest's serial console over a child process's stdio: wait for text, run shell commands. */
class Guest {
  private text = "";
  private waiters: (() => void)[] = [];
  private commands = 0;
  readonly child: ChildProcess;
  private exit: string | null = null;
  private readonly started = performance.now();

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    private readonly timeoutS: number,
    verbose: boolean,
  ) {
    this.child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    const feed = (chunk: Buffer): void => {
      const s = chunk.toString("latin1");
      if (verbose) process.stderr.write(s);
      this.text += s;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    };
    this.child.stdout!.on("data", feed);
    this.child.stderr!.on("data", feed);
    this.child.stdin!.on("error", () => {});
    this.child.on("error", (e) => {
      this.exit = `could not start: ${e.message}`;
      this.waiters.forEach((f) => f());
    });
    this.child.on("exit", (code, signal) => {
      this.exit = `exited (${signal ?? `code ${code}`})`;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  private tail(): string {
    const t = this.text
      .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
      .replace(/\r/g, "")
      .trimEnd();
    return t.split("\n").slice(-6).join("\n    ");
  }

  /** Resolves when `pred(console)` holds; rejects on exit or after the timeout. */
  private waitFor(what: string, pred: (text: string) => boolean, timeoutS = this.timeoutS): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${this.name}: timed out after ${timeoutS} s waiting for ${what}\n    ${this.tail()}`)),
        timeoutS * 1000,
      );
      const check = (): void => {
        if (pred(this.text)) {
          clearTimeout(timer);
          resolve();
        } else if (this.exit !== null) {
          clearTimeout(timer);
          reject(new Error(`${this.name}: ${this.exit} while waiting for ${what}\n    ${this.tail()}`));
        } else this.waiters.push(check);
      };
      check();
    });
  }

  /** Waits for the shell prompt; returns seconds since spawn. */
  async prompt(): Promise<number> {
    await this.waitFor("the shell prompt", (t) => t.includes(PROMPT));
    return (performance.now() - this.started) / 1000;
  }

  /**
   * Runs `command` at the shell; resolves with its output and the seconds between the marker lines
   * the shell prints before and after it.
   */
  async sh(command: string): Promise<{ out: string; seconds: number }> {
    const n = ++this.commands;
    const from = this.text.length;
    const sep = /&\s*$/.test(command) ? " " : "; ";
    this.child.stdin!.write(`echo "<<$((${n}))"; ${command}${sep}echo ">>$((${n}))"\n`);
    const startRe = new RegExp(`^<<${n}\\r?$`, "m");
    const endRe = new RegExp(`^>>${n}\\r?$`, "m");
    let t0 = 0;
    let start = -1;
    await this.waitFor(`the start of: ${command}`, (t) => {
      const m = startRe.exec(t.slice(from));
      if (m) start = from + m.index + m[0].length;
      return m !== null;
    });
    t0 = performance.now();
    let end = -1;
    await this.waitFor(`the end of: ${command}`, (t) => {
      const m = endRe.exec(t.slice(start));
      if (m) end = start + m.index;
      return m !== null;
    });
    const seconds = (performance.now() - t0) / 1000;
    return { out: this.text.slice(start, end).replace(/\r/g, "").replace(/^\n/, ""), seconds };
  }

  /** `poweroff -f`, then waits for the process to end (killed if it does not). */
  async stop(): Promise<void> {
    if (this.exit !== null) return;
    this.child.stdin!.write("poweroff -f\n");
    try {
      await this.waitFor("power-off", () => this.exit !== null, 30);
    } catch {
      this.kill();
    }
  }

  kill(): void {
    if (this.exit === null) this.child.kill("SIGKILL");
  }
}

const live = new Set<Guest>();

function track(g: Guest): Guest {
  live.add(g);
  g.child.on("exit", () => live.delete(g));
  return g;
}

/** Kills every guest this module started (bench/main.ts calls it on exit and on signals). */
export function killIoGuests(): void {
  for (const g of live) g.kill();
  live.clear();
}

function qemuArgs(image: ImageInfo, disks: { path: string; format: "raw" | "qcow2" }[], extra: string[]): string[] {
  const args = qemuVirtArgs(image, APPEND);
  // The first -device is vda (QEMU fills its highest virtio-mmio slot first and lists it first).
  disks.forEach((d, i) => {
    args.push("-drive", `file=${d.path},format=${d.format},if=none,id=hd${i}`);
    args.push("-device", `virtio-blk-device,drive=hd${i}`);
  });
  return [...args, ...extra];
}

/** A throwaway qcow2 overlay on the image's root disk in `dir`. */
function rootOverlay(image: ImageInfo, dir: string, name: string): string {
  const path = join(dir, name);
  createQcow2(path, { backing: { path: image.rootDisk, format: "raw" } });
  return path;
}

// ------------------------------------------------------------------------------------------ disk

function writeRandomFile(path: string, bytes: number): void {
  const fd = openSync(path, "wx");
  try {
    const buf = new Uint8Array(MIB);
    for (let off = 0; off < bytes; off += MIB) {
      randomFillSync(buf);
      writeSync(fd, buf, 0, Math.min(MIB, bytes - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

async function diskBench(engine: IoEngine, opts: IoBenchOptions, dir: string): Promise<IoResult[]> {
  const mib = opts.diskMiB ?? 64;
  const sectors = (m: number) => String((m * MIB) / 512);
  const data = join(dir, "data.raw");
  const dataQ = join(dir, "data.qcow2");
  const out = join(dir, `${engine}-target.raw`);
  const outQ = join(dir, `${engine}-target.qcow2`);
  // Targets a little larger than the data, so the guest can tell the disks apart by size.
  createRaw(out, (mib + 8) * MIB);
  createQcow2(outQ, { size: (mib + 8) * MIB });
  const disks = [
    { path: data, format: "raw" as const },
    { path: out, format: "raw" as const },
    { path: dataQ, format: "qcow2" as const },
    { path: outQ, format: "qcow2" as const },
  ];
  const g = track(
    engine === "yun"
      ? new Guest(
          "yun",
          process.execPath,
          [YUN, "run", "--no-net", ...disks.flatMap((d) => ["--disk", d.path])],
          opts.timeoutS,
          opts.verbose,
        )
      : new Guest(
          "qemu",
          opts.qemu!,
          qemuArgs(
            opts.image,
            [{ path: rootOverlay(opts.image, dir, "qemu-root.qcow2"), format: "qcow2" }, ...disks],
            ["-nic", "none"],
          ),
          opts.timeoutS,
          opts.verbose,
        ),
  );
  const results: IoResult[] = [];
  try {
    const boot = await g.prompt();
    results.push({ test: "boot", engine, seconds: boot });
    const sizes = (await g.sh("cat /sys/block/vd[a-e]/size | tr '\\n' ' '; echo")).out.trim();
    const want = ["2097152", sectors(mib), sectors(mib + 8), sectors(mib), sectors(mib + 8)].join(" ");
    if (sizes !== want) throw new Error(`${engine}: the guest sees disk sizes "${sizes}", expected "${want}"`);
    for (const [format, src, dst] of [
      ["raw", "/dev/vdb", "/dev/vdc"],
      ["qcow2", "/dev/vdd", "/dev/vde"],
    ] as const) {
      const read = await g.sh(`dd if=${src} of=/dev/null bs=1M count=${mib} iflag=direct 2>/dev/null`);
      results.push({ test: `disk-read-${format}`, engine, seconds: read.seconds, mbps: mib / read.seconds });
      await g.sh(`dd if=${src} of=/tmp/buf bs=1M count=${mib} iflag=direct 2>/dev/null`);
      const write = await g.sh(`dd if=/tmp/buf of=${dst} bs=1M count=${mib} oflag=direct conv=fsync 2>/dev/null`);
      results.push({ test: `disk-write-${format}`, engine, seconds: write.seconds, mbps: mib / write.seconds });
      await g.sh("rm -f /tmp/buf");
      opts.log(
        `bench io: ${engine} ${format}: read ${(mib / read.seconds).toFixed(1)} MiB/s, write ${(mib / write.seconds).toFixed(1)} MiB/s`,
      );
    }
    await g.stop();
  } finally {
    g.kill();
  }
  return results;
}

// ------------------------------------------------------------------------------------------ network

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function netBench(engine: IoEngine, opts: IoBenchOptions, dir: string): Promise<IoResult> {
  const mib = opts.netMiB ?? 16;
  let a: Guest;
  let b: Guest;
  if (engine === "yun") {
    const network = `bench${process.pid}`;
    const yun = (name: string) =>
      track(
        new Guest(
          `yun ${name}`,
          process.execPath,
          [YUN, "run", "--net", network, "--name", `bench-${name}`],
          opts.timeoutS,
          opts.verbose,
        ),
      );
    a = yun("a");
    b = yun("b");
  } else {
    const port = await freePort();
    const qemu = (name: string, netdev: string, mac: string) =>
      track(
        new Guest(
          `qemu ${name}`,
          opts.qemu!,
          qemuArgs(
            opts.image,
            [{ path: rootOverlay(opts.image, dir, `qemu-${name}.qcow2`), format: "qcow2" }],
            ["-netdev", `socket,id=n0,${netdev}`, "-device", `virtio-net-device,netdev=n0,mac=${mac}`],
          ),
          opts.timeoutS,
          opts.verbose,
        ),
      );
    a = qemu("a", `listen=127.0.0.1:${port}`, "52:54:00:00:10:0a");
    await new Promise((r) => setTimeout(r, 500)); // the listening side binds first
    b = qemu("b", `connect=127.0.0.1:${port}`, "52:54:00:00:10:0b");
  }
  try {
    await Promise.all([a.prompt(), b.prompt()]);
    await a.sh("ip link set eth0 up; ip addr add 10.9.0.1/24 dev eth0");
    await b.sh("ip link set eth0 up; ip addr add 10.9.0.2/24 dev eth0");
    await a.sh("(nc -l -p 5001 > /dev/null; echo NC-$((6*7))) &");
    const count = (mib * MIB) / 65536;
    const r = await b.sh(`dd if=/dev/zero bs=64k count=${count} 2>/dev/null | nc 10.9.0.1 5001; echo rc=$?`);
    if (!/rc=0/.test(r.out)) throw new Error(`${engine}: nc failed: ${r.out.trim()}`);
    opts.log(`bench io: ${engine} VM-to-VM TCP: ${(mib / r.seconds).toFixed(2)} MiB/s`);
    await Promise.all([a.stop(), b.stop()]);
    return { test: "net-tcp", engine, seconds: r.seconds, mbps: mib / r.seconds };
  } finally {
    a.kill();
    b.kill();
  }
}

// ------------------------------------------------------------------------------------------ entry points

/** Runs the disk and network benchmarks for each engine; failures become rows with `error`. */
export async function runIoBench(opts: IoBenchOptions): Promise<IoResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-io-"));
  const results: IoResult[] = [];
  try {
    const mib = opts.diskMiB ?? 64;
    writeRandomFile(join(dir, "data.raw"), mib * MIB);
    convertDisk(join(dir, "data.raw"), join(dir, "data.qcow2"), "qcow2");
    for (const engine of opts.engines) {
      if (engine === "qemu" && opts.qemu === undefined) continue;
      for (const [what, run] of [
        ["disk", () => diskBench(engine, opts, dir)],
        ["net", async () => [await netBench(engine, opts, dir)]],
      ] as const) {
        opts.log(`bench io: ${engine}: ${what} ...`);
        try {
          results.push(...(await run()));
        } catch (e) {
          const error = (e as Error).message;
          opts.log(`bench io: ${engine}: ${what} FAILED: ${error}`);
          const tests: IoTest[] =
            what === "disk" ? ["disk-read-raw", "disk-write-raw", "disk-read-qcow2", "disk-write-qcow2"] : ["net-tcp"];
          for (const test of tests) results.push({ test, engine, error });
        }
      }
    }
  } finally {
    killIoGuests();
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

/** The results as a table: one row per test, Yun and QEMU side by side, and Yun / QEMU. */
export function formatIoTable(results: IoResult[]): string {
  const header = ["I/O", "yun", "qemu TCG", "yun / qemu"];
  const value = (r: IoResult | undefined): number | undefined =>
    r === undefined || r.error !== undefined ? undefined : r.test === "boot" ? r.seconds : r.mbps;
  const fmt = (v: number | undefined, r: IoResult | undefined): string =>
    r?.error !== undefined ? "failed" : v === undefined ? "-" : v.toFixed(v < 10 ? 2 : 1);
  const body = (Object.keys(TEST_NAMES) as IoTest[])
    .filter((t) => results.some((r) => r.test === t))
    .map((t) => {
      const y = results.find((r) => r.test === t && r.engine === "yun");
      const q = results.find((r) => r.test === t && r.engine === "qemu");
      const yv = value(y);
      const qv = value(q);
      const ratio = yv !== undefined && qv !== undefined ? `${(yv / qv).toFixed(2)}x` : "-";
      return [TEST_NAMES[t], fmt(yv, y), fmt(qv, q), ratio];
    });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join(" | ")
      .trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...body.map(line)].join("\n") + "\n";
}

/**
 * Crash rounds for `yun run`: a guest writes numbered records to a second disk (/dev/vdb), each with
 * O_DIRECT and an fsync (a virtio-blk FLUSH), and prints "durable N" once the fsync returned; the
 * host SIGKILLs the `yun run` process at a random moment of that loop. Then `qemu-img check` must
 * find no corruption, every record the guest reported durable must be on the disk (read by QEMU's
 * qemu-img convert and by Yun's own reader), and every other block must be either untouched or a
 * whole record (no torn or foreign data).
 *
 * The VM boots once; each round restores its snapshot (taken at the shell prompt before the guest
 * touched /dev/vdb) over a fresh copy of the disk, so a round costs a restore, not a boot.
 * Besides the synced records the guest also writes unsynced "noise" blocks through the page cache,
 * so the kernel's writeback keeps the disk busy and the qcow2 caches dirty when the kill lands.
 */
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createQcow2, openDiskImage } from "../src/storage/image.js";
import { Yun, YUN, sleep, tail } from "../test/e2e/harness.js";
import { REAL_IMAGES } from "../test/cloud/helpers.js";
import { Rng } from "../test/support/rng.js";

export type DiskFormat = "qcow2" | "raw";

/** Blocks of the record region and of the noise region (each BLOCK bytes). */
const BLOCK = 4096;
const SLOTS = 8192;
const DISK_BYTES = 2 * SLOTS * BLOCK; // 64 MiB
/** Small qcow2 clusters: an L2 table covers 2 MiB and a refcount block 8 MiB, so records spread
 *  over the disk allocate metadata all the time. */
const CLUSTER = 4096;

export interface VmCrashReport {
  kind: string;
  rounds: number;
  kills: number;
  /** Records the guest reported durable, all found on disk. */
  recordsVerified: number;
  /** qemu-img check outcomes (qcow2): clean, leaks only, corrupt. */
  checks: { clean: number; leaks: number; corrupt: number; leakedClusters: number };
  violations: string[];
  seconds: number;
}

export interface VmCrashOptions {
  /** The disks' formats: one disk each (/dev/vdb, /dev/vdc, ...), round n writes to disk n mod count. */
  formats: DiskFormat[];
  rounds: number;
  seed?: number;
  log?: (line: string) => void;
  /** Where a failing round's disk is kept (default: the scratch directory, then removed). */
  keepDir?: string;
}

/** The guest's writer loop: record i goes to block (a + i*b) mod SLOTS of `dev`. */
function writerScript(dev: string, round: number, a: number, b: number, c: number): string {
  const rec =
    `s=$(( (${a} + i*${b}) % ${SLOTS} )); printf 'yunrec ${round} %d %d\\n' $i $s | ` +
    `dd of=${dev} bs=${BLOCK} seek=$s count=1 oflag=direct conv=notrunc,sync,fsync 2>/dev/null && echo "durable $i"`;
  const noise =
    `n=$(( ${SLOTS} + (${c} + i*${b}) % ${SLOTS} )); printf 'yunnoise ${round} %d %d\\n' $i $n | ` +
    `dd of=${dev} bs=${BLOCK} seek=$n count=1 conv=notrunc,sync 2>/dev/null`;
  return `i=0; while :; do ${rec}; ${noise}; i=$((i+1)); done\n`;
}

/** Whether a block is all zero. */
function zero(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

/** The block's text line if it is exactly "LINE\n" followed by zeros, else null. */
function wholeLine(block: Uint8Array): string | null {
  const nl = block.indexOf(10);
  if (nl < 0 || !zero(block.subarray(nl + 1))) return null;
  return Buffer.from(block.subarray(0, nl)).toString("latin1");
}

function qemuCheck(image: string): { exit: number; corruptions: number; leaks: number; errors: number; text: string } {
  const r = spawnSync("qemu-img", ["check", "--output=json", image], { encoding: "utf8" });
  let j: Record<string, number> = {};
  try {
    j = JSON.parse(r.stdout) as Record<string, number>;
  } catch {}
  return {
    exit: r.status ?? -1,
    corruptions: j["corruptions"] ?? 0,
    leaks: j["leaks"] ?? 0,
    errors: j["check-errors"] ?? 0,
    text: (r.stdout + r.stderr).trim(),
  };
}

/** The disk's guest-visible bytes as QEMU reads them. */
function qemuRead(image: string, format: DiskFormat, scratch: string): Buffer {
  if (format === "raw") return readFileSync(image);
  const out = join(scratch, "read.raw");
  const r = spawnSync("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, out], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`qemu-img convert failed: ${r.stderr.trim()}`);
  const data = readFileSync(out);
  rmSync(out);
  return data;
}

/** A temporary YUN_HOME with the pulled images linked in. */
function tempYunHome(root: string): string {
  const home = join(root, "home");
  mkdirSync(home, { recursive: true });
  if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
  return home;
}

export async function vmCrashRounds(opts: VmCrashOptions): Promise<VmCrashReport> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const rng = new Rng(opts.seed ?? 1);
  const kind = `vm-${opts.formats.join("+")}`;
  const report: VmCrashReport = {
    kind,
    rounds: 0,
    kills: 0,
    recordsVerified: 0,
    checks: { clean: 0, leaks: 0, corrupt: 0, leakedClusters: 0 },
    violations: [],
    seconds: 0,
  };
  const root = mkdtempSync(join(tmpdir(), `yun-crash-${kind}-`));
  const home = tempYunHome(root);
  const env = { ...process.env, YUN_HOME: home };
  const disks = opts.formats.map((format, i) => ({
    format,
    path: join(root, `disk${i}.${format}`),
    pristine: join(root, `pristine${i}.${format}`),
    dev: `/dev/vd${String.fromCharCode(98 + i)}`,
  }));
  const snap = join(root, "snap");
  const name = `crash-${opts.formats.join("-")}`;
  try {
    for (const d of disks) {
      if (d.format === "qcow2") createQcow2(d.path, { size: DISK_BYTES, clusterSize: CLUSTER });
      else {
        writeFileSync(d.path, new Uint8Array(0));
        truncateSync(d.path, DISK_BYTES);
      }
    }
    // Boot once, to the prompt, and snapshot there: /dev/vdb is untouched (only probed), so any
    // fresh copy of the empty disk matches the snapshot's view of it.
    const boot = new Yun(
      ["run", "--name", name, "--memory", "128", ...disks.flatMap((d) => ["--disk", d.path])],
      900_000,
      env,
    );
    try {
      await boot.prompt(840_000); // a loaded host has taken over 280 s
      const s = spawnSync(process.execPath, [YUN, "vm", "snapshot", name, snap], { env, encoding: "utf8" });
      if (s.status !== 0) throw new Error(`yun vm snapshot failed: ${s.stderr.trim()}`);
    } finally {
      boot.kill();
      await boot.exited;
    }
    for (const d of disks) copyFileSync(d.path, d.pristine);
    log(`${kind}: booted and snapshotted in ${((Date.now() - started) / 1000).toFixed(1)} s`);

    for (let round = 1; round <= opts.rounds; round++) {
      const t0 = Date.now();
      for (const d of disks) {
        copyFileSync(d.pristine, d.path);
        rmSync(`${d.path}.yun-lock`, { force: true });
      }
      const { format, path: disk, dev } = disks[(round - 1) % disks.length];
      const a = rng.int(0, SLOTS - 1);
      const b = rng.pick([1, 7, 389, 1021, 2053, 4099]); // odd: i*b mod SLOTS never repeats within SLOTS
      const c = rng.int(0, SLOTS - 1);
      const target = rng.int(0, 12); // kill after this many durable records...
      const extraMs = rng.int(0, 400); // ...plus this long, landing anywhere in a record's write
      const vm = new Yun(["run", "--restore", snap, "--name", name], 600_000, env);
      let console = "";
      try {
        vm.child.stdin.write(writerScript(dev, round, a, b, c));
        await vm.waitFor(`durable ${target}`, (t) => new RegExp(`^durable ${target}\\r?$`, "m").test(t), 480_000); // a loaded host is slow
        await sleep(extraMs);
        if (!vm.running) throw new Error("yun run exited before it was killed");
        vm.child.kill("SIGKILL");
        const exit = await vm.exited;
        if (exit.signal !== "SIGKILL") throw new Error(`yun run ended with ${exit.code ?? exit.signal}, not SIGKILL`);
        report.kills++;
        console = vm.console;
      } catch (e) {
        vm.kill();
        await vm.exited;
        report.violations.push(`${kind} round ${round}: ${(e as Error).message}${tail(vm.console, 600)}`);
        report.rounds++;
        log(`${kind} round ${round} (${format}): FAILED: ${(e as Error).message.split("\n")[0]}`);
        continue;
      }
      const durable = [...console.matchAll(/^durable (\d+)\r?$/gm)].map((m) => Number(m[1]));
      const leakedBefore = report.checks.leakedClusters;
      const corruptBefore = report.checks.corrupt;
      const problems = verifyDisk(format, disk, root, round, durable, a, b, report);
      const leaked = report.checks.leakedClusters - leakedBefore;
      const check =
        format === "raw"
          ? ""
          : report.checks.corrupt > corruptBefore
            ? ", qemu-img check: CORRUPT"
            : leaked > 0
              ? `, qemu-img check: ${leaked} leaked clusters`
              : ", qemu-img check clean";
      report.rounds++;
      if (problems.length > 0) {
        const keep = opts.keepDir ?? root;
        mkdirSync(keep, { recursive: true });
        const kept = join(keep, `${kind}-round${round}.${format}`);
        copyFileSync(disk, kept);
        for (const p of problems) report.violations.push(`${kind} round ${round} (disk kept as ${kept}): ${p}`);
      }
      log(
        `${kind} round ${round} (${format}): killed after ${durable.length} durable records (+${extraMs} ms)${check}, ` +
          `${problems.length === 0 ? "ok" : problems.length + " problem(s)"} in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
      );
    }
  } finally {
    if (report.violations.length === 0 || opts.keepDir) rmSync(root, { recursive: true, force: true });
    report.seconds = (Date.now() - started) / 1000;
  }
  return report;
}

/** Checks one killed round's disk; answers the problems found (and counts into `report`). */
function verifyDisk(
  format: DiskFormat,
  disk: string,
  scratch: string,
  round: number,
  durable: number[],
  a: number,
  b: number,
  report: VmCrashReport,
): string[] {
  const problems: string[] = [];
  if (format === "qcow2") {
    const c = qemuCheck(disk);
    if (c.corruptions > 0 || c.errors > 0 || (c.exit !== 0 && c.exit !== 3)) {
      report.checks.corrupt++;
      problems.push(`qemu-img check: ${c.text}`);
    } else if (c.leaks > 0) {
      report.checks.leaks++;
      report.checks.leakedClusters += c.leaks;
    } else report.checks.clean++;
  }
  let data: Buffer;
  try {
    data = qemuRead(disk, format, scratch);
  } catch (e) {
    return [...problems, (e as Error).message];
  }
  // Yun's own reader must agree with QEMU's on every durable record (it takes over the dead lock).
  let yun: ReturnType<typeof openDiskImage> | null = null;
  try {
    yun = openDiskImage(disk, { format });
  } catch (e) {
    problems.push(`Yun cannot reopen the disk: ${(e as Error).message}`);
  }
  const block = new Uint8Array(BLOCK);
  try {
    const last = durable.length === 0 ? -1 : Math.max(...durable);
    for (let i = 0; i <= last; i++) {
      const s = (a + i * b) % SLOTS;
      const want = `yunrec ${round} ${i} ${s}`;
      const got = wholeLine(data.subarray(s * BLOCK, (s + 1) * BLOCK));
      if (got !== want) {
        problems.push(
          `durable record ${i} (block ${s}) is missing: found ${zero(data.subarray(s * BLOCK, (s + 1) * BLOCK)) ? "zeros" : JSON.stringify(got?.slice(0, 60) ?? "other bytes")}`,
        );
        continue;
      }
      if (yun) {
        yun.read(s * BLOCK, block);
        if (wholeLine(block) !== want) problems.push(`Yun's reader does not see durable record ${i} (block ${s})`);
      }
      report.recordsVerified++;
    }
    // Everything else: untouched, or a whole record / noise block of this round in its own place.
    for (let s = 0; s < 2 * SLOTS; s++) {
      const blk = data.subarray(s * BLOCK, (s + 1) * BLOCK);
      if (zero(blk)) continue;
      const line = wholeLine(blk);
      const m = line === null ? null : /^yun(rec|noise) (\d+) (\d+) (\d+)$/.exec(line);
      const ok =
        m !== null &&
        Number(m[2]) === round &&
        Number(m[4]) === s &&
        (m[1] === "rec" ? s < SLOTS && Number(m[3]) <= last + 1 : s >= SLOTS);
      if (!ok)
        problems.push(
          `block ${s} holds neither zeros nor a whole record: ${JSON.stringify(blk.subarray(0, 48).toString("latin1"))}`,
        );
      if (problems.length > 20) break;
    }
  } finally {
    yun?.close();
  }
  return problems;
}

/**
 * Building an ext4 file system image from a directory with e2fsprogs, as a normal user: `mke2fs -d`
 * copies the tree into a new image file (no loop mount, no root), then `debugfs -w` gives every inode
 * to root (mke2fs copies the owner of each source file, and `-E root_owner` only covers the root
 * directory), and `e2fsck -fn` checks the result.
 */
import { lstatSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { findInPath, ImageError, run, type RunResult } from "./util.js";

/** Finds an e2fsprogs tool in $PATH or in the sbin directories a normal user's PATH may lack. */
export function findE2fsTool(name: "mke2fs" | "debugfs" | "e2fsck"): string | undefined {
  return findInPath(name) ?? findInPath(name, "/usr/sbin:/sbin");
}

/** Throws a clear ImageError if mke2fs, debugfs or e2fsck is missing. */
export function requireE2fsTools(): void {
  for (const t of ["mke2fs", "debugfs", "e2fsck"] as const) {
    if (findE2fsTool(t) === undefined) {
      throw new ImageError(`yun image pull needs ${t} to build the root disk; install e2fsprogs`);
    }
  }
}

async function e2fs(tool: "mke2fs" | "debugfs" | "e2fsck", args: string[]): Promise<RunResult> {
  const path = findE2fsTool(tool);
  if (path === undefined)
    throw new ImageError(`yun image pull needs ${tool} to build the root disk; install e2fsprogs`);
  return run(path, args, { env: { ...process.env, LC_ALL: "C" } });
}

/** Paths (relative to `root`, "/"-separated, "" for the root itself) of entries not owned by uid 0 / gid 0. */
export function entriesNotOwnedByRoot(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const st = lstatSync(rel === "" ? root : join(root, rel));
    if (st.uid !== 0 || st.gid !== 0) out.push(rel);
    if (!st.isDirectory()) return;
    for (const name of readdirSync(rel === "" ? root : join(root, rel)).sort())
      walk(rel === "" ? name : `${rel}/${name}`);
  };
  walk("");
  return out;
}

/** debugfs commands that make the inodes at `paths` (relative to the file system root) owned by root. */
export function chownScript(paths: string[]): string {
  const lines: string[] = [];
  for (const p of paths) {
    if (/["\n\\]/.test(p))
      throw new ImageError(
        `cannot give ${JSON.stringify(p)} to root in the root disk: the name has a quote, backslash or newline`,
      );
    const abs = `"/${p}"`;
    lines.push(`sif ${abs} uid 0`, `sif ${abs} gid 0`);
  }
  return lines.join("\n") + (lines.length > 0 ? "\n" : "");
}

export interface Ext4Options {
  /** Directory whose contents become the file system. */
  source: string;
  /** Image file to create (replaced if it exists). */
  dest: string;
  /** File system size in bytes (the image file is sparse). */
  sizeBytes: number;
  label: string;
}

export interface Ext4Result {
  /** Inodes whose owner was changed to root after mke2fs. */
  ownersFixed: number;
}

/** The first meaningful line of a tool's output, for error messages. */
function reason(r: RunResult): string {
  const lines = `${r.stderr}\n${r.stdout}`.split("\n").map((l) => l.trim());
  return lines.find((l) => l !== "" && !/^(mke2fs|debugfs|e2fsck) \d/.test(l)) ?? `exit status ${r.code}`;
}

/** Creates the ext4 image `dest` holding the tree `source`, every file owned by root. */
export async function buildExt4(o: Ext4Options): Promise<Ext4Result> {
  if (o.sizeBytes % 4096 !== 0 || o.sizeBytes < 16 << 20)
    throw new ImageError(`root disk size ${o.sizeBytes} must be a multiple of 4 KiB and at least 16 MiB`);
  const mke2fs = (extended: string): Promise<RunResult> => {
    rmSync(o.dest, { force: true });
    return e2fs("mke2fs", [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      "4096",
      "-L",
      o.label,
      "-E",
      extended,
      "-d",
      o.source,
      o.dest,
      `${o.sizeBytes / 1024}k`,
    ]);
  };
  // The new file reads as zeros, so mke2fs need not write the inode tables and journal (they stay
  // holes) and can mark them zeroed, sparing the guest the kernel's lazy inode-table initialisation.
  // e2fsprogs before 1.47 lacks the option: there the inode tables are written out instead.
  let mk = await mke2fs("root_owner=0:0,assume_storage_prezeroed=1");
  if (mk.code !== 0 && /assume_storage_prezeroed|Bad option/i.test(`${mk.stderr}${mk.stdout}`)) {
    mk = await mke2fs("root_owner=0:0,lazy_itable_init=0");
  }
  if (mk.code !== 0) {
    rmSync(o.dest, { force: true });
    throw new ImageError(`mke2fs could not build ${o.dest}: ${reason(mk)}`);
  }

  const notRoot = entriesNotOwnedByRoot(o.source);
  if (notRoot.length > 0) {
    const script = `${o.dest}.debugfs`;
    writeFileSync(script, chownScript(notRoot));
    try {
      const r = await e2fs("debugfs", ["-w", "-f", script, o.dest]);
      // debugfs exits 0 even when a command fails; the failures are on stderr, after its banner.
      const errors = r.stderr.split("\n").filter((l) => l.trim() !== "" && !/^debugfs \d/.test(l));
      if (r.code !== 0 || errors.length > 0) {
        throw new ImageError(`debugfs could not give the files of ${o.dest} to root: ${errors[0] ?? reason(r)}`);
      }
    } finally {
      rmSync(script, { force: true });
    }
  }
  await checkExt4(o.dest);
  return { ownersFixed: notRoot.length };
}

/** Runs `e2fsck -fn`; throws an ImageError with e2fsck's first complaint unless the file system is clean. */
export async function checkExt4(path: string): Promise<void> {
  const r = await e2fs("e2fsck", ["-f", "-n", path]);
  if (r.code !== 0) {
    const complaint = r.stdout
      .split("\n")
      .map((l) => l.trim())
      .find((l) => l !== "" && !/^(Pass \d|e2fsck \d|.*: \d+\/\d+ files)/.test(l));
    throw new ImageError(`${path} is not a clean ext4 file system (e2fsck: ${complaint ?? reason(r)})`);
  }
}

/** Runs one debugfs request (`-R`) read-only and returns its output; throws an ImageError on failure. */
export async function debugfs(path: string, request: string): Promise<string> {
  const r = await e2fs("debugfs", ["-R", request, path]);
  if (r.code !== 0) throw new ImageError(`debugfs ${request} on ${path} failed: ${reason(r)}`);
  return r.stdout;
}

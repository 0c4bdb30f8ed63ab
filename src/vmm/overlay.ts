/**
 * Throwaway overlays: a VM booted from an image (or restored from a snapshot) writes to a fresh
 * qcow2 overlay in a directory of its own under the run directory, named after its process id so
 * that the directories of processes that died (killed, crashed) can be found and removed.
 */
import { mkdtempSync, readdirSync, renameSync, rmSync } from "node:fs";
import { makePrivateDir } from "../storage/private.js";
import { basename, join } from "node:path";
import { createQcow2, openDiskImage, type DiskFormat } from "../storage/image.js";
import { processAlive } from "./registry.js";

/** Removes overlay directories left by processes that no longer exist. */
export function removeStaleRunDirs(runDir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(runDir);
  } catch {
    return;
  }
  for (const e of entries) {
    const m = /^(\d+)-/.exec(e);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    if (!processAlive(pid)) rmSync(join(runDir, e), { recursive: true, force: true });
  }
}

/** A directory of this process's own under `runDir`. */
export function makeOwnedDir(runDir: string): string {
  makePrivateDir(runDir);
  removeStaleRunDirs(runDir);
  return mkdtempSync(join(runDir, `${process.pid}-`));
}

/**
 * Creates `dir`/`name` as a qcow2 overlay on `base` (checked as a disk first: a bad base is
 * reported as itself, with nothing created). Returns the overlay's path.
 */
export function createOverlay(dir: string, name: string, base: string, baseFormat: DiskFormat): string {
  openDiskImage(base, { readOnly: true, format: baseFormat, lock: false }).close();
  const path = join(dir, name);
  createQcow2(path, { backing: { path: base, format: baseFormat } });
  return path;
}

/** Takes over another process's overlay directory (live migration): renames it as this process's own. */
export function adoptOwnedDir(runDir: string, dir: string): string {
  const suffix = basename(dir).replace(/^\d+-/, "");
  const mine = join(runDir, `${process.pid}-${suffix}`);
  renameSync(dir, mine);
  return mine;
}

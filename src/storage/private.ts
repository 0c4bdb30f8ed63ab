/**
 * Private files: what Yun keeps for its user (disks, the cloud's database, guest RAM in snapshots,
 * logs, tokens) is readable by that user alone. New files are created 0600 in 0700 directories
 * (the `yun` command also sets umask 077, for what other code creates), and trees made by older
 * versions, when the umask let files be 0644 in 0755 directories, are tightened at start.
 */
import { chmodSync, lstatSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;
/** The umask under which everything created is private. */
export const PRIVATE_UMASK = 0o077;

/** Creates `dir` (and missing parents) owner-only; an existing `dir` is made owner-only too. */
export function makePrivateDir(dir: string): string {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  chmodSync(dir, PRIVATE_DIR_MODE);
  return dir;
}

/**
 * Takes the group's and others' permissions off every file and directory under `root` (and
 * `root` itself); symbolic links are not followed. Answers how many entries changed. Entries that
 * vanish meanwhile (a VM exiting) are skipped.
 */
export function tightenTree(root: string): number {
  let changed = 0;
  const visit = (path: string): void => {
    let st;
    try {
      st = lstatSync(path);
    } catch {
      return;
    }
    if (st.isSymbolicLink()) return;
    if ((st.mode & 0o077) !== 0) {
      try {
        chmodSync(path, st.mode & 0o7700);
        changed++;
      } catch {
        // Not ours (another user's file in a shared directory): left as it is.
      }
    }
    if (!st.isDirectory()) return;
    let names: string[];
    try {
      names = readdirSync(path);
    } catch {
      return;
    }
    for (const name of names) visit(join(path, name));
  };
  visit(root);
  return changed;
}

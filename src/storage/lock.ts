/**
 * An advisory lock that stops two Yun processes from opening one image read-write: a file
 * `<image>.yun-lock` created exclusively, holding the owner's pid. A lock whose pid no longer runs
 * (the owner was killed) is stale and taken over. Where the lock file cannot be created (a
 * read-only directory) the image opens unlocked.
 */
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { DiskImageError } from "./layer.js";

export function lockPathFor(imagePath: string): string {
  return `${imagePath}.yun-lock`;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Takes the lock for `imagePath`; returns the function that releases it. */
export function acquireImageLock(imagePath: string): () => void {
  const lockPath = lockPathFor(imagePath);
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(lockPath, "wx");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "EEXIST") return () => {};
      let pid = NaN;
      try {
        pid = Number.parseInt(readFileSync(lockPath, "utf8"), 10);
      } catch {
        continue; // removed meanwhile
      }
      if (Number.isInteger(pid) && pid > 0 && running(pid)) {
        const who = pid === process.pid ? "this process" : `Yun process ${pid}`;
        throw new DiskImageError(
          `${imagePath} is already open for writing by ${who} (lock file ${lockPath}); ` +
            `open it read-only, or remove the lock file if that process is not using it`,
        );
      }
      try {
        unlinkSync(lockPath); // stale: its owner is gone
      } catch {}
      continue;
    }
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    return () => {
      try {
        if (Number.parseInt(readFileSync(lockPath, "utf8"), 10) === process.pid) unlinkSync(lockPath);
      } catch {}
    };
  }
  throw new DiskImageError(`${imagePath}: cannot take the lock file ${lockPath}`);
}

/**
 * Small shared helpers for the image builder: a user-facing error type, running host tools,
 * hashing and human-readable sizes.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  closeSync,
  constants,
  createReadStream,
  ftruncateSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { delimiter, join } from "node:path";

/** An error meant for the user: its message is one clear sentence, printed without a stack trace. */
export class ImageError extends Error {
  override name = "ImageError";
}

/** Full path of an executable found in $PATH, or undefined. */
export function findInPath(command: string, path = process.env.PATH ?? ""): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Called with each complete line of stdout or stderr as it arrives. */
  onLine?: (line: string) => void;
}

/** Runs a command to completion, collecting its output. Rejects only if it cannot be started. */
export function run(command: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const partial = { out: "", err: "" };
    const feed = (key: "out" | "err", chunk: Buffer): void => {
      if (options.onLine === undefined) return;
      const text = partial[key] + chunk.toString("utf8");
      const lines = text.split(/\r?\n|\r/);
      partial[key] = lines.pop() ?? "";
      for (const line of lines) if (line !== "") options.onLine(line);
    };
    child.stdout.on("data", (c: Buffer) => {
      out.push(c);
      feed("out", c);
    });
    child.stderr.on("data", (c: Buffer) => {
      err.push(c);
      feed("err", c);
    });
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (options.onLine !== undefined) {
        if (partial.out !== "") options.onLine(partial.out);
        if (partial.err !== "") options.onLine(partial.err);
      }
      resolvePromise({
        code: code ?? (signal !== null ? 128 : 1),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

/** Runs a command synchronously and returns its stdout as bytes; throws an ImageError on failure. */
export function runBytes(command: string, args: string[], what: string): Buffer {
  const r = spawnSync(command, args, { maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "pipe"] });
  if (r.error !== undefined) throw new ImageError(`${what}: could not run ${command} (${r.error.message})`);
  if (r.status !== 0) {
    const msg = r.stderr.toString("utf8").trim().split("\n")[0] ?? "";
    throw new ImageError(`${what}: ${command} failed${msg !== "" ? `: ${msg}` : ""}`);
  }
  return r.stdout;
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** SHA-256 of a file, streamed. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const hash = createHash("sha256");
    const stream = createReadStream(path, { highWaterMark: 1 << 20 });
    stream.on("data", (c) => hash.update(c));
    stream.on("error", reject);
    stream.on("end", () => resolvePromise(hash.digest("hex")));
  });
}

/** 1234567 -> "1.2 MB" (decimal units, like apt). */
export function formatSize(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = bytes;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Milliseconds -> "1.8 s" / "420 ms". */
export function formatDuration(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Copies `src` to `dest` keeping it sparse: 64 KiB blocks of zeros become holes, so copying a 1 GiB
 * root disk with 50 MB of data writes 50 MB. The copy is written beside `dest` and renamed into place.
 * Returns the bytes written.
 */
export function copySparseFile(src: string, dest: string): number {
  const block = 64 * 1024;
  const buf = Buffer.alloc(block);
  const zero = Buffer.alloc(block);
  const tmp = `${dest}.partial-${process.pid}`;
  const size = statSync(src).size;
  const inFd = openSync(src, "r");
  let outFd: number | undefined;
  let written = 0;
  try {
    outFd = openSync(tmp, "w", 0o644);
    for (let pos = 0; pos < size;) {
      const n = readSync(inFd, buf, 0, block, pos);
      if (n <= 0) break;
      if (!buf.subarray(0, n).equals(zero.subarray(0, n))) {
        let off = 0;
        while (off < n) off += writeSync(outFd, buf, off, n - off, pos + off);
        written += n;
      }
      pos += n;
    }
    ftruncateSync(outFd, size);
    closeSync(outFd);
    outFd = undefined;
    renameSync(tmp, dest);
  } catch (e) {
    if (outFd !== undefined) closeSync(outFd);
    rmSync(tmp, { force: true });
    throw e;
  } finally {
    closeSync(inFd);
  }
  return written;
}

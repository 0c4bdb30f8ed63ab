/**
 * A monitor's log with a cap: a guest can make its monitor log without end (a driver that breaks
 * the virtio rules and resets the device in a loop, a reboot loop), so the log keeps the newest
 * bytes only. When a write would take PATH past the cap, PATH's content moves to PATH.1 (replacing
 * the one before) and PATH starts again empty: at most twice the cap is kept, the newest last.
 */
import { closeSync, fstatSync, ftruncateSync, openSync, readSync, renameSync, writeFileSync, writeSync } from "node:fs";
import { PRIVATE_FILE_MODE } from "../storage/private.js";

/** Bytes a monitor log holds before it rotates (PATH and PATH.1 together hold at most twice this). */
export const LOG_MAX_BYTES = 2 * 1024 * 1024;

export class CappedLog {
  private fd: number;

  /** Opens (appends to) `path`, owner-only. Other writers may share it if they append too. */
  constructor(
    readonly path: string,
    readonly maxBytes = LOG_MAX_BYTES,
  ) {
    this.fd = openSync(path, "a+", PRIVATE_FILE_MODE);
  }

  write(data: string | Uint8Array): void {
    let bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    if (bytes.length > this.maxBytes) bytes = bytes.subarray(bytes.length - this.maxBytes);
    // The file's size, not a count of our own writes: the process's inherited stderr (Node's
    // fatal errors) may append to the same file.
    const size = fstatSync(this.fd).size;
    if (size > 0 && size + bytes.length > this.maxBytes) this.rotate(size);
    for (let off = 0; off < bytes.length;) off += writeSync(this.fd, bytes, off, bytes.length - off);
  }

  /** PATH's content to PATH.1 (through a temporary name), then PATH truncated (appends restart at 0). */
  private rotate(size: number): void {
    const kept = Buffer.alloc(size);
    let got = 0;
    while (got < size) {
      const n = readSync(this.fd, kept, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
    const tmp = `${this.path}.1.tmp`;
    writeFileSync(tmp, kept.subarray(0, got), { mode: PRIVATE_FILE_MODE });
    renameSync(tmp, `${this.path}.1`);
    ftruncateSync(this.fd, 0);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Sends this process's standard error (yun's messages; the guest's console is on stdout) to `log`. */
export function redirectStderr(log: CappedLog): void {
  process.stderr.write = ((chunk: string | Uint8Array, encoding?: unknown, done?: unknown): boolean => {
    log.write(
      typeof chunk === "string" && typeof encoding === "string"
        ? Buffer.from(chunk, encoding as BufferEncoding)
        : chunk,
    );
    const callback = typeof encoding === "function" ? encoding : done;
    if (typeof callback === "function") process.nextTick(callback as () => void);
    return true;
  }) as typeof process.stderr.write;
}

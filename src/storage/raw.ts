/**
 * Raw disk images: the file is the disk, byte for byte.
 *
 * The virtual size is the file size rounded up to 512 (bytes past the end of the file read as
 * zeroes, as QEMU does). `flush` is fdatasync; `discard` is a no-op (the contract allows the old
 * contents to stay); `writeZeroes` writes zeroes from a shared 1 MiB buffer.
 */
import { closeSync, fdatasyncSync, fstatSync, ftruncateSync, openSync } from "node:fs";
import { BlockIoError } from "../devices/block.js";
import { DiskImageError, preadFull, pwriteFull, zeroBuffer, type DiskImage } from "./layer.js";

export class RawImage implements DiskImage {
  readonly format = "raw" as const;
  readonly readOnly: boolean;
  readonly serial: string;
  readonly path: string;
  private fd: number;
  private fileSize: number;
  private virtualSize: number;
  /** Run once by close() after the file is closed (releases an advisory lock). */
  onClose: (() => void) | null = null;

  /** Opens `path`; with `fd` given, adopts that descriptor (opened with the matching mode). */
  constructor(path: string, opts: { readOnly?: boolean; serial?: string; fd?: number } = {}) {
    this.path = path;
    this.readOnly = opts.readOnly ?? false;
    this.serial = opts.serial ?? "";
    if (opts.fd !== undefined) this.fd = opts.fd;
    else {
      try {
        this.fd = openSync(path, this.readOnly ? "r" : "r+");
      } catch (e) {
        throw new DiskImageError(`cannot open ${path}: ${(e as Error).message}`);
      }
    }
    const st = fstatSync(this.fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      closeSync(this.fd);
      throw new DiskImageError(`${path} is not a regular file`);
    }
    this.fileSize = st.size;
    this.virtualSize = Math.ceil(st.size / 512) * 512;
  }

  get size(): number {
    return this.virtualSize;
  }

  read(offset: number, buf: Uint8Array): void {
    this.readAt(offset, buf, 0, buf.length);
  }

  readAt(offset: number, buf: Uint8Array, bufOff: number, len: number): void {
    const inFile = Math.max(0, Math.min(len, this.fileSize - offset));
    const got = inFile > 0 ? preadFull(this.fd, buf, bufOff, inFile, offset, this.path) : 0;
    if (got < len) buf.fill(0, bufOff + got, bufOff + len);
  }

  knownZero(offset: number, _len: number): boolean {
    return offset >= this.fileSize;
  }

  write(offset: number, data: Uint8Array): void {
    this.checkWritable();
    pwriteFull(this.fd, data, 0, data.length, offset, this.path);
    if (offset + data.length > this.fileSize) this.fileSize = offset + data.length;
  }

  flush(): void {
    if (this.readOnly) return;
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      throw new BlockIoError(`flush of ${this.path} failed: ${(e as Error).message}`);
    }
  }

  discard(_offset: number, _length: number): void {
    this.checkWritable();
  }

  writeZeroes(offset: number, length: number, _unmap: boolean): void {
    this.checkWritable();
    // Past the end of the file everything already reads as zero.
    const end = Math.min(offset + length, this.fileSize);
    const zero = zeroBuffer();
    for (let pos = offset; pos < end; pos += zero.length) {
      pwriteFull(this.fd, zero, 0, Math.min(zero.length, end - pos), pos, this.path);
    }
  }

  /** Grows the disk to `newSize` bytes (a sparse extension of the file). */
  resize(newSize: number): void {
    this.checkWritable();
    if (newSize < this.virtualSize) {
      throw new DiskImageError(`${this.path}: shrinking a disk is not supported (it would drop data)`);
    }
    ftruncateSync(this.fd, newSize);
    this.fileSize = newSize;
    this.virtualSize = newSize;
  }

  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
    const done = this.onClose;
    this.onClose = null;
    done?.();
  }

  private checkWritable(): void {
    if (this.readOnly) throw new BlockIoError(`${this.path} is open read-only`);
    if (this.fd < 0) throw new BlockIoError(`${this.path} is closed`);
  }
}

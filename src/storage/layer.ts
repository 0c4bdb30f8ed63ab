/**
 * What the storage backends share: the error users see for a bad image, the read interface one
 * layer of a backing chain offers to the layer above it, and small I/O helpers.
 */
import { readSync, writeSync } from "node:fs";
import type { BlockBackend } from "../devices/block.js";
import { BlockIoError } from "../devices/block.js";

/** An image cannot be opened, created or changed; the message names the file and the problem. */
export class DiskImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DiskImageError";
  }
}

export type DiskFormat = "raw" | "qcow2";

/** One image of a backing chain, as seen by the image above it. */
export interface ImageLayer {
  readonly format: DiskFormat;
  /** The file this layer reads (as it was opened: absolute for backing files). */
  readonly path: string;
  readonly size: number;
  /** Copies `len` bytes at `offset` into `buf[bufOff..]`; bytes beyond `size` read as zeroes.
   *  Any byte granularity (backing reads are cluster-sized, not sector-sized). */
  readAt(offset: number, buf: Uint8Array, bufOff: number, len: number): void;
  /** True when the range certainly reads as zeroes without reading data (unallocated, zero
   *  clusters, past the end); false when it may hold data. Lets convert skip empty space. */
  knownZero(offset: number, len: number): boolean;
  close(): void;
}

/** A disk image opened by Yun: a block backend that can also serve as a backing layer. */
export type DiskImage = BlockBackend & ImageLayer;

let zeroes: Uint8Array | null = null;
/** A shared all-zero buffer of 1 MiB (never written). */
export function zeroBuffer(): Uint8Array {
  zeroes ??= new Uint8Array(1 << 20);
  return zeroes;
}

/** Reads up to `len` bytes at `pos`; returns how many were read before end of file. */
export function preadFull(fd: number, buf: Uint8Array, off: number, len: number, pos: number, path: string): number {
  let done = 0;
  while (done < len) {
    let n: number;
    try {
      n = readSync(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new BlockIoError(`read of ${path} at offset ${pos + done} failed: ${(e as Error).message}`);
    }
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Writes `len` bytes at `pos`, all of them. */
export function pwriteFull(fd: number, buf: Uint8Array, off: number, len: number, pos: number, path: string): void {
  let done = 0;
  while (done < len) {
    try {
      done += writeSync(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new BlockIoError(`write to ${path} at offset ${pos + done} failed: ${(e as Error).message}`);
    }
  }
}

/** True if `len` bytes of `buf` at `off` are all zero. */
export function isZero(buf: Uint8Array, off: number, len: number): boolean {
  let i = off;
  const end = off + len;
  // Four bytes at a time when the start is aligned.
  if ((buf.byteOffset + i) % 4 === 0) {
    const words = new Uint32Array(buf.buffer, buf.byteOffset + i, (end - i) >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i += words.length * 4;
  }
  for (; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Disk images as the rest of Yun sees them: open one (with its backing chain) as a BlockBackend,
 * create, inspect, convert and resize.
 *
 * Opening validates everything read-only first (header, feature bits, tables against the file
 * size, every backing file) and only then reopens the top image read-write, so a bad image or a
 * broken chain is reported before any byte of any file changes.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, fstatSync, ftruncateSync, openSync, realpathSync, unlinkSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { preadFull, DiskImageError, isZero, type DiskFormat, type DiskImage, type ImageLayer } from "./layer.js";
import { RawImage } from "./raw.js";
import {
  Qcow2Image,
  QCOW2_MAGIC,
  inspectQcow2,
  parseQcow2Header,
  writeEmptyQcow2,
  incompatibleFeatureNames,
  type Qcow2Meta,
  type Qcow2Header,
} from "./qcow2.js";
import { acquireImageLock } from "./lock.js";
import { PRIVATE_FILE_MODE } from "./private.js";

export { DiskImageError } from "./layer.js";
export type { DiskFormat, DiskImage } from "./layer.js";

/** Backing chains deeper than this are refused (QEMU has no limit; a loop is far likelier). */
export const MAX_BACKING_DEPTH = 16;

export interface OpenDiskOptions {
  readOnly?: boolean;
  /** The top image's format; probed from its first bytes when absent. */
  format?: DiskFormat;
  /** virtio-blk serial (at most 20 bytes); default: derived from the image's real path. */
  serial?: string;
  /** Take the advisory lock when opening read-write (default true). */
  lock?: boolean;
  /** qcow2 L2 table cache size in bytes (default 16 MiB). */
  l2CacheBytes?: number;
}

interface Link {
  path: string;
  format: DiskFormat;
  fd: number;
  meta: Qcow2Meta | null;
}

function openFd(path: string, flags: string, what: string): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new DiskImageError(`${what} does not exist`);
    if (code === "EACCES" || code === "EPERM") throw new DiskImageError(`${what}: permission denied`);
    if (code === "EISDIR") throw new DiskImageError(`${what} is a directory, not a disk image`);
    throw new DiskImageError(`cannot open ${what}: ${(e as Error).message}`);
  }
}

/** "qcow2" if the file starts with the qcow magic, else "raw". */
function probe(path: string, fd: number): DiskFormat {
  const magic = new Uint8Array(4);
  if (preadFull(fd, magic, 0, 4, 0, path) < 4) return "raw";
  return new DataView(magic.buffer).getUint32(0) === QCOW2_MAGIC ? "qcow2" : "raw";
}

/** Where a qcow2 image's backing file is, and in which format (null: probe). */
function backingOf(
  imagePath: string,
  backingFile: string,
  backingFormat: string | null,
): { path: string; format: DiskFormat | null } {
  if (backingFile.startsWith("json:")) {
    throw new DiskImageError(
      `${imagePath} names its backing file with a QEMU json: description, which Yun does not support`,
    );
  }
  const path = isAbsolute(backingFile) ? backingFile : join(dirname(imagePath), backingFile);
  if (backingFormat !== null && backingFormat !== "raw" && backingFormat !== "qcow2") {
    throw new DiskImageError(
      `the backing file ${path} of ${imagePath} is in ${backingFormat} format; Yun reads raw and qcow2`,
    );
  }
  return { path, format: backingFormat as DiskFormat | null };
}

/** Opens and validates the whole chain read-only, top first. Closes what it opened on error. */
function openChain(path: string, format: DiskFormat | undefined, forWrite: boolean): Link[] {
  const links: Link[] = [];
  const seen = new Map<string, string>();
  try {
    let cur: { path: string; format: DiskFormat | null; child: string | null } = {
      path,
      format: format ?? null,
      child: null,
    };
    for (;;) {
      if (links.length > MAX_BACKING_DEPTH) {
        throw new DiskImageError(`the backing chain of ${path} is more than ${MAX_BACKING_DEPTH} images deep`);
      }
      const what = cur.child === null ? cur.path : `the backing file ${cur.path} of ${cur.child}`;
      const fd = openFd(cur.path, "r", what);
      const link: Link = { path: cur.path, format: "raw", fd, meta: null };
      links.push(link);
      const st = fstatSync(fd);
      if (st.isDirectory()) throw new DiskImageError(`${what} is a directory, not a disk image`);
      const real = realpathSync(cur.path);
      const loop = seen.get(real);
      if (loop !== undefined) {
        const chain = [...links.map((l) => l.path)].join(" -> ");
        throw new DiskImageError(`the backing chain of ${path} loops back to ${loop}: ${chain}`);
      }
      seen.set(real, cur.path);
      link.format = cur.format ?? probe(cur.path, fd);
      if (link.format === "raw") break;
      link.meta = inspectQcow2(cur.path, fd, forWrite && links.length === 1);
      const h = link.meta.header;
      if (h.backingFile === null) break;
      const b = backingOf(cur.path, h.backingFile, h.backingFormat);
      cur = { path: b.path, format: b.format, child: cur.path };
    }
    return links;
  } catch (e) {
    for (const l of links) closeSync(l.fd);
    throw e;
  }
}

function defaultSerial(path: string): string {
  return createHash("sha256").update(realpathSync(path)).digest("hex").slice(0, 20);
}

/**
 * Opens a disk image and its backing chain (always read-only) as a block backend. Throws
 * DiskImageError, before anything is written, when the image or any backing file is missing,
 * corrupt, truncated, of an unsupported kind, or the chain loops or is deeper than 16.
 */
export function openDiskImage(path: string, opts: OpenDiskOptions = {}): DiskImage {
  const readOnly = opts.readOnly ?? false;
  const links = openChain(path, opts.format, !readOnly);
  let lower: ImageLayer | null = null;
  let release: (() => void) | null = null;
  try {
    for (let i = links.length - 1; i >= 1; i--) {
      const l = links[i];
      const layer: ImageLayer =
        l.format === "raw"
          ? new RawImage(l.path, { readOnly: true, fd: l.fd })
          : new Qcow2Image(l.meta!, l.fd, { readOnly: true, backing: lower });
      l.fd = -1; // owned by the layer now
      lower = layer;
    }
    const top = links[0];
    let fd = top.fd;
    if (!readOnly) {
      if (opts.lock ?? true) release = acquireImageLock(path);
      const rw = openFd(path, "r+", `${path} (for writing)`);
      const a = fstatSync(fd);
      const b = fstatSync(rw);
      closeSync(fd);
      top.fd = rw;
      fd = rw;
      if (a.ino !== b.ino || a.dev !== b.dev)
        throw new DiskImageError(`${path} was replaced while it was being opened`);
    }
    const serial = opts.serial ?? defaultSerial(path);
    const image: RawImage | Qcow2Image =
      top.format === "raw"
        ? new RawImage(path, { readOnly, fd, serial })
        : new Qcow2Image(top.meta!, fd, { readOnly, backing: lower, serial, l2CacheBytes: opts.l2CacheBytes });
    top.fd = -1;
    image.onClose = release;
    return image;
  } catch (e) {
    for (const l of links) if (l.fd >= 0) closeSync(l.fd);
    lower?.close();
    release?.();
    throw e;
  }
}

// ------------------------------------------------------------------------------------ creating

export interface CreateQcow2Options {
  /** Virtual size in bytes (rounded up to 512); default: the backing file's size. */
  size?: number;
  clusterSize?: number;
  /** `path` as stored in the image: relative paths are relative to the new image's directory. */
  backing?: { path: string; format?: DiskFormat };
}

/** Creates an empty qcow2 image (v3, 16-bit refcounts, zlib); refuses to overwrite a file. */
export function createQcow2(path: string, opts: CreateQcow2Options): void {
  let size = opts.size;
  let backingFormat: DiskFormat | undefined;
  if (opts.backing) {
    const where = isAbsolute(opts.backing.path) ? opts.backing.path : join(dirname(path), opts.backing.path);
    if (!existsSync(where)) throw new DiskImageError(`the backing file ${where} does not exist`);
    const backing = openDiskImage(where, { readOnly: true, format: opts.backing.format });
    backingFormat = backing.format;
    size ??= backing.size;
    backing.close();
  }
  if (size === undefined) throw new DiskImageError(`${path}: a size is needed for an image without a backing file`);
  writeEmptyQcow2(path, {
    size: roundUp512(size),
    clusterSize: opts.clusterSize,
    backingFile: opts.backing?.path,
    backingFormat,
  });
}

/** Creates a sparse raw image of `size` bytes (rounded up to 512); refuses to overwrite a file. */
export function createRaw(path: string, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new DiskImageError(`${path}: bad disk size ${size}`);
  let fd: number;
  try {
    fd = openSync(path, "wx", PRIVATE_FILE_MODE);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST")
      throw new DiskImageError(`${path} already exists; Yun will not overwrite it`);
    throw new DiskImageError(`cannot create ${path}: ${(e as Error).message}`);
  }
  try {
    ftruncateSync(fd, roundUp512(size));
  } finally {
    closeSync(fd);
  }
}

function roundUp512(n: number): number {
  return Math.ceil(n / 512) * 512;
}

// ------------------------------------------------------------------------------------- info

export interface BackingInfo {
  /** Where the file is (resolved against the directory of the image that names it). */
  path: string;
  format: DiskFormat;
  virtualSize: number;
}

export interface DiskInfo {
  path: string;
  format: DiskFormat;
  virtualSize: number;
  /** Bytes the file occupies on disk (allocated blocks). */
  actualSize: number;
  fileSize: number;
  clusterSize?: number;
  /** qcow2 compatibility level: "0.10" (version 2) or "1.1" (version 3). */
  compat?: string;
  /** The backing file name as stored in the image. */
  backingFile?: string;
  backingFormat?: string;
  /** The resolved backing chain, nearest first. */
  backingChain: BackingInfo[];
  snapshots: { id: string; name: string }[];
  dirty: boolean;
  corrupt: boolean;
  /** Incompatible features set in the header (names). */
  features: string[];
}

function virtualSizeOf(path: string, fd: number, format: DiskFormat): number {
  if (format === "raw") return roundUp512(fstatSync(fd).size);
  return Math.floor(parseQcow2Header(path, fd, fstatSync(fd).size).size / 512) * 512;
}

/** Describes an image and its backing chain (without opening it as a disk: dirty or corrupt images are described too). */
export function diskInfo(path: string): DiskInfo {
  const fd = openFd(path, "r", path);
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new DiskImageError(`${path} is a directory, not a disk image`);
    const format = probe(path, fd);
    const info: DiskInfo = {
      path,
      format,
      virtualSize: roundUp512(st.size),
      actualSize: st.blocks * 512,
      fileSize: st.size,
      backingChain: [],
      snapshots: [],
      dirty: false,
      corrupt: false,
      features: [],
    };
    if (format === "raw") return info;
    const h = parseQcow2Header(path, fd, st.size);
    info.virtualSize = Math.floor(h.size / 512) * 512;
    info.clusterSize = 2 ** h.clusterBits;
    info.compat = h.version === 2 ? "0.10" : "1.1";
    info.dirty = (h.incompatible & 1n) !== 0n;
    info.corrupt = (h.incompatible & 2n) !== 0n;
    info.features = incompatibleFeatureNames(h);
    info.snapshots = h.snapshots.map((s) => ({ id: s.id, name: s.name }));
    if (h.backingFile !== null) {
      info.backingFile = h.backingFile;
      if (h.backingFormat !== null) info.backingFormat = h.backingFormat;
      let child = path;
      let next: { path: string; format: DiskFormat | null } | null = backingOf(path, h.backingFile, h.backingFormat);
      const seen = new Set([realpathSync(path)]);
      while (next) {
        if (info.backingChain.length >= MAX_BACKING_DEPTH) {
          throw new DiskImageError(`the backing chain of ${path} is more than ${MAX_BACKING_DEPTH} images deep`);
        }
        const bfd = openFd(next.path, "r", `the backing file ${next.path} of ${child}`);
        try {
          const real = realpathSync(next.path);
          if (seen.has(real)) throw new DiskImageError(`the backing chain of ${path} loops back to ${next.path}`);
          seen.add(real);
          const bformat: DiskFormat = next.format ?? probe(next.path, bfd);
          info.backingChain.push({
            path: next.path,
            format: bformat,
            virtualSize: virtualSizeOf(next.path, bfd, bformat),
          });
          const bh: Qcow2Header | null =
            bformat === "qcow2" ? parseQcow2Header(next.path, bfd, fstatSync(bfd).size) : null;
          child = next.path;
          next = bh?.backingFile ? backingOf(next.path, bh.backingFile, bh.backingFormat) : null;
        } finally {
          closeSync(bfd);
        }
      }
    }
    return info;
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------- convert, resize

export interface ConvertResult {
  /** Bytes of guest data written to the destination (non-zero clusters). */
  dataBytes: number;
}

/**
 * Copies the disk `src` (with its backing chain flattened) into a new image `dst` (which must not
 * exist). Only non-zero clusters are written: a qcow2 destination allocates nothing for zeroes, a
 * raw one stays sparse.
 */
export function convertDisk(
  src: string,
  dst: string,
  dstFormat: DiskFormat,
  opts: { clusterSize?: number } = {},
): ConvertResult {
  if (existsSync(dst)) throw new DiskImageError(`${dst} already exists; Yun will not overwrite it`);
  const source = openDiskImage(src, { readOnly: true });
  let target: DiskImage | null = null;
  let created = false;
  try {
    if (dstFormat === "qcow2") createQcow2(dst, { size: source.size, clusterSize: opts.clusterSize });
    else createRaw(dst, source.size);
    created = true;
    target = openDiskImage(dst, { format: dstFormat });
    const grain = target instanceof Qcow2Image ? target.clusterSize : 65536;
    const chunk = Math.max(grain, 1 << 20);
    const buf = new Uint8Array(chunk);
    let dataBytes = 0;
    for (let off = 0; off < source.size; off += chunk) {
      const n = Math.min(chunk, source.size - off);
      if (source.knownZero(off, n)) continue;
      source.readAt(off, buf, 0, n);
      // Write each run of non-zero grains with one request.
      let runStart = -1;
      for (let g = 0; g <= n; g += grain) {
        const zero = g === n || isZero(buf, g, Math.min(grain, n - g));
        if (!zero && runStart < 0) runStart = g;
        if (zero && runStart >= 0) {
          target.write(off + runStart, buf.subarray(runStart, Math.min(g, n)));
          dataBytes += Math.min(g, n) - runStart;
          runStart = -1;
        }
      }
    }
    target.close();
    target = null;
    return { dataBytes };
  } catch (e) {
    target?.close();
    if (created) {
      try {
        unlinkSync(dst);
      } catch {}
    }
    throw e;
  } finally {
    source.close();
  }
}

/** Grows the disk `path` to `newSize` bytes (rounded up to 512). Shrinking is refused. */
export function resizeDisk(path: string, newSize: number): void {
  const image = openDiskImage(path);
  try {
    const size = roundUp512(newSize);
    if (size < image.size) {
      throw new DiskImageError(
        `${path}: shrinking from ${image.size} to ${size} bytes is not supported (it would drop data)`,
      );
    }
    if (image instanceof Qcow2Image || image instanceof RawImage) image.resize(size);
  } finally {
    image.close();
  }
}

// ------------------------------------------------------------------------------------- sizes

const UNITS: Record<string, number> = { "": 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** Parses "10G", "512M", "1T", "64k", "1.5G", "4096" (binary units, as qemu-img); null if malformed. */
export function parseSize(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([bkmgtpBKMGTP]?)(?:i?[bB])?$/.exec(text.trim());
  if (!m) return null;
  const value = Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (!Number.isFinite(value) || value > Number.MAX_SAFE_INTEGER) return null;
  return Math.round(value);
}

/** "10 GiB", "512 MiB", "1.5 KiB", "300 B". */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? String(v) : Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, "");
  return `${text} ${units[u]}`;
}

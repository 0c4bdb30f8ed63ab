/**
 * qcow2 disk images (version 3, and version 2 images read and written as version 2).
 *
 * Layout (QEMU docs/interop/qcow2.txt): the guest disk is cut into clusters; a two-level table
 * (the L1 table in memory, L2 tables of one cluster each) maps guest clusters to host clusters;
 * every host cluster has a 16-bit reference count kept in a second two-level table (the refcount
 * table, refcount blocks). A cluster whose refcount is not 1 (shared with an internal snapshot) is
 * copied before it is written; QCOW_OFLAG_COPIED (bit 63) in an L1/L2 entry says "refcount is
 * exactly 1, write in place".
 *
 * Consistency (the dirty bit stays clear; refcounts are always exact or too high, never too low):
 *  - Data and new metadata clusters are written to the file first, then their refcounts are raised
 *    (in the refcount block cache), and only then an L2/L1 entry points at them.
 *  - L2 and L1 updates stay in memory (write-back caches) until flush(): flush writes the refcount
 *    blocks, fdatasyncs, writes the L2 tables and the L1 table, fdatasyncs again. So whenever a
 *    reference reaches the file, what it references and its refcount are already durable.
 *  - A cluster that loses its last reference is decremented only after that flush ("pending
 *    frees"), so a free never reaches the file before the reference it drops.
 *  - New refcount blocks, a bigger refcount table or L1 table are written and synced before the
 *    table entry or header field that points at them.
 * After a SIGKILL or power loss `qemu-img check` can find leaked clusters (allocated, unreferenced:
 * harmless, `qemu-img check -r leaks` reclaims them) but never a refcount below its references.
 * Writes not yet flushed may be lost, as with a disk's volatile write cache; the guest flushes.
 *
 * Images Yun refuses: the corrupt bit, extended L2 entries, external data files, compression other
 * than zlib, encryption, refcounts other than 16 bits, unknown incompatible features. An image
 * with the dirty bit (QEMU with lazy refcounts, not closed cleanly) opens read-only only, as its
 * refcounts cannot be trusted for allocation. Opening read-write clears the auto-clear feature
 * bits (Yun does not update persistent bitmaps, so QEMU must treat them as stale).
 *
 * Hot path: reads and in-place writes do one pread/pwrite per run of contiguous host clusters and
 * allocate nothing; L2 tables and refcount blocks live in bounded caches (CLOCK replacement).
 */
import { closeSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, unlinkSync, writeSync } from "node:fs";
import { PRIVATE_FILE_MODE } from "./private.js";
import { inflateRawSync } from "node:zlib";
import { BlockIoError } from "../devices/block.js";
import { DiskImageError, preadFull, pwriteFull, zeroBuffer, type DiskImage, type ImageLayer } from "./layer.js";

export const QCOW2_MAGIC = 0x514649fb;

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;

const INCOMPAT_DIRTY = 1n;
const INCOMPAT_CORRUPT = 2n;
const INCOMPAT_DATA_FILE = 4n;
const INCOMPAT_COMPRESSION = 8n;
const INCOMPAT_EXTENDED_L2 = 16n;
const INCOMPAT_NAMES = ["dirty bit", "corrupt bit", "external data file", "compression type", "extended L2 entries"];

/** QEMU's limits: 32 MiB of L1 table, 8 MiB of refcount table. */
const MAX_L1_BYTES = 32 << 20;
const MAX_REFTABLE_BYTES = 8 << 20;
const HEADER_V3_LENGTH = 112;

// L1/L2 entries are handled as two big-endian 32-bit halves (hi, lo) so that nothing is a BigInt.
const HI_COPIED = 0x80000000;
const HI_COMPRESSED = 0x40000000;
const HI_OFFSET = 0x00ffffff; // bits 32..55 of a standard offset
const LO_OFFSET = 0xfffffe00; // bits 9..31
const LO_ZERO = 1;
const TWO32 = 0x100000000;

export interface Qcow2Snapshot {
  id: string;
  name: string;
  l1TableOffset: number;
  l1Size: number;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** The size field as stored (the disk is this rounded down to 512). */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** The backing file name as stored (relative names are relative to this image's directory). */
  backingFile: string | null;
  backingFormat: string | null;
  /** Names from the feature name table, keyed "type:bit" (type 0 incompatible, 1 compatible, 2 autoclear). */
  featureNames: Map<string, string>;
  snapshots: Qcow2Snapshot[];
}

/** A header plus the tables validated against the file, ready for `new Qcow2Image`. */
export interface Qcow2Meta {
  path: string;
  header: Qcow2Header;
  l1: Uint8Array;
  refcountTable: Uint8Array;
  fileSize: number;
}

function corrupt(path: string, what: string): DiskImageError {
  return new DiskImageError(`${path} is not a valid qcow2 image: ${what}`);
}

/** A big-endian u64 as a number; NaN when it does not fit in 53 bits (no real image gets there). */
function u64(v: DataView, off: number): number {
  const hi = v.getUint32(off);
  if (hi >= 0x200000) return NaN;
  return hi * TWO32 + v.getUint32(off + 4);
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Reads and checks the header, its extensions and the snapshot table of the qcow2 image on `fd`. */
export function parseQcow2Header(path: string, fd: number, fileSize: number): Qcow2Header {
  if (fileSize < 72) throw corrupt(path, `the file is only ${fileSize} bytes, shorter than a qcow2 header`);
  const head = new Uint8Array(Math.min(fileSize, 512));
  preadFull(fd, head, 0, head.length, 0, path);
  const hv = new DataView(head.buffer);
  if (hv.getUint32(0) !== QCOW2_MAGIC) throw corrupt(path, "bad magic (expected QFI\\xfb)");
  const version = hv.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new DiskImageError(`${path} is qcow2 version ${version}; Yun supports versions 2 and 3`);
  }
  const clusterBits = hv.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) {
    throw corrupt(path, `cluster_bits is ${clusterBits} (must be 9 to 21: 512 B to 2 MiB clusters)`);
  }
  const cs = 2 ** clusterBits;
  let headerLength = 72;
  let incompatible = 0n;
  let compatible = 0n;
  let autoclear = 0n;
  let refcountOrder = 4;
  let compressionType = 0;
  if (version === 3) {
    if (fileSize < 104) throw corrupt(path, `the file is only ${fileSize} bytes, shorter than a version 3 header`);
    headerLength = hv.getUint32(100);
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > Math.min(cs, head.length)) {
      throw corrupt(path, `header_length is ${headerLength} (must be a multiple of 8, at least 104)`);
    }
    incompatible = hv.getBigUint64(72);
    compatible = hv.getBigUint64(80);
    autoclear = hv.getBigUint64(88);
    refcountOrder = hv.getUint32(96);
    if (headerLength > 104) compressionType = head[104];
  }
  const size = u64(hv, 24);
  const backingFileOffset = u64(hv, 8);
  const backingFileSize = hv.getUint32(16);
  const l1TableOffset = u64(hv, 40);
  const refcountTableOffset = u64(hv, 48);
  const snapshotsOffset = u64(hv, 64);
  if (Number.isNaN(size)) throw corrupt(path, "the disk size is beyond 8 PiB");
  for (const [v, name] of [
    [backingFileOffset, "backing_file_offset"],
    [l1TableOffset, "l1_table_offset"],
    [refcountTableOffset, "refcount_table_offset"],
    [snapshotsOffset, "snapshots_offset"],
  ] as const) {
    if (Number.isNaN(v)) throw corrupt(path, `${name} is beyond 8 PiB`);
  }

  // The first cluster: header extensions and the backing file name live there.
  const first = new Uint8Array(Math.min(cs, fileSize));
  preadFull(fd, first, 0, first.length, 0, path);
  const fv = new DataView(first.buffer);
  let backingFormat: string | null = null;
  const featureNames = new Map<string, string>();
  const text = new TextDecoder();
  for (let pos = headerLength; pos + 8 <= first.length;) {
    const type = fv.getUint32(pos);
    const len = fv.getUint32(pos + 4);
    if (type === EXT_END) break;
    if (pos + 8 + len > first.length)
      throw corrupt(path, `header extension 0x${type.toString(16)} overruns the first cluster`);
    const data = first.subarray(pos + 8, pos + 8 + len);
    // Other extensions (bitmaps, encryption, external data file name, unknown ones) are not
    // needed here and stay untouched in the file: Yun never rewrites the first cluster wholesale.
    if (type === EXT_BACKING_FORMAT) backingFormat = text.decode(data);
    else if (type === EXT_FEATURE_TABLE) {
      for (let e = 0; e + 48 <= len; e += 48) {
        const nameBytes = data.subarray(e + 2, e + 48);
        const end = nameBytes.indexOf(0);
        featureNames.set(`${data[e]}:${data[e + 1]}`, text.decode(end < 0 ? nameBytes : nameBytes.subarray(0, end)));
      }
    }
    pos += 8 + align8(len);
  }
  let backingFile: string | null = null;
  if (backingFileOffset !== 0) {
    if (backingFileSize === 0 || backingFileSize > 1023) {
      throw corrupt(path, `the backing file name is ${backingFileSize} bytes long (must be 1 to 1023)`);
    }
    if (backingFileOffset + backingFileSize > cs)
      throw corrupt(path, "the backing file name lies outside the first cluster");
    if (backingFileOffset + backingFileSize > first.length) {
      throw new DiskImageError(`${path} is truncated: it ends inside its header (${fileSize} bytes)`);
    }
    backingFile = text.decode(first.subarray(backingFileOffset, backingFileOffset + backingFileSize));
  }

  const nbSnapshots = hv.getUint32(60);
  const snapshots: Qcow2Snapshot[] = [];
  if (nbSnapshots > 65536) throw corrupt(path, `it claims ${nbSnapshots} snapshots (at most 65536)`);
  if (nbSnapshots > 0) {
    if (snapshotsOffset % cs !== 0) throw corrupt(path, "snapshots_offset is not cluster-aligned");
    let pos = snapshotsOffset;
    const fixed = new Uint8Array(40);
    const fixedView = new DataView(fixed.buffer);
    for (let i = 0; i < nbSnapshots; i++) {
      if (preadFull(fd, fixed, 0, 40, pos, path) < 40) {
        throw new DiskImageError(`${path} is truncated: its snapshot table lies beyond the end of the file`);
      }
      const l1Off = u64(fixedView, 0);
      const l1Size = fixedView.getUint32(8);
      const idLen = fixedView.getUint16(12);
      const nameLen = fixedView.getUint16(14);
      const extra = fixedView.getUint32(36);
      if (extra > 1024) throw corrupt(path, `snapshot ${i} has ${extra} bytes of extra data`);
      const strings = new Uint8Array(extra + idLen + nameLen);
      if (preadFull(fd, strings, 0, strings.length, pos + 40, path) < strings.length) {
        throw new DiskImageError(`${path} is truncated: its snapshot table lies beyond the end of the file`);
      }
      snapshots.push({
        l1TableOffset: l1Off,
        l1Size,
        id: text.decode(strings.subarray(extra, extra + idLen)),
        name: text.decode(strings.subarray(extra + idLen)),
      });
      pos += align8(40 + strings.length);
    }
  }

  return {
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    size,
    cryptMethod: hv.getUint32(32),
    l1Size: hv.getUint32(36),
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters: hv.getUint32(56),
    nbSnapshots,
    snapshotsOffset,
    incompatible,
    compatible,
    autoclear,
    refcountOrder,
    headerLength,
    compressionType,
    backingFile,
    backingFormat,
    featureNames,
    snapshots,
  };
}

/** The names of the incompatible feature bits set in `h` (from the image's own table when it has one). */
export function incompatibleFeatureNames(h: Qcow2Header): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((h.incompatible >> BigInt(bit)) & 1n) {
      out.push(h.featureNames.get(`0:${bit}`) ?? INCOMPAT_NAMES[bit] ?? `unknown feature bit ${bit}`);
    }
  }
  return out;
}

/**
 * Checks that Yun can open the image (features, encryption, refcount width) and that its tables lie
 * inside the file; reads the L1 and refcount tables. Reads only.
 */
export function inspectQcow2(path: string, fd: number, forWrite: boolean): Qcow2Meta {
  const fileSize = fstatSync(fd).size;
  const h = parseQcow2Header(path, fd, fileSize);
  const cs = 2 ** h.clusterBits;
  if (h.incompatible & INCOMPAT_CORRUPT) {
    throw new DiskImageError(`${path} is marked corrupt; inspect it with: qemu-img check ${path}`);
  }
  if (h.incompatible & INCOMPAT_EXTENDED_L2) {
    throw new DiskImageError(`${path} uses extended L2 entries (subclusters), which Yun does not support`);
  }
  if (h.incompatible & INCOMPAT_DATA_FILE) {
    throw new DiskImageError(`${path} keeps its data in an external data file, which Yun does not support`);
  }
  const known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
  if (h.incompatible & ~known) {
    const names = incompatibleFeatureNames({ ...h, incompatible: h.incompatible & ~known });
    throw new DiskImageError(`${path} uses qcow2 features Yun does not know: ${names.join(", ")}`);
  }
  if (h.compressionType !== 0 || h.incompatible & INCOMPAT_COMPRESSION) {
    const name = h.compressionType === 1 ? "zstd" : `type ${h.compressionType}`;
    throw new DiskImageError(`${path} uses ${name} compression; Yun reads only zlib-compressed qcow2 images`);
  }
  if (h.incompatible & INCOMPAT_DIRTY && forWrite) {
    throw new DiskImageError(
      `${path} was not closed cleanly (its dirty bit is set, so its refcounts may be stale); ` +
        `repair it with: qemu-img check -r all ${path}`,
    );
  }
  if (h.cryptMethod !== 0) throw new DiskImageError(`${path} is encrypted, which Yun does not support`);
  if (h.refcountOrder !== 4) {
    throw new DiskImageError(
      `${path} has ${2 ** h.refcountOrder}-bit refcounts; Yun supports only 16-bit refcounts ` +
        `(convert it with: qemu-img amend -o refcount_bits=16 ${path})`,
    );
  }

  // The L1 table.
  const l2Coverage = (cs / 8) * cs;
  if (h.l1Size * 8 > MAX_L1_BYTES) throw corrupt(path, `its L1 table has ${h.l1Size} entries (too many)`);
  if (h.l1Size < Math.ceil(h.size / l2Coverage)) {
    throw corrupt(path, `its L1 table (${h.l1Size} entries) is too small for a ${h.size}-byte disk`);
  }
  if (h.l1Size > 0 && h.l1TableOffset % cs !== 0) throw corrupt(path, "l1_table_offset is not cluster-aligned");
  if (h.l1Size > 0 && h.l1TableOffset + h.l1Size * 8 > fileSize) {
    throw truncated(path, `its L1 table (at ${h.l1TableOffset}, ${h.l1Size * 8} bytes)`, fileSize);
  }
  if (h.l1Size > 0 && h.l1TableOffset < cs) throw corrupt(path, "its L1 table overlaps the header");
  const l1 = new Uint8Array(Math.max(cs, Math.ceil((h.l1Size * 8) / cs) * cs));
  if (h.l1Size > 0) preadFull(fd, l1, 0, h.l1Size * 8, h.l1TableOffset, path);
  const l1v = new DataView(l1.buffer);
  for (let i = 0; i < h.l1Size; i++) {
    const off = (l1v.getUint32(i * 8) & HI_OFFSET) * TWO32 + (l1v.getUint32(i * 8 + 4) & LO_OFFSET);
    if (off === 0) continue;
    if (off % cs !== 0) throw corrupt(path, `L1 entry ${i} points to an unaligned L2 table (offset ${off})`);
    if (off + cs > fileSize) throw truncated(path, `its L2 table for L1 entry ${i} (at ${off})`, fileSize);
  }

  // The refcount table.
  const rtBytes = h.refcountTableClusters * cs;
  if (h.refcountTableClusters === 0) throw corrupt(path, "its refcount table is empty");
  if (rtBytes > MAX_REFTABLE_BYTES) throw corrupt(path, `its refcount table is ${rtBytes} bytes (at most 8 MiB)`);
  if (h.refcountTableOffset % cs !== 0 || h.refcountTableOffset === 0) {
    throw corrupt(path, "refcount_table_offset is not a cluster-aligned offset past the header");
  }
  if (h.refcountTableOffset >= fileSize) {
    throw truncated(path, `its refcount table (at ${h.refcountTableOffset})`, fileSize);
  }
  const rt = new Uint8Array(rtBytes);
  preadFull(fd, rt, 0, rtBytes, h.refcountTableOffset, path);
  const rtv = new DataView(rt.buffer);
  for (let i = 0; i < rtBytes / 8; i++) {
    const off = u64(rtv, i * 8);
    if (off === 0) continue;
    if (Number.isNaN(off) || off % cs !== 0) throw corrupt(path, `refcount table entry ${i} is not a cluster offset`);
    if (off + cs > fileSize) throw truncated(path, `its refcount block ${i} (at ${off})`, fileSize);
  }
  return { path, header: h, l1, refcountTable: rt, fileSize };
}

function truncated(path: string, what: string, fileSize: number): DiskImageError {
  return new DiskImageError(`${path} is truncated: ${what} lies beyond the end of the file (${fileSize} bytes)`);
}

/**
 * A bounded cache of cluster-sized tables (L2 tables or refcount blocks) keyed by host offset,
 * with CLOCK replacement (an approximation of LRU that costs O(1) per miss).
 */
class TableCache {
  readonly bufs: Uint8Array[] = [];
  readonly views: DataView[] = [];
  readonly keys: Float64Array;
  /** Dirty byte range of each slot, [lo, hi); lo = -1 when clean. */
  readonly dirtyLo: Int32Array;
  readonly dirtyHi: Int32Array;
  private readonly referenced: Uint8Array;
  private readonly map = new Map<number, number>();
  private hand = 0;

  constructor(
    readonly slots: number,
    private readonly tableSize: number,
  ) {
    this.keys = new Float64Array(slots).fill(-1);
    this.referenced = new Uint8Array(slots);
    this.dirtyLo = new Int32Array(slots).fill(-1);
    this.dirtyHi = new Int32Array(slots);
  }

  find(key: number): number {
    const slot = this.map.get(key);
    if (slot === undefined) return -1;
    this.referenced[slot] = 1;
    return slot;
  }

  /** The slot to fill next: a never-used or dropped one, else one not used lately. The caller writes it back if dirty. */
  victim(): number {
    if (this.bufs.length < this.slots) {
      const buf = new Uint8Array(this.tableSize);
      this.bufs.push(buf);
      this.views.push(new DataView(buf.buffer));
      return this.bufs.length - 1;
    }
    for (;;) {
      const slot = this.hand;
      this.hand = slot + 1 === this.slots ? 0 : slot + 1;
      if (this.keys[slot] < 0 || this.referenced[slot] === 0) return slot;
      this.referenced[slot] = 0;
    }
  }

  assign(slot: number, key: number): void {
    const old = this.keys[slot];
    if (old >= 0) this.map.delete(old);
    this.keys[slot] = key;
    this.map.set(key, slot);
    this.referenced[slot] = 1;
    this.dirtyLo[slot] = -1;
  }

  drop(key: number): void {
    const slot = this.map.get(key);
    if (slot === undefined) return;
    this.map.delete(key);
    this.keys[slot] = -1;
    this.referenced[slot] = 0;
    this.dirtyLo[slot] = -1;
  }

  markDirty(slot: number, lo: number, hi: number): void {
    if (this.dirtyLo[slot] < 0) {
      this.dirtyLo[slot] = lo;
      this.dirtyHi[slot] = hi;
    } else {
      if (lo < this.dirtyLo[slot]) this.dirtyLo[slot] = lo;
      if (hi > this.dirtyHi[slot]) this.dirtyHi[slot] = hi;
    }
  }
}

export interface Qcow2OpenOptions {
  readOnly: boolean;
  serial?: string;
  backing?: ImageLayer | null;
  /** Size of the L2 table cache in bytes (default 16 MiB). */
  l2CacheBytes?: number;
}

export class Qcow2Image implements DiskImage {
  readonly format = "qcow2" as const;
  readonly readOnly: boolean;
  readonly serial: string;
  readonly path: string;
  readonly clusterSize: number;
  readonly version: 2 | 3;
  /** Run once by close() after the file is closed (releases an advisory lock). */
  onClose: (() => void) | null = null;

  private fd: number;
  private virtualSize: number;
  private readonly cbits: number;
  private readonly l2Entries: number;
  /** Refcount entries per refcount block. */
  private readonly rbEntries: number;
  private backing: ImageLayer | null;

  private l1: Uint8Array;
  private l1v: DataView;
  private l1Size: number;
  private l1Offset: number;
  private l1DirtyLo = -1;
  private l1DirtyHi = 0;

  private rt: Uint8Array;
  private rtv: DataView;
  private rtOffset: number;
  private rtClusters: number;
  private rtEntries: number;

  private readonly l2c: TableCache;
  private readonly rbc: TableCache;

  /** Allocation: the scan for free clusters starts here (a cluster index). */
  private freeCursor = 0;
  /** Result of findFree: first cluster index and count. */
  private allocStart = 0;
  private allocCount = 0;
  /** Host cluster offsets whose refcount drops once the L2/L1 updates that released them are flushed. */
  private pendingFree = new Float64Array(1024);
  private pendingCount = 0;

  private readonly bufA: Uint8Array;
  private readonly bufB: Uint8Array;
  private compIn: Uint8Array;
  private readonly compOut: Uint8Array;
  private compKeyHi = -1;
  private compKeyLo = -1;

  constructor(meta: Qcow2Meta, fd: number, opts: Qcow2OpenOptions) {
    const h = meta.header;
    this.path = meta.path;
    this.fd = fd;
    this.readOnly = opts.readOnly;
    this.serial = opts.serial ?? "";
    this.backing = opts.backing ?? null;
    this.version = h.version;
    this.cbits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    const cs = this.clusterSize;
    this.virtualSize = Math.floor(h.size / 512) * 512;
    this.l2Entries = cs / 8;
    this.rbEntries = cs / 2;
    this.l1 = meta.l1;
    this.l1v = new DataView(this.l1.buffer);
    this.l1Size = h.l1Size;
    this.l1Offset = h.l1TableOffset;
    this.rt = meta.refcountTable;
    this.rtv = new DataView(this.rt.buffer);
    this.rtOffset = h.refcountTableOffset;
    this.rtClusters = h.refcountTableClusters;
    this.rtEntries = (h.refcountTableClusters * cs) / 8;
    const l2Bytes = opts.l2CacheBytes ?? 16 << 20;
    this.l2c = new TableCache(Math.max(4, Math.min(8192, Math.floor(l2Bytes / cs))), cs);
    this.rbc = new TableCache(Math.max(4, Math.min(4096, Math.floor((4 << 20) / cs))), cs);
    this.bufA = new Uint8Array(cs);
    this.bufB = new Uint8Array(cs);
    this.compIn = new Uint8Array(cs + 1024);
    this.compOut = new Uint8Array(cs);
    if (!this.readOnly && h.autoclear !== 0n) {
      // Yun keeps none of the auto-clear features (bitmaps) up to date, so it must clear them
      // before the first write; QEMU then knows that the bitmaps are stale.
      const zero8 = new Uint8Array(8);
      pwriteFull(fd, zero8, 0, 8, 88, this.path);
      fdatasyncSync(fd);
    }
  }

  get size(): number {
    return this.virtualSize;
  }

  /** The backing layer (read-only), if the image has one. */
  get backingLayer(): ImageLayer | null {
    return this.backing;
  }

  // ------------------------------------------------------------------------------------ reading

  read(offset: number, buf: Uint8Array): void {
    this.readAt(offset, buf, 0, buf.length);
  }

  readAt(offset: number, buf: Uint8Array, bufOff: number, len: number): void {
    this.checkOpen();
    if (offset + len > this.virtualSize) {
      const inside = Math.max(0, this.virtualSize - offset);
      buf.fill(0, bufOff + inside, bufOff + len);
      len = inside;
    }
    const cs = this.clusterSize;
    const l2e = this.l2Entries;
    while (len > 0) {
      const cidx = Math.floor(offset / cs);
      const l1i = Math.floor(cidx / l2e);
      const span = Math.min(len, (l1i + 1) * l2e * cs - offset);
      const l2Off = this.l1Offset0(l1i);
      if (l2Off === 0) this.readUnallocated(offset, buf, bufOff, span);
      else this.readSpan(this.loadL2(l2Off), cidx - l1i * l2e, offset, buf, bufOff, span);
      offset += span;
      bufOff += span;
      len -= span;
    }
  }

  /** Reads `len` bytes at guest `offset`, all inside the L2 table in `slot` starting at entry `l2i`. */
  private readSpan(slot: number, l2i: number, offset: number, buf: Uint8Array, bufOff: number, len: number): void {
    const cs = this.clusterSize;
    const v = this.l2c.views[slot];
    const v3 = this.version === 3;
    let inOff = offset % cs;
    while (len > 0) {
      const hi = v.getUint32(l2i * 8);
      const lo = v.getUint32(l2i * 8 + 4);
      let run = Math.min(cs - inOff, len);
      let j = l2i + 1;
      if (hi & HI_COMPRESSED) {
        this.decompress(hi, lo);
        buf.set(this.compOut.subarray(inOff, inOff + run), bufOff);
      } else {
        const host = (hi & HI_OFFSET) * TWO32 + ((lo & LO_OFFSET) >>> 0);
        if (v3 && lo & LO_ZERO) {
          for (; run < len; j++) {
            const nlo = v.getUint32(j * 8 + 4);
            if (v.getUint32(j * 8) & HI_COMPRESSED || !(nlo & LO_ZERO)) break;
            run += Math.min(cs, len - run);
          }
          buf.fill(0, bufOff, bufOff + run);
        } else if (host === 0) {
          for (; run < len; j++) {
            const nhi = v.getUint32(j * 8);
            const nlo = v.getUint32(j * 8 + 4);
            if (nhi & HI_COMPRESSED || (nhi & HI_OFFSET) !== 0 || (nlo & LO_OFFSET) !== 0 || (v3 && nlo & LO_ZERO))
              break;
            run += Math.min(cs, len - run);
          }
          this.readUnallocated(offset, buf, bufOff, run);
        } else {
          for (; run < len; j++) {
            const nhi = v.getUint32(j * 8);
            const nlo = v.getUint32(j * 8 + 4);
            if (nhi & HI_COMPRESSED || (v3 && nlo & LO_ZERO)) break;
            if ((nhi & HI_OFFSET) * TWO32 + ((nlo & LO_OFFSET) >>> 0) !== host + (j - l2i) * cs) break;
            run += Math.min(cs, len - run);
          }
          const got = preadFull(this.fd, buf, bufOff, run, host + inOff, this.path);
          if (got < run) buf.fill(0, bufOff + got, bufOff + run);
        }
      }
      offset += run;
      bufOff += run;
      len -= run;
      l2i = j;
      inOff = 0;
    }
  }

  knownZero(offset: number, len: number): boolean {
    this.checkOpen();
    const cs = this.clusterSize;
    const l2e = this.l2Entries;
    const end = Math.min(offset + len, this.virtualSize);
    const v3 = this.version === 3;
    for (let c = Math.floor(offset / cs); c * cs < end;) {
      const l1i = Math.floor(c / l2e);
      const l2Off = this.l1Offset0(l1i);
      if (l2Off === 0) {
        const next = Math.min((l1i + 1) * l2e * cs, end);
        if (this.backing && !this.backing.knownZero(c * cs, next - c * cs)) return false;
        c = (l1i + 1) * l2e;
        continue;
      }
      const v = this.l2c.views[this.loadL2(l2Off)];
      const i = (c - l1i * l2e) * 8;
      const hi = v.getUint32(i);
      const lo = v.getUint32(i + 4);
      if (hi & HI_COMPRESSED) return false;
      if (!(v3 && lo & LO_ZERO)) {
        if ((hi & HI_OFFSET) !== 0 || (lo & LO_OFFSET) !== 0) return false;
        if (this.backing && !this.backing.knownZero(c * cs, cs)) return false;
      }
      c++;
    }
    return true;
  }

  private readUnallocated(offset: number, buf: Uint8Array, bufOff: number, len: number): void {
    if (this.backing) this.backing.readAt(offset, buf, bufOff, len);
    else buf.fill(0, bufOff, bufOff + len);
  }

  /** Inflates the compressed cluster described by (hi, lo) into compOut (one-entry cache). */
  private decompress(hi: number, lo: number): void {
    if (hi === this.compKeyHi && lo === this.compKeyLo) return;
    const x = 62 - (this.cbits - 8); // bits 0..x-1: host offset; x..61: extra sectors
    const hiOffBits = x - 32;
    const off = (hi & ((1 << hiOffBits) - 1)) * TWO32 + (lo >>> 0);
    const sectors = ((hi & 0x3fffffff) >>> hiOffBits) + 1;
    const csize = sectors * 512 - (off % 512);
    if (this.compIn.length < csize) this.compIn = new Uint8Array(csize);
    const got = preadFull(this.fd, this.compIn, 0, csize, off, this.path);
    let out: Uint8Array;
    try {
      out = inflateRawSync(this.compIn.subarray(0, got), { maxOutputLength: this.clusterSize });
    } catch (e) {
      throw new BlockIoError(`${this.path}: compressed cluster at ${off} does not decompress: ${(e as Error).message}`);
    }
    if (out.length !== this.clusterSize) {
      throw new BlockIoError(
        `${this.path}: compressed cluster at ${off} inflates to ${out.length} bytes, not a cluster`,
      );
    }
    this.compOut.set(out);
    this.compKeyHi = hi;
    this.compKeyLo = lo;
  }

  /** The current contents of a guest cluster described by the L2 entry (hi, lo), into `dst`. */
  private readOldCluster(hi: number, lo: number, guestOff: number, dst: Uint8Array): void {
    const cs = this.clusterSize;
    if (hi & HI_COMPRESSED) {
      this.decompress(hi, lo);
      dst.set(this.compOut);
      return;
    }
    const host = (hi & HI_OFFSET) * TWO32 + ((lo & LO_OFFSET) >>> 0);
    if (this.version === 3 && lo & LO_ZERO) dst.fill(0);
    else if (host === 0) {
      const inside = Math.min(cs, this.virtualSize - guestOff);
      this.readUnallocated(guestOff, dst, 0, inside);
      dst.fill(0, inside);
    } else {
      const got = preadFull(this.fd, dst, 0, cs, host, this.path);
      if (got < cs) dst.fill(0, got);
    }
  }

  // ------------------------------------------------------------------------------------ writing

  write(offset: number, data: Uint8Array): void {
    this.checkWritable();
    if (this.pendingCount > 65536) this.flush();
    this.writeAt(offset, data, 0, data.length);
  }

  private writeAt(offset: number, data: Uint8Array, dataOff: number, len: number): void {
    const cs = this.clusterSize;
    const l2e = this.l2Entries;
    if (offset + len > this.virtualSize) throw new BlockIoError(`${this.path}: write beyond the end of the disk`);
    while (len > 0) {
      const cidx = Math.floor(offset / cs);
      const l1i = Math.floor(cidx / l2e);
      let l2i = cidx - l1i * l2e;
      const span = Math.min(len, (l1i + 1) * l2e * cs - offset);
      const slot = this.l2ForWrite(l1i);
      const v = this.l2c.views[slot];
      let inOff = offset % cs;
      let rem = span;
      while (rem > 0) {
        const hi = v.getUint32(l2i * 8);
        const lo = v.getUint32(l2i * 8 + 4);
        let run = Math.min(cs - inOff, rem);
        let clusters = 1;
        if (isInPlace(hi, lo)) {
          const host = (hi & HI_OFFSET) * TWO32 + ((lo & LO_OFFSET) >>> 0);
          for (let j = l2i + 1; run < rem; j++, clusters++) {
            const nhi = v.getUint32(j * 8);
            const nlo = v.getUint32(j * 8 + 4);
            if (!isInPlace(nhi, nlo)) break;
            if ((nhi & HI_OFFSET) * TWO32 + ((nlo & LO_OFFSET) >>> 0) !== host + (j - l2i) * cs) break;
            run += Math.min(cs, rem - run);
          }
          pwriteFull(this.fd, data, dataOff, run, host + inOff, this.path);
        } else {
          for (let j = l2i + 1; run < rem; j++, clusters++) {
            if (isInPlace(v.getUint32(j * 8), v.getUint32(j * 8 + 4))) break;
            run += Math.min(cs, rem - run);
          }
          run = this.allocRun(slot, l2i, clusters, offset - inOff, data, dataOff, inOff, run);
          clusters = this.allocCount;
        }
        offset += run;
        dataOff += run;
        rem -= run;
        len -= run;
        l2i += clusters;
        inOff = 0;
      }
    }
  }

  /**
   * Writes `bytes` bytes of `data` into `n` guest clusters (entries l2i.. of the L2 table in `slot`)
   * that cannot be written in place, through newly allocated host clusters. Partial clusters are
   * filled from their old contents. May handle fewer clusters than asked (`allocCount` tells how
   * many); returns the bytes written.
   */
  private allocRun(
    slot: number,
    l2i: number,
    n: number,
    guestOff: number,
    data: Uint8Array,
    dataOff: number,
    inOff: number,
    bytes: number,
  ): number {
    const cs = this.clusterSize;
    this.findFree(n);
    const k = this.allocCount;
    const host0 = this.allocStart * cs;
    const v = this.l2c.views[slot];
    const done = Math.min(bytes, k * cs - inOff);
    // Data first.
    const firstBytes = Math.min(cs - inOff, done);
    if (firstBytes < cs) {
      this.readOldCluster(v.getUint32(l2i * 8), v.getUint32(l2i * 8 + 4), guestOff, this.bufA);
      this.bufA.set(data.subarray(dataOff, dataOff + firstBytes), inOff);
      pwriteFull(this.fd, this.bufA, 0, cs, host0, this.path);
    } else pwriteFull(this.fd, data, dataOff, cs, host0, this.path);
    const rest = done - firstBytes;
    if (rest > 0) {
      const full = Math.floor(rest / cs) * cs;
      if (full > 0) pwriteFull(this.fd, data, dataOff + firstBytes, full, host0 + cs, this.path);
      const tail = rest - full;
      if (tail > 0) {
        const last = l2i + k - 1;
        this.readOldCluster(v.getUint32(last * 8), v.getUint32(last * 8 + 4), guestOff + (k - 1) * cs, this.bufB);
        this.bufB.set(data.subarray(dataOff + firstBytes + full, dataOff + done), 0);
        pwriteFull(this.fd, this.bufB, 0, cs, host0 + (k - 1) * cs, this.path);
      }
    }
    // Then the refcounts, then the L2 entries; the old clusters are released after the next flush.
    this.setRefcounts(this.allocStart, k, 1);
    for (let i = 0; i < k; i++) {
      const e = (l2i + i) * 8;
      const oldHi = v.getUint32(e);
      const oldLo = v.getUint32(e + 4);
      const host = host0 + i * cs;
      v.setUint32(e, (HI_COPIED | Math.floor(host / TWO32)) >>> 0);
      v.setUint32(e + 4, host % TWO32);
      this.queueFree(oldHi, oldLo);
    }
    this.l2c.markDirty(slot, l2i * 8, (l2i + k) * 8);
    return done;
  }

  /** The L2 table for L1 entry `l1i`, allocated or copied (if shared with a snapshot) so it can be written. */
  private l2ForWrite(l1i: number): number {
    const hi = this.l1v.getUint32(l1i * 8);
    const old = this.l1Offset0(l1i);
    if (old !== 0 && hi & HI_COPIED) return this.loadL2(old);
    const cs = this.clusterSize;
    if (old !== 0) this.bufA.set(this.l2c.bufs[this.loadL2(old)]);
    else this.bufA.fill(0);
    this.findFree(1);
    const host = this.allocStart * cs;
    pwriteFull(this.fd, this.bufA, 0, cs, host, this.path);
    this.setRefcounts(this.allocStart, 1, 1);
    const slot = this.l2Victim();
    this.l2c.assign(slot, host);
    this.l2c.bufs[slot].set(this.bufA);
    this.l1v.setUint32(l1i * 8, (HI_COPIED | Math.floor(host / TWO32)) >>> 0);
    this.l1v.setUint32(l1i * 8 + 4, host % TWO32);
    this.markL1Dirty(l1i);
    if (old !== 0) this.queueFreeHost(old);
    return slot;
  }

  flush(): void {
    if (this.readOnly) return;
    this.checkOpen();
    this.writeDirtyRefcountBlocks();
    let metadata = this.l1DirtyLo >= 0;
    for (let s = 0; s < this.l2c.bufs.length && !metadata; s++) metadata = this.l2c.dirtyLo[s] >= 0;
    if (metadata) {
      this.sync();
      for (let s = 0; s < this.l2c.bufs.length; s++) if (this.l2c.dirtyLo[s] >= 0) this.writeBackL2(s);
      if (this.l1DirtyLo >= 0) {
        const lo = this.l1DirtyLo * 8;
        pwriteFull(this.fd, this.l1, lo, this.l1DirtyHi * 8 - lo, this.l1Offset + lo, this.path);
        this.l1DirtyLo = -1;
      }
    }
    this.sync();
    // Every reference dropped before this point is now durable: release the clusters.
    const n = this.pendingCount;
    this.pendingCount = 0;
    for (let i = 0; i < n; i++) this.decRef(this.pendingFree[i]);
  }

  discard(offset: number, length: number): void {
    this.checkWritable();
    if (this.version === 2 && this.backing) return; // nothing can express "zero" over a backing file in v2
    this.zeroFullClusters(offset, length, true);
  }

  writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.checkWritable();
    if (this.version === 2 && (this.backing || !unmap)) {
      this.writeZeroData(offset, length);
      return;
    }
    const cs = this.clusterSize;
    const end = offset + length;
    const first = Math.ceil(offset / cs) * cs;
    // The disk's last cluster may extend past its end: zeroing up to the end covers all of it.
    const last = end === this.virtualSize ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
    if (first >= last) {
      this.writeZeroData(offset, length);
      return;
    }
    if (offset < first) this.writeZeroData(offset, first - offset);
    this.zeroClusters(first / cs, (last - first) / cs, unmap);
    if (last < end) this.writeZeroData(last, end - last);
  }

  private zeroFullClusters(offset: number, length: number, unmap: boolean): void {
    const cs = this.clusterSize;
    const end = offset + length;
    const first = Math.ceil(offset / cs) * cs;
    const last = end === this.virtualSize ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
    if (first < last) this.zeroClusters(first / cs, (last - first) / cs, unmap);
  }

  private writeZeroData(offset: number, length: number): void {
    const zero = zeroBuffer();
    while (length > 0) {
      const n = Math.min(length, zero.length);
      this.writeAt(offset, zero, 0, n);
      offset += n;
      length -= n;
    }
  }

  /**
   * Makes `count` whole guest clusters from cluster index `c0` read as zeroes through their L2
   * entries: the zero flag (v3), or "unallocated" when there is no backing file. Without `unmap`,
   * a cluster this image owns keeps its host cluster (zero flag plus offset).
   */
  private zeroClusters(c0: number, count: number, unmap: boolean): void {
    if (this.pendingCount > 65536) this.flush();
    const l2e = this.l2Entries;
    const v3 = this.version === 3;
    const noBacking = this.backing === null;
    while (count > 0) {
      const l1i = Math.floor(c0 / l2e);
      const l2i = c0 - l1i * l2e;
      const n = Math.min(count, l2e - l2i);
      if (this.l1Offset0(l1i) !== 0 || !noBacking) {
        const slot = this.l2ForWrite(l1i);
        const v = this.l2c.views[slot];
        for (let i = l2i; i < l2i + n; i++) {
          const hi = v.getUint32(i * 8);
          const lo = v.getUint32(i * 8 + 4);
          let nhi = 0;
          let nlo = 0;
          if (v3 && !unmap && isOwned(hi, lo)) {
            nhi = hi;
            nlo = (lo | LO_ZERO) >>> 0;
          } else if (v3 && !noBacking) nlo = LO_ZERO;
          if (nhi === hi && nlo === lo) continue;
          v.setUint32(i * 8, nhi);
          v.setUint32(i * 8 + 4, nlo);
          this.l2c.markDirty(slot, i * 8, i * 8 + 8);
          if (nhi === 0) this.queueFree(hi, lo);
        }
      }
      c0 += n;
      count -= n;
    }
  }

  /** Grows the disk to `newSize` bytes (a multiple of 512); the new space reads as zeroes. */
  resize(newSize: number): void {
    this.checkWritable();
    if (newSize < this.virtualSize) {
      throw new DiskImageError(`${this.path}: shrinking a disk is not supported (it would drop data)`);
    }
    if (newSize % 512 !== 0) throw new DiskImageError(`${this.path}: the new size ${newSize} is not a multiple of 512`);
    if (newSize === this.virtualSize) return;
    const cs = this.clusterSize;
    this.flush();
    const need = Math.ceil(newSize / (this.l2Entries * cs));
    const header = new Uint8Array(24); // size, crypt_method, l1_size, l1_table_offset
    const hv = new DataView(header.buffer);
    hv.setUint32(0, Math.floor(newSize / TWO32));
    hv.setUint32(4, newSize % TWO32);
    if (need > this.l1Size) {
      if (need * 8 > MAX_L1_BYTES)
        throw new DiskImageError(`${this.path}: ${newSize} bytes is too big for ${cs}-byte clusters`);
      const clusters = Math.ceil((need * 8) / cs);
      const oldOffset = this.l1Offset;
      const oldClusters = Math.ceil((this.l1Size * 8) / cs);
      const start = this.reserveAtEnd(clusters, 0);
      const table = new Uint8Array(clusters * cs);
      table.set(this.l1.subarray(0, this.l1Size * 8));
      pwriteFull(this.fd, table, 0, table.length, start * cs, this.path);
      this.writeDirtyRefcountBlocks();
      this.sync();
      hv.setUint32(12, need);
      hv.setUint32(16, Math.floor((start * cs) / TWO32));
      hv.setUint32(20, (start * cs) % TWO32);
      pwriteFull(this.fd, header, 0, 24, 24, this.path);
      this.sync();
      this.l1 = table;
      this.l1v = new DataView(table.buffer);
      this.l1Size = need;
      this.l1Offset = start * cs;
      for (let i = 0; i < oldClusters; i++) this.decRef(oldOffset + i * cs);
    } else {
      pwriteFull(this.fd, header, 0, 8, 24, this.path);
    }
    this.virtualSize = newSize;
    this.flush();
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      if (!this.readOnly) {
        this.flush();
        this.writeDirtyRefcountBlocks();
        this.sync();
      }
    } finally {
      closeSync(this.fd);
      this.fd = -1;
      this.backing?.close();
      this.backing = null;
      const done = this.onClose;
      this.onClose = null;
      done?.();
    }
  }

  // ------------------------------------------------------------------------------- L1 and L2

  /** The L2 table offset in L1 entry `i` (0: none). */
  private l1Offset0(i: number): number {
    return (this.l1v.getUint32(i * 8) & HI_OFFSET) * TWO32 + ((this.l1v.getUint32(i * 8 + 4) & LO_OFFSET) >>> 0);
  }

  private markL1Dirty(i: number): void {
    if (this.l1DirtyLo < 0) {
      this.l1DirtyLo = i;
      this.l1DirtyHi = i + 1;
    } else {
      if (i < this.l1DirtyLo) this.l1DirtyLo = i;
      if (i + 1 > this.l1DirtyHi) this.l1DirtyHi = i + 1;
    }
  }

  private loadL2(offset: number): number {
    let slot = this.l2c.find(offset);
    if (slot >= 0) return slot;
    slot = this.l2Victim();
    this.l2c.assign(slot, offset);
    const got = preadFull(this.fd, this.l2c.bufs[slot], 0, this.clusterSize, offset, this.path);
    if (got < this.clusterSize) {
      this.l2c.drop(offset);
      throw new BlockIoError(
        `${this.path}: the L2 table at ${offset} is cut off by the end of the file (truncated image)`,
      );
    }
    return slot;
  }

  private l2Victim(): number {
    const slot = this.l2c.victim();
    if (this.l2c.keys[slot] >= 0 && this.l2c.dirtyLo[slot] >= 0) {
      // Everything the table points at must be durable before the table is.
      this.writeDirtyRefcountBlocks();
      this.sync();
      this.writeBackL2(slot);
    }
    return slot;
  }

  private writeBackL2(slot: number): void {
    const lo = this.l2c.dirtyLo[slot];
    pwriteFull(this.fd, this.l2c.bufs[slot], lo, this.l2c.dirtyHi[slot] - lo, this.l2c.keys[slot] + lo, this.path);
    this.l2c.dirtyLo[slot] = -1;
  }

  // --------------------------------------------------------------------------------- refcounts

  private refcountBlockOffset(bi: number): number {
    return (this.rtv.getUint32(bi * 8) & 0x1fffff) * TWO32 + ((this.rtv.getUint32(bi * 8 + 4) & LO_OFFSET) >>> 0);
  }

  private loadRb(offset: number): number {
    let slot = this.rbc.find(offset);
    if (slot >= 0) return slot;
    slot = this.rbc.victim();
    if (this.rbc.keys[slot] >= 0 && this.rbc.dirtyLo[slot] >= 0) this.writeBackRb(slot);
    this.rbc.assign(slot, offset);
    const got = preadFull(this.fd, this.rbc.bufs[slot], 0, this.clusterSize, offset, this.path);
    if (got < this.clusterSize) {
      this.rbc.drop(offset);
      throw new BlockIoError(`${this.path}: the refcount block at ${offset} is cut off by the end of the file`);
    }
    return slot;
  }

  private writeBackRb(slot: number): void {
    const lo = this.rbc.dirtyLo[slot];
    pwriteFull(this.fd, this.rbc.bufs[slot], lo, this.rbc.dirtyHi[slot] - lo, this.rbc.keys[slot] + lo, this.path);
    this.rbc.dirtyLo[slot] = -1;
  }

  private writeDirtyRefcountBlocks(): void {
    for (let s = 0; s < this.rbc.bufs.length; s++) if (this.rbc.dirtyLo[s] >= 0) this.writeBackRb(s);
  }

  /** Sets the refcount of clusters [c0, c0+n) to `value` (their refcount blocks must exist). */
  private setRefcounts(c0: number, n: number, value: number): void {
    const rbe = this.rbEntries;
    while (n > 0) {
      const bi = Math.floor(c0 / rbe);
      const first = c0 - bi * rbe;
      const k = Math.min(n, rbe - first);
      const slot = this.loadRb(this.refcountBlockOffset(bi));
      const v = this.rbc.views[slot];
      for (let i = first; i < first + k; i++) v.setUint16(i * 2, value);
      this.rbc.markDirty(slot, first * 2, (first + k) * 2);
      c0 += k;
      n -= k;
    }
  }

  /** Drops one reference to the host cluster at `offset`. */
  private decRef(offset: number): void {
    const c = Math.floor(offset / this.clusterSize);
    const bi = Math.floor(c / this.rbEntries);
    const rbOff = bi < this.rtEntries ? this.refcountBlockOffset(bi) : 0;
    if (rbOff === 0)
      throw new BlockIoError(`${this.path}: freeing cluster ${offset}, which has no refcount (corrupt image)`);
    const slot = this.loadRb(rbOff);
    const v = this.rbc.views[slot];
    const i = c - bi * this.rbEntries;
    const r = v.getUint16(i * 2);
    if (r === 0)
      throw new BlockIoError(`${this.path}: freeing cluster ${offset}, whose refcount is already 0 (corrupt image)`);
    v.setUint16(i * 2, r - 1);
    this.rbc.markDirty(slot, i * 2, i * 2 + 2);
    if (r === 1) {
      if (c < this.freeCursor) this.freeCursor = c;
      this.l2c.drop(offset);
      this.compKeyHi = -1;
    }
  }

  /** Queues the host clusters an L2 entry used for release at the next flush. */
  private queueFree(hi: number, lo: number): void {
    if (hi & HI_COMPRESSED) {
      const x = 62 - (this.cbits - 8);
      const hiOffBits = x - 32;
      const off = (hi & ((1 << hiOffBits) - 1)) * TWO32 + (lo >>> 0);
      const sectors = ((hi & 0x3fffffff) >>> hiOffBits) + 1;
      // As QEMU counts it: from the start of the first sector, `sectors` sectors long.
      const start = off - (off % 512);
      const cs = this.clusterSize;
      const end = start + sectors * 512;
      for (let c = Math.floor(start / cs); c * cs < end; c++) this.queueFreeHost(c * cs);
      return;
    }
    const host = (hi & HI_OFFSET) * TWO32 + ((lo & LO_OFFSET) >>> 0);
    if (host !== 0) this.queueFreeHost(host);
  }

  private queueFreeHost(offset: number): void {
    if (this.pendingCount === this.pendingFree.length) {
      const bigger = new Float64Array(this.pendingFree.length * 2);
      bigger.set(this.pendingFree);
      this.pendingFree = bigger;
    }
    this.pendingFree[this.pendingCount++] = offset;
  }

  /**
   * Finds free clusters from the cursor: sets allocStart/allocCount to a run of 1..n clusters whose
   * refcounts are 0 and whose refcount blocks exist. The caller sets their refcounts before it
   * looks for more. Creates refcount blocks and grows the refcount table as needed.
   */
  private findFree(n: number): void {
    const rbe = this.rbEntries;
    let c = this.freeCursor;
    for (;;) {
      const bi = Math.floor(c / rbe);
      if (bi >= this.rtEntries) {
        this.reserveAtEnd(0, c);
        continue;
      }
      const rbOff = this.refcountBlockOffset(bi);
      if (rbOff === 0) {
        this.createRefcountBlock(bi, c);
        c++;
        continue;
      }
      const v = this.rbc.views[this.loadRb(rbOff)];
      let i = c - bi * rbe;
      while (i < rbe && v.getUint16(i * 2) !== 0) i++;
      if (i === rbe) {
        c = (bi + 1) * rbe;
        continue;
      }
      let k = 1;
      while (k < n && i + k < rbe && v.getUint16((i + k) * 2) === 0) k++;
      this.allocStart = bi * rbe + i;
      this.allocCount = k;
      this.freeCursor = this.allocStart + k;
      return;
    }
  }

  /** A new refcount block for block index `bi`, placed in cluster `c` of its own range (so it counts itself). */
  private createRefcountBlock(bi: number, c: number): void {
    const cs = this.clusterSize;
    const slot = this.rbc.victim();
    if (this.rbc.keys[slot] >= 0 && this.rbc.dirtyLo[slot] >= 0) this.writeBackRb(slot);
    this.rbc.assign(slot, c * cs);
    const buf = this.rbc.bufs[slot];
    buf.fill(0);
    this.rbc.views[slot].setUint16((c - bi * this.rbEntries) * 2, 1);
    pwriteFull(this.fd, buf, 0, cs, c * cs, this.path);
    this.sync();
    this.setRefcountTableEntry(bi, c * cs);
  }

  private setRefcountTableEntry(bi: number, offset: number): void {
    this.rtv.setUint32(bi * 8, Math.floor(offset / TWO32));
    this.rtv.setUint32(bi * 8 + 4, offset % TWO32);
    pwriteFull(this.fd, this.rt, bi * 8, 8, this.rtOffset + bi * 8, this.path);
  }

  /**
   * Allocates `k` contiguous clusters at the end of the file (refcounts set to 1) together with the
   * refcount blocks that cover them, and a bigger refcount table if the current one cannot; with
   * k = 0 it only extends the refcount coverage to the end of the file or to cluster `minStart`,
   * whichever is further. Returns the first cluster.
   */
  private reserveAtEnd(k: number, minStart: number): number {
    const cs = this.clusterSize;
    const rbe = this.rbEntries;
    this.writeDirtyRefcountBlocks();
    const start = Math.max(minStart, Math.ceil(fstatSync(this.fd).size / cs));
    let blocks = 0;
    let tableClusters = 0;
    let newEntries = this.rtEntries;
    let firstBi = 0;
    let lastBi = 0;
    for (;;) {
      const end = Math.max(start + k + blocks + tableClusters, start + 1);
      firstBi = Math.floor(start / rbe);
      lastBi = Math.floor((end - 1) / rbe);
      let missing = 0;
      for (let bi = firstBi; bi <= lastBi; bi++)
        if (bi >= this.rtEntries || this.refcountBlockOffset(bi) === 0) missing++;
      let t = 0;
      newEntries = this.rtEntries;
      if (lastBi >= this.rtEntries) {
        newEntries = Math.max(lastBi + 1, this.rtEntries * 2);
        t = Math.ceil((newEntries * 8) / cs);
        newEntries = (t * cs) / 8;
      }
      if (missing === blocks && t === tableClusters) break;
      blocks = missing;
      tableClusters = t;
    }
    if (tableClusters * cs > MAX_REFTABLE_BYTES)
      throw new BlockIoError(`${this.path}: the image cannot grow any further`);
    const end = start + k + blocks + tableClusters;
    // The new refcount blocks, at [start+k, start+k+blocks), in the order of the ranges they cover.
    const newTable = tableClusters > 0 ? new Uint8Array(tableClusters * cs) : null;
    if (newTable) newTable.set(this.rt);
    const ntv = newTable ? new DataView(newTable.buffer) : null;
    const blockBuf = new Uint8Array(cs);
    const bv = new DataView(blockBuf.buffer);
    let placed = 0;
    const newBlockIndex: number[] = [];
    for (let bi = firstBi; bi <= lastBi; bi++) {
      const exists = bi < this.rtEntries && this.refcountBlockOffset(bi) !== 0;
      const lo = Math.max(start, bi * rbe);
      const hi = Math.min(end, (bi + 1) * rbe);
      if (exists) {
        if (lo < hi) this.setRefcounts(lo, hi - lo, 1);
        continue;
      }
      blockBuf.fill(0);
      for (let c = lo; c < hi; c++) bv.setUint16((c - bi * rbe) * 2, 1);
      const at = (start + k + placed++) * cs;
      pwriteFull(this.fd, blockBuf, 0, cs, at, this.path);
      newBlockIndex.push(bi, at);
    }
    this.writeDirtyRefcountBlocks();
    if (newTable && ntv) {
      for (let i = 0; i < newBlockIndex.length; i += 2) {
        ntv.setUint32(newBlockIndex[i] * 8, Math.floor(newBlockIndex[i + 1] / TWO32));
        ntv.setUint32(newBlockIndex[i] * 8 + 4, newBlockIndex[i + 1] % TWO32);
      }
      const tableAt = (start + k + blocks) * cs;
      pwriteFull(this.fd, newTable, 0, newTable.length, tableAt, this.path);
      this.sync();
      const hdr = new Uint8Array(12);
      const hv = new DataView(hdr.buffer);
      hv.setUint32(0, Math.floor(tableAt / TWO32));
      hv.setUint32(4, tableAt % TWO32);
      hv.setUint32(8, tableClusters);
      pwriteFull(this.fd, hdr, 0, 12, 48, this.path);
      this.sync();
      const oldOffset = this.rtOffset;
      const oldClusters = this.rtClusters;
      this.rt = newTable;
      this.rtv = ntv;
      this.rtOffset = tableAt;
      this.rtClusters = tableClusters;
      this.rtEntries = newEntries;
      for (let i = 0; i < oldClusters; i++) this.decRef(oldOffset + i * cs);
    } else {
      this.sync();
      for (let i = 0; i < newBlockIndex.length; i += 2)
        this.setRefcountTableEntry(newBlockIndex[i], newBlockIndex[i + 1]);
    }
    return start;
  }

  // ------------------------------------------------------------------------------------ misc

  private sync(): void {
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      throw new BlockIoError(`flush of ${this.path} failed: ${(e as Error).message}`);
    }
  }

  private checkOpen(): void {
    if (this.fd < 0) throw new BlockIoError(`${this.path} is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new BlockIoError(`${this.path} is open read-only`);
  }
}

/** A standard cluster this image owns alone (refcount 1), not zero-flagged: writable in place. */
function isInPlace(hi: number, lo: number): boolean {
  return isOwned(hi, lo) && (lo & LO_ZERO) === 0;
}

/** A standard cluster with a host offset and QCOW_OFLAG_COPIED (refcount 1), zero-flagged or not. */
function isOwned(hi: number, lo: number): boolean {
  return hi >>> 30 === 2 && ((hi & HI_OFFSET) !== 0 || (lo & LO_OFFSET) !== 0);
}

// ------------------------------------------------------------------------------------- creating

export interface Qcow2CreateOptions {
  size: number;
  clusterSize?: number;
  /** Stored as given: a relative name is relative to the new image's directory. */
  backingFile?: string;
  backingFormat?: string;
}

/**
 * Writes a new, empty version 3 qcow2 image at `path` (which must not exist): header with the
 * feature name table and backing file format extension, refcount table and blocks, L1 table.
 */
export function writeEmptyQcow2(path: string, opts: Qcow2CreateOptions): void {
  const cs = opts.clusterSize ?? 65536;
  if (!Number.isInteger(cs) || cs < 512 || cs > 2 << 20 || (cs & (cs - 1)) !== 0) {
    throw new DiskImageError(`${path}: the cluster size must be a power of two from 512 bytes to 2 MiB, not ${cs}`);
  }
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) {
    throw new DiskImageError(`${path}: the disk size must be a multiple of 512 bytes, not ${size}`);
  }
  const l2e = cs / 8;
  const l1Size = Math.max(1, Math.ceil(size / (l2e * cs)));
  if (l1Size * 8 > MAX_L1_BYTES) throw new DiskImageError(`${path}: ${size} bytes is too big for ${cs}-byte clusters`);
  const rbe = cs / 2;
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  let rtClusters = 1;
  let blocks = 1;
  for (;;) {
    const total = 1 + rtClusters + blocks + l1Clusters;
    const b = Math.ceil(total / rbe);
    const r = Math.ceil((b * 8) / cs);
    if (b === blocks && r === rtClusters) break;
    blocks = b;
    rtClusters = r;
  }
  const total = 1 + rtClusters + blocks + l1Clusters;
  const rtAt = cs;
  const blocksAt = (1 + rtClusters) * cs;
  const l1At = (1 + rtClusters + blocks) * cs;

  const enc = new TextEncoder();
  const head = new Uint8Array((1 + rtClusters + blocks) * cs);
  const v = new DataView(head.buffer);
  v.setUint32(0, QCOW2_MAGIC);
  v.setUint32(4, 3);
  v.setUint32(20, Math.log2(cs));
  v.setUint32(24, Math.floor(size / TWO32));
  v.setUint32(28, size % TWO32);
  v.setUint32(36, l1Size);
  v.setUint32(44, l1At); // l1_table_offset (below 4 GiB: header + small tables)
  v.setUint32(52, rtAt);
  v.setUint32(56, rtClusters);
  v.setUint32(96, 4); // refcount_order: 16-bit refcounts
  v.setUint32(100, HEADER_V3_LENGTH);
  // Header extensions.
  const exts: [number, Uint8Array][] = [];
  if (opts.backingFormat) exts.push([EXT_BACKING_FORMAT, enc.encode(opts.backingFormat)]);
  const features: [number, number, string][] = [
    [0, 0, "dirty bit"],
    [0, 1, "corrupt bit"],
    [0, 2, "external data file"],
    [0, 3, "compression type"],
    [0, 4, "extended L2 entries"],
    [1, 0, "lazy refcounts"],
    [2, 0, "bitmaps"],
    [2, 1, "raw external data"],
  ];
  const table = new Uint8Array(features.length * 48);
  features.forEach(([type, bit, name], i) => {
    table[i * 48] = type;
    table[i * 48 + 1] = bit;
    table.set(enc.encode(name), i * 48 + 2);
  });
  const backingName = opts.backingFile ? enc.encode(opts.backingFile) : null;
  if (backingName && backingName.length > 1023)
    throw new DiskImageError(`${path}: the backing file name is longer than 1023 bytes`);
  const extBytes = (list: [number, Uint8Array][]) => list.reduce((n, [, d]) => n + 8 + align8(d.length), 8);
  // The feature name table is optional: leave it out when the first cluster is too small for it.
  if (HEADER_V3_LENGTH + extBytes([...exts, [EXT_FEATURE_TABLE, table]]) + (backingName?.length ?? 0) <= cs) {
    exts.push([EXT_FEATURE_TABLE, table]);
  }
  let pos = HEADER_V3_LENGTH;
  for (const [type, data] of exts) {
    v.setUint32(pos, type);
    v.setUint32(pos + 4, data.length);
    head.set(data, pos + 8);
    pos += 8 + align8(data.length);
  }
  pos += 8; // end of extensions
  if (backingName) {
    if (pos + backingName.length > cs)
      throw new DiskImageError(`${path}: the backing file name does not fit in one cluster`);
    v.setUint32(12, pos); // backing_file_offset
    v.setUint32(16, backingName.length);
    head.set(backingName, pos);
  }
  // Refcount table and blocks: clusters [0, total) are in use.
  for (let b = 0; b < blocks; b++) v.setUint32(rtAt + b * 8 + 4, blocksAt + b * cs);
  for (let c = 0; c < total; c++) v.setUint16(blocksAt + c * 2, 1);

  let fd: number;
  try {
    fd = openSync(path, "wx", PRIVATE_FILE_MODE);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") throw new DiskImageError(`${path} already exists; Yun will not overwrite it`);
    throw new DiskImageError(`cannot create ${path}: ${(e as Error).message}`);
  }
  try {
    for (let off = 0; off < head.length;) off += writeSync(fd, head, off, head.length - off, off);
    ftruncateSync(fd, total * cs);
    fdatasyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(path);
    throw new DiskImageError(`cannot write ${path}: ${(e as Error).message}`);
  }
  closeSync(fd);
}

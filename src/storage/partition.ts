/**
 * Partition tables, read-only: GPT (UEFI 2.10 §5.3, both CRC32s checked, the backup header used
 * when the primary is corrupt, as U-Boot and Linux do) and MBR (the four primary entries). Yun
 * reads them before a disk boots through firmware, so that a disk the firmware cannot boot is
 * reported by Yun in one sentence instead of by U-Boot at its prompt.
 */
import { crc32 } from "node:zlib";

/** What the partition readers need of a disk image: its size and positioned reads. */
export interface DiskReader {
  readonly size: number;
  /** Fills `buf` with the bytes at `offset`. */
  read(offset: number, buf: Uint8Array): void;
}

export const SECTOR = 512;

/** GPT partition type GUIDs Yun cares about (lower case, in the usual text form). */
export const GPT_TYPE = {
  esp: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
  linuxData: "0fc63daf-8483-4772-8e79-3d69d8477de4",
  linuxRootRiscv64: "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
  xbootldr: "bc13c2ff-59e6-4262-a352-b275fd6f7172",
} as const;

/** GPT attribute bit 2: "legacy BIOS bootable", which U-Boot's distro boot treats as the boot flag. */
const GPT_LEGACY_BOOTABLE = 1n << 2n;

export interface Partition {
  /** 1-based, as U-Boot (virtio 0:N) and Linux (/dev/vdaN) number them. */
  index: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
  /** The GPT type GUID, or the MBR type byte as "0x83". */
  type: string;
  /**
   * What U-Boot's `part list -bootable` lists, and so what its distro boot scans: GPT partitions
   * with the legacy-BIOS-bootable attribute or of the EFI system type; MBR partitions with the boot
   * flag (0x80) or of type 0xef.
   */
  bootable: boolean;
  /** An EFI system partition (GPT type, or MBR type 0xef). */
  esp: boolean;
  /** A Linux file system partition (GPT Linux data/root/XBOOTLDR, or MBR type 0x83). */
  linux: boolean;
  /** The GPT partition name ("" for MBR). */
  name: string;
}

export interface PartitionTable {
  scheme: "gpt" | "mbr";
  partitions: Partition[];
  /** Set when the primary GPT was corrupt and the backup was used. */
  note?: string;
}

/** A partition table that is there but cannot be trusted, in one sentence. */
export class PartitionTableError extends Error {}

function readAt(disk: DiskReader, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  if (offset >= 0 && offset + length <= disk.size) disk.read(offset, buf);
  return buf;
}

/** A GUID from its on-disk mixed-endian form. */
export function formatGuid(b: Uint8Array): string {
  const h = (i: number): string => b[i].toString(16).padStart(2, "0");
  return (
    h(3) +
    h(2) +
    h(1) +
    h(0) +
    "-" +
    h(5) +
    h(4) +
    "-" +
    h(7) +
    h(6) +
    "-" +
    h(8) +
    h(9) +
    "-" +
    h(10) +
    h(11) +
    h(12) +
    h(13) +
    h(14) +
    h(15)
  );
}

interface GptHeader {
  entriesLba: bigint;
  count: number;
  entrySize: number;
  entriesCrc: number;
}

/** The GPT header at `lba` if its signature and CRC32 check out; otherwise why not. */
function readGptHeader(disk: DiskReader, lba: bigint): GptHeader | string {
  const sector = readAt(disk, Number(lba) * SECTOR, SECTOR);
  const view = new DataView(sector.buffer);
  if (new TextDecoder().decode(sector.subarray(0, 8)) !== "EFI PART") return "has no GPT signature";
  const headerSize = view.getUint32(12, true);
  if (headerSize < 92 || headerSize > SECTOR) return `has a header size of ${headerSize} bytes`;
  const stored = view.getUint32(16, true);
  const copy = sector.slice(0, headerSize);
  new DataView(copy.buffer).setUint32(16, 0, true);
  if (crc32(copy) !== stored) return "header's CRC32 does not match";
  if (view.getBigUint64(24, true) !== lba) return "header is not where it says it is";
  const count = view.getUint32(80, true);
  const entrySize = view.getUint32(84, true);
  if (entrySize < 128 || entrySize % 8 !== 0 || count > 4096 || count * entrySize > 1024 * 1024) {
    return `declares ${count} entries of ${entrySize} bytes`;
  }
  return { entriesLba: view.getBigUint64(72, true), count, entrySize, entriesCrc: view.getUint32(88, true) };
}

/** The entries a valid header describes, if their CRC32 checks out; otherwise why not. */
function readGptEntries(disk: DiskReader, h: GptHeader): Partition[] | string {
  const bytes = h.count * h.entrySize;
  const offset = Number(h.entriesLba) * SECTOR;
  if (offset + bytes > disk.size) return "entries lie past the end of the disk";
  const raw = readAt(disk, offset, bytes);
  if (crc32(raw) !== h.entriesCrc) return "partition entries' CRC32 does not match";
  const out: Partition[] = [];
  const view = new DataView(raw.buffer);
  for (let i = 0; i < h.count; i++) {
    const e = raw.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = view.getBigUint64(i * h.entrySize + 32, true);
    const last = view.getBigUint64(i * h.entrySize + 40, true);
    const attrs = view.getBigUint64(i * h.entrySize + 48, true);
    const type = formatGuid(e.subarray(0, 16));
    let name = "";
    for (let c = 56; c + 1 < 128; c += 2) {
      const code = e[c] | (e[c + 1] << 8);
      if (code === 0) break;
      name += String.fromCharCode(code);
    }
    if (last < first) return `partition ${i + 1} ends before it starts`;
    const start = Number(first) * SECTOR;
    const size = Number(last - first + 1n) * SECTOR;
    if (start + size > disk.size) return `partition ${i + 1} extends past the end of the disk`;
    out.push({
      index: i + 1,
      start,
      size,
      type,
      bootable: (attrs & GPT_LEGACY_BOOTABLE) !== 0n || type === GPT_TYPE.esp,
      esp: type === GPT_TYPE.esp,
      linux: type === GPT_TYPE.linuxData || type === GPT_TYPE.linuxRootRiscv64 || type === GPT_TYPE.xbootldr,
      name,
    });
  }
  return out;
}

/** Primary GPT, else the backup at the disk's last sector; a PartitionTableError if neither is whole. */
function readGpt(disk: DiskReader): PartitionTable {
  const lastLba = BigInt(Math.floor(disk.size / SECTOR) - 1);
  const tryAt = (lba: bigint): Partition[] | string => {
    const h = readGptHeader(disk, lba);
    return typeof h === "string" ? h : readGptEntries(disk, h);
  };
  const primary = tryAt(1n);
  if (typeof primary !== "string") return { scheme: "gpt", partitions: primary };
  const backup = tryAt(lastLba);
  if (typeof backup !== "string") {
    return { scheme: "gpt", partitions: backup, note: `the primary GPT is corrupt (its ${primary}); using the backup` };
  }
  throw new PartitionTableError(`its GPT is corrupt: the primary's ${primary}, and the backup ${backup}`);
}

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  sectors: number;
}

function mbrEntries(mbr: Uint8Array): MbrEntry[] {
  const view = new DataView(mbr.buffer, mbr.byteOffset, mbr.byteLength);
  return [0, 1, 2, 3].map((i) => {
    const at = 446 + i * 16;
    return {
      status: mbr[at],
      type: mbr[at + 4],
      lba: view.getUint32(at + 8, true),
      sectors: view.getUint32(at + 12, true),
    };
  });
}

/**
 * Which partition table the disk has, without checking it: "gpt" (a protective MBR or a GPT
 * signature), "mbr", or null for none (a bare file system such as Yun's own root.ext4, or an
 * empty disk).
 */
export function partitionScheme(disk: DiskReader): "gpt" | "mbr" | null {
  if (disk.size < 2 * SECTOR) return null;
  const mbr = readAt(disk, 0, SECTOR);
  const hasMbr = mbr[510] === 0x55 && mbr[511] === 0xaa;
  const entries = mbrEntries(mbr);
  if (
    (hasMbr && entries.some((e) => e.type === 0xee)) ||
    new TextDecoder().decode(readAt(disk, SECTOR, 8)) === "EFI PART"
  ) {
    return "gpt";
  }
  if (!hasMbr) return null;
  // A FAT or NTFS boot sector also ends in 55 AA: an MBR's entries have status 0x00 or 0x80.
  const used = entries.filter((e) => e.type !== 0 && e.sectors !== 0);
  if (used.length === 0 || entries.some((e) => e.status !== 0 && e.status !== 0x80)) return null;
  return "mbr";
}

/**
 * The disk's partition table, or null when it has none (see partitionScheme). Throws
 * PartitionTableError for a table that is there but corrupt.
 */
export function readPartitionTable(disk: DiskReader): PartitionTable | null {
  const scheme = partitionScheme(disk);
  if (scheme === null) return null;
  if (scheme === "gpt") return readGpt(disk);
  const partitions: Partition[] = [];
  for (const [i, e] of mbrEntries(readAt(disk, 0, SECTOR)).entries()) {
    if (e.type === 0 || e.sectors === 0) continue;
    if (e.type === 0x05 || e.type === 0x0f || e.type === 0x85) continue; // extended: logical partitions not read
    const start = e.lba * SECTOR;
    const size = e.sectors * SECTOR;
    if (e.lba === 0 || start + size > disk.size) {
      throw new PartitionTableError(`its MBR's partition ${i + 1} extends past the end of the disk`);
    }
    partitions.push({
      index: i + 1,
      start,
      size,
      type: `0x${e.type.toString(16).padStart(2, "0")}`,
      bootable: e.status === 0x80 || e.type === 0xef,
      esp: e.type === 0xef,
      linux: e.type === 0x83,
      name: "",
    });
  }
  return { scheme: "mbr", partitions };
}

/** A window of a disk: one partition read as a disk of its own. */
export function partitionReader(disk: DiskReader, p: Partition): DiskReader {
  return {
    size: p.size,
    read: (offset, buf) => {
      if (offset < 0 || offset + buf.length > p.size) throw new RangeError("read past the end of the partition");
      disk.read(p.start + offset, buf);
    },
  };
}

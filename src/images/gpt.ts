/**
 * A GUID Partition Table writer for the images' raw disks: protective MBR, primary header and
 * entry array at LBA 1-33, backup entry array and header at the end of the disk (UEFI 2.10, 5.3).
 * Only what an image needs: 512-byte sectors, 128 entries of 128 bytes.
 */
import { createHash } from "node:crypto";
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import { crc32 } from "node:zlib";
import { ImageError } from "./util.js";

export const SECTOR = 512;
const ENTRY_COUNT = 128;
const ENTRY_SIZE = 128;
/** Sectors the entry array takes (128 × 128 bytes). */
const ENTRY_SECTORS = (ENTRY_COUNT * ENTRY_SIZE) / SECTOR;

/** Partition type "Linux filesystem data". */
export const LINUX_FILESYSTEM_TYPE = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/** Attribute bit 2: "legacy BIOS bootable", which U-Boot's distro boot looks for. */
export const LEGACY_BIOS_BOOTABLE = 1n << 2n;

export interface GptPartition {
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  /** Inclusive. */
  lastLba: number;
  attributes: bigint;
  name: string;
}

export interface GptLayout {
  diskBytes: number;
  diskGuid: string;
  partitions: GptPartition[];
}

/** First LBA a partition may use, and the last (inclusive), for a disk of `diskBytes`. */
export function usableLbas(diskBytes: number): { first: number; last: number } {
  const sectors = Math.floor(diskBytes / SECTOR);
  return { first: 2 + ENTRY_SECTORS, last: sectors - 2 - ENTRY_SECTORS };
}

/** A GUID derived from `seed` (RFC 4122 version 4 layout), so rebuilt disks get the same ones. */
export function guidFromSeed(seed: string): string {
  const h = createHash("sha256").update(seed).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** The on-disk form of a GUID: the first three fields little-endian, the rest as written. */
export function guidBytes(guid: string): Buffer {
  const hex = guid.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new ImageError(`"${guid}" is not a GUID`);
  const b = Buffer.from(hex, "hex");
  const out = Buffer.alloc(16);
  out.writeUInt32LE(b.readUInt32BE(0), 0);
  out.writeUInt16LE(b.readUInt16BE(4), 4);
  out.writeUInt16LE(b.readUInt16BE(6), 6);
  b.copy(out, 8, 8, 16);
  return out;
}

function header(layout: GptLayout, entriesCrc: number, primary: boolean): Buffer {
  const sectors = Math.floor(layout.diskBytes / SECTOR);
  const { first, last } = usableLbas(layout.diskBytes);
  const h = Buffer.alloc(SECTOR);
  h.write("EFI PART", 0, "latin1");
  h.writeUInt32LE(0x00010000, 8); // revision 1.0
  h.writeUInt32LE(92, 12); // header size
  const self = primary ? 1 : sectors - 1;
  const other = primary ? sectors - 1 : 1;
  h.writeBigUInt64LE(BigInt(self), 24);
  h.writeBigUInt64LE(BigInt(other), 32);
  h.writeBigUInt64LE(BigInt(first), 40);
  h.writeBigUInt64LE(BigInt(last), 48);
  guidBytes(layout.diskGuid).copy(h, 56);
  h.writeBigUInt64LE(BigInt(primary ? 2 : sectors - 1 - ENTRY_SECTORS), 72);
  h.writeUInt32LE(ENTRY_COUNT, 80);
  h.writeUInt32LE(ENTRY_SIZE, 84);
  h.writeUInt32LE(entriesCrc, 88);
  h.writeUInt32LE(crc32(h.subarray(0, 92)), 16);
  return h;
}

/** The protective MBR, the two headers and entry arrays, each with the byte offset it goes to. */
export function gptStructures(layout: GptLayout): { offset: number; data: Buffer }[] {
  if (layout.diskBytes % SECTOR !== 0) throw new ImageError(`disk size ${layout.diskBytes} is not a multiple of 512`);
  const sectors = layout.diskBytes / SECTOR;
  const { first, last } = usableLbas(layout.diskBytes);
  if (layout.partitions.length > ENTRY_COUNT) throw new ImageError("too many partitions");
  const entries = Buffer.alloc(ENTRY_COUNT * ENTRY_SIZE);
  layout.partitions.forEach((p, i) => {
    if (p.firstLba < first || p.lastLba > last || p.lastLba < p.firstLba) {
      throw new ImageError(`partition ${i + 1} (LBA ${p.firstLba}-${p.lastLba}) is outside ${first}-${last}`);
    }
    const e = entries.subarray(i * ENTRY_SIZE, (i + 1) * ENTRY_SIZE);
    guidBytes(p.typeGuid).copy(e, 0);
    guidBytes(p.uniqueGuid).copy(e, 16);
    e.writeBigUInt64LE(BigInt(p.firstLba), 32);
    e.writeBigUInt64LE(BigInt(p.lastLba), 40);
    e.writeBigUInt64LE(p.attributes, 48);
    const name = Buffer.from(p.name, "utf16le");
    if (name.length > 72) throw new ImageError(`partition name "${p.name}" is longer than 36 characters`);
    name.copy(e, 56);
  });
  const entriesCrc = crc32(entries);

  const mbr = Buffer.alloc(SECTOR);
  // One partition of type 0xEE covering the disk (capped at 2^32-1 sectors), so MBR-only tools keep off.
  mbr[446 + 4] = 0xee;
  mbr.writeUInt8(0x00, 446 + 1);
  mbr.writeUInt8(0x02, 446 + 2); // CHS of LBA 1
  mbr.writeUInt8(0xff, 446 + 5);
  mbr.writeUInt8(0xff, 446 + 6);
  mbr.writeUInt8(0xff, 446 + 7);
  mbr.writeUInt32LE(1, 446 + 8);
  mbr.writeUInt32LE(Math.min(sectors - 1, 0xffffffff), 446 + 12);
  mbr.writeUInt16LE(0xaa55, 510);

  return [
    { offset: 0, data: mbr },
    { offset: SECTOR, data: header(layout, entriesCrc, true) },
    { offset: 2 * SECTOR, data: entries },
    { offset: (sectors - 1 - ENTRY_SECTORS) * SECTOR, data: entries },
    { offset: (sectors - 1) * SECTOR, data: header(layout, entriesCrc, false) },
  ];
}

/** Writes the partition table into the existing file `path`, making it `diskBytes` long. */
export function writeGpt(path: string, layout: GptLayout): void {
  const fd = openSync(path, "r+");
  try {
    ftruncateSync(fd, layout.diskBytes);
    for (const s of gptStructures(layout)) {
      let off = 0;
      while (off < s.data.length) off += writeSync(fd, s.data, off, s.data.length - off, s.offset + off);
    }
  } finally {
    closeSync(fd);
  }
}

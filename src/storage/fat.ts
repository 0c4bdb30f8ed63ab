/**
 * A small read-only FAT12/16/32 reader (Microsoft's FAT specification, 2005): enough to find a file
 * by path, with long file names, and read its first bytes. Yun uses it to look into an EFI system
 * partition before booting a disk through firmware. Names compare case-insensitively, as FAT does.
 */
import type { DiskReader } from "./partition.js";

/** A FAT volume Yun cannot read, in one sentence. */
export class FatError extends Error {}

interface FatEntry {
  name: string;
  directory: boolean;
  cluster: number;
  size: number;
}

const ATTR_LFN = 0x0f;
const ATTR_DIRECTORY = 0x10;
const ATTR_VOLUME = 0x08;

export class FatVolume {
  readonly kind: "FAT12" | "FAT16" | "FAT32";
  private readonly clusterBytes: number;
  private readonly fatOffset: number;
  private readonly rootOffset: number;
  private readonly rootBytes: number;
  private readonly rootCluster: number;
  private readonly dataOffset: number;
  private readonly clusters: number;

  /** Reads the boot sector; throws FatError when the volume is not FAT. */
  constructor(private readonly disk: DiskReader) {
    const bs = new Uint8Array(512);
    if (disk.size < 512) throw new FatError("the volume is too small for FAT");
    disk.read(0, bs);
    const v = new DataView(bs.buffer);
    const bytesPerSector = v.getUint16(11, true);
    const sectorsPerCluster = bs[13];
    const reserved = v.getUint16(14, true);
    const fats = bs[16];
    const rootEntries = v.getUint16(17, true);
    const total = v.getUint16(19, true) || v.getUint32(32, true);
    const fatSectors = v.getUint16(22, true) || v.getUint32(36, true);
    if (
      bs[510] !== 0x55 ||
      bs[511] !== 0xaa ||
      ![512, 1024, 2048, 4096].includes(bytesPerSector) ||
      sectorsPerCluster === 0 ||
      (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0 ||
      reserved === 0 ||
      fats === 0 ||
      fatSectors === 0 ||
      total === 0
    ) {
      throw new FatError("the volume has no FAT boot sector");
    }
    this.clusterBytes = sectorsPerCluster * bytesPerSector;
    this.fatOffset = reserved * bytesPerSector;
    this.rootOffset = this.fatOffset + fats * fatSectors * bytesPerSector;
    this.rootBytes = rootEntries * 32;
    const rootSectors = Math.ceil(this.rootBytes / bytesPerSector);
    this.dataOffset = this.rootOffset + rootSectors * bytesPerSector;
    const dataSectors = total - (reserved + fats * fatSectors + rootSectors);
    this.clusters = Math.floor(dataSectors / sectorsPerCluster);
    // The FAT type follows from the cluster count alone (the specification's rule).
    this.kind = this.clusters < 4085 ? "FAT12" : this.clusters < 65525 ? "FAT16" : "FAT32";
    this.rootCluster = this.kind === "FAT32" ? v.getUint32(44, true) : 0;
    if (this.dataOffset > disk.size) throw new FatError("the FAT volume is larger than its partition");
  }

  private read(offset: number, length: number): Uint8Array {
    const buf = new Uint8Array(length);
    if (offset + length > this.disk.size) throw new FatError("the FAT volume points past its end");
    this.disk.read(offset, buf);
    return buf;
  }

  /** The FAT entry of `cluster`: the next cluster of its chain, or ≥ the end marker. */
  private next(cluster: number): number {
    if (this.kind === "FAT12") {
      const at = this.fatOffset + Math.floor(cluster * 1.5);
      const b = this.read(at, 2);
      const pair = b[0] | (b[1] << 8);
      return cluster & 1 ? pair >> 4 : pair & 0xfff;
    }
    if (this.kind === "FAT16") {
      const b = this.read(this.fatOffset + cluster * 2, 2);
      return b[0] | (b[1] << 8);
    }
    const b = this.read(this.fatOffset + cluster * 4, 4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) & 0x0fffffff;
  }

  private isData(cluster: number): boolean {
    return cluster >= 2 && cluster < this.clusters + 2;
  }

  /** Up to `limit` bytes of the cluster chain from `first` (loops and bad links end it). */
  private readChain(first: number, limit: number): Uint8Array {
    const parts: Uint8Array[] = [];
    let got = 0;
    let c = first;
    for (let steps = 0; this.isData(c) && got < limit && steps <= this.clusters; steps++) {
      const n = Math.min(this.clusterBytes, limit - got);
      parts.push(this.read(this.dataOffset + (c - 2) * this.clusterBytes, n));
      got += n;
      c = this.next(c);
    }
    const out = new Uint8Array(got);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** The entries of a directory (cluster 0: the root), long names assembled. */
  private list(cluster: number): FatEntry[] {
    const raw =
      cluster === 0
        ? this.kind === "FAT32"
          ? this.readChain(this.rootCluster, 4 * 1024 * 1024)
          : this.read(this.rootOffset, this.rootBytes)
        : this.readChain(cluster, 4 * 1024 * 1024);
    const out: FatEntry[] = [];
    let lfn: string[] = [];
    for (let at = 0; at + 32 <= raw.length; at += 32) {
      const e = raw.subarray(at, at + 32);
      if (e[0] === 0) break;
      if (e[0] === 0xe5) {
        lfn = [];
        continue;
      }
      const attr = e[11];
      if (attr === ATTR_LFN) {
        let part = "";
        for (const o of [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]) {
          const code = e[o] | (e[o + 1] << 8);
          if (code === 0 || code === 0xffff) break;
          part += String.fromCharCode(code);
        }
        const seq = e[0] & 0x1f;
        lfn[seq - 1] = part;
        continue;
      }
      if (attr & ATTR_VOLUME) {
        lfn = [];
        continue;
      }
      const dec = (b: Uint8Array): string => String.fromCharCode(...b).replace(/ +$/, "");
      let base = dec(e.subarray(0, 8));
      let ext = dec(e.subarray(8, 11));
      if (e[0] === 0x05) base = "\u00e5" + base.slice(1);
      if (e[12] & 0x08) base = base.toLowerCase();
      if (e[12] & 0x10) ext = ext.toLowerCase();
      const short = ext ? `${base}.${ext}` : base;
      const long = lfn.length > 0 && lfn.every((p) => p !== undefined) ? lfn.join("") : "";
      lfn = [];
      const hi = this.kind === "FAT32" ? e[20] | (e[21] << 8) : 0;
      out.push({
        name: long || short,
        directory: (attr & ATTR_DIRECTORY) !== 0,
        cluster: (hi << 16) | e[26] | (e[27] << 8),
        size: (e[28] | (e[29] << 8) | (e[30] << 16) | (e[31] << 24)) >>> 0,
      });
    }
    return out;
  }

  private lookup(path: string): FatEntry | undefined {
    const names = path.split("/").filter((p) => p !== "");
    let dir = 0;
    let found: FatEntry | undefined;
    for (const [i, n] of names.entries()) {
      found = this.list(dir).find((e) => e.name.toLowerCase() === n.toLowerCase());
      if (found === undefined) return undefined;
      if (i < names.length - 1) {
        if (!found.directory) return undefined;
        dir = found.cluster;
      }
    }
    return found;
  }

  /** Whether a regular file is at `path` ("/EFI/BOOT/BOOTRISCV64.EFI"). */
  exists(path: string): boolean {
    const e = this.lookup(path);
    return e !== undefined && !e.directory;
  }

  /** The first `limit` bytes (at most the file's size) of the file at `path`, or undefined. */
  readFile(path: string, limit = Infinity): Uint8Array | undefined {
    const e = this.lookup(path);
    if (e === undefined || e.directory) return undefined;
    return this.readChain(e.cluster, Math.min(e.size, limit));
  }
}

/** Whether the volume starts with a FAT boot sector. */
export function isFat(disk: DiskReader): boolean {
  try {
    new FatVolume(disk);
    return true;
  } catch {
    return false;
  }
}

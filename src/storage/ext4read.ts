/**
 * A small read-only ext4 reader (the kernel's Documentation/filesystems/ext4): the superblock, group
 * descriptors (32- or 64-bit), inodes, extent trees, and directories, linear or hashed (htree
 * blocks are scanned as linear blocks: index blocks hold one empty entry, leaves hold the names).
 * Symbolic links are followed. Yun uses it to find extlinux.conf and what it names on a partition
 * before booting a disk through firmware.
 */
import type { DiskReader } from "./partition.js";

/** An ext4 volume Yun cannot read, in one sentence. */
export class Ext4Error extends Error {}

const MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;
const EXTENTS_FL = 0x80000;
const INLINE_DATA_FL = 0x10000000;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const ROOT_INODE = 2;

interface Inode {
  mode: number;
  size: number;
  flags: number;
  block: Uint8Array;
}

export class Ext4Volume {
  private readonly blockSize: number;
  private readonly inodesPerGroup: number;
  private readonly inodeSize: number;
  private readonly descSize: number;
  private readonly descOffset: number;
  private readonly groups: number;

  /** Reads the superblock; throws Ext4Error when the volume is not ext2/3/4. */
  constructor(private readonly disk: DiskReader) {
    if (disk.size < 2048) throw new Ext4Error("the volume is too small for ext4");
    const sb = new Uint8Array(1024);
    disk.read(1024, sb);
    const v = new DataView(sb.buffer);
    if (v.getUint16(56, true) !== MAGIC) throw new Ext4Error("the volume has no ext4 superblock");
    const logBlock = v.getUint32(24, true);
    if (logBlock > 6) throw new Ext4Error("the ext4 volume has an unsupported block size");
    this.blockSize = 1024 << logBlock;
    this.inodesPerGroup = v.getUint32(40, true);
    const blocksPerGroup = v.getUint32(32, true);
    const revision = v.getUint32(76, true);
    this.inodeSize = revision === 0 ? 128 : v.getUint16(88, true);
    const incompat = v.getUint32(96, true);
    this.descSize = incompat & INCOMPAT_64BIT ? Math.max(32, v.getUint16(254, true)) : 32;
    const firstData = v.getUint32(20, true);
    const blocks = v.getUint32(4, true) + (incompat & INCOMPAT_64BIT ? v.getUint32(336, true) * 2 ** 32 : 0);
    if (this.inodesPerGroup === 0 || blocksPerGroup === 0 || this.inodeSize < 128) {
      throw new Ext4Error("the ext4 superblock is damaged");
    }
    this.groups = Math.ceil((blocks - firstData) / blocksPerGroup);
    this.descOffset = (firstData + 1) * this.blockSize;
  }

  private read(offset: number, length: number): Uint8Array {
    if (offset < 0 || offset + length > this.disk.size) throw new Ext4Error("the ext4 volume points past its end");
    const buf = new Uint8Array(length);
    this.disk.read(offset, buf);
    return buf;
  }

  private inode(n: number): Inode {
    const group = Math.floor((n - 1) / this.inodesPerGroup);
    if (n < 1 || group >= this.groups) throw new Ext4Error(`the ext4 volume names a bad inode ${n}`);
    const d = new DataView(this.read(this.descOffset + group * this.descSize, this.descSize).buffer);
    const table = d.getUint32(8, true) + (this.descSize >= 64 ? d.getUint32(0x28, true) * 2 ** 32 : 0);
    const at = table * this.blockSize + ((n - 1) % this.inodesPerGroup) * this.inodeSize;
    const raw = this.read(at, 128);
    const v = new DataView(raw.buffer);
    return {
      mode: v.getUint16(0, true),
      size: v.getUint32(4, true) + v.getUint32(108, true) * 2 ** 32,
      flags: v.getUint32(32, true),
      block: raw.slice(40, 100),
    };
  }

  /** The physical blocks of an inode's logical blocks 0..count-1, in order (holes as -1). */
  private blocks(ino: Inode, count: number): number[] {
    if (ino.flags & INLINE_DATA_FL) throw new Ext4Error("the ext4 volume uses inline data, which Yun does not read");
    const out = new Array<number>(count).fill(-1);
    if (!(ino.flags & EXTENTS_FL)) {
      // Block maps (ext2/3 files): the twelve direct blocks are enough for the small files read here.
      const v = new DataView(ino.block.buffer, ino.block.byteOffset);
      for (let i = 0; i < Math.min(count, 12); i++) out[i] = v.getUint32(i * 4, true) || -1;
      return out;
    }
    const walk = (node: Uint8Array, depth: number): void => {
      const v = new DataView(node.buffer, node.byteOffset, node.byteLength);
      if (v.getUint16(0, true) !== 0xf30a) throw new Ext4Error("the ext4 volume has a damaged extent tree");
      const entries = v.getUint16(2, true);
      const level = v.getUint16(6, true);
      if (level > 5 || depth > 5) throw new Ext4Error("the ext4 volume has a damaged extent tree");
      for (let i = 0; i < entries && 12 + i * 12 + 12 <= node.length; i++) {
        const e = 12 + i * 12;
        const logical = v.getUint32(e, true);
        if (level === 0) {
          let len = v.getUint16(e + 4, true);
          if (len > 32768) len -= 32768; // an uninitialized extent reads as zeroes; its blocks are still its own
          const start = v.getUint16(e + 6, true) * 2 ** 32 + v.getUint32(e + 8, true);
          for (let k = 0; k < len && logical + k < count; k++) out[logical + k] = start + k;
        } else {
          const leaf = v.getUint32(e + 4, true) + v.getUint16(e + 8, true) * 2 ** 32;
          walk(this.read(leaf * this.blockSize, this.blockSize), depth + 1);
        }
      }
    };
    walk(ino.block, 0);
    return out;
  }

  private contents(ino: Inode, limit: number): Uint8Array {
    const size = Math.min(ino.size, limit);
    const out = new Uint8Array(size);
    const list = this.blocks(ino, Math.ceil(size / this.blockSize));
    for (const [i, b] of list.entries()) {
      const n = Math.min(this.blockSize, size - i * this.blockSize);
      if (b >= 0) out.set(this.read(b * this.blockSize, n), i * this.blockSize);
    }
    return out;
  }

  private list(ino: Inode): Map<string, number> {
    const names = new Map<string, number>();
    const data = this.contents(ino, 16 * 1024 * 1024);
    for (let blk = 0; blk < data.length; blk += this.blockSize) {
      const v = new DataView(data.buffer, blk, Math.min(this.blockSize, data.length - blk));
      for (let at = 0; at + 8 <= v.byteLength;) {
        const inode = v.getUint32(at, true);
        const recLen = v.getUint16(at + 4, true);
        const nameLen = v.getUint8(at + 6);
        if (recLen < 8 || at + recLen > v.byteLength) break;
        if (inode !== 0 && nameLen > 0 && at + 8 + nameLen <= v.byteLength) {
          names.set(new TextDecoder().decode(data.subarray(blk + at + 8, blk + at + 8 + nameLen)), inode);
        }
        at += recLen;
      }
    }
    return names;
  }

  /** The inode at an absolute path, following symbolic links (at most 8). */
  private resolve(path: string, hops = 0): Inode | undefined {
    if (hops > 8) return undefined;
    const parts = path.split("/").filter((p) => p !== "" && p !== ".");
    let dir = this.inode(ROOT_INODE);
    let dirPath = "/";
    for (const [i, name] of parts.entries()) {
      if ((dir.mode & S_IFMT) !== S_IFDIR) return undefined;
      const n = this.list(dir).get(name);
      if (n === undefined) return undefined;
      const ino = this.inode(n);
      if ((ino.mode & S_IFMT) === S_IFLNK) {
        const target =
          ino.size < 60 && !(ino.flags & EXTENTS_FL)
            ? new TextDecoder().decode(ino.block.subarray(0, ino.size))
            : new TextDecoder().decode(this.contents(ino, 4096));
        const rest = parts.slice(i + 1).join("/");
        const base = target.startsWith("/") ? target : `${dirPath}/${target}`;
        return this.resolve(`${base}/${rest}`, hops + 1);
      }
      dirPath = `${dirPath}/${name}`;
      dir = ino;
    }
    return dir;
  }

  /** Whether a regular file is at `path` (symbolic links followed). */
  exists(path: string): boolean {
    const ino = this.resolve(path);
    return ino !== undefined && (ino.mode & S_IFMT) === S_IFREG;
  }

  /** The first `limit` bytes of the regular file at `path`, or undefined. */
  readFile(path: string, limit = Infinity): Uint8Array | undefined {
    const ino = this.resolve(path);
    if (ino === undefined || (ino.mode & S_IFMT) !== S_IFREG) return undefined;
    return this.contents(ino, limit);
  }
}

/** Whether the volume has an ext2/3/4 superblock. */
export function isExt4(disk: DiskReader): boolean {
  try {
    new Ext4Volume(disk);
    return true;
  } catch {
    return false;
  }
}

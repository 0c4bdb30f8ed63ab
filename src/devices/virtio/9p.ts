/**
 * virtio-9p (virtio 1.2 §5.19 transport, 9P2000.L protocol): a host directory the guest mounts with
 * `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`. Several VMs may serve the same
 * directory at once; each request goes straight to the host file system (no cache here), so what
 * one VM wrote the next request of another sees.
 *
 * One request queue. Each chain carries one T-message in its readable part and room for the
 * R-message in its writable part; requests complete synchronously while the notify is handled, so
 * nothing is in flight at a snapshot and Tflush has nothing to cancel. Messages are parsed from and
 * built in two preallocated msize buffers; Tread and Twrite move data between those and the host
 * file with no allocation.
 *
 * Containment (no path outside the share, no host-side symlink following) lives in 9p-host.ts.
 * Files are created as the host user that runs the VM; modes pass through; the guest sees the
 * host's owner numbers. Locks are granted without being checked between VMs (as QEMU's 9p does).
 */
import {
  closeSync,
  constants,
  fchmodSync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  statfsSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
  chmodSync,
  chownSync,
  type BigIntStats,
} from "node:fs";
import { constants as osConstants } from "node:os";
import type { IrqLine } from "../device.js";
import { VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import { VirtqueueError, type DescriptorChain, type GuestRam } from "./queue.js";
import { ERRNO, O_PATH, ShareDir, ShareError, checkName, entryPath, fdPath } from "./9p-host.js";

export const VIRTIO_ID_9P = 9;
/** Feature: the configuration space holds the mount tag. */
export const VIRTIO_9P_F_MOUNT_TAG = 0;
/** Longest mount tag offered (Linux reads any u16 length; tags are short names). */
export const MAX_TAG_BYTES = 64;
/** Largest msize agreed: Linux's virtio transport caps it a little below this. */
export const MAX_MSIZE = 512 * 1024;
const MIN_MSIZE = 4096;
const QUEUE_SIZE = 128;
const HEADER = 7; // size[4] type[1] tag[2]
const MAX_WALK_NAMES = 16;
/** Most fids one device holds (each is a host descriptor; the process has a limit for all of them). */
export const MAX_FIDS = 4096;
const VERSION_L = "9P2000.L";

/** Message types (T; the R is T + 1, Rlerror is 7). */
export const P9 = {
  Tlerror: 6,
  Rlerror: 7,
  Tstatfs: 8,
  Tlopen: 12,
  Tlcreate: 14,
  Tsymlink: 16,
  Tmknod: 18,
  Trename: 20,
  Treadlink: 22,
  Tgetattr: 24,
  Tsetattr: 26,
  Txattrwalk: 30,
  Txattrcreate: 32,
  Treaddir: 40,
  Tfsync: 50,
  Tlock: 52,
  Tgetlock: 54,
  Tlink: 70,
  Tmkdir: 72,
  Trenameat: 74,
  Tunlinkat: 76,
  Tversion: 100,
  Tauth: 102,
  Tattach: 104,
  Tflush: 108,
  Twalk: 110,
  Tread: 116,
  Twrite: 118,
  Tclunk: 120,
  Tremove: 122,
} as const;

const QTDIR = 0x80;
const QTSYMLINK = 0x02;
const QTFILE = 0;

/** Tsetattr valid bits. */
const ATTR_MODE = 1;
const ATTR_UID = 2;
const ATTR_GID = 4;
const ATTR_SIZE = 8;
const ATTR_ATIME = 16;
const ATTR_MTIME = 32;
const ATTR_ATIME_SET = 128;
const ATTR_MTIME_SET = 256;
/** Rgetattr: the basic fields are all valid. */
const GETATTR_BASIC = 0x7ff;

const AT_REMOVEDIR = 0x200;
const F_UNLCK = 2;
const LOCK_SUCCESS = 0;

/** 9P2000.L open flags are Linux's generic ones; these pass to the host. */
const O_ACCMODE = 3;
const PASSED_OPEN_FLAGS =
  O_ACCMODE | constants.O_TRUNC | constants.O_APPEND | constants.O_DSYNC | constants.O_SYNC | constants.O_DIRECTORY;
/** Open flags that would change the file, refused on a read-only share. */
const WRITING_OPEN_FLAGS = constants.O_TRUNC | constants.O_APPEND;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** A share for one virtio-9p device. */
export interface ShareSpec {
  /** The mount tag the guest names (`mount -t 9p TAG`). */
  tag: string;
  /** The host directory served. */
  path: string;
  /** Every change refused with EROFS. */
  readOnly?: boolean;
}

/** Why `tag` cannot be a mount tag (undefined: it can). */
export function checkTag(tag: string): string | undefined {
  if (!/^[A-Za-z0-9_.-]+$/.test(tag))
    return `share tag ${JSON.stringify(tag)} must be letters, digits, "_", "." or "-"`;
  if (tag.length > MAX_TAG_BYTES) return `share tag ${tag} is longer than ${MAX_TAG_BYTES} characters`;
  return undefined;
}

/** One fid: an O_PATH descriptor of the file it names, plus an open descriptor after Tlopen/Tlcreate. */
interface Fid {
  /** -1: stale (its file was gone when a snapshot was restored). */
  fd: number;
  io: number;
  /** The Linux open flags of `io` (-1: not open). */
  openFlags: number;
  /** Directory entries read at offset 0, served to the following Treaddirs. */
  entries: string[] | null;
}

/** A fid as saved: the path below the share's root (null: its file was deleted). */
export interface Virtio9pFidState {
  fid: number;
  path: string[] | null;
  openFlags: number;
}

export interface Virtio9pState {
  msize: number;
  fids: Virtio9pFidState[];
}

/** Counters for metrics and tests. */
export interface Virtio9pStats {
  requests: number;
  errors: number;
  readBytes: number;
  writeBytes: number;
}

class BadMessage extends Error {}

export class Virtio9p extends VirtioMmioDevice<Virtio9pState> {
  readonly tag: string;
  readonly readOnly: boolean;
  private readonly share: ShareDir;
  private readonly chain: DescriptorChain;
  private readonly req = Buffer.alloc(MAX_MSIZE);
  private readonly resp = Buffer.alloc(MAX_MSIZE);
  private readonly fids = new Map<number, Fid>();
  private msize = MAX_MSIZE;
  /** Parse cursor and end in `req`, write cursor in `resp`, room the chain has for the reply. */
  private rpos = 0;
  private rend = 0;
  private wpos = 0;
  private room = 0;
  private readonly counters: Virtio9pStats = { requests: 0, errors: 0, readBytes: 0, writeBytes: 0 };

  constructor(mem: GuestRam, irq: IrqLine, share: ShareSpec, options: VirtioOptions = {}) {
    const bad = checkTag(share.tag);
    if (bad) throw new Error(bad);
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_9P,
        defaultName: `virtio-9p(${share.tag})`,
        features: 1 << VIRTIO_9P_F_MOUNT_TAG,
        queues: [{ size: QUEUE_SIZE, maxBytes: 2 * MAX_MSIZE }],
        configSize: 2 + share.tag.length,
      },
      options,
    );
    this.tag = share.tag;
    this.readOnly = share.readOnly ?? false;
    this.share = new ShareDir(share.path);
    this.chain = this.newChain();
    this.configView.setUint16(0, share.tag.length, true);
    for (let i = 0; i < share.tag.length; i++) this.config[2 + i] = share.tag.charCodeAt(i);
  }

  /** The host directory served (its real path). */
  get hostPath(): string {
    return this.share.path;
  }

  stats(): Virtio9pStats {
    return { ...this.counters };
  }

  /** Closes every host descriptor (the machine stopped). */
  close(): void {
    this.clunkAll();
    this.share.close();
  }

  protected queueNotified(_index: number): void {
    const q = this.queues[0];
    const c = this.chain;
    while (this.live && q.pop(c)) q.push(c.head, this.handle(c));
    this.complete(q);
  }

  protected override resetDevice(): void {
    this.clunkAll();
    this.msize = MAX_MSIZE;
  }

  // ---- one request ----

  private handle(c: DescriptorChain): number {
    const got = c.read(0, this.req, 0, Math.min(c.readBytes, this.req.length));
    if (got < HEADER || c.writeBytes < HEADER + 4) {
      throw new VirtqueueError(`queue 0: request ${c.head} is too short for a 9P message or its reply`);
    }
    const size = this.req.readUInt32LE(0);
    const type = this.req[4];
    const tag = this.req.readUInt16LE(5);
    this.rpos = HEADER;
    this.rend = Math.min(size, got);
    this.wpos = HEADER;
    this.room = Math.min(c.writeBytes, this.msize);
    this.counters.requests++;
    let errno = 0;
    try {
      if (size < HEADER || size > got) throw new BadMessage(`size ${size} but ${got} bytes sent`);
      this.dispatch(type);
      if (this.wpos > this.room) errno = ERRNO.EMSGSIZE;
    } catch (e) {
      errno = errnoOf(e);
    }
    let rtype = type + 1;
    if (errno !== 0) {
      this.counters.errors++;
      this.wpos = HEADER;
      this.u32(errno);
      rtype = P9.Rlerror;
    }
    this.resp.writeUInt32LE(this.wpos, 0);
    this.resp[4] = rtype;
    this.resp.writeUInt16LE(tag, 5);
    c.write(0, this.resp, 0, this.wpos);
    return this.wpos;
  }

  private dispatch(type: number): void {
    switch (type) {
      case P9.Tversion:
        return this.version();
      case P9.Tattach:
        return this.attach();
      case P9.Tauth:
        throw new ShareError(ERRNO.EOPNOTSUPP, "no authentication");
      case P9.Tflush:
        return; // every request completes before the next is read: nothing to cancel
      case P9.Twalk:
        return this.walk();
      case P9.Tclunk:
        return this.clunk(this.g32());
      case P9.Tremove:
        return this.remove();
      case P9.Tlopen:
        return this.lopen();
      case P9.Tlcreate:
        return this.lcreate();
      case P9.Tread:
        return this.readData();
      case P9.Twrite:
        return this.writeData();
      case P9.Tgetattr:
        return this.getattr();
      case P9.Tsetattr:
        return this.setattr();
      case P9.Treaddir:
        return this.readdir();
      case P9.Tstatfs:
        return this.statfs();
      case P9.Tfsync:
        return this.fsync();
      case P9.Tmkdir:
        return this.mkdir();
      case P9.Tsymlink:
        return this.symlink();
      case P9.Tmknod:
        return this.mknod();
      case P9.Treadlink:
        return this.readlink();
      case P9.Tlink:
        return this.link();
      case P9.Trename:
        return this.rename();
      case P9.Trenameat:
        return this.renameat();
      case P9.Tunlinkat:
        return this.unlinkat();
      case P9.Txattrwalk:
      case P9.Txattrcreate:
        throw new ShareError(ERRNO.EOPNOTSUPP, "extended attributes are not supported");
      case P9.Tlock:
        return this.lock();
      case P9.Tgetlock:
        return this.getlock();
      default:
        throw new ShareError(ERRNO.EOPNOTSUPP, `message type ${type}`);
    }
  }

  // ---- messages ----

  private version(): void {
    const msize = this.g32();
    const version = this.gstr();
    this.clunkAll();
    this.msize = Math.max(MIN_MSIZE, Math.min(msize, MAX_MSIZE));
    this.u32(this.msize);
    this.str(version === VERSION_L ? VERSION_L : "unknown");
  }

  private attach(): void {
    const fid = this.g32();
    this.g32(); // afid: no authentication
    this.gstr(); // uname
    this.gstr(); // aname: the share has one tree
    if (this.fids.has(fid)) throw new ShareError(ERRNO.EBADF, `fid ${fid} is in use`);
    this.checkFidRoom();
    const fd = this.share.openRoot();
    this.fids.set(fid, { fd, io: -1, openFlags: -1, entries: null });
    this.qid(fstatSync(fd, { bigint: true }));
  }

  private walk(): void {
    const fromFid = this.g32();
    const from = this.fid(fromFid);
    const newFid = this.g32();
    const count = this.g16();
    if (count > MAX_WALK_NAMES) throw new ShareError(ERRNO.EINVAL, "too many names in one walk");
    if (newFid !== fromFid && this.fids.has(newFid)) throw new ShareError(ERRNO.EBADF, `fid ${newFid} is in use`);
    if (from.io >= 0) throw new ShareError(ERRNO.EBADF, "walk from an open fid");
    if (newFid !== fromFid && !this.fids.has(newFid)) this.checkFidRoom();
    const countAt = this.wpos;
    this.u16(0);
    let fd = this.share.reopen(from.fd);
    let walked = 0;
    try {
      for (; walked < count; walked++) {
        const name = this.gstr();
        let next: number;
        try {
          next = name === ".." ? this.share.parent(fd) : this.share.lookup(fd, name);
        } catch (e) {
          if (walked === 0) throw e;
          break; // a partial walk answers the names that resolved, and makes no fid
        }
        closeSync(fd);
        fd = next;
        this.qid(fstatSync(fd, { bigint: true }));
      }
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.resp.writeUInt16LE(walked, countAt);
    if (walked < count) {
      closeSync(fd);
      return;
    }
    const old = this.fids.get(newFid);
    if (old) this.release(old);
    this.fids.set(newFid, { fd, io: -1, openFlags: -1, entries: null });
  }

  private clunk(n: number): void {
    const f = this.fids.get(n);
    if (!f) throw new ShareError(ERRNO.EBADF, `no fid ${n}`);
    this.fids.delete(n);
    this.release(f);
  }

  private remove(): void {
    const n = this.g32();
    const f = this.fid(n);
    try {
      this.writable();
      const { dirFd, name } = this.share.entryOf(f.fd);
      try {
        const isDir = (fstatSync(f.fd).mode & S_IFMT) === S_IFDIR;
        if (isDir) rmdirSync(entryPath(dirFd, name));
        else unlinkSync(entryPath(dirFd, name));
      } finally {
        closeSync(dirFd);
      }
    } finally {
      this.clunk(n); // Tremove clunks whether or not the removal worked
    }
  }

  private lopen(): void {
    const f = this.fid(this.g32());
    const flags = this.g32();
    if (f.io >= 0) throw new ShareError(ERRNO.EBADF, "fid already open");
    const st = fstatSync(f.fd, { bigint: true });
    const type = Number(st.mode) & S_IFMT;
    if (type === S_IFLNK) throw new ShareError(ERRNO.ELOOP, "a symbolic link is not opened");
    // A FIFO or device the host left in the share could block the VM in open(2) or be the host's.
    if (type !== S_IFREG && type !== S_IFDIR) throw new ShareError(ERRNO.EOPNOTSUPP, "only files and directories open");
    const hostFlags = this.hostOpenFlags(flags);
    f.io = openSync(fdPath(f.fd), type === S_IFDIR ? constants.O_RDONLY | constants.O_DIRECTORY : hostFlags);
    f.openFlags = hostFlags;
    f.entries = null;
    this.qid(st);
    this.u32(0); // iounit: msize decides
  }

  private lcreate(): void {
    const f = this.fid(this.g32());
    const name = this.gstr();
    const flags = this.g32();
    const mode = this.g32();
    this.g32(); // gid: files belong to the host user running the VM
    this.writable();
    this.checkNewName(name);
    if (f.io >= 0) throw new ShareError(ERRNO.EBADF, "fid already open");
    const hostFlags = this.hostOpenFlags(flags);
    const at = entryPath(f.fd, name);
    let io: number;
    try {
      io = openSync(at, hostFlags | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode & 0o7777);
      // The guest's mode as it asked (its umask applied already), not narrowed by the host's umask.
      fchmodSync(io, mode & 0o7777);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || flags & constants.O_EXCL) throw e;
      io = openSync(at, hostFlags | constants.O_NOFOLLOW); // created meanwhile by another client: opened
    }
    // The fid now names the new file: the descriptor just created, never a second lookup by name.
    const fd = openSync(fdPath(io), O_PATH);
    closeSync(f.fd);
    f.fd = fd;
    f.io = io;
    f.openFlags = hostFlags;
    this.qid(fstatSync(io, { bigint: true }));
    this.u32(0);
  }

  private readData(): void {
    const f = this.fid(this.g32());
    const offset = this.g64();
    const count = Math.min(this.g32(), this.room - HEADER - 4, this.msize - HEADER - 4);
    if (f.io < 0) throw new ShareError(ERRNO.EBADF, "read from a fid that is not open");
    const n = count > 0 ? readSync(f.io, this.resp, HEADER + 4, count, offset) : 0;
    this.u32(n);
    this.wpos += n;
    this.counters.readBytes += n;
  }

  private writeData(): void {
    const f = this.fid(this.g32());
    const offset = this.g64();
    const count = this.g32();
    if (count > this.rend - this.rpos) throw new BadMessage("Twrite count beyond the message");
    this.writable();
    if (f.io < 0 || (f.openFlags & O_ACCMODE) === constants.O_RDONLY) {
      throw new ShareError(ERRNO.EBADF, "write to a fid not open for writing");
    }
    const n = writeSync(f.io, this.req, this.rpos, count, offset);
    this.u32(n);
    this.counters.writeBytes += n;
  }

  private getattr(): void {
    const f = this.fid(this.g32());
    this.g64(); // request mask: the basic fields are always given
    const st = fstatSync(f.fd, { bigint: true });
    this.u64(GETATTR_BASIC);
    this.qid(st);
    this.u32(Number(st.mode));
    this.u32(Number(st.uid));
    this.u32(Number(st.gid));
    this.u64(Number(st.nlink));
    this.u64(Number(st.rdev));
    this.u64(Number(st.size));
    this.u64(Number(st.blksize));
    this.u64(Number(st.blocks));
    this.time(st.atimeNs);
    this.time(st.mtimeNs);
    this.time(st.ctimeNs);
    this.u64(0); // btime
    this.u64(0);
    this.u64(0); // gen
    this.u64(0); // data_version
  }

  private setattr(): void {
    const f = this.fid(this.g32());
    const valid = this.g32();
    const mode = this.g32();
    const uid = this.g32();
    const gid = this.g32();
    const size = this.g64();
    const atime = this.g64() + this.g64() / 1e9;
    const mtime = this.g64() + this.g64() / 1e9;
    this.writable();
    const isLink = (fstatSync(f.fd).mode & S_IFMT) === S_IFLNK;
    const path = fdPath(f.fd);
    if (valid & ATTR_MODE) {
      if (isLink) throw new ShareError(ERRNO.EOPNOTSUPP, "a symbolic link has no mode of its own");
      chmodSync(path, mode & 0o7777);
    }
    if (valid & (ATTR_UID | ATTR_GID)) {
      const u = valid & ATTR_UID ? uid : -1;
      const g = valid & ATTR_GID ? gid : -1;
      if (isLink) this.onEntry(f.fd, (p) => lchownSync(p, u, g));
      else chownSync(path, u, g);
    }
    if (valid & ATTR_SIZE) {
      if (isLink) throw new ShareError(ERRNO.EINVAL, "a symbolic link has no size to set");
      if (f.io >= 0 && (f.openFlags & O_ACCMODE) !== constants.O_RDONLY) ftruncateSync(f.io, size);
      else {
        const t = openSync(path, constants.O_WRONLY);
        try {
          ftruncateSync(t, size);
        } finally {
          closeSync(t);
        }
      }
    }
    if (valid & (ATTR_ATIME | ATTR_MTIME)) {
      const now = Date.now() / 1000;
      const st = fstatSync(f.fd);
      const a = valid & ATTR_ATIME ? (valid & ATTR_ATIME_SET ? atime : now) : st.atimeMs / 1000;
      const m = valid & ATTR_MTIME ? (valid & ATTR_MTIME_SET ? mtime : now) : st.mtimeMs / 1000;
      if (isLink) this.onEntry(f.fd, (p) => lutimesSync(p, a, m));
      else utimesSync(path, a, m);
    }
  }

  private readdir(): void {
    const f = this.fid(this.g32());
    const offset = this.g64();
    const count = Math.min(this.g32(), this.room - HEADER - 4);
    if ((fstatSync(f.fd).mode & S_IFMT) !== S_IFDIR) throw new ShareError(ERRNO.ENOTDIR, "not a directory");
    if (offset === 0 || f.entries === null) f.entries = [".", "..", ...readdirSync(fdPath(f.fd))];
    const countAt = this.wpos;
    this.u32(0);
    const limit = countAt + 4 + Math.max(0, count);
    for (let i = offset; i < f.entries.length; i++) {
      const name = f.entries[i];
      const bytes = Buffer.byteLength(name);
      if (this.wpos + 13 + 8 + 1 + 2 + bytes > limit) break;
      let st: BigIntStats | undefined;
      if (i < 2) st = fstatSync(f.fd, { bigint: true });
      else st = lstatSync(entryPath(f.fd, name), { bigint: true, throwIfNoEntry: false });
      if (st === undefined) continue; // removed since the listing was read
      this.qid(st);
      this.u64(i + 1);
      this.u8(direntType(Number(st.mode)));
      this.str(name);
    }
    this.resp.writeUInt32LE(this.wpos - countAt - 4, countAt);
  }

  private statfs(): void {
    const f = this.fid(this.g32());
    const s = statfsSync(fdPath(f.fd));
    this.u32(s.type);
    this.u32(s.bsize);
    this.u64(s.blocks);
    this.u64(s.bfree);
    this.u64(s.bavail);
    this.u64(s.files);
    this.u64(s.ffree);
    this.u64(0); // fsid
    this.u32(255); // namelen
  }

  private fsync(): void {
    const f = this.fid(this.g32());
    const datasync = this.rpos + 4 <= this.rend ? this.g32() : 0;
    // To the host's disk: fsync(2) on the host file, like a virtio-blk flush.
    if (f.io >= 0) (datasync ? fdatasyncSync : fsyncSync)(f.io);
    else {
      const t = openSync(fdPath(f.fd), constants.O_RDONLY);
      try {
        fsyncSync(t);
      } finally {
        closeSync(t);
      }
    }
  }

  private mkdir(): void {
    const d = this.fid(this.g32());
    const name = this.gstr();
    const mode = this.g32();
    this.g32(); // gid
    this.writable();
    this.checkNewName(name);
    mkdirSync(entryPath(d.fd, name), { mode: mode & 0o7777 });
    // Set the guest's mode past the host's umask, on the directory itself (a link swapped in
    // meanwhile fails O_DIRECTORY | O_NOFOLLOW rather than being followed).
    const fd = openSync(entryPath(d.fd, name), O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      chmodSync(fdPath(fd), mode & 0o7777);
      this.qid(fstatSync(fd, { bigint: true }));
    } finally {
      closeSync(fd);
    }
  }

  private symlink(): void {
    const d = this.fid(this.g32());
    const name = this.gstr();
    const target = this.gstr();
    this.g32(); // gid
    this.writable();
    this.checkNewName(name);
    if (target === "" || target.includes("\0")) throw new ShareError(ERRNO.EINVAL, "bad link target");
    // Stored as given: the guest resolves it in its own namespace; the host never follows it.
    symlinkSync(target, entryPath(d.fd, name));
    this.qid(lstatSync(entryPath(d.fd, name), { bigint: true }));
  }

  private mknod(): void {
    const d = this.fid(this.g32());
    const name = this.gstr();
    const mode = this.g32();
    this.g32(); // major
    this.g32(); // minor
    this.g32(); // gid
    this.writable();
    this.checkNewName(name);
    // Device nodes, FIFOs and sockets on the host would be the host's: only plain files are made.
    if ((mode & S_IFMT) !== S_IFREG && (mode & S_IFMT) !== 0) {
      throw new ShareError(ERRNO.EOPNOTSUPP, "a share holds no device nodes, FIFOs or sockets");
    }
    const fd = openSync(
      entryPath(d.fd, name),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      mode & 0o7777,
    );
    try {
      fchmodSync(fd, mode & 0o7777);
      this.qid(fstatSync(fd, { bigint: true }));
    } finally {
      closeSync(fd);
    }
  }

  private readlink(): void {
    const f = this.fid(this.g32());
    if ((fstatSync(f.fd).mode & S_IFMT) !== S_IFLNK) throw new ShareError(ERRNO.EINVAL, "not a symbolic link");
    let target = "";
    this.onEntry(f.fd, (p) => (target = readlinkSync(p)));
    this.str(target);
  }

  private link(): void {
    const d = this.fid(this.g32());
    const f = this.fid(this.g32());
    const name = this.gstr();
    this.writable();
    this.checkNewName(name);
    // link(2) of /proc/self/fd/N would link the magic link itself: link the entry in its directory.
    this.onEntry(f.fd, (p) => linkSync(p, entryPath(d.fd, name)));
  }

  private rename(): void {
    const f = this.fid(this.g32());
    const d = this.fid(this.g32());
    const name = this.gstr();
    this.writable();
    this.checkNewName(name);
    this.onEntry(f.fd, (p) => renameSync(p, entryPath(d.fd, name)));
  }

  private renameat(): void {
    const from = this.fid(this.g32());
    const oldName = this.gstr();
    const to = this.fid(this.g32());
    const newName = this.gstr();
    this.writable();
    this.checkNewName(oldName);
    this.checkNewName(newName);
    renameSync(entryPath(from.fd, oldName), entryPath(to.fd, newName));
  }

  private unlinkat(): void {
    const d = this.fid(this.g32());
    const name = this.gstr();
    const flags = this.g32();
    this.writable();
    this.checkNewName(name);
    if (flags & AT_REMOVEDIR) rmdirSync(entryPath(d.fd, name));
    else unlinkSync(entryPath(d.fd, name));
  }

  private lock(): void {
    this.fid(this.g32());
    this.u8(LOCK_SUCCESS);
  }

  private getlock(): void {
    this.fid(this.g32());
    this.g8(); // type
    const start = this.g64();
    const length = this.g64();
    const procId = this.g32();
    const client = this.gstr();
    this.u8(F_UNLCK); // nobody else holds it
    this.u64(start);
    this.u64(length);
    this.u32(procId);
    this.str(client);
  }

  // ---- helpers ----

  private fid(n: number): Fid {
    const f = this.fids.get(n);
    if (!f) throw new ShareError(ERRNO.EBADF, `no fid ${n}`);
    if (f.fd < 0) throw new ShareError(ERRNO.ESTALE, `fid ${n} lost its file across a restore`);
    return f;
  }

  private checkFidRoom(): void {
    if (this.fids.size >= MAX_FIDS) throw new ShareError(ERRNO.ENFILE, `more than ${MAX_FIDS} fids`);
  }

  private writable(): void {
    if (this.readOnly) throw new ShareError(ERRNO.EROFS, "the share is attached read-only");
  }

  private checkNewName(name: string): void {
    const why = checkName(name);
    if (why) throw new ShareError(why, `bad name ${JSON.stringify(name)}`);
  }

  /** Runs `op` on the entry of fd in its directory ("/proc/self/fd/DIR/name"). */
  private onEntry(fd: number, op: (path: string) => void): void {
    const { dirFd, name } = this.share.entryOf(fd);
    try {
      op(entryPath(dirFd, name));
    } finally {
      closeSync(dirFd);
    }
  }

  private hostOpenFlags(flags: number): number {
    // Never O_NOFOLLOW here: these flags open /proc/self/fd/N, whose last component is the magic
    // link itself (it names the file directly and follows nothing further).
    const f = flags & PASSED_OPEN_FLAGS;
    if (this.readOnly && ((f & O_ACCMODE) !== constants.O_RDONLY || (f & WRITING_OPEN_FLAGS) !== 0)) {
      throw new ShareError(ERRNO.EROFS, "the share is attached read-only");
    }
    return f;
  }

  private release(f: Fid): void {
    if (f.io >= 0) closeSync(f.io);
    if (f.fd >= 0) closeSync(f.fd);
    f.io = f.fd = -1;
  }

  private clunkAll(): void {
    for (const f of this.fids.values()) this.release(f);
    this.fids.clear();
  }

  // ---- wire format ----

  private need(n: number): void {
    if (this.rpos + n > this.rend) throw new BadMessage("message ends early");
  }
  private g8(): number {
    this.need(1);
    return this.req[this.rpos++];
  }
  private g16(): number {
    this.need(2);
    const v = this.req.readUInt16LE(this.rpos);
    this.rpos += 2;
    return v;
  }
  private g32(): number {
    this.need(4);
    const v = this.req.readUInt32LE(this.rpos);
    this.rpos += 4;
    return v;
  }
  /** A u64 as a number; beyond 2^53 is refused (no file offset gets there). */
  private g64(): number {
    this.need(8);
    const lo = this.req.readUInt32LE(this.rpos);
    const hi = this.req.readUInt32LE(this.rpos + 4);
    this.rpos += 8;
    if (hi >= 0x20_0000) throw new ShareError(ERRNO.EINVAL, "a 64-bit value beyond 2^53");
    return hi * 4294967296 + lo;
  }
  private gstr(): string {
    const n = this.g16();
    this.need(n);
    const s = this.req.toString("utf8", this.rpos, this.rpos + n);
    this.rpos += n;
    return s;
  }

  private fits(n: number): void {
    if (this.wpos + n > this.resp.length) throw new ShareError(ERRNO.EMSGSIZE, "reply too large");
  }
  private u8(v: number): void {
    this.fits(1);
    this.resp[this.wpos++] = v;
  }
  private u16(v: number): void {
    this.fits(2);
    this.resp.writeUInt16LE(v, this.wpos);
    this.wpos += 2;
  }
  private u32(v: number): void {
    this.fits(4);
    this.resp.writeUInt32LE(v >>> 0, this.wpos);
    this.wpos += 4;
  }
  private u64(v: number): void {
    this.fits(8);
    this.resp.writeUInt32LE((v % 4294967296) >>> 0, this.wpos);
    this.resp.writeUInt32LE(Math.floor(v / 4294967296) >>> 0, this.wpos + 4);
    this.wpos += 8;
  }
  private str(s: string): void {
    const n = Buffer.byteLength(s);
    if (n > 0xffff) throw new ShareError(ERRNO.ENAMETOOLONG, "string too long");
    this.fits(2 + n);
    this.u16(n);
    this.resp.write(s, this.wpos, "utf8");
    this.wpos += n;
  }
  private time(ns: bigint): void {
    this.u64(Number(ns / 1_000_000_000n));
    this.u64(Number(ns % 1_000_000_000n));
  }
  private qid(st: BigIntStats): void {
    const type = Number(st.mode) & S_IFMT;
    this.u8(type === S_IFDIR ? QTDIR : type === S_IFLNK ? QTSYMLINK : QTFILE);
    this.u32(Number(st.mtimeNs % 4294967296n)); // version: changes when the file does
    this.fits(8);
    this.resp.writeBigUInt64LE(st.ino, this.wpos);
    this.wpos += 8;
  }

  // ---- snapshots ----

  protected saveDevice(): Virtio9pState {
    const fids: Virtio9pFidState[] = [];
    for (const [fid, f] of this.fids) {
      fids.push({ fid, path: f.fd >= 0 ? this.share.componentsOf(f.fd) : null, openFlags: f.openFlags });
    }
    return { msize: this.msize, fids };
  }

  /** Reopens every fid by its path; a file gone since the snapshot leaves its fid stale (ESTALE). */
  protected restoreDevice(state: Virtio9pState): void {
    if (typeof state?.msize !== "number" || !Array.isArray(state.fids)) throw new Error("not a virtio-9p state");
    this.clunkAll();
    this.msize = Math.max(MIN_MSIZE, Math.min(state.msize, MAX_MSIZE));
    for (const s of state.fids) {
      const f: Fid = { fd: -1, io: -1, openFlags: -1, entries: null };
      this.fids.set(s.fid >>> 0, f);
      if (!Array.isArray(s.path) || s.path.some((n) => typeof n !== "string" || checkName(n) !== 0)) continue;
      try {
        f.fd = this.share.open(s.path);
        if (s.openFlags >= 0) {
          const flags = s.openFlags & PASSED_OPEN_FLAGS & ~constants.O_TRUNC;
          if (this.readOnly && (flags & O_ACCMODE) !== constants.O_RDONLY) continue;
          const dir = (fstatSync(f.fd).mode & S_IFMT) === S_IFDIR;
          f.io = openSync(fdPath(f.fd), dir ? constants.O_RDONLY | constants.O_DIRECTORY : flags);
          f.openFlags = flags;
        }
      } catch {
        this.release(f);
      }
    }
  }
}

function direntType(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return 4;
    case S_IFREG:
      return 8;
    case S_IFLNK:
      return 10;
    case 0o010000:
      return 1; // FIFO
    case 0o020000:
      return 2; // character device
    case 0o060000:
      return 6; // block device
    case 0o140000:
      return 12; // socket
    default:
      return 0;
  }
}

/** The Linux errno for what a request threw. */
function errnoOf(e: unknown): number {
  if (e instanceof ShareError) return e.errno;
  if (e instanceof BadMessage) return ERRNO.EPROTO;
  const code = (e as NodeJS.ErrnoException)?.code;
  const n = code ? (osConstants.errno as Record<string, number>)[code] : undefined;
  return typeof n === "number" && n > 0 ? n : ERRNO.EIO;
}

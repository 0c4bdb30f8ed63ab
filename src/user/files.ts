/**
 * The guest's file descriptors and paths.
 *
 * Paths: an absolute path names a file inside the root (`--root`, as qemu-user's -L) when it
 * exists there, and the host's file otherwise; a relative path is relative to the process's current
 * directory (a host path, kept here: not the host process's cwd) or to the directory a dirfd names. So the program's own libraries and data come from
 * the root while the user's files stay visible.
 *
 * Descriptors: each guest fd refers to an open file description (shared by dup), which holds a
 * host fd and, for regular files, the offset (Node has no lseek, so reads and writes are
 * positional and the offset is kept here). Terminals, pipes and other streams use the host fd's
 * own position.
 */
import { closeSync, existsSync, fstatSync, lstatSync, opendirSync, type Dirent } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";

export const AT_FDCWD = -100;

export interface DirEntry {
  name: string;
  type: number;
  ino: number;
}

export class OpenFile {
  refs = 1;
  /** Offset for positional I/O; null for streams (the host fd's own position). */
  position: number | null;
  /** Directory listing, read at the first getdents64 (with "." and ".."). */
  entries: DirEntry[] | null = null;
  entryIndex = 0;
  /** An in-process pipe's buffer (hostFd -1). */
  pipe: PipeBuffer | null = null;
  pipeEnd: "read" | "write" | null = null;
  constructor(
    readonly hostFd: number,
    /** The host path it was opened by (for fd-relative paths and fchdir); "" for none. */
    readonly path: string,
    /** The guest's open flags (status flags may change with F_SETFL). */
    public flags: number,
    readonly directory: boolean,
    stream: boolean,
    /** The host fd belongs to this process's own stdio: never closed by the guest. */
    readonly inherited = false,
  ) {
    this.position = stream ? null : 0;
  }
}

/** A pipe whose two ends both live in this process (no other process reads it). */
export class PipeBuffer {
  chunks: Buffer[] = [];
  /** Bytes in `chunks`. */
  length = 0;
  readers = 1;
  writers = 1;
}

/** What a pipe holds before its writer waits (Linux's default pipe size). */
export const PIPE_CAPACITY = 65536;
/** Writes up to this size are atomic: they wait for room for all of it. */
export const PIPE_BUF = 4096;

export interface Slot {
  file: OpenFile;
  cloexec: boolean;
}

const DT_FIFO = 1;
const DT_CHR = 2;
const DT_DIR = 4;
const DT_BLK = 6;
const DT_REG = 8;
const DT_LNK = 10;
const DT_SOCK = 12;

function direntType(d: Dirent): number {
  if (d.isFile()) return DT_REG;
  if (d.isDirectory()) return DT_DIR;
  if (d.isSymbolicLink()) return DT_LNK;
  if (d.isFIFO()) return DT_FIFO;
  if (d.isCharacterDevice()) return DT_CHR;
  if (d.isBlockDevice()) return DT_BLK;
  if (d.isSocket()) return DT_SOCK;
  return 0;
}

export class FileTable {
  private readonly slots: (Slot | undefined)[] = [];
  readonly root: string;
  /** The process's current directory (a host path): relative paths resolve against it. */
  cwd: string;

  /**
   * `stdio`: the host fds that are the guest's 0, 1 and 2 (default: this process's own); null for a
   * table that clone() fills.
   */
  constructor(root: string, cwd: string, stdio: readonly number[] | null = [0, 1, 2]) {
    this.root = root;
    this.cwd = cwd;
    for (let fd = 0; fd < 3 && stdio !== null; fd++) {
      try {
        fstatSync(stdio[fd]);
      } catch {
        continue; // not open on the host: not open in the guest either
      }
      // The host fd's own offset: a file the shell redirected stdout to is shared with others.
      this.slots[fd] = { file: new OpenFile(stdio[fd], "", fd === 0 ? 0 : 2, false, true, true), cloexec: false };
    }
  }

  get(fd: number): OpenFile | undefined {
    return fd >= 0 ? this.slots[fd]?.file : undefined;
  }

  /** Installs `file` at the lowest free fd at or above `min`; returns it. */
  install(file: OpenFile, cloexec: boolean, min = 0): number {
    let fd = min;
    while (this.slots[fd] !== undefined) fd++;
    this.slots[fd] = { file, cloexec };
    return fd;
  }

  /** Installs at exactly `fd`, closing what was there (dup2/dup3). */
  installAt(fd: number, file: OpenFile, cloexec: boolean): void {
    if (this.slots[fd] !== undefined) this.close(fd);
    this.slots[fd] = { file, cloexec };
  }

  cloexec(fd: number): boolean {
    return this.slots[fd]?.cloexec ?? false;
  }

  setCloexec(fd: number, on: boolean): void {
    const s = this.slots[fd];
    if (s !== undefined) s.cloexec = on;
  }

  /** Closes a guest fd; false when it was not open. */
  close(fd: number): boolean {
    const s = fd >= 0 ? this.slots[fd] : undefined;
    if (s === undefined) return false;
    this.slots[fd] = undefined;
    const f = s.file;
    if (--f.refs === 0) {
      if (f.pipe !== null) {
        if (f.pipeEnd === "read") f.pipe.readers--;
        else f.pipe.writers--;
      } else if (!f.inherited) {
        try {
          closeSync(f.hostFd);
        } catch {
          // already gone on the host: nothing left to release
        }
      }
    }
    return true;
  }

  /** A fork child's table: the same descriptions (each with a reference more) and cwd. */
  clone(): FileTable {
    const copy = new FileTable(this.root, this.cwd, null);
    this.slots.forEach((s, fd) => {
      if (s === undefined) return;
      s.file.refs++;
      copy.slots[fd] = { file: s.file, cloexec: s.cloexec };
    });
    return copy;
  }

  /** execve: descriptors marked close-on-exec close. */
  closeOnExec(): void {
    for (let fd = 0; fd < this.slots.length; fd++) if (this.slots[fd]?.cloexec === true) this.close(fd);
  }

  closeAll(): void {
    for (let fd = 0; fd < this.slots.length; fd++) if (this.slots[fd] !== undefined) this.close(fd);
  }

  /** The listing of a directory for getdents64: ".", "..", then its entries. */
  listing(file: OpenFile): DirEntry[] {
    if (file.entries !== null) return file.entries;
    const dir = file.path;
    const ino = (p: string): number => {
      try {
        return lstatSync(p).ino;
      } catch {
        return 0;
      }
    };
    const out: DirEntry[] = [
      { name: ".", type: DT_DIR, ino: ino(dir) },
      { name: "..", type: DT_DIR, ino: ino(join(dir, "..")) },
    ];
    // In the directory's own order, as the host's getdents gives it (readdirSync sorts).
    const handle = opendirSync(dir);
    try {
      for (let d = handle.readSync(); d !== null; d = handle.readSync()) {
        out.push({ name: d.name, type: direntType(d), ino: ino(join(dir, d.name)) });
      }
    } finally {
      handle.closeSync();
    }
    file.entries = out;
    return out;
  }

  /**
   * The host path for a guest path relative to `dirfd`, or a negative errno. Absolute paths resolve
   * inside the root when the path exists there (its last component need not: a file being created
   * in a directory of the root also goes there).
   */
  hostPath(dirfd: number, path: string): string | number {
    if (path === "") return -2; // ENOENT (AT_EMPTY_PATH is handled by the callers that allow it)
    if (isAbsolute(path)) return this.inRoot(path);
    if (dirfd === AT_FDCWD) return resolve(this.cwd, path);
    const dir = this.get(dirfd);
    if (dir === undefined) return -9; // EBADF
    if (!dir.directory) return -20; // ENOTDIR
    return join(dir.path, path);
  }

  /** Where an absolute guest path lives on the host. */
  inRoot(path: string): string {
    if (
      this.root === "/" ||
      path.startsWith("/proc/") ||
      path.startsWith("/dev/") ||
      path === "/tmp" ||
      path.startsWith("/tmp/")
    ) {
      return path;
    }
    const inside = join(this.root, path);
    if (exists(inside)) return inside;
    const parent = join(inside, "..");
    if (parent !== this.root && exists(parent) && !exists(join(path, ".."))) return inside;
    return path;
  }
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return existsSync(p);
  }
}

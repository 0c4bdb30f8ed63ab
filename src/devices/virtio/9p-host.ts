/**
 * The host side of a virtio-9p share: every guest path is resolved inside one host directory and
 * can never leave it.
 *
 * Node has no openat(), so resolution goes through Linux's /proc/self/fd magic links: a guest file
 * is held as an O_PATH descriptor, and the next name is opened as "/proc/self/fd/N/name" with
 * O_NOFOLLOW. The kernel jumps straight to the directory N refers to and looks `name` up in it, so
 *  - a name holding "/" , "." or ".." never reaches the kernel (checkName refuses it; a walk to ".."
 *    is resolved lexically from the share's root, never by the kernel);
 *  - a symbolic link is never followed by the host: the last name is opened O_NOFOLLOW, and a link
 *    used as a directory fails with ENOTDIR, since /proc/self/fd/N of a link is the link itself;
 *  - a concurrent rename (another VM, the host) cannot redirect a lookup: descriptors name inodes,
 *    not paths, so nothing is checked first and used later by path.
 * What a guest can do stays inside the share: it can only name things below the descriptors it
 * got from the root. (The host's own operator can still move a directory out of the share while a
 * guest holds it open; that is theirs to do.)
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readlinkSync,
  realpathSync,
  statSync,
  type BigIntStats,
} from "node:fs";

/** Linux's O_PATH (not in Node's constants): a descriptor that names a file without opening it. */
export const O_PATH = 0o10000000;
const PROC_FD = "/proc/self/fd/";

/** Linux errno values (9P2000.L carries Linux's numbers, whatever the host). */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EBUSY: 16,
  EACCES: 13,
  EEXIST: 17,
  EXDEV: 18,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EROFS: 30,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ELOOP: 40,
  EPROTO: 71,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  ESTALE: 116,
} as const;

/** A request failed with this Linux errno. */
export class ShareError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/** Longest name one directory entry may have (as Linux's NAME_MAX). */
export const NAME_MAX = 255;

/**
 * Why `name` may not be created or looked up as one component (0: it may). Names are single
 * components: "", ".", "..", anything with "/" or NUL, or longer than NAME_MAX bytes is refused.
 */
export function checkName(name: string): number {
  if (name === "" || name === "." || name === "..") return ERRNO.EINVAL;
  if (name.includes("/") || name.includes("\0")) return ERRNO.EINVAL;
  if (Buffer.byteLength(name) > NAME_MAX) return ERRNO.ENAMETOOLONG;
  return 0;
}

/** "/proc/self/fd/N": the file descriptor fd names (a jump, never a path walk). */
export function fdPath(fd: number): string {
  return PROC_FD + fd;
}

/** "/proc/self/fd/N/name": `name` looked up in the directory fd names, name already checked. */
export function entryPath(dirFd: number, name: string): string {
  return PROC_FD + dirFd + "/" + name;
}

/** A host directory served as a share. Owns one O_PATH descriptor of its root until closed. */
export class ShareDir {
  /** The root's real path (symbolic links in the configured path resolved once, at start). */
  readonly path: string;
  readonly rootFd: number;

  constructor(dir: string) {
    let real: string;
    try {
      real = realpathSync(dir);
    } catch (e) {
      throw new Error(
        `share directory ${dir}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "does not exist" : (e as Error).message}`,
      );
    }
    if (!statSync(real).isDirectory()) throw new Error(`share directory ${dir} is not a directory`);
    this.path = real;
    this.rootFd = openSync(real, O_PATH | constants.O_DIRECTORY);
  }

  close(): void {
    closeSync(this.rootFd);
  }

  /** A new O_PATH descriptor of the root. */
  openRoot(): number {
    return openSync(fdPath(this.rootFd), O_PATH | constants.O_DIRECTORY);
  }

  /** A new O_PATH descriptor of the same file as `fd` (a symbolic link stays the link). */
  reopen(fd: number): number {
    return openSync(fdPath(fd), O_PATH);
  }

  /** A new O_PATH descriptor of `name` in directory `dirFd`; never follows a link. */
  lookup(dirFd: number, name: string): number {
    const why = checkName(name);
    if (why) throw new ShareError(why, `bad name ${JSON.stringify(name)}`);
    return openSync(entryPath(dirFd, name), O_PATH | constants.O_NOFOLLOW);
  }

  /**
   * The path of `fd` below the root, as components ([] for the root), or null when the file was
   * deleted or is no longer below the root. Read from the kernel, so it follows renames.
   */
  componentsOf(fd: number): string[] | null {
    let p: string;
    try {
      p = readlinkSync(fdPath(fd));
    } catch {
      return null;
    }
    if (p === this.path) return [];
    const prefix = this.path === "/" ? "/" : this.path + "/";
    if (!p.startsWith(prefix) || p.endsWith(" (deleted)")) return null;
    return p.slice(prefix.length).split("/");
  }

  /** Opens `components` from the root, one O_NOFOLLOW step at a time. Throws ShareError/ErrnoException. */
  open(components: readonly string[]): number {
    let fd = this.openRoot();
    try {
      for (const name of components) {
        const next = this.lookup(fd, name);
        closeSync(fd);
        fd = next;
      }
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return fd;
  }

  /** The parent directory of `fd` (root for the root: ".." never leaves the share). */
  parent(fd: number): number {
    const path = this.componentsOf(fd);
    if (path === null) throw new ShareError(ERRNO.ESTALE, "the file is no longer in the share");
    return this.open(path.slice(0, -1));
  }

  /**
   * The directory holding `fd` and its name there, checked to still be the same inode (a rename
   * in between gives ESTALE rather than the wrong file). The caller closes `dirFd`.
   */
  entryOf(fd: number): { dirFd: number; name: string } {
    const path = this.componentsOf(fd);
    if (path === null || path.length === 0) {
      throw new ShareError(path === null ? ERRNO.ESTALE : ERRNO.EBUSY, "no entry for this file");
    }
    const dirFd = this.open(path.slice(0, -1));
    const name = path[path.length - 1];
    try {
      const want = fstatSync(fd, { bigint: true });
      const got = lstatSync(entryPath(dirFd, name), { bigint: true });
      if (!sameFile(want, got)) throw new ShareError(ERRNO.ESTALE, "the file moved while it was looked up");
    } catch (e) {
      closeSync(dirFd);
      throw e;
    }
    return { dirFd, name };
  }
}

function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.dev === b.dev;
}

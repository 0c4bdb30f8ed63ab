/**
 * Linux system calls of a riscv64 program (the asm-generic numbers), served through Node's
 * synchronous fs API: the hart stops at each `ecall` from U-mode and `UserProcess` calls
 * `Syscalls.call` with a7 and a0-a5; the result (or -errno) goes back in a0.
 *
 * Host errors keep their errno: Node reports it as a negative number, and the asm-generic errno
 * values riscv64 uses are those of the x86-64 and arm64 hosts Node runs on.
 */
import * as fs from "node:fs";
import { randomFillSync } from "node:crypto";
import { hostname, release, version } from "node:os";
import { isatty } from "node:tty";
import { AT_FDCWD, FileTable, OpenFile, PIPE_BUF, PIPE_CAPACITY, PipeBuffer } from "./files.js";
import { AddressSpace, PAGE } from "./memory.js";
import { SIGPIPE, SI_TKILL, SI_USER, Signals } from "./signals.js";

const EPERM = 1;
const ESRCH = 3;
const EBADF = 9;
const EAGAIN = 11;
const ENOMEM = 12;
const EFAULT = 14;
const EEXIST = 17;
const ENOTDIR = 20;
const EISDIR = 21;
const EINVAL = 22;
const ENOTTY = 25;
const ESPIPE = 29;
const EPIPE = 32;
const ERANGE = 34;
const ENOSYS = 38;
const EOPNOTSUPP = 95;
const EAFNOSUPPORT = 97;

const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_APPEND = 0o2000;
const O_NONBLOCK = 0o4000;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_REMOVEDIR = 0x200;
const AT_EMPTY_PATH = 0x1000;
const MAP_FIXED = 0x10;
const MAP_ANONYMOUS = 0x20;
const MAP_FIXED_NOREPLACE = 0x100000;
const RLIM_INFINITY = 2n ** 64n - 1n;

/** What the process asks of its runner after a system call. */
export interface ExitRequest {
  status: number;
  /** The signal that ended it, if a signal did. */
  signal: number;
}

/**
 * A call that must wait (an empty pipe, a full one, a poll with nothing ready): `parked` says when
 * it can go on, and the scheduler runs another task meanwhile.
 */
export const BLOCKED = Number.MIN_SAFE_INTEGER + 1;
/** A parked call's poll result: ready now, run the system call again. */
export const RESTART = Number.MIN_SAFE_INTEGER + 2;

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

function errno(e: unknown): number {
  const n = (e as NodeJS.ErrnoException).errno;
  return typeof n === "number" && n < 0 ? n : -EINVAL;
}

export class Syscalls {
  readonly space: AddressSpace;
  readonly files: FileTable;
  /** The program's path as /proc/self/exe shows it. */
  exePath: string;
  exit: ExitRequest | null = null;
  /** The process's pid (the kernel sets it). */
  pid = process.pid;
  /** After a call returned BLOCKED: BLOCKED while it must still wait, RESTART or its result when done. */
  parked: (() => number) | null = null;
  /** When a parked call stops waiting (performance.now() ms), Infinity for never. */
  parkedUntil = Infinity;
  /** rt_sigaction's table: the 24-byte struct sigaction of each signal (handler, flags, mask). */
  readonly actions = new Map<number, Uint8Array>();
  /** Signal actions, and the running thread's mask, pending set and alternate stack. */
  readonly signals: Signals;
  private readonly reported = new Set<number>();
  private readonly log: (line: string) => void;

  constructor(space: AddressSpace, files: FileTable, exePath: string, log: (line: string) => void) {
    this.space = space;
    this.files = files;
    this.exePath = exePath;
    this.log = log;
    this.signals = new Signals(space, this.actions);
  }

  /** Serves system call `nr`; returns a0's new value. */
  call(nr: number, a0: number, a1: number, a2: number, a3: number, a4: number, a5: number): number {
    try {
      return this.dispatch(nr, a0, a1, a2, a3, a4, a5);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).errno !== undefined) return errno(e);
      throw e;
    }
  }

  /** The handler rt_sigaction set for `sig` (0 SIG_DFL, 1 SIG_IGN, else an address). */
  handler(sig: number): number {
    const action = this.actions.get(sig);
    return action === undefined ? 0 : Number(Buffer.from(action).readBigUInt64LE(0));
  }

  private park(poll: () => number, until = Infinity): number {
    this.parked = poll;
    this.parkedUntil = until;
    return BLOCKED;
  }

  private unsupported(nr: number): number {
    if (!this.reported.has(nr)) {
      this.reported.add(nr);
      this.log(`yun exec: system call ${nr} is not supported (ENOSYS)`);
    }
    return -ENOSYS;
  }

  private str(addr: number): string | null {
    return this.space.cString(addr);
  }

  /** The host path of (dirfd, path-at-addr), or -errno. */
  private path(dirfd: number, addr: number): string | number {
    const p = this.str(addr);
    if (p === null) return -EFAULT;
    return this.files.hostPath(dirfd | 0, p);
  }

  private dispatch(nr: number, a0: number, a1: number, a2: number, a3: number, a4: number, a5: number): number {
    const sp = this.space;
    switch (nr) {
      case 17: // getcwd
        return this.getcwd(a0, a1);
      case 23: // dup
        return this.dup(a0 | 0, 0, false);
      case 24: // dup3
        return this.dup3(a0 | 0, a1 | 0, a2);
      case 25: // fcntl
        return this.fcntl(a0 | 0, a1 | 0, a2);
      case 29: // ioctl
        return this.ioctl(a0 | 0, a1 >>> 0, a2);
      case 34: {
        // mkdirat
        const p = this.path(a0, a1);
        if (typeof p === "number") return p;
        fs.mkdirSync(p, { mode: a2 & 0o7777 });
        return 0;
      }
      case 35: {
        // unlinkat
        const p = this.path(a0, a1);
        if (typeof p === "number") return p;
        if ((a2 & AT_REMOVEDIR) !== 0) fs.rmdirSync(p);
        else fs.unlinkSync(p);
        return 0;
      }
      case 36: {
        // symlinkat(target, newdirfd, linkpath)
        const target = this.str(a0);
        const p = this.path(a1, a2);
        if (target === null) return -EFAULT;
        if (typeof p === "number") return p;
        fs.symlinkSync(target, p);
        return 0;
      }
      case 37: {
        // linkat
        const from = this.path(a0, a1);
        const to = this.path(a2, a3);
        if (typeof from === "number") return from;
        if (typeof to === "number") return to;
        fs.linkSync(from, to);
        return 0;
      }
      case 38: // renameat
      case 276: {
        // renameat2
        const from = this.path(a0, a1);
        const to = this.path(a2, a3);
        if (typeof from === "number") return from;
        if (typeof to === "number") return to;
        if (nr === 276 && (a4 & 1) !== 0 && this.exists(to)) return -EEXIST;
        fs.renameSync(from, to);
        return 0;
      }
      case 46: {
        // ftruncate
        const f = this.files.get(a0 | 0);
        if (f === undefined) return -EBADF;
        fs.ftruncateSync(f.hostFd, a1);
        return 0;
      }
      case 48: // faccessat
      case 439: {
        // faccessat2
        const p = this.path(a0, a1);
        if (typeof p === "number") return p;
        fs.accessSync(p, a2 & 7);
        return 0;
      }
      case 49: {
        // chdir
        const p = this.path(AT_FDCWD, a0);
        if (typeof p === "number") return p;
        if (!fs.statSync(p).isDirectory()) return -ENOTDIR;
        fs.accessSync(p, fs.constants.X_OK);
        this.files.cwd = p;
        return 0;
      }
      case 50: {
        // fchdir
        const f = this.files.get(a0 | 0);
        if (f === undefined) return -EBADF;
        if (!f.directory) return -ENOTDIR;
        this.files.cwd = f.path;
        return 0;
      }
      case 52: {
        // fchmod
        const f = this.files.get(a0 | 0);
        if (f === undefined) return -EBADF;
        fs.fchmodSync(f.hostFd, a1 & 0o7777);
        return 0;
      }
      case 53: {
        // fchmodat
        const p = this.path(a0, a1);
        if (typeof p === "number") return p;
        fs.chmodSync(p, a2 & 0o7777);
        return 0;
      }
      case 54: {
        // fchownat
        const p = this.path(a0, a1);
        if (typeof p === "number") return p;
        if ((a4 & AT_SYMLINK_NOFOLLOW) !== 0) fs.lchownSync(p, a2 | 0, a3 | 0);
        else fs.chownSync(p, a2 | 0, a3 | 0);
        return 0;
      }
      case 55: {
        // fchown
        const f = this.files.get(a0 | 0);
        if (f === undefined) return -EBADF;
        fs.fchownSync(f.hostFd, a1 | 0, a2 | 0);
        return 0;
      }
      case 56: // openat
        return this.openat(a0 | 0, a1, a2, a3);
      case 57: // close
        return this.files.close(a0 | 0) ? 0 : -EBADF;
      case 59: // pipe2
        return this.pipe2(a0, a1);
      case 61: // getdents64
        return this.getdents64(a0 | 0, a1, a2);
      case 62: // lseek
        return this.lseek(a0 | 0, a1, a2);
      case 63: // read
        return this.read(a0 | 0, a1, a2, null);
      case 64: // write
        return this.write(a0 | 0, a1, a2, null);
      case 65: // readv
      case 66: // writev
      case 69: // preadv
      case 70: // pwritev
        return this.vector(nr, a0 | 0, a1, a2, nr >= 69 ? a3 : null);
      case 67: // pread64
        return this.read(a0 | 0, a1, a2, a3);
      case 68: // pwrite64
        return this.write(a0 | 0, a1, a2, a3);
      case 71: // sendfile
        return this.sendfile(a0 | 0, a1 | 0, a2, a3);
      case 72: // pselect6
        return this.pselect(a0, a1, a2, a3, a4);
      case 73: // ppoll
        return this.ppoll(a0, a1, a2);
      case 78: // readlinkat
        return this.readlinkat(a0, a1, a2, a3);
      case 79: // newfstatat
        return this.newfstatat(a0 | 0, a1, a2, a3);
      case 80: {
        // fstat
        const f = this.files.get(a0 | 0);
        if (f === undefined) return -EBADF;
        if (!sp.valid(a1, 128)) return -EFAULT;
        this.fillStat(a1, this.fileStat(f));
        return 0;
      }
      case 81: // sync
      case 82: // fsync
      case 83: // fdatasync
        return 0;
      case 88: // utimensat
        return this.utimensat(a0 | 0, a1, a2, a3);
      case 99: // set_robust_list
        return 0;
      case 113: // clock_gettime
        return this.clockGettime(a0, a1);
      case 114: {
        // clock_getres
        if (a1 !== 0) {
          sp.setU64(a1, 0);
          sp.setU64(a1 + 8, 1);
        }
        return 0;
      }
      case 122: // sched_setaffinity
        return 0;
      case 123: {
        // sched_getaffinity: one CPU
        if (a1 < 8) return -EINVAL;
        sp.setU64(a2, 1);
        return 8;
      }
      case 129: // kill
        return this.kill(a0 | 0, a1 | 0, SI_USER);
      case 130: // tkill (the one thread is the process)
        return this.kill(a0 | 0, a1 | 0, SI_TKILL);
      case 131: // tgkill
        return this.kill(a0 | 0, a2 | 0, SI_TKILL);
      case 132: // sigaltstack
        return this.signals.sigaltstack(a0, a1);
      case 134: // rt_sigaction
        return this.signals.rtSigaction(a0 | 0, a1, a2, a3);
      case 135: // rt_sigprocmask
        return this.signals.rtSigprocmask(a0 | 0, a1, a2, a3);
      case 136: // rt_sigpending
        return this.signals.rtSigpending(a0, a1);
      case 153: {
        // times
        const ticks = Math.floor(performance.now() / 10);
        if (a0 !== 0)
          for (let i = 0; i < 4; i++) sp.setU64(a0 + 8 * i, i === 0 ? Math.floor(process.cpuUsage().user / 10000) : 0);
        return ticks;
      }
      case 154: // setpgid
        return 0;
      case 155: // getpgid
      case 156: // getsid
      case 157: // setsid
        return this.pid;
      case 158: // getgroups
        return 0;
      case 160: // uname
        return this.uname(a0);
      case 163: // getrlimit
        return this.prlimit(0, a0, 0, a1);
      case 164: // setrlimit
        return 0;
      case 165: // getrusage
        if (!sp.valid(a1, 144)) return -EFAULT;
        sp.ram.fill(0, a1, a1 + 144);
        return 0;
      case 166: // umask
        return process.umask(a0 & 0o777);
      case 167: // prctl
        return 0;
      case 169: {
        // gettimeofday
        if (a0 !== 0) {
          const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
          sp.setU64(a0, Math.floor(us / 1e6));
          sp.setU64(a0 + 8, us % 1e6);
        }
        return 0;
      }
      case 172: // getpid (the kernel serves it, with gettid and getppid)
        return this.pid;
      case 174: // getuid
        return process.getuid?.() ?? 0;
      case 175: // geteuid
        return process.geteuid?.() ?? 0;
      case 176: // getgid
        return process.getgid?.() ?? 0;
      case 177: // getegid
        return process.getegid?.() ?? 0;
      case 179: // sysinfo
        if (!sp.valid(a0, 112)) return -EFAULT;
        sp.ram.fill(0, a0, a0 + 112);
        sp.setU64(a0, Math.floor(process.uptime()));
        sp.setU64(a0 + 32, sp.size);
        sp.setU64(a0 + 40, sp.size / 2);
        sp.setU32(a0 + 104, 1);
        return 0;
      case 214: // brk
        return sp.setBrk(a0);
      case 215: // munmap
        return sp.unmap(a0, Math.ceil(a1 / PAGE) * PAGE) ? 0 : -EINVAL;
      case 216: // mremap
        return this.mremap(a0, a1, a2, a3, a4);
      case 222: // mmap
        return this.mmap(a0, a1, a2, a3, a4 | 0, a5);
      case 226: // mprotect
        if (a0 % PAGE !== 0) return -EINVAL;
        return sp.protect(a0, Math.ceil(a1 / PAGE) * PAGE, a2 & 7) ? 0 : -ENOMEM;
      case 223: // fadvise64: advice only
      case 227: // msync
      case 228: // mlock
      case 229: // munlock
        return 0;
      case 233: // madvise
        if (a2 === 4 && sp.valid(a0, a1)) {
          // MADV_DONTNEED: anonymous pages read back as zero
          sp.ram.fill(0, a0, a0 + a1);
          sp.written(a0, a1);
        }
        return 0;
      case 261: // prlimit64
        return this.prlimit(a0, a1, a2, a3);
      case 278: // getrandom
        if (!sp.valid(a0, a1)) return -EFAULT;
        randomFillSync(sp.ram, a0, a1);
        sp.written(a0, a1);
        return a1;
      case 291: // statx
        return this.statx(a0 | 0, a1, a2, a4);
      case 258: // riscv_hwprobe: glibc then assumes the base ISA (AT_HWCAP tells the rest)
      case 293: // rseq: glibc runs without it
        return -ENOSYS;
      case 5: // setxattr
      case 6: // lsetxattr
      case 7: // fsetxattr
      case 8: // getxattr
      case 9: // lgetxattr
      case 10: // fgetxattr
      case 11: // listxattr
      case 12: // llistxattr
      case 13: // flistxattr
        return -EOPNOTSUPP; // no extended attributes: what a file system without them answers
      case 198: // socket: no sockets yet; libc's name-service clients fall back to files
        return -EAFNOSUPPORT;
      case 43: // statfs
      case 44: // fstatfs
        return this.statfs(nr, a0, a1);
      case 259: // riscv_flush_icache: stores to code are seen already
        return 0;
      case 436: {
        // close_range
        for (let fd = a0; fd <= Math.min(a1, 65535); fd++) this.files.close(fd);
        return 0;
      }
      default:
        return this.unsupported(nr);
    }
  }

  private exists(p: string): boolean {
    try {
      fs.lstatSync(p);
      return true;
    } catch {
      return false;
    }
  }

  private statfs(nr: number, target: number, buf: number): number {
    let path: string;
    if (nr === 44) {
      const f = this.files.get(target | 0);
      if (f === undefined) return -EBADF;
      path = f.path !== "" ? f.path : "/";
    } else {
      const p = this.path(AT_FDCWD, target);
      if (typeof p === "number") return p;
      path = p;
    }
    const st = fs.statfsSync(path);
    const s = this.space;
    if (!s.writable(buf, 120)) return -EFAULT;
    s.ram.fill(0, buf, buf + 120);
    [st.type, st.bsize, st.blocks, st.bfree, st.bavail, st.files, st.ffree].forEach((v, i) => s.setU64(buf + 8 * i, v));
    s.setU64(buf + 64, 255); // f_namelen
    s.setU64(buf + 72, st.bsize); // f_frsize
    s.written(buf, 120);
    return 0;
  }

  private getcwd(buf: number, size: number): number {
    let cwd = this.files.cwd;
    const root = this.files.root;
    if (root !== "/" && (cwd === root || cwd.startsWith(root + "/"))) cwd = cwd.slice(root.length) || "/";
    const bytes = Buffer.from(cwd + "\0");
    if (bytes.length > size) return -ERANGE;
    if (!this.space.writable(buf, bytes.length)) return -EFAULT;
    this.space.write(buf, bytes);
    return bytes.length;
  }

  private dup(fd: number, min: number, cloexec: boolean): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    f.refs++;
    return this.files.install(f, cloexec, min);
  }

  private dup3(oldfd: number, newfd: number, flags: number): number {
    const f = this.files.get(oldfd);
    if (f === undefined || newfd < 0) return -EBADF;
    if (oldfd === newfd) return -EINVAL;
    f.refs++;
    this.files.installAt(newfd, f, (flags & O_CLOEXEC) !== 0);
    return newfd;
  }

  private fcntl(fd: number, cmd: number, arg: number): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    switch (cmd) {
      case 0: // F_DUPFD
        return this.dup(fd, arg, false);
      case 1030: // F_DUPFD_CLOEXEC
        return this.dup(fd, arg, true);
      case 1: // F_GETFD
        return this.files.cloexec(fd) ? 1 : 0;
      case 2: // F_SETFD
        this.files.setCloexec(fd, (arg & 1) !== 0);
        return 0;
      case 3: // F_GETFL
        return f.flags;
      case 4: // F_SETFL: O_APPEND, O_NONBLOCK and the like
        f.flags = (f.flags & O_ACCMODE) | (arg & ~O_ACCMODE & ~O_CREAT);
        return 0;
      case 5: // F_GETLK: nothing holds a lock
        this.space.setU32(arg, 2); // l_type = F_UNLCK (a short)
        return 0;
      case 6: // F_SETLK
      case 7: // F_SETLKW
        return 0;
      case 1032: // F_GETPIPE_SZ
        return 65536;
      default:
        return -EINVAL;
    }
  }

  private ioctl(fd: number, request: number, arg: number): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    const tty = f.pipe === null && isatty(f.hostFd);
    switch (request) {
      case 0x5401: // TCGETS
        if (!tty) return -ENOTTY;
        this.space.ram.fill(0, arg, arg + 36);
        this.space.setU32(arg, 0x500); // c_iflag: ICRNL | IXON
        this.space.setU32(arg + 4, 0x5); // c_oflag: OPOST | ONLCR
        this.space.setU32(arg + 8, 0xbf); // c_cflag: B38400 | CS8 | CREAD
        this.space.setU32(arg + 12, 0x8a3b); // c_lflag: ISIG | ICANON | ECHO... | IEXTEN
        return 0;
      case 0x5402: // TCSETS
      case 0x5403: // TCSETSW
      case 0x5404: // TCSETSF
      case 0x540f: // TIOCGPGRP
      case 0x5410: // TIOCSPGRP
        if (!tty) return -ENOTTY;
        if (request === 0x540f) this.space.setU32(arg, this.pid);
        return 0;
      case 0x5413: {
        // TIOCGWINSZ
        if (!tty) return -ENOTTY;
        const stream = fd === 2 ? process.stderr : process.stdout;
        this.space.setU16(arg, stream.rows ?? 24);
        this.space.setU16(arg + 2, stream.columns ?? 80);
        this.space.setU32(arg + 4, 0);
        return 0;
      }
      case 0x541b: // FIONREAD
        this.space.setU32(arg, f.pipe !== null ? f.pipe.length : 0);
        return 0;
      default:
        return -ENOTTY;
    }
  }

  private openat(dirfd: number, pathAddr: number, flags: number, mode: number): number {
    const name = this.str(pathAddr);
    if (name === null) return -EFAULT;
    const p = this.files.hostPath(dirfd, name);
    if (typeof p === "number") return p;
    const hostFd = fs.openSync(p, flags & ~O_CLOEXEC & ~O_NONBLOCK, mode & 0o7777);
    let st: fs.Stats;
    try {
      st = fs.fstatSync(hostFd);
    } catch (e) {
      fs.closeSync(hostFd);
      throw e;
    }
    if ((flags & O_DIRECTORY) !== 0 && !st.isDirectory()) {
      fs.closeSync(hostFd);
      return -ENOTDIR;
    }
    const file = new OpenFile(hostFd, p, flags & ~O_CLOEXEC, st.isDirectory(), !st.isFile() && !st.isDirectory());
    return this.files.install(file, (flags & O_CLOEXEC) !== 0);
  }

  private pipe2(fds: number, flags: number): number {
    if (!this.space.valid(fds, 8)) return -EFAULT;
    const buffer = new PipeBuffer();
    const r = new OpenFile(-1, "", flags & O_NONBLOCK, false, true);
    const w = new OpenFile(-1, "", O_WRONLY | (flags & O_NONBLOCK), false, true);
    r.pipe = w.pipe = buffer;
    r.pipeEnd = "read";
    w.pipeEnd = "write";
    const cloexec = (flags & O_CLOEXEC) !== 0;
    this.space.setU32(fds, this.files.install(r, cloexec));
    this.space.setU32(fds + 4, this.files.install(w, cloexec));
    return 0;
  }

  private getdents64(fd: number, buf: number, count: number): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    if (!f.directory) return -ENOTDIR;
    if (!this.space.writable(buf, count)) return -EFAULT;
    const entries = this.files.listing(f);
    let at = buf;
    while (f.entryIndex < entries.length) {
      const e = entries[f.entryIndex];
      const name = Buffer.from(e.name, "utf8");
      const reclen = Math.ceil((19 + name.length + 1) / 8) * 8;
      if (at + reclen > buf + count) {
        if (at === buf) return -EINVAL;
        break;
      }
      this.space.setU64(at, e.ino);
      this.space.setU64(at + 8, f.entryIndex + 1);
      this.space.setU16(at + 16, reclen);
      this.space.ram[at + 18] = e.type;
      this.space.ram.set(name, at + 19);
      this.space.ram.fill(0, at + 19 + name.length, at + reclen);
      at += reclen;
      f.entryIndex++;
    }
    this.space.written(buf, at - buf);
    return at - buf;
  }

  private lseek(fd: number, offset: number, whence: number): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    if (f.directory) {
      if (whence !== 0) return -EINVAL;
      f.entryIndex = offset;
      return offset;
    }
    if (f.position === null) return -ESPIPE;
    let base = 0;
    if (whence === 1) base = f.position;
    else if (whence === 2 || whence === 4) base = fs.fstatSync(f.hostFd).size;
    else if (whence === 3)
      base = 0; // SEEK_DATA: all data
    else if (whence !== 0) return -EINVAL;
    const next = whence === 4 ? Math.max(base, offset) : whence === 3 ? offset : base + offset;
    if (next < 0) return -EINVAL;
    f.position = next;
    return next;
  }

  /** read/pread64: `at` null reads at (and advances) the file's offset. */
  private read(fd: number, buf: number, count: number, at: number | null): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    if (f.directory) return -EISDIR;
    if (!this.space.writable(buf, count)) return -EFAULT;
    if (f.pipe !== null) return this.readPipe(f, buf, count);
    if ((f.flags & O_ACCMODE) === O_WRONLY) return -EBADF;
    if (at !== null && f.position === null) return -ESPIPE;
    const position = at ?? f.position;
    let n: number;
    for (;;) {
      try {
        n = fs.readSync(f.hostFd, this.space.ram, buf, count, position);
        break;
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === "EAGAIN" && (f.flags & O_NONBLOCK) === 0) sleepMs(2);
        else if (err.code === "EOF") return 0;
        else throw e;
      }
    }
    if (at === null && f.position !== null) f.position += n;
    this.space.written(buf, n);
    return n;
  }

  private readPipe(f: OpenFile, buf: number, count: number): number {
    const p = f.pipe!;
    if (f.pipeEnd !== "read") return -EBADF;
    if (p.chunks.length === 0) {
      if (p.writers === 0) return 0;
      if ((f.flags & O_NONBLOCK) !== 0) return -EAGAIN;
      return this.park(() => (p.chunks.length > 0 || p.writers === 0 ? RESTART : BLOCKED));
    }
    let n = 0;
    while (n < count && p.chunks.length > 0) {
      const c = p.chunks[0];
      const take = Math.min(c.length, count - n);
      this.space.ram.set(c.subarray(0, take), buf + n);
      n += take;
      if (take === c.length) p.chunks.shift();
      else p.chunks[0] = c.subarray(take);
    }
    p.length -= n;
    this.space.written(buf, n);
    return n;
  }

  private write(fd: number, buf: number, count: number, at: number | null): number {
    const f = this.files.get(fd);
    if (f === undefined) return -EBADF;
    if (!this.space.valid(buf, count)) return -EFAULT;
    if (f.pipe !== null) {
      if (f.pipeEnd !== "write") return -EBADF;
      const p = f.pipe;
      if (p.readers === 0) return this.brokenPipe();
      if (count === 0) return 0;
      // Room for all of a small write (atomic, as PIPE_BUF promises), or for some of a large one.
      const needed = Math.min(count, PIPE_BUF);
      if (PIPE_CAPACITY - p.length < needed) {
        if ((f.flags & O_NONBLOCK) !== 0) return -EAGAIN;
        return this.park(() => (p.readers === 0 || PIPE_CAPACITY - p.length >= needed ? RESTART : BLOCKED));
      }
      const n = Math.min(count, PIPE_CAPACITY - p.length);
      p.chunks.push(Buffer.from(this.space.bytes(buf, n)));
      p.length += n;
      return n;
    }
    if ((f.flags & O_ACCMODE) === 0) return -EBADF;
    if (at !== null && f.position === null) return -ESPIPE;
    const append = at === null && (f.flags & O_APPEND) !== 0;
    let position = at ?? (append ? null : f.position);
    let done = 0;
    while (done < count) {
      let n: number;
      try {
        n = fs.writeSync(f.hostFd, this.space.ram, buf + done, count - done, position);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === "EAGAIN" && (f.flags & O_NONBLOCK) === 0) {
          sleepMs(2);
          continue;
        }
        if (err.code === "EPIPE") return done > 0 ? done : this.brokenPipe();
        if (done > 0) return done;
        throw e;
      }
      done += n;
      if (position !== null) position += n;
    }
    if (at === null && f.position !== null) f.position = append ? fs.fstatSync(f.hostFd).size : f.position + done;
    return done;
  }

  /** A write to a pipe nobody reads: EPIPE and SIGPIPE, whose default action ends the process. */
  private brokenPipe(): number {
    this.signals.raise(SIGPIPE, SI_USER, this.pid);
    return -EPIPE;
  }

  private vector(nr: number, fd: number, iov: number, count: number, at: number | null): number {
    if (count < 0 || count > 1024 || !this.space.valid(iov, count * 16)) return -EINVAL;
    let total = 0;
    const reading = nr === 65 || nr === 69;
    for (let i = 0; i < count; i++) {
      const base = this.space.u64(iov + 16 * i);
      const len = this.space.u64(iov + 16 * i + 8);
      if (len === 0) continue;
      const pos = at === null ? null : at + total;
      const n = reading ? this.read(fd, base, len, pos) : this.write(fd, base, len, pos);
      if (n < 0) return total > 0 ? total : n;
      total += n;
      if (n < len) break;
    }
    return total;
  }

  private sendfile(outFd: number, inFd: number, offsetAddr: number, count: number): number {
    const input = this.files.get(inFd);
    if (input === undefined || this.files.get(outFd) === undefined) return -EBADF;
    const chunk = Math.min(count, 1 << 20);
    const scratch = this.space.map(chunk);
    if (scratch < 0) return -ENOMEM;
    try {
      let pos = offsetAddr !== 0 ? this.space.u64(offsetAddr) : null;
      let total = 0;
      while (total < count) {
        const n = this.read(inFd, scratch, Math.min(chunk, count - total), pos);
        if (n <= 0) {
          if (total === 0 && n < 0) return n;
          break;
        }
        const w = this.write(outFd, scratch, n, null);
        if (w < 0) return total > 0 ? total : w;
        total += w;
        if (pos !== null) pos += w;
      }
      if (offsetAddr !== 0 && pos !== null) this.space.setU64(offsetAddr, pos);
      return total;
    } finally {
      this.space.unmap(scratch, Math.ceil(chunk / PAGE) * PAGE);
    }
  }

  /** Poll bits for `fd`: in-process pipes as their buffers say, host files and terminals always ready. */
  private readiness(fd: number, events: number): number {
    const f = this.files.get(fd);
    if (f === undefined) return 0x20; // POLLNVAL
    const p = f.pipe;
    if (p === null) return events & 0x5; // POLLIN | POLLOUT
    if (f.pipeEnd === "read") return (p.length > 0 ? events & 1 : 0) | (p.writers === 0 ? 0x10 : 0); // POLLHUP
    return (p.readers === 0 ? 0x8 : 0) | (PIPE_CAPACITY - p.length >= PIPE_BUF ? events & 4 : 0); // POLLERR
  }

  /** The deadline of a timespec timeout (null pointer: none). */
  private timeoutDeadline(ts: number): number {
    if (ts === 0) return Infinity;
    return performance.now() + this.space.i64(ts) * 1000 + this.space.i64(ts + 8) / 1e6;
  }

  private ppoll(fds: number, nfds: number, timeout: number): number {
    if (!this.space.valid(fds, nfds * 8)) return -EFAULT;
    if (timeout !== 0 && !this.space.valid(timeout, 16)) return -EFAULT;
    const scan = (): number => {
      let ready = 0;
      for (let i = 0; i < nfds; i++) {
        const at = fds + 8 * i;
        const fd = this.space.i32(at);
        const events = this.space.ram[at + 4] | (this.space.ram[at + 5] << 8);
        const revents = fd >= 0 ? this.readiness(fd, events) : 0;
        this.space.setU16(at + 6, revents);
        if (revents !== 0) ready++;
      }
      return ready;
    };
    const ready = scan();
    const until = this.timeoutDeadline(timeout);
    if (ready > 0 || until <= performance.now()) return ready;
    return this.park(() => {
      const n = scan();
      return n > 0 ? n : performance.now() >= until ? 0 : BLOCKED;
    }, until);
  }

  private pselect(nfds: number, readfds: number, writefds: number, exceptfds: number, timeout: number): number {
    if (nfds < 0 || nfds > 1024) return -EINVAL;
    const bytes = Math.ceil(nfds / 64) * 8;
    const sets = [readfds, writefds].map((at) => (at !== 0 && this.space.valid(at, bytes) ? at : 0));
    const asked = sets.map((at) => (at !== 0 ? this.space.bytes(at, bytes).slice() : null));
    if (exceptfds !== 0 && this.space.valid(exceptfds, bytes)) this.space.ram.fill(0, exceptfds, exceptfds + bytes);
    const scan = (write: boolean): number => {
      let ready = 0;
      for (let k = 0; k < 2; k++) {
        const want = asked[k];
        if (want === null) continue;
        for (let fd = 0; fd < nfds; fd++) {
          if (((want[fd >> 3] >> (fd & 7)) & 1) === 0) continue;
          const r = this.readiness(fd, k === 0 ? 1 : 4);
          if (r === 0x20) return -EBADF;
          const on = (k === 0 ? r & 0x19 : r & 0xc) !== 0;
          if (on) ready++;
          if (write) {
            const at = sets[k] + (fd >> 3);
            if (on) this.space.ram[at] |= 1 << (fd & 7);
            else this.space.ram[at] &= ~(1 << (fd & 7));
          }
        }
      }
      return ready;
    };
    const until = this.timeoutDeadline(timeout);
    const ready = scan(false);
    if (ready !== 0 || until <= performance.now()) return scan(true);
    return this.park(() => {
      const n = scan(false);
      return n !== 0 || performance.now() >= until ? scan(true) : BLOCKED;
    }, until);
  }

  private readlinkat(dirfd: number, pathAddr: number, buf: number, size: number): number {
    const name = this.str(pathAddr);
    if (name === null) return -EFAULT;
    let target: string;
    if (name === "/proc/self/exe" || name === `/proc/${this.pid}/exe`) target = this.exePath;
    else {
      const p = this.files.hostPath(dirfd | 0, name);
      if (typeof p === "number") return p;
      target = fs.readlinkSync(p);
    }
    const bytes = Buffer.from(target, "utf8").subarray(0, size);
    if (!this.space.writable(buf, bytes.length)) return -EFAULT;
    this.space.write(buf, bytes);
    return bytes.length;
  }

  private fileStat(f: OpenFile): fs.BigIntStats {
    if (f.pipe !== null) {
      const st = fs.fstatSync(0, { bigint: true });
      return Object.assign(Object.create(Object.getPrototypeOf(st) as object) as fs.BigIntStats, st, {
        mode: 0o10600n,
        size: 0n,
      });
    }
    return fs.fstatSync(f.hostFd, { bigint: true });
  }

  /** stat of (dirfd, path) honouring AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH, or -errno. */
  private statAt(dirfd: number, pathAddr: number, flags: number): fs.BigIntStats | number {
    const name = this.str(pathAddr);
    if (name === null) return -EFAULT;
    if (name === "" && (flags & AT_EMPTY_PATH) !== 0) {
      if (dirfd === AT_FDCWD) return fs.statSync(this.files.cwd, { bigint: true });
      const f = this.files.get(dirfd);
      return f === undefined ? -EBADF : this.fileStat(f);
    }
    if (name === "/proc/self/exe") return fs.statSync(this.exePath, { bigint: true });
    const p = this.files.hostPath(dirfd, name);
    if (typeof p === "number") return p;
    return (flags & AT_SYMLINK_NOFOLLOW) !== 0 ? fs.lstatSync(p, { bigint: true }) : fs.statSync(p, { bigint: true });
  }

  private newfstatat(dirfd: number, pathAddr: number, buf: number, flags: number): number {
    const st = this.statAt(dirfd, pathAddr, flags);
    if (typeof st === "number") return st;
    if (!this.space.writable(buf, 128)) return -EFAULT;
    this.fillStat(buf, st);
    return 0;
  }

  /** struct stat of asm-generic (128 bytes). */
  private fillStat(at: number, st: fs.BigIntStats): void {
    const s = this.space;
    s.ram.fill(0, at, at + 128);
    s.setU64(at, st.dev);
    s.setU64(at + 8, st.ino);
    s.setU32(at + 16, Number(st.mode));
    s.setU32(at + 20, Number(st.nlink));
    s.setU32(at + 24, Number(st.uid));
    s.setU32(at + 28, Number(st.gid));
    s.setU64(at + 32, st.rdev);
    s.setU64(at + 48, st.size);
    s.setU32(at + 56, Number(st.blksize));
    s.setU64(at + 64, st.blocks);
    const times = [st.atimeNs, st.mtimeNs, st.ctimeNs];
    for (let i = 0; i < 3; i++) {
      s.setU64(at + 72 + 16 * i, times[i] / 1_000_000_000n);
      s.setU64(at + 80 + 16 * i, times[i] % 1_000_000_000n);
    }
    s.written(at, 128);
  }

  private statx(dirfd: number, pathAddr: number, flags: number, buf: number): number {
    const st = this.statAt(dirfd, pathAddr, flags);
    if (typeof st === "number") return st;
    const s = this.space;
    if (!s.writable(buf, 256)) return -EFAULT;
    s.ram.fill(0, buf, buf + 256);
    s.setU32(buf, 0x7ff); // STATX_BASIC_STATS
    s.setU32(buf + 4, Number(st.blksize));
    s.setU32(buf + 16, Number(st.nlink));
    s.setU32(buf + 20, Number(st.uid));
    s.setU32(buf + 24, Number(st.gid));
    s.setU16(buf + 28, Number(st.mode));
    s.setU64(buf + 32, st.ino);
    s.setU64(buf + 40, st.size);
    s.setU64(buf + 48, st.blocks);
    const put = (at: number, ns: bigint): void => {
      s.setU64(at, ns / 1_000_000_000n);
      s.setU32(at + 8, Number(ns % 1_000_000_000n));
    };
    put(buf + 64, st.atimeNs);
    put(buf + 80, st.birthtimeNs);
    put(buf + 96, st.ctimeNs);
    put(buf + 112, st.mtimeNs);
    const dev = Number(st.dev);
    const rdev = Number(st.rdev);
    s.setU32(buf + 128, (rdev >>> 8) & 0xfff);
    s.setU32(buf + 132, (rdev & 0xff) | ((rdev >>> 12) & ~0xff));
    s.setU32(buf + 136, (dev >>> 8) & 0xfff);
    s.setU32(buf + 140, (dev & 0xff) | ((dev >>> 12) & ~0xff));
    s.written(buf, 256);
    return 0;
  }

  private utimensat(dirfd: number, pathAddr: number, times: number, flags: number): number {
    const now = Date.now() / 1000;
    const time = (at: number): number | null => {
      if (times === 0) return now;
      const nsec = this.space.u64(at + 8);
      if (nsec === 0x3fffffff) return now; // UTIME_NOW
      if (nsec === 0x3ffffffe) return null; // UTIME_OMIT
      return this.space.i64(at) + nsec / 1e9;
    };
    let target: string | number;
    if (pathAddr === 0) {
      const f = this.files.get(dirfd);
      if (f === undefined) return -EBADF;
      target = f.hostFd;
    } else {
      const p = this.path(dirfd, pathAddr);
      if (typeof p === "number") return p;
      target = p;
    }
    const st = typeof target === "number" ? fs.fstatSync(target) : fs.statSync(target);
    const atime = time(times) ?? st.atimeMs / 1000;
    const mtime = time(times + 16) ?? st.mtimeMs / 1000;
    if (typeof target === "number") fs.futimesSync(target, atime, mtime);
    else if ((flags & AT_SYMLINK_NOFOLLOW) !== 0) fs.lutimesSync(target, atime, mtime);
    else fs.utimesSync(target, atime, mtime);
    return 0;
  }

  private clockGettime(clock: number, tp: number): number {
    if (!this.space.valid(tp, 16)) return -EFAULT;
    let sec: number;
    let nsec: number;
    if (clock === 0 || clock === 5 || clock === 8 || clock === 11) {
      const ms = performance.timeOrigin + performance.now();
      sec = Math.floor(ms / 1000);
      nsec = Math.floor((ms - sec * 1000) * 1e6);
    } else {
      const ns = clock === 2 || clock === 3 ? BigInt(process.cpuUsage().user) * 1000n : process.hrtime.bigint();
      sec = Number(ns / 1_000_000_000n);
      nsec = Number(ns % 1_000_000_000n);
    }
    this.space.setU64(tp, sec);
    this.space.setU64(tp + 8, Math.min(nsec, 999_999_999));
    return 0;
  }

  private kill(pid: number, sig: number, code: number): number {
    if (pid !== this.pid && pid !== 0 && pid !== -1) return pid > 0 ? -ESRCH : -EPERM;
    if (sig === 0) return 0;
    if (sig < 1 || sig > 64) return -EINVAL;
    this.signals.raise(sig, code, this.pid);
    return 0;
  }

  private uname(buf: number): number {
    if (!this.space.valid(buf, 6 * 65)) return -EFAULT;
    const fields = ["Linux", hostname(), release(), version(), "riscv64", "(none)"];
    this.space.ram.fill(0, buf, buf + 6 * 65);
    fields.forEach((f, i) => this.space.ram.set(Buffer.from(f, "utf8").subarray(0, 64), buf + 65 * i));
    return 0;
  }

  private prlimit(pid: number, resource: number, newLimit: number, oldLimit: number): number {
    if (pid !== 0 && pid !== this.pid) return -ESRCH;
    if (oldLimit !== 0) {
      if (!this.space.valid(oldLimit, 16)) return -EFAULT;
      let cur = RLIM_INFINITY;
      let max = RLIM_INFINITY;
      if (resource === 3) cur = 8n << 20n; // RLIMIT_STACK
      if (resource === 7) [cur, max] = [1024n, 4096n]; // RLIMIT_NOFILE
      if (resource === 4) cur = 0n; // RLIMIT_CORE
      this.space.setU64(oldLimit, cur);
      this.space.setU64(oldLimit + 8, max);
    }
    return 0;
  }

  private mmap(addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number {
    const sp = this.space;
    if (length <= 0 || offset % PAGE !== 0) return -EINVAL;
    const size = Math.ceil(length / PAGE) * PAGE;
    let at: number;
    if ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0) {
      if (!sp.mapFixed(addr, size, prot & 7)) return -ENOMEM;
      at = addr;
    } else {
      at = sp.map(size, addr, prot & 7);
      if (at < 0) return -ENOMEM;
    }
    if ((flags & MAP_ANONYMOUS) === 0) {
      const f = this.files.get(fd);
      if (f === undefined || f.pipe !== null) {
        sp.unmap(at, size);
        return -EBADF;
      }
      let done = 0;
      while (done < length) {
        const n = fs.readSync(f.hostFd, sp.ram, at + done, length - done, offset + done);
        if (n <= 0) break;
        done += n;
      }
      sp.written(at, done);
    }
    return at;
  }

  private mremap(old: number, oldSize: number, newSize: number, flags: number, newAddr: number): number {
    const sp = this.space;
    oldSize = Math.ceil(oldSize / PAGE) * PAGE;
    newSize = Math.ceil(newSize / PAGE) * PAGE;
    if (old % PAGE !== 0 || newSize === 0) return -EINVAL;
    if (newSize <= oldSize && (flags & 2) === 0) {
      if (newSize < oldSize) sp.unmap(old + newSize, oldSize - newSize);
      return old;
    }
    if ((flags & 1) === 0) return -ENOMEM; // MREMAP_MAYMOVE
    if (!sp.isMapped(old)) return -EFAULT;
    const prot = sp.protection(old);
    const to = (flags & 2) !== 0 ? (sp.mapFixed(newAddr, newSize, prot) ? newAddr : -1) : sp.map(newSize, 0, prot);
    if (to < 0) return -ENOMEM;
    sp.ram.copyWithin(to, old, old + Math.min(oldSize, newSize));
    sp.written(to, Math.min(oldSize, newSize));
    sp.unmap(old, oldSize);
    return to;
  }
}

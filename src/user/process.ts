/**
 * One riscv64 Linux process run on Yun's hart in U-mode: the qemu-user of Yun.
 *
 * The hart runs with bare addressing over RAM based at 0, so the program's virtual addresses are
 * RAM offsets, and with `stopOnTrap`: an `ecall` (a system call) or a fault ends `run()` with the
 * hart in M-mode and mcause/mepc/mtval set; this loop serves it and puts the hart back in U-mode.
 * The translator (WebAssembly when RAM is a WebAssembly memory) runs the hot code as in a VM.
 */
import {
  accessSync,
  constants,
  existsSync,
  readSync,
  openSync,
  closeSync,
  realpathSync,
  statSync,
  writeSync,
} from "node:fs";
import { spawnSync, type StdioOptions } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { constants as osConstants } from "node:os";
import { allocateRam, Bus } from "../cpu/bus.js";
import { MSTATUS_FS } from "../cpu/csr.js";
import { Hart, PRIV_M } from "../cpu/hart.js";
import { Jit } from "../cpu/jit.js";
import { ExecError } from "./elf.js";
import { AT_FDCWD, FileTable, type Slot } from "./files.js";
import { loadProgram } from "./loader.js";
import { AddressSpace, PAGE, type MemorySnapshot } from "./memory.js";
import { faultSignal, forkSignalThread, SIGILL, SIGSEGV, SIGTRAP, type SignalThread } from "./signals.js";
import { Syscalls } from "./syscalls.js";

export { ExecError };

/** Default size of a process's address space (RAM offsets are int32 in the TLB: at most 2 GiB). */
export const DEFAULT_SPACE_BYTES = 1 << 30;
const CAUSE_ECALL_U = 8;
const SYS_CLONE = 220;
const SYS_EXECVE = 221;
const SYS_WAIT4 = 260;
const SYS_RT_SIGRETURN = 139;
/** Unmaps larger than this drop the whole TLB rather than page by page. */
const TLB_PAGE_FLUSH_LIMIT = 64;
const SYS_CLONE3 = 435;
const CLONE_VM = 0x100;
const CLONE_SETTLS = 0x80000;
const CLONE_PARENT_SETTID = 0x100000;
const CLONE_CHILD_SETTID = 0x1000000;
const CLONE_THREAD = 0x10000;
/** The `yun` command, to run a program an execve names in a process of its own. */
const YUN_BIN = fileURLToPath(new URL("../../../bin/yun.js", import.meta.url));

/** A fork's parent, waiting (in this process) for its child to exit or exec. */
interface ForkFrame {
  x: Int32Array;
  f: Int32Array;
  fflags: number;
  frm: number;
  pc: number;
  /** Null when the child shares the memory (vfork, CLONE_VM). */
  memory: MemorySnapshot | null;
  files: (Slot | undefined)[];
  pid: number;
  childPid: number;
  cwd: string;
  actions: Map<number, Uint8Array>;
  signals: SignalThread;
}
/** A system call that already set the hart's state (clone, a child's end): nothing to write back. */
const RESUMED = Number.MIN_SAFE_INTEGER;

export interface UserProgramOptions {
  /** The directory that holds the program's own files (its loader, libraries): like qemu-user's -L. */
  root: string;
  /** The program as the user named it: a path, or a name looked up in the root's PATH directories. */
  program: string;
  /** argv, argv[0] included. */
  argv: string[];
  env: string[];
  /** Bytes of the address space (default 1 GiB; touched pages only take host memory). */
  spaceBytes?: number;
  /** Interpret only (no translator): for tests and comparisons. */
  interpret?: boolean;
  /** Where diagnostics go (default stderr). */
  log?: (line: string) => void;
  /** Host fds to serve as the program's stdin, stdout and stderr (default: this process's). */
  stdio?: readonly [number, number, number];
  /** Log every system call (strace-like) to `log`. */
  trace?: boolean;
}

const SEARCH_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/**
 * The host path of a program: a name with a slash is a path (inside the root first when absolute),
 * a bare name is searched in the root's usual bin directories; null when not found.
 */
export function findProgram(files: FileTable, program: string): string | null {
  if (program.includes("/")) {
    const p = program.startsWith("/") ? files.inRoot(program) : resolve(program);
    return existsSync(p) ? p : null;
  }
  for (const dir of SEARCH_PATH) {
    const p = join(files.root, dir, program);
    if (existsSync(p)) return p;
  }
  return null;
}

export class UserProcess {
  readonly bus: Bus;
  readonly hart: Hart;
  readonly space: AddressSpace;
  readonly files: FileTable;
  readonly syscalls: Syscalls;
  private readonly jit: Jit | null;
  private readonly log: (line: string) => void;
  private readonly name: string;
  private readonly trace: boolean;
  private readonly root: string;
  /** Parents whose fork child is running now (innermost last). */
  private readonly forks: ForkFrame[] = [];
  /** Children that ended and were not waited for: pid and wait status. */
  private readonly zombies: { pid: number; status: number }[] = [];
  private nextPid = process.pid + 1;

  /** Builds the process and loads its program; throws an ExecError when it cannot run. */
  constructor(options: UserProgramOptions) {
    this.log = options.log ?? ((line) => writeSync(2, line + "\n"));
    const root = realpathSync(options.root);
    this.root = root;
    this.files = new FileTable(root, options.stdio);
    const path = findProgram(this.files, options.program);
    this.name = options.program;
    this.trace = options.trace === true;
    if (path === null) throw new ExecError(`${options.program}: no such file`, 127);
    const size = options.spaceBytes ?? DEFAULT_SPACE_BYTES;
    this.bus = new Bus(0, size, false, allocateRam(size));
    this.hart = new Hart(this.bus);
    this.jit = options.interpret === true ? null : new Jit(this.hart);
    this.space = new AddressSpace(this.bus);
    const exe = resolve(path);
    this.syscalls = new Syscalls(this.space, this.files, exe, this.log);
    const interpreter = (guestPath: string): string | null => {
      const p = this.files.inRoot(guestPath);
      return existsSync(p) ? p : null;
    };
    const loaded = loadProgram(
      this.space,
      { path, interpreter },
      options.argv,
      options.env,
      options.argv[0] ?? options.program,
    );
    const h = this.hart;
    h.stopOnTrap = true;
    h.mstatus |= MSTATUS_FS; // the FPU is on (Linux turns it on at the first FP instruction)
    h.mcounteren = 7; // cycle, time, instret readable from U-mode
    h.scounteren = 7;
    h.setXNumber(2, loaded.sp);
    // Sv39 over the space's identity page table: its protections are the hart's.
    h.satpHi = 8 << 28;
    h.satpLo = this.space.rootPage;
    h.flushTlb();
    this.space.onUnmap = (addr, length, execLost) => {
      if (execLost || length > TLB_PAGE_FLUSH_LIMIT * PAGE) h.flushTlb();
      else for (let a = addr; a < addr + length; a += PAGE) h.flushTlbPage(a, 0);
    };
    this.syscalls.signals.stackPointer = () => h.x[5] * 4294967296 + (h.x[4] >>> 0);
    h.enterUserMode(loaded.entry);
  }

  /** Runs the program to its end; returns its exit status (128 + signal when a signal ended it). */
  run(): number {
    const h = this.hart;
    const x = h.x;
    const sys = this.syscalls;
    const arg = (r: number): number => x[2 * r + 1] * 4294967296 + (x[2 * r] >>> 0);
    for (;;) {
      h.run(50_000_000);
      if (h.priv !== PRIV_M) continue; // budget spent
      const cause = h.mcauseLo;
      const pc = h.mepc;
      if (cause === CAUSE_ECALL_U && !h.mcauseInterrupt) {
        const nr = arg(17);
        let result: number;
        if (nr === SYS_RT_SIGRETURN) {
          if (sys.signals.sigreturn(h) ? this.deliverSignals() : this.killedBy(SIGSEGV)) continue;
          break;
        }
        if (nr === SYS_CLONE) result = this.clone(arg(10), arg(11), arg(12), arg(13), arg(14), pc + 4);
        else if (nr === SYS_CLONE3)
          result = -38; // ENOSYS: libc falls back to clone
        else if (nr === SYS_EXECVE) result = this.execve(arg(10), arg(11), arg(12));
        else if (nr === SYS_WAIT4) result = this.wait4(arg(10) | 0, arg(11), arg(12));
        else result = sys.call(nr, arg(10), arg(11), arg(12), arg(13), arg(14), arg(15));
        if (result === RESUMED) continue;
        if (sys.exit !== null && this.forks.length > 0) {
          const e = sys.exit;
          this.endChild(e.signal !== 0 ? e.signal : (e.status & 0xff) << 8);
          continue;
        }
        if (this.trace)
          this.log(
            `[syscall ${arg(17)}(${[10, 11, 12, 13].map((r) => "0x" + arg(r).toString(16)).join(", ")}) = ${result}]`,
          );
        if (sys.exit !== null) break;
        h.setXNumber(10, result);
        h.enterUserMode(pc + 4);
        if (this.deliverSignals()) continue;
        break;
      }
      // A fault: its signal goes to the handler if one is installed, else ends the process.
      const addr = (h.mtvalHi >>> 0) * 4294967296 + (h.mtvalLo >>> 0);
      const fault = faultSignal(cause, this.space.isMapped(addr));
      h.enterUserMode(pc);
      const siAddr = fault.signo === SIGILL || fault.signo === SIGTRAP ? pc : addr;
      if (sys.signals.fault(fault.signo, fault.code, siAddr)) {
        if (this.deliverSignals()) continue;
        break;
      }
      this.log(`yun exec: ${this.name}: ${fault.what} at pc 0x${pc.toString(16)} (address 0x${addr.toString(16)})`);
      if (this.killedBy(fault.signo)) continue;
      break;
    }
    this.files.closeAll();
    return sys.exit?.status ?? 0; // the loop ends only once exit is set
  }

  /**
   * Signals hook, before the hart returns to user mode: pending signals go to their handlers (the
   * hart then starts in one); false when a signal's default action ended the process.
   */
  private deliverSignals(): boolean {
    const signal = this.syscalls.signals.deliver(this.hart);
    return signal === 0 || this.killedBy(signal);
  }

  /** `signal` ends the running program: a fork child's parent continues (true), else the process ends. */
  private killedBy(signal: number): boolean {
    if (this.forks.length > 0) {
      this.endChild(signal);
      return true;
    }
    this.syscalls.exit = { status: 128 + signal, signal };
    return false;
  }

  /**
   * fork/vfork (clone without CLONE_THREAD), run in this process one after the other: the parent's
   * registers, descriptors and (unless the memory is shared) mapped pages are set aside, the child
   * runs until it exits or execs, then the parent continues with its state back and the child's pid.
   */
  private clone(flags: number, newsp: number, ptid: number, tls: number, ctid: number, pc: number): number {
    const h = this.hart;
    const sys = this.syscalls;
    if ((flags & CLONE_THREAD) !== 0) {
      this.log("yun exec: threads (clone with CLONE_THREAD) are not supported yet (ENOSYS)");
      return -38;
    }
    const childPid = this.nextPid++;
    if ((flags & CLONE_PARENT_SETTID) !== 0 && this.space.valid(ptid, 4)) this.space.setU32(ptid, childPid);
    this.forks.push({
      x: h.x.slice(),
      f: h.f.slice(),
      fflags: h.fflags,
      frm: h.frm,
      pc,
      memory: (flags & CLONE_VM) !== 0 ? null : this.space.snapshot(),
      files: this.files.fork(),
      pid: sys.pid,
      childPid,
      cwd: process.cwd(),
      actions: new Map(sys.actions),
      signals: sys.signals.thread,
    });
    sys.signals.thread = forkSignalThread(sys.signals.thread);
    sys.pid = childPid;
    if ((flags & CLONE_CHILD_SETTID) !== 0 && this.space.valid(ctid, 4)) this.space.setU32(ctid, childPid);
    if (newsp !== 0) h.setXNumber(2, newsp);
    if ((flags & CLONE_SETTLS) !== 0) h.setXNumber(4, tls);
    h.setXNumber(10, 0);
    h.enterUserMode(pc);
    return RESUMED;
  }

  /** The running fork child ended with `waitStatus`: its parent continues. */
  private endChild(waitStatus: number): void {
    const frame = this.forks.pop()!;
    const h = this.hart;
    const sys = this.syscalls;
    this.zombies.push({ pid: frame.childPid, status: waitStatus });
    if (frame.memory !== null) this.space.restore(frame.memory);
    this.files.restore(frame.files);
    h.x.set(frame.x);
    h.f.set(frame.f);
    h.fflags = frame.fflags;
    h.frm = frame.frm;
    sys.pid = frame.pid;
    sys.exit = null;
    sys.actions.clear();
    for (const [k, v] of frame.actions) sys.actions.set(k, v);
    sys.signals.thread = frame.signals;
    try {
      process.chdir(frame.cwd);
    } catch {
      // the directory went away meanwhile: stay where the child left us
    }
    h.setXNumber(10, frame.childPid);
    h.enterUserMode(frame.pc);
  }

  private wait4(pid: number, wstatus: number, options: number): number {
    const i = this.zombies.findIndex((z) => pid === -1 || pid === 0 || z.pid === pid);
    if (i < 0) return options & 1 && this.forks.length > 0 ? 0 : -10; // WNOHANG; ECHILD
    const z = this.zombies.splice(i, 1)[0];
    if (wstatus !== 0 && this.space.valid(wstatus, 4)) this.space.setU32(wstatus, z.status);
    return z.pid;
  }

  private stringArray(addr: number): string[] | null {
    const out: string[] = [];
    for (let at = addr; addr !== 0; at += 8) {
      if (!this.space.valid(at, 8)) return null;
      const p = this.space.u64(at);
      if (p === 0) break;
      const s = this.space.cString(p, 1 << 17);
      if (s === null) return null;
      out.push(s);
    }
    return out;
  }

  /**
   * execve: the program runs in a `yun exec` process of its own (the same root), with this
   * process's stdin, stdout and stderr (in-process pipes carry its input and output); its exit ends
   * the fork child that called execve, or this process when no fork is running.
   */
  private execve(pathAddr: number, argvAddr: number, envpAddr: number): number {
    const sys = this.syscalls;
    const path = this.space.cString(pathAddr);
    const argv = this.stringArray(argvAddr);
    const envp = this.stringArray(envpAddr);
    if (path === null || argv === null || envp === null) return -14; // EFAULT
    const host = this.files.hostPath(AT_FDCWD, path);
    if (typeof host === "number") return host;
    try {
      if (!statSync(host).isFile()) return -13; // EACCES
      accessSync(host, constants.X_OK);
    } catch (e) {
      return (e as NodeJS.ErrnoException).errno ?? -2;
    }
    let program = host;
    let args = argv.slice(1);
    let argv0 = argv[0] ?? path;
    const head = Buffer.alloc(256);
    const fd = openSync(host, "r");
    const n = readSync(fd, head, 0, 256, 0);
    closeSync(fd);
    if (head[0] === 0x23 && head[1] === 0x21) {
      // #!interpreter [arg]
      const line = head.subarray(2, n).toString("latin1").split("\n")[0].trim();
      const [interp, ...rest] = line.split(/\s+/);
      program = interp;
      argv0 = interp;
      args = [...(rest.length > 0 ? [rest.join(" ")] : []), path, ...argv.slice(1)];
    }
    const stdio: StdioOptions = [];
    let input: Buffer | undefined;
    for (let i = 0; i < 3; i++) {
      const f = this.files.get(i);
      if (f === undefined) stdio.push("ignore");
      else if (f.pipe !== null) {
        stdio.push("pipe");
        if (i === 0) {
          input = Buffer.concat(f.pipe.chunks);
          f.pipe.chunks = [];
        }
      } else stdio.push(f.hostFd);
    }
    const r = spawnSync(
      process.execPath,
      [
        YUN_BIN,
        "exec",
        "--root",
        this.root,
        "--clear-env",
        "--argv0",
        argv0,
        ...envp.filter((e) => e.includes("=")).flatMap((e) => ["--env", e]),
        "--",
        program,
        ...args,
      ],
      { stdio, input, maxBuffer: 1 << 30 },
    );
    for (const [i, out] of [
      [1, r.stdout],
      [2, r.stderr],
    ] as const) {
      const f = this.files.get(i);
      if (f?.pipe != null && out != null && out.length > 0 && f.pipe.readers > 0) f.pipe.chunks.push(Buffer.from(out));
    }
    const signal = r.signal !== null ? (osConstants.signals[r.signal] ?? 9) : 0;
    const status = r.status ?? 128 + signal;
    if (this.forks.length > 0) {
      this.endChild(signal !== 0 ? signal : (status & 0xff) << 8);
      return RESUMED;
    }
    sys.exit = { status, signal };
    return 0;
  }

  /** The translator's counters (blocks, code bytes), when it runs. */
  translatorStats(): ReturnType<Jit["stats"]> | null {
    return this.jit?.stats() ?? null;
  }
}

/**
 * The little kernel of `yun exec`: processes and threads of riscv64 Linux programs, scheduled on
 * Yun's harts in one Node process.
 *
 * An Image is an address space with the hart that runs it (Bus + RAM + AddressSpace + Hart + Jit);
 * a process (Proc) has an image, a file table (with its cwd) and its system-call server; a Task is
 * a thread: its saved registers and, when it waits, a poll function. Threads of a process share
 * its image and take turns on its hart (a context switch swaps x, f, fcsr and pc); fork copies the
 * mapped pages into a new image; vfork and CLONE_VM share the parent's image (the parent waits
 * until the child execs or exits, as on Linux); execve loads a new image into the same process.
 *
 * The scheduler runs tasks round-robin, each for a slice of instructions or until it blocks. A
 * blocked task's poll says BLOCKED (still waiting), RESTART (run its ecall again: a pipe became
 * ready) or the system call's result. When every task waits on time only, the host sleeps until the
 * earliest deadline; when every task waits forever, that is a deadlock: one line, and the end.
 */
import { accessSync, closeSync, constants, openSync, readSync, statSync } from "node:fs";
import { allocateRam, Bus } from "../cpu/bus.js";
import { MSTATUS_FS } from "../cpu/csr.js";
import { Hart, PRIV_M } from "../cpu/hart.js";
import { Jit } from "../cpu/jit.js";
import { ExecError } from "./elf.js";
import { AT_FDCWD, FileTable } from "./files.js";
import { loadProgram } from "./loader.js";
import { AddressSpace, PAGE } from "./memory.js";
import {
  faultSignal,
  forkSignalThread,
  newSignalThread,
  SI_TKILL,
  SI_USER,
  SIGCHLD,
  SIGILL,
  SIGKILL,
  SIGSEGV,
  SIGTRAP,
  threadSignalThread,
  type SignalThread,
} from "./signals.js";
import { BLOCKED, RESTART, Syscalls } from "./syscalls.js";

const CAUSE_ECALL_U = 8;
const EINTR = 4;
const ECHILD = 10;
const EAGAIN = 11;
const EFAULT = 14;
const EINVAL = 22;
const ESRCH = 3;
const ENOEXEC = 8;
const ENOENT = 2;
const EACCES = 13;
const ENOSYS = 38;
const ETIMEDOUT = 110;

const CLONE_VM = 0x100;
const CLONE_FILES = 0x400;
const CLONE_VFORK = 0x4000;
const CLONE_THREAD = 0x10000;
const CLONE_SETTLS = 0x80000;
const CLONE_PARENT_SETTID = 0x100000;
const CLONE_CHILD_CLEARTID = 0x200000;
const CLONE_CHILD_SETTID = 0x1000000;
const WNOHANG = 1;
const CLD_EXITED = 1;
const CLD_KILLED = 2;
const SYS_RT_SIGRETURN = 139;
/** Unmaps larger than this drop the whole TLB rather than page by page. */
const TLB_PAGE_FLUSH_LIMIT = 64;
/** Instructions a task runs before the next one gets the hart (about a few milliseconds translated). */
const SLICE = 2_000_000;
/** What a system call costs against the slice: a task that only makes calls still yields. */
const SYSCALL_COST = 2_000;
/** A system call that set the task's state itself (exit, execve): nothing to write back. */
const GONE = Number.MIN_SAFE_INTEGER + 3;

/** How a signal ends a parked call: never (a vfork parent), EINTR, or a restart when SA_RESTART. */
const UNINTERRUPTIBLE = 0;
const INTERRUPTIBLE = 1;
const RESTARTABLE = 2;

/** An address space and the hart that runs it. */
export class Image {
  readonly hart: Hart;
  readonly space: AddressSpace;
  private readonly jit: Jit | null;
  /** The task whose registers the hart holds now. */
  running: Task | null = null;
  /** Processes using it (a vfork child shares its parent's). */
  users = 0;
  /** Tasks parked in futex waits on this memory. */
  readonly futexWaiters: FutexWaiter[] = [];

  constructor(
    readonly bus: Bus,
    interpret: boolean,
  ) {
    this.hart = new Hart(bus);
    this.jit = interpret ? null : new Jit(this.hart);
    this.space = new AddressSpace(bus);
    const h = this.hart;
    h.stopOnTrap = true;
    h.mstatus |= MSTATUS_FS; // the FPU is on (Linux turns it on at the first FP instruction)
    h.mcounteren = 7; // cycle, time, instret readable from U-mode
    h.scounteren = 7;
    // Sv39 over the space's identity page table: its protections are the hart's.
    h.satpHi = 8 << 28;
    h.satpLo = this.space.rootPage;
    h.flushTlb();
    this.space.onUnmap = (addr, length, execLost) => {
      if (execLost || length > TLB_PAGE_FLUSH_LIMIT * PAGE) h.flushTlb();
      else for (let a = addr; a < addr + length; a += PAGE) h.flushTlbPage(a, 0);
    };
  }

  stats(): ReturnType<Jit["stats"]> | null {
    return this.jit?.stats() ?? null;
  }

  /** Ready for another process: a fresh address space (translated code there is dropped with it). */
  reset(): void {
    this.space.reset();
    this.running = null;
    this.futexWaiters.length = 0;
  }
}

/** Images kept for reuse: a WebAssembly memory, a hart and a translator cost more to make than to clear. */
const IMAGE_POOL = 4;

interface FutexWaiter {
  task: Task;
  addr: number;
  bitset: number;
  woken: boolean;
}

/** A thread: its registers while another thread of the image runs, and what it waits for. */
export class Task {
  readonly x = new Int32Array(64);
  readonly f = new Int32Array(64);
  fflags = 0;
  frm = 0;
  pc = 0;
  /** set_tid_address / CLONE_CHILD_CLEARTID: zeroed and woken when the thread ends. */
  clearChildTid = 0;
  /** Parked: BLOCKED while it must wait, RESTART to run its ecall again, else the call's result. */
  poll: (() => number) | null = null;
  /** When its wait times out (performance.now() ms); Infinity when it waits for an event only. */
  deadline = Infinity;
  /** How a signal ends its wait (UNINTERRUPTIBLE, INTERRUPTIBLE or RESTARTABLE). */
  interrupt = UNINTERRUPTIBLE;
  alive = true;
  /** Its blocked mask, pending signals and alternate stack. */
  signals: SignalThread = newSignalThread();

  constructor(
    public tid: number,
    public proc: Proc,
  ) {}
}

/** A process: an image, descriptors, the system-call server, and its family. */
export class Proc {
  readonly threads: Task[] = [];
  readonly children: Proc[] = [];
  /** Wait status once it ended (a zombie until its parent waits), else null. */
  waitStatus: number | null = null;
  /** A vfork child that execed or ended: its parent goes on. */
  vforkDone = false;

  constructor(
    readonly pid: number,
    public parent: Proc | null,
    public image: Image | null,
    public sys: Syscalls,
    readonly files: FileTable,
    public name: string,
  ) {}

  get ppid(): number {
    return this.parent?.pid ?? 1;
  }
}

export interface KernelOptions {
  root: string;
  interpret: boolean;
  spaceBytes: number;
  log: (line: string) => void;
  trace: boolean;
}

/** The host path, argv and shown name of a program an exec names, or -errno. */
interface ExecTarget {
  path: string;
  argv: string[];
  exe: string;
}

export class Kernel {
  private readonly tasks: Task[] = [];
  private readonly freeImages: Image[] = [];
  private readonly processes = new Map<number, Proc>();
  private next = 0;
  private nextPid: number;
  private init: Proc | null = null;
  private readonly sleeper = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly options: KernelOptions) {
    this.nextPid = process.pid;
  }

  /** A fresh, empty image (one a process left, when there is one). */
  private newImage(): Image {
    const reused = this.freeImages.pop();
    if (reused !== undefined) return reused;
    const size = this.options.spaceBytes;
    return new Image(new Bus(0, size, false, allocateRam(size)), this.options.interpret);
  }

  /**
   * The first process: `path` (a host path) loaded with argv and envp. Throws an ExecError when it
   * cannot run.
   */
  spawn(files: FileTable, path: string, argv: string[], envp: string[], execfn: string): Proc {
    const image = this.newImage();
    const loaded = this.load(image, files, path, argv, envp, execfn);
    const pid = this.nextPid++;
    const proc = this.addProcess(pid, null, image, files, path, execfn);
    const task = this.addTask(pid, proc);
    task.x[4] = loaded.sp | 0;
    task.x[5] = Math.floor(loaded.sp / 4294967296);
    task.pc = loaded.entry;
    this.init = proc;
    return proc;
  }

  private load(image: Image, files: FileTable, path: string, argv: string[], envp: string[], execfn: string) {
    const interpreter = (guestPath: string): string | null => {
      const p = files.inRoot(guestPath);
      try {
        statSync(p);
        return p;
      } catch {
        return null;
      }
    };
    return loadProgram(image.space, { path, interpreter }, argv, envp, execfn);
  }

  private addProcess(
    pid: number,
    parent: Proc | null,
    image: Image,
    files: FileTable,
    exe: string,
    name: string,
  ): Proc {
    const sys = this.newSyscalls(image, files, exe, pid);
    const proc = new Proc(pid, parent, image, sys, files, name);
    image.users++;
    this.processes.set(pid, proc);
    parent?.children.push(proc);
    return proc;
  }

  /** A process's system-call server; its signals see the stack pointer of the image's hart. */
  private newSyscalls(image: Image, files: FileTable, exe: string, pid: number): Syscalls {
    const sys = new Syscalls(image.space, files, exe, this.options.log);
    sys.pid = pid;
    const x = image.hart.x;
    sys.signals.stackPointer = () => x[5] * 4294967296 + (x[4] >>> 0);
    return sys;
  }

  private addTask(tid: number, proc: Proc): Task {
    const t = new Task(tid, proc);
    proc.threads.push(t);
    this.tasks.push(t);
    return t;
  }

  /** Runs until the first process ends; returns its exit status (128 + N when signal N ended it). */
  run(): number {
    const init = this.init!;
    while (init.waitStatus === null) {
      const task = this.pick();
      if (task === null) break;
      this.runSlice(task);
    }
    // Processes still running when the first one ends go with it (their descriptors close).
    for (const p of this.processes.values()) if (p.waitStatus === null) this.exitProcess(p, 9);
    const ws = init.waitStatus ?? 9;
    return (ws & 0x7f) !== 0 ? 128 + (ws & 0x7f) : (ws >> 8) & 0xff;
  }

  /** The next task that can run (round-robin), waking tasks whose wait ended; null on deadlock. */
  private pick(): Task | null {
    for (;;) {
      let soonest = Infinity;
      const n = this.tasks.length;
      for (let i = 0; i < n; i++) {
        const k = (this.next + i) % n;
        const t = this.tasks[k];
        if (t.poll !== null) {
          let r = BLOCKED;
          if (t.interrupt !== UNINTERRUPTIBLE) {
            const how = t.proc.sys.signals.interruption(t.signals);
            if (how !== "none") {
              r = how === "restart" && t.interrupt === RESTARTABLE ? RESTART : -EINTR;
              this.dropFutexWait(t);
            }
          }
          if (r === BLOCKED) r = t.poll();
          if (r === BLOCKED) {
            if (t.deadline < soonest) soonest = t.deadline;
            continue;
          }
          t.poll = null;
          t.deadline = Infinity;
          if (r !== RESTART) {
            this.setA0(t, r);
            t.pc += 4;
          }
        }
        this.next = k + 1;
        return t;
      }
      if (n === 0) return null;
      if (soonest === Infinity) {
        const waits = this.tasks.map((t) => `${t.proc.name.split("/").pop()}[${t.tid}]`).join(", ");
        this.options.log(`yun exec: deadlock: every task waits for an event no other task can cause (${waits})`);
        return null;
      }
      const ms = soonest - performance.now();
      if (ms > 0) Atomics.wait(this.sleeper, 0, 0, Math.ceil(ms));
    }
  }

  private setA0(t: Task, v: number): void {
    const h = t.proc.image!.hart;
    const x = t.proc.image!.running === t ? h.x : t.x;
    x[20] = v | 0;
    x[21] = Math.floor(v / 4294967296) | 0;
  }

  /** Puts `t`'s registers on its image's hart (saving those of the thread that was there). */
  private switchTo(t: Task): Hart {
    const image = t.proc.image!;
    const h = image.hart;
    const was = image.running;
    if (was !== t) {
      if (was !== null && was.alive) {
        was.x.set(h.x);
        was.f.set(h.f);
        was.fflags = h.fflags;
        was.frm = h.frm;
      }
      h.x.set(t.x);
      h.f.set(t.f);
      h.fflags = t.fflags;
      h.frm = t.frm;
      image.running = t;
    }
    h.enterUserMode(t.pc);
    return h;
  }

  private runSlice(t: Task): void {
    const h = this.switchTo(t);
    const proc = t.proc;
    const x = h.x;
    const arg = (r: number): number => x[2 * r + 1] * 4294967296 + (x[2 * r] >>> 0);
    let budget = SLICE;
    if (!this.deliverSignals(t, h)) return;
    for (;;) {
      budget -= h.run(budget);
      if (h.priv !== PRIV_M) {
        t.pc = h.pc; // slice spent
        return;
      }
      const pc = h.mepc;
      t.pc = pc;
      const cause = h.mcauseLo;
      if (cause !== CAUSE_ECALL_U || h.mcauseInterrupt) {
        // A fault: its signal goes to the handler if one is installed, else ends the process.
        const addr = (h.mtvalHi >>> 0) * 4294967296 + (h.mtvalLo >>> 0);
        const fault = faultSignal(cause, proc.image!.space.isMapped(addr));
        h.enterUserMode(pc);
        const siAddr = fault.signo === SIGILL || fault.signo === SIGTRAP ? pc : addr;
        if (!proc.sys.signals.fault(fault.signo, fault.code, siAddr)) {
          this.options.log(
            `yun exec: ${proc.name}: ${fault.what} at pc 0x${pc.toString(16)} (address 0x${addr.toString(16)})`,
          );
          this.exitProcess(proc, fault.signo);
          return;
        }
        if (!this.deliverSignals(t, h)) return;
        continue;
      }
      const nr = arg(17);
      if (nr === SYS_RT_SIGRETURN) {
        if (!proc.sys.signals.sigreturn(h)) {
          this.exitProcess(proc, SIGSEGV);
          return;
        }
        t.pc = h.pc;
        if (!this.deliverSignals(t, h)) return;
        continue;
      }
      const result = this.syscall(t, nr, arg(10), arg(11), arg(12), arg(13), arg(14), arg(15));
      if (this.options.trace)
        this.options.log(
          `[${t.tid}] syscall ${nr}(${[10, 11, 12, 13].map((r) => "0x" + arg(r).toString(16)).join(", ")}) = ${result === BLOCKED ? "(blocks)" : result}`,
        );
      if (result === GONE) return;
      if (result === BLOCKED) {
        t.pc = pc;
        return;
      }
      h.setXNumber(10, result);
      h.enterUserMode(pc + 4);
      t.pc = pc + 4;
      if (!this.deliverSignals(t, h)) return;
      budget -= SYSCALL_COST;
      if (budget <= 0 || nr === 124 /* sched_yield */) return;
    }
  }

  /**
   * Before `t` returns to user mode on `h`: its pending signals go to their handlers (the hart then
   * starts in one); false when a signal's default action ended the process.
   */
  private deliverSignals(t: Task, h: Hart): boolean {
    const signals = t.proc.sys.signals;
    signals.thread = t.signals;
    const signal = signals.deliver(h);
    t.pc = h.pc;
    if (signal === 0) return true;
    this.exitProcess(t.proc, signal);
    return false;
  }

  private dropFutexWait(t: Task): void {
    const waiters = t.proc.image?.futexWaiters;
    const w = waiters?.findIndex((f) => f.task === t) ?? -1;
    if (w >= 0) waiters!.splice(w, 1);
  }

  private park(t: Task, poll: () => number, deadline = Infinity, interrupt = RESTARTABLE): number {
    t.poll = poll;
    t.deadline = deadline;
    t.interrupt = interrupt;
    return BLOCKED;
  }

  private syscall(t: Task, nr: number, a0: number, a1: number, a2: number, a3: number, a4: number, a5: number): number {
    const proc = t.proc;
    proc.sys.signals.thread = t.signals;
    switch (nr) {
      case 93: // exit: this thread
        this.exitThread(t, a0 & 0xff);
        return GONE;
      case 94: // exit_group
        this.exitProcess(proc, (a0 & 0xff) << 8);
        return GONE;
      case 96: // set_tid_address
        t.clearChildTid = a0;
        return t.tid;
      case 172: // getpid
        return proc.pid;
      case 173: // getppid
        return proc.ppid;
      case 178: // gettid
        return t.tid;
      case 220: // clone
        return this.clone(t, a0, a1, a2, a3, a4);
      case 435: // clone3: libc falls back to clone
        return -ENOSYS;
      case 221: // execve
        return this.execve(t, a0, a1, a2);
      case 260: // wait4
        return this.wait4(t, a0 | 0, a1, a2, a3);
      case 95: // waitid
        return this.waitid(t, a0, a1 | 0, a2, a3);
      case 98: // futex
        return this.futex(t, a0, a1, a2, a3, a4, a5);
      case 101: // nanosleep
        return this.nanosleep(t, a0, a1, 0, 1);
      case 115: // clock_nanosleep(clock, flags, req, rem)
        return this.nanosleep(t, a2, a3, a1, a0);
      case 124: // sched_yield
        return 0;
      case 133: {
        // rt_sigsuspend: the given mask until a handler runs (its return restores the caller's mask)
        const space = proc.image!.space;
        if (a1 !== 8) return -EINVAL;
        if (!space.valid(a0, 8)) return -EFAULT;
        proc.sys.signals.suspend(t.signals, BigInt(space.u32(a0)) | (BigInt(space.u32(a0 + 4)) << 32n));
        return this.park(t, () => BLOCKED, Infinity, INTERRUPTIBLE);
      }
      case 129: // kill: to a process (others, pid 0 and -1: this one, in Syscalls)
        if ((a0 | 0) > 0) return this.kill(proc, a0, a1 | 0);
        break;
      case 130: // tkill
        return this.threadKill(proc, -1, a0 | 0, a1 | 0);
      case 131: // tgkill
        return this.threadKill(proc, a0 | 0, a1 | 0, a2 | 0);
    }
    const sys = proc.sys;
    sys.parked = null;
    const r = sys.call(nr, a0, a1, a2, a3, a4, a5);
    if (sys.exit !== null) {
      const e = sys.exit;
      this.exitProcess(proc, e.signal !== 0 ? e.signal : (e.status & 0xff) << 8);
      return GONE;
    }
    // A handler ends pselect6 and ppoll with EINTR even under SA_RESTART (as Linux does); pipes rerun.
    if (r === BLOCKED)
      return this.park(t, sys.parked!, sys.parkedUntil, nr === 72 || nr === 73 ? INTERRUPTIBLE : RESTARTABLE);
    return r;
  }

  // ------------------------------------------------------------------ ends

  /** One thread ends (exit): its clear-tid word is zeroed and woken; the last one ends the process. */
  private exitThread(t: Task, status: number): void {
    const proc = t.proc;
    const image = proc.image!;
    if (t.clearChildTid !== 0 && image.space.valid(t.clearChildTid, 4)) {
      image.space.setU32(t.clearChildTid, 0);
      this.futexWake(image, t.clearChildTid, 1, -1);
    }
    this.removeTask(t);
    if (proc.threads.length === 0) this.exitProcess(proc, (status & 0xff) << 8);
  }

  private removeTask(t: Task): void {
    t.alive = false;
    t.poll = null;
    const proc = t.proc;
    proc.threads.splice(proc.threads.indexOf(t), 1);
    const i = this.tasks.indexOf(t);
    this.tasks.splice(i, 1);
    if (i < this.next) this.next--;
    const image = proc.image;
    if (image !== null) {
      if (image.running === t) image.running = null;
      const w = image.futexWaiters.findIndex((f) => f.task === t);
      if (w >= 0) image.futexWaiters.splice(w, 1);
    }
  }

  /** The process ends with `waitStatus` (Linux's encoding): a zombie for its parent to wait for. */
  private exitProcess(proc: Proc, waitStatus: number): void {
    if (proc.waitStatus !== null) return;
    for (const t of [...proc.threads]) this.removeTask(t);
    proc.waitStatus = waitStatus;
    proc.vforkDone = true;
    proc.files.closeAll();
    this.releaseImage(proc);
    for (const c of proc.children) {
      c.parent = this.init !== proc && this.init?.waitStatus === null ? this.init : null;
      if (c.parent !== null) c.parent.children.push(c);
      else if (c.waitStatus !== null) this.processes.delete(c.pid);
    }
    proc.children.length = 0;
    const parent = proc.parent;
    if (parent === null || parent.waitStatus !== null) {
      this.processes.delete(proc.pid);
      return;
    }
    // SIGCHLD: ignored explicitly, the child is reaped at once (Linux's SA_NOCLDWAIT behaviour).
    if (parent.sys.handler(SIGCHLD) === 1) {
      parent.children.splice(parent.children.indexOf(proc), 1);
      this.processes.delete(proc.pid);
      return;
    }
    const killed = (waitStatus & 0x7f) !== 0;
    const status = killed ? waitStatus & 0x7f : (waitStatus >> 8) & 0xff;
    parent.sys.signals.post(SIGCHLD, killed ? CLD_KILLED : CLD_EXITED, proc.pid, status);
  }

  private releaseImage(proc: Proc): void {
    const image = proc.image;
    if (image === null) return;
    proc.image = null;
    if (--image.users === 0 && this.freeImages.length < IMAGE_POOL) {
      image.reset();
      this.freeImages.push(image);
    }
  }

  /** kill(pid, sig): pending for the process (a thread not blocking it takes it); SIGKILL ends it. */
  private kill(sender: Proc, pid: number, sig: number): number {
    const target = this.processes.get(pid);
    if (target === undefined || target.waitStatus !== null) return -ESRCH;
    if (sig === 0) return 0;
    if (sig < 1 || sig > 64) return -EINVAL;
    if (sig === SIGKILL) this.exitProcess(target, SIGKILL);
    else target.sys.signals.post(sig, SI_USER, sender.pid);
    return 0;
  }

  /** tkill/tgkill: pending for one thread (tgid -1: any process). */
  private threadKill(sender: Proc, tgid: number, tid: number, sig: number): number {
    if (tid <= 0 || (tgid !== -1 && tgid <= 0)) return -EINVAL;
    const task = this.tasks.find((k) => k.tid === tid && (tgid === -1 || k.proc.pid === tgid));
    if (task === undefined) return -ESRCH;
    if (sig === 0) return 0;
    if (sig < 1 || sig > 64) return -EINVAL;
    if (sig === SIGKILL) this.exitProcess(task.proc, SIGKILL);
    else task.proc.sys.signals.raise(sig, SI_TKILL, sender.pid, task.signals);
    return 0;
  }

  // ------------------------------------------------------------------ clone, exec, wait

  private clone(t: Task, flags: number, newsp: number, ptid: number, tls: number, ctid: number): number {
    const parent = t.proc;
    const image = parent.image!;
    const h = image.hart;
    const tid = this.nextPid++;
    let child: Task;
    let childImage: Image;
    if ((flags & CLONE_THREAD) !== 0) {
      if ((flags & CLONE_VM) === 0) return -EINVAL;
      child = this.addTask(tid, parent);
      childImage = image;
    } else {
      childImage = image;
      if ((flags & CLONE_VM) === 0) {
        childImage = this.newImage();
        childImage.space.copyFrom(image.space);
      }
      const files = (flags & CLONE_FILES) !== 0 ? parent.files : parent.files.clone();
      const proc = this.addProcess(tid, parent, childImage, files, parent.sys.exePath, parent.name);
      for (const [k, v] of parent.sys.actions) proc.sys.actions.set(k, v);
      child = this.addTask(tid, proc);
    }
    child.signals =
      (flags & CLONE_VM) !== 0 && (flags & CLONE_VFORK) === 0
        ? threadSignalThread(t.signals)
        : forkSignalThread(t.signals);
    child.x.set(h.x);
    child.f.set(h.f);
    child.fflags = h.fflags;
    child.frm = h.frm;
    child.pc = t.pc + 4;
    child.x[20] = child.x[21] = 0; // a0 = 0 in the child
    if (newsp !== 0) {
      child.x[4] = newsp | 0;
      child.x[5] = Math.floor(newsp / 4294967296) | 0;
    }
    if ((flags & CLONE_SETTLS) !== 0) {
      child.x[8] = tls | 0;
      child.x[9] = Math.floor(tls / 4294967296) | 0;
    }
    if ((flags & CLONE_PARENT_SETTID) !== 0) {
      if (image.space.valid(ptid, 4)) image.space.setU32(ptid, tid);
      if (childImage !== image && childImage.space.valid(ptid, 4)) childImage.space.setU32(ptid, tid);
    }
    if ((flags & CLONE_CHILD_SETTID) !== 0 && childImage.space.valid(ctid, 4)) childImage.space.setU32(ctid, tid);
    if ((flags & CLONE_CHILD_CLEARTID) !== 0) child.clearChildTid = ctid;
    if ((flags & CLONE_VFORK) !== 0 || ((flags & CLONE_VM) !== 0 && (flags & CLONE_THREAD) === 0)) {
      // The parent waits until the child execs or ends (it may share the parent's memory and stack).
      const proc = child.proc;
      return this.park(t, () => (proc.vforkDone ? tid : BLOCKED), Infinity, UNINTERRUPTIBLE);
    }
    return tid;
  }

  private stringArray(space: AddressSpace, addr: number): string[] | null {
    const out: string[] = [];
    for (let at = addr; addr !== 0; at += 8) {
      if (!space.valid(at, 8)) return null;
      const p = space.u64(at);
      if (p === 0) break;
      const s = space.cString(p, 1 << 17);
      if (s === null) return null;
      out.push(s);
    }
    return out;
  }

  /** Where an exec's program is on the host and its argv (a #! script runs its interpreter), or -errno. */
  private execTarget(files: FileTable, path: string, argv: string[]): ExecTarget | number {
    const host = files.hostPath(AT_FDCWD, path);
    if (typeof host === "number") return host;
    try {
      if (!statSync(host).isFile()) return -EACCES;
      accessSync(host, constants.X_OK);
    } catch (e) {
      return (e as NodeJS.ErrnoException).errno ?? -ENOENT;
    }
    const head = Buffer.alloc(256);
    const fd = openSync(host, "r");
    let n: number;
    try {
      n = readSync(fd, head, 0, 256, 0);
    } finally {
      closeSync(fd);
    }
    if (head[0] !== 0x23 || head[1] !== 0x21) return { path: host, argv, exe: host };
    // #!interpreter [arg]
    const line = head.subarray(2, n).toString("latin1").split("\n")[0].trim();
    const [interp, ...rest] = line.split(/\s+/);
    if (interp === undefined || interp === "") return -ENOEXEC;
    const interpHost = files.hostPath(AT_FDCWD, interp);
    if (typeof interpHost === "number") return interpHost;
    const args = [interp, ...(rest.length > 0 ? [rest.join(" ")] : []), path, ...argv.slice(1)];
    return { path: interpHost, argv: args, exe: interpHost };
  }

  /** execve in this process: a new image, the same pid and descriptors (less close-on-exec ones). */
  private execve(t: Task, pathAddr: number, argvAddr: number, envpAddr: number): number {
    const proc = t.proc;
    const old = proc.image!;
    const path = old.space.cString(pathAddr);
    const argv = this.stringArray(old.space, argvAddr);
    const envp = this.stringArray(old.space, envpAddr);
    if (path === null || argv === null || envp === null) return -EFAULT;
    const target = this.execTarget(proc.files, path, argv);
    if (typeof target === "number") return target;
    const image = this.newImage();
    let loaded: { entry: number; sp: number };
    try {
      loaded = this.load(image, proc.files, target.path, target.argv, envp, path);
    } catch (e) {
      if (!(e instanceof ExecError)) throw e;
      if (this.options.trace) this.options.log(`yun exec: execve ${path}: ${e.message}`);
      return e.status === 127 ? -ENOENT : -ENOEXEC;
    }
    // The point of no return: other threads go, the old image is released, the new one runs.
    for (const other of [...proc.threads]) if (other !== t) this.removeTask(other);
    if (old.running === t) old.running = null; // a vfork parent's hart: its registers are its own again
    this.releaseImage(proc);
    proc.vforkDone = true;
    proc.image = image;
    image.users++;
    proc.files.closeOnExec();
    // Handled signals go back to their default action; ignored ones stay ignored, pending ones pending.
    const sys = this.newSyscalls(image, proc.files, target.exe, proc.pid);
    for (const [sig, action] of proc.sys.actions) if (proc.sys.handler(sig) === 1) sys.actions.set(sig, action);
    sys.signals.sharedPending = proc.sys.signals.sharedPending;
    t.signals = { ...forkSignalThread(t.signals), pending: t.signals.pending, info: t.signals.info };
    t.signals.altSp = t.signals.altSize = 0;
    t.signals.altFlags = newSignalThread().altFlags;
    proc.sys = sys;
    proc.name = path;
    t.x.fill(0);
    t.f.fill(0);
    t.fflags = t.frm = 0;
    t.x[4] = loaded.sp | 0;
    t.x[5] = Math.floor(loaded.sp / 4294967296);
    t.pc = loaded.entry;
    t.clearChildTid = 0;
    image.running = null;
    return GONE;
  }

  /** The children of `proc` that `pid` selects (wait4's -1, 0, -pgid: any child; N: that one). */
  private waitable(proc: Proc, pid: number): Proc[] {
    return pid > 0 ? proc.children.filter((c) => c.pid === pid) : proc.children;
  }

  private reap(proc: Proc, child: Proc): void {
    proc.children.splice(proc.children.indexOf(child), 1);
    this.processes.delete(child.pid);
  }

  private wait4(t: Task, pid: number, wstatus: number, options: number, rusage: number): number {
    const proc = t.proc;
    const attempt = (): number => {
      const candidates = this.waitable(proc, pid);
      if (candidates.length === 0) return -ECHILD;
      const z = candidates.find((c) => c.waitStatus !== null);
      if (z === undefined) return (options & WNOHANG) !== 0 ? 0 : BLOCKED;
      const space = proc.image!.space;
      if (wstatus !== 0) {
        if (!space.valid(wstatus, 4)) return -EFAULT;
        space.setU32(wstatus, z.waitStatus!);
      }
      if (rusage !== 0 && space.valid(rusage, 144)) space.ram.fill(0, rusage, rusage + 144);
      this.reap(proc, z);
      return z.pid;
    };
    const r = attempt();
    return r === BLOCKED ? this.park(t, attempt) : r;
  }

  private waitid(t: Task, idtype: number, id: number, infop: number, options: number): number {
    const proc = t.proc;
    const pid = idtype === 1 ? id : -1; // P_PID, else P_ALL / P_PGID: any child
    if (idtype > 2 || (options & 4) === 0) return -EINVAL; // WEXITED is required here
    const attempt = (): number => {
      const candidates = this.waitable(proc, pid);
      if (candidates.length === 0) return -ECHILD;
      const z = candidates.find((c) => c.waitStatus !== null);
      const space = proc.image!.space;
      if (infop !== 0 && !space.valid(infop, 128)) return -EFAULT;
      if (z === undefined) {
        if ((options & WNOHANG) === 0) return BLOCKED;
        if (infop !== 0) space.ram.fill(0, infop, infop + 128);
        return 0;
      }
      if (infop !== 0) {
        const ws = z.waitStatus!;
        space.ram.fill(0, infop, infop + 128);
        space.setU32(infop, SIGCHLD);
        space.setU32(infop + 8, (ws & 0x7f) !== 0 ? 2 : 1); // CLD_KILLED / CLD_EXITED
        space.setU32(infop + 16, z.pid);
        space.setU32(infop + 24, (ws & 0x7f) !== 0 ? ws & 0x7f : (ws >> 8) & 0xff);
      }
      if ((options & 0x01000000) === 0) this.reap(proc, z); // WNOWAIT leaves it waitable
      return 0;
    };
    const r = attempt();
    return r === BLOCKED ? this.park(t, attempt) : r;
  }

  // ------------------------------------------------------------------ futex and time

  private futexWake(image: Image, addr: number, count: number, bitset: number): number {
    let woken = 0;
    const waiters = image.futexWaiters;
    for (let i = 0; i < waiters.length && woken < count;) {
      const w = waiters[i];
      if (w.addr === addr && (w.bitset & bitset) !== 0) {
        w.woken = true;
        waiters.splice(i, 1);
        woken++;
      } else i++;
    }
    return woken;
  }

  /** A deadline (performance.now() ms) from a timespec: relative, or absolute on `clock`. */
  private deadline(space: AddressSpace, ts: number, absolute: boolean, clock: number): number {
    const ms = space.i64(ts) * 1000 + space.i64(ts + 8) / 1e6;
    const now = performance.now();
    if (!absolute) return now + ms;
    const realtime = clock === 0 || clock === 5 || clock === 8 || clock === 11;
    const clockMs = realtime ? performance.timeOrigin + now : Number(process.hrtime.bigint()) / 1e6;
    return now + (ms - clockMs);
  }

  private futex(t: Task, addr: number, op: number, val: number, timeout: number, addr2: number, val3: number): number {
    const image = t.proc.image!;
    const space = image.space;
    const cmd = op & 0x7f; // without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
    if (addr % 4 !== 0 || !space.valid(addr, 4)) return -EFAULT;
    switch (cmd) {
      case 0: // FUTEX_WAIT
      case 9: {
        // FUTEX_WAIT_BITSET
        const bitset = cmd === 9 ? val3 | 0 : -1;
        if (bitset === 0) return -EINVAL;
        if (space.u32(addr) !== val >>> 0) return -EAGAIN;
        let until = Infinity;
        if (timeout !== 0) {
          if (!space.valid(timeout, 16)) return -EFAULT;
          until = this.deadline(space, timeout, cmd === 9, (op & 256) !== 0 ? 0 : 1);
        }
        const w: FutexWaiter = { task: t, addr, bitset, woken: false };
        image.futexWaiters.push(w);
        return this.park(
          t,
          () => {
            if (w.woken) return 0;
            if (performance.now() < until) return BLOCKED;
            image.futexWaiters.splice(image.futexWaiters.indexOf(w), 1);
            return -ETIMEDOUT;
          },
          until,
        );
      }
      case 1: // FUTEX_WAKE
        return this.futexWake(image, addr, val, -1);
      case 10: // FUTEX_WAKE_BITSET
        return val3 === 0 ? -EINVAL : this.futexWake(image, addr, val, val3 | 0);
      case 3: // FUTEX_REQUEUE
      case 4: {
        // FUTEX_CMP_REQUEUE: the timeout argument is the number to requeue
        if (cmd === 4 && space.u32(addr) !== val3 >>> 0) return -EAGAIN;
        const woken = this.futexWake(image, addr, val, -1);
        let moved = 0;
        for (const w of image.futexWaiters)
          if (w.addr === addr && moved < timeout) {
            w.addr = addr2;
            moved++;
          }
        return woken + moved;
      }
      case 5: {
        // FUTEX_WAKE_OP: *addr2 = old OP oparg; wake on addr; and on addr2 if old CMP cmparg
        if (addr2 % 4 !== 0 || !space.valid(addr2, 4)) return -EFAULT;
        const opKind = (val3 >>> 28) & 7;
        const cmpKind = (val3 >>> 24) & 15;
        let oparg = (val3 << 8) >> 20;
        const cmparg = (val3 << 20) >> 20;
        if (val3 >>> 31 !== 0) oparg = 1 << (oparg & 31);
        const old = space.i32(addr2);
        const ops = [oparg, old + oparg, old | oparg, old & ~oparg, old ^ oparg];
        if (opKind > 4) return -ENOSYS;
        space.setU32(addr2, ops[opKind]);
        const cmps = [old === cmparg, old !== cmparg, old < cmparg, old <= cmparg, old > cmparg, old >= cmparg];
        if (cmpKind > 5) return -ENOSYS;
        let woken = this.futexWake(image, addr, val, -1);
        if (cmps[cmpKind]) woken += this.futexWake(image, addr2, timeout, -1);
        return woken;
      }
      default:
        return -ENOSYS; // priority-inheritance futexes: glibc uses them only for PI mutexes
    }
  }

  private nanosleep(t: Task, req: number, rem: number, flags: number, clock: number): number {
    const space = t.proc.image!.space;
    if (!space.valid(req, 16)) return -EFAULT;
    if (space.i64(req + 8) < 0 || space.i64(req + 8) >= 1e9) return -EINVAL;
    const absolute = (flags & 1) !== 0;
    const until = this.deadline(space, req, absolute, clock);
    return this.park(
      t,
      () => {
        if (performance.now() < until) return BLOCKED;
        if (rem !== 0 && !absolute && space.valid(rem, 16)) {
          space.setU64(rem, 0);
          space.setU64(rem + 8, 0);
        }
        return 0;
      },
      until,
      INTERRUPTIBLE, // nanosleep is not restarted after a handler: EINTR
    );
  }

  /** The translator's counters of the first process's image, when it runs. */
  stats(): ReturnType<Jit["stats"]> | null {
    return this.init?.image?.stats() ?? null;
  }
}

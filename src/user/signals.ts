/**
 * Signals of a `yun exec` process, as Linux's riscv64 port delivers them: rt_sigaction's table,
 * each thread's mask, pending set and alternate stack, the rt_sigframe a handler runs on, and
 * rt_sigreturn.
 *
 * A handler runs on a frame pushed on the user stack (or the alternate one): siginfo_t (128
 * bytes), then the ucontext (uc_flags, uc_link, uc_stack, uc_sigmask padded to 128 bytes, and at
 * offset 176 the sigcontext: pc, x1..x31, f0..f31 and fcsr in the 528-byte union that also holds
 * the Q state and the extension header), 16-byte aligned; a0 = signo, a1 = &info, a2 = &uc, ra =
 * the space's `li a7, 139; ecall` page (riscv has no SA_RESTORER: Linux uses its vDSO's). Signals
 * are delivered when the thread is about to return to user mode: after a system call or a fault.
 */
import type { Hart } from "../cpu/hart.js";
import type { AddressSpace } from "./memory.js";

export const SIGILL = 4;
export const SIGTRAP = 5;
export const SIGBUS = 7;
export const SIGKILL = 9;
export const SIGSEGV = 11;
export const SIGPIPE = 13;
export const SIGCHLD = 17;
export const SIGSTOP = 19;

const SIG_DFL = 0;
const SIG_IGN = 1;
// SA_SIGINFO needs nothing of its own: Linux on riscv passes &info and &uc to every handler.
const SA_RESTART = 0x10000000;
const SA_ONSTACK = 0x08000000;
const SA_NODEFER = 0x40000000;
const SA_RESETHAND = 0x80000000;
const SS_ONSTACK = 1;
const SS_DISABLE = 2;
const SS_AUTODISARM = 0x80000000;
const MINSIGSTKSZ = 2048;

export const SI_USER = 0;
export const SI_TKILL = -6;
const SEGV_MAPERR = 1;
const SEGV_ACCERR = 2;
const ILL_ILLOPC = 1;
const BUS_ADRALN = 1;
const TRAP_BRKPT = 1;

const EINVAL = 22;
const EFAULT = 14;
const EPERM = 1;
const ENOMEM = 12;

/** struct rt_sigframe's layout (arch/riscv/kernel/signal.c, uapi asm/ucontext.h and sigcontext.h). */
const INFO_BYTES = 128;
const UC_STACK = 16;
const UC_SIGMASK = 40;
const UC_MCONTEXT = 176;
const SC_FP = UC_MCONTEXT + 256;
const SC_FCSR = SC_FP + 256;
const FRAME_BYTES = INFO_BYTES + UC_MCONTEXT + 256 + 528;

/** Signals whose default action is to do nothing (SIGCHLD, SIGURG, SIGWINCH; SIGCONT continues). */
const IGNORED_BY_DEFAULT = new Set([17, 18, 23, 28]);
/** Stop signals: Yun has nobody to continue a stopped process, so they are ignored too. */
const STOP_SIGNALS = new Set([19, 20, 21, 22]);
/** Signals whose default action dumps core (the shell prints "(core dumped)"; Yun logs the fault). */
export const CORE_SIGNALS = new Set([3, 4, 5, 6, 7, 8, 11, 24, 25, 31]);
const SYNCHRONOUS = [SIGSEGV, SIGBUS, SIGILL, SIGTRAP];
const UNBLOCKABLE = (1n << BigInt(SIGKILL - 1)) | (1n << BigInt(SIGSTOP - 1));

/** What one queued signal tells its handler (siginfo_t's fields Yun fills). */
export interface SignalInfo {
  signo: number;
  code: number;
  /** si_addr of a fault, or si_pid of a kill. */
  addr: number;
  pid: number;
}

/**
 * The signal state Linux keeps per thread: blocked mask, pending signals, alternate stack. A
 * scheduler holds one per task and sets `Signals.thread` to the running task's before serving it.
 */
export interface SignalThread {
  /** Blocked signals: bit n-1 for signal n. */
  mask: bigint;
  /** Pending signals (same bits) and what each carries. */
  pending: bigint;
  info: (SignalInfo | undefined)[];
  altSp: number;
  altSize: number;
  /** SS_DISABLE or 0 (plus SS_AUTODISARM when asked). */
  altFlags: number;
  /** rt_sigsuspend's caller's mask while the call's own mask is in effect: the frame saves this one. */
  savedMask: bigint | null;
}

export function newSignalThread(): SignalThread {
  return { mask: 0n, pending: 0n, info: [], altSp: 0, altSize: 0, altFlags: SS_DISABLE, savedMask: null };
}

/** A copy (fork: the child inherits the mask and the alternate stack; nothing is pending). */
export function forkSignalThread(t: SignalThread): SignalThread {
  return { ...t, pending: 0n, info: [], savedMask: null };
}

/** A new thread of the same process (CLONE_VM without CLONE_VFORK): the mask, no alternate stack. */
export function threadSignalThread(t: SignalThread): SignalThread {
  return { ...newSignalThread(), mask: t.mask };
}

const bit = (sig: number): bigint => 1n << BigInt(sig - 1);

/**
 * The signal and si_code of a fault the hart reported (mcause), as Linux's riscv trap handlers pick
 * them; si_addr is the faulting address (mtval), or the pc for SIGILL and SIGTRAP.
 */
export function faultSignal(cause: number, mapped: boolean): { signo: number; code: number; what: string } {
  switch (cause) {
    case 0:
    case 4:
    case 6:
      return { signo: SIGBUS, code: BUS_ADRALN, what: "Bus error" };
    case 2:
      return { signo: SIGILL, code: ILL_ILLOPC, what: "Illegal instruction" };
    case 3:
      return { signo: SIGTRAP, code: TRAP_BRKPT, what: "Trace/breakpoint trap" };
    case 12:
    case 13:
    case 15:
      return { signo: SIGSEGV, code: mapped ? SEGV_ACCERR : SEGV_MAPERR, what: "Segmentation fault" };
    default:
      return { signo: SIGSEGV, code: SEGV_ACCERR, what: "Segmentation fault" };
  }
}

export class Signals {
  private readonly space: AddressSpace;
  /** rt_sigaction's table (per process): the 24-byte struct sigaction (handler, flags, mask). */
  readonly actions: Map<number, Uint8Array>;
  /** The running thread's state. */
  thread: SignalThread = newSignalThread();
  /** Signals sent to the process as a whole (kill, SIGCHLD): any thread not blocking one takes it. */
  sharedPending = 0n;
  private readonly sharedInfo: (SignalInfo | undefined)[] = [];
  /** The running thread's stack pointer (sigaltstack tells whether it is on the alternate stack). */
  stackPointer: () => number = () => 0;

  constructor(space: AddressSpace, actions: Map<number, Uint8Array>) {
    this.space = space;
    this.actions = actions;
  }

  private action(sig: number): { handler: number; flags: number; mask: bigint } {
    const a = this.actions.get(sig);
    if (a === undefined) return { handler: SIG_DFL, flags: 0, mask: 0n };
    const b = Buffer.from(a.buffer, a.byteOffset, 24);
    return { handler: Number(b.readBigUInt64LE(0)), flags: b.readUInt32LE(8), mask: b.readBigUInt64LE(16) };
  }

  /** Whether `sig` would be discarded (ignored, or a default action of nothing). */
  private ignored(sig: number): boolean {
    const h = this.action(sig).handler;
    return h === SIG_IGN || (h === SIG_DFL && (IGNORED_BY_DEFAULT.has(sig) || STOP_SIGNALS.has(sig)));
  }

  /** Makes `sig` pending for a thread, the running one by default (tgkill, kill to itself, SIGPIPE). */
  raise(sig: number, code: number, pid: number, t = this.thread): void {
    if (this.ignored(sig)) return;
    if ((t.pending & bit(sig)) !== 0n) return; // standard signals do not queue
    t.pending |= bit(sig);
    t.info[sig] = { signo: sig, code, addr: 0, pid };
  }

  /** Makes `sig` pending for the process (kill from another process, SIGCHLD): `addr` is si_status. */
  post(sig: number, code: number, pid: number, status = 0): void {
    if (this.ignored(sig) || (this.sharedPending & bit(sig)) !== 0n) return;
    this.sharedPending |= bit(sig);
    this.sharedInfo[sig] = { signo: sig, code, addr: status, pid };
  }

  /**
   * Whether a signal would interrupt thread `t`'s blocking call: "none", "restart" (its handler has
   * SA_RESTART: the call runs again after it) or "eintr".
   */
  interruption(t: SignalThread): "none" | "restart" | "eintr" {
    if (t.pending === 0n && this.sharedPending === 0n) return "none";
    const ready = (t.pending | this.sharedPending) & ~t.mask;
    if (ready === 0n) return "none";
    let sig = 1;
    while ((ready & bit(sig)) === 0n) sig++;
    const action = this.action(sig);
    return action.handler > SIG_IGN && (action.flags & SA_RESTART) !== 0 ? "restart" : "eintr";
  }

  /** rt_sigsuspend: `mask` is in effect until a handler runs (whose frame restores the caller's). */
  suspend(t: SignalThread, mask: bigint): void {
    t.savedMask = t.mask;
    t.mask = mask & ~UNBLOCKABLE;
  }

  rtSigaction(sig: number, act: number, oldact: number, setSize: number): number {
    if (sig < 1 || sig > 64 || setSize !== 8) return -EINVAL;
    if (act !== 0 && (sig === SIGKILL || sig === SIGSTOP)) return -EINVAL;
    if (act !== 0 && !this.space.valid(act, 24)) return -EFAULT;
    if (oldact !== 0) {
      if (!this.space.valid(oldact, 24)) return -EFAULT;
      const old = this.actions.get(sig);
      if (old !== undefined) this.space.write(oldact, old);
      else this.space.write(oldact, new Uint8Array(24));
    }
    if (act !== 0) {
      const a = this.space.bytes(act, 24).slice();
      this.actions.set(sig, a);
      // Setting a signal to be ignored discards it if pending (POSIX).
      if (this.ignored(sig)) {
        this.thread.pending &= ~bit(sig);
        this.sharedPending &= ~bit(sig);
      }
    }
    return 0;
  }

  rtSigprocmask(how: number, set: number, oldset: number, setSize: number): number {
    const t = this.thread;
    if (setSize !== 8) return -EINVAL;
    if (set !== 0 && !this.space.valid(set, 8)) return -EFAULT;
    if (oldset !== 0 && !this.space.valid(oldset, 8)) return -EFAULT;
    const old = t.mask;
    if (set !== 0) {
      const bits = BigInt(this.space.u32(set)) | (BigInt(this.space.u32(set + 4)) << 32n);
      if (how === 0) t.mask |= bits;
      else if (how === 1) t.mask &= ~bits;
      else if (how === 2) t.mask = bits;
      else return -EINVAL;
      t.mask &= ~UNBLOCKABLE;
    }
    if (oldset !== 0) this.space.setU64(oldset, old);
    return 0;
  }

  rtSigpending(set: number, setSize: number): number {
    if (setSize !== 8) return -EINVAL;
    if (!this.space.valid(set, 8)) return -EFAULT;
    this.space.setU64(set, (this.thread.pending | this.sharedPending) & this.thread.mask);
    return 0;
  }

  private onAltStack(sp: number): boolean {
    const t = this.thread;
    return t.altFlags !== SS_DISABLE && t.altSize !== 0 && sp > t.altSp && sp - t.altSp <= t.altSize;
  }

  /** stack_t's ss_flags as the thread at `sp` sees its alternate stack. */
  private altFlags(sp: number): number {
    const t = this.thread;
    if (t.altSize === 0 || (t.altFlags & SS_DISABLE) !== 0) return SS_DISABLE;
    return this.onAltStack(sp) ? SS_ONSTACK : t.altFlags & SS_AUTODISARM;
  }

  sigaltstack(ss: number, oldss: number): number {
    const sp = this.stackPointer();
    const t = this.thread;
    const sa = this.space;
    if (ss !== 0 && !sa.valid(ss, 24)) return -EFAULT;
    if (oldss !== 0 && !sa.valid(oldss, 24)) return -EFAULT;
    const old = { sp: t.altSp, flags: this.altFlags(sp), size: t.altSize };
    if (ss !== 0) {
      if (this.onAltStack(sp)) return -EPERM;
      const newSp = sa.u64(ss);
      const flags = sa.u32(ss + 8);
      const size = sa.u64(ss + 16);
      const mode = flags & ~SS_AUTODISARM;
      if (mode !== 0 && mode !== SS_DISABLE && mode !== SS_ONSTACK) return -EINVAL;
      if (mode === SS_DISABLE) {
        t.altSp = 0;
        t.altSize = 0;
        t.altFlags = SS_DISABLE;
      } else {
        if (size < MINSIGSTKSZ) return -ENOMEM;
        t.altSp = newSp;
        t.altSize = size;
        t.altFlags = flags & SS_AUTODISARM;
      }
    }
    if (oldss !== 0) {
      sa.setU64(oldss, old.sp);
      sa.setU32(oldss + 8, old.flags);
      sa.setU32(oldss + 12, 0);
      sa.setU64(oldss + 16, old.size);
    }
    return 0;
  }

  /**
   * A fault the hart reported: queues its signal; false when it cannot be handled (blocked,
   * ignored or default: Linux then kills the process, as force_sig_fault does).
   */
  fault(signo: number, code: number, addr: number): boolean {
    const t = this.thread;
    const { handler } = this.action(signo);
    if (handler === SIG_DFL || handler === SIG_IGN || (t.mask & bit(signo)) !== 0n) return false;
    t.pending |= bit(signo);
    t.info[signo] = { signo, code, addr, pid: 0 };
    return true;
  }

  /**
   * Delivers the pending signals the thread does not block, the hart being about to return to user
   * mode at `h.pc` (which the frame saves): each handled one gets a frame (the hart then starts in its handler), ignored ones are
   * dropped. Returns the signal whose default action ends the process, or 0.
   */
  deliver(h: Hart): number {
    const t = this.thread;
    // The common case (nothing pending) costs two comparisons and allocates nothing.
    if (t.pending === 0n && this.sharedPending === 0n && t.savedMask === null) return 0;
    for (;;) {
      const ready = (t.pending | this.sharedPending) & ~t.mask;
      if (ready === 0n) {
        if (t.savedMask !== null) t.mask = t.savedMask; // rt_sigsuspend ended without a handler
        t.savedMask = null;
        return 0;
      }
      // Synchronous (fault) signals first, as Linux does; then the lowest number.
      let sig = SYNCHRONOUS.find((s) => (ready & bit(s)) !== 0n) ?? 1;
      while ((ready & bit(sig)) === 0n) sig++;
      let info: SignalInfo | undefined;
      if ((t.pending & bit(sig)) !== 0n) {
        t.pending &= ~bit(sig);
        info = t.info[sig];
        t.info[sig] = undefined;
      } else {
        this.sharedPending &= ~bit(sig);
        info = this.sharedInfo[sig];
        this.sharedInfo[sig] = undefined;
      }
      info ??= { signo: sig, code: SI_USER, addr: 0, pid: 0 };
      const action = this.action(sig);
      if (action.handler === SIG_IGN) continue;
      if (action.handler === SIG_DFL) {
        if (IGNORED_BY_DEFAULT.has(sig) || STOP_SIGNALS.has(sig)) continue;
        return sig;
      }
      if (!this.pushFrame(h, sig, info, action)) return SIGSEGV;
    }
  }

  /** Builds the rt_sigframe and points the hart at the handler; false when the stack cannot hold it. */
  private pushFrame(
    h: Hart,
    sig: number,
    info: SignalInfo,
    action: { handler: number; flags: number; mask: bigint },
  ): boolean {
    const t = this.thread;
    const sa = this.space;
    const x = h.x;
    const reg = (r: number): number => x[2 * r + 1] * 4294967296 + (x[2 * r] >>> 0);
    const userSp = reg(2);
    let sp = userSp;
    if ((action.flags & SA_ONSTACK) !== 0 && this.altFlags(userSp) === 0) sp = t.altSp + t.altSize;
    const frame = Math.floor((sp - FRAME_BYTES) / 16) * 16;
    if (!sa.writable(frame, FRAME_BYTES)) return false;
    sa.ram.fill(0, frame, frame + FRAME_BYTES);
    // siginfo_t
    sa.setU32(frame, sig);
    sa.setU32(frame + 8, info.code);
    if (sig === SIGSEGV || sig === SIGBUS || sig === SIGILL || sig === SIGTRAP) sa.setU64(frame + 16, info.addr);
    else {
      sa.setU32(frame + 16, info.pid);
      if (sig === SIGCHLD) sa.setU32(frame + 24, info.addr); // si_status
    }
    const uc = frame + INFO_BYTES;
    // uc_flags, uc_link: 0; uc_stack: the alternate stack as it was
    sa.setU64(uc + UC_STACK, t.altSp);
    sa.setU32(uc + UC_STACK + 8, this.altFlags(userSp));
    sa.setU64(uc + UC_STACK + 16, t.altSize);
    sa.setU64(uc + UC_SIGMASK, t.savedMask ?? t.mask);
    t.savedMask = null;
    // sigcontext: pc, x1..x31, f0..f31, fcsr (the extension header after it stays 0: END_MAGIC)
    sa.setU64(uc + UC_MCONTEXT, h.pc);
    for (let r = 1; r < 32; r++) {
      sa.setU32(uc + UC_MCONTEXT + 8 * r, x[2 * r]);
      sa.setU32(uc + UC_MCONTEXT + 8 * r + 4, x[2 * r + 1]);
    }
    for (let r = 0; r < 32; r++) {
      sa.setU32(uc + SC_FP + 8 * r, h.f[2 * r]);
      sa.setU32(uc + SC_FP + 8 * r + 4, h.f[2 * r + 1]);
    }
    sa.setU32(uc + SC_FCSR, (h.frm << 5) | h.fflags);
    sa.written(frame, FRAME_BYTES);
    if ((t.altFlags & SS_AUTODISARM) !== 0 && sp !== userSp) {
      t.altSp = 0;
      t.altSize = 0;
      t.altFlags = SS_DISABLE;
    }
    t.mask |= action.mask;
    if ((action.flags & SA_NODEFER) === 0) t.mask |= bit(sig);
    t.mask &= ~UNBLOCKABLE;
    if ((action.flags & SA_RESETHAND) !== 0) this.actions.delete(sig);
    h.setXNumber(2, frame);
    h.setXNumber(1, sa.sigreturnAddress);
    h.setXNumber(10, sig);
    h.setXNumber(11, frame);
    h.setXNumber(12, uc);
    h.fflags = 0; // a handler starts with clean exception flags, its rounding mode kept
    h.enterUserMode(action.handler);
    return true;
  }

  /**
   * rt_sigreturn: the registers, mask and alternate stack come back from the ucontext at the
   * stack pointer (as the handler may have changed them). False when the frame is not readable.
   */
  sigreturn(h: Hart): boolean {
    const sa = this.space;
    const x = h.x;
    const frame = x[2 * 2 + 1] * 4294967296 + (x[2 * 2] >>> 0);
    if (!sa.valid(frame, FRAME_BYTES)) return false;
    const uc = frame + INFO_BYTES;
    const t = this.thread;
    t.mask = BigInt(sa.u32(uc + UC_SIGMASK)) | (BigInt(sa.u32(uc + UC_SIGMASK + 4)) << 32n);
    t.mask &= ~UNBLOCKABLE;
    const pc = sa.u64(uc + UC_MCONTEXT);
    for (let r = 1; r < 32; r++) {
      x[2 * r] = sa.i32(uc + UC_MCONTEXT + 8 * r);
      x[2 * r + 1] = sa.i32(uc + UC_MCONTEXT + 8 * r + 4);
    }
    for (let r = 0; r < 32; r++) {
      h.f[2 * r] = sa.i32(uc + SC_FP + 8 * r);
      h.f[2 * r + 1] = sa.i32(uc + SC_FP + 8 * r + 4);
    }
    const fcsr = sa.u32(uc + SC_FCSR);
    h.fflags = fcsr & 0x1f;
    h.frm = (fcsr >> 5) & 7;
    // restore_altstack: as sigaltstack would, errors ignored.
    const ssFlags = sa.u32(uc + UC_STACK + 8);
    if (
      !this.onAltStack(x[5] * 4294967296 + (x[4] >>> 0)) &&
      (ssFlags & SS_DISABLE) === 0 &&
      sa.u64(uc + UC_STACK + 16) >= MINSIGSTKSZ
    ) {
      t.altSp = sa.u64(uc + UC_STACK);
      t.altSize = sa.u64(uc + UC_STACK + 16);
      t.altFlags = ssFlags & SS_AUTODISARM;
    }
    h.enterUserMode(pc);
    return true;
  }
}

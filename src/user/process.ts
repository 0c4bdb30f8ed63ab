/**
 * One riscv64 Linux process run on Yun's hart in U-mode: the qemu-user of Yun.
 *
 * The hart runs with bare addressing over RAM based at 0, so the program's virtual addresses are
 * RAM offsets, and with `stopOnTrap`: an `ecall` (a system call) or a fault ends `run()` with the
 * hart in M-mode and mcause/mepc/mtval set; this loop serves it and puts the hart back in U-mode.
 * The translator (WebAssembly when RAM is a WebAssembly memory) runs the hot code as in a VM.
 */
import { existsSync, realpathSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { allocateRam, Bus } from "../cpu/bus.js";
import { MSTATUS_FS } from "../cpu/csr.js";
import { Hart, PRIV_M } from "../cpu/hart.js";
import { Jit } from "../cpu/jit.js";
import { ExecError } from "./elf.js";
import { FileTable } from "./files.js";
import { loadProgram } from "./loader.js";
import { AddressSpace } from "./memory.js";
import { Syscalls } from "./syscalls.js";

export { ExecError };

/** Default size of a process's address space (RAM offsets are int32 in the TLB: at most 2 GiB). */
export const DEFAULT_SPACE_BYTES = 1 << 30;
const CAUSE_ECALL_U = 8;
const SIGNALS: Record<number, [number, string]> = {
  1: [7, "Bus error"], // misaligned fetch
  2: [4, "Illegal instruction"],
  3: [5, "Trace/breakpoint trap"],
  5: [11, "Segmentation fault"],
  7: [11, "Segmentation fault"],
  4: [7, "Bus error"],
  6: [7, "Bus error"],
};

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

  /** Builds the process and loads its program; throws an ExecError when it cannot run. */
  constructor(options: UserProgramOptions) {
    this.log = options.log ?? ((line) => writeSync(2, line + "\n"));
    const root = realpathSync(options.root);
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
    const loaded = loadProgram(this.space, { path, interpreter }, options.argv, options.env, options.program);
    const h = this.hart;
    h.stopOnTrap = true;
    h.mstatus |= MSTATUS_FS; // the FPU is on (Linux turns it on at the first FP instruction)
    h.mcounteren = 7; // cycle, time, instret readable from U-mode
    h.scounteren = 7;
    h.setXNumber(2, loaded.sp);
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
        const result = sys.call(arg(17), arg(10), arg(11), arg(12), arg(13), arg(14), arg(15));
        if (this.trace)
          this.log(
            `[syscall ${arg(17)}(${[10, 11, 12, 13].map((r) => "0x" + arg(r).toString(16)).join(", ")}) = ${result}]`,
          );
        if (sys.exit !== null) break;
        h.setXNumber(10, result);
        h.enterUserMode(pc + 4);
        continue;
      }
      const [signal, what] = SIGNALS[cause] ?? [11, `trap ${cause}`];
      const addr = (h.mtvalHi >>> 0) * 4294967296 + (h.mtvalLo >>> 0);
      this.log(`yun exec: ${this.name}: ${what} at pc 0x${pc.toString(16)} (address 0x${addr.toString(16)})`);
      sys.exit = { status: 128 + signal, signal };
      break;
    }
    this.files.closeAll();
    return sys.exit.status;
  }

  /** The translator's counters (blocks, code bytes), when it runs. */
  translatorStats(): ReturnType<Jit["stats"]> | null {
    return this.jit?.stats() ?? null;
  }
}

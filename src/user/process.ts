/**
 * One riscv64 Linux program run on Yun's harts in U-mode: the qemu-user of Yun.
 *
 * The hart runs with bare addressing over RAM based at 0, so the program's virtual addresses are
 * RAM offsets, and with `stopOnTrap`: an `ecall` (a system call) or a fault ends `run()` with the
 * hart in M-mode and mcause/mepc/mtval set; the kernel (kernel.ts) serves it and schedules the
 * program's processes and threads. The translator (WebAssembly when RAM is a WebAssembly memory)
 * runs the hot code as in a VM.
 */
import { existsSync, realpathSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { Jit } from "../cpu/jit.js";
import { ExecError } from "./elf.js";
import { FileTable } from "./files.js";
import { Kernel } from "./kernel.js";

export { ExecError };

/** Default size of a process's address space (RAM offsets are int32 in the TLB: at most 2 GiB). */
export const DEFAULT_SPACE_BYTES = 1 << 30;

export interface UserProgramOptions {
  /** The directory that holds the program's own files (its loader, libraries): like qemu-user's -L. */
  root: string;
  /** The program as the user named it: a path, or a name looked up in the root's PATH directories. */
  program: string;
  /** argv, argv[0] included. */
  argv: string[];
  env: string[];
  /** Bytes of each address space (default 1 GiB; touched pages only take host memory). */
  spaceBytes?: number;
  /** Interpret only (no translator): for tests and comparisons. */
  interpret?: boolean;
  /** Where diagnostics go (default stderr). */
  log?: (line: string) => void;
  /** Host fds to serve as the program's stdin, stdout and stderr (default: this process's). */
  stdio?: readonly [number, number, number];
  /** Log every system call (strace-like) to `log`. */
  trace?: boolean;
  /** The program's starting directory (default: the host's current directory). */
  cwd?: string;
}

const SEARCH_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/**
 * The host path of a program: a name with a slash is a path (inside the root first when absolute),
 * a bare name is searched in the root's usual bin directories; null when not found.
 */
export function findProgram(files: FileTable, program: string): string | null {
  if (program.includes("/")) {
    const p = program.startsWith("/") ? files.inRoot(program) : resolve(files.cwd, program);
    return existsSync(p) ? p : null;
  }
  for (const dir of SEARCH_PATH) {
    const p = join(files.root, dir, program);
    if (existsSync(p)) return p;
  }
  return null;
}

/** The program and every process and thread it starts, in this Node process. */
export class UserProcess {
  private readonly kernel: Kernel;

  /** Builds the first process and loads its program; throws an ExecError when it cannot run. */
  constructor(options: UserProgramOptions) {
    const log = options.log ?? ((line: string) => writeSync(2, line + "\n"));
    const root = realpathSync(options.root);
    const files = new FileTable(root, options.cwd ?? process.cwd(), options.stdio);
    const path = findProgram(files, options.program);
    if (path === null) throw new ExecError(`${options.program}: no such file`, 127);
    this.kernel = new Kernel({
      root,
      interpret: options.interpret === true,
      spaceBytes: options.spaceBytes ?? DEFAULT_SPACE_BYTES,
      log,
      trace: options.trace === true,
    });
    this.kernel.spawn(files, resolve(path), options.argv, options.env, options.argv[0] ?? options.program);
  }

  /** Runs the program to its end; returns its exit status (128 + signal when a signal ended it). */
  run(): number {
    return this.kernel.run();
  }

  /** The translator's counters (blocks, code bytes) of the first process, when it runs. */
  translatorStats(): ReturnType<Jit["stats"]> | null {
    return this.kernel.stats();
  }
}

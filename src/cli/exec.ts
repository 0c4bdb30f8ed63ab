/**
 * `yun exec`: runs a riscv64 Linux program on this host on Yun's CPU, as qemu-user does
 * (src/user): no VM, no kernel; its system calls are served by the host through Node.
 *
 *   yun exec [--root DIR] [--env K=V]... PROGRAM [ARGS...]
 */
import { existsSync, statSync } from "node:fs";
import { ExecError, UserProcess } from "../user/process.js";

const HELP = `Usage: yun exec [options] PROGRAM [ARGS...]

Runs a riscv64 Linux program (static or dynamic ELF) on this host on Yun's CPU, without a VM.
Its dynamic loader and libraries come from --root, a directory holding a riscv64 root file
system (an unpacked Debian riscv64 root, say): absolute paths the program opens are looked up
there first, then on the host; the current directory is the host's.

Options:
  --root DIR          the riscv64 root (default: $YUN_EXEC_ROOT; one of the two is required)
  --env K=V           set a variable in the program's environment (repeatable); the program
                      gets the host's environment plus these
  --clear-env         start from an empty environment instead of the host's
  --argv0 NAME        the program's argv[0] (default: PROGRAM as given)
  --interpret         interpret only (no translator)
  -h, --help          show this help

The exit status is the program's (128 + N when signal N ended it); 127 when the program or
its interpreter is not found, 126 when it is not a riscv64 executable.
`;

export function execCommand(args: string[]): number {
  let root = process.env.YUN_EXEC_ROOT ?? "";
  const extraEnv: string[] = [];
  let clearEnv = false;
  let interpret = false;
  let argv0: string | undefined;
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      i++;
      break;
    }
    if (!a.startsWith("-")) break;
    if (a === "-h" || a === "--help") {
      process.stdout.write(HELP);
      return 0;
    }
    const value = (): string | undefined => {
      const eq = a.indexOf("=");
      if (eq > 0) return a.slice(eq + 1);
      return args[++i];
    };
    const flag = a.includes("=") ? a.slice(0, a.indexOf("=")) : a;
    if (flag === "--root") root = value() ?? "";
    else if (flag === "--env") {
      const kv = a.startsWith("--env=") ? a.slice(6) : args[++i];
      if (kv === undefined || !kv.includes("=")) {
        process.stderr.write(`yun exec: --env needs K=V, got "${kv ?? ""}"\n`);
        return 2;
      }
      extraEnv.push(kv);
    } else if (flag === "--argv0") argv0 = value();
    else if (a === "--clear-env") clearEnv = true;
    else if (a === "--interpret") interpret = true;
    else {
      process.stderr.write(`yun exec: unknown option ${a} (see yun exec --help)\n`);
      return 2;
    }
  }
  const program = args[i];
  if (program === undefined) {
    process.stderr.write("yun exec: no program given (see yun exec --help)\n");
    return 2;
  }
  if (root === "") {
    process.stderr.write(
      "yun exec: --root DIR is required (a riscv64 root file system, e.g. unpacked Debian packages)\n",
    );
    return 2;
  }
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    process.stderr.write(`yun exec: the root ${root} is not a directory\n`);
    return 2;
  }
  const env = new Map<string, string>();
  if (!clearEnv)
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("YUN_")) env.set(k, v);
  for (const kv of extraEnv) env.set(kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1));
  let proc: UserProcess;
  try {
    proc = new UserProcess({
      root,
      program,
      argv: [argv0 ?? program, ...args.slice(i + 1)],
      env: [...env].map(([k, v]) => `${k}=${v}`),
      interpret,
      trace: process.env.YUN_EXEC_TRACE === "1",
    });
  } catch (e) {
    if (e instanceof ExecError) {
      process.stderr.write(`yun exec: ${e.message}\n`);
      return e.status;
    }
    throw e;
  }
  return proc.run();
}

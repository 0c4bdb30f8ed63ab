/**
 * Page protection and signals in `yun exec`: a C program (test/user/programs/signals.c, built
 * static with riscv64-linux-gnu-gcc) runs one case per argument under UserProcess and under
 * qemu-riscv64 as the oracle; stdout and the exit status (128 + signal when one ended it) must match.
 */
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { constants as osConstants, tmpdir } from "node:os";
import { join } from "node:path";
import { UserProcess } from "../../src/user/process.js";
import { findInPath } from "../../src/images/util.js";

const CC = "riscv64-linux-gnu-gcc";
const QEMU = findInPath("qemu-riscv64");
const SOURCE = join(process.cwd(), "test", "user", "programs", "signals.c");
const skip =
  findInPath(CC) === undefined
    ? `${CC} is not installed (apt-get install gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)`
    : QEMU === undefined
      ? "qemu-riscv64 is not installed (apt-get install qemu-user)"
      : false;

/** Each case: the program's argument and what it shows (the oracle decides the exact output). */
const CASES: [string, string][] = [
  ["protect", "a write to a PROT_READ page: the SIGSEGV handler mprotects it writable and returns"],
  ["null", "a NULL read caught with sigsetjmp/siglongjmp, twice"],
  ["crash", "SIGSEGV with no handler ends the process (139)"],
  ["siginfo", "raise and kill with an SA_SIGINFO handler: si_signo, si_code, si_pid"],
  ["mask", "a blocked signal stays pending and is delivered once when unblocked"],
  ["altstack", "an SA_ONSTACK handler runs on the sigaltstack"],
  ["none", "PROT_NONE and unmapped pages fault (SEGV_ACCERR, SEGV_MAPERR); EFAULT for their bytes"],
  ["resethand", "SA_RESETHAND: the second signal takes the default action (138)"],
  ["pipe", "a write to a pipe with no reader: EPIPE when SIGPIPE is ignored, else the end (141)"],
  ["context", "registers and FP values survive handlers"],
  ["rodata", "the program's read-only data and code are not writable"],
  ["fork", "a fork child's mprotect and mask do not outlive it"],
  ["ucontext", "handlers that change pc, a1 and fa0 in the ucontext (SIGSEGV, SIGILL, SIGTRAP)"],
];

let dir = "";

function runQemu(mode: string): { stdout: string; status: number } {
  const r = spawnSync(QEMU!, [join(dir, "root", "signals"), mode], { encoding: "utf8" });
  const signal = r.signal !== null ? osConstants.signals[r.signal] : 0;
  return { stdout: r.stdout, status: r.status ?? 128 + signal };
}

function runYun(mode: string): { stdout: string; stderr: string; status: number } {
  const outPath = join(dir, "stdout");
  const errPath = join(dir, "stderr");
  const inFd = openSync("/dev/null", "r");
  const outFd = openSync(outPath, "w");
  const errFd = openSync(errPath, "w");
  let stderr = "";
  try {
    const p = new UserProcess({
      root: join(dir, "root"),
      program: "/signals",
      argv: ["/signals", mode],
      env: ["PATH=/bin"],
      stdio: [inFd, outFd, errFd],
      log: (line) => {
        stderr += line + "\n";
      },
    });
    const status = p.run();
    return { stdout: readFileSync(outPath, "utf8"), stderr: stderr + readFileSync(errPath, "utf8"), status };
  } finally {
    closeSync(inFd);
    closeSync(outFd);
    closeSync(errFd);
  }
}

describe("yun exec: page protection and signals against qemu-riscv64", { skip, timeout: 300_000 }, () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "yun-signals-"));
    const bin = join(dir, "signals");
    const cc = spawnSync(CC, ["-O1", "-static", "-Wall", "-o", bin, SOURCE], { encoding: "utf8" });
    assert.equal(cc.status, 0, cc.stderr);
    mkdirSync(join(dir, "root"));
    copyFileSync(bin, join(dir, "root", "signals"));
  });
  after(() => {
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  for (const [mode, what] of CASES) {
    test(`${mode}: ${what}`, () => {
      const expected = runQemu(mode);
      const got = runYun(mode);
      assert.equal(got.stdout, expected.stdout, `stdout of ${mode}; yun's log: ${got.stderr}`);
      assert.equal(got.status, expected.status, `exit status of ${mode}; yun's log: ${got.stderr}`);
    });
  }

  test("what a user sees: the unhandled fault's one line and 139", () => {
    const got = runYun("crash");
    assert.equal(got.status, 139);
    assert.equal(got.stdout, "before the crash\n");
    assert.match(got.stderr, /^yun exec: \/signals: Segmentation fault at pc 0x[0-9a-f]+ \(address 0x0\)\n$/);
  });
});

// End-to-end tests: drive the real `yun` CLI as a child process and check what a user sees on the
// console. Each boot of the Debian image costs about half a minute of host time, so the checks are
// grouped per boot. The image lives in $YUN_HOME (whatever the environment says) and is pulled first
// if it is missing, as a user would; the boot tests are skipped only when it cannot be pulled.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { findImage } from "../../src/images/store.js";
import { findInPath } from "../../src/images/util.js";
import { yunHome } from "../../src/images/paths.js";

/** Repository root (this file runs from dist/test/e2e/). */
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const YUN = join(ROOT, "bin", "yun.js");

const TEST_TIMEOUT = 240_000;
/** A boot is killed this long after it started, a little before the test's own timeout, so the
 *  failure shows the console rather than a bare "test timed out". */
const BOOT_DEADLINE = 225_000;
const PROMPT = "~ # ";

/** The last 2 KB of a console transcript, for failure messages. */
function tail(text: string, bytes = 2048): string {
  const t = text.length > bytes ? text.slice(-bytes) : text;
  return `\n----- last ${t.length} chars of console -----\n${t}\n----- end of console -----`;
}

/** A running `yun` child with its console (stdout + stderr, in arrival order) collected. */
class Yun {
  readonly child: ChildProcessWithoutNullStreams;
  readonly started = Date.now();
  console = "";
  stderr = "";
  private waiters: (() => void)[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number }>;
  private killTimer: NodeJS.Timeout;
  timedOut = false;

  constructor(args: string[], deadline = BOOT_DEADLINE) {
    this.child = spawn(process.execPath, [YUN, ...args], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
    const collect = (chunk: Buffer, isErr: boolean): void => {
      const s = chunk.toString("utf8");
      this.console += s;
      if (isErr) this.stderr += s;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    };
    this.child.stdout.on("data", (c: Buffer) => collect(c, false));
    this.child.stderr.on("data", (c: Buffer) => collect(c, true));
    this.child.stdin.on("error", () => {}); // EPIPE if the child exits before reading everything
    this.killTimer = setTimeout(() => {
      this.timedOut = true;
      this.child.kill("SIGKILL");
    }, deadline);
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code, signal) => {
        clearTimeout(this.killTimer);
        const w = this.waiters;
        this.waiters = [];
        for (const f of w) f();
        resolve({ code, signal, seconds: (Date.now() - this.started) / 1000 });
      });
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves once `pred(console)` holds; rejects (with the console tail) if the child exits first
   *  or the wait exceeds timeoutMs. */
  waitFor(what: string, pred: (console: string) => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${tail(this.console)}`));
      }, timeoutMs);
      const check = (): void => {
        if (pred(this.console)) {
          clearTimeout(timer);
          resolve();
        } else if (!this.running) {
          clearTimeout(timer);
          reject(
            new Error(
              `yun exited (${this.child.exitCode ?? this.child.signalCode}) while waiting for ${what}${tail(this.console)}`,
            ),
          );
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  /** Ends the child if it is still running (it is ours: killed by its own pid). */
  kill(): void {
    clearTimeout(this.killTimer);
    if (this.running) this.child.kill("SIGKILL");
  }
}

/** Runs `yun ARGS` with `input` piped to stdin (then closed) and waits for it to exit. */
async function runYun(args: string[], input: string, deadline = BOOT_DEADLINE) {
  const yun = new Yun(args, deadline);
  yun.child.stdin.end(input);
  const r = await yun.exited;
  return { ...r, console: yun.console, stderr: yun.stderr, timedOut: yun.timedOut };
}

/** Fails with the console tail unless the boot exited 0 in time. */
function assertCleanExit(r: { code: number | null; signal: string | null; timedOut: boolean; console: string }): void {
  if (r.timedOut) assert.fail(`yun did not exit within ${BOOT_DEADLINE / 1000} s and was killed${tail(r.console)}`);
  assert.equal(r.code, 0, `yun exited with ${r.code ?? r.signal}, expected 0${tail(r.console)}`);
}

/** The text after the first occurrence of `needle` (the tty's echo of a command line). */
function after(text: string, needle: string, ctx: string): string {
  const i = text.indexOf(needle);
  if (i < 0) assert.fail(`the console never echoed "${needle}"${tail(ctx)}`);
  return text.slice(i + needle.length);
}

/** Index just past the line that is exactly `line` (CR LF or LF), or -1. */
function lineEnd(text: string, line: string, from = 0): number {
  const re = new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\r?$`, "gm");
  re.lastIndex = from;
  const m = re.exec(text);
  return m ? m.index + m[0].length : -1;
}

// ---------------------------------------------------------------------------------------------
// The image: present in $YUN_HOME, or pulled with `yun image pull debian`.

/** Why the image is unavailable, once the image test found it cannot be pulled. */
let pullImpossible: string | undefined;

/** Why boot tests must skip, or false when the image is there. */
function imageSkip(): string | false {
  if (findImage("debian") !== undefined) return false;
  return pullImpossible ?? `no debian image in ${yunHome()} (the test that pulls it did not run or failed)`;
}

test("the debian image is in $YUN_HOME (pulled with yun image pull if missing)", { timeout: 1_800_000 }, async (t) => {
  if (findImage("debian") !== undefined) {
    t.diagnostic(`using the image in ${yunHome()}`);
    return;
  }
  if (findInPath("apt-get") === undefined || findInPath("dpkg-deb") === undefined) {
    pullImpossible = `no debian image in ${yunHome()} and it cannot be pulled here (yun image pull needs apt-get and dpkg-deb)`;
    t.skip(pullImpossible);
    return;
  }
  t.diagnostic(`no image in ${yunHome()}; running yun image pull debian`);
  const r = await runYun(["image", "pull", "debian"], "", 1_750_000);
  assert.equal(r.code, 0, `yun image pull debian failed (${r.code ?? r.signal})${tail(r.console)}`);
  assert.ok(findImage("debian"), `yun image pull debian exited 0 but no image is in ${yunHome()}${tail(r.console)}`);
});

// ---------------------------------------------------------------------------------------------
// 1. Default firmware (OpenSBI fw_dynamic): a script, /proc/cpuinfo, and 4 MiB through the console.

test(
  "boots with OpenSBI, runs a piped script, and moves 4 MiB intact through the console",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const skip = imageSkip();
    if (skip) return t.skip(skip);
    const script = [
      "echo $((6*7))",
      "cat /proc/cpuinfo",
      "dd if=/dev/urandom of=/tmp/r bs=1M count=4",
      "echo SUM-$((1+1))",
      "busybox sha256sum /tmp/r",
      "echo B64-$((1+1))",
      "base64 /tmp/r",
      "echo END-$((1+1))",
      "poweroff -f",
      "",
    ].join("\n");
    const r = await runYun(["run"], script);
    t.diagnostic(`boot, script and poweroff took ${r.seconds.toFixed(1)} s`);
    assertCleanExit(r);
    const out = r.console;
    assert.match(out, /yun: init ready/, `no "yun: init ready" on the console${tail(out)}`);

    // The answer, on a line of its own after the command was echoed.
    assert.match(after(out, "echo $((6*7))", out), /^42\r?$/m, `no line "42" after the command${tail(out)}`);

    // /proc/cpuinfo: the ISA string.
    const isa = /^isa\t\t: (\S+)\r?$/m.exec(out);
    assert.ok(isa, `no "isa\\t\\t: ..." line from /proc/cpuinfo${tail(out)}`);
    assert.ok(isa[1]!.startsWith("rv64imafdc"), `isa is "${isa[1]}", expected rv64imafdc...`);
    t.diagnostic(`guest isa: ${isa[1]}`);

    // The guest's SHA-256 of the random file.
    const sumAt = lineEnd(out, "SUM-2");
    assert.ok(sumAt >= 0, `no SUM-2 marker line${tail(out)}`);
    const sum = /^([0-9a-f]{64}) {2}\/tmp\/r\r?$/m.exec(out.slice(sumAt));
    assert.ok(sum, `no "<sha256>  /tmp/r" line after SUM-2${tail(out)}`);

    // The base64 between B64-2 and END-2: prompt lines (the shell echoing the next command) aside,
    // every line must be base64.
    const b64At = lineEnd(out, "B64-2", sumAt);
    assert.ok(b64At >= 0, `no B64-2 marker line${tail(out)}`);
    const endAt = lineEnd(out, "END-2", b64At);
    assert.ok(endAt >= 0, `no END-2 marker line after B64-2${tail(out)}`);
    const section = out.slice(b64At, endAt - "END-2".length).replace(/\r?\n?$/, "");
    const lines = section.split(/\r?\n/).filter((l) => l !== "" && !l.startsWith(PROMPT));
    const bad = lines.findIndex((l) => !/^[A-Za-z0-9+/]+={0,2}$/.test(l));
    assert.equal(bad, -1, `line ${bad} between B64-2 and END-2 is not base64: ${JSON.stringify(lines[bad])}`);
    const data = Buffer.from(lines.join(""), "base64");
    assert.equal(
      data.length,
      4 * 1024 * 1024,
      `decoded ${data.length} bytes from ${lines.length} base64 lines, expected 4 MiB`,
    );
    const hostSum = createHash("sha256").update(data).digest("hex");
    assert.equal(hostSum, sum[1], "the host's SHA-256 of the decoded base64 differs from the guest's sha256sum");
    t.diagnostic(`4 MiB via base64: ${lines.length} lines, sha256 ${hostSum}`);
  },
);

// ---------------------------------------------------------------------------------------------
// 2. No firmware: Yun answers the kernel's SBI calls itself.

test("boots with --firmware none and runs a piped script", { timeout: TEST_TIMEOUT }, async (t) => {
  const skip = imageSkip();
  if (skip) return t.skip(skip);
  const r = await runYun(["run", "--firmware", "none"], "echo $((6*7))\npoweroff -f\n");
  t.diagnostic(`boot, script and poweroff took ${r.seconds.toFixed(1)} s`);
  assertCleanExit(r);
  assert.doesNotMatch(r.console, /OpenSBI/, `OpenSBI ran although --firmware none was given${tail(r.console)}`);
  assert.match(
    after(r.console, "echo $((6*7))", r.console),
    /^42\r?$/m,
    `no line "42" after the command${tail(r.console)}`,
  );
});

// ---------------------------------------------------------------------------------------------
// 3. Idle cost: with the shell waiting at its prompt, the hypervisor should all but sleep.

/** utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields[0] is field 3 (state)
  return Number(fields[11]) + Number(fields[12]);
}

function clockTicksPerSecond(): number {
  try {
    const n = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test("an idle guest at its shell prompt costs under 2 % of a core", { timeout: TEST_TIMEOUT }, async (t) => {
  const skip = imageSkip();
  if (skip) return t.skip(skip);
  const yun = new Yun(["run"]);
  try {
    // Wait for the shell's prompt before typing anything.
    await yun.waitFor(`the prompt "${PROMPT}"`, (c) => c.includes(PROMPT), BOOT_DEADLINE - 30_000);
    const bootSeconds = (Date.now() - yun.started) / 1000;
    t.diagnostic(`prompt after ${bootSeconds.toFixed(1)} s`);

    // One command, then wait for its output and the next prompt: the shell is now idle.
    yun.child.stdin.write("echo READY-$((2+2))\n");
    await yun.waitFor(
      "READY-4 and the next prompt",
      (c) => {
        const at = lineEnd(c, "READY-4");
        return at >= 0 && c.indexOf(PROMPT, at) >= 0;
      },
      60_000,
    );
    await sleep(1_000);

    const hz = clockTicksPerSecond();
    const pid = yun.child.pid!;
    const ticks0 = cpuTicks(pid);
    const t0 = process.hrtime.bigint();
    await sleep(10_000);
    const ticks1 = cpuTicks(pid);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const percent = ((ticks1 - ticks0) / hz / wall) * 100;
    t.diagnostic(
      `idle CPU: ${ticks1 - ticks0} ticks at ${hz} Hz over ${wall.toFixed(2)} s = ${percent.toFixed(2)} % of one core`,
    );
    assert.ok(yun.running, `yun exited while idle${tail(yun.console)}`);

    yun.child.stdin.write("poweroff -f\n");
    const r = await yun.exited;
    assertCleanExit({ ...r, timedOut: yun.timedOut, console: yun.console });

    assert.ok(
      percent < 2,
      `idle guest cost ${percent.toFixed(2)} % of one core over ${wall.toFixed(1)} s (limit 2 %)${tail(yun.console)}`,
    );
  } finally {
    yun.kill();
  }
});

// ---------------------------------------------------------------------------------------------
// 4. Bad input: usage errors are reported, naming what was wrong, without booting.

test("bad flags and files are reported with a non-zero exit", { timeout: 60_000 }, async () => {
  const memory = await runYun(["run", "--memory", "abc"], "", 30_000);
  assert.equal(memory.code, 2, `yun run --memory abc exited ${memory.code ?? memory.signal}${tail(memory.console)}`);
  assert.match(memory.stderr, /--memory/, `the message does not name --memory: ${memory.stderr}`);

  // Without an image the firmware would come from one (and be pulled), so boot firmware-less then.
  const kernelArgs = ["run", "--kernel", "/nonexistent", ...(findImage("debian") ? [] : ["--firmware", "none"])];
  const kernel = await runYun(kernelArgs, "", 30_000);
  assert.notEqual(kernel.code, 0, `yun ${kernelArgs.join(" ")} exited 0${tail(kernel.console)}`);
  assert.ok(kernel.code !== null, `yun ${kernelArgs.join(" ")} was killed (${kernel.signal})${tail(kernel.console)}`);
  assert.match(kernel.stderr, /\/nonexistent/, `the message does not name the file: ${kernel.stderr}`);
  assert.doesNotMatch(kernel.console, /OpenSBI|Linux version/, "yun started a guest without a kernel");

  const bogus = await runYun(["run", "--bogus"], "", 30_000);
  assert.equal(bogus.code, 2, `yun run --bogus exited ${bogus.code ?? bogus.signal}${tail(bogus.console)}`);
  assert.match(bogus.stderr, /--bogus/, `the message does not name --bogus: ${bogus.stderr}`);

  const foo = await runYun(["foo"], "", 30_000);
  assert.equal(foo.code, 2, `yun foo exited ${foo.code ?? foo.signal}${tail(foo.console)}`);
  assert.match(foo.stderr, /unknown command "foo"/, `the message does not name the command: ${foo.stderr}`);
});

// Shared by the end-to-end tests: drive the real `yun` CLI as a child process and watch its console.
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { openConsole } from "../../src/vmm/client.js";

/** Repository root (this file runs from dist/test/e2e/). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const YUN = join(ROOT, "bin", "yun.js");

export const TEST_TIMEOUT = 240_000;
/** A boot is killed this long after it started, a little before the test's own timeout, so the
 *  failure shows the console rather than a bare "test timed out". */
export const BOOT_DEADLINE = 225_000;
export const PROMPT = "~ # ";

/** The last 2 KB of a console transcript, for failure messages. */
export function tail(text: string, bytes = 2048): string {
  const t = text.length > bytes ? text.slice(-bytes) : text;
  return `\n----- last ${t.length} chars of console -----\n${t}\n----- end of console -----`;
}

/** The console around the first `needle` (all of its start when absent), to show what the guest did there. */
export function around(text: string, needle: string, before = 1024, afterBytes = 1024): string {
  const i = Math.max(0, text.indexOf(needle));
  const t = JSON.stringify(text.slice(Math.max(0, i - before), i + needle.length + afterBytes));
  return `\n----- console around ${JSON.stringify(needle)} (as a JSON string) -----\n${t}\n----- end -----`;
}

/** What fencedShell needs of a console: its text so far, a way to type, and a wait. */
interface Console {
  text(): string;
  type(line: string): void;
  waitFor(what: string, pred: (text: string) => boolean, timeoutMs: number): Promise<void>;
}

/**
 * Types `command` at the guest's shell and resolves with what it printed, once it finished. The
 * output is fenced by two marker lines the shell computes (`<<N` and `>>N`), so neither the echo
 * of the typed line nor the line editor's redrawing can be mistaken for output; kernel log lines
 * that land on the console meanwhile are left out. A command ending in "&" works too.
 */
async function fencedShell(c: Console, n: number, command: string, timeoutMs: number): Promise<string> {
  const from = c.text().length;
  const sep = /&\s*$/.test(command) ? " " : "; "; // "cmd &" takes no ";"
  c.type(`echo "<<$((${n}))"; ${command}${sep}echo ">>$((${n}))"\n`);
  let start = -1;
  let end = -1;
  await c.waitFor(
    `the output of: ${command}`,
    (t) => {
      start = lineEnd(t, `<<${n}`, from);
      if (start < 0) return false;
      end = t.slice(start).search(new RegExp(`^>>${n}\\r?$`, "m"));
      return end >= 0;
    },
    timeoutMs,
  );
  return c
    .text()
    .slice(start, start + end)
    .replace(/\r\n/g, "\n")
    .replace(/^\n/, "")
    .replace(/^\[ *\d+\.\d+\] .*\n/gm, ""); // kernel messages on the console
}

/** A running `yun` child with its console (stdout + stderr, in arrival order) collected. */
export class Yun {
  readonly child: ChildProcessWithoutNullStreams;
  readonly started = Date.now();
  console = "";
  stderr = "";
  private waiters: (() => void)[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number }>;
  private killTimer: NodeJS.Timeout;
  timedOut = false;
  private commands = 0;

  constructor(args: string[], deadline = BOOT_DEADLINE, env: NodeJS.ProcessEnv = process.env) {
    this.child = spawn(process.execPath, [YUN, ...args], { cwd: ROOT, env, stdio: ["pipe", "pipe", "pipe"] });
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

  /** Waits for the shell prompt after boot; returns the seconds since spawn. */
  async prompt(timeoutMs = BOOT_DEADLINE - 30_000): Promise<number> {
    await this.waitFor(`the prompt "${PROMPT}"`, (c) => c.includes(PROMPT), timeoutMs);
    return (Date.now() - this.started) / 1000;
  }

  /** Runs `command` at the guest's shell; see fencedShell. */
  sh(command: string, timeoutMs = 60_000): Promise<string> {
    return fencedShell(
      {
        text: () => this.console,
        type: (l) => this.child.stdin.write(l),
        waitFor: (w, p, t) => this.waitFor(w, p, t),
      },
      ++this.commands,
      command,
      timeoutMs,
    );
  }

  /** Ends the child if it is still running (it is ours: killed by its own pid). */
  kill(): void {
    clearTimeout(this.killTimer);
    if (this.running) this.child.kill("SIGKILL");
  }
}

/** Runs `yun ARGS` with `input` piped to stdin (then closed) and waits for it to exit. */
export async function runYun(args: string[], input: string, deadline = BOOT_DEADLINE) {
  const yun = new Yun(args, deadline);
  yun.child.stdin.end(input);
  const r = await yun.exited;
  return { ...r, console: yun.console, stderr: yun.stderr, timedOut: yun.timedOut };
}

/** Fails with the console tail unless the boot exited 0 in time. */
export function assertCleanExit(r: {
  code: number | null;
  signal: string | null;
  timedOut: boolean;
  console: string;
}): void {
  if (r.timedOut) assert.fail(`yun did not exit within ${BOOT_DEADLINE / 1000} s and was killed${tail(r.console)}`);
  assert.equal(r.code, 0, `yun exited with ${r.code ?? r.signal}, expected 0${tail(r.console)}`);
}

/** The text after the first occurrence of `needle` (the tty's echo of a command line). */
export function after(text: string, needle: string, ctx: string): string {
  const i = text.indexOf(needle);
  if (i < 0) assert.fail(`the console never echoed "${needle}"${tail(ctx)}`);
  return text.slice(i + needle.length);
}

/** Index just past the line that is exactly `line` (CR LF or LF), or -1. */
export function lineEnd(text: string, line: string, from = 0): number {
  const re = new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\r?$`, "gm");
  re.lastIndex = from;
  const m = re.exec(text);
  return m ? m.index + m[0].length : -1;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A console attached through a VM's control socket (`yun run --headless`), with the same fenced
 * `sh()` as Yun's. Output from before the attach is replayed first.
 */
export class ConsoleSession {
  text = "";
  private waiters: (() => void)[] = [];
  /** Fence numbers of this session's own: the replayed history holds other sessions' fences. */
  private commands = 1000 * (1 + Math.floor(Math.random() * 1_000_000));
  private closed = false;

  constructor(private readonly socket: import("node:net").Socket) {
    socket.on("data", (b: Buffer) => {
      this.text += b.toString("utf8");
      this.wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake();
    });
    socket.resume();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  waitFor(what: string, pred: (text: string) => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}${tail(this.text)}`)), timeoutMs);
      const check = (): void => {
        if (pred(this.text)) {
          clearTimeout(timer);
          resolve();
        } else if (this.closed) {
          clearTimeout(timer);
          reject(new Error(`the console closed while waiting for ${what}${tail(this.text)}`));
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  sh(command: string, timeoutMs = 60_000): Promise<string> {
    return fencedShell(
      { text: () => this.text, type: (l) => this.socket.write(l), waitFor: (w, p, t) => this.waitFor(w, p, t) },
      ++this.commands,
      command,
      timeoutMs,
    );
  }

  close(): void {
    this.socket.destroy();
  }
}

/** `yun ARGS` to completion: exit code, stdout, stderr. */
export function yunSync(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [YUN, ...args], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** `yun vm ARGS`'s JSON answer (the command must succeed). */
export function vmJson<T>(...args: string[]): T {
  const r = yunSync("vm", ...args);
  assert.equal(r.code, 0, `yun vm ${args.join(" ")} failed: ${r.err}`);
  return JSON.parse(r.out) as T;
}

/** Starts `yun run --headless --name NAME ARGS` (added to `children`) and waits until its control socket answers. */
export async function headless(
  children: Yun[],
  name: string,
  ...args: string[]
): Promise<{ yun: Yun; socket: string }> {
  const y = new Yun(["run", "--headless", "--name", name, ...args]);
  children.push(y);
  for (let i = 0; i < 600; i++) {
    const list = JSON.parse(yunSync("vm", "list", "--json").out) as { name: string; apiSocket: string }[];
    const e = list.find((v) => v.name === name);
    if (e) return { yun: y, socket: e.apiSocket };
    if (!y.running) assert.fail(`yun run ${args.join(" ")} exited: ${y.console}`);
    await sleep(100);
  }
  assert.fail(`VM ${name} never registered: ${y.console}`);
}

/** A console session on a VM's control socket, with its output history. */
export async function attach(socket: string): Promise<ConsoleSession> {
  return new ConsoleSession(await openConsole(socket, true));
}

/**
 * The guest counter the lifecycle tests keep in /tmp/c: the last number the command printed (the
 * shell may print a job's "Done" notice first, for a job another console session started).
 */
export const counter = async (c: ConsoleSession): Promise<number> => {
  const numbers = (await c.sh("cat /tmp/c"))
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => /^\d+$/.test(l));
  return numbers.length > 0 ? Number(numbers[numbers.length - 1]) : NaN;
};

/**
 * Starts a `yun run --headless --incoming 0 ARGS` destination (added to `children`); resolves with
 * it, its port and the one-time token it printed.
 */
export async function incoming(
  children: Yun[],
  ...args: string[]
): Promise<{ dest: Yun; port: string; token: string }> {
  const dest = new Yun(["run", "--headless", "--incoming", "0", ...args]);
  children.push(dest);
  const wait = /waiting for a migration on 127\.0\.0\.1:(\d+) \(one-time token ([A-Za-z0-9_-]+)\)/;
  await dest.waitFor("the destination to listen", (s) => wait.test(s), 30_000);
  const m = wait.exec(dest.console)!;
  return { dest, port: m[1], token: m[2] };
}

/** The control socket of VM `name` once process `pid` runs it (a migration's destination registers late). */
export async function socketOf(name: string, pid: number): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const e = (
      JSON.parse(yunSync("vm", "list", "--json").out) as { name: string; apiSocket: string; pid: number }[]
    ).find((v) => v.name === name);
    if (e && e.pid === pid) return e.apiSocket;
    await sleep(100);
  }
  assert.fail(`VM ${name} is not listed with pid ${pid}`);
}

/**
 * Restores snapshot `snap` as VM `name` with `--cpu-cap cap`, starts `loops` busy loops in it and
 * returns the share of a host core its process used over 10 s (after 3 s of warm-up).
 */
/**
 * The share of a host core a VM restored from `snap` with `--cpu-cap cap` uses while `loops` busy
 * loops run in it, and the idle cores the host had meanwhile: the cap is an upper bound the VMM
 * enforces; reaching it also needs a host with time to give.
 */
export async function cappedShare(
  children: Yun[],
  name: string,
  snap: string,
  cap: number,
  loops: number,
): Promise<{ share: number; hostIdleCores: number }> {
  const c = await headless(children, name, "--restore", snap, "--cpu-cap", String(cap));
  const cc = await attach(c.socket);
  await cc.sh(Array.from({ length: loops }, () => "while :; do :; done &").join(" "));
  await sleep(3000); // translation and warm-up
  const pid = c.yun.child.pid!;
  const c0 = cpuSeconds(pid);
  const idle0 = hostIdleSeconds();
  const t0 = performance.now();
  await sleep(10_000);
  const seconds = (performance.now() - t0) / 1000;
  const share = (cpuSeconds(pid) - c0) / seconds;
  const hostIdleCores = (hostIdleSeconds() - idle0) / seconds;
  cc.close();
  vmJson("stop", name);
  await c.yun.exited;
  return { share, hostIdleCores };
}

/** Asserts a capped VM's share: never above the cap; at the cap unless the host had no time to give. */
export function assertCapped(r: { share: number; hostIdleCores: number }, cap: number): void {
  const tolerance = 0.05;
  assert.ok(r.share < cap + tolerance, `share ${r.share.toFixed(3)} is over the cap ${cap}`);
  if (r.hostIdleCores > 0.25)
    assert.ok(
      r.share > cap - tolerance,
      `share ${r.share.toFixed(3)} under the cap ${cap} while the host had ${r.hostIdleCores.toFixed(2)} cores idle`,
    );
}

/** Idle time (s) of all the host's CPUs so far (idle + iowait of /proc/stat's cpu line). */
function hostIdleSeconds(): number {
  const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/);
  return (Number(fields[4]) + Number(fields[5])) / 100;
}

/** CPU time (s) process `pid` has used so far (user + system, all threads). */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

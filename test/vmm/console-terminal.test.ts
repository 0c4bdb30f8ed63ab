/**
 * The monitor as the guest's terminal, without Linux: a tiny kernel (test/support/prompt-kernel.ts)
 * writes a prompt and a cursor-position query, then echoes what it reads up to a newline and powers
 * off. The answer reaches it before typed-ahead input; input waits for the prompt; a real terminal
 * attached answers for itself; a snapshot taken before the prompt keeps the input waiting.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VmMonitor, type MonitorOptions } from "../../src/vmm/monitor.js";
import type { TypeAheadRule } from "../../src/vmm/terminal.js";
import type { VmSpec } from "../../src/vmm/spec.js";
import { promptKernel } from "../support/prompt-kernel.js";

const dir = mkdtempSync(join(tmpdir(), "yun-console-"));
const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

function kernel(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, promptKernel(text));
  return path;
}

const spec = (kernelPath: string): VmSpec => ({
  name: "console",
  memoryMiB: 16,
  cpus: 1,
  engine: "jit",
  append: "",
  kernel: kernelPath,
  initrd: null,
  firmware: null,
  disks: [],
  net: { kind: "none" },
  mac: "52:54:00:00:00:02",
  cpuCap: null,
});

/** Boots `text`'s kernel; `echo` collects what a piped `yun run` would print. */
async function boot(kernelPath: string, typeAhead: TypeAheadRule, echoIsTerminal = false) {
  let echoed = "";
  const opts: MonitorOptions = {
    netDir: join(dir, "net"),
    runDir: join(dir, "run"),
    ownedDir: null,
    log: () => {},
    echo: (b) => (echoed += new TextDecoder().decode(b)),
    echoIsTerminal,
    typeAhead,
  };
  const { monitor } = await VmMonitor.boot(spec(kernelPath), opts);
  return { monitor, echoed: () => echoed };
}

async function powerOff(run: Promise<unknown>, what: () => string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the guest did not power off: ${what()}`)), 20_000);
  });
  try {
    await Promise.race([run, late]);
  } finally {
    clearTimeout(timer);
  }
}

const prompt = kernel("prompt", "~ # \x1b[6n");

test("input typed ahead waits for the prompt; the cursor report reaches the guest before it", async () => {
  const { monitor, echoed } = await boot(prompt, "prompt");
  monitor.typeIn(enc("nproc\n"));
  await powerOff(monitor.run(), echoed);
  // The guest echoes what it read: the terminal's answer (row 1, column 5), then the input.
  assert.equal(echoed(), "~ # \x1b[1;5Rnproc\n", "the query itself is not shown");
  assert.equal(new TextDecoder().decode(monitor.history.contents()), echoed(), "nor kept for a later replay");
});

test("the answer goes ahead of input already handed over and not yet read", async () => {
  const { monitor, echoed } = await boot(prompt, "immediate");
  monitor.typeIn(enc("abc\n")); // queued in the machine at once: the guest has not read it yet
  await powerOff(monitor.run(), echoed);
  assert.equal(echoed(), "~ # \x1b[1;5Rabc\n");
});

test("with a real terminal on the console, the terminal answers and sees the query", async () => {
  const { monitor, echoed } = await boot(prompt, "prompt", true);
  monitor.input(enc("x\n")); // typed by a person: not held
  await powerOff(monitor.run(), echoed);
  assert.equal(echoed(), "~ # \x1b[6nx\n", "Yun did not answer; the raw output reached the terminal");
});

test("a piped console client gets the answer's effect and no query; a terminal client sees it raw", async () => {
  const { monitor } = await boot(prompt, "prompt");
  let piped = "";
  monitor.attachConsole((b) => (piped += new TextDecoder().decode(b)), { piped: true });
  monitor.typeIn(enc("ok\n"));
  await powerOff(monitor.run(), () => piped);
  assert.equal(piped, "~ # \x1b[1;5Rok\n");
});

test("no prompt: held under prompt; let go after a silence under prompt-or-silence", async () => {
  const silent = kernel("silent", "waiting for a line\r\n");
  const held = await boot(silent, "prompt");
  held.monitor.typeIn(enc("go\n"));
  const running = held.monitor.run();
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(held.echoed(), "waiting for a line\r\n", "nothing reached the guest");
  held.monitor.stop();
  await running;

  const lets = await boot(silent, "prompt-or-silence");
  const t0 = Date.now();
  lets.monitor.typeIn(enc("go\n"));
  await powerOff(lets.monitor.run(), lets.echoed);
  assert.equal(lets.echoed(), "waiting for a line\r\ngo\n");
  assert.ok(Date.now() - t0 >= 1500, "after the console had been silent a while");
});

test("a query away from a prompt is answered but does not release input", async () => {
  const k = kernel("probe", "probing\x1b[6n\r\nlogin: ");
  const { monitor, echoed } = await boot(k, "prompt");
  monitor.typeIn(enc("root\n"));
  const running = monitor.run();
  await new Promise((r) => setTimeout(r, 1000));
  // The guest read the answer (row 1, column 8) and waits for more; the input is still held.
  assert.equal(echoed(), "probing\r\nlogin: \x1b[1;8R");
  monitor.stop();
  await running;
});

// A console client that does not read cannot make the monitor buffer the guest's output without
// bound: past CONSOLE_HISTORY_BYTES behind, output is dropped for it (the history keeps the newest).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlServer } from "../../src/vmm/control.js";
import { ConsoleHistory, CONSOLE_HISTORY_BYTES, type VmMonitor } from "../../src/vmm/monitor.js";
import { openStream } from "../../src/vmm/client.js";

test("a console client that stops reading gets at most about the history's size of backlog, not all output", async () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-console-"));
  const sinks: ((bytes: Uint8Array) => void)[] = [];
  // The part of a monitor the console needs: its history, its output subscribers, its input.
  const monitor = {
    state: "running",
    history: new ConsoleHistory(),
    attachConsole(sink: (bytes: Uint8Array) => void) {
      sinks.push(sink);
      return () => sinks.splice(sinks.indexOf(sink), 1);
    },
    input() {},
  } as unknown as VmMonitor;
  const control = new ControlServer(monitor);
  try {
    const path = join(dir, "api.sock");
    await control.listenSocket(path);
    const { socket } = await openStream(path, "console", { replay: false });
    socket.pause();
    // The guest writes 64 MiB while the client reads nothing.
    const chunk = new Uint8Array(64 * 1024).fill(0x2e);
    const total = 64 * 1024 * 1024;
    for (let sent = 0; sent < total; sent += chunk.length) {
      for (const s of sinks) s(chunk);
      if (sent % (1024 * 1024) === 0) await new Promise((r) => setImmediate(r));
    }
    let received = 0;
    socket.on("data", (d: Buffer) => (received += d.length));
    socket.resume();
    // Read until nothing more comes for a while.
    for (let last = -1; last !== received;) {
      last = received;
      await new Promise((r) => setTimeout(r, 300));
    }
    socket.destroy();
    // The monitor's queue (≤ CONSOLE_HISTORY_BYTES) plus what the kernel's socket buffers held.
    assert.ok(received > 0);
    assert.ok(
      received < CONSOLE_HISTORY_BYTES + 8 * 1024 * 1024,
      `the client received ${(received / 1048576).toFixed(1)} MiB of 64`,
    );
  } finally {
    await control.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

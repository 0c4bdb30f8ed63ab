// A graphical debian-tiny VM (`yun run --vnc`, issue 20): one boot, several checks. A VNC client
// nobody here wrote (gtk-vnc's gvnccapture, Debian package gvncviewer) captures the framebuffer
// console; keys typed through VNC reach the shell on tty1; a wrong password and garbage are
// refused while the VM runs on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Yun, TEST_TIMEOUT, sleep } from "./harness.js";
import { findImage } from "../../src/images/store.js";
import { RfbTestClient } from "../support/rfb.js";
import { decodePng } from "../support/png.js";

const PASSWORD = "yun-vnc1";
const children: Yun[] = [];
const dir = mkdtempSync(join(tmpdir(), "yun-display-"));

test.after(() => {
  for (const c of children) c.kill();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * gvnccapture HOST:DISPLAY FILE. It reads the password from its terminal (with the input flushed
 * first), so it runs on a pseudo-terminal (util-linux's script) and the password is typed once it
 * asks.
 */
async function gvnccapture(
  display: number,
  password: string,
  file: string,
): Promise<{ code: number | null; out: string }> {
  const child = spawn("script", ["-qec", `gvnccapture 127.0.0.1:${display} ${file}`, "/dev/null"], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let typing: NodeJS.Timeout | undefined;
  const onData = (b: Buffer): void => {
    out += b.toString("utf8");
    // It prints its prompt before it turns echo off and flushes the terminal's input, so a password
    // typed at once may be thrown away: type it again every second until it is taken.
    if (typing === undefined && out.includes("Password:")) {
      typing = setInterval(() => child.stdin.write(password + "\n"), 1000);
    }
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  child.stdin.on("error", () => {});
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  clearTimeout(timer);
  clearInterval(typing);
  return { code, out };
}

function hasGvnccapture(): boolean {
  return spawnSync("gvnccapture", ["--help"], { encoding: "utf8" }).status === 0;
}

test("a VNC client sees the framebuffer console and types into tty1", { timeout: TEST_TIMEOUT }, async (t) => {
  if (findImage("debian-tiny") === undefined) return t.skip("no debian-tiny image (yun image pull debian-tiny)");
  if (!hasGvnccapture()) return t.skip("gvnccapture is not installed (apt-get install gvncviewer; .ci/run does)");
  // gvnccapture names displays, port 5900 + n.
  let port = 0;
  for (let i = 0; i < 20 && port === 0; i++) {
    const p = 5900 + 100 + Math.floor(Math.random() * 3000);
    const s = createServer();
    const ok = await new Promise<boolean>((r) => {
      s.once("error", () => r(false));
      s.listen(p, "127.0.0.1", () => r(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      port = p;
    }
  }
  assert.notEqual(port, 0, "no free port for the VNC server");
  const passwordFile = join(dir, "vnc-password");
  writeFileSync(passwordFile, PASSWORD + "\n");
  chmodSync(passwordFile, 0o600);

  const yun = new Yun([
    "run",
    "--image",
    "debian-tiny",
    "--name",
    `disp${process.pid}`,
    "--vnc",
    `127.0.0.1:${port}`,
    "--vnc-password-file",
    passwordFile,
  ]);
  children.push(yun);
  await yun.waitFor(
    "the VNC server's address",
    (c) => c.includes(`VNC server on 127.0.0.1:${port} (password required)`),
    60_000,
  );
  await yun.prompt();
  // The tty1 shell starts at the end of the boot script, with the display.
  assert.match(await yun.sh("ls /dev/fb0 && cat /sys/class/graphics/fb0/virtual_size"), /\/dev\/fb0\s+1024,768/);
  await sleep(2000);

  // 1. The picture, from gtk-vnc: console text (light pixels) on a dark background.
  const shot = join(dir, "screen.png");
  const display = port - 5900;
  const r = await gvnccapture(display, PASSWORD, shot);
  assert.equal(r.code, 0, `gvnccapture failed: ${r.out}`);
  const img = decodePng(readFileSync(shot));
  assert.deepEqual([img.width, img.height], [1024, 768]);
  let light = 0;
  let dark = 0;
  for (let i = 0; i < img.rgb.length; i += 3) {
    const v = img.rgb[i] + img.rgb[i + 1] + img.rgb[i + 2];
    if (v > 3 * 128) light++;
    else if (v < 3 * 40) dark++;
  }
  const pixels = img.width * img.height;
  t.diagnostic(`screenshot: ${light} light and ${dark} dark pixels of ${pixels}`);
  assert.ok(dark > pixels * 0.6, `a dark background (${dark} dark pixels)`);
  assert.ok(light > 5000, `console text on it (${light} light pixels; a blank screen has none)`);

  // 2. A wrong password: gvnccapture fails, and the server says so.
  const wrong = await gvnccapture(display, "not-it", join(dir, "no.png"));
  assert.notEqual(wrong.code, 0, "a wrong password is refused");
  await yun.waitFor(
    `the refusal in the log (gvnccapture said: ${wrong.out})`,
    (c) => /vnc: client .* refused: wrong password/.test(c),
    10_000,
  );

  // 3. Typing through VNC into the shell on tty1 (keysyms sent by the test's RFB client).
  const client = await RfbTestClient.open(port);
  assert.equal(await client.handshake(PASSWORD), 0);
  await client.init();
  client.type("echo hello > /tmp/from-vnc\n");
  let seen = "";
  for (let i = 0; i < 30 && seen !== "hello"; i++) {
    await sleep(1000);
    seen = (await yun.sh("cat /tmp/from-vnc 2>/dev/null")).trim();
  }
  assert.equal(seen, "hello", "the typed command ran in the guest");

  // 4. What a full update costs, Raw against ZRLE (reported, not asserted beyond ZRLE being smaller).
  const sizes: Record<string, number> = {};
  for (const [name, encodings] of [
    ["raw", [0]],
    ["zrle", [16]],
  ] as const) {
    const c = await RfbTestClient.open(port);
    await c.handshake(PASSWORD);
    await c.init();
    c.setEncodings([...encodings]);
    const before = c.bytesReceived;
    c.requestUpdate(false);
    await c.readUpdate(20_000);
    sizes[name] = c.bytesReceived - before;
    c.close();
  }
  t.diagnostic(`full 1024x768 update: Raw ${sizes.raw} bytes, ZRLE ${sizes.zrle} bytes`);
  assert.ok(sizes.zrle < sizes.raw / 10);

  // 5. Garbage: the client is dropped, the VM and other clients go on.
  const junk = connect(port, "127.0.0.1");
  junk.on("error", () => {});
  junk.resume();
  junk.write(Buffer.alloc(4096, 0xab));
  await new Promise((done) => junk.on("close", done));
  client.requestUpdate(false);
  await client.readUpdate(20_000);
  assert.equal((await yun.sh("echo alive")).trim(), "alive");
  client.close();

  yun.child.stdin.write("poweroff -f\n");
  const exit = await yun.exited;
  assert.equal(exit.code, 0);
});

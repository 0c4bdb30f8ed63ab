import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, createServer, type AddressInfo } from "node:net";
import type { DisplayListener, GpuSurface } from "../../src/devices/virtio/gpu.js";
import { VncServer } from "../../src/vmm/display/vnc.js";
import { desEncryptEcb } from "../../src/vmm/display/des.js";
import { RfbTestClient } from "../support/rfb.js";

/** A display of w x h BGRX pixels the test draws into. */
class FakeDisplay {
  pixels: Uint8Array;
  private readonly listeners = new Set<DisplayListener>();
  constructor(
    public displayWidth: number,
    public displayHeight: number,
  ) {
    this.pixels = new Uint8Array(displayWidth * displayHeight * 4);
  }
  surface(): GpuSurface {
    return {
      width: this.displayWidth,
      height: this.displayHeight,
      pixels: this.pixels,
      offset: 0,
      stride: this.displayWidth * 4,
      r: 2,
      g: 1,
      b: 0,
    };
  }
  listen(l: DisplayListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  /** Fills a rectangle with one colour and flushes it. */
  fill(x: number, y: number, w: number, h: number, bgr: [number, number, number]): void {
    for (let j = y; j < y + h; j++) {
      for (let i = x; i < x + w; i++) this.pixels.set([...bgr, 0], (j * this.displayWidth + i) * 4);
    }
    for (const l of this.listeners) l.damage(x, y, w, h);
  }
  /** Reports damage without drawing (the guest flushed what it had drawn itself). */
  touch(x: number, y: number, w: number, h: number): void {
    for (const l of this.listeners) l.damage(x, y, w, h);
  }
  /** A 16x16 BGRA cursor: its left half opaque red, its right half transparent. */
  cursorShown = false;
  readonly cursorPixels = (() => {
    const p = new Uint8Array(16 * 16 * 4);
    for (let y = 0; y < 16; y++)
      for (let x = 0; x < 16; x++) p.set(x < 8 ? [0, 0, 255, 255] : [0, 255, 0, 0], (y * 16 + x) * 4);
    return p;
  })();
  cursorImage() {
    if (!this.cursorShown) return null;
    const img = { width: 16, height: 16, hotX: 2, hotY: 3, pixels: this.cursorPixels, offset: 0 as const };
    return { ...img, stride: 64, r: 2, g: 1, b: 0, a: 3 };
  }
  setCursor(shown: boolean): void {
    this.cursorShown = shown;
    for (const l of this.listeners) l.cursor?.();
  }
  resize(w: number, h: number): void {
    this.displayWidth = w;
    this.displayHeight = h;
    this.pixels = new Uint8Array(w * h * 4);
    for (const l of this.listeners) l.resize(w, h);
  }
}

async function setup(password?: string) {
  const display = new FakeDisplay(200, 100);
  const keys: { code: number; down: boolean }[] = [];
  const pointer: number[][] = [];
  const logs: string[] = [];
  const server = await VncServer.listen(
    {
      display,
      keyboard: { keys: (changes) => keys.push(...changes) },
      tablet: { pointer: (x, y, b, w = 0) => pointer.push([x, y, b, w]) },
      name: "test-vm",
      password,
      log: (l) => logs.push(l),
    },
    "127.0.0.1",
    0,
  );
  const clients: RfbTestClient[] = [];
  const open = async () => {
    const c = await RfbTestClient.open(server.address!.port);
    clients.push(c);
    return c;
  };
  const close = async () => {
    for (const c of clients) c.close();
    await server.close();
  };
  return { display, keys, pointer, logs, server, open, close };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("DES matches the FIPS 81 example", () => {
  const out = desEncryptEcb(Buffer.from("133457799BBCDFF1", "hex"), Buffer.from("0123456789ABCDEF", "hex"));
  assert.equal(Buffer.from(out).toString("hex"), "85e813540f0ab405");
});

test("a client sees the desktop, then only the damaged tiles, and nothing while idle", async () => {
  const t = await setup();
  try {
    t.display.fill(10, 10, 30, 20, [0, 0, 255]);
    const c = await t.open();
    assert.equal(await c.handshake(), 0);
    await c.init();
    assert.deepEqual([c.width, c.height, c.name], [200, 100, "test-vm"]);
    c.setEncodings([0]);
    c.requestUpdate(false);
    const first = await c.readUpdate();
    assert.equal(
      first.reduce((a, r) => a + r.w * r.h, 0),
      200 * 100,
      "the whole screen first",
    );
    assert.deepEqual([...c.picture.subarray((15 * 200 + 15) * 4, (15 * 200 + 15) * 4 + 3)], [0, 0, 255]);
    // Idle: an incremental request gets no answer.
    c.requestUpdate(true);
    await sleep(300);
    assert.equal(c.unread, 0, "an idle desktop sends nothing");
    // A small change: only its tile comes.
    t.display.fill(150, 70, 4, 4, [0, 255, 0]);
    const second = await c.readUpdate();
    assert.deepEqual(second, [{ x: 128, y: 64, w: 64, h: 36, encoding: 0 }]);
    assert.deepEqual([...c.picture.subarray((71 * 200 + 151) * 4, (71 * 200 + 151) * 4 + 3)], [0, 255, 0]);
  } finally {
    await t.close();
  }
});

test("ZRLE decodes to the same picture as Raw, in fewer bytes; 16-bit clients get converted pixels", async () => {
  const t = await setup();
  try {
    // Text-like content: two colours in stripes, one multicolour block.
    for (let y = 0; y < 100; y += 4) t.display.fill(0, y, 200, 2, [200, 200, 200]);
    for (let i = 0; i < 40; i++) t.display.fill(100 + i, 50, 1, 20, [i * 6, 255 - i * 6, i]);
    const raw = await t.open();
    await raw.handshake();
    await raw.init();
    raw.setEncodings([0]);
    const zrle = await t.open();
    await zrle.handshake();
    await zrle.init();
    zrle.setEncodings([16, 0, -223]);
    const before = [raw.bytesReceived, zrle.bytesReceived];
    raw.requestUpdate(false);
    zrle.requestUpdate(false);
    await raw.readUpdate();
    await zrle.readUpdate();
    assert.deepEqual(Buffer.from(zrle.picture), Buffer.from(raw.picture));
    const rawBytes = raw.bytesReceived - before[0];
    const zrleBytes = zrle.bytesReceived - before[1];
    assert.ok(zrleBytes * 10 < rawBytes, `ZRLE ${zrleBytes} bytes, Raw ${rawBytes}`);
    // A second ZRLE update goes through the same zlib stream.
    t.display.fill(0, 0, 70, 70, [1, 2, 3]);
    zrle.requestUpdate(true);
    await zrle.readUpdate();
    assert.deepEqual([...zrle.picture.subarray(0, 3)], [1, 2, 3]);

    const c16 = await t.open();
    await c16.handshake();
    await c16.init();
    c16.setPixelFormat16();
    c16.setEncodings([16]);
    c16.requestUpdate(false);
    await c16.readUpdate();
    const o = (60 * 200 + 100) * 4; // first column of the multicolour block: B 0, G 255, R 0
    assert.deepEqual([...c16.picture.subarray(o, o + 3)], [0, 255, 0]);
  } finally {
    await t.close();
  }
});

test("a resize reaches DesktopSize clients", async () => {
  const t = await setup();
  try {
    const c = await t.open();
    await c.handshake();
    await c.init();
    c.setEncodings([0, -223]);
    c.requestUpdate(false);
    await c.readUpdate();
    t.display.resize(320, 240);
    c.requestUpdate(true);
    const rects = await c.readUpdate();
    assert.deepEqual(rects[0], { x: 0, y: 0, w: 320, h: 240, encoding: -223 });
    assert.equal(
      rects.slice(1).reduce((a, r) => a + r.w * r.h, 0),
      320 * 240,
    );
  } finally {
    await t.close();
  }
});

test("keys go to the keyboard (Shift added for capitals) and the pointer to the tablet", async () => {
  const t = await setup();
  try {
    const c = await t.open();
    await c.handshake();
    await c.init();
    c.type("aA\n");
    c.pointer(1, 199, 99);
    c.pointer(1 | 8, 0, 0);
    await sleep(200);
    assert.deepEqual(t.keys, [
      { code: 30, down: true },
      { code: 30, down: false },
      { code: 42, down: true },
      { code: 30, down: true },
      { code: 30, down: false },
      { code: 42, down: false },
      { code: 28, down: true },
      { code: 28, down: false },
    ]);
    assert.deepEqual(t.pointer, [
      [0x7fff, 0x7fff, 1, 0],
      [0, 0, 1, 1],
    ]);
    // A client that goes away with a key held releases it.
    c.key(0xffe3, true);
    await sleep(100);
    c.close();
    await sleep(200);
    assert.deepEqual(t.keys.at(-1), { code: 29, down: false });
  } finally {
    await t.close();
  }
});

test("VNC authentication: the right password logs in, a wrong one is refused", async () => {
  const t = await setup("s3cret");
  try {
    const good = await t.open();
    assert.equal(await good.handshake("s3cret"), 0);
    await good.init();
    const bad = await t.open();
    assert.equal(await bad.handshake("guess"), 1, "SecurityResult failed");
    assert.equal(await bad.waitClosed(), true);
    const none = await t.open();
    await none.read(12);
    none.socket.write("RFB 003.008\n");
    await none.read(2);
    none.socket.write(Buffer.from([1])); // asks for None, which is not offered
    assert.equal((await none.read(4)).readUInt32BE(0), 1);
    assert.equal(await none.waitClosed(), true);
    assert.ok(t.logs.some((l) => /wrong password/.test(l)));
    // The logged-in client still works.
    good.requestUpdate(false);
    await good.readUpdate();
  } finally {
    await t.close();
  }
});

test("a stream handed over by an authenticated channel gets security None, the TCP listener still asks", async () => {
  const t = await setup("s3cret");
  // Stands for the VM's control socket: whoever reaches it has already proven who they are.
  const handover = createServer((socket) => t.server.serve(socket));
  await new Promise<void>((resolve) => handover.listen(0, "127.0.0.1", resolve));
  try {
    const trusted = await RfbTestClient.open((handover.address() as AddressInfo).port);
    assert.equal(await trusted.handshake(), 0, "no password asked on the handed-over stream");
    await trusted.init();
    t.display.fill(0, 0, 10, 10, [0, 0, 255]);
    trusted.requestUpdate(false);
    assert.ok((await trusted.readUpdate()).length > 0);
    trusted.close();
    const tcp = await t.open();
    assert.equal(await tcp.handshake("guess"), 1, "the TCP listener still wants the password");
  } finally {
    handover.close();
    await t.close();
  }
});

test("a scrolled screen goes as a CopyRect plus the new rows; damage that changed nothing sends nothing", async () => {
  const t = await setup();
  const d = t.display;
  // A terminal's screen: every row different (text), 200x100 BGRX.
  const line = (n: number, row: Uint8Array) => {
    for (let x = 0; x < 200; x++) row.set([(n * 7 + x) & 0xff, (n * 13) & 0xff, (x * n) & 0xff, 0], x * 4);
  };
  for (let y = 0; y < 100; y++) line(y, d.pixels.subarray(y * 800, (y + 1) * 800));
  try {
    const c = await t.open();
    assert.equal(await c.handshake(), 0);
    await c.init();
    c.setEncodings([1, 0]);
    c.requestUpdate(false);
    await c.readUpdate();
    assert.deepEqual(Buffer.from(c.picture).equals(Buffer.from(d.pixels)), true, "the first picture");

    // Damage over unchanged pixels: nothing to send.
    d.touch(0, 0, 200, 100);
    c.requestUpdate(true);
    await assert.rejects(c.readUpdate(400), "no update for pixels the client has");

    // Scroll up by 10 rows; 10 new lines at the bottom.
    d.pixels.copyWithin(0, 10 * 800);
    for (let y = 90; y < 100; y++) line(1000 + y, d.pixels.subarray(y * 800, (y + 1) * 800));
    d.touch(0, 0, 200, 100);
    const rects = await c.readUpdate();
    const copy = rects.find((r) => r.encoding === 1);
    assert.ok(copy, `a CopyRect among ${JSON.stringify(rects)}`);
    const rawArea = rects.filter((r) => r.encoding === 0).reduce((a, r) => a + r.w * r.h, 0);
    assert.ok(rawArea <= 200 * 36, `only the tile row with the new lines is sent raw (${rawArea} pixels)`);
    assert.equal(Buffer.from(c.picture).equals(Buffer.from(d.pixels)), true, "the client's picture is the screen");
  } finally {
    await t.close();
  }
});

test("clients that draw the cursor get the guest's cursor picture, its mask, and an empty one when hidden", async () => {
  const t = await setup();
  try {
    const c = await t.open();
    assert.equal(await c.handshake(), 0);
    await c.init();
    c.setEncodings([0, -239]);
    t.display.setCursor(true);
    c.requestUpdate(true);
    await c.readUpdate();
    assert.ok(c.cursor, "a cursor was sent");
    assert.deepEqual([c.cursor.hotX, c.cursor.hotY, c.cursor.w, c.cursor.h], [2, 3, 16, 16]);
    // Row 0: the opaque left half in the mask, the transparent right half not; the pixel is red.
    assert.deepEqual([...c.cursor.mask.subarray(0, 2)], [0xff, 0x00]);
    assert.deepEqual([...c.cursor.pixels.subarray(0, 3)], [0, 0, 255]);
    t.display.setCursor(false);
    c.requestUpdate(true);
    await c.readUpdate();
    assert.deepEqual([c.cursor.w, c.cursor.h], [0, 0], "hidden: an empty cursor");
    // A client that does not ask for the cursor never gets one.
    const plain = await t.open();
    assert.equal(await plain.handshake(), 0);
    await plain.init();
    plain.setEncodings([0]);
    t.display.setCursor(true);
    plain.requestUpdate(false);
    const rects = await plain.readUpdate();
    assert.ok(rects.every((r) => r.encoding !== -239));
  } finally {
    await t.close();
  }
});

test("garbage, huge rectangles, long cut text and colour maps drop the client; others go on", async () => {
  const t = await setup();
  try {
    const ok = await t.open();
    await ok.handshake();
    await ok.init();
    const attempts: ((c: RfbTestClient) => void)[] = [
      (c) => c.socket.write(Buffer.from([99, 1, 2, 3])),
      (c) => c.requestUpdate(false, 0, 0, 65535, 65535),
      (c) => c.socket.write(Buffer.from([6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff])),
      (c) => c.socket.write(Buffer.from([2, 0, 0xff, 0xff])),
      (c) => {
        const pf = Buffer.alloc(20);
        pf[4] = 8;
        pf[5] = 8; // true colour flag 0: a colour map
        c.socket.write(pf);
      },
    ];
    for (const attempt of attempts) {
      const c = await t.open();
      await c.handshake();
      await c.init();
      attempt(c);
      assert.equal(await c.waitClosed(), true);
    }
    // Garbage before the handshake is done.
    const raw = connect(t.server.address!.port, "127.0.0.1");
    raw.on("error", () => {});
    raw.resume(); // reads (and ignores) the greeting, so the close is seen
    raw.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise((r) => raw.on("close", r));
    assert.ok(t.server.stats.dropped >= attempts.length + 1);
    ok.requestUpdate(false);
    const rects = await ok.readUpdate();
    assert.ok(rects.length > 0, "the well-behaved client is served");
  } finally {
    await t.close();
  }
});

test("cut text within the limit is skipped, even split across packets", async () => {
  const t = await setup();
  try {
    const c = await t.open();
    await c.handshake();
    await c.init();
    const text = Buffer.alloc(100_000, 0x41);
    const head = Buffer.from([6, 0, 0, 0, 0, 0, 0, 0]);
    head.writeUInt32BE(text.length, 4);
    c.socket.write(head);
    c.socket.write(text.subarray(0, 50_000));
    await sleep(50);
    c.socket.write(text.subarray(50_000));
    c.requestUpdate(false);
    await c.readUpdate();
    assert.equal(c.closed, false);
  } finally {
    await t.close();
  }
});

/**
 * A minimal RFB client for tests: handshake (None or VNC authentication), SetPixelFormat,
 * SetEncodings, update requests, key and pointer events, and decoding of Raw and ZRLE updates into
 * a 32-bit BGRX picture. Not a product: just enough to check what the server sends.
 */
import { connect, type Socket } from "node:net";
import { constants as zc, createInflate, type Inflate } from "node:zlib";
import { vncAuthResponse } from "../../src/vmm/display/des.js";

export class RfbTestClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private closedFlag = false;
  width = 0;
  height = 0;
  name = "";
  /** BGRX, width x height. */
  picture = new Uint8Array(0);
  bytesReceived = 0;
  private inflater: Inflate | null = null;
  private bpp = 4;
  /** The last cursor the server sent (Cursor pseudo-encoding): its pixels and bitmask as sent. */
  cursor: { hotX: number; hotY: number; w: number; h: number; pixels: Buffer; mask: Buffer } | null = null;

  private constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => {
      this.bytesReceived += c.length;
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    socket.on("close", () => {
      this.closedFlag = true;
      this.wake();
    });
    socket.on("error", () => {});
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  static async open(port: number): Promise<RfbTestClient> {
    const socket = connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new RfbTestClient(socket);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits for n bytes (rejects on close or after timeoutMs). */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closedFlag) throw new Error("connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  /** Resolves true when the server closes the connection within timeoutMs. */
  async waitClosed(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closedFlag && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.closedFlag;
  }

  /** Bytes that arrived and were not read. */
  get unread(): number {
    return this.buf.length;
  }

  /** Version and security; returns the SecurityResult (0 ok). */
  async handshake(password?: string): Promise<number> {
    const version = (await this.read(12)).toString("latin1");
    if (version !== "RFB 003.008\n") throw new Error(`server version ${JSON.stringify(version)}`);
    this.socket.write("RFB 003.008\n");
    const n = (await this.read(1))[0];
    const types = [...(await this.read(n))];
    const type = password !== undefined ? 2 : 1;
    if (!types.includes(type)) throw new Error(`security types ${types}`);
    this.socket.write(Buffer.from([type]));
    if (type === 2) {
      const challenge = await this.read(16);
      this.socket.write(vncAuthResponse(password!, challenge));
    }
    return (await this.read(4)).readUInt32BE(0);
  }

  /** ClientInit and ServerInit. */
  async init(): Promise<void> {
    this.socket.write(Buffer.from([1]));
    const head = await this.read(24);
    this.width = head.readUInt16BE(0);
    this.height = head.readUInt16BE(2);
    this.name = (await this.read(head.readUInt32BE(20))).toString();
    this.picture = new Uint8Array(this.width * this.height * 4);
  }

  setEncodings(encodings: number[]): void {
    const b = Buffer.alloc(4 + 4 * encodings.length);
    b[0] = 2;
    b.writeUInt16BE(encodings.length, 2);
    encodings.forEach((e, i) => b.writeInt32BE(e, 4 + 4 * i));
    this.socket.write(b);
  }

  /** SetPixelFormat: 32-bit BGRX (the default) or 16-bit RGB565. */
  setPixelFormat16(): void {
    const b = Buffer.alloc(20);
    b[0] = 0;
    b[4] = 16;
    b[5] = 16;
    b[6] = 0;
    b[7] = 1;
    b.writeUInt16BE(31, 8);
    b.writeUInt16BE(63, 10);
    b.writeUInt16BE(31, 12);
    b[14] = 11;
    b[15] = 5;
    b[16] = 0;
    this.socket.write(b);
    this.bpp = 2;
  }

  requestUpdate(incremental: boolean, x = 0, y = 0, w = this.width, h = this.height): void {
    const b = Buffer.alloc(10);
    b[0] = 3;
    b[1] = incremental ? 1 : 0;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    b.writeUInt16BE(w, 6);
    b.writeUInt16BE(h, 8);
    this.socket.write(b);
  }

  key(keysym: number, down: boolean): void {
    const b = Buffer.alloc(8);
    b[0] = 4;
    b[1] = down ? 1 : 0;
    b.writeUInt32BE(keysym, 4);
    this.socket.write(b);
  }

  /** Types text (keysyms of its characters, Return for "\n"), each key down then up. */
  type(text: string): void {
    for (const ch of text) {
      const sym = ch === "\n" ? 0xff0d : ch.charCodeAt(0);
      this.key(sym, true);
      this.key(sym, false);
    }
  }

  pointer(mask: number, x: number, y: number): void {
    const b = Buffer.alloc(6);
    b[0] = 5;
    b[1] = mask;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    this.socket.write(b);
  }

  /** Reads one FramebufferUpdate and paints it; returns its rectangles. */
  async readUpdate(timeoutMs = 5000): Promise<{ x: number; y: number; w: number; h: number; encoding: number }[]> {
    const head = await this.read(4, timeoutMs);
    if (head[0] !== 0) throw new Error(`message type ${head[0]}, not an update`);
    const n = head.readUInt16BE(2);
    const rects = [];
    for (let i = 0; i < n; i++) {
      const r = await this.read(12, timeoutMs);
      const rect = {
        x: r.readUInt16BE(0),
        y: r.readUInt16BE(2),
        w: r.readUInt16BE(4),
        h: r.readUInt16BE(6),
        encoding: r.readInt32BE(8),
      };
      rects.push(rect);
      if (rect.encoding === -223) {
        this.width = rect.w;
        this.height = rect.h;
        this.picture = new Uint8Array(rect.w * rect.h * 4);
      } else if (rect.encoding === 0) {
        this.paint(rect, await this.read(rect.w * rect.h * this.bpp, timeoutMs), false);
      } else if (rect.encoding === 16) {
        const len = (await this.read(4, timeoutMs)).readUInt32BE(0);
        const data = await this.inflate(await this.read(len, timeoutMs));
        this.paintZrle(rect, data);
      } else if (rect.encoding === 1) {
        const from = await this.read(4, timeoutMs);
        this.copyRect(rect, from.readUInt16BE(0), from.readUInt16BE(2));
      } else if (rect.encoding === -239) {
        const pixels = await this.read(rect.w * rect.h * this.bpp, timeoutMs);
        const mask = await this.read(((rect.w + 7) >> 3) * rect.h, timeoutMs);
        this.cursor = { hotX: rect.x, hotY: rect.y, w: rect.w, h: rect.h, pixels, mask };
      } else throw new Error(`encoding ${rect.encoding}`);
    }
    return rects;
  }

  /** CopyRect: the rectangle's pixels come from (sx, sy) of the picture as it is. */
  private copyRect(r: { x: number; y: number; w: number; h: number }, sx: number, sy: number): void {
    const rows: Uint8Array[] = [];
    for (let j = 0; j < r.h; j++) {
      const o = ((sy + j) * this.width + sx) * 4;
      rows.push(this.picture.slice(o, o + r.w * 4));
    }
    rows.forEach((row, j) => this.picture.set(row, ((r.y + j) * this.width + r.x) * 4));
  }

  private inflate(data: Buffer): Promise<Buffer> {
    if (!this.inflater) this.inflater = createInflate();
    const z = this.inflater;
    const out: Buffer[] = [];
    const onData = (c: Buffer) => out.push(c);
    z.on("data", onData);
    return new Promise((resolve) => {
      z.write(data);
      z.flush(zc.Z_SYNC_FLUSH, () => {
        z.off("data", onData);
        resolve(Buffer.concat(out));
      });
    });
  }

  /** A pixel of the client's format to BGRX. */
  private toBgrx(v: number): [number, number, number] {
    if (this.bpp === 2) {
      return [(((v & 31) * 255) / 31) | 0, ((((v >> 5) & 63) * 255) / 63) | 0, ((((v >> 11) & 31) * 255) / 31) | 0];
    }
    return [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff];
  }

  private setPixel(x: number, y: number, v: number): void {
    const [b, g, r] = this.toBgrx(v);
    const o = (y * this.width + x) * 4;
    this.picture[o] = b;
    this.picture[o + 1] = g;
    this.picture[o + 2] = r;
  }

  private paint(r: { x: number; y: number; w: number; h: number }, data: Buffer, cpixel: boolean): void {
    const size = cpixel ? 3 : this.bpp;
    let at = 0;
    for (let y = 0; y < r.h; y++) {
      for (let x = 0; x < r.w; x++, at += size) this.setPixel(r.x + x, r.y + y, this.readPixel(data, at, size));
    }
  }

  private readPixel(data: Buffer, at: number, size: number): number {
    if (size === 2) return data.readUInt16LE(at);
    if (size === 3) return data[at] | (data[at + 1] << 8) | (data[at + 2] << 16);
    return data.readUInt32LE(at);
  }

  private paintZrle(r: { x: number; y: number; w: number; h: number }, d: Buffer): void {
    const size = this.bpp === 4 ? 3 : this.bpp;
    let at = 0;
    for (let ty = r.y; ty < r.y + r.h; ty += 64) {
      const th = Math.min(64, r.y + r.h - ty);
      for (let tx = r.x; tx < r.x + r.w; tx += 64) {
        const tw = Math.min(64, r.x + r.w - tx);
        const sub = d[at++];
        if (sub === 0) {
          for (let y = 0; y < th; y++)
            for (let x = 0; x < tw; x++, at += size) this.setPixel(tx + x, ty + y, this.readPixel(d, at, size));
        } else if (sub === 1) {
          const v = this.readPixel(d, at, size);
          at += size;
          for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) this.setPixel(tx + x, ty + y, v);
        } else if (sub <= 16) {
          const pal: number[] = [];
          for (let i = 0; i < sub; i++, at += size) pal.push(this.readPixel(d, at, size));
          const bits = sub === 2 ? 1 : sub <= 4 ? 2 : 4;
          for (let y = 0; y < th; y++) {
            let byte = 0;
            let left = 0;
            for (let x = 0; x < tw; x++) {
              if (left === 0) {
                byte = d[at++];
                left = 8;
              }
              left -= bits;
              this.setPixel(tx + x, ty + y, pal[(byte >> left) & ((1 << bits) - 1)]);
            }
          }
        } else throw new Error(`ZRLE subencoding ${sub} not decoded by the test client`);
      }
    }
    if (at !== d.length) throw new Error(`ZRLE data: ${d.length - at} bytes left over`);
  }

  close(): void {
    this.socket.destroy();
  }
}

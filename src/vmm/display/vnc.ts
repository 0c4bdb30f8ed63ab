/**
 * A VNC server for one VM (RFB 3.8, RFC 6143; 3.7 and 3.3 clients too): shows the virtio-gpu
 * scanout and types into the virtio keyboard and tablet.
 *
 * - Security: None, or VNC Authentication (DES challenge) when a password is set; a wrong answer
 *   gets SecurityResult "failed" and the connection is closed.
 * - Encodings: Raw and ZRLE (one zlib stream per client, RFC 6143 §7.7.6), DesktopSize when the
 *   guest changes mode. Pixels are converted to the pixel format the client asked for (8, 16 or
 *   32 bits a pixel, true colour, either byte order).
 * - Only damaged regions are sent: the GPU's flushes mark 64x64 tiles dirty per client, and an
 *   incremental FramebufferUpdateRequest is answered once a tile it covers is dirty, so an idle
 *   desktop sends nothing and costs no timers.
 * - Every client input is bounded: messages are parsed from a buffer of at most 64 KiB, cut text
 *   longer than 1 MiB, more than 1024 encodings, an unknown message type, a colour-map pixel format
 *   or a rectangle beyond any framebuffer drops the client with one log line; the VM runs on. Output
 *   stops while more than 8 MiB wait in a client's socket (dirty tiles keep accumulating instead).
 */
import { createServer, type AddressInfo, type Server } from "node:net";
import type { Duplex } from "node:stream";
import { randomBytes, timingSafeEqual } from "node:crypto";
import { constants as zlibConstants, createDeflate, type Deflate } from "node:zlib";
import type { DisplayListener, GpuCursorImage, GpuSurface } from "../../devices/virtio/gpu.js";
import { GPU_MAX_DIMENSION } from "../../devices/virtio/gpu.js";
import { TABLET_ABS_MAX } from "../../devices/virtio/input.js";
import { vncAuthResponse } from "./des.js";
import { KEY_LEFTSHIFT, KEY_RIGHTSHIFT, keysymToKey } from "./keymap.js";

/** A client's connection: a TCP socket, or the VM's control socket handed over to the display. */
export type VncStream = Duplex & { setNoDelay?(noDelay?: boolean): unknown; remoteAddress?: string };

/** What the server shows: the GPU (VirtioGpu fits). */
export interface VncDisplay {
  readonly displayWidth: number;
  readonly displayHeight: number;
  surface(): GpuSurface | null;
  listen(listener: DisplayListener): () => void;
  /** The guest's hardware cursor, for clients that draw it themselves (Cursor pseudo-encoding). */
  cursorImage?(): GpuCursorImage | null;
}

/** Where keys go (a virtio keyboard fits). */
export interface VncKeyboard {
  keys(changes: readonly { code: number; down: boolean }[]): void;
}

/** Where the pointer goes (a virtio tablet fits): 0..TABLET_ABS_MAX each way, buttons bit 0 left, 1 middle, 2 right. */
export interface VncPointer {
  pointer(x: number, y: number, buttons: number, wheel?: number): void;
}

/** The devices a VNC server shows and types into. */
export interface VncDevices {
  display: VncDisplay;
  keyboard: VncKeyboard;
  tablet: VncPointer;
}

export interface VncOptions extends VncDevices {
  /** The desktop name clients show. */
  name: string;
  /** VNC Authentication with this password (RFB uses its first 8 bytes); none: security None. */
  password?: string;
  /** Receives one line per dropped client or failed login (default: none). */
  log?: (line: string) => void;
  /** Most clients at once (default 8). */
  maxClients?: number;
}

export const ENCODING_RAW = 0;
export const ENCODING_COPYRECT = 1;
export const ENCODING_ZRLE = 16;
export const ENCODING_DESKTOP_SIZE = -223;
export const ENCODING_CURSOR = -239;

const SECURITY_NONE = 1;
const SECURITY_VNC = 2;
const TILE = 64;
const MAX_INPUT_BUFFER = 64 * 1024;
const MAX_CUT_TEXT = 1024 * 1024;
const MAX_ENCODINGS = 1024;
const OUTPUT_HIGH_WATER = 8 * 1024 * 1024;
/** A client must have logged in within this many ms. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/** A client's pixel format (RFC 6143 §7.4). */
export interface PixelFormat {
  bitsPerPixel: number;
  depth: number;
  bigEndian: boolean;
  trueColour: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

/** What the server offers first: 32-bit little-endian xRGB, the same bytes as Linux's XRGB8888. */
export const DEFAULT_PIXEL_FORMAT: PixelFormat = {
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

export interface VncStats {
  clients: number;
  /** Bytes of FramebufferUpdate messages sent, and how many. */
  updateBytes: number;
  updates: number;
  /** Clients dropped for breaking the protocol or failing to log in. */
  dropped: number;
}

/** Thrown inside a client's parser: the client broke the protocol and is dropped. */
class ProtocolError extends Error {}

/** Converts surface pixels to a client's format, bytes in the client's order. */
class PixelConverter {
  readonly bytes: number;
  /** Bytes of a ZRLE CPIXEL, and which bytes of the full pixel it keeps. */
  readonly cpixelBytes: number;
  readonly cpixelSkip: number;
  private readonly rTab = new Uint32Array(256);
  private readonly gTab = new Uint32Array(256);
  private readonly bTab = new Uint32Array(256);
  private readonly bigEndian: boolean;
  /** The client wants exactly the bytes B, G, R, x: copy them. */
  readonly identityBgrx: boolean;

  constructor(pf: PixelFormat) {
    this.bytes = pf.bitsPerPixel / 8;
    this.bigEndian = pf.bigEndian && this.bytes > 1;
    for (let v = 0; v < 256; v++) {
      this.rTab[v] = (Math.round((v * pf.redMax) / 255) << pf.redShift) >>> 0;
      this.gTab[v] = (Math.round((v * pf.greenMax) / 255) << pf.greenShift) >>> 0;
      this.bTab[v] = (Math.round((v * pf.blueMax) / 255) << pf.blueShift) >>> 0;
    }
    const used = ((pf.redMax << pf.redShift) | (pf.greenMax << pf.greenShift) | (pf.blueMax << pf.blueShift)) >>> 0;
    this.cpixelBytes = this.bytes;
    this.cpixelSkip = 0;
    if (pf.bitsPerPixel === 32 && pf.depth <= 24 && pf.trueColour) {
      const fitsLow = (used & 0xff00_0000) === 0;
      const fitsHigh = (used & 0xff) === 0;
      if (fitsLow || fitsHigh) {
        this.cpixelBytes = 3;
        // The byte left out is the most (fitsLow) or least significant one, wherever it sits.
        this.cpixelSkip = fitsLow === this.bigEndian ? 1 : 0;
      }
    }
    this.identityBgrx =
      pf.bitsPerPixel === 32 &&
      !this.bigEndian &&
      pf.redMax === 255 &&
      pf.greenMax === 255 &&
      pf.blueMax === 255 &&
      pf.redShift === 16 &&
      pf.greenShift === 8 &&
      pf.blueShift === 0;
  }

  /** The pixel value for a surface pixel at byte `o`. */
  value(px: Uint8Array, o: number, s: GpuSurface): number {
    return (this.rTab[px[o + s.r]] | this.gTab[px[o + s.g]] | this.bTab[px[o + s.b]]) >>> 0;
  }

  /** Writes a pixel value in `n` bytes (the whole pixel, or its CPIXEL part). */
  put(out: Uint8Array, at: number, v: number, cpixel: boolean): number {
    const n = this.bytes;
    if (this.bigEndian) {
      for (let i = 0; i < n; i++) this.tmp[i] = (v >>> (8 * (n - 1 - i))) & 0xff;
    } else {
      for (let i = 0; i < n; i++) this.tmp[i] = (v >>> (8 * i)) & 0xff;
    }
    const skip = cpixel ? this.cpixelSkip : 0;
    const len = cpixel ? this.cpixelBytes : n;
    for (let i = 0; i < len; i++) out[at + i] = this.tmp[skip + i];
    return at + len;
  }

  private readonly tmp = new Uint8Array(4);
}

export class VncServer {
  /** The TCP listener, or null: clients come only through serve() (the control socket). */
  private readonly server: Server | null;
  private readonly clients = new Set<VncClient>();
  readonly stats: VncStats = { clients: 0, updateBytes: 0, updates: 0, dropped: 0 };
  /** The devices shown now (attach() replaces them when the VM gets a new machine). */
  devices: VncDevices;

  private constructor(
    readonly options: VncOptions,
    server: Server | null,
  ) {
    this.server = server;
    this.devices = { display: options.display, keyboard: options.keyboard, tablet: options.tablet };
  }

  /** Shows other devices from now on (a reset, restore or migration built a new machine). */
  attach(devices: VncDevices): void {
    if (devices.display === this.devices.display) return;
    this.devices = devices;
    for (const c of this.clients) c.reattach();
  }

  /** Listens on host:port (port 0: any free port). */
  static async listen(options: VncOptions, host: string, port: number): Promise<VncServer> {
    const server = createServer();
    const vnc = new VncServer(options, server);
    server.on("connection", (socket) => vnc.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (e) => options.log?.(`vnc: ${e.message}`));
    return vnc;
  }

  /** A server with no listener of its own: clients come through serve(). */
  static detached(options: VncOptions): VncServer {
    return new VncServer(options, null);
  }

  /** Where it listens, or null when it has no listener. */
  get address(): { host: string; port: number } | null {
    const a = this.server?.address() as AddressInfo | null | undefined;
    return a ? { host: a.address, port: a.port } : null;
  }

  /**
   * Serves a client on a stream the caller has already authenticated (the VM's control socket,
   * reached through the cloud's token-checked WebSocket): security type None, whatever the
   * password of the TCP listener.
   */
  serve(stream: VncStream): void {
    this.accept(stream, true);
  }

  private accept(socket: VncStream, trusted = false): void {
    if (this.clients.size >= (this.options.maxClients ?? 8)) {
      socket.destroy();
      return;
    }
    const client = new VncClient(this, socket, trusted, () => {
      this.clients.delete(client);
      this.stats.clients = this.clients.size;
    });
    this.clients.add(client);
    this.stats.clients = this.clients.size;
  }

  /** Stops listening and disconnects every client. */
  async close(): Promise<void> {
    for (const c of [...this.clients]) c.close();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

type Phase = "version" | "security" | "auth" | "init" | "normal" | "closed";

class VncClient implements DisplayListener {
  private phase: Phase = "version";
  private minor = 8;
  private input: Buffer = Buffer.alloc(0);
  /** Bytes of cut text still to be skipped. */
  private skipBytes = 0;
  private challenge: Buffer | null = null;
  private conv = new PixelConverter(DEFAULT_PIXEL_FORMAT);
  private encodings: number[] = [];
  private width: number;
  private height: number;
  private tilesX = 0;
  private tilesY = 0;
  private dirty = new Uint8Array(0);
  private dirtyCount = 0;
  /**
   * What this client's framebuffer holds, as the surface's own 4-byte pixels, and per tile whether
   * it was sent whole (known): damage that changed nothing known is not sent again, and a scroll
   * becomes a CopyRect of what the client already has.
   */
  private shadow = new Uint32Array(0);
  private known = new Uint8Array(0);
  /** Scroll detection's scratch: row hashes (current, shadow) and votes per shift. */
  private rowHash = new Uint32Array(0);
  private shadowHash = new Uint32Array(0);
  private votes = new Int32Array(0);
  private readonly rowOfHash = new Map<number, number>();
  private resized = false;
  /** The guest's cursor changed since this client was last sent it (Cursor pseudo-encoding). */
  private cursorChanged = false;
  private requested = false;
  private request = { x: 0, y: 0, w: 0, h: 0 };
  private busy = false;
  private scheduled = false;
  private zlib: Deflate | null = null;
  private zlibOut: Buffer[] = [];
  private buttons = 0;
  /** Linux key codes this client holds down, and the keys pressed with a Shift we added. */
  private readonly held = new Set<number>();
  private readonly addedShift = new Set<number>();
  private unlisten: (() => void) | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly server: VncServer,
    private readonly socket: VncStream,
    /** Already authenticated by whoever handed the stream over: no VNC password asked. */
    private readonly trusted: boolean,
    private readonly onClose: () => void,
  ) {
    const d = server.devices.display;
    this.width = d.displayWidth;
    this.height = d.displayHeight;
    socket.setNoDelay?.(true);
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", () => this.close());
    socket.on("close", () => this.close());
    socket.on("drain", () => this.schedule());
    this.timer = setTimeout(() => {
      if (this.phase !== "normal") this.drop("did not log in within 10 s");
    }, HANDSHAKE_TIMEOUT_MS);
    this.timer.unref();
    socket.write("RFB 003.008\n");
  }

  // ---- connection ----

  close(): void {
    if (this.phase === "closed") return;
    this.phase = "closed";
    clearTimeout(this.timer);
    this.unlisten?.();
    this.releaseAll();
    this.zlib?.close();
    this.socket.destroy();
    this.onClose();
  }

  private isClosed(): boolean {
    return this.phase === "closed";
  }

  private drop(why: string): void {
    if (this.phase === "closed") return;
    this.server.stats.dropped++;
    this.server.options.log?.(`vnc: client ${this.socket.remoteAddress ?? "?"} dropped: ${why}`);
    this.close();
  }

  private receive(chunk: Buffer): void {
    if (this.phase === "closed") return;
    if (this.skipBytes > 0) {
      const n = Math.min(this.skipBytes, chunk.length);
      this.skipBytes -= n;
      chunk = chunk.subarray(n);
    }
    this.input = this.input.length === 0 ? chunk : Buffer.concat([this.input, chunk]);
    try {
      let used: number;
      while (!this.isClosed() && this.skipBytes === 0 && (used = this.parse(this.input)) > 0) {
        this.input = this.input.subarray(used);
      }
      if (this.skipBytes > 0) {
        const n = Math.min(this.skipBytes, this.input.length);
        this.skipBytes -= n;
        this.input = this.input.subarray(n);
      }
      if (this.input.length > MAX_INPUT_BUFFER) throw new ProtocolError("sent an over-long message");
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      this.drop(e.message);
    }
  }

  /** Parses one message from the front of `b`; returns the bytes it took (0: incomplete). */
  private parse(b: Buffer): number {
    switch (this.phase) {
      case "version":
        return this.parseVersion(b);
      case "security":
        return this.parseSecurity(b);
      case "auth":
        return this.parseAuth(b);
      case "init":
        if (b.length < 1) return 0;
        this.serverInit();
        return 1;
      case "normal":
        return this.parseMessage(b);
      default:
        return 0;
    }
  }

  private parseVersion(b: Buffer): number {
    if (b.length < 12) return 0;
    const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(b.toString("latin1", 0, 12));
    if (!m || Number(m[1]) !== 3) throw new ProtocolError("sent no RFB 3.x version");
    const minor = Number(m[2]);
    // 3.3, 3.7 and 3.8 are the versions; others (3.5, 3.889 of Apple) are treated as 3.3 (§7.1.1).
    this.minor = minor >= 8 ? 8 : minor === 7 ? 7 : 3;
    const type = this.securityType();
    if (this.minor === 3) {
      const out = Buffer.alloc(4);
      out.writeUInt32BE(type);
      this.socket.write(out);
      this.afterSecurityChoice(type);
    } else {
      this.socket.write(Buffer.from([1, type]));
      this.phase = "security";
    }
    return 12;
  }

  private parseSecurity(b: Buffer): number {
    if (b.length < 1) return 0;
    const offered = this.securityType();
    if (b[0] !== offered) {
      this.securityFailed("security type not offered");
      return 1;
    }
    this.afterSecurityChoice(offered);
    return 1;
  }

  private securityType(): number {
    return this.server.options.password !== undefined && !this.trusted ? SECURITY_VNC : SECURITY_NONE;
  }

  private afterSecurityChoice(type: number): void {
    if (type === SECURITY_VNC) {
      this.challenge = randomBytes(16);
      this.socket.write(this.challenge);
      this.phase = "auth";
      return;
    }
    // 3.8 sends SecurityResult for None too; 3.7 and 3.3 do not.
    if (this.minor === 8) this.socket.write(Buffer.from([0, 0, 0, 0]));
    this.phase = "init";
  }

  private parseAuth(b: Buffer): number {
    if (b.length < 16) return 0;
    const expected = vncAuthResponse(this.server.options.password ?? "", this.challenge!);
    if (!timingSafeEqual(b.subarray(0, 16), expected)) {
      this.securityFailed("wrong password");
      return 16;
    }
    this.socket.write(Buffer.from([0, 0, 0, 0]));
    this.phase = "init";
    return 16;
  }

  private securityFailed(why: string): void {
    const reason = Buffer.from("Authentication failed", "latin1");
    const out = Buffer.alloc(this.minor === 8 ? 8 + reason.length : 4);
    out.writeUInt32BE(1, 0);
    if (this.minor === 8) {
      out.writeUInt32BE(reason.length, 4);
      reason.copy(out, 8);
    }
    this.server.stats.dropped++;
    this.server.options.log?.(`vnc: client ${this.socket.remoteAddress ?? "?"} refused: ${why}`);
    this.phase = "closed";
    clearTimeout(this.timer);
    this.socket.end(out);
    this.onClose();
  }

  private serverInit(): void {
    const name = Buffer.from(this.server.options.name, "utf8");
    const out = Buffer.alloc(24 + name.length);
    out.writeUInt16BE(this.width, 0);
    out.writeUInt16BE(this.height, 2);
    writePixelFormat(out, 4, DEFAULT_PIXEL_FORMAT);
    out.writeUInt32BE(name.length, 20);
    name.copy(out, 24);
    this.socket.write(out);
    this.phase = "normal";
    clearTimeout(this.timer);
    this.resetTiles();
    this.unlisten = this.server.devices.display.listen(this);
  }

  /** The server shows another machine's display: listen to it and start over at its size. */
  reattach(): void {
    if (this.phase !== "normal") return;
    this.unlisten?.();
    this.held.clear();
    this.addedShift.clear();
    this.buttons = 0;
    const d = this.server.devices.display;
    this.unlisten = d.listen(this);
    this.cursorChanged = this.wantsCursor();
    this.resize(d.displayWidth, d.displayHeight);
  }

  // ---- client messages ----

  private parseMessage(b: Buffer): number {
    if (b.length < 1) return 0;
    switch (b[0]) {
      case 0: {
        if (b.length < 20) return 0;
        this.setPixelFormat(readPixelFormat(b, 4));
        return 20;
      }
      case 2: {
        if (b.length < 4) return 0;
        const n = b.readUInt16BE(2);
        if (n > MAX_ENCODINGS) throw new ProtocolError(`asked for ${n} encodings`);
        if (b.length < 4 + 4 * n) return 0;
        this.encodings = [];
        for (let i = 0; i < n; i++) this.encodings.push(b.readInt32BE(4 + 4 * i));
        // A client that draws the cursor gets the current one with its next update.
        this.cursorChanged = this.wantsCursor();
        return 4 + 4 * n;
      }
      case 3: {
        if (b.length < 10) return 0;
        this.updateRequest(b[1] !== 0, b.readUInt16BE(2), b.readUInt16BE(4), b.readUInt16BE(6), b.readUInt16BE(8));
        return 10;
      }
      case 4: {
        if (b.length < 8) return 0;
        this.keyEvent(b[1] !== 0, b.readUInt32BE(4));
        return 8;
      }
      case 5: {
        if (b.length < 6) return 0;
        this.pointerEvent(b[1], b.readUInt16BE(2), b.readUInt16BE(4));
        return 6;
      }
      case 6: {
        if (b.length < 8) return 0;
        const len = b.readUInt32BE(4);
        if (len > MAX_CUT_TEXT) throw new ProtocolError(`sent ${len} bytes of cut text`);
        // The text is not used (the guest has no clipboard agent): skip it as it arrives.
        this.skipBytes = len;
        return 8;
      }
      default:
        throw new ProtocolError(`sent unknown message type ${b[0]}`);
    }
  }

  private setPixelFormat(pf: PixelFormat): void {
    if (![8, 16, 32].includes(pf.bitsPerPixel)) throw new ProtocolError(`asked for ${pf.bitsPerPixel} bits a pixel`);
    if (!pf.trueColour) throw new ProtocolError("asked for a colour map (only true colour is served)");
    for (const [max, shift] of [
      [pf.redMax, pf.redShift],
      [pf.greenMax, pf.greenShift],
      [pf.blueMax, pf.blueShift],
    ]) {
      if (max === 0 || shift >= pf.bitsPerPixel || max >= 2 ** (pf.bitsPerPixel - shift)) {
        throw new ProtocolError("asked for a pixel format whose colours do not fit its pixels");
      }
    }
    this.conv = new PixelConverter(pf);
  }

  private updateRequest(incremental: boolean, x: number, y: number, w: number, h: number): void {
    if (x + w > GPU_MAX_DIMENSION || y + h > GPU_MAX_DIMENSION) {
      throw new ProtocolError(`asked for a ${w}x${h}+${x}+${y} rectangle, beyond any framebuffer`);
    }
    this.request = { x, y, w, h };
    this.requested = true;
    if (!incremental) {
      this.markDirty(x, y, w, h);
      this.forget(x, y, w, h);
    }
    this.schedule();
  }

  private keyEvent(down: boolean, keysym: number): void {
    const key = keysymToKey(keysym);
    if (!key) return;
    const kb = this.server.devices.keyboard;
    const shiftHeld = this.held.has(KEY_LEFTSHIFT) || this.held.has(KEY_RIGHTSHIFT);
    if (down) {
      if (key.shift && !shiftHeld && key.code !== KEY_LEFTSHIFT) {
        // "A" typed by a client that sent no Shift (scripted clients, on-screen keyboards).
        this.addedShift.add(key.code);
        kb.keys([
          { code: KEY_LEFTSHIFT, down: true },
          { code: key.code, down: true },
        ]);
      } else kb.keys([{ code: key.code, down: true }]);
      this.held.add(key.code);
    } else {
      if (!this.held.has(key.code)) return;
      this.held.delete(key.code);
      if (this.addedShift.delete(key.code)) {
        kb.keys([
          { code: key.code, down: false },
          { code: KEY_LEFTSHIFT, down: false },
        ]);
      } else kb.keys([{ code: key.code, down: false }]);
    }
  }

  private releaseAll(): void {
    const changes = [...this.held].map((code) => ({ code, down: false }));
    if (this.addedShift.size > 0) changes.push({ code: KEY_LEFTSHIFT, down: false });
    this.held.clear();
    this.addedShift.clear();
    if (changes.length > 0) this.server.devices.keyboard.keys(changes);
    if (this.buttons !== 0) this.server.devices.tablet.pointer(0, 0, 0);
    this.buttons = 0;
  }

  private pointerEvent(mask: number, x: number, y: number): void {
    const ax = this.width > 1 ? (Math.min(x, this.width - 1) * TABLET_ABS_MAX) / (this.width - 1) : 0;
    const ay = this.height > 1 ? (Math.min(y, this.height - 1) * TABLET_ABS_MAX) / (this.height - 1) : 0;
    // Bits 3 and 4 are wheel up and down, counted when pressed.
    const pressed = mask & ~this.buttons;
    const wheel = (pressed & 8 ? 1 : 0) - (pressed & 16 ? 1 : 0);
    this.buttons = mask;
    this.server.devices.tablet.pointer(ax, ay, mask & 7, wheel);
  }

  // ---- damage ----

  damage(x: number, y: number, w: number, h: number): void {
    this.markDirty(x, y, w, h);
    this.schedule();
  }

  cursor(): void {
    if (!this.wantsCursor()) return;
    this.cursorChanged = true;
    this.schedule();
  }

  private wantsCursor(): boolean {
    return this.encodings.includes(ENCODING_CURSOR) && this.server.devices.display.cursorImage !== undefined;
  }

  resize(width: number, height: number): void {
    this.width = width;
    this.height = height;
    this.resized = true;
    this.resetTiles();
    this.schedule();
  }

  private resetTiles(): void {
    this.tilesX = Math.ceil(this.width / TILE);
    this.tilesY = Math.ceil(this.height / TILE);
    this.dirty = new Uint8Array(this.tilesX * this.tilesY).fill(1);
    this.dirtyCount = this.dirty.length;
    this.known = new Uint8Array(this.dirty.length);
    this.shadow = new Uint32Array(this.width * this.height);
    this.rowHash = new Uint32Array(this.height);
    this.shadowHash = new Uint32Array(this.height);
    this.votes = new Int32Array(2 * this.height + 1);
  }

  /** The client's picture of these tiles is not to be trusted (it asked for them whole). */
  private forget(x: number, y: number, w: number, h: number): void {
    const x1 = Math.min(x + w, this.width);
    const y1 = Math.min(y + h, this.height);
    for (let ty = Math.floor(y / TILE); ty * TILE < y1; ty++)
      for (let tx = Math.floor(x / TILE); tx * TILE < x1; tx++) this.known[ty * this.tilesX + tx] = 0;
  }

  /** The surface's pixels as 32-bit words, when they line up (they do for every GPU resource). */
  private words(s: GpuSurface | null): Uint32Array | null {
    if (!s || s.width !== this.width || s.height !== this.height) return null;
    if (s.pixels.byteOffset % 4 !== 0 || s.offset % 4 !== 0 || s.stride % 4 !== 0) return null;
    return new Uint32Array(s.pixels.buffer, s.pixels.byteOffset, s.pixels.byteLength >> 2);
  }

  /** Clears dirty tiles whose pixels equal what the client already has. */
  private dropUnchanged(s: GpuSurface, px: Uint32Array): void {
    const base = s.offset >> 2;
    const stride = s.stride >> 2;
    const w = this.width;
    for (let ty = 0; ty < this.tilesY; ty++) {
      for (let tx = 0; tx < this.tilesX; tx++) {
        const i = ty * this.tilesX + tx;
        if (this.dirty[i] === 0 || this.known[i] === 0) continue;
        const x0 = tx * TILE;
        const x1 = Math.min(x0 + TILE, w);
        const y1 = Math.min((ty + 1) * TILE, this.height);
        let same = true;
        for (let y = ty * TILE; y < y1 && same; y++) {
          const o = base + y * stride;
          const so = y * w;
          for (let x = x0; x < x1; x++) {
            if (px[o + x] !== this.shadow[so + x]) {
              same = false;
              break;
            }
          }
        }
        if (same) {
          this.dirty[i] = 0;
          this.dirtyCount--;
        }
      }
    }
  }

  /**
   * Moves the client's picture by `shift` rows (content moved up when positive) as the CopyRect
   * will, and marks the moved band dirty so that only its rows that still differ are sent.
   */
  private applyScroll(shift: number): { y: number; h: number; fromY: number } {
    const w = this.width;
    const bandH = this.height - Math.abs(shift);
    const y = shift > 0 ? 0 : -shift;
    const fromY = y + shift;
    this.shadow.copyWithin(y * w, fromY * w, (fromY + bandH) * w);
    this.markDirty(0, 0, w, this.height);
    return { y, h: bandH, fromY };
  }

  /** Copies what is being sent of the surface into the client's picture. */
  private remember(s: GpuSurface, px: Uint32Array, r: { x: number; y: number; w: number; h: number }): void {
    const base = s.offset >> 2;
    const stride = s.stride >> 2;
    const w = this.width;
    for (let y = r.y; y < r.y + r.h; y++) {
      const o = base + y * stride + r.x;
      this.shadow.set(px.subarray(o, o + r.w), y * w + r.x);
    }
    // Tiles wholly inside the rectangle are now known.
    for (let ty = Math.ceil(r.y / TILE); ty < this.tilesY; ty++) {
      if (Math.min((ty + 1) * TILE, this.height) > r.y + r.h) break;
      for (let tx = Math.ceil(r.x / TILE); tx < this.tilesX; tx++) {
        if (Math.min((tx + 1) * TILE, w) > r.x + r.w) break;
        this.known[ty * this.tilesX + tx] = 1;
      }
    }
  }

  /**
   * A vertical scroll of the whole screen (a terminal's): the shift that maps most of the
   * surface's distinct rows onto rows the client has. Returns it, or 0 for none.
   */
  private scrollShift(s: GpuSurface, px: Uint32Array): number {
    const w = this.width;
    const h = this.height;
    const base = s.offset >> 2;
    const stride = s.stride >> 2;
    const hashRow = (words: Uint32Array, at: number): number => {
      // 0 marks a row of one colour: it matches anywhere, so it has no vote.
      const first = words[at];
      let hash = 0x811c9dc5;
      let uniform = true;
      for (let x = 0; x < w; x++) {
        const v = words[at + x];
        if (v !== first) uniform = false;
        hash = Math.imul(hash ^ v, 16777619);
      }
      return uniform ? 0 : hash >>> 0 || 1;
    };
    this.rowOfHash.clear();
    for (let y = 0; y < h; y++) {
      this.rowHash[y] = hashRow(px, base + y * stride);
      const sh = (this.shadowHash[y] = hashRow(this.shadow, y * w));
      if (sh !== 0 && !this.rowOfHash.has(sh)) this.rowOfHash.set(sh, y);
    }
    this.votes.fill(0);
    let distinct = 0;
    for (let y = 0; y < h; y++) {
      const hash = this.rowHash[y];
      if (hash === 0 || hash === this.shadowHash[y]) continue; // blank, or unchanged in place
      distinct++;
      const from = this.rowOfHash.get(hash);
      if (from !== undefined) this.votes[from - y + h]++;
    }
    let best = 0;
    for (let d = 0; d < this.votes.length; d++) if (this.votes[d] > this.votes[best]) best = d;
    const shift = best - h;
    return shift !== 0 && this.votes[best] >= 8 && this.votes[best] * 2 >= distinct ? shift : 0;
  }

  private markDirty(x: number, y: number, w: number, h: number): void {
    const x1 = Math.min(x + w, this.width);
    const y1 = Math.min(y + h, this.height);
    if (x1 <= x || y1 <= y) return;
    for (let ty = Math.floor(y / TILE); ty * TILE < y1; ty++) {
      for (let tx = Math.floor(x / TILE); tx * TILE < x1; tx++) {
        const i = ty * this.tilesX + tx;
        if (!this.dirty[i]) {
          this.dirty[i] = 1;
          this.dirtyCount++;
        }
      }
    }
  }

  private schedule(): void {
    if (this.scheduled || this.phase !== "normal") return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.sendUpdate();
    });
  }

  /** Rectangles of dirty tiles inside the requested area, one per run of tiles in a tile row; clears them. */
  private takeRects(): { x: number; y: number; w: number; h: number }[] {
    const rects: { x: number; y: number; w: number; h: number }[] = [];
    const r = this.request;
    const rx1 = Math.min(r.x + r.w, this.width);
    const ry1 = Math.min(r.y + r.h, this.height);
    if (rx1 <= r.x || ry1 <= r.y || this.dirtyCount === 0) return rects;
    for (let ty = Math.floor(r.y / TILE); ty * TILE < ry1; ty++) {
      let run = -1;
      const txEnd = Math.ceil(rx1 / TILE);
      for (let tx = Math.floor(r.x / TILE); tx <= txEnd; tx++) {
        const i = ty * this.tilesX + tx;
        const d = tx < txEnd && this.dirty[i] === 1;
        if (d) {
          this.dirty[i] = 0;
          this.dirtyCount--;
          if (run < 0) run = tx;
        } else if (run >= 0) {
          const x0 = Math.max(run * TILE, r.x);
          const x1 = Math.min(tx * TILE, rx1);
          const y0 = Math.max(ty * TILE, r.y);
          const y1 = Math.min((ty + 1) * TILE, ry1);
          rects.push({ x: x0, y: y0, w: x1 - x0, h: y1 - y0 });
          run = -1;
        }
      }
    }
    return rects;
  }

  private sendUpdate(): void {
    if (this.phase !== "normal" || this.busy || !this.requested) return;
    if (this.socket.writableLength > OUTPUT_HIGH_WATER) return; // "drain" schedules again
    const resize = this.resized && this.encodings.includes(ENCODING_DESKTOP_SIZE);
    if (resize) {
      this.request = { x: 0, y: 0, w: this.width, h: this.height };
      this.resetTiles();
    }
    this.resized = false;
    const surface = this.server.devices.display.surface();
    const px = this.words(surface);
    let copy: { y: number; h: number; fromY: number } | null = null;
    if (px !== null && surface !== null) {
      const r = this.request;
      const whole = r.x === 0 && r.y === 0 && r.w >= this.width && r.h >= this.height;
      if (
        whole &&
        this.encodings.includes(ENCODING_COPYRECT) &&
        this.dirtyCount * 4 >= this.dirty.length &&
        this.known.every((k) => k === 1)
      ) {
        const shift = this.scrollShift(surface, px);
        if (shift !== 0) copy = this.applyScroll(shift);
      }
      this.dropUnchanged(surface, px);
    }
    const rects = this.takeRects();
    const cursor = this.cursorChanged;
    if (!resize && !cursor && copy === null && rects.length === 0) return;
    if (px !== null && surface !== null) for (const r of rects) this.remember(surface, px, r);
    else this.known.fill(0);
    this.cursorChanged = false;
    this.requested = false;
    this.busy = true;
    this.encodeUpdate(rects, resize, cursor, copy).then(
      (msg) => {
        this.busy = false;
        if (this.phase !== "normal") return;
        this.server.stats.updates++;
        this.server.stats.updateBytes += msg.length;
        this.socket.write(msg);
        this.schedule();
      },
      (e: Error) => this.drop(`could not encode an update (${e.message})`),
    );
  }

  private async encodeUpdate(
    rects: { x: number; y: number; w: number; h: number }[],
    resize: boolean,
    cursor: boolean,
    copy: { y: number; h: number; fromY: number } | null,
  ): Promise<Buffer> {
    const zrle = this.preferred() === ENCODING_ZRLE;
    const parts: Buffer[] = [];
    const head = Buffer.alloc(4);
    head[0] = 0;
    head.writeUInt16BE(rects.length + (resize ? 1 : 0) + (cursor ? 1 : 0) + (copy ? 1 : 0), 2);
    parts.push(head);
    if (resize) parts.push(rectHeader(0, 0, this.width, this.height, ENCODING_DESKTOP_SIZE));
    // First: the rectangles after it draw over what it moved.
    if (copy) {
      const from = Buffer.alloc(4);
      from.writeUInt16BE(0, 0);
      from.writeUInt16BE(copy.fromY, 2);
      parts.push(rectHeader(0, copy.y, this.width, copy.h, ENCODING_COPYRECT), from);
    }
    if (cursor) parts.push(...this.cursorRect());
    const surface = this.server.devices.display.surface();
    for (const r of rects) {
      if (zrle) {
        const data = await this.deflate(this.zrleTiles(surface, r.x, r.y, r.w, r.h));
        const len = Buffer.alloc(4);
        len.writeUInt32BE(data.length);
        parts.push(rectHeader(r.x, r.y, r.w, r.h, ENCODING_ZRLE), len, data);
      } else {
        parts.push(rectHeader(r.x, r.y, r.w, r.h, ENCODING_RAW), this.raw(surface, r.x, r.y, r.w, r.h));
      }
    }
    return Buffer.concat(parts);
  }

  /**
   * The Cursor pseudo-rectangle (RFB 7.8.1): hotspot as x, y; the image in the client's pixel
   * format; a bitmask of the pixels that belong to the cursor (alpha of at least half). A hidden
   * cursor is an empty one.
   */
  private cursorRect(): Buffer[] {
    const img = this.server.devices.display.cursorImage?.() ?? null;
    if (img === null) return [rectHeader(0, 0, 0, 0, ENCODING_CURSOR)];
    const { width: w, height: h } = img;
    const c = this.conv;
    const pixels = Buffer.alloc(w * h * c.bytes);
    const rowBytes = (w + 7) >> 3;
    const mask = Buffer.alloc(rowBytes * h);
    let at = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const o = (y * w + x) * 4;
        at = c.put(pixels, at, c.value(img.pixels, o, img), false);
        if (img.a === null || img.pixels[o + img.a] >= 128) mask[y * rowBytes + (x >> 3)] |= 0x80 >> (x & 7);
      }
    }
    return [rectHeader(img.hotX, img.hotY, w, h, ENCODING_CURSOR), pixels, mask];
  }

  /** The first encoding of the client's list that the server speaks (Raw when none). */
  private preferred(): number {
    for (const e of this.encodings) if (e === ENCODING_ZRLE || e === ENCODING_RAW) return e;
    return ENCODING_RAW;
  }

  private raw(s: GpuSurface | null, x: number, y: number, w: number, h: number): Buffer {
    const c = this.conv;
    const out = Buffer.alloc(w * h * c.bytes);
    if (!s || x + w > s.width || y + h > s.height) return out; // dark, or a mode change in flight
    const px = s.pixels;
    let at = 0;
    for (let row = 0; row < h; row++) {
      let o = s.offset + (y + row) * s.stride + x * 4;
      if (c.identityBgrx && s.b === 0 && s.g === 1 && s.r === 2) {
        out.set(px.subarray(o, o + w * 4), at);
        for (let i = 3; i < w * 4; i += 4) out[at + i] = 0;
        at += w * 4;
        continue;
      }
      for (let col = 0; col < w; col++, o += 4) at = c.put(out, at, c.value(px, o, s), false);
    }
    return out;
  }

  /**
   * ZRLE's uncompressed stream for a rectangle (RFC 6143 §7.7.6): 64x64 tiles, each solid (one
   * colour), packed palette (2 to 16 colours: terminal text) or raw CPIXELs.
   */
  private zrleTiles(s: GpuSurface | null, x: number, y: number, w: number, h: number): Buffer {
    const c = this.conv;
    const out = Buffer.alloc(Math.ceil(w / TILE) * Math.ceil(h / TILE) + w * h * c.cpixelBytes + 64);
    const dark = !s || x + w > s.width || y + h > s.height;
    const tile = new Uint32Array(TILE * TILE);
    const palette: number[] = [];
    let at = 0;
    for (let ty = y; ty < y + h; ty += TILE) {
      const th = Math.min(TILE, y + h - ty);
      for (let tx = x; tx < x + w; tx += TILE) {
        const tw = Math.min(TILE, x + w - tx);
        const n = tw * th;
        palette.length = 0;
        for (let row = 0; row < th; row++) {
          let o = dark ? 0 : s.offset + (ty + row) * s.stride + tx * 4;
          for (let col = 0; col < tw; col++, o += 4) {
            const v = dark ? 0 : c.value(s.pixels, o, s);
            tile[row * tw + col] = v;
            if (palette.length <= 16 && !palette.includes(v)) palette.push(v);
          }
        }
        if (palette.length === 1) {
          out[at++] = 1;
          at = c.put(out, at, palette[0], true);
        } else if (palette.length <= 16) {
          out[at++] = palette.length;
          for (const v of palette) at = c.put(out, at, v, true);
          const bits = palette.length === 2 ? 1 : palette.length <= 4 ? 2 : 4;
          for (let row = 0; row < th; row++) {
            let acc = 0;
            let nbits = 0;
            for (let col = 0; col < tw; col++) {
              acc = (acc << bits) | palette.indexOf(tile[row * tw + col]);
              nbits += bits;
              if (nbits === 8) {
                out[at++] = acc;
                acc = 0;
                nbits = 0;
              }
            }
            if (nbits > 0) out[at++] = acc << (8 - nbits);
          }
        } else {
          out[at++] = 0;
          for (let i = 0; i < n; i++) at = c.put(out, at, tile[i], true);
        }
      }
    }
    return out.subarray(0, at);
  }

  /** Compresses through the client's one zlib stream, flushed so the client can decode it now. */
  private deflate(data: Buffer): Promise<Buffer> {
    if (!this.zlib) {
      this.zlib = createDeflate({ level: 6 });
      this.zlib.on("data", (chunk: Buffer) => this.zlibOut.push(chunk));
    }
    const z = this.zlib;
    return new Promise((resolve, reject) => {
      z.once("error", reject);
      z.write(data);
      z.flush(zlibConstants.Z_SYNC_FLUSH, () => {
        z.off("error", reject);
        const out = Buffer.concat(this.zlibOut);
        this.zlibOut = [];
        resolve(out);
      });
    });
  }
}

function rectHeader(x: number, y: number, w: number, h: number, encoding: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(x, 0);
  b.writeUInt16BE(y, 2);
  b.writeUInt16BE(w, 4);
  b.writeUInt16BE(h, 6);
  b.writeInt32BE(encoding, 8);
  return b;
}

export function writePixelFormat(b: Buffer, at: number, pf: PixelFormat): void {
  b[at] = pf.bitsPerPixel;
  b[at + 1] = pf.depth;
  b[at + 2] = pf.bigEndian ? 1 : 0;
  b[at + 3] = pf.trueColour ? 1 : 0;
  b.writeUInt16BE(pf.redMax, at + 4);
  b.writeUInt16BE(pf.greenMax, at + 6);
  b.writeUInt16BE(pf.blueMax, at + 8);
  b[at + 10] = pf.redShift;
  b[at + 11] = pf.greenShift;
  b[at + 12] = pf.blueShift;
}

export function readPixelFormat(b: Buffer, at: number): PixelFormat {
  return {
    bitsPerPixel: b[at],
    depth: b[at + 1],
    bigEndian: b[at + 2] !== 0,
    trueColour: b[at + 3] !== 0,
    redMax: b.readUInt16BE(at + 4),
    greenMax: b.readUInt16BE(at + 6),
    blueMax: b.readUInt16BE(at + 8),
    redShift: b[at + 10],
    greenShift: b[at + 11],
    blueShift: b[at + 12],
  };
}

/**
 * Ethernet frames over a byte stream (the switch daemon's Unix socket): each message is a 4-byte
 * big-endian length followed by that many bytes.
 */
import type net from "node:net";

/** Largest message accepted: a 64 KiB frame plus room for headers. Anything bigger is a broken peer. */
export const MAX_MESSAGE = 65536 + 64;
const STAGING = 64 * 1024;
/** Bytes queued on a socket beyond which frames are dropped, as a congested link would. */
const MAX_QUEUED = 1024 * 1024;

/**
 * Splits a stream into messages. Whole messages inside a chunk are passed on as views of it; only
 * a message split across chunks is assembled, in one buffer reused for the life of the reader.
 */
export class FrameReader {
  private acc: Buffer | null = null;
  private accLen = 0;
  private failed = false;

  /** `onFrame` gets a view that is valid only during the call; `onError` is told about a malformed stream once. */
  constructor(
    private readonly onFrame: (frame: Uint8Array) => void,
    private readonly onError: (message: string) => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.failed) return;
    const len = chunk.length;
    let off = 0;
    if (this.accLen > 0) {
      const acc = this.acc!;
      if (this.accLen < 4) {
        const k = Math.min(4 - this.accLen, len);
        chunk.copy(acc, this.accLen, 0, k);
        this.accLen += k;
        off = k;
        if (this.accLen < 4) return;
      }
      const need = 4 + acc.readUInt32BE(0);
      if (need - 4 > MAX_MESSAGE) return this.fail(need - 4);
      const k = Math.min(need - this.accLen, len - off);
      chunk.copy(acc, this.accLen, off, off + k);
      this.accLen += k;
      off += k;
      if (this.accLen < need) return;
      this.accLen = 0;
      this.onFrame(acc.subarray(4, need));
    }
    while (len - off >= 4) {
      const n = chunk.readUInt32BE(off);
      if (n > MAX_MESSAGE) return this.fail(n);
      if (len - off - 4 < n) break;
      this.onFrame(chunk.subarray(off + 4, off + 4 + n));
      off += 4 + n;
    }
    if (off < len) {
      this.acc ??= Buffer.allocUnsafe(MAX_MESSAGE + 4);
      chunk.copy(this.acc, 0, off, len);
      this.accLen = len - off;
    }
  }

  private fail(n: number): void {
    this.failed = true;
    this.onError(`message of ${n} bytes is larger than the limit of ${MAX_MESSAGE}`);
  }
}

/**
 * Writes messages to a socket, gathering those written in one turn of the event loop into a
 * single socket write. Drops (returns false) while the socket has too much queued.
 */
export class FrameWriter {
  private readonly staging = Buffer.allocUnsafe(STAGING);
  private used = 0;
  private scheduled = false;
  dropped = 0;
  private readonly flushBound = () => this.flush();

  constructor(private readonly socket: net.Socket) {}

  write(frame: Uint8Array): boolean {
    const socket = this.socket;
    if (socket.destroyed || !socket.writable || frame.length > MAX_MESSAGE) return false;
    if (socket.writableLength + this.used > MAX_QUEUED) {
      this.dropped++;
      return false;
    }
    const need = 4 + frame.length;
    if (this.used + need > STAGING) this.flush();
    if (need > STAGING) {
      const big = Buffer.allocUnsafe(need);
      big.writeUInt32BE(frame.length, 0);
      big.set(frame, 4);
      socket.write(big);
      return true;
    }
    this.staging.writeUInt32BE(frame.length, this.used);
    this.staging.set(frame, this.used + 4);
    this.used += need;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushBound);
    }
    return true;
  }

  /** Hands what is gathered to the socket (a copy: the staging buffer is reused). */
  flush(): void {
    this.scheduled = false;
    if (this.used === 0) return;
    const out = Buffer.allocUnsafe(this.used);
    this.staging.copy(out, 0, 0, this.used);
    this.used = 0;
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(out);
  }
}

/**
 * `yun instance vnc NAME`: any VNC client reaches a cloud instance's display. A local TCP listener
 * (127.0.0.1 unless asked) speaks RFB 3.8 to the client with VNC authentication (a password of
 * this session, in a 0600 file: the port is open to every local user), then carries the
 * connection over the API's token-checked WebSocket /api/v1/instances/{id}/display, whose side
 * of the handshake (security None) this proxy answers itself. After both handshakes the bytes
 * (ClientInit onwards) go through unchanged.
 */
import { createServer, type AddressInfo, type Socket } from "node:net";
import { randomBytes, timingSafeEqual } from "node:crypto";
import WebSocket from "ws";
import { vncAuthResponse } from "../vmm/display/des.js";

const VERSION = "RFB 003.008\n";
const SECURITY_NONE = 1;
const SECURITY_VNC = 2;
/** A client that has not logged in by then is dropped. */
const HANDSHAKE_MS = 10_000;

export interface VncProxyOptions {
  host: string;
  port: number;
  password: string;
  /** Opens the display WebSocket of the instance (token in its subprotocol). */
  connect: () => WebSocket;
  log: (line: string) => void;
}

/** Bytes arriving from one side (socket chunks, WebSocket messages), read `n` at a time for a handshake. */
class ByteQueue {
  private buf: Buffer = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  private ended: string | null = null;
  readonly push = (b: Buffer): void => {
    this.buf = this.buf.length === 0 ? b : Buffer.concat([this.buf, b]);
    this.wake?.();
  };
  end(why: string): void {
    this.ended ??= why;
    this.wake?.();
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended !== null) throw new Error(this.ended);
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** What arrived past the handshake. */
  rest(): Buffer {
    return this.buf;
  }
}

const asBuffer = (data: Buffer | ArrayBuffer | Buffer[]): Buffer =>
  Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);

/** Listens; resolves with the address once listening, and serves until `close` is called. */
export async function startVncProxy(
  opts: VncProxyOptions,
): Promise<{ address: { host: string; port: number }; close: () => void }> {
  const server = createServer((socket) => void serveClient(socket, opts));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  return { address: { host: a.address, port: a.port }, close: () => server.close() };
}

async function serveClient(socket: Socket, opts: VncProxyOptions): Promise<void> {
  socket.on("error", () => {});
  const who = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
  const timer = setTimeout(() => socket.destroy(), HANDSHAKE_MS);
  const client = new ByteQueue();
  socket.on("data", client.push);
  socket.once("close", () => client.end("the client closed the connection"));
  let ws: WebSocket | null = null;
  try {
    // The client's side: version, VNC authentication with this session's password.
    socket.write(VERSION);
    const version = (await client.read(12)).toString("latin1");
    if (!/^RFB 003\.00[78]\n$/.test(version)) throw new Error(`it speaks ${JSON.stringify(version)}, not RFB 3.7/3.8`);
    const v8 = version === VERSION;
    socket.write(Buffer.from([1, SECURITY_VNC]));
    if ((await client.read(1))[0] !== SECURITY_VNC) throw new Error("it did not choose VNC authentication");
    const challenge = randomBytes(16);
    socket.write(challenge);
    const answer = await client.read(16);
    if (!timingSafeEqual(answer, vncAuthResponse(opts.password, challenge))) {
      const reason = Buffer.from("wrong password");
      const out = Buffer.alloc(8 + (v8 ? reason.length : 0));
      out.writeUInt32BE(1, 0);
      if (v8) {
        out.writeUInt32BE(reason.length, 4);
        reason.copy(out, 8);
      }
      clearTimeout(timer);
      socket.end(v8 ? out : out.subarray(0, 4));
      opts.log(`vnc: ${who} refused: wrong password`);
      return;
    }
    // The API's side: its server offers None (the token said who we are).
    const upstream = opts.connect();
    ws = upstream;
    upstream.on("error", () => {});
    const api = new ByteQueue();
    const onMessage = (data: Buffer | ArrayBuffer | Buffer[]): void => api.push(asBuffer(data));
    upstream.on("message", onMessage);
    upstream.once("close", (_code: number, reason: Buffer) => api.end(reason.toString() || "the display closed"));
    await new Promise<void>((resolve, reject) => {
      upstream.once("open", () => resolve());
      upstream.once("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (d: Buffer) => (body += d.toString()));
        res.on("end", () => {
          let message = `HTTP ${res.statusCode}`;
          try {
            message = (JSON.parse(body) as { error: { message: string } }).error.message;
          } catch {
            // not the API's JSON: the status says enough
          }
          reject(new Error(`the display is not available: ${message}`));
        });
      });
      upstream.once("error", reject);
    });
    const serverVersion = (await api.read(12)).toString("latin1");
    if (serverVersion !== VERSION) throw new Error(`the display speaks ${JSON.stringify(serverVersion)}`);
    upstream.send(Buffer.from(VERSION));
    const types = [...(await api.read((await api.read(1))[0]))];
    if (!types.includes(SECURITY_NONE)) throw new Error(`the display offers security types ${types.join(", ")}`);
    upstream.send(Buffer.from([SECURITY_NONE]));
    if ((await api.read(4)).readUInt32BE(0) !== 0) throw new Error("the display refused the connection");
    // Both sides are at ClientInit: from here on the bytes go through as they are.
    socket.write(Buffer.from([0, 0, 0, 0])); // the client's SecurityResult: ok
    clearTimeout(timer);
    opts.log(`vnc: ${who} connected`);
    upstream.off("message", onMessage);
    socket.off("data", client.push);
    if (api.rest().length > 0) socket.write(api.rest());
    if (client.rest().length > 0) upstream.send(client.rest());
    upstream.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => socket.write(asBuffer(data)));
    socket.on("data", (chunk: Buffer) => {
      if (upstream.readyState === WebSocket.OPEN) upstream.send(chunk);
    });
    upstream.on("close", () => socket.destroy());
    socket.on("close", () => {
      upstream.close();
      opts.log(`vnc: ${who} disconnected`);
    });
  } catch (e) {
    clearTimeout(timer);
    opts.log(`vnc: ${who} dropped: ${(e as Error).message}`);
    socket.destroy();
    ws?.terminate();
  }
}

/**
 * Virtual networks shared between processes: every `yun run --net NAME` joins the same learning
 * switch, which lives in a small daemon (switchd.ts) per network NAME listening on the Unix
 * socket DIR/NAME.sock. Frames travel length-prefixed (framing.ts).
 *
 * joinNetwork connects to the daemon and starts it when nobody listens yet. Starting is race-free:
 * a daemon first takes a lock (a Linux abstract socket named after DIR and NAME, released by the
 * kernel when its holder dies), and only the holder removes a stale socket file and binds; any
 * other daemon exits at once and its starter keeps connecting. The daemon greets every client
 * with its pid, so a connection that the daemon accepted just while shutting down is recognised
 * and retried. It exits a few seconds after its last client leaves.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, realpathSync } from "node:fs";
import net from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { NetBackend } from "../devices/netdev.js";
import { FrameReader, FrameWriter } from "./framing.js";

const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/i;
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
export const DEFAULT_IDLE_MS = 3000;
const JOIN_TIMEOUT_MS = 10_000;
const HELLO_TIMEOUT_MS = 2000;

export class NetworkError extends Error {
  override name = "NetworkError";
}

export function validateNetworkName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new NetworkError(
      `invalid network name "${name}": use 1-32 letters, digits, '-' or '_', starting with a letter or digit`,
    );
  }
}

/** The daemon's socket file for network `name` under `dir`. */
export function networkSocketPath(dir: string, name: string): string {
  return join(dir, `${name}.sock`);
}

/** The abstract-namespace socket a daemon holds while it serves `name` under `dir`. */
export function networkLockName(dir: string, name: string): string {
  let real = dir;
  try {
    real = realpathSync(dir);
  } catch {}
  const h = createHash("sha256").update(real).digest("hex").slice(0, 24);
  return `\0yun-switchd-${h}-${name}`;
}

export interface JoinOptions {
  /** How long a daemon this call starts lingers after its last client leaves (default 3000 ms). */
  idleMs?: number;
}

interface Connected {
  socket: net.Socket;
  reader: FrameReader;
  pid: number;
}

/** One connection attempt; resolves once the daemon's greeting arrived, rejects with a code otherwise. */
function tryConnect(
  path: string,
  onFrame: (frame: Uint8Array) => void,
  onBroken: (socket: net.Socket) => void,
): Promise<Connected> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    let pid = -1;
    const fail = (code: string, err?: Error) => {
      if (pid >= 0) return;
      clearTimeout(timer);
      socket.destroy();
      reject(Object.assign(err ?? new Error(code), { code: (err as NodeJS.ErrnoException)?.code ?? code }));
    };
    const timer = setTimeout(() => fail("ETIMEDOUT"), HELLO_TIMEOUT_MS);
    const reader = new FrameReader(
      (frame) => {
        if (pid >= 0) onFrame(frame);
        else if (frame.length === 4) {
          pid = (frame[0] << 24) | (frame[1] << 16) | (frame[2] << 8) | frame[3];
          clearTimeout(timer);
          resolve({ socket, reader, pid });
        } else fail("EPROTO");
      },
      () => {
        if (pid < 0) fail("EPROTO");
        else {
          socket.destroy();
          onBroken(socket);
        }
      },
    );
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.on("error", (err) => fail("", err));
    socket.on("close", () => {
      if (pid < 0) fail("ECONNRESET");
      else onBroken(socket);
    });
  });
}

const NEVER = () => false;
const RETRYABLE = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EAGAIN"]);

/** `background` sleeps do not keep the process alive (reconnecting after close() must not). */
function sleep(ms: number, background: boolean): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    if (background) t.unref();
  });
}

async function connectOrStart(
  name: string,
  dir: string,
  idleMs: number,
  onFrame: (frame: Uint8Array) => void,
  onBroken: (socket: net.Socket) => void,
  cancelled: () => boolean,
): Promise<Connected> {
  const path = networkSocketPath(dir, name);
  const deadline = Date.now() + JOIN_TIMEOUT_MS;
  let daemonStarting = false;
  let daemonFailed: string | null = null;
  let delay = 5;
  for (;;) {
    try {
      return await tryConnect(path, onFrame, onBroken);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (!RETRYABLE.has(err.code ?? "")) {
        throw new NetworkError(`cannot join network "${name}": ${path}: ${err.message}`);
      }
    }
    if (daemonFailed) throw new NetworkError(`cannot join network "${name}": its switch daemon ${daemonFailed}`);
    if (Date.now() > deadline) {
      throw new NetworkError(`cannot join network "${name}": its switch daemon did not start listening on ${path}`);
    }
    if (!daemonStarting) {
      daemonStarting = true;
      const script = fileURLToPath(new URL("./switchd.js", import.meta.url));
      const child = spawn(process.execPath, [script, dir, name, String(idleMs)], {
        detached: true,
        stdio: "ignore",
        cwd: "/",
      });
      // A daemon that lost the start race exits at once (status 0); start another if connecting still fails.
      child.once("exit", (code, signal) => {
        daemonStarting = false;
        if (code !== 0 && code !== null) daemonFailed = `(${script}) exited with status ${code}`;
        else if (signal) daemonFailed = `(${script}) was killed by ${signal}`;
      });
      child.once("error", (err) => {
        daemonStarting = false;
        daemonFailed = `(${script}) could not be started: ${err.message}`;
      });
      child.unref();
    }
    if (cancelled()) throw new NetworkError(`cannot join network "${name}": the link was closed`);
    await sleep(delay, cancelled !== NEVER);
    delay = Math.min(delay * 2, 100);
  }
}

/**
 * A NetBackend plugged into a network's switch daemon. If the daemon dies, the link reconnects
 * (starting a new daemon); frames sent meanwhile are lost, as on a real network.
 */
export class NetworkLink implements NetBackend {
  private deliver: ((frame: Uint8Array) => boolean) | null = null;
  private socket: net.Socket | null = null;
  private writer: FrameWriter | null = null;
  private closed = false;
  private reconnecting = false;
  private pid = -1;
  private readonly onFrameBound = (frame: Uint8Array) => {
    this.deliver?.(frame);
  };
  private readonly onBrokenBound = (socket: net.Socket) => this.broken(socket);

  /** @internal use joinNetwork */
  constructor(
    readonly network: string,
    private readonly dir: string,
    private readonly idleMs: number,
  ) {}

  /** The switch daemon's process id. */
  get daemonPid(): number {
    return this.pid;
  }

  get connected(): boolean {
    return this.socket !== null;
  }

  /** @internal */
  async connect(background = false): Promise<void> {
    const c = await connectOrStart(
      this.network,
      this.dir,
      this.idleMs,
      this.onFrameBound,
      this.onBrokenBound,
      background ? () => this.closed : NEVER,
    );
    if (this.closed) {
      c.socket.destroy();
      return;
    }
    this.socket = c.socket;
    this.writer = new FrameWriter(c.socket);
    this.pid = c.pid;
  }

  send(frame: Uint8Array): void {
    this.writer?.write(frame);
  }

  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.writer?.flush();
    this.socket?.end();
    this.socket = null;
    this.writer = null;
    this.deliver = null;
  }

  private broken(socket: net.Socket): void {
    if (socket !== this.socket) return;
    socket.destroy();
    this.socket = null;
    this.writer = null;
    if (this.closed || this.reconnecting) return;
    this.reconnecting = true;
    const retry = async () => {
      while (!this.closed) {
        try {
          await this.connect(true);
          break;
        } catch {
          await sleep(1000, true);
        }
      }
      this.reconnecting = false;
    };
    void retry();
  }
}

/**
 * Joins the virtual network `name`, whose switch daemon listens in `dir` (e.g. $YUN_HOME/net),
 * starting the daemon if none runs. Networks with different names never see each other's frames.
 */
export async function joinNetwork(name: string, netDir: string, options: JoinOptions = {}): Promise<NetworkLink> {
  validateNetworkName(name);
  const dir = resolve(netDir);
  const path = networkSocketPath(dir, name);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new NetworkError(
      `cannot join network "${name}": socket path ${path} is ${Buffer.byteLength(path)} bytes, over the ${MAX_SOCKET_PATH}-byte limit of Unix sockets; use a shorter directory`,
    );
  }
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new NetworkError(`cannot join network "${name}": cannot create ${dir}: ${(e as Error).message}`);
  }
  const link = new NetworkLink(name, dir, options.idleMs ?? DEFAULT_IDLE_MS);
  await link.connect();
  return link;
}

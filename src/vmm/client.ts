/**
 * A client of one VM monitor's control socket (docs/vm-api.md): newline-delimited JSON requests
 * with ids, several in flight on one connection; and the raw streams (console, watch) that take a
 * connection over. `yun vm` and the cloud daemon use it.
 */
import net from "node:net";

export class MonitorError extends Error {
  override name = "MonitorError";
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class MonitorConnection {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private buf = "";
  private closed = false;
  /** Called once when the connection ends (the monitor exited or closed it). */
  onClose: (() => void) | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.onData(chunk));
    socket.on("error", () => {});
    socket.on("close", () => {
      this.closed = true;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new MonitorError("the VM monitor closed its control connection"));
      }
      this.pending.clear();
      this.onClose?.();
    });
  }

  /** Connects to the monitor listening on `path`; rejects when nobody answers there. */
  static connect(path: string, timeoutMs = 2000): Promise<MonitorConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new MonitorError(`the VM monitor at ${path} did not accept a connection`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.removeAllListeners("error");
        resolve(new MonitorConnection(socket));
      });
      socket.once("error", (e) => {
        clearTimeout(timer);
        reject(new MonitorError(`no VM monitor answers at ${path}: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      const nl = this.buf.indexOf("\n");
      if (nl < 0) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let msg: { id?: unknown; ok?: boolean; result?: unknown; error?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (typeof msg.id !== "number") continue;
      const p = this.pending.get(msg.id);
      if (!p) continue;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result ?? {});
      else p.reject(new MonitorError(msg.error ?? "the VM monitor refused the request"));
    }
  }

  /** Sends one request and answers its result. */
  request<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}, timeoutMs = 15_000): Promise<T> {
    if (this.closed) return Promise.reject(new MonitorError("the VM monitor's control connection is closed"));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new MonitorError(`the VM monitor did not answer "${op}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify({ id, op, ...args }) + "\n");
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * Opens a connection that, after the monitor's `ok` line for `op` (console, watch), carries a raw
 * stream. Answers the socket positioned just after that line, plus any bytes that followed it.
 */
export function openStream(
  path: string,
  op: string,
  args: Record<string, unknown> = {},
  timeoutMs = 5000,
): Promise<{ socket: net.Socket; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new MonitorError(`the VM monitor did not answer "${op}"`)), timeoutMs);
    const fail = (e: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    };
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(10);
      if (nl < 0) return;
      socket.off("data", onData);
      socket.off("error", onError);
      clearTimeout(timer);
      let msg: { ok?: boolean; error?: string };
      try {
        msg = JSON.parse(buf.subarray(0, nl).toString("utf8"));
      } catch {
        fail(new MonitorError(`the VM monitor answered "${op}" with something that is not JSON`));
        return;
      }
      if (!msg.ok) {
        fail(new MonitorError(msg.error ?? `the VM monitor refused "${op}"`));
        return;
      }
      socket.pause();
      resolve({ socket, rest: buf.subarray(nl + 1) });
    };
    const onError = (e: Error): void =>
      fail(new MonitorError(`no VM monitor answers at ${path}: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    socket.on("data", onData);
    socket.on("error", onError);
    socket.once("connect", () => socket.write(JSON.stringify({ id: 1, op, ...args }) + "\n"));
  });
}

/**
 * Attaches to the VM's console: resolves with the socket, paused (so nothing is lost before the
 * caller reads: pipe() or resume()); reads are console output (the kept history first with
 * `replay`), writes are keys. A `piped` client is a script rather than a terminal: the monitor
 * answers the guest's terminal queries for it and holds its keys until the guest's shell is ready.
 */
export async function openConsole(path: string, replay = true, piped = false): Promise<net.Socket> {
  const { socket, rest } = await openStream(path, "console", piped ? { replay, piped } : { replay });
  if (rest.length > 0) socket.unshift(rest);
  return socket;
}

/** A client of a VM monitor's control socket (docs/vm-api.md), for `yun vm` and the cloud daemon. */
import { connect, type Socket } from "node:net";

export class VmApiError extends Error {}

export class VmClient {
  private socket: Socket | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private buffered = "";

  constructor(readonly socketPath: string) {}

  private open(): Promise<Socket> {
    if (this.socket) return Promise.resolve(this.socket);
    return new Promise((resolve, reject) => {
      const s = connect(this.socketPath);
      s.once("connect", () => {
        this.socket = s;
        resolve(s);
      });
      s.once("error", (e: NodeJS.ErrnoException) => {
        const why = e.code === "ENOENT" || e.code === "ECONNREFUSED" ? "the VM is not running" : e.message;
        const err = new VmApiError(`cannot reach the VM's control socket ${this.socketPath}: ${why}`);
        if (this.socket === null) reject(err);
        this.failAll(err);
      });
      s.on("close", () => {
        this.socket = null;
        this.failAll(new VmApiError("the VM closed its control connection"));
      });
      s.on("data", (chunk: Buffer) => {
        this.buffered += chunk.toString("utf8");
        let nl: number;
        while ((nl = this.buffered.indexOf("\n")) >= 0) {
          const line = this.buffered.slice(0, nl);
          this.buffered = this.buffered.slice(nl + 1);
          let msg: { id?: number; ok?: boolean; result?: unknown; error?: string };
          try {
            msg = JSON.parse(line) as typeof msg;
          } catch {
            continue;
          }
          const p = typeof msg.id === "number" ? this.pending.get(msg.id) : undefined;
          if (!p) continue;
          this.pending.delete(msg.id!);
          if (msg.ok) p.resolve(msg.result);
          else p.reject(new VmApiError(msg.error ?? "the VM refused"));
        }
      });
    });
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Sends one request and waits for its answer. */
  async call<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const s = await this.open();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: (v) => resolve(v as T), reject });
      s.write(JSON.stringify({ ...args, id, op }) + "\n");
    });
  }

  close(): void {
    this.socket?.end();
    this.socket = null;
  }

  /**
   * Opens a console connection (a separate one): resolves with the socket once attached, paused;
   * bytes written to it are keys, bytes read from it are console output (history first with
   * `replay`).
   */
  static console(socketPath: string, replay = true): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = connect(socketPath);
      let header = "";
      const onData = (chunk: Buffer): void => {
        header += chunk.toString("latin1");
        const nl = header.indexOf("\n");
        if (nl < 0) return;
        s.off("data", onData);
        let msg: { ok?: boolean; error?: string };
        try {
          msg = JSON.parse(header.slice(0, nl)) as typeof msg;
        } catch {
          msg = { ok: false, error: "bad answer" };
        }
        if (!msg.ok) {
          s.destroy();
          reject(new VmApiError(msg.error ?? "console refused"));
          return;
        }
        // Paused until the caller reads (pipe() or resume()), so no output is lost in between.
        s.pause();
        const rest = Buffer.from(header.slice(nl + 1), "latin1");
        if (rest.length) s.unshift(rest);
        resolve(s);
      };
      s.on("data", onData);
      s.once("connect", () => s.write(JSON.stringify({ id: 1, op: "console", replay }) + "\n"));
      s.once("error", (e) =>
        reject(new VmApiError(`cannot reach the VM's control socket ${socketPath}: ${e.message}`)),
      );
    });
  }
}

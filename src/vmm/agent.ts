/**
 * The host's client of the guest agent (guest/agent/agent.c; protocol in docs/guest-agent.md),
 * through the VM's vsock Unix socket (src/vmm/vsock-host.ts): commands with streamed stdin,
 * stdout and stderr, background processes, and files read and written as streams.
 * Each request opens a connection of its own, so requests run side by side.
 */
import { connect, type Socket } from "node:net";
import { Readable } from "node:stream";

/** The vsock port the agent listens on. */
export const AGENT_PORT = 1024;

export const FRAME_REQUEST = 1;
export const FRAME_STDIN = 2;
export const FRAME_STDOUT = 3;
export const FRAME_STDERR = 4;
export const FRAME_EXIT = 5;
export const FRAME_ERROR = 6;
export const FRAME_DATA = 7;
export const FRAME_RESULT = 8;
/** Largest frame payload either side sends. */
export const MAX_FRAME = 1024 * 1024;
/** File data goes in frames of this size. */
const DATA_CHUNK = 64 * 1024;

/** The agent could not do what was asked, or cannot be reached; the message says which, in one sentence. */
export class AgentError extends Error {}

export interface ExecOptions {
  /** Environment entries added to the agent's (PATH and HOME have defaults). */
  env?: Record<string, string>;
  cwd?: string;
  /** Bytes for the command's standard input (default: none, it reads /dev/null). */
  stdin?: string | Uint8Array | AsyncIterable<Uint8Array>;
  /** The agent kills the command (SIGKILL to its process group) after this many ms. */
  timeoutMs?: number;
  /** Streamed output; without them the output is collected into the result. */
  onStdout?: (bytes: Buffer) => void;
  onStderr?: (bytes: Buffer) => void;
}

export interface ExecResult {
  /** The exit code, or null when a signal ended the command. */
  exitCode: number | null;
  signal: number | null;
  timedOut: boolean;
  /** Collected output (empty when streamed to onStdout/onStderr). */
  stdout: string;
  stderr: string;
}

export interface FileInfo {
  name: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  mode: number;
  mtime: number;
}

export interface BackgroundProcess {
  pid: number;
  running: boolean;
  exitCode: number | null;
  signal: number | null;
  command: string;
}

/** Fields of a RESULT or EXIT frame: NUL-separated key=value (repeated keys keep every value). */
function parseFields(payload: Buffer): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const f of payload.toString("utf8").split("\0")) {
    if (f === "") continue;
    const eq = f.indexOf("=");
    const key = eq < 0 ? f : f.slice(0, eq);
    const list = out.get(key) ?? [];
    list.push(eq < 0 ? "" : f.slice(eq + 1));
    out.set(key, list);
  }
  return out;
}

function encodeRequest(op: string, fields: [string, string][]): Buffer {
  for (const [k, v] of fields) {
    if (v.includes("\0") || k.includes("\0")) throw new AgentError(`the ${k} of a request cannot contain a NUL byte`);
  }
  return Buffer.from([op, ...fields.map(([k, v]) => `${k}=${v}`)].join("\0") + "\0", "utf8");
}

function frame(type: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt32LE(payload.length, 0);
  h[4] = type;
  return Buffer.concat([h, payload]);
}

/** One connection to the agent, as a sequence of frames. */
class Channel {
  private buffer: Buffer = Buffer.alloc(0);
  private waiting: ((f: { type: number; payload: Buffer } | null) => void) | null = null;
  private readonly frames: { type: number; payload: Buffer }[] = [];
  private ended = false;
  private failure: string | null = null;

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => this.feed(chunk));
    socket.on("end", () => this.finish());
    socket.on("close", () => this.finish());
    socket.on("error", (e) => {
      this.failure ??= e.message;
      this.finish();
    });
  }

  private feed(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 5) {
      const len = this.buffer.readUInt32LE(0);
      if (len > MAX_FRAME) {
        this.failure = `the guest agent sent a frame of ${len} bytes (at most ${MAX_FRAME})`;
        this.socket.destroy();
        return;
      }
      if (this.buffer.length < 5 + len) break;
      const f = { type: this.buffer[4], payload: this.buffer.subarray(5, 5 + len) };
      this.buffer = this.buffer.subarray(5 + len);
      this.frames.push(f);
    }
    // Many frames waiting unread: stop reading until they are taken (backpressure for big reads).
    if (this.frames.length > 64) this.socket.pause();
    this.wake();
  }

  private finish(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiting;
    if (w === null) return;
    if (this.frames.length > 0) {
      this.waiting = null;
      w(this.frames.shift()!);
    } else if (this.ended) {
      this.waiting = null;
      w(null);
    }
  }

  /** The next frame, or null at end of stream. */
  next(): Promise<{ type: number; payload: Buffer } | null> {
    if (this.frames.length <= 16) this.socket.resume();
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.wake();
    });
  }

  /** Why the stream ended early, as a sentence. */
  lost(what: string): AgentError {
    return new AgentError(
      `the guest agent closed the connection before ${what}` +
        (this.failure ? ` (${this.failure})` : " (it was killed or restarted, or the VM stopped)"),
    );
  }

  async send(type: number, payload?: Uint8Array): Promise<void> {
    if (this.socket.destroyed) return;
    if (!this.socket.write(frame(type, payload))) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off("drain", done);
          this.socket.off("close", done);
          resolve();
        };
        this.socket.on("drain", done);
        this.socket.on("close", done);
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Opens the vsock Unix socket and asks for the agent's port; rejects with a sentence. */
function openChannel(vsockPath: string, port: number, connectTimeoutMs: number): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const s = connect(vsockPath);
    let line = Buffer.alloc(0);
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      reject(new AgentError(why));
    };
    const timer = setTimeout(
      () => fail(`the guest agent did not answer within ${connectTimeoutMs} ms (the VM is busy or stopped)`),
      connectTimeoutMs,
    );
    s.on("error", (e: NodeJS.ErrnoException) =>
      fail(
        e.code === "ENOENT" || e.code === "ECONNREFUSED"
          ? `no vsock socket at ${vsockPath} (is the VM running, with a vsock device?)`
          : `cannot reach the VM's vsock socket ${vsockPath}: ${e.message}`,
      ),
    );
    s.on("close", () => fail(`the VM closed its vsock socket before the guest agent answered (was the VM stopping?)`));
    const onData = (chunk: Buffer): void => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) return;
      s.off("data", onData);
      s.pause();
      const text = line.subarray(0, nl).toString("utf8");
      if (!text.startsWith("OK ")) {
        const why = text.startsWith("ERROR ") ? text.slice(6) : text;
        fail(
          /nothing listens/.test(why)
            ? `no guest agent listens on vsock port ${port} (the image has none, it is still starting, or it died)`
            : `the guest agent cannot be reached: ${why}`,
        );
        return;
      }
      settled = true;
      clearTimeout(timer);
      s.removeAllListeners("error");
      s.removeAllListeners("close");
      const channel = new Channel(s);
      const rest = line.subarray(nl + 1);
      if (rest.length > 0) s.unshift(rest);
      resolve(channel);
    };
    s.on("data", onData);
    s.once("connect", () => s.write(`CONNECT ${port}\n`));
  });
}

export interface GuestAgentOptions {
  port?: number;
  /** How long connecting to the agent may take (default 10 s). */
  connectTimeoutMs?: number;
}

/** The guest agent of one VM, reached through its vsock Unix socket. */
export class GuestAgent {
  readonly vsockPath: string;
  readonly port: number;
  private readonly connectTimeoutMs: number;

  constructor(vsockPath: string, options: GuestAgentOptions = {}) {
    this.vsockPath = vsockPath;
    this.port = options.port ?? AGENT_PORT;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  }

  private async request(op: string, fields: [string, string][]): Promise<Channel> {
    const payload = encodeRequest(op, fields);
    const c = await openChannel(this.vsockPath, this.port, this.connectTimeoutMs);
    await c.send(FRAME_REQUEST, payload);
    return c;
  }

  /** A request answered by one RESULT frame. */
  private async simple(op: string, fields: [string, string][], what: string): Promise<Map<string, string[]>> {
    const c = await this.request(op, fields);
    try {
      const f = await c.next();
      if (f === null) throw c.lost(what);
      if (f.type === FRAME_ERROR) throw new AgentError(f.payload.toString("utf8"));
      if (f.type !== FRAME_RESULT) throw new AgentError(`the guest agent answered ${op} with frame type ${f.type}`);
      return parseFields(f.payload);
    } finally {
      c.close();
    }
  }

  /** Waits until the agent answers (after a boot), up to `timeoutMs`; throws the last reason. */
  async waitReady(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.simple("ping", [], "answering a ping");
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /**
   * Runs a command: `command` is argv (a missing program is exit code 127, as in a shell) or
   * `{ shell }` for `sh -c`. Resolves when it ended, with its exit code or signal.
   */
  async exec(command: string[] | { shell: string }, options: ExecOptions = {}): Promise<ExecResult> {
    const fields = this.commandFields(command, options);
    if (options.stdin !== undefined) fields.push(["stdin", "1"]);
    if (options.timeoutMs !== undefined) fields.push(["timeout", String(Math.max(1, Math.round(options.timeoutMs)))]);
    const c = await this.request("exec", fields);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let feeding: Promise<void> = Promise.resolve();
    try {
      const first = await c.next();
      if (first === null) throw c.lost("the command started");
      if (first.type === FRAME_ERROR) throw new AgentError(first.payload.toString("utf8"));
      if (options.stdin !== undefined) feeding = this.feedStdin(c, options.stdin);
      for (;;) {
        const f = await c.next();
        if (f === null) throw c.lost("the command finished");
        if (f.type === FRAME_STDOUT) {
          if (options.onStdout) options.onStdout(Buffer.from(f.payload));
          else out.push(Buffer.from(f.payload));
        } else if (f.type === FRAME_STDERR) {
          if (options.onStderr) options.onStderr(Buffer.from(f.payload));
          else err.push(Buffer.from(f.payload));
        } else if (f.type === FRAME_ERROR) {
          throw new AgentError(f.payload.toString("utf8"));
        } else if (f.type === FRAME_EXIT) {
          const x = parseFields(f.payload);
          const code = x.get("code")?.[0];
          const signal = x.get("signal")?.[0];
          return {
            exitCode: code === undefined ? null : Number(code),
            signal: signal === undefined ? null : Number(signal),
            timedOut: x.has("timedout"),
            stdout: Buffer.concat(out).toString("utf8"),
            stderr: Buffer.concat(err).toString("utf8"),
          };
        }
      }
    } finally {
      c.close();
      await feeding.catch(() => {});
    }
  }

  private commandFields(command: string[] | { shell: string }, options: ExecOptions): [string, string][] {
    const fields: [string, string][] = [];
    if (Array.isArray(command)) {
      if (command.length === 0) throw new AgentError("a command needs at least a program name");
      for (const a of command) fields.push(["arg", a]);
    } else {
      fields.push(["shell", command.shell]);
    }
    for (const [k, v] of Object.entries(options.env ?? {})) {
      if (k === "" || k.includes("=")) throw new AgentError(`"${k}" is not an environment variable name`);
      fields.push(["env", `${k}=${v}`]);
    }
    if (options.cwd !== undefined) fields.push(["cwd", options.cwd]);
    return fields;
  }

  private async feedStdin(c: Channel, stdin: string | Uint8Array | AsyncIterable<Uint8Array>): Promise<void> {
    const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> =
      typeof stdin === "string" ? [Buffer.from(stdin)] : stdin instanceof Uint8Array ? [stdin] : stdin;
    for await (const chunk of chunks) {
      for (let at = 0; at < chunk.length; at += DATA_CHUNK) {
        await c.send(FRAME_STDIN, chunk.subarray(at, at + DATA_CHUNK));
      }
    }
    await c.send(FRAME_STDIN);
  }

  /** Starts a command in the background (output kept in /run/yun-agent/PID.out and .err); returns its pid. */
  async background(command: string[] | { shell: string }, options: Omit<ExecOptions, "stdin"> = {}): Promise<number> {
    const fields = this.commandFields(command, options);
    fields.push(["background", "1"]);
    const r = await this.simple("exec", fields, "the command started");
    return Number(r.get("pid")?.[0]);
  }

  /** The background processes started through the agent (this boot). */
  async processes(): Promise<BackgroundProcess[]> {
    const r = await this.simple("ps", [], "listing processes");
    return (r.get("process") ?? []).map((line) => {
      const [pid, state, ...cmd] = line.split("\t");
      const code = /^code=(\d+)$/.exec(state);
      const sig = /^signal=(\d+)$/.exec(state);
      return {
        pid: Number(pid),
        running: state === "running",
        exitCode: code ? Number(code[1]) : null,
        signal: sig ? Number(sig[1]) : null,
        command: cmd.join("\t"),
      };
    });
  }

  /** Signals a process (and its process group); SIGTERM (15) by default. */
  async kill(pid: number, signal = 15): Promise<void> {
    await this.simple(
      "kill",
      [
        ["pid", String(pid)],
        ["signal", String(signal)],
      ],
      `process ${pid} was signalled`,
    );
  }

  /** A guest file as a stream (rejects with the guest's reason when it cannot be opened). */
  async readStream(path: string): Promise<Readable> {
    const c = await this.request("read", [["path", path]]);
    const first = await c.next();
    if (first === null) {
      c.close();
      throw c.lost(`${path} was opened`);
    }
    if (first.type === FRAME_ERROR) {
      c.close();
      throw new AgentError(first.payload.toString("utf8"));
    }
    let reading = false;
    const stream = new Readable({
      read() {
        if (reading) return;
        reading = true;
        void (async () => {
          try {
            for (;;) {
              const f = await c.next();
              if (f === null) throw c.lost(`all of ${path} was read`);
              if (f.type === FRAME_ERROR) throw new AgentError(f.payload.toString("utf8"));
              if (f.type !== FRAME_DATA) continue;
              if (f.payload.length === 0) {
                stream.push(null);
                c.close();
                return;
              }
              if (!stream.push(Buffer.from(f.payload))) break;
            }
            reading = false;
          } catch (e) {
            c.close();
            stream.destroy(e as Error);
          }
        })();
      },
      destroy(err, cb) {
        c.close();
        cb(err);
      },
    });
    return stream;
  }

  /** A whole guest file. */
  async readFile(path: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of await this.readStream(path)) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }

  /** Writes a guest file from bytes or a stream; resolves with the bytes written. */
  async writeFile(
    path: string,
    data: string | Uint8Array | AsyncIterable<Uint8Array>,
    options: { mode?: number; append?: boolean } = {},
  ): Promise<number> {
    const fields: [string, string][] = [["path", path]];
    if (options.mode !== undefined) fields.push(["mode", options.mode.toString(8)]);
    if (options.append) fields.push(["append", "1"]);
    const c = await this.request("write", fields);
    // An error (the file cannot be opened) may come at once: watch for it while sending.
    let answer: { type: number; payload: Buffer } | null | undefined;
    const answered = c.next().then((f) => (answer = f));
    try {
      const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> =
        typeof data === "string" ? [Buffer.from(data)] : data instanceof Uint8Array ? [data] : data;
      for await (const chunk of chunks) {
        for (let at = 0; at < chunk.length && answer === undefined; at += DATA_CHUNK) {
          await c.send(FRAME_DATA, chunk.subarray(at, at + DATA_CHUNK));
        }
        if (answer !== undefined) break;
      }
      if (answer === undefined) await c.send(FRAME_DATA);
      const f = await answered;
      if (f === null) throw c.lost(`${path} was written`);
      if (f.type === FRAME_ERROR) throw new AgentError(f.payload.toString("utf8"));
      return Number(parseFields(f.payload).get("bytes")?.[0] ?? 0);
    } finally {
      c.close();
    }
  }

  async stat(path: string): Promise<Omit<FileInfo, "name"> & { uid: number; gid: number }> {
    const r = await this.simple("stat", [["path", path]], `${path} was examined`);
    const one = (k: string): string => r.get(k)?.[0] ?? "";
    return {
      type: one("type") as FileInfo["type"],
      size: Number(one("size")),
      mode: parseInt(one("mode"), 8),
      mtime: Number(one("mtime")),
      uid: Number(one("uid")),
      gid: Number(one("gid")),
    };
  }

  async list(path: string): Promise<FileInfo[]> {
    const r = await this.simple("list", [["path", path]], `${path} was listed`);
    return (r.get("entry") ?? [])
      .map((line) => {
        const [name, type, size, mode, mtime] = line.split("\t");
        return {
          name,
          type: type as FileInfo["type"],
          size: Number(size),
          mode: parseInt(mode, 8),
          mtime: Number(mtime),
        };
      })
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async mkdir(path: string, options: { parents?: boolean; mode?: number } = {}): Promise<void> {
    const fields: [string, string][] = [["path", path]];
    if (options.parents) fields.push(["parents", "1"]);
    if (options.mode !== undefined) fields.push(["mode", options.mode.toString(8)]);
    await this.simple("mkdir", fields, `${path} was made`);
  }

  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    const fields: [string, string][] = [["path", path]];
    if (options.recursive) fields.push(["recursive", "1"]);
    await this.simple("remove", fields, `${path} was removed`);
  }

  /**
   * Mixes `seed` (16-512 bytes) into the guest kernel's entropy pool and reseeds its generator at
   * once: a VM restored from a snapshot that other VMs were restored from too must not go on with
   * the same /dev/urandom stream.
   */
  async reseed(seed: Uint8Array): Promise<void> {
    await this.simple("reseed", [["seed", Buffer.from(seed).toString("hex")]], "the kernel's generator was reseeded");
  }

  async rename(from: string, to: string): Promise<void> {
    await this.simple(
      "rename",
      [
        ["from", from],
        ["to", to],
      ],
      `${from} was renamed`,
    );
  }
}

/**
 * The sandbox SDK, shaped like E2B's (docs/sandboxes.md):
 *
 *   import { Sandbox } from "yun/sdk";
 *   const sbx = await Sandbox.create({ template: "base", timeoutMs: 60_000 });
 *   const r = await sbx.commands.run("echo hi", { onStdout: (s) => process.stdout.write(s) });
 *   await sbx.files.write("/root/a.txt", "data");
 *   await sbx.pause();
 *   const again = await Sandbox.connect(sbx.sandboxId);
 *   await again.kill();
 *
 * It finds the server and token as the CLI does: options, else YUN_SERVER and YUN_TOKEN, else the
 * `yun serve` running on this machine's $YUN_HOME and its admin token file.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { readServeRecord } from "../cloud/endpoint.js";
import { DEFAULT_SERVER, YunApiError, YunClient } from "../cloud/client.js";
import { yunHome } from "../images/paths.js";
import type { CommandEvent, Sandbox as SandboxInfo, SandboxFile, SandboxNetwork, Template } from "../cloud/types.js";

export { YunApiError } from "../cloud/client.js";
export type { SandboxInfo, SandboxFile, Template };

export interface ConnectionOptions {
  /** The API's URL (default: YUN_SERVER, else the local yun serve, else http://127.0.0.1:8470). */
  server?: string;
  /** The API token (default: YUN_TOKEN, else $YUN_HOME/cloud/admin.token). */
  token?: string;
  /** For admins: the project to act in. */
  project?: string;
}

export interface SandboxOpts extends ConnectionOptions {
  /** Template id or name (default: base, built on first use). */
  template?: string;
  /** The server kills the sandbox this long after create (default 300 000 ms). */
  timeoutMs?: number;
  /** Environment of every command (a command's own envs win). */
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  /** "nat" (default): the sandbox reaches out through its own NAT; "none": no network. */
  network?: SandboxNetwork;
}

export interface RunOpts {
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** Start the command and return at once with its pid (output kept in the guest). */
  background?: boolean;
  envs?: Record<string, string>;
  cwd?: string;
  /** Kill the command after this long. */
  timeoutMs?: number;
}

export interface CommandResult {
  exitCode: number | null;
  signal: number | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
}

/** A background command: its pid in the sandbox. */
export interface CommandHandle {
  pid: number;
}

/** The connection: options, else the environment, else this machine's yun serve. */
export function resolveConnection(opts: ConnectionOptions = {}): YunClient {
  const home = yunHome();
  let server = opts.server ?? nonEmpty(process.env.YUN_SERVER);
  if (server === undefined) {
    const r = readServeRecord(home);
    server = r !== null && r.state === "listening" ? r.url : DEFAULT_SERVER;
  }
  let token = opts.token ?? nonEmpty(process.env.YUN_TOKEN);
  if (token === undefined) {
    const file = join(home, "cloud", "admin.token");
    try {
      token = readFileSync(file, "utf8").trim() || undefined;
    } catch {}
    if (token === undefined)
      throw new YunApiError(
        401,
        "unauthorized",
        `no API token: pass { token }, set YUN_TOKEN, or start yun serve once (it writes ${file})`,
      );
  }
  return new YunClient({ server, token, project: opts.project });
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === "" ? undefined : s;
}

const enc = encodeURIComponent;

/** Throws the API's error of a failed response. */
async function failure(res: Response, what: string): Promise<never> {
  let code = "error";
  let message = `${what} failed with HTTP ${res.status}`;
  try {
    const e = ((await res.json()) as { error?: { code?: string; message?: string } }).error;
    if (e?.code) code = e.code;
    if (e?.message) message = e.message;
  } catch {}
  throw new YunApiError(res.status, code, message);
}

async function send(
  client: YunClient,
  method: string,
  path: string,
  init: RequestInit & { duplex?: string },
  query: Record<string, string> = {},
): Promise<Response> {
  try {
    return await fetch(client.url(path, query), {
      ...init,
      method,
      headers: { authorization: `Bearer ${client.token}`, ...(init.headers as Record<string, string>) },
    });
  } catch (e) {
    const cause = (e as Error & { cause?: Error }).cause;
    throw new YunApiError(
      0,
      "unreachable",
      `cannot reach the Yun server at ${client.server}: ${cause?.message ?? (e as Error).message}`,
    );
  }
}

export class Commands {
  constructor(private readonly sbx: Sandbox) {}

  /** Runs `cmd` (sh -c) to its end, streaming its output to onStdout/onStderr; resolves with its exit. */
  run(cmd: string, opts: RunOpts & { background: true }): Promise<CommandHandle>;
  run(cmd: string, opts?: RunOpts): Promise<CommandResult>;
  async run(cmd: string, opts: RunOpts = {}): Promise<CommandResult | CommandHandle> {
    const client = this.sbx.client;
    const body = { cmd, envs: opts.envs, cwd: opts.cwd, background: opts.background, timeoutMs: opts.timeoutMs };
    if (opts.background) {
      return client.request<CommandHandle>("POST", `/api/v1/sandboxes/${enc(this.sbx.sandboxId)}/commands`, { body });
    }
    const res = await send(client, "POST", `/api/v1/sandboxes/${enc(this.sbx.sandboxId)}/commands`, {
      body: JSON.stringify(body),
      headers: { "content-type": "application/json" },
    });
    if (!res.ok || res.body === null) return failure(res, "running a command");
    const out: string[] = [];
    const err: string[] = [];
    // Bytes of one stream may split a UTF-8 character between chunks: one decoder per stream.
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    let pending = "";
    let exit: CommandEvent | undefined;
    const handle = (line: string): void => {
      if (line === "") return;
      const e = JSON.parse(line) as CommandEvent;
      if (e.type === "stdout" || e.type === "stderr") {
        const text = decoders[e.type].decode(Buffer.from(e.data, "base64"), { stream: true });
        if (text === "") return;
        if (e.type === "stdout") (opts.onStdout ?? ((s: string) => out.push(s)))(text);
        else (opts.onStderr ?? ((s: string) => err.push(s)))(text);
        if (e.type === "stdout" && opts.onStdout) out.push(text);
        if (e.type === "stderr" && opts.onStderr) err.push(text);
      } else exit = e;
    };
    const text = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      pending += text.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        handle(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    }
    handle(pending);
    if (exit === undefined)
      throw new YunApiError(
        0,
        "unreachable",
        `the server closed the command's stream of sandbox ${this.sbx.sandboxId} before it ended`,
      );
    if (exit.type === "error") throw new YunApiError(0, exit.code, exit.message);
    if (exit.type !== "exit") throw new YunApiError(0, "error", "unexpected event");
    return {
      exitCode: exit.exitCode,
      signal: exit.signal,
      timedOut: exit.timedOut,
      stdout: out.join(""),
      stderr: err.join(""),
    };
  }
}

export class Files {
  constructor(private readonly sbx: Sandbox) {}

  /** A file's bytes as a stream. */
  async stream(path: string): Promise<ReadableStream<Uint8Array>> {
    const res = await send(this.sbx.client, "GET", `/api/v1/sandboxes/${enc(this.sbx.sandboxId)}/files`, {}, { path });
    if (!res.ok || res.body === null) return failure(res, `reading ${path}`);
    return res.body;
  }

  /** A file as text (UTF-8), or with { format: "bytes" } as bytes. */
  read(path: string): Promise<string>;
  read(path: string, opts: { format: "bytes" }): Promise<Uint8Array>;
  async read(path: string, opts: { format?: "text" | "bytes" } = {}): Promise<string | Uint8Array> {
    const parts: Uint8Array[] = [];
    for await (const chunk of (await this.stream(path)) as unknown as AsyncIterable<Uint8Array>) parts.push(chunk);
    const bytes = Buffer.concat(parts);
    return opts.format === "bytes" ? new Uint8Array(bytes) : bytes.toString("utf8");
  }

  /** Writes a file (created or replaced) from text, bytes or a stream; resolves with the bytes written. */
  async write(path: string, data: string | Uint8Array | ReadableStream<Uint8Array>): Promise<{ bytes: number }> {
    const body = typeof data === "string" ? Buffer.from(data) : data;
    const init: RequestInit & { duplex?: string } = {
      body: body as BodyInit,
      headers: { "content-type": "application/octet-stream" },
    };
    if (!(body instanceof Uint8Array)) init.duplex = "half";
    const res = await send(this.sbx.client, "PUT", `/api/v1/sandboxes/${enc(this.sbx.sandboxId)}/files`, init, {
      path,
    });
    if (!res.ok) return failure(res, `writing ${path}`);
    return (await res.json()) as { bytes: number };
  }

  /** A directory's entries, by name. */
  async list(path: string): Promise<SandboxFile[]> {
    return (
      await this.sbx.client.request<{ items: SandboxFile[] }>(
        "GET",
        `/api/v1/sandboxes/${enc(this.sbx.sandboxId)}/files/list`,
        { query: { path } },
      )
    ).items;
  }
}

export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;

  private constructor(
    readonly client: YunClient,
    private info: SandboxInfo,
  ) {
    this.commands = new Commands(this);
    this.files = new Files(this);
  }

  get sandboxId(): string {
    return this.info.id;
  }
  /** What the server said last (state, endAt, ...). */
  get details(): SandboxInfo {
    return this.info;
  }

  /** A new sandbox, running, restored from its template (base: built on first use, which takes a boot). */
  static async create(opts: SandboxOpts = {}): Promise<Sandbox> {
    const client = resolveConnection(opts);
    const info = await client.request<SandboxInfo>("POST", "/api/v1/sandboxes", {
      body: {
        template: opts.template,
        timeoutMs: opts.timeoutMs,
        envs: opts.envs,
        metadata: opts.metadata,
        network: opts.network,
      },
    });
    return new Sandbox(client, info);
  }

  /** An existing sandbox; a paused one is resumed. */
  static async connect(sandboxId: string, opts: ConnectionOptions & { timeoutMs?: number } = {}): Promise<Sandbox> {
    const client = resolveConnection(opts);
    const info = await client.request<SandboxInfo>("POST", `/api/v1/sandboxes/${enc(sandboxId)}/resume`, {
      body: opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs },
    });
    return new Sandbox(client, info);
  }

  /** The project's sandboxes. */
  static async list(opts: ConnectionOptions = {}): Promise<SandboxInfo[]> {
    return (await resolveConnection(opts).request<{ items: SandboxInfo[] }>("GET", "/api/v1/sandboxes")).items;
  }

  /** Kills a sandbox by id. */
  static async kill(sandboxId: string, opts: ConnectionOptions = {}): Promise<void> {
    await resolveConnection(opts).request("DELETE", `/api/v1/sandboxes/${enc(sandboxId)}`);
  }

  /** Saves memory, devices and disk, and stops the VM; Sandbox.connect resumes it. */
  async pause(): Promise<void> {
    this.info = await this.client.request("POST", `/api/v1/sandboxes/${enc(this.sandboxId)}/pause`);
  }

  /** Ends the sandbox timeoutMs from now. */
  async setTimeout(timeoutMs: number): Promise<void> {
    this.info = await this.client.request("POST", `/api/v1/sandboxes/${enc(this.sandboxId)}/timeout`, {
      body: { timeoutMs },
    });
  }

  /** A second sandbox from a snapshot of this one: it sees this one's files and memory, then they diverge. */
  async fork(opts: { timeoutMs?: number } = {}): Promise<Sandbox> {
    const info = await this.client.request<SandboxInfo>("POST", `/api/v1/sandboxes/${enc(this.sandboxId)}/fork`, {
      body: opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs },
    });
    return new Sandbox(this.client, info);
  }

  /** Whether the server still has it running. */
  async isRunning(): Promise<boolean> {
    try {
      this.info = await this.client.request("GET", `/api/v1/sandboxes/${enc(this.sandboxId)}`);
      return this.info.state === "running";
    } catch (e) {
      if (e instanceof YunApiError && e.status === 404) return false;
      throw e;
    }
  }

  async kill(): Promise<void> {
    await this.client.request("DELETE", `/api/v1/sandboxes/${enc(this.sandboxId)}`);
  }
}

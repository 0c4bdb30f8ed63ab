/**
 * `yun vm`: drives running VMs from another terminal through their monitors' control sockets
 * (docs/vm-api.md).
 */
import { parseArgs } from "node:util";
import { createReadStream, createWriteStream, readFileSync } from "node:fs";
import { pipeline } from "node:stream/promises";
import { AgentError, GuestAgent } from "../vmm/agent.js";
import { join, resolve } from "node:path";
import { MonitorConnection, MonitorError, openConsole } from "../vmm/client.js";
import { findVm, listVms, type VmEntry } from "../vmm/registry.js";
import { yunHome } from "../images/paths.js";
import { checkMigrationToken, normalizeFingerprint, readMigrationTokenFile } from "../vmm/migrate.js";

const HELP = `Usage: yun vm <command> [options]

Drives VMs started with yun run, through their control API.

Commands:
  list [--json]                      running VMs
  describe NAME                      the VM's configuration and state (JSON)
  metrics NAME                       instructions, CPU and idle time, exits, disk and network counters (JSON)
  pause NAME | resume NAME           stop and continue the guest (its clock stops too)
  stop NAME                          power off (disks are flushed)
  reset NAME                         hardware reset: the guest boots again
  snapshot NAME DIR [--incremental]  save the VM to DIR; it runs on (restore: yun run --restore DIR)
  restore NAME DIR                   replace the running VM with the snapshot in DIR (same name, socket)
  migrate NAME [HOST:]PORT --token T | --token-file F [--tls-ca F | --tls-fingerprint SHA256]
                                     live-migrate to a yun run --incoming PORT (default host
                                     127.0.0.1), proving the one-time token it printed (or the
                                     token in F, mode 0600; prefer F: a command line is visible
                                     to every local user); over TLS with --tls-ca (the PEM CA or
                                     self-signed certificate to trust) or --tls-fingerprint
  cancel NAME                        cancel the VM's migration: it runs on here
  console NAME                       attach to the console (recent output first); Ctrl-] detaches
  exec NAME [-i] [--timeout S] [--cwd DIR] [--env K=V]... -- CMD [ARG]...
                                     run CMD in the guest through its agent (docs/guest-agent.md):
                                     its output streams here and yun exits with its exit code
                                     (128+N after signal N, 124 after --timeout, 125 when the
                                     agent cannot run it); -i sends this terminal's stdin to it
  files put NAME LOCAL GUEST         copy a file into the guest (LOCAL - : standard input)
  files get NAME GUEST LOCAL         copy a file out of the guest (LOCAL - : standard output)

Options:
  --socket PATH   talk to the control socket PATH instead of looking NAME up
  --json          JSON output (list)
`;

class UsageError extends Error {}

function vmsDir(): string {
  return join(yunHome(), "vms");
}

function socketOf(name: string | undefined, socket: string | undefined): string {
  if (socket !== undefined) return resolve(socket);
  if (name === undefined) throw new UsageError("a VM NAME is required");
  const e = findVm(vmsDir(), name);
  if (!e) throw new MonitorError(`no running VM named ${name} (see yun vm list)`);
  return e.apiSocket;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

async function list(json: boolean): Promise<number> {
  const entries: (VmEntry & { state?: string; memoryMiB?: number })[] = listVms(vmsDir());
  for (const e of entries) {
    try {
      const c = await MonitorConnection.connect(e.apiSocket);
      const d = await c.request<{ state: string; memoryMiB: number }>("describe").finally(() => c.close());
      e.state = d.state;
      e.memoryMiB = d.memoryMiB;
    } catch {
      e.state = "unreachable";
    }
  }
  if (json) {
    process.stdout.write(JSON.stringify(entries, null, 2) + "\n");
    return 0;
  }
  if (entries.length === 0) {
    process.stdout.write("no VMs are running\n");
    return 0;
  }
  const rows = [["NAME", "STATE", "MEMORY", "PID", "STARTED"]];
  for (const e of entries) {
    rows.push([e.name, e.state ?? "", e.memoryMiB ? `${e.memoryMiB} MiB` : "", String(e.pid), e.startedAt]);
  }
  process.stdout.write(table(rows));
  return 0;
}

async function attach(socketPath: string): Promise<number> {
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  // Unless this terminal both shows the output and types (and so answers the guest's terminal
  // queries), the monitor plays the terminal and holds piped keys until the guest's shell is ready.
  const s = await openConsole(socketPath, true, !(tty && process.stdout.isTTY === true));
  if (tty) process.stderr.write("yun: attached; Ctrl-] detaches\r\n");
  return new Promise((done) => {
    const finish = (code: number): void => {
      stdin.off("data", onKey);
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      s.destroy();
      done(code);
    };
    const onKey = (chunk: Buffer): void => {
      const at = tty ? chunk.indexOf(0x1d) : -1;
      if (at >= 0) {
        if (at > 0) s.write(chunk.subarray(0, at));
        process.stderr.write("\r\nyun: detached\r\n");
        finish(0);
        return;
      }
      s.write(chunk);
    };
    if (tty) stdin.setRawMode(true);
    stdin.on("data", onKey);
    stdin.resume();
    s.on("data", (b: Buffer) => process.stdout.write(b));
    s.on("close", () => finish(0));
    s.resume();
  });
}

/** The destination's token from --token or --token-file. */
function migrationToken(v: { token?: string; "token-file"?: string }): string {
  if (v.token !== undefined && v["token-file"] !== undefined) {
    throw new UsageError("--token and --token-file contradict each other");
  }
  if (v["token-file"] !== undefined) {
    try {
      return readMigrationTokenFile(resolve(v["token-file"]));
    } catch (e) {
      throw new UsageError(`--token-file: ${(e as Error).message}`);
    }
  }
  if (v.token === undefined) {
    throw new UsageError("migrate needs the destination's one-time token: --token T or --token-file F");
  }
  const problem = checkMigrationToken(v.token);
  if (problem) throw new UsageError(`--token: ${problem}`);
  return v.token;
}

/** The `tls` argument of a migration from --tls-ca or --tls-fingerprint, or nothing (plain TCP). */
function migrationTls(v: { "tls-ca"?: string; "tls-fingerprint"?: string }): {
  tls?: { ca?: string; fingerprint?: string };
} {
  const ca = v["tls-ca"];
  const fingerprint = v["tls-fingerprint"];
  if (ca === undefined && fingerprint === undefined) return {};
  if (ca !== undefined && fingerprint !== undefined) {
    throw new UsageError("--tls-ca and --tls-fingerprint contradict each other");
  }
  if (fingerprint !== undefined) {
    if (normalizeFingerprint(fingerprint) === null) {
      throw new UsageError("--tls-fingerprint takes the certificate's SHA-256: 64 hex digits, colons allowed");
    }
    return { tls: { fingerprint } };
  }
  try {
    return { tls: { ca: readFileSync(resolve(ca!), "utf8") } };
  } catch (e) {
    throw new UsageError(`--tls-ca: cannot read ${ca}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
}

/** The guest agent of running VM `name`. */
function agentOf(name: string | undefined): GuestAgent {
  if (name === undefined) throw new UsageError("a VM NAME is required");
  const e = findVm(vmsDir(), name);
  if (!e) throw new MonitorError(`no running VM named ${name} (see yun vm list)`);
  if (e.vsockSocket === undefined) {
    throw new MonitorError(`VM ${name} has no vsock device (it was started with --vsock none), so no guest agent`);
  }
  return new GuestAgent(e.vsockSocket);
}

/** `yun vm exec NAME [options] -- CMD...`: the command's exit code, or 124/125 (see HELP). */
async function execCommand(args: string[]): Promise<number> {
  const dash = args.indexOf("--");
  if (dash < 0 || dash === args.length - 1)
    throw new UsageError("exec needs the command after --: exec NAME -- CMD...");
  const { values: v, positionals: p } = parseArgs({
    args: args.slice(0, dash),
    allowPositionals: true,
    strict: true,
    options: {
      interactive: { type: "boolean", short: "i" },
      timeout: { type: "string" },
      cwd: { type: "string" },
      env: { type: "string", short: "e", multiple: true },
    },
  });
  if (p.length !== 1) throw new UsageError("exec takes one NAME before --");
  const env: Record<string, string> = {};
  for (const e of v.env ?? []) {
    const eq = e.indexOf("=");
    if (eq <= 0) throw new UsageError(`--env takes NAME=VALUE, got "${e}"`);
    env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  let timeoutMs: number | undefined;
  if (v.timeout !== undefined) {
    const t = Number(v.timeout);
    if (!(t > 0)) throw new UsageError(`--timeout takes seconds above 0, got "${v.timeout}"`);
    timeoutMs = t * 1000;
  }
  const agent = agentOf(p[0]);
  let r;
  try {
    r = await agent.exec(args.slice(dash + 1), {
      env,
      cwd: v.cwd,
      timeoutMs,
      stdin: v.interactive ? (process.stdin as AsyncIterable<Uint8Array>) : undefined,
      onStdout: (b) => process.stdout.write(b),
      onStderr: (b) => process.stderr.write(b),
    });
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    process.stderr.write(`yun vm exec: ${e.message}\n`);
    return 125;
  } finally {
    if (v.interactive) process.stdin.destroy();
  }
  if (r.timedOut) {
    process.stderr.write(`yun vm exec: the command ran out of time (${v.timeout} s) and was killed\n`);
    return 124;
  }
  return r.exitCode ?? 128 + (r.signal ?? 0);
}

/** `yun vm files put|get NAME SRC DST`. */
async function filesCommand(args: string[]): Promise<number> {
  const [verb, name, src, dst, extra] = args;
  if ((verb !== "put" && verb !== "get") || dst === undefined || extra !== undefined) {
    throw new UsageError("files takes put NAME LOCAL GUEST or get NAME GUEST LOCAL");
  }
  const agent = agentOf(name);
  try {
    if (verb === "put") {
      const input = src === "-" ? process.stdin : createReadStream(resolve(src));
      await agent.writeFile(dst, input as AsyncIterable<Uint8Array>);
    } else {
      const stream = await agent.readStream(src);
      await pipeline(stream, dst === "-" ? process.stdout : createWriteStream(resolve(dst)));
    }
    return 0;
  } catch (e) {
    if (!(e instanceof AgentError) && !(e as NodeJS.ErrnoException).code) throw e;
    process.stderr.write(`yun vm files: ${(e as Error).message}\n`);
    return 1;
  }
}

export async function vmCommand(args: string[]): Promise<number> {
  try {
    if (args[0] === "exec") return await execCommand(args.slice(1));
    if (args[0] === "files") return await filesCommand(args.slice(1));
  } catch (e) {
    if (e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`yun vm: ${(e as Error).message.split(". ")[0]} (see yun vm --help)\n`);
      return 2;
    }
    if (e instanceof MonitorError) {
      process.stderr.write(`yun vm: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: "boolean" },
        incremental: { type: "boolean" },
        socket: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        "tls-ca": { type: "string" },
        "tls-fingerprint": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    process.stderr.write(`yun vm: ${(e as Error).message.split(". ")[0]} (see yun vm --help)\n`);
    return 2;
  }
  const { values: v, positionals: p } = parsed;
  const [command, name, extra] = p;
  if (v.help || command === undefined || command === "help") {
    process.stdout.write(HELP);
    return command === undefined && !v.help ? 2 : 0;
  }
  try {
    const simple: Record<string, string> = {
      describe: "describe",
      metrics: "metrics",
      pause: "pause",
      resume: "resume",
      stop: "stop",
      reset: "reset",
      cancel: "cancel",
    };
    const stray = ["token", "token-file", "tls-ca", "tls-fingerprint"].find((k) => k in v);
    if (stray && command !== "migrate") throw new UsageError(`--${stray} goes with migrate`);
    if (command === "list") return await list(v.json === true);
    if (command === "console") return await attach(socketOf(name, v.socket));
    // The request, checked before the VM is looked up.
    let op: string;
    let args: Record<string, unknown> = {};
    let timeoutMs = 15_000;
    if (Object.hasOwn(simple, command)) {
      if (extra !== undefined) throw new UsageError(`${command} takes one NAME`);
      op = simple[command];
    } else if (command === "snapshot" || command === "restore") {
      if (extra === undefined) throw new UsageError(`${command} needs NAME and DIR`);
      op = command;
      args =
        command === "snapshot" ? { dir: resolve(extra), incremental: v.incremental === true } : { dir: resolve(extra) };
      timeoutMs = 600_000;
    } else if (command === "migrate") {
      const m = extra === undefined ? null : /^(?:(.+):)?(\d{1,5})$/.exec(extra);
      if (!m || Number(m[2]) > 65535) throw new UsageError("migrate needs NAME and [HOST:]PORT");
      op = "migrate";
      args = { host: m[1] ?? "127.0.0.1", port: Number(m[2]), token: migrationToken(v), ...migrationTls(v) };
      timeoutMs = 3_600_000;
    } else {
      throw new UsageError(`unknown command "${command}"`);
    }
    const client = await MonitorConnection.connect(socketOf(name, v.socket));
    try {
      const result = await client.request(op, args, timeoutMs);
      process.stdout.write(JSON.stringify(result, null, 2) + "\n");
      return 0;
    } finally {
      client.close();
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`yun vm: ${e.message} (see yun vm --help)\n`);
      return 2;
    }
    if (e instanceof MonitorError) {
      process.stderr.write(`yun vm: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

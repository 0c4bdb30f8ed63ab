/**
 * `yun sandbox` and `yun template` (docs/sandboxes.md): the SDK (src/sdk) from the shell, with the
 * server and token found as for every cloud command (--server/--token, YUN_SERVER/YUN_TOKEN, the
 * local yun serve).
 */
import { createReadStream, createWriteStream, existsSync, statSync } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { Sandbox, YunApiError, type SandboxInfo, type Template } from "../sdk/index.js";
import { formatTable, resolveServer, resolveToken } from "./cloud.js";

class UsageError extends Error {}

const COMMON = {
  server: { type: "string" },
  token: { type: "string" },
  project: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const SANDBOX_HELP = `Usage: yun sandbox <command> [options]

Sandboxes: VMs restored in a moment from a template's snapshot, driven through their guest agent.

Commands:
  create [--template T] [--timeout SECONDS] [--network nat|none] [-e K=V]... [--json]
      start one (template default: base, built on first use); prints its id
  exec ID [--cwd DIR] [-e K=V]... -- CMD [ARG...]
      run a command: its output streams here, yun exits with its exit code
  files put ID SRC DST | files get ID SRC DST
      copy a file in or out (DST - : standard output)
  pause ID | resume ID | fork ID | kill ID
      pause (memory and disk saved, VM stopped), resume, fork (prints the new id), kill
  timeout ID SECONDS
      end it SECONDS from now
  list [--json]

Options for every command: --server URL, --token TOKEN, --project P (admins).
`;

const TEMPLATE_HELP = `Usage: yun template <command> [options]

Templates: an image booted once, commands run in it, then snapshotted; sandboxes restore from it.

Commands:
  build NAME [--from IMAGE] [--run CMD]... [--memory MIB]
      boot IMAGE (default debian-tiny), run each CMD (sh -c) through the guest agent, snapshot;
      waits until it is ready
  list [--json]
  delete NAME

Options for every command: --server URL, --token TOKEN, --project P (admins).
`;

function connection(v: { server?: string; token?: string; project?: string }) {
  return { server: resolveServer(v.server), token: resolveToken(v.token), project: v.project };
}

function parse<O extends Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>>(
  args: string[],
  options: O,
) {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message.split(". ")[0].replace(/\.$/, ""));
  }
}

function envs(list: string[] | undefined): Record<string, string> | undefined {
  if (list === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const kv of list) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new UsageError(`-e takes NAME=VALUE, got "${kv}"`);
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function need(positionals: string[], n: number, usage: string): void {
  if (positionals.length < n) throw new UsageError(`missing arguments: ${usage}`);
  if (positionals.length > n) throw new UsageError(`unexpected argument "${positionals[n]}": ${usage}`);
}

/** A command line as one shell command: one argument is taken as written, several are quoted. */
function shellCommand(argv: string[]): string {
  if (argv.length === 1) return argv[0];
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}

function sandboxRows(items: SandboxInfo[]): string {
  return formatTable(
    ["ID", "STATE", "TEMPLATE", "NETWORK", "MEMORY", "ENDS"],
    items.map((s) => [s.id, s.state, s.template, s.network, `${s.memoryMiB} MiB`, s.endAt ?? "-"]),
  );
}

async function sandboxCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    (sub === undefined ? process.stderr : process.stdout).write(SANDBOX_HELP);
    return sub === undefined ? 2 : 0;
  }
  switch (sub) {
    case "create": {
      const { values: v, positionals } = parse(rest, {
        template: { type: "string" },
        timeout: { type: "string" },
        network: { type: "string" },
        env: { type: "string", short: "e", multiple: true },
      });
      need(positionals, 0, "yun sandbox create [--template T]");
      if (v.network !== undefined && v.network !== "nat" && v.network !== "none")
        throw new UsageError(`--network is nat or none, not "${v.network}"`);
      const timeout = v.timeout === undefined ? undefined : Number(v.timeout);
      if (timeout !== undefined && !(Number.isFinite(timeout) && timeout >= 1))
        throw new UsageError(`--timeout takes seconds, got "${v.timeout}"`);
      const s = await Sandbox.create({
        ...connection(v),
        template: v.template,
        timeoutMs: timeout === undefined ? undefined : Math.round(timeout * 1000),
        network: v.network as "nat" | "none" | undefined,
        envs: envs(v.env),
      });
      process.stdout.write(v.json ? JSON.stringify(s.details, null, 2) + "\n" : s.sandboxId + "\n");
      return 0;
    }
    case "exec": {
      const dash = rest.indexOf("--");
      const own = dash < 0 ? rest : rest.slice(0, dash);
      const argv = dash < 0 ? [] : rest.slice(dash + 1);
      const { values: v, positionals } = parse(own, {
        cwd: { type: "string" },
        env: { type: "string", short: "e", multiple: true },
      });
      need(positionals, 1, "yun sandbox exec ID -- CMD [ARG...]");
      if (argv.length === 0) throw new UsageError("no command: yun sandbox exec ID -- CMD [ARG...]");
      const c = connection(v);
      const s = await Sandbox.connect(positionals[0], c);
      const r = await s.commands.run(shellCommand(argv), {
        cwd: v.cwd,
        envs: envs(v.env),
        onStdout: (d) => process.stdout.write(d),
        onStderr: (d) => process.stderr.write(d),
      });
      if (r.timedOut) return 124;
      return r.exitCode ?? 128 + (r.signal ?? 0);
    }
    case "files": {
      const [dir, ...more] = rest;
      const { values: v, positionals } = parse(more, {});
      if (dir !== "put" && dir !== "get") throw new UsageError("yun sandbox files put|get ID SRC DST");
      need(positionals, 3, `yun sandbox files ${dir} ID SRC DST`);
      const [id, src, dst] = positionals;
      const s = await Sandbox.connect(id, connection(v));
      if (dir === "put") {
        if (!existsSync(src) || !statSync(src).isFile()) throw new UsageError(`${src} is not a file`);
        const body = Readable.toWeb(createReadStream(src)) as unknown as ReadableStream<Uint8Array>;
        const r = await s.files.write(dst, body);
        process.stderr.write(`${r.bytes} bytes written to ${id}:${dst}\n`);
      } else {
        const stream = Readable.fromWeb((await s.files.stream(src)) as never);
        await pipeline(stream, dst === "-" ? process.stdout : createWriteStream(dst));
      }
      return 0;
    }
    case "pause":
    case "resume":
    case "fork":
    case "kill": {
      const { values: v, positionals } = parse(rest, {});
      need(positionals, 1, `yun sandbox ${sub} ID`);
      const c = connection(v);
      if (sub === "kill") {
        await Sandbox.kill(positionals[0], c);
        return 0;
      }
      const s = await Sandbox.connect(positionals[0], c);
      if (sub === "pause") await s.pause();
      if (sub === "fork") {
        const child = await s.fork();
        process.stdout.write(v.json ? JSON.stringify(child.details, null, 2) + "\n" : child.sandboxId + "\n");
      } else if (v.json) process.stdout.write(JSON.stringify(s.details, null, 2) + "\n");
      return 0;
    }
    case "timeout": {
      const { values: v, positionals } = parse(rest, {});
      need(positionals, 2, "yun sandbox timeout ID SECONDS");
      const seconds = Number(positionals[1]);
      if (!(Number.isFinite(seconds) && seconds >= 1))
        throw new UsageError(`SECONDS must be 1 or more, got "${positionals[1]}"`);
      const c = connection(v);
      const client = (await import("../sdk/index.js")).resolveConnection(c);
      await client.request("POST", `/api/v1/sandboxes/${encodeURIComponent(positionals[0])}/timeout`, {
        body: { timeoutMs: Math.round(seconds * 1000) },
      });
      return 0;
    }
    case "list":
    case "ls": {
      const { values: v, positionals } = parse(rest, {});
      need(positionals, 0, "yun sandbox list");
      const items = await Sandbox.list(connection(v));
      process.stdout.write(v.json ? JSON.stringify(items, null, 2) + "\n" : sandboxRows(items));
      return 0;
    }
    default:
      throw new UsageError(
        `unknown command "${sub}"; expected create, exec, files, pause, resume, fork, kill, timeout or list`,
      );
  }
}

async function templateCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    (sub === undefined ? process.stderr : process.stdout).write(TEMPLATE_HELP);
    return sub === undefined ? 2 : 0;
  }
  const { resolveConnection } = await import("../sdk/index.js");
  switch (sub) {
    case "build": {
      const { values: v, positionals } = parse(rest, {
        from: { type: "string" },
        run: { type: "string", multiple: true },
        memory: { type: "string" },
      });
      need(positionals, 1, "yun template build NAME [--from IMAGE] [--run CMD]...");
      const memory = v.memory === undefined ? undefined : Number(v.memory);
      if (memory !== undefined && !Number.isInteger(memory))
        throw new UsageError(`--memory takes MiB, got "${v.memory}"`);
      const client = resolveConnection(connection(v));
      let t = await client.request<Template>("POST", "/api/v1/templates", {
        body: { name: positionals[0], from: v.from, run: v.run, memoryMiB: memory },
      });
      process.stderr.write(`building template ${t.name} (${t.id}) from ${t.image}...\n`);
      while (t.state === "building") {
        await new Promise((r) => setTimeout(r, 1000));
        t = await client.request<Template>("GET", `/api/v1/templates/${t.id}`);
      }
      if (t.state === "error") {
        process.stderr.write(`yun: template ${t.name} failed to build: ${t.error}\n`);
        return 1;
      }
      process.stdout.write(v.json ? JSON.stringify(t, null, 2) + "\n" : `${t.id}\n`);
      return 0;
    }
    case "list":
    case "ls": {
      const { values: v, positionals } = parse(rest, {});
      need(positionals, 0, "yun template list");
      const items = (await resolveConnection(connection(v)).request<{ items: Template[] }>("GET", "/api/v1/templates"))
        .items;
      process.stdout.write(
        v.json
          ? JSON.stringify(items, null, 2) + "\n"
          : formatTable(
              ["ID", "NAME", "IMAGE", "STATE", "MEMORY", "COMMANDS"],
              items.map((t) => [t.id, t.name, t.image, t.state, `${t.memoryMiB} MiB`, t.run.length]),
            ),
      );
      return 0;
    }
    case "delete":
    case "rm": {
      const { values: v, positionals } = parse(rest, {});
      need(positionals, 1, "yun template delete NAME");
      await resolveConnection(connection(v)).request(
        "DELETE",
        `/api/v1/templates/${encodeURIComponent(positionals[0])}`,
      );
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${sub}"; expected build, list or delete`);
  }
}

/** Entry point for `yun sandbox ...` and `yun template ...`; answers the exit code. */
export async function sandboxCli(noun: "sandbox" | "template", args: string[]): Promise<number> {
  try {
    return noun === "sandbox" ? await sandboxCommand(args) : await templateCommand(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`yun ${noun}: ${e.message} (see yun ${noun} --help)\n`);
      return 2;
    }
    if (e instanceof YunApiError) {
      process.stderr.write(`yun: ${e.message}\n`);
      return e.status === 0 ? 125 : 1;
    }
    throw e;
  }
}

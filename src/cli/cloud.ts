/**
 * The cloud commands of `yun`: one noun per API resource (`yun instance create ...`, `yun volume
 * attach ...`), `yun usage`, `yun events` and `yun console NAME`, all built on the typed SDK
 * (src/cloud/client.ts). Tables by default, the API's JSON with --json. Names or IDs are accepted
 * wherever a resource is named (the server resolves both).
 *
 * Exit codes: 0 success; 1 the API refused (its one-sentence message is printed) or the server is
 * unreachable; 2 bad flags or arguments (with the command's usage).
 */
import { DEFAULT_IMAGE } from "../images/pull.js";
import { parseArgs, type ParseArgsConfig } from "node:util";
import {
  closeSync,
  createReadStream,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { Readable } from "node:stream";
import { join } from "node:path";
import WebSocket from "ws";
import { randomBytes } from "node:crypto";
import { startVncProxy } from "./vnc-proxy.js";
import { makePrivateDir } from "../storage/private.js";
import { DEFAULT_SERVER, YunApiError, YunClient } from "../cloud/client.js";
import type { Instance, Project, QuotaUsage, Quotas, Role, Usage, Volume } from "../cloud/types.js";
import { yunHome } from "../images/paths.js";
import { generateKeyPair, privateKeyOf, runSsh } from "./ssh.js";
import { serveUrlWhenListening } from "../cloud/endpoint.js";

type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | string[] | undefined>;

/** Wrong flags or arguments: exit 2 with the command's usage. */
export class UsageError extends Error {}

interface Ctx {
  values: Values;
  args: string[];
  json: boolean;
  /** The SDK client (created lazily: --help and usage errors need no token). */
  client(): YunClient;
}

interface Sub {
  /** Positional arguments and flags, for the usage line. */
  usage: string;
  summary: string;
  options?: Options;
  /** How many positionals: [min, max]. */
  arity: [number, number];
  run(ctx: Ctx): Promise<number | void>;
}

interface Noun {
  summary: string;
  subs: Record<string, Sub>;
  /** The sub-command run when none is given (e.g. `yun usage`). */
  implicit?: string;
}

const COMMON: Options = {
  server: { type: "string" },
  token: { type: "string" },
  project: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
};

const COMMON_HELP = `Common options:
  --server URL     the API (default: $YUN_SERVER, else the running yun serve of $YUN_HOME,
                   else ${DEFAULT_SERVER})
  --token TOKEN    the API token (default: $YUN_TOKEN, else $YUN_HOME/cloud/admin.token)
  --project P      admins: act in project P (name or ID)
  --json           print the API's JSON instead of a table
  -h, --help       show this help`;

// ------------------------------------------------------------------------------------ output

/** Where the commands write: stdout and stderr (tests redirect these). */
export const io = {
  out: (s: string | Uint8Array): void => void process.stdout.write(s),
  err: (s: string): void => void process.stderr.write(s),
};

function out(text: string): void {
  io.out(text.endsWith("\n") ? text : text + "\n");
}

function json(value: unknown): void {
  out(JSON.stringify(value, null, 2));
}

/** Renders rows as aligned columns under a header; the last column is not padded. */
export function formatTable(headers: string[], rows: (string | number | null | undefined)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? "" : String(c))))];
  const widths = headers.map((_, c) => Math.max(...cells.map((r) => (r[c] ?? "").length)));
  return (
    cells
      .map((r) =>
        r
          .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!)))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

/** Renders one object as `field  value` lines (arrays joined, nested objects as JSON). */
export function formatRecord(obj: object): string {
  const entries = Object.entries(obj).map(([k, v]): [string, string] => {
    if (v === null || v === undefined) return [k, "-"];
    if (Array.isArray(v))
      return [
        k,
        v.length === 0 ? "-" : v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", "),
      ];
    if (typeof v === "object") return [k, JSON.stringify(v)];
    return [k, String(v)];
  });
  const w = Math.max(...entries.map(([k]) => k.length));
  return entries.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n") + "\n";
}

function shortTime(iso: string | undefined): string {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function show(ctx: Ctx, obj: object): void {
  if (ctx.json) json(obj);
  else out(formatRecord(obj));
}

function list<T>(ctx: Ctx, items: T[], headers: string[], row: (t: T) => (string | number | null | undefined)[]): void {
  if (ctx.json) json({ items });
  else out(formatTable(headers, items.map(row)));
}

export function instanceRows(items: Instance[]): (string | number)[][] {
  return items.map((i) => [
    i.id,
    i.name,
    i.state,
    i.image,
    i.flavor,
    i.vcpus,
    `${i.memoryMiB} MiB`,
    (i.addresses ?? []).join(","),
  ]);
}
const INSTANCE_HEADERS = ["ID", "NAME", "STATE", "IMAGE", "FLAVOR", "VCPUS", "MEMORY", "ADDRESSES"];

function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

// ------------------------------------------------------------------------------- argument helpers

function str(ctx: Ctx, name: string): string | undefined {
  const v = ctx.values[name];
  return typeof v === "string" ? v : undefined;
}

function need(ctx: Ctx, name: string): string {
  const v = str(ctx, name);
  if (v === undefined || v === "") throw new UsageError(`--${name} is required`);
  return v;
}

/** An integer flag; `min` is the smallest accepted value. */
function int(ctx: Ctx, name: string, min = 0): number | undefined {
  const v = str(ctx, name);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min)
    throw new UsageError(`--${name} must be a whole number ≥ ${min}, got "${v}"`);
  return Number(v);
}

/** Reads a file argument ("-" is stdin). Unreadable files are a usage error naming the file. */
function readText(path: string): string {
  try {
    return readFileSync(path === "-" ? 0 : path, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The token: --token, then $YUN_TOKEN, then $YUN_HOME/cloud/admin.token. */
export function resolveToken(flag: string | undefined): string {
  if (flag !== undefined && flag !== "") return flag;
  const env = process.env.YUN_TOKEN;
  if (env !== undefined && env !== "") return env;
  const file = join(yunHome(), "cloud", "admin.token");
  try {
    const t = readFileSync(file, "utf8").trim();
    if (t !== "") return t;
  } catch {}
  throw new YunApiError(
    401,
    "unauthorized",
    `no API token: pass --token, set YUN_TOKEN, or start yun serve once (it writes ${file})`,
  );
}

/** How long the CLI waits for a yun serve that is still starting (opening its state,
 *  re-attaching to VMs) before it gives up. */
const SERVE_START_WAIT_MS = 60_000;

/** The server: --server, then $YUN_SERVER, then the running yun serve of $YUN_HOME (its record
 *  in $YUN_HOME/cloud/serve.json; one still starting is waited for), then the default. */
export function resolveServer(flag: string | undefined): string {
  const env = process.env.YUN_SERVER;
  let s = flag ?? (env !== undefined && env !== "" ? env : undefined);
  if (s === undefined) {
    const running = serveUrlWhenListening(yunHome(), SERVE_START_WAIT_MS);
    if (running !== null && "startingPid" in running)
      throw new YunApiError(
        0,
        "starting",
        `yun serve (pid ${running.startingPid}) has been starting for over ${SERVE_START_WAIT_MS / 1000} s and does not listen yet; try again once it prints "listening on"`,
      );
    s = running?.url ?? DEFAULT_SERVER;
  }
  if (!/^https?:\/\/[^/]+/.test(s)) throw new UsageError(`--server must be an http:// or https:// URL, got "${s}"`);
  return s;
}

// ---------------------------------------------------------------------------------- instances

async function instanceAction(ctx: Ctx, action: "start" | "stop" | "reboot" | "pause" | "resume"): Promise<void> {
  const c = ctx.client();
  const done: Instance[] = [];
  for (const name of ctx.args) done.push(await c.instanceAction(name, action));
  if (ctx.json) json(done.length === 1 ? done[0] : { items: done });
  else for (const i of done) out(`${i.name}: ${i.state}`);
}

const instance: Noun = {
  summary: "create, list and control virtual machines",
  subs: {
    create: {
      usage:
        "[NAME] [--image IMAGE] [--flavor FLAVOR] [--name NAME] [--network NET] [--key KEY] [--user-data FILE] [--volume VOL]... [--display none|vnc] [--stopped] [--wait]",
      summary:
        "create an instance and boot it (--stopped: do not boot; --wait: until running; --display vnc: a graphical display, shown in the dashboard)",
      options: {
        name: { type: "string" },
        image: { type: "string" },
        flavor: { type: "string" },
        network: { type: "string" },
        "key-pair": { type: "string" },
        key: { type: "string" },
        "user-data": { type: "string" },
        volume: { type: "string", multiple: true },
        display: { type: "string" },
        stopped: { type: "boolean" },
        wait: { type: "boolean" },
      },
      arity: [0, 1],
      async run(ctx) {
        const flagName = str(ctx, "name");
        if (flagName !== undefined && ctx.args[0] !== undefined && flagName !== ctx.args[0]) {
          throw new UsageError(`two names given: "${ctx.args[0]}" and --name "${flagName}"`);
        }
        const name = flagName ?? ctx.args[0];
        if (name === undefined) throw new UsageError("a name is required (NAME or --name NAME)");
        // The defaults: the full Debian image, with room for systemd, cloud-init and apt.
        const image = str(ctx, "image") ?? DEFAULT_IMAGE;
        const flavor = str(ctx, "flavor") ?? "medium";
        const keyPair = str(ctx, "key") ?? str(ctx, "key-pair");
        if (str(ctx, "key") !== undefined && str(ctx, "key-pair") !== undefined)
          throw new UsageError("--key and --key-pair are the same flag; give one");
        const userDataFile = str(ctx, "user-data");
        const userData = userDataFile === undefined ? undefined : readText(userDataFile);
        const volumes = ctx.values.volume as string[] | undefined;
        const display = str(ctx, "display");
        if (display !== undefined && display !== "none" && display !== "vnc")
          throw new UsageError(`--display takes none or vnc, got "${display}"`);
        const c = ctx.client();
        let i = await c.createInstance({
          name,
          image,
          flavor,
          network: str(ctx, "network"),
          keyPair,
          userData,
          volumes,
          display,
          start: ctx.values.stopped === true ? false : undefined,
        });
        if (ctx.values.wait === true && ctx.values.stopped !== true)
          i = await c.waitForState(i.id, ["running", "error"], 120_000);
        show(ctx, i);
        return i.state === "error" ? 1 : 0;
      },
    },
    list: {
      usage: "",
      summary: "list instances",
      arity: [0, 0],
      async run(ctx) {
        const items = await ctx.client().listInstances();
        if (ctx.json) json({ items });
        else out(formatTable(INSTANCE_HEADERS, instanceRows(items)));
      },
    },
    show: {
      usage: "NAME",
      summary: "show one instance",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().getInstance(ctx.args[0]!));
      },
    },
    vnc: {
      usage: "NAME [--listen [ADDR:]PORT] [--password-file FILE]",
      summary:
        "serve an instance's display to any VNC client on this machine (127.0.0.1, any free port, unless --listen says\n" +
        "      otherwise) with VNC authentication: the password is --password-file's first line, else a new one in a\n" +
        "      0600 file under $YUN_HOME/vnc; carried over the API's display WebSocket; runs until interrupted",
      options: { listen: { type: "string" }, "password-file": { type: "string" } },
      arity: [1, 1],
      run: (ctx) => serveInstanceVnc(ctx),
    },
    ssh: {
      usage: "NAME [--user USER] [-i KEY] [-- COMMAND...]",
      summary:
        "SSH into an instance through its SSH forward with the host's ssh (key: -i, else the key pair's private key from yun keypair create, else ssh's own)",
      options: { user: { type: "string", short: "l" }, identity: { type: "string", short: "i" } },
      arity: [1, 999],
      async run(ctx) {
        const c = ctx.client();
        const i = await c.getInstance(ctx.args[0]!);
        if (i.state !== "running")
          throw new YunApiError(409, "conflict", `instance ${i.name} is ${i.state}, not running`);
        const f = (await c.listForwards(i.id)).find((x) => x.guestPort === 22);
        if (!f)
          throw new YunApiError(
            409,
            "conflict",
            `instance ${i.name} has no forward to its port 22 (add one: yun forward add ${i.name} 22)`,
          );
        // The forward listens on the server's machine: its loopback is ours only when the server's is.
        const server = new URL(resolveServer(str(ctx, "server")));
        const serverHost = server.hostname.replace(/^\[|\]$/g, "");
        const local = /^(127\.|localhost$|::1$)/.test(serverHost);
        let host = f.hostAddr === "0.0.0.0" ? (local ? "127.0.0.1" : serverHost) : f.hostAddr;
        if (f.hostAddr === "127.0.0.1" && !local) host = serverHost;
        const identity = str(ctx, "identity") ?? (i.keyPair ? privateKeyOf(i.keyPair) : undefined);
        // The full Debian image's cloud-init puts the keys on its default user, debian (sudo).
        const user = str(ctx, "user") ?? (i.image === "debian" ? "debian" : "root");
        try {
          return await runSsh({ host, port: f.hostPort, user, alias: i.id, identity }, ctx.args.slice(1));
        } catch (e) {
          throw new YunApiError(0, "ssh", (e as Error).message);
        }
      },
    },
    start: {
      usage: "NAME...",
      summary: "boot stopped instances",
      arity: [1, 99],
      run: (ctx) => instanceAction(ctx, "start"),
    },
    stop: {
      usage: "NAME...",
      summary: "power instances off",
      arity: [1, 99],
      run: (ctx) => instanceAction(ctx, "stop"),
    },
    reboot: {
      usage: "NAME...",
      summary: "reset instances",
      arity: [1, 99],
      run: (ctx) => instanceAction(ctx, "reboot"),
    },
    pause: {
      usage: "NAME...",
      summary: "freeze instances",
      arity: [1, 99],
      run: (ctx) => instanceAction(ctx, "pause"),
    },
    resume: {
      usage: "NAME...",
      summary: "continue paused instances",
      arity: [1, 99],
      run: (ctx) => instanceAction(ctx, "resume"),
    },
    resize: {
      usage: "NAME --flavor FLAVOR",
      summary: "give an instance another flavor",
      options: { flavor: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().resizeInstance(ctx.args[0]!, need(ctx, "flavor")));
      },
    },
    delete: {
      usage: "NAME...",
      summary: "delete instances (their root disks go with them)",
      arity: [1, 99],
      async run(ctx) {
        const c = ctx.client();
        for (const name of ctx.args) {
          await c.deleteInstance(name);
          if (!ctx.json) out(`${name}: deleted`);
        }
        if (ctx.json) json({ deleted: ctx.args });
      },
    },
    log: {
      usage: "NAME [--bytes N]",
      summary: "print the instance's recent console output",
      options: { bytes: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        const text = await ctx.client().consoleLog(ctx.args[0]!, int(ctx, "bytes", 1));
        io.out(text);
      },
    },
    console: {
      usage: "NAME",
      summary: "attach this terminal to the instance's serial console (Ctrl-] detaches)",
      arity: [1, 1],
      run: (ctx) => attachConsole(ctx),
    },
    "attach-share": {
      usage: "INSTANCE SHARE [--read-only]",
      summary: "attach a share (mounted over virtio-9p from the instance's next start)",
      options: { "read-only": { type: "boolean" } },
      arity: [2, 2],
      async run(ctx) {
        const s = await ctx.client().attachShare(ctx.args[0]!, ctx.args[1]!, ctx.values["read-only"] === true);
        if (ctx.json) json(s);
        else
          out(
            `${s.name}: attached to ${ctx.args[0]}${ctx.values["read-only"] === true ? " read-only" : ""} from its next start; ` +
              `in the guest: mount -t 9p -o trans=virtio,version=9p2000.L ${s.tag} /mnt`,
          );
      },
    },
    "detach-share": {
      usage: "INSTANCE SHARE",
      summary: "detach a share (from the instance's next start)",
      arity: [2, 2],
      async run(ctx) {
        const s = await ctx.client().detachShare(ctx.args[0]!, ctx.args[1]!);
        if (ctx.json) json(s);
        else out(`${s.name}: detached from ${ctx.args[0]}`);
      },
    },
  },
};

// ------------------------------------------------------------------------------------- shares

const share: Noun = {
  summary: "shared file systems that instances mount at once (virtio-9p)",
  subs: {
    create: {
      usage: "NAME",
      summary: "create an empty share (its name is the guest's mount tag)",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().createShare(ctx.args[0]!));
      },
    },
    list: {
      usage: "",
      summary: "list shares",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listShares(), ["ID", "NAME", "ATTACHED", "CREATED"], (s) => [
          s.id,
          s.name,
          s.attachments.map((a) => (a.readOnly ? `${a.instance}:ro` : a.instance)).join(","),
          shortTime(s.createdAt),
        ]);
      },
    },
    show: {
      usage: "SHARE",
      summary: "show one share",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().getShare(ctx.args[0]!));
      },
    },
    delete: {
      usage: "SHARE...",
      summary: "delete shares and their files (detach them first)",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteShare(n)),
    },
  },
};

// ------------------------------------------------------------------------------------ volumes

const VOLUME_HEADERS = ["ID", "NAME", "SIZE", "STATE", "INSTANCE"];
const volumeRow = (v: Volume): (string | number)[] => [v.id, v.name, `${v.sizeGiB} GiB`, v.state, v.instance ?? ""];

const volume: Noun = {
  summary: "block storage: create, attach, snapshot",
  subs: {
    create: {
      usage: "NAME (--size GIB | --snapshot SNAPSHOT)",
      summary: "create a blank volume, or a copy-on-write clone of a snapshot",
      options: { size: { type: "string" }, snapshot: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        const sizeGiB = int(ctx, "size", 1);
        const snapshot = str(ctx, "snapshot");
        if (sizeGiB === undefined && snapshot === undefined)
          throw new UsageError("--size GIB or --snapshot SNAPSHOT is required");
        show(ctx, await ctx.client().createVolume({ name: ctx.args[0]!, sizeGiB, snapshot }));
      },
    },
    list: {
      usage: "",
      summary: "list volumes",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listVolumes(), VOLUME_HEADERS, volumeRow);
      },
    },
    show: {
      usage: "VOLUME",
      summary: "show one volume",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().getVolume(ctx.args[0]!));
      },
    },
    attach: {
      usage: "VOLUME INSTANCE",
      summary: "attach a volume to a stopped instance (the next /dev/vdX at its next start)",
      arity: [2, 2],
      async run(ctx) {
        const v = await ctx.client().attachVolume(ctx.args[0]!, ctx.args[1]!);
        if (ctx.json) json(v);
        else out(`${v.name}: attached to ${ctx.args[1]}`);
      },
    },
    detach: {
      usage: "VOLUME",
      summary: "detach a volume",
      arity: [1, 1],
      async run(ctx) {
        const v = await ctx.client().detachVolume(ctx.args[0]!);
        if (ctx.json) json(v);
        else out(`${v.name}: ${v.state}`);
      },
    },
    snapshot: {
      usage: "VOLUME [SNAPSHOT] [--name SNAPSHOT]",
      summary: "take a snapshot of a volume",
      options: { name: { type: "string" } },
      arity: [1, 2],
      async run(ctx) {
        const name = str(ctx, "name") ?? ctx.args[1];
        if (name === undefined) throw new UsageError("a snapshot name is required (SNAPSHOT or --name SNAPSHOT)");
        show(ctx, await ctx.client().createSnapshot(ctx.args[0]!, name));
      },
    },
    snapshots: {
      usage: "",
      summary: "list snapshots",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listSnapshots(), ["ID", "NAME", "VOLUME", "SIZE", "CREATED"], (s) => [
          s.id,
          s.name,
          s.volume,
          `${s.sizeGiB} GiB`,
          shortTime(s.createdAt),
        ]);
      },
    },
    delete: {
      usage: "VOLUME...",
      summary: "delete volumes",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteVolume(n)),
    },
  },
};

async function deleteEach(ctx: Ctx, f: (c: YunClient, name: string) => Promise<void>): Promise<void> {
  const c = ctx.client();
  for (const name of ctx.args) {
    await f(c, name);
    if (!ctx.json) out(`${name}: deleted`);
  }
  if (ctx.json) json({ deleted: ctx.args });
}

// ------------------------------------------------------------------- networks, flavors, keys

const network: Noun = {
  summary: "private networks (an L2 segment with DHCP inside)",
  subs: {
    create: {
      usage: "NAME --cidr CIDR",
      summary: "create a network, e.g. --cidr 10.1.0.0/24",
      options: { cidr: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().createNetwork({ name: ctx.args[0]!, cidr: need(ctx, "cidr") }));
      },
    },
    list: {
      usage: "",
      summary: "list networks",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listNetworks(), ["ID", "NAME", "CIDR", "GATEWAY"], (n) => [
          n.id,
          n.name,
          n.cidr,
          n.gateway,
        ]);
      },
    },
    delete: {
      usage: "NAME...",
      summary: "delete networks",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteNetwork(n)),
    },
  },
};

const flavor: Noun = {
  summary: "instance sizes",
  subs: {
    list: {
      usage: "",
      summary: "list flavors",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listFlavors(), ["ID", "NAME", "VCPUS", "MEMORY", "DISK"], (f) => [
          f.id,
          f.name,
          f.vcpus,
          `${f.memoryMiB} MiB`,
          `${f.diskGiB} GiB`,
        ]);
      },
    },
    create: {
      usage: "NAME --vcpus N --memory MIB --disk GIB",
      summary: "create a flavor (admins)",
      options: { vcpus: { type: "string" }, memory: { type: "string" }, disk: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        const req = {
          name: ctx.args[0]!,
          vcpus: int(ctx, "vcpus", 1),
          memoryMiB: int(ctx, "memory", 1),
          diskGiB: int(ctx, "disk", 1),
        };
        for (const [k, v] of Object.entries({ vcpus: req.vcpus, memory: req.memoryMiB, disk: req.diskGiB })) {
          if (v === undefined) throw new UsageError(`--${k} is required`);
        }
        show(
          ctx,
          await ctx.client().createFlavor(req as { name: string; vcpus: number; memoryMiB: number; diskGiB: number }),
        );
      },
    },
    delete: {
      usage: "NAME...",
      summary: "delete flavors (admins)",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteFlavor(n)),
    },
  },
};

const forward: Noun = {
  summary: "port forwards of instances: a host port of the server's machine to a guest port",
  subs: {
    list: {
      usage: "INSTANCE",
      summary: "list an instance's forwards",
      arity: [1, 1],
      async run(ctx) {
        list(ctx, await ctx.client().listForwards(ctx.args[0]!), ["ID", "HOST", "GUEST PORT"], (f) => [
          f.id,
          `${f.hostAddr}:${f.hostPort}`,
          f.guestPort,
        ]);
      },
    },
    add: {
      usage: "INSTANCE GUESTPORT [--host-port PORT] [--host-addr ADDR]",
      summary: "forward a host port (default: a free one, on 127.0.0.1) to a guest port",
      options: { "host-port": { type: "string" }, "host-addr": { type: "string" } },
      arity: [2, 2],
      async run(ctx) {
        const guestPort = ctx.args[1]!;
        if (!/^\d{1,5}$/.test(guestPort) || Number(guestPort) < 1 || Number(guestPort) > 65535)
          throw new UsageError(`GUESTPORT must be a port number 1-65535, got "${guestPort}"`);
        const hostPort = int(ctx, "host-port", 0);
        if (hostPort !== undefined && hostPort > 65535) throw new UsageError("--host-port must be at most 65535");
        show(
          ctx,
          await ctx.client().createForward(ctx.args[0]!, {
            guestPort: Number(guestPort),
            hostPort,
            hostAddr: str(ctx, "host-addr"),
          }),
        );
      },
    },
    delete: {
      usage: "INSTANCE ID...",
      summary: "remove forwards",
      arity: [2, 99],
      async run(ctx) {
        const c = ctx.client();
        for (const id of ctx.args.slice(1)) await c.deleteForward(ctx.args[0]!, id);
      },
    },
  },
};

const keypair: Noun = {
  summary: "SSH public keys given to instances",
  subs: {
    create: {
      usage: "NAME",
      summary: `make an ed25519 key pair with ssh-keygen: the private key stays here (${"$"}YUN_HOME/keys/NAME), the public one is registered`,
      arity: [1, 1],
      async run(ctx) {
        const name = ctx.args[0]!;
        const c = ctx.client();
        let made: { privateKey: string; publicKey: string };
        try {
          made = generateKeyPair(name);
        } catch (e) {
          throw new YunApiError(0, "keygen", (e as Error).message);
        }
        try {
          const k = await c.createKeyPair({ name, publicKey: made.publicKey });
          if (ctx.json) json({ ...k, privateKeyFile: made.privateKey });
          else out(formatRecord({ ...k, privateKeyFile: made.privateKey }));
        } catch (e) {
          rmSync(made.privateKey, { force: true });
          rmSync(made.privateKey + ".pub", { force: true });
          throw e;
        }
      },
    },
    add: {
      usage: "NAME --public-key FILE",
      summary: "register a public key (FILE - reads stdin)",
      options: { "public-key": { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        const publicKey = readText(need(ctx, "public-key")).trim();
        show(ctx, await ctx.client().createKeyPair({ name: ctx.args[0]!, publicKey }));
      },
    },
    list: {
      usage: "",
      summary: "list key pairs",
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listKeyPairs(), ["ID", "NAME", "FINGERPRINT"], (k) => [
          k.id,
          k.name,
          k.fingerprint,
        ]);
      },
    },
    delete: {
      usage: "NAME...",
      summary: "delete key pairs",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteKeyPair(n)),
    },
  },
};

// --------------------------------------------------------------------------- projects, users

const QUOTA_FLAGS: Options = {
  instances: { type: "string" },
  vcpus: { type: "string" },
  memory: { type: "string" },
  disk: { type: "string" },
  "object-bytes": { type: "string" },
};

function quotaFlags(ctx: Ctx): Partial<Quotas> {
  const q: Partial<Quotas> = {};
  const set = (k: keyof Quotas, flag: string): void => {
    const v = int(ctx, flag, 0);
    if (v !== undefined) q[k] = v;
  };
  set("instances", "instances");
  set("vcpus", "vcpus");
  set("memoryMiB", "memory");
  set("diskGiB", "disk");
  set("objectBytes", "object-bytes");
  return q;
}

export function quotaTable(q: QuotaUsage): string {
  const rows: (keyof Quotas)[] = ["instances", "vcpus", "memoryMiB", "diskGiB", "objectBytes"];
  return formatTable(
    ["QUOTA", "USED", "LIMIT"],
    rows.map((k) => [k, q.used?.[k] ?? "", q[k]]),
  );
}

const projectRow = (p: Project): (string | number)[] => [
  p.id,
  p.name,
  p.quotas?.instances ?? "",
  p.quotas?.vcpus ?? "",
  p.quotas?.memoryMiB ?? "",
  p.quotas?.diskGiB ?? "",
  shortTime(p.createdAt),
];

const project: Noun = {
  summary: "tenants and their quotas (admins)",
  subs: {
    create: {
      usage: "NAME [--instances N] [--vcpus N] [--memory MIB] [--disk GIB] [--object-bytes N]",
      summary: "create a project, optionally with quotas",
      options: QUOTA_FLAGS,
      arity: [1, 1],
      async run(ctx) {
        const quotas = quotaFlags(ctx);
        show(
          ctx,
          await ctx
            .client()
            .createProject({ name: ctx.args[0]!, quotas: Object.keys(quotas).length ? quotas : undefined }),
        );
      },
    },
    list: {
      usage: "",
      summary: "list projects with their quota limits",
      arity: [0, 0],
      async run(ctx) {
        list(
          ctx,
          await ctx.client().listProjects(),
          ["ID", "NAME", "INSTANCES", "VCPUS", "MEMORY-MIB", "DISK-GIB", "CREATED"],
          projectRow,
        );
      },
    },
    show: {
      usage: "PROJECT",
      summary: "show one project",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().getProject(ctx.args[0]!));
      },
    },
    quota: {
      usage: "PROJECT [--instances N] [--vcpus N] [--memory MIB] [--disk GIB] [--object-bytes N]",
      summary: "show a project's quotas and use; with flags, set them (admins)",
      options: QUOTA_FLAGS,
      arity: [1, 1],
      async run(ctx) {
        const q = quotaFlags(ctx);
        const c = ctx.client();
        const r = Object.keys(q).length > 0 ? await c.setQuotas(ctx.args[0]!, q) : await c.getQuotas(ctx.args[0]!);
        if (ctx.json) json(r);
        else out(quotaTable(r));
      },
    },
    delete: {
      usage: "PROJECT...",
      summary: "delete empty projects",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteProject(n)),
    },
  },
};

const ROLES: Role[] = ["admin", "member", "reader"];

/** A user's ID from a name: the server resolves names in the caller's own project only, so an
 *  admin naming another project's user is helped by the user list (which shows every project). */
async function resolveUser(c: YunClient, nameOrId: string): Promise<string> {
  if (/^usr-/.test(nameOrId)) return nameOrId;
  const matches = (await c.listUsers()).filter((u) => u.name === nameOrId);
  if (matches.length > 1) {
    throw new YunApiError(
      409,
      "conflict",
      `${matches.length} users are named ${nameOrId} (in different projects); give the ID or --project`,
    );
  }
  return matches[0]?.id ?? nameOrId;
}

/** Project IDs to names, for tables: every project for admins, the caller's own for others. */
async function projectNames(c: YunClient): Promise<Map<string, string>> {
  try {
    return new Map((await c.listProjects()).map((p) => [p.id, p.name]));
  } catch {
    try {
      const me = await c.whoami();
      return new Map([[me.project.id, me.project.name]]);
    } catch {
      return new Map();
    }
  }
}

const user: Noun = {
  summary: "users, their roles and API tokens",
  subs: {
    create: {
      usage: "NAME --role admin|member|reader [--in PROJECT] [--with-token]",
      summary:
        "create a user (admins only; in another project with --in; --with-token: also their API token, printed once)",
      options: { role: { type: "string" }, in: { type: "string" }, "with-token": { type: "boolean" } },
      arity: [1, 1],
      async run(ctx) {
        const role = need(ctx, "role") as Role;
        if (!ROLES.includes(role)) throw new UsageError(`--role must be admin, member or reader, got "${role}"`);
        const withToken = ctx.values["with-token"] === true;
        const u = await ctx.client().createUser({
          name: ctx.args[0]!,
          role,
          project: str(ctx, "in"),
          withToken: withToken ? true : undefined,
        });
        show(ctx, u);
        if (withToken && !ctx.json)
          io.err(
            `The token above is shown only this once; ${u.name} uses it as --token or YUN_TOKEN (yun user token ${u.name} issues another).\n`,
          );
      },
    },
    list: {
      usage: "",
      summary: "list users",
      arity: [0, 0],
      async run(ctx) {
        const c = ctx.client();
        const [users, names] = await Promise.all([
          c.listUsers(),
          ctx.json ? new Map<string, string>() : projectNames(c),
        ]);
        list(ctx, users, ["ID", "NAME", "PROJECT", "ROLE", "CREATED"], (u) => [
          u.id,
          u.name,
          names.get(u.project) ?? u.project,
          u.role,
          shortTime(u.createdAt),
        ]);
      },
    },
    token: {
      usage: "USER",
      summary: "issue a new API token (printed once): your own, or (admins) any user's",
      arity: [1, 1],
      async run(ctx) {
        const c = ctx.client();
        const t = await c.createToken(await resolveUser(c, ctx.args[0]!));
        if (ctx.json) json(t);
        else out(t.token);
      },
    },
    tokens: {
      usage: "USER",
      summary: "list a user's tokens (their ids and ages; the tokens themselves are not kept)",
      arity: [1, 1],
      async run(ctx) {
        const c = ctx.client();
        list(ctx, await c.listTokens(await resolveUser(c, ctx.args[0]!)), ["ID", "ISSUED"], (t) => [
          t.id,
          shortTime(t.createdAt),
        ]);
      },
    },
    revoke: {
      usage: "USER TOKEN_ID",
      summary: "revoke one of a user's tokens (it answers 401 from then on)",
      arity: [2, 2],
      async run(ctx) {
        const c = ctx.client();
        await c.revokeToken(await resolveUser(c, ctx.args[0]!), ctx.args[1]!);
        out(`${ctx.args[1]}: revoked`);
      },
    },
    keys: {
      usage: "create|list|delete [ACCESS_KEY_ID] [--user USER]",
      summary:
        "object storage access keys (S3 clients sign with them): your own, or (admins) --user's; create prints the secret once",
      options: { user: { type: "string" } },
      arity: [1, 2],
      async run(ctx) {
        const c = ctx.client();
        const named = str(ctx, "user");
        const who = named !== undefined ? await resolveUser(c, named) : (await c.whoami()).user.id;
        const [action, keyId] = ctx.args;
        if (action === "create") {
          if (keyId !== undefined) throw new UsageError("keys create takes no ACCESS_KEY_ID");
          const k = await c.createAccessKey(who);
          if (ctx.json) json({ accessKeyId: k.accessKeyId, secretAccessKey: k.secretAccessKey });
          else {
            out(`accessKeyId      ${k.accessKeyId}\nsecretAccessKey  ${k.secretAccessKey}`);
            io.err("The secret above is shown only this once.\n");
          }
        } else if (action === "list") {
          if (keyId !== undefined) throw new UsageError("keys list takes no ACCESS_KEY_ID");
          list(ctx, await c.listAccessKeys(who), ["ACCESS KEY ID", "USER", "CREATED"], (k) => [
            k.accessKeyId,
            k.user,
            shortTime(k.createdAt),
          ]);
        } else if (action === "delete") {
          if (keyId === undefined) throw new UsageError("keys delete needs the ACCESS_KEY_ID");
          await c.deleteAccessKey(who, keyId);
          out(`${keyId}: deleted`);
        } else throw new UsageError(`keys takes create, list or delete, got "${action}"`);
      },
    },
    delete: {
      usage: "USER...",
      summary: "delete users (admins only; their tokens stop working)",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, async (c, n) => c.deleteUser(await resolveUser(c, n))),
    },
  },
};

// ----------------------------------------------------------------------------- images (cloud)

const image: Noun = {
  summary: "the cloud's images (local ones: yun image pull|list)",
  subs: {
    upload: {
      usage: "FILE --name NAME [--format qcow2|raw]",
      summary: "upload a disk image to the cloud (format: from the file's header)",
      options: { name: { type: "string" }, format: { type: "string" } },
      arity: [1, 1],
      async run(ctx) {
        const file = ctx.args[0]!;
        const name = need(ctx, "name");
        let size: number;
        try {
          size = statSync(file).size;
        } catch (e) {
          throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
        let format = str(ctx, "format");
        if (format === undefined) {
          const head = Buffer.alloc(4);
          const fd = openSync(file, "r");
          try {
            readSync(fd, head, 0, 4, 0);
          } finally {
            closeSync(fd);
          }
          format = head.toString("latin1") === "QFI\xfb" ? "qcow2" : "raw";
        }
        if (format !== "qcow2" && format !== "raw")
          throw new UsageError(`--format must be qcow2 or raw, got "${format}"`);
        const body = Readable.toWeb(createReadStream(file)) as unknown as ReadableStream<Uint8Array>;
        const img = await ctx.client().uploadImage(name, format, body);
        if (ctx.json) json(img);
        else out(`${img.name}: uploaded ${formatSize(size)} (${img.format}), ${img.status}`);
      },
    },
    list: {
      usage: "--cloud",
      summary: "list the cloud's images",
      options: { cloud: { type: "boolean" } },
      arity: [0, 0],
      async run(ctx) {
        list(ctx, await ctx.client().listImages(), ["ID", "NAME", "FORMAT", "SIZE", "SOURCE", "STATUS"], (i) => [
          i.id,
          i.name,
          i.format,
          formatSize(i.sizeBytes),
          i.source,
          i.status,
        ]);
      },
    },
    show: {
      usage: "IMAGE",
      summary: "show one of the cloud's images",
      arity: [1, 1],
      async run(ctx) {
        show(ctx, await ctx.client().getImage(ctx.args[0]!));
      },
    },
    delete: {
      usage: "IMAGE...",
      summary: "delete uploaded images from the cloud",
      arity: [1, 99],
      run: (ctx) => deleteEach(ctx, (c, n) => c.deleteImage(n)),
    },
  },
};

// ---------------------------------------------------------------------------- usage, events

export function usageTable(u: Usage): string {
  const rows: (string | number)[][] = u.instances.map((i) => [
    i.name,
    i.vcpuSeconds.toFixed(1),
    i.memoryGiBHours.toFixed(4),
    i.diskGiBHours.toFixed(4),
  ]);
  rows.push(["TOTAL", u.vcpuSeconds.toFixed(1), u.memoryGiBHours.toFixed(4), u.diskGiBHours.toFixed(4)]);
  return formatTable(["RESOURCE", "VCPU-SECONDS", "MEMORY-GIB-HOURS", "DISK-GIB-HOURS"], rows);
}

/** Accepts an ISO time or a relative one ("2h", "30m", "7d" ago). */
export function parseTime(flag: string, v: string | undefined, now = Date.now()): string | undefined {
  if (v === undefined) return undefined;
  const rel = /^(\d+)([smhd])$/.exec(v);
  if (rel) {
    const unit = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[rel[2] as "s" | "m" | "h" | "d"];
    return new Date(now - Number(rel[1]) * unit).toISOString();
  }
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new UsageError(`--${flag} must be an ISO time or an age like 2h, got "${v}"`);
  return d.toISOString();
}

const usage: Noun = {
  summary: "metered use of the project (vCPU-seconds, memory and disk GiB-hours)",
  implicit: "show",
  subs: {
    show: {
      usage: "[--from TIME] [--to TIME] [--csv]",
      summary: "usage per instance and in total (TIME: ISO 8601 or an age like 24h, 7d)",
      options: { from: { type: "string" }, to: { type: "string" }, csv: { type: "boolean" } },
      arity: [0, 0],
      async run(ctx) {
        const q = { from: parseTime("from", str(ctx, "from")), to: parseTime("to", str(ctx, "to")) };
        const c = ctx.client();
        if (ctx.values.csv === true) {
          io.out(await c.usageCsv(q));
          return;
        }
        const u = await c.usage(q);
        if (ctx.json) json(u);
        else {
          const name = (await projectNames(c)).get(u.project) ?? u.project;
          out(`project ${name}, ${shortTime(u.from)} to ${shortTime(u.to)}`);
          out(usageTable(u));
        }
      },
    },
  },
};

const events: Noun = {
  summary: "the audit log: who did what, newest first",
  implicit: "list",
  subs: {
    list: {
      usage: "[--limit N] [--after ID]",
      summary: "list events",
      options: { limit: { type: "string" }, after: { type: "string" } },
      arity: [0, 0],
      async run(ctx) {
        const c = ctx.client();
        const items = await c.events({ limit: int(ctx, "limit", 1), after: int(ctx, "after", 0) });
        const names = ctx.json ? new Map<string, string>() : await projectNames(c);
        list(ctx, items, ["ID", "AT", "USER", "USER-ID", "PROJECT", "ACTION", "RESOURCE", "OUTCOME"], (e) => [
          e.id,
          shortTime(e.at),
          e.user,
          e.userId ?? "-",
          names.get(e.project) ?? e.project,
          e.action,
          e.resource,
          e.outcome,
        ]);
      },
    },
  },
};

const consoleNoun: Noun = {
  summary: "attach this terminal to an instance's serial console",
  implicit: "attach",
  subs: {
    attach: {
      usage: "NAME",
      summary:
        "raw terminal over the console WebSocket; Ctrl-] detaches. With stdin not a terminal, its lines are typed\n" +
        "      into the console and the command detaches once the output has been quiet for --idle seconds (default 2)",
      options: { idle: { type: "string" } },
      arity: [1, 1],
      run: (ctx) => attachConsole(ctx),
    },
  },
};

// ------------------------------------------------------------------------------------- vnc

async function serveInstanceVnc(ctx: Ctx): Promise<number> {
  const listen = str(ctx, "listen") ?? "127.0.0.1:0";
  const m = /^(?:\[?([^\]]+?)\]?:)?(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--listen takes [ADDR:]PORT, got "${listen}"`);
  const host = m[1] ?? "127.0.0.1";
  const c = ctx.client();
  const inst = await c.getInstance(ctx.args[0]!); // a clear 404 first
  if (inst.display !== "vnc")
    throw new YunApiError(409, "conflict", `instance ${inst.name} has no display (create it with --display vnc)`);
  if (inst.state !== "running" && inst.state !== "paused")
    throw new YunApiError(
      409,
      "conflict",
      `instance ${inst.name} is ${inst.state}; its display is there while it runs`,
    );
  let passwordFile = str(ctx, "password-file");
  let password: string;
  if (passwordFile !== undefined) {
    if ((statSync(passwordFile).mode & 0o077) !== 0)
      throw new UsageError(`--password-file ${passwordFile} is open to other users (chmod 600 ${passwordFile})`);
    password = readFileSync(passwordFile, "latin1").split(/\r?\n/)[0] ?? "";
    if (password === "") throw new UsageError(`--password-file ${passwordFile}: its first line is empty`);
  } else {
    // VNC authentication uses 8 characters; these are from a 64-letter alphabet (48 bits).
    password = randomBytes(6).toString("base64url");
    const dir = makePrivateDir(join(yunHome(), "vnc"));
    passwordFile = join(dir, `${inst.name}.passwd`);
    writeFileSync(passwordFile, password + "\n", { mode: 0o600 });
  }
  const proxy = await startVncProxy({
    host,
    port: Number(m[2]),
    password,
    connect: () => new WebSocket(c.consoleUrl(inst.id, { display: true }), c.consoleProtocols()),
    log: (line) => io.err(line + "\n"),
  });
  const a = proxy.address;
  const shown = a.host.includes(":") ? `[${a.host}]` : a.host;
  io.out(`VNC server for ${inst.name} on ${shown}:${a.port}; password in ${passwordFile}\n`);
  await new Promise<void>((resolve) => {
    for (const s of ["SIGINT", "SIGTERM"] as const) process.once(s, () => resolve());
  });
  proxy.close();
  return 0;
}

// ---------------------------------------------------------------------------------- console

const DETACH = 0x1d; // Ctrl-]

async function attachConsole(ctx: Ctx): Promise<number> {
  const idleSeconds = int(ctx, "idle", 0) ?? 2;
  const c = ctx.client();
  const name = ctx.args[0]!;
  const inst = await c.getInstance(name); // a clear 404 before the WebSocket
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  // Unless this terminal both shows the output and types (and so answers the guest's terminal
  // queries), the VM's monitor plays the terminal and holds piped input until the shell is ready.
  const piped = !(tty && process.stdout.isTTY === true);
  const ws = new WebSocket(c.consoleUrl(inst.id, { piped }), c.consoleProtocols());
  return new Promise<number>((resolve) => {
    let opened = false;
    let finished = false;
    let idleTimer: NodeJS.Timeout | undefined;
    let stdinEnded = false;
    const finish = (code: number, message?: string): void => {
      if (finished) return;
      finished = true;
      clearTimeout(idleTimer);
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      stdin.removeListener("data", onInput);
      stdin.removeListener("end", onEnd);
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
      if (message !== undefined) io.err(message);
      resolve(code);
    };
    const armIdle = (): void => {
      if (!stdinEnded) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => finish(0), idleSeconds * 1000);
    };
    const onInput = (chunk: Buffer): void => {
      if (tty) {
        const at = chunk.indexOf(DETACH);
        if (at >= 0) {
          if (at > 0 && ws.readyState === WebSocket.OPEN) ws.send(chunk.subarray(0, at));
          finish(0, `\r\n[detached from ${inst.name}]\r\n`);
          return;
        }
      }
      if (ws.readyState === WebSocket.OPEN) ws.send(chunk);
    };
    const onEnd = (): void => {
      stdinEnded = true;
      armIdle();
    };
    ws.on("open", () => {
      opened = true;
      if (tty) {
        io.err(`[console of ${inst.name}; Ctrl-] detaches]\r\n`);
        stdin.setRawMode(true);
      }
      stdin.on("data", onInput);
      stdin.on("end", onEnd);
      stdin.resume();
    });
    ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      io.out(buf);
      armIdle();
    });
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString("utf8")));
      res.on("end", () => {
        let message = `the console of ${inst.name} refused the connection (HTTP ${res.statusCode})`;
        try {
          const e = (JSON.parse(body) as { error?: { message?: string } }).error;
          if (e?.message) message = e.message;
        } catch {}
        finish(1, `yun: ${message}\n`);
      });
    });
    ws.on("close", (_code: number, reason: Buffer) => {
      const why = reason.toString("utf8");
      if (opened) finish(0, tty ? `\r\n[console of ${inst.name} closed${why ? `: ${why}` : ""}]\r\n` : undefined);
      else finish(1, `yun: cannot open the console of ${inst.name}${why ? `: ${why}` : ""}\n`);
    });
    ws.on("error", (e: Error) => {
      if (!finished && !opened) finish(1, `yun: cannot open the console of ${inst.name}: ${e.message}\n`);
    });
  });
}

// --------------------------------------------------------------------------------- dispatch

export const NOUNS: Record<string, Noun> = {
  instance,
  volume,
  share,
  network,
  flavor,
  keypair,
  forward,
  project,
  user,
  image,
  usage,
  events,
  console: consoleNoun,
};

/** The nouns `yun` routes here; `image` only for upload, show, delete and `list --cloud`. */
export const CLOUD_NOUNS = Object.keys(NOUNS).filter((n) => n !== "image");

/** True when `yun image ARGS` is a cloud command (the local image commands stay in image.ts). */
export function isCloudImageCommand(args: string[]): boolean {
  const sub = args[0];
  return (
    sub === "upload" ||
    sub === "show" ||
    sub === "delete" ||
    sub === "rm" ||
    (sub === "list" && args.includes("--cloud"))
  );
}

function nounHelp(name: string, noun: Noun): string {
  const lines = [
    `Usage: yun ${name} ${noun.implicit ? "" : "<command> "}[options]`,
    "",
    `${noun.summary[0]!.toUpperCase()}${noun.summary.slice(1)}.`,
    "",
  ];
  if (!noun.implicit) lines.push("Commands:");
  for (const [sub, s] of Object.entries(noun.subs)) {
    const head = noun.implicit ? `yun ${name} ${s.usage}` : `${sub} ${s.usage}`;
    lines.push(`  ${head.trimEnd()}`, `      ${s.summary}`);
  }
  lines.push("", COMMON_HELP, "");
  return lines.join("\n");
}

function subUsage(name: string, noun: Noun, sub: string, s: Sub): string {
  return `usage: yun ${name}${noun.implicit ? "" : ` ${sub}`} ${s.usage}`.trimEnd();
}

/** Splits parseArgs's long messages to their first sentence. */
function parse(args: string[], options: Options): { values: Values; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Values, positionals: r.positionals };
  } catch (e) {
    const msg = (e as Error).message.split(". ")[0] ?? (e as Error).message;
    throw new UsageError(msg.replace(/\.$/, ""));
  }
}

/** Entry point for `yun NOUN ...`; answers the exit code. */
export async function cloudCommand(name: string, args: string[]): Promise<number> {
  const noun = NOUNS[name];
  if (noun === undefined) throw new Error(`not a cloud noun: ${name}`);
  let subName: string;
  let rest: string[];
  if (noun.implicit !== undefined) {
    subName = noun.implicit;
    rest = args;
  } else {
    const [first, ...tail] = args;
    if (first === undefined || first === "help" || first === "-h" || first === "--help") {
      (first === undefined ? io.err : io.out)(nounHelp(name, noun));
      return first === undefined ? 2 : 0;
    }
    if (first === "ls") subName = "list";
    else if (first === "rm") subName = "delete";
    else subName = first;
    rest = tail;
    if (noun.subs[subName] === undefined) {
      const known = Object.keys(noun.subs).join(", ");
      const what = first.startsWith("-")
        ? `unknown option ${first}`
        : `unknown command "${first}"; expected one of ${known}`;
      io.err(`yun ${name}: ${what} (see yun ${name} --help)\n`);
      return 2;
    }
  }
  const sub = noun.subs[subName]!;
  try {
    const { values, positionals } = parse(rest, sub.options ?? {});
    if (values.help === true) {
      io.out(nounHelp(name, noun));
      return 0;
    }
    const [min, max] = sub.arity;
    if (positionals.length < min)
      throw new UsageError(`missing ${sub.usage.split(" ").slice(positionals.length, min).join(" ")}`);
    if (positionals.length > max) throw new UsageError(`unexpected argument "${positionals[max]}"`);
    let client: YunClient | undefined;
    const ctx: Ctx = {
      values,
      args: positionals,
      json: values.json === true,
      client() {
        client ??= new YunClient({
          server: resolveServer(str(ctx, "server")),
          token: resolveToken(str(ctx, "token")),
          project: str(ctx, "project"),
        });
        return client;
      },
    };
    const code = await sub.run(ctx);
    return typeof code === "number" ? code : 0;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`yun ${name}: ${e.message}\n${subUsage(name, noun, subName, sub)}\n(see yun ${name} --help)\n`);
      return 2;
    }
    if (e instanceof YunApiError) {
      const hint =
        e.code === "unreachable" && !/NODE_EXTRA_CA_CERTS/.test(e.message)
          ? " (is yun serve running? --server or YUN_SERVER picks another)"
          : "";
      io.err(`yun: ${e.message.replace(/\s*\n\s*/g, " ")}${hint}\n`);
      return 1;
    }
    throw e;
  }
}

/** Lines for `yun help`. */
export const CLOUD_HELP = `Cloud (talks to yun serve; see docs/cloud-api.md):
  instance   ${instance.summary}
  volume     ${volume.summary}
  share      ${share.summary}
  network    ${network.summary}
  flavor     ${flavor.summary}
  keypair    ${keypair.summary}
  forward    ${forward.summary}
  project    ${project.summary}
  user       ${user.summary}
  image      upload|list --cloud|show|delete: ${image.summary}
  usage      ${usage.summary} (--csv)
  events     ${events.summary}
  console    ${consoleNoun.summary} (Ctrl-] detaches)
`;

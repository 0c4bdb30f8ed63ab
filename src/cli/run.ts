/**
 * `yun run`: boot a VM with its console on this terminal.
 *
 * On a terminal the console is interactive (raw mode; Ctrl-A X quits, Ctrl-A Ctrl-A sends Ctrl-A).
 * With stdin not a terminal, input is queued and handed to the guest as its UART reads it, so
 * `printf 'echo hi\npoweroff -f\n' | yun run` works as a script.
 *
 * Disks: by default the VM boots from a throwaway qcow2 overlay on the image's root disk, created in
 * $YUN_HOME/run/<pid>-XXXXXX/ and deleted when yun exits (the image's root.ext4 is never written);
 * `--root FILE` boots from FILE instead, read-write, and `--disk FILE` adds further disks. Every
 * disk is opened and checked before the overlay is created or the guest starts, so a bad image is
 * reported with nothing written.
 *
 * Network: user-mode NAT (10.0.2.0/24, DHCP) unless `--net NAME` plugs the VM into the virtual
 * switch NAME shared with other `yun run` processes, or `--no-net`. The MAC address is derived from
 * the VM's name, so it is the same at every boot of the same VM.
 */
import { parseArgs } from "node:util";
import { readFileSync, existsSync, statSync, mkdirSync, mkdtempSync, readdirSync, rmSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { VirtMachine, maxDisks, type Engine, type PowerOff } from "../vmm/virt.js";
import type { BlockBackend } from "../devices/block.js";
import type { NetBackend } from "../devices/netdev.js";
import { openDiskImage, createQcow2, DiskImageError, type DiskFormat } from "../storage/image.js";
import { joinNetwork, validateNetworkName } from "../net/hub.js";
import { UserNet, type HostForward } from "../net/usernet.js";
import { parseMac, stableMac, formatMac } from "../net/ethernet.js";
import { findImage } from "../images/store.js";
import { pullDebianImage } from "../images/debian.js";
import { yunHome } from "../images/paths.js";

const HELP = `Usage: yun run [options]

Boots a RISC-V virtual machine with its serial console on this terminal.

Options:
  --image NAME        boot image (default: debian; pulled on first use)
  --kernel FILE       kernel Image to boot instead of the image's (then no root disk unless --root)
  --initrd FILE       initramfs to boot instead of the image's
  --append TEXT       kernel command line (default: "console=ttyS0 cryptomgr.notests"); with a root
                      disk, "root=/dev/vda" is added unless TEXT has a root= of its own
  --memory MIB        guest memory in MiB (default: 256)
  --firmware FILE|none
                      M-mode firmware (default: the image's OpenSBI fw_dynamic); "none" boots the
                      kernel in S-mode with Yun answering its SBI calls itself
  --engine jit|interp how guest code runs: translated to JavaScript (default) or interpreted

Disks (virtio-blk; the root disk is /dev/vda, further disks /dev/vdb, /dev/vdc, ...):
  --root FILE         boot from the disk image FILE (raw or qcow2), read-write. Default: a fresh
                      qcow2 overlay on the image's root disk, deleted when yun exits (the image
                      itself is never written); make a lasting one with
                      yun disk create -b IMAGE_ROOT_DISK -F raw FILE
  --disk FILE         add the disk image FILE, read-write (repeatable)

Network (virtio-net):
  --net NAME          plug into the virtual network NAME, shared by every VM started with the
                      same NAME on this host (no DHCP there: configure addresses in the guest)
  --publish [ADDR:]HOSTPORT:GUESTPORT
                      user-mode network: forward TCP connections to ADDR:HOSTPORT on the host
                      (default ADDR 127.0.0.1; HOSTPORT 0 picks a free port) to GUESTPORT in the
                      guest (repeatable)
  --no-net            no network card
  --name NAME         the VM's name; its MAC address is derived from it (default: the --root
                      file's path, or a name of its own for a throwaway root disk)
  --mac MAC           the network card's MAC address instead (e.g. 52:54:00:12:34:56)
  -h, --help          show this help

Without --net or --no-net the VM gets user-mode networking: it is 10.0.2.15 (by DHCP) behind a
NAT whose gateway 10.0.2.2 is the host's 127.0.0.1.

In a terminal, Ctrl-A X quits. The exit status is 0 when the guest powers off.
`;

/** The default kernel command line: serial console; the crypto self-tests (half a billion guest
 *  instructions at boot) are skipped, as a cloud image would. */
export const DEFAULT_APPEND = "console=ttyS0 cryptomgr.notests";

/** The guest device of the root disk (the first virtio-blk slot). */
export const ROOT_DEVICE = "/dev/vda";

export class UsageError extends Error {}

/** Where the root disk comes from. */
export type RootChoice =
  | { kind: "none" }
  /** A file the user named: booted read-write, format probed. */
  | { kind: "file"; path: string }
  /** A throwaway qcow2 overlay on an image's root disk (`base`, of format `baseFormat`). */
  | { kind: "overlay"; base: string; baseFormat: DiskFormat };

export type NetChoice = { kind: "none" } | { kind: "user"; publish: HostForward[] } | { kind: "switch"; name: string };

export interface RunOptions {
  kernel: string;
  initrd?: string;
  firmware: string | null;
  append: string;
  memoryMiB: number;
  engine: Engine;
  root: RootChoice;
  /** Further disks, /dev/vdb onwards. */
  disks: string[];
  net: NetChoice;
  /** The VM's name, or undefined: derived from the root disk once it is known. */
  name?: string;
  /** An explicit MAC address (already checked). */
  mac?: string;
}

function readInput(path: string, what: string): Uint8Array {
  if (!existsSync(path)) throw new UsageError(`${what} file not found: ${path}`);
  if (!statSync(path).isFile()) throw new UsageError(`${what} is not a regular file: ${path}`);
  return readFileSync(path);
}

/** "[ADDR:]HOSTPORT:GUESTPORT" → a forward; ADDR may be bracketed ("[::1]"). */
export function parsePublish(spec: string): HostForward {
  const bad = (why: string): UsageError =>
    new UsageError(`--publish ${spec}: ${why} (expected [ADDR:]HOSTPORT:GUESTPORT, e.g. 8080:80)`);
  const m = /^(?:(\[[^\]]+\]|[^:[\]]+):)?([^:]+):([^:]+)$/.exec(spec);
  if (!m) throw bad("not of the form");
  const port = (text: string, what: string, min: number): number => {
    if (!/^\d{1,5}$/.test(text) || Number(text) < min || Number(text) > 65535) {
      throw bad(`${what} "${text}" is not a port number ${min}-65535`);
    }
    return Number(text);
  };
  const hostAddr = m[1] === undefined ? "127.0.0.1" : m[1].replace(/^\[(.*)\]$/, "$1");
  return { hostAddr, hostPort: port(m[2], "host port", 0), guestPort: port(m[3], "guest port", 1), proto: "tcp" };
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export async function resolveRunOptions(args: string[]): Promise<RunOptions | "help"> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: false,
      strict: true,
      options: {
        image: { type: "string" },
        kernel: { type: "string" },
        initrd: { type: "string" },
        append: { type: "string" },
        memory: { type: "string" },
        firmware: { type: "string" },
        engine: { type: "string" },
        root: { type: "string" },
        disk: { type: "string", multiple: true },
        net: { type: "string" },
        publish: { type: "string", multiple: true },
        "no-net": { type: "boolean" },
        name: { type: "string" },
        mac: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(((e as Error).message.split(". ")[0] ?? "bad arguments") + " (see yun run --help)");
  }
  const v = parsed.values;
  if (v.help) return "help";
  let memoryMiB = 256;
  if (v.memory !== undefined) {
    if (!/^\d+$/.test(v.memory)) throw new UsageError(`--memory takes a size in MiB, got "${v.memory}"`);
    memoryMiB = Number(v.memory);
    if (memoryMiB < 64 || memoryMiB > 2048)
      throw new UsageError(`--memory must be between 64 and 2048 MiB, got ${memoryMiB}`);
  }
  const engine = (v.engine ?? "jit") as Engine;
  if (engine !== "jit" && engine !== "interp") throw new UsageError(`--engine takes jit or interp, got "${v.engine}"`);

  // Network flags, all checked before anything is looked up or pulled.
  const publish = (v.publish ?? []).map(parsePublish);
  let net: NetChoice;
  if (v["no-net"]) {
    if (v.net !== undefined) throw new UsageError("--no-net and --net contradict each other");
    if (publish.length) throw new UsageError("--publish needs a network card; it cannot go with --no-net");
    net = { kind: "none" };
  } else if (v.net !== undefined) {
    try {
      validateNetworkName(v.net);
    } catch (e) {
      throw new UsageError(`--net: ${(e as Error).message}`);
    }
    if (publish.length) {
      throw new UsageError(
        "--publish works with user-mode networking only, not with --net (a switch has no host side)",
      );
    }
    net = { kind: "switch", name: v.net };
  } else {
    net = { kind: "user", publish };
  }
  if (v.name !== undefined && !NAME_RE.test(v.name)) {
    throw new UsageError(
      `--name "${v.name}": use 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit`,
    );
  }
  let mac: string | undefined;
  if (v.mac !== undefined) {
    if (net.kind === "none") throw new UsageError("--mac needs a network card; it cannot go with --no-net");
    let bytes: Uint8Array;
    try {
      bytes = parseMac(v.mac);
    } catch (e) {
      throw new UsageError(`--mac: ${(e as Error).message}`);
    }
    if (bytes[0] & 1) throw new UsageError(`--mac ${v.mac} is a multicast address; a network card needs a unicast one`);
    mac = formatMac(bytes);
  }
  const disks = v.disk ?? [];
  const hasRootFile = v.root !== undefined;
  const limit = maxDisks(net.kind !== "none");
  if (disks.length + 1 > limit) {
    throw new UsageError(
      `at most ${limit - 1} --disk besides the root disk${net.kind !== "none" ? " and the network card" : ""}`,
    );
  }

  let kernel = v.kernel;
  let initrd = v.initrd;
  let firmware: string | null | undefined = v.firmware === "none" ? null : v.firmware;
  let root: RootChoice = hasRootFile ? { kind: "file", path: v.root! } : { kind: "none" };
  // The image supplies whatever was not given, and its root disk when it supplies the kernel.
  const needImage = kernel === undefined || (initrd === undefined && v.kernel === undefined) || firmware === undefined;
  if (needImage) {
    const name = v.image ?? "debian";
    let image = findImage(name);
    if (!image) {
      if (name !== "debian") throw new UsageError(`no image named "${name}" (see yun image list)`);
      process.stderr.write(`yun: image ${name} is not here yet; pulling it first\n`);
      image = await pullDebianImage({ progress: process.stderr.isTTY, log: (l) => process.stderr.write(l + "\n") });
    }
    kernel ??= image.kernel;
    if (v.kernel === undefined) {
      initrd ??= image.initrd;
      if (!hasRootFile) root = { kind: "overlay", base: image.rootDisk, baseFormat: "raw" };
    }
    if (firmware === undefined) firmware = image.firmware.dynamic;
  }
  if (kernel === undefined || firmware === undefined) throw new Error("internal: no kernel or firmware chosen");
  let append = v.append ?? DEFAULT_APPEND;
  if (root.kind !== "none" && !/(^|\s)root=/.test(append)) append += ` root=${ROOT_DEVICE}`;
  return { kernel, initrd, firmware, append, memoryMiB, engine, root, disks, net, name: v.name, mac };
}

// ------------------------------------------------------------------------------------------ disks

/** Directory for throwaway overlays: $YUN_HOME/run. */
function runDir(): string {
  return join(yunHome(), "run");
}

/** Removes overlay directories left by yun processes that no longer exist (killed, crashed). */
function removeStaleRunDirs(dir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return;
  }
  for (const e of entries) {
    const m = /^(\d+)-/.exec(e);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ESRCH") rmSync(join(dir, e), { recursive: true, force: true });
    }
  }
}

/** The disks of one VM: opened, checked, and closed again if anything later fails. */
class DiskSet {
  /** The overlay's directory, removed by dispose(). */
  private tempDir: string | null = null;
  /** Path of the root disk in use (the overlay once created). */
  rootPath: string | null = null;

  constructor(private readonly opts: RunOptions) {
    const r = opts.root;
    if (r.kind === "file") this.rootPath = r.path;
  }

  /**
   * Opens the user's disks, then (first time only) creates the throwaway overlay and opens it.
   * Throws DiskImageError with nothing written when any image is bad.
   */
  open(): BlockBackend[] {
    const r = this.opts.root;
    const given = r.kind === "file" ? [r.path, ...this.opts.disks] : this.opts.disks;
    // Every image (with its backing chain) is checked read-only before any is opened for writing.
    for (const path of given) openDiskImage(path, { readOnly: true, lock: false }).close();
    const opened: BlockBackend[] = [];
    try {
      if (r.kind === "file") opened.push(openDiskImage(r.path));
      for (const d of this.opts.disks) opened.push(openDiskImage(d));
      if (r.kind === "overlay") {
        if (this.rootPath === null) {
          // Check the base as a disk before making anything: createQcow2 reports it as a backing file.
          openDiskImage(r.base, { readOnly: true, format: r.baseFormat }).close();
          mkdirSync(runDir(), { recursive: true });
          removeStaleRunDirs(runDir());
          this.tempDir = mkdtempSync(join(runDir(), `${process.pid}-`));
          const path = join(this.tempDir, "root.qcow2");
          createQcow2(path, { backing: { path: r.base, format: r.baseFormat } });
          this.rootPath = path;
        }
        opened.unshift(openDiskImage(this.rootPath, { format: "qcow2" }));
      }
      return opened;
    } catch (e) {
      for (const d of opened) d.close();
      throw e;
    }
  }

  /** A seed for the VM's MAC address when it has no --name: the root disk's identity. */
  macSeed(): string {
    const r = this.opts.root;
    if (r.kind === "file") {
      try {
        return `root:${realpathSync(r.path)}`;
      } catch {
        return `root:${r.path}`;
      }
    }
    if (this.tempDir !== null) return `run:${this.tempDir}`;
    return `run:${process.pid}:${randomBytes(8).toString("hex")}`;
  }

  dispose(): void {
    if (this.tempDir !== null) rmSync(this.tempDir, { recursive: true, force: true });
    this.tempDir = null;
  }
}

// -------------------------------------------------------------------------------------- network

async function openNet(choice: NetChoice): Promise<{ backend: NetBackend | null; notes: string[] }> {
  switch (choice.kind) {
    case "none":
      return { backend: null, notes: [] };
    case "switch":
      return { backend: await joinNetwork(choice.name, join(yunHome(), "net")), notes: [] };
    case "user": {
      const user = new UserNet({ hostForwards: choice.publish });
      try {
        await user.start();
      } catch (e) {
        user.close();
        throw e;
      }
      const notes = user.published.map(
        (p) =>
          `published ${p.hostAddr.includes(":") ? `[${p.hostAddr}]` : p.hostAddr}:${p.hostPort} -> guest port ${p.guestPort}`,
      );
      return { backend: user, notes };
    }
  }
}

// ------------------------------------------------------------------------------------------- run

const SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

export async function runCommand(args: string[]): Promise<number> {
  let opts: RunOptions | "help";
  try {
    opts = await resolveRunOptions(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`yun run: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (opts === "help") {
    process.stdout.write(HELP);
    return 0;
  }
  let kernel: Uint8Array;
  let initrd: Uint8Array | undefined;
  let firmware: Uint8Array | null;
  try {
    kernel = readInput(opts.kernel, "kernel");
    initrd = opts.initrd ? readInput(opts.initrd, "initrd") : undefined;
    firmware = opts.firmware ? readInput(opts.firmware, "firmware") : null;
  } catch (e) {
    process.stderr.write(`yun run: ${(e as Error).message}\n`);
    return 2;
  }

  const diskSet = new DiskSet(opts);
  let signalled: NodeJS.Signals | null = null;
  let machine: VirtMachine | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    signalled ??= sig;
    machine?.stop("poweroff", 0);
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  const stdin = process.stdin;
  const interactive = stdin.isTTY === true;
  let result: PowerOff | null = null;
  let firstBoot = true;
  try {
    for (;;) {
      let disks: BlockBackend[];
      try {
        disks = diskSet.open();
      } catch (e) {
        if (!(e instanceof DiskImageError)) throw e;
        process.stderr.write(`yun run: ${e.message}\n`);
        return 1;
      }
      let net: { backend: NetBackend | null; notes: string[] };
      try {
        net = await openNet(opts.net);
      } catch (e) {
        // A network that cannot be joined, a port that cannot be published.
        for (const d of disks) d.close();
        process.stderr.write(`yun run: ${(e as Error).message}\n`);
        return 1;
      }
      const mac = opts.mac ?? stableMac(opts.name ?? diskSet.macSeed());
      try {
        machine = new VirtMachine({
          kernel,
          initrd,
          firmware,
          firmwareKind: firmware ? "dynamic" : "none",
          append: opts.append,
          memoryMiB: opts.memoryMiB,
          engine: opts.engine,
          output: (bytes) => process.stdout.write(bytes),
          disks,
          net: net.backend,
          mac,
        });
      } catch (e) {
        for (const d of disks) d.close();
        net.backend?.close();
        process.stderr.write(`yun run: ${(e as Error).message}\n`);
        return e instanceof UsageError ? 2 : 1;
      }
      if (firstBoot) {
        firstBoot = false;
        if (opts.root.kind === "overlay") {
          process.stderr.write(
            `yun: booting from a throwaway overlay on ${opts.root.base} (changes are discarded at exit; see --root)\n`,
          );
        }
        if (opts.net.kind !== "none")
          process.stderr.write(
            `yun: network card ${mac}${opts.net.kind === "switch" ? ` on network ${opts.net.name}` : ""}\n`,
          );
        for (const n of net.notes) process.stderr.write(`yun: ${n}\n`);
      }
      if (signalled) machine.stop("poweroff", 0);
      const detach = attachConsole(machine, interactive);
      try {
        result = await machine.run();
      } finally {
        detach();
        machine.close();
      }
      if (result.kind !== "reset" || signalled) break;
      process.stderr.write("\r\nyun: guest rebooted\r\n");
    }
  } finally {
    for (const s of SIGNALS) process.off(s, onSignal);
    diskSet.dispose();
  }
  if (signalled) {
    process.stderr.write(`\r\nyun: stopped by ${signalled}\r\n`);
    return 128 + (SIGNAL_NUMBERS[signalled] ?? 0);
  }
  if (result?.kind === "fail") return result.code || 1;
  return 0;
}

/** Connects stdin to the guest console; returns a function that disconnects it. */
function attachConsole(machine: VirtMachine, interactive: boolean): () => void {
  const stdin = process.stdin;
  let escape = false;
  const onData = (chunk: Buffer): void => {
    if (!interactive) {
      machine.input(chunk);
      return;
    }
    const out: number[] = [];
    for (const b of chunk) {
      if (escape) {
        escape = false;
        if (b === 0x78 || b === 0x58) {
          machine.stop("poweroff", 0);
          process.stderr.write("\r\nyun: terminated by Ctrl-A X\r\n");
          return;
        }
        if (b === 0x01) out.push(1);
        continue;
      }
      if (b === 0x01) escape = true;
      else out.push(b);
    }
    if (out.length) machine.input(Uint8Array.from(out));
  };
  if (interactive) stdin.setRawMode(true);
  stdin.on("data", onData);
  stdin.resume();
  return () => {
    stdin.off("data", onData);
    if (interactive) stdin.setRawMode(false);
    stdin.pause();
  };
}

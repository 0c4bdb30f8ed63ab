/**
 * `yun run`: boot a VM with its console on this terminal.
 *
 * On a terminal the console is interactive (raw mode; Ctrl-A X quits, Ctrl-A Ctrl-A sends Ctrl-A).
 * With stdin not a terminal, Yun is the guest's terminal (src/vmm/terminal.ts): it answers the
 * guest's terminal queries, and holds the piped input until the guest's shell is ready for it, so
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
import { existsSync, readFileSync, statSync, rmSync, realpathSync } from "node:fs";
import { join, resolve as resolvePath } from "node:path";
import { randomBytes, X509Certificate } from "node:crypto";
import { maxDisks, type Engine, type PowerOff } from "../vmm/virt.js";
import { VsockHost } from "../vmm/vsock-host.js";
import { DEFAULT_GUEST_CID } from "../devices/virtio/vsock.js";
import { checkTag, type ShareSpec } from "../devices/virtio/9p.js";
import { openDiskImage, type DiskFormat } from "../storage/image.js";
import { validateNetworkName } from "../net/hub.js";
import type { HostForward } from "../net/usernet.js";
import { userNetAddresses } from "../net/link.js";
import { parseMac, stableMac, formatMac } from "../net/ethernet.js";
import { type DiskRef, type NetChoice, type VmSpec } from "../vmm/spec.js";
import { VmMonitor, type MonitorOptions } from "../vmm/monitor.js";
import type { TypeAheadRule } from "../vmm/terminal.js";
import { ControlServer } from "../vmm/control.js";
import {
  listenForMigration,
  newMigrationToken,
  readMigrationTokenFile,
  receiveMigration,
  type IncomingMachine,
} from "../vmm/migrate.js";
import { createOverlay, makeOwnedDir } from "../vmm/overlay.js";
import { checkSocketPath, claimName, defaultSocketPath, processAlive, register, unregister } from "../vmm/registry.js";
import { DEFAULT_IMAGE, pullImage } from "../images/pull.js";
import { AVAILABLE_IMAGES, findImage } from "../images/store.js";
import { ImageError } from "../images/util.js";
import { yunHome } from "../images/paths.js";
import { findBootLoader, pullBootLoader } from "../images/uboot.js";
import { partitionScheme, readPartitionTable, type Partition } from "../storage/partition.js";
import { BootDiskError, checkBootDisk, type BootEntry } from "../storage/bootdisk.js";
import { tightenTree } from "../storage/private.js";
import { CappedLog, redirectStderr } from "../vmm/logfile.js";
import { VncServer } from "../vmm/display/vnc.js";

const HELP = `Usage: yun run [options]

Boots a RISC-V virtual machine with its serial console on this terminal.

Options:
  --image NAME        boot image (default: $YUN_IMAGE, else ${DEFAULT_IMAGE}; pulled on first use)
  --kernel FILE       kernel Image to boot instead of the image's (then no root disk unless --root)
  --initrd FILE       initramfs to boot instead of the image's
  --append TEXT       kernel command line (default: "console=ttyS0 cryptomgr.notests"); with a root
                      disk, "root=" the image's root device (/dev/vda for debian-tiny, /dev/vda1
                      for debian; with --root on a partitioned disk, its first Linux partition)
                      is added unless TEXT has a root= of its own
  --memory MIB        guest memory in MiB (default: 256)
  --firmware FILE|none
                      M-mode firmware (default: the image's OpenSBI fw_dynamic); "none" boots the
                      kernel in S-mode with Yun answering its SBI calls itself
  --boot kernel|disk  boot a kernel (--kernel, or the image's), or the root disk the way a board
                      does: OpenSBI, then Debian's U-Boot (u-boot-qemu, S-mode), which loads the
                      disk's extlinux/extlinux.conf or /EFI/BOOT/BOOTRISCV64.EFI (e.g. GRUB).
                      Default: disk when the root disk has a partition table (GPT or MBR) and no
                      --kernel is given; Yun checks first that U-Boot will find something to boot
  --engine jit|interp how guest code runs: translated to JavaScript (default) or interpreted
  --cpus N            vCPUs, 1-8 (default 1); more than one runs each on a thread of its own
  --cpu-cap F         use at most F of a host core (e.g. 0.25), enforced by the monitor
  --display none|vnc  none (default): a serial console only, no graphics devices; vnc: a
                      virtio-gpu (1024x768, the kernel's framebuffer console shows on it) with a
                      virtio keyboard and tablet, shown by a VNC server (RFB 3.8)
  --vnc [ADDR:]PORT|none
                      the VNC server's address (default ADDR 127.0.0.1; implies --display vnc;
                      without it --display vnc listens on any free port of 127.0.0.1, printed);
                      none: no TCP listener, the display only through the control socket
                      (the cloud's graphical console)
  --vnc-password-file FILE
                      VNC clients must log in with the password in FILE's first line (mode 0600;
                      VNC authentication uses its first 8 characters); default: no password

Monitor (see docs/vm-api.md; yun vm drives a running VM):
  --headless          no console here: output is kept for yun vm console; stdin is not read
  --api-socket PATH   the control socket (default: $YUN_HOME/vms/NAME/api.sock)
  --api-port N        also serve the control API as HTTP on 127.0.0.1:N (0: any free port)
  --vsock PATH|none   the Unix socket of the VM's virtio-vsock (the guest agent's channel, see
                      docs/guest-agent.md; default: $YUN_HOME/vms/NAME/vsock.sock); none: no
                      vsock device (it takes a virtio slot that a disk could use)
  --log FILE          write yun's messages (not the guest's console) to FILE, owner-only, keeping
                      the newest 2 MiB there and the 2 MiB before them in FILE.1
  --restore DIR       start from the snapshot in DIR (taken with yun vm snapshot) instead of booting
                      (with --name and --cpu-cap, no machine flags: the snapshot has them; a
                      copy may take a new --mac, and --no-net keeps the card but unplugs it)
  --incoming [ADDR:]PORT
                      wait for a live migration (yun vm migrate) on ADDR:PORT (default 127.0.0.1)
                      instead of booting. The machine flags describe what this process is willing
                      to become: its boot files, --memory, --cpus, disks (--root, --disk; without
                      them the VM's throwaway disk moves with it), network and --publish are its
                      own, and a VM that does not fit them is refused
  --incoming-token-file FILE
                      the one-time token the source must prove it holds, from FILE (mode 0600);
                      default: a fresh one, printed when listening
  --incoming-tls-cert FILE, --incoming-tls-key FILE
                      receive over TLS with this certificate and key (PEM); the source gives
                      yun vm migrate --tls-ca or --tls-fingerprint

Disks (virtio-blk; the root disk is /dev/vda, further disks /dev/vdb, /dev/vdc, ...):
  --root FILE         boot from the disk image FILE (raw or qcow2), read-write (with a partition
                      table: through U-Boot, see --boot). Default: a fresh
                      qcow2 overlay on the image's root disk, deleted when yun exits (the image
                      itself is never written); make a lasting one with
                      yun disk create -b IMAGE_ROOT_DISK -F raw FILE
  --disk FILE         add the disk image FILE, read-write (repeatable)

Shares (virtio-9p, 9P2000.L; several VMs may mount one directory at once):
  --share TAG=DIR[:ro]
                      serve the host directory DIR to the guest under the mount tag TAG
                      (repeatable); in the guest:
                        mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt
                      the guest cannot reach outside DIR (.., symbolic links); :ro refuses every
                      change with "Read-only file system"

Network (virtio-net):
  --net NAME          plug into the virtual network NAME, shared by every VM started with the
                      same NAME on this host (no DHCP there: configure addresses in the guest)
  --publish [ADDR:]HOSTPORT:GUESTPORT
                      user-mode network: forward TCP connections to ADDR:HOSTPORT on the host
                      (default ADDR 127.0.0.1; HOSTPORT 0 picks a free port) to GUESTPORT in the
                      guest (repeatable)
  --net-address CIDR  user-mode network: the guest's address and prefix (default 10.0.2.15/24;
                      the gateway is the network's .2, DNS .3)
  --metadata FILE     serve the instance metadata in FILE (JSON, as yun serve writes it) at
                      http://169.254.169.254/ (OpenStack and EC2 layouts; also with --net)
  --no-net            no network card
  --name NAME         the VM's name (default: vm-PID); its MAC address is derived from it
                      (without --name: from the --root file's path, or the throwaway disk's)
  --mac MAC           the network card's MAC address instead (e.g. 52:54:00:12:34:56)
  -h, --help          show this help

Without --net or --no-net the VM gets user-mode networking: it is 10.0.2.15 (by DHCP) behind a
NAT whose gateway 10.0.2.2 is the host's 127.0.0.1.

In a terminal, Ctrl-A X quits. With stdin not a terminal, Yun is the guest's terminal: it answers
its terminal queries and holds the piped input until the guest's shell shows its prompt (with
--kernel, also until the console has been silent for 2 s). The exit status is 0 when the guest
powers off.
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

export type { NetChoice } from "../vmm/spec.js";

/** How the VM boots: a Linux kernel, or a disk through OpenSBI and U-Boot. */
export type BootChoice =
  | { kind: "kernel" }
  /** `kernel` is then U-Boot; `entry` is what the pre-flight found U-Boot will boot on `disk`. */
  | { kind: "disk"; disk: string; entry: BootEntry; loaderVersion: string };

/** A disk that cannot boot through firmware (one sentence naming it); yun run exits with 1. */
export class BootError extends Error {}

/** The partitions of a disk image, or null when it has none or cannot be read (reported later). */
function probePartitions(path: string): Partition[] | null {
  let disk;
  try {
    disk = openDiskImage(path, { readOnly: true, lock: false });
  } catch {
    return null;
  }
  try {
    if (partitionScheme(disk) === null) return null;
    try {
      return readPartitionTable(disk)?.partitions ?? null;
    } catch {
      return []; // corrupt: a disk boot's pre-flight says so
    }
  } finally {
    disk.close();
  }
}

/** What U-Boot will boot on the disk image at `path`; a BootError when nothing. */
function preflightDisk(path: string): BootEntry {
  let disk;
  try {
    disk = openDiskImage(path, { readOnly: true, lock: false });
  } catch (e) {
    throw new BootError((e as Error).message);
  }
  try {
    return checkBootDisk(disk).entry;
  } catch (e) {
    if (e instanceof BootDiskError) throw new BootError(`${path} cannot boot through firmware: ${e.message}`);
    throw new BootError(`${path}: ${(e as Error).message}`);
  } finally {
    disk.close();
  }
}

export interface RunOptions {
  kernel: string;
  /** The kernel is the user's (--kernel), not an image's. */
  ownKernel?: boolean;
  initrd?: string;
  firmware: string | null;
  append: string;
  boot: BootChoice;
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
  cpus: number;
  /** Fraction of a host core, or null. */
  cpuCap: number | null;
  /** The display mode of the VM's GPU, or null: no display devices. */
  display: { width: number; height: number } | null;
  /** Host directories served over virtio-9p. */
  shares?: ShareSpec[];
  monitor: MonitorFlags;
}

/** How the monitor is reached and what the process starts from. */
export interface MonitorFlags {
  headless: boolean;
  apiSocket?: string;
  apiPort?: number;
  /** Yun's own messages go to this file (capped, see src/vmm/logfile.ts) instead of stderr. */
  log?: string;
  /** Start from this snapshot instead of booting. */
  restore?: string;
  /** With restore: a new MAC, or the network card's cable unplugged (--mac, --no-net). */
  restoreIdentity?: { mac?: string; unplugNet?: boolean };
  /** Wait for a live migration on this address instead of booting. */
  incoming?: { host: string; port: number };
  /** The migration token's file and the token it holds (else a fresh token is printed). */
  tokenFile?: string;
  token?: string;
  /** Receive the migration over TLS with this certificate and key. */
  tls?: { cert: string; key: string };
  /** The vsock device's Unix socket, or "none" for no device; absent: the default path. */
  vsock?: string;
  /** Serve the VM's display over VNC here (with this password, if any); host null: no TCP
   *  listener, clients come through the control socket only. */
  vnc?: { host: string; port: number; password?: string } | { host: null; port?: undefined; password?: undefined };
}

function checkInput(path: string, what: string): string {
  if (!existsSync(path)) throw new UsageError(`${what} file not found: ${path}`);
  if (!statSync(path).isFile()) throw new UsageError(`${what} is not a regular file: ${path}`);
  return resolvePath(path);
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
        share: { type: "string", multiple: true },
        net: { type: "string" },
        publish: { type: "string", multiple: true },
        "net-address": { type: "string" },
        metadata: { type: "string" },
        "no-net": { type: "boolean" },
        boot: { type: "string" },
        name: { type: "string" },
        mac: { type: "string" },
        cpus: { type: "string" },
        "cpu-cap": { type: "string" },
        display: { type: "string" },
        vnc: { type: "string" },
        "vnc-password-file": { type: "string" },
        headless: { type: "boolean" },
        "api-socket": { type: "string" },
        "api-port": { type: "string" },
        vsock: { type: "string" },
        log: { type: "string" },
        restore: { type: "string" },
        incoming: { type: "string" },
        "incoming-token-file": { type: "string" },
        "incoming-tls-cert": { type: "string" },
        "incoming-tls-key": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(((e as Error).message.split(". ")[0] ?? "bad arguments") + " (see yun run --help)");
  }
  const v = parsed.values;
  if (v.help) return "help";
  const monitor: MonitorFlags = { headless: v.headless === true };
  if (v["api-socket"] !== undefined) monitor.apiSocket = resolvePath(v["api-socket"]);
  if (v.log !== undefined) monitor.log = resolvePath(v.log);
  if (v.vsock !== undefined) {
    if (v.vsock === "") throw new UsageError("--vsock takes a socket path or none");
    monitor.vsock = v.vsock === "none" ? "none" : resolvePath(v.vsock);
  }
  if (v["api-port"] !== undefined) {
    if (!/^\d{1,5}$/.test(v["api-port"]) || Number(v["api-port"]) > 65535) {
      throw new UsageError(`--api-port takes a port number 0-65535, got "${v["api-port"]}"`);
    }
    monitor.apiPort = Number(v["api-port"]);
  }
  if (v.restore !== undefined && v.incoming !== undefined)
    throw new UsageError("--restore and --incoming contradict each other");
  if (v.display !== undefined && v.display !== "none" && v.display !== "vnc") {
    throw new UsageError(`--display takes none or vnc, got "${v.display}"`);
  }
  const wantsVnc = v.vnc !== undefined || v["vnc-password-file"] !== undefined;
  if (v.display === "none" && wantsVnc) {
    throw new UsageError(
      `--${v.vnc !== undefined ? "vnc" : "vnc-password-file"} shows a display; it cannot go with --display none`,
    );
  }
  if (v.display === "vnc" || wantsVnc) monitor.vnc = parseVnc(v.vnc, v["vnc-password-file"]);
  if (v.incoming === undefined) {
    const stray = ["incoming-token-file", "incoming-tls-cert", "incoming-tls-key"].find((k) => k in v);
    if (stray) throw new UsageError(`--${stray} goes with --incoming`);
  } else {
    // The destination of a migration: the machine flags below describe what it will become.
    monitor.incoming = parseIncoming(v.incoming);
    if ((v["incoming-tls-cert"] === undefined) !== (v["incoming-tls-key"] === undefined)) {
      throw new UsageError("--incoming-tls-cert and --incoming-tls-key go together");
    }
    if (v["incoming-token-file"] !== undefined) {
      monitor.tokenFile = resolvePath(v["incoming-token-file"]);
      try {
        monitor.token = readMigrationTokenFile(monitor.tokenFile);
      } catch (e) {
        throw new UsageError(`--incoming-token-file: ${(e as Error).message}`);
      }
    }
    if (v["incoming-tls-cert"] !== undefined) {
      monitor.tls = { cert: resolvePath(v["incoming-tls-cert"]), key: resolvePath(v["incoming-tls-key"]!) };
    }
  }
  if (v.restore !== undefined) {
    // The VM comes from a snapshot: its machine is described there.
    const given = Object.keys(v).filter(
      (k) =>
        ![
          "restore",
          "name",
          "headless",
          "api-socket",
          "api-port",
          "cpu-cap",
          "log",
          "vsock",
          "vnc",
          "vnc-password-file",
          "mac",
          "no-net",
        ].includes(k),
    );
    if (given.length > 0) {
      throw new UsageError(`--${given[0]} cannot go with --restore (the VM brings its own configuration)`);
    }
    if (v.name !== undefined && !NAME_RE.test(v.name)) throw new UsageError(`--name "${v.name}" is not a valid name`);
    monitor.restore = resolvePath(v.restore);
    // A copy of a snapshot that must not look like the original (sandboxes from one template).
    monitor.restoreIdentity = { unplugNet: v["no-net"] === true };
    if (v.mac !== undefined) {
      let bytes: Uint8Array;
      try {
        bytes = parseMac(v.mac);
      } catch (e) {
        throw new UsageError(`--mac: ${(e as Error).message}`);
      }
      if (bytes[0] & 1)
        throw new UsageError(`--mac ${v.mac} is a multicast address; a network card needs a unicast one`);
      monitor.restoreIdentity.mac = formatMac(bytes);
    }
    let restoreCap: number | null = null;
    if (v["cpu-cap"] !== undefined) {
      restoreCap = Number(v["cpu-cap"]);
      if (!/^\d*\.?\d+$/.test(v["cpu-cap"]) || !(restoreCap > 0) || restoreCap > 8) {
        throw new UsageError(`--cpu-cap takes a fraction of a host core, more than 0, got "${v["cpu-cap"]}"`);
      }
    }
    return {
      kernel: "",
      firmware: null,
      append: "",
      boot: { kind: "kernel" },
      memoryMiB: 0,
      engine: "jit",
      root: { kind: "none" },
      disks: [],
      net: { kind: "none" },
      name: v.name,
      cpus: 1,
      cpuCap: restoreCap,
      display: null,
      monitor,
    };
  }
  let cpus = 1;
  if (v.cpus !== undefined) {
    if (!/^\d+$/.test(v.cpus) || Number(v.cpus) < 1 || Number(v.cpus) > 8) {
      throw new UsageError(`--cpus takes a vCPU count 1-8, got "${v.cpus}"`);
    }
    cpus = Number(v.cpus);
    if (cpus > 1 && v.firmware === "none") {
      throw new UsageError(
        `--cpus ${cpus} needs the OpenSBI firmware: the hypervisor's own SBI (--firmware none) runs one vCPU`,
      );
    }
  }
  let cpuCap: number | null = null;
  if (v["cpu-cap"] !== undefined) {
    const f = Number(v["cpu-cap"]);
    if (!/^\d*\.?\d+$/.test(v["cpu-cap"]) || !(f > 0) || f > cpus) {
      throw new UsageError(
        `--cpu-cap takes a fraction of a host core, more than 0 and at most --cpus (${cpus}), got "${v["cpu-cap"]}"`,
      );
    }
    cpuCap = f;
  }
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
  if (v["net-address"] !== undefined && (v["no-net"] || v.net !== undefined)) {
    throw new UsageError("--net-address works with user-mode networking only (not --net or --no-net)");
  }
  if (v.metadata !== undefined && v["no-net"]) throw new UsageError("--metadata needs a network card, not --no-net");
  if (v["net-address"] !== undefined) {
    try {
      userNetAddresses(v["net-address"]);
    } catch (e) {
      throw new UsageError(`--net-address: ${(e as Error).message}`);
    }
  }
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
    if (v.metadata !== undefined) net.metadata = resolvePath(v.metadata);
  } else {
    net = { kind: "user", publish };
    if (v["net-address"] !== undefined) net.address = v["net-address"];
    if (v.metadata !== undefined) net.metadata = resolvePath(v.metadata);
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
  const withVsock = monitor.vsock !== "none";
  const display = monitor.vnc ? { width: DISPLAY_WIDTH, height: DISPLAY_HEIGHT } : null;
  const shares = (v.share ?? []).map(parseShare);
  const tags = new Set<string>();
  for (const sh of shares) {
    if (tags.has(sh.tag)) throw new UsageError(`--share: the tag ${sh.tag} is given twice`);
    tags.add(sh.tag);
  }
  const limit = maxDisks(net.kind !== "none", withVsock, display !== null, shares.length);
  if (disks.length + 1 > limit) {
    const besides = [
      net.kind !== "none" ? "the network card" : "",
      withVsock ? "the vsock device (--vsock none)" : "",
      display ? "the display" : "",
      shares.length ? `${shares.length} --share` : "",
    ];
    throw new UsageError(
      `at most ${limit - 1} --disk besides the root disk${besides
        .filter((b) => b !== "")
        .map((b) => ` and ${b}`)
        .join("")}`,
    );
  }

  // How the VM boots: a kernel (the image's, or --kernel), or a disk through its firmware.
  if (v.boot !== undefined && v.boot !== "kernel" && v.boot !== "disk") {
    throw new UsageError(`--boot takes kernel or disk, got "${v.boot}"`);
  }
  if (v.boot === "disk") {
    const given = ["kernel", "initrd", "append"].find((k) => k in v);
    if (given) {
      throw new UsageError(
        `--${given} goes with --boot kernel: a disk booted through firmware brings its own kernel and command line`,
      );
    }
    if (v.firmware === "none") {
      throw new UsageError("--boot disk needs the OpenSBI firmware, under U-Boot; --firmware none boots a kernel only");
    }
  }

  let kernel = v.kernel;
  let initrd = v.initrd;
  let firmware: string | null | undefined = v.firmware === "none" ? null : v.firmware;
  let root: RootChoice = hasRootFile ? { kind: "file", path: v.root! } : { kind: "none" };
  let rootFromImage: string | undefined;
  // The image supplies whatever was not given, and its root disk when it supplies the kernel.
  const needImage = kernel === undefined || (initrd === undefined && v.kernel === undefined) || firmware === undefined;
  if (needImage) {
    const name = v.image ?? imageFromEnvironment() ?? DEFAULT_IMAGE;
    let image = findImage(name);
    if (!image) {
      if (!AVAILABLE_IMAGES.includes(name)) throw new UsageError(`no image named "${name}" (see yun image list)`);
      process.stderr.write(`yun: image ${name} is not here yet; pulling it first\n`);
      image = await pullImage(name, { progress: process.stderr.isTTY, log: (l) => process.stderr.write(l + "\n") });
    }
    kernel ??= image.kernel;
    if (v.kernel === undefined) {
      initrd ??= image.initrd;
      if (!hasRootFile) root = { kind: "overlay", base: image.rootDisk, baseFormat: "raw" };
      // The image's root disk, or a copy of it given as --root, holds its root file system where its manifest says.
      rootFromImage = image.rootDevice;
    }
    if (firmware === undefined) firmware = image.firmware.dynamic;
  }
  if (kernel === undefined || firmware === undefined) throw new Error("internal: no kernel or firmware chosen");
  // With a display, the kernel's messages go to its framebuffer console (tty0) too; the serial port
  // stays /dev/console (the last console= named).
  let append = v.append ?? (monitor.vnc ? `console=tty0 ${DEFAULT_APPEND}` : DEFAULT_APPEND);
  // A root disk with a partition table boots through firmware unless a kernel was asked for.
  const rootPath = root.kind === "file" ? root.path : root.kind === "overlay" ? root.base : undefined;
  const table = rootPath !== undefined ? probePartitions(rootPath) : null;
  let boot: BootChoice = { kind: "kernel" };
  if (v.boot === "disk" || (v.boot === undefined && v.kernel === undefined && firmware !== null && table !== null)) {
    if (rootPath === undefined) throw new UsageError("--boot disk needs a disk to boot: give --root DISK");
    let entry: BootEntry;
    try {
      entry = preflightDisk(rootPath);
    } catch (e) {
      // Chosen for the user by the partition table: say how to boot the disk anyway.
      if (v.boot === undefined && e instanceof BootError) {
        throw new BootError(`${e.message} (--boot kernel boots the image's kernel on it instead)`);
      }
      throw e;
    }
    let loader = findBootLoader();
    if (loader === undefined) {
      process.stderr.write("yun: U-Boot (Debian's u-boot-qemu) is not here yet; fetching it first\n");
      loader = await pullBootLoader({ log: (l) => process.stderr.write(l + "\n") });
    }
    boot = { kind: "disk", disk: rootPath, entry, loaderVersion: loader.version };
    kernel = loader.path;
    initrd = undefined;
    append = "";
  }
  kernel = checkInput(kernel, "kernel");
  if (initrd !== undefined) initrd = checkInput(initrd, "initrd");
  if (firmware !== null) firmware = checkInput(firmware, "firmware");
  if (boot.kind === "kernel" && root.kind !== "none" && !/(^|\s)root=/.test(append)) {
    // On a partitioned disk the kernel's root is a partition: the first Linux one. Otherwise the
    // whole disk, as the image's manifest says (or /dev/vda).
    const part = table?.find((p) => p.linux) ?? table?.find((p) => !p.esp);
    append += ` root=${part ? `${ROOT_DEVICE}${part.index}` : (rootFromImage ?? ROOT_DEVICE)}`;
  }
  return {
    kernel,
    ownKernel: v.kernel !== undefined,
    initrd,
    firmware,
    append,
    boot,
    memoryMiB,
    engine,
    root,
    disks,
    net,
    name: v.name,
    mac,
    cpus,
    cpuCap,
    display,
    shares,
    monitor,
  };
}

/** "TAG=DIR[:ro]" → a share of the directory DIR (which must exist) under mount tag TAG. */
export function parseShare(text: string): ShareSpec {
  const eq = text.indexOf("=");
  if (eq <= 0) throw new UsageError(`--share ${text}: expected TAG=DIR[:ro], e.g. data=/srv/data`);
  const tag = text.slice(0, eq);
  let dir = text.slice(eq + 1);
  const readOnly = dir.endsWith(":ro");
  if (readOnly) dir = dir.slice(0, -3);
  const bad = checkTag(tag);
  if (bad) throw new UsageError(`--share: ${bad}`);
  if (dir === "") throw new UsageError(`--share ${text}: no directory after "="`);
  const path = resolvePath(dir);
  if (!existsSync(path) || !statSync(path).isDirectory()) {
    throw new UsageError(`--share ${text}: ${path} is not a directory`);
  }
  return { tag, path, readOnly };
}

/** The display mode `--display vnc` gives the GPU. */
const DISPLAY_WIDTH = 1024;
const DISPLAY_HEIGHT = 768;

/** `--vnc [ADDR:]PORT` (default: any free port of 127.0.0.1) and `--vnc-password-file FILE`. */
function parseVnc(address: string | undefined, passwordFile: string | undefined): MonitorFlags["vnc"] {
  let host = "127.0.0.1";
  let port = 0;
  if (address === "none") {
    if (passwordFile !== undefined)
      throw new UsageError("--vnc-password-file protects a VNC listener; --vnc none has none");
    return { host: null };
  }
  if (address !== undefined) {
    const m = /^(?:\[?([^\]]+?)\]?:)?(\d{1,5})$/.exec(address);
    if (!m || Number(m[2]) > 65535) throw new UsageError(`--vnc takes [ADDR:]PORT, got "${address}"`);
    host = m[1] ?? host;
    port = Number(m[2]);
  }
  if (passwordFile === undefined) return { host, port };
  let text: string;
  try {
    if ((statSync(passwordFile).mode & 0o077) !== 0) {
      throw new UsageError(`--vnc-password-file ${passwordFile} is open to other users (chmod 600 ${passwordFile})`);
    }
    text = readFileSync(passwordFile, "latin1");
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(
      `--vnc-password-file ${passwordFile} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const password = text.split(/\r?\n/)[0] ?? "";
  if (password === "") throw new UsageError(`--vnc-password-file ${passwordFile}: its first line is empty`);
  return { host, port, password };
}

/** "[ADDR:]PORT" of --incoming (ADDR default 127.0.0.1). */
function parseIncoming(spec: string): { host: string; port: number } {
  const m = /^(?:(.+):)?(\d{1,5})$/.exec(spec);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--incoming takes [ADDR:]PORT, got "${spec}"`);
  return { host: m[1] ?? "127.0.0.1", port: Number(m[2]) };
}

// ------------------------------------------------------------------------------------------ disks

/**
 * The VM's disks as a spec lists them: every image the user named is checked (with its backing
 * chain) before anything is created; a throwaway overlay is then made in `ownedDir` (created on
 * demand by `makeDir`).
 */
function resolveDisks(opts: RunOptions, makeDir: () => string): DiskRef[] {
  const r = opts.root;
  const given = r.kind === "file" ? [r.path, ...opts.disks] : opts.disks;
  const refs: DiskRef[] = [];
  for (const path of given) {
    const img = openDiskImage(path, { readOnly: true, lock: false });
    refs.push({ path: resolvePath(path), format: img.format, readOnly: false });
    img.close();
  }
  if (r.kind === "overlay") {
    refs.unshift({
      path: createOverlay(makeDir(), "root.qcow2", r.base, r.baseFormat),
      format: "qcow2",
      readOnly: false,
    });
  }
  return refs;
}

/** A seed for the VM's MAC address when it has no --name: the root disk's identity. */
function macSeed(opts: RunOptions, disks: DiskRef[]): string {
  if (opts.root.kind === "file") {
    try {
      return `root:${realpathSync(opts.root.path)}`;
    } catch {
      return `root:${opts.root.path}`;
    }
  }
  return disks.length ? `run:${disks[0].path}` : `run:${process.pid}`;
}

// -------------------------------------------------------------------------------------- incoming

/** The disks this destination names (--root, --disk), each checked as an image; none is created. */
function namedDisks(opts: RunOptions): DiskRef[] {
  const given = opts.root.kind === "file" ? [opts.root.path, ...opts.disks] : opts.disks;
  return given.map((path) => {
    const img = openDiskImage(path, { readOnly: true, lock: false });
    img.close();
    return { path: resolvePath(path), format: img.format, readOnly: false };
  });
}

/**
 * Waits for a live migration on `at` (token and TLS from the flags) and builds the VM here, as the
 * machine flags describe it; connections that fail the handshake are reported and the wait goes on.
 */
async function receiveIncoming(
  opts: RunOptions,
  at: { host: string; port: number },
  monitorOpts: MonitorOptions,
): Promise<{ monitor: VmMonitor; notes: string[]; sourcePid: number }> {
  const flags = opts.monitor;
  const read = (path: string, what: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new UsageError(`cannot read the TLS ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  };
  const token = flags.token ?? newMigrationToken();
  const tls = flags.tls ? { cert: read(flags.tls.cert, "certificate"), key: read(flags.tls.key, "key") } : undefined;
  const machine: IncomingMachine = {
    name: opts.name,
    memoryMiB: opts.memoryMiB,
    cpus: opts.cpus,
    engine: opts.engine,
    append: opts.append,
    kernel: opts.kernel,
    initrd: opts.initrd ?? null,
    payload: opts.boot.kind === "disk" ? "raw" : "linux",
    firmware: opts.firmware,
    disks: namedDisks(opts),
    net: opts.net,
    mac: opts.mac,
    cpuCap: opts.cpuCap,
    display: opts.display,
  };
  const listener = await listenForMigration(at.host, at.port, { tls });
  const where = `${at.host.includes(":") ? `[${at.host}]` : at.host}:${listener.port}`;
  const how = tls ? `TLS, certificate SHA-256 ${new X509Certificate(tls.cert).fingerprint256}; ` : "";
  say(
    `waiting for a migration on ${where} (${how}` +
      (flags.tokenFile !== undefined ? `token in ${flags.tokenFile})` : `one-time token ${token})`),
  );
  return receiveMigration(listener, {
    ...monitorOpts,
    token,
    machine,
    onStage: (stage, detail) =>
      say(
        stage === "connected"
          ? `migration ${detail}`
          : stage === "refused"
            ? `refused a migration connection from ${detail}`
            : `starting ${detail}`,
      ),
  });
}

// ------------------------------------------------------------------------------------------- run

const SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

const say = (line: string): void => void process.stderr.write(`yun: ${line}\n`);

/** $YUN_IMAGE: the image `yun run` boots when --image is not given. */
function imageFromEnvironment(): string | undefined {
  const name = process.env.YUN_IMAGE?.trim();
  return name === undefined || name === "" ? undefined : name;
}

export async function runCommand(args: string[]): Promise<number> {
  let opts: RunOptions | "help";
  try {
    opts = await resolveRunOptions(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`yun run: ${e.message}\n`);
      return 2;
    }
    if (e instanceof BootError || e instanceof ImageError) {
      process.stderr.write(`yun run: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  if (opts === "help") {
    process.stdout.write(HELP);
    return 0;
  }
  if (opts.monitor.log !== undefined) {
    try {
      redirectStderr(new CappedLog(opts.monitor.log));
    } catch (e) {
      process.stderr.write(`yun run: cannot open the log ${opts.monitor.log}: ${(e as Error).message}\n`);
      return 1;
    }
  }
  const home = yunHome();
  const vmsDir = join(home, "vms");
  const runDir = join(home, "run");
  // Directories made by older versions (0755, disks 0644) become owner-only.
  for (const d of [vmsDir, runDir]) tightenTree(d);
  const flags = opts.monitor;
  const interactive = !flags.headless && process.stdin.isTTY === true;
  const monitorOpts: MonitorOptions = {
    netDir: join(home, "net"),
    runDir,
    ownedDir: null,
    log: say,
    echo: flags.headless ? null : (bytes) => process.stdout.write(bytes),
    // Piped input is for the guest's shell; a terminal's (or an attached console's) reaches U-Boot too.
    typedInput: flags.headless || interactive,
    // Only a terminal that both shows the output and types into the guest answers its queries.
    echoIsTerminal: interactive && process.stdout.isTTY === true,
    typeAhead: typeAheadRule(opts),
    vsockHost: new VsockHost(),
  };
  // Bad images, snapshots, networks, names: one sentence each. (YUN_DEBUG=1 shows the stack.)
  const fail = (e: unknown): number => {
    if (process.env.YUN_DEBUG) console.error(e);
    process.stderr.write(`yun run: ${(e as Error).message}\n`);
    return e instanceof UsageError ? 2 : 1;
  };

  // The machine: booted, restored from a snapshot, or received by migration.
  let monitor: VmMonitor;
  let notes: string[] = [];
  let successorOf: number | undefined;
  try {
    if (flags.restore !== undefined) {
      const t0 = performance.now();
      const r = await VmMonitor.restore(flags.restore, monitorOpts, {
        name: opts.name,
        cpuCap: opts.cpuCap,
        ...flags.restoreIdentity,
      });
      monitor = r.monitor;
      notes = r.notes;
      monitorOpts.ownedDir = r.ownedDir;
      notes.unshift(`restored ${monitor.spec.name} from ${flags.restore} in ${Math.round(performance.now() - t0)} ms`);
    } else if (flags.incoming !== undefined) {
      const r = await receiveIncoming(opts, flags.incoming, monitorOpts);
      monitor = r.monitor;
      notes = r.notes;
      successorOf = r.sourcePid;
      monitorOpts.ownedDir = monitor.ownedDir;
    } else {
      const disks = resolveDisks(opts, () => (monitorOpts.ownedDir ??= makeOwnedDir(runDir)));
      const mac = opts.mac ?? stableMac(opts.name ?? macSeed(opts, disks));
      const spec: VmSpec = {
        name: opts.name ?? `vm-${process.pid}`,
        memoryMiB: opts.memoryMiB,
        cpus: opts.cpus,
        engine: opts.engine,
        append: opts.append,
        kernel: opts.kernel,
        initrd: opts.initrd ?? null,
        payload: opts.boot.kind === "disk" ? "raw" : "linux",
        firmware: opts.firmware,
        disks,
        net: opts.net,
        mac,
        cpuCap: opts.cpuCap,
        vsock: flags.vsock === "none" ? null : { guestCid: DEFAULT_GUEST_CID },
        display: opts.display,
        ...(opts.shares?.length ? { shares: opts.shares } : {}),
      };
      claimName(vmsDir, spec.name);
      const r = await VmMonitor.boot(spec, monitorOpts);
      monitor = r.monitor;
      notes = r.notes;
      if (opts.root.kind === "overlay") {
        notes.unshift(
          `booting from a throwaway overlay on ${opts.root.base} (changes are discarded at exit; see --root)`,
        );
      }
      if (opts.boot.kind === "disk") {
        const e = opts.boot.entry;
        notes.unshift(
          `booting ${opts.boot.disk} through OpenSBI and U-Boot ${opts.boot.loaderVersion}: ` +
            `${e.method === "efi" ? "EFI application" : e.method === "extlinux" ? "extlinux" : "boot script"} ` +
            `${e.path} on partition ${e.partition} (${e.fs})`,
        );
      }
      if (opts.net.kind !== "none") {
        notes.push(`network card ${mac}${opts.net.kind === "switch" ? ` on network ${opts.net.name}` : ""}`);
      }
    }
  } catch (e) {
    if (monitorOpts.ownedDir) rmSync(monitorOpts.ownedDir, { recursive: true, force: true });
    return fail(e);
  }

  // The display, before the guest runs so the client sees the whole boot.
  let vnc: VncServer | null = null;
  if (flags.vnc) {
    try {
      vnc = await serveVnc(monitor, flags.vnc);
      const a = vnc.address;
      notes.push(
        a === null
          ? "display served through the control socket only (--vnc none)"
          : `VNC server on ${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}${flags.vnc.password !== undefined ? " (password required)" : ""}`,
      );
    } catch (e) {
      monitor.machine.close();
      if (monitorOpts.ownedDir) rmSync(monitorOpts.ownedDir, { recursive: true, force: true });
      return fail(e);
    }
  }

  // The guest runs from here on; the control API and the registry entry come up beside it.
  for (const n of notes) say(n);
  let signalled: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    signalled ??= sig;
    monitor.stop();
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  const detach = flags.headless ? () => {} : attachConsole(monitor, interactive);
  const running = monitor.run();
  const name = monitor.spec.name;
  const control = new ControlServer(monitor);
  control.display = vnc;
  let failure: number | null = null;
  try {
    if (successorOf !== undefined) {
      // The migration's source exits right after our answer; its control socket is where ours goes.
      for (let i = 0; i < 500 && processAlive(successorOf); i++) await new Promise((done) => setTimeout(done, 20));
    }
    claimName(vmsDir, name, successorOf);
    const apiSocket = flags.apiSocket ?? defaultSocketPath(vmsDir, name);
    checkSocketPath(apiSocket);
    await control.listenSocket(apiSocket);
    let vsockSocket: string | undefined;
    if (monitor.spec.vsock) {
      vsockSocket =
        flags.vsock !== undefined && flags.vsock !== "none" ? flags.vsock : join(vmsDir, name, "vsock.sock");
      checkSocketPath(vsockSocket);
      await monitorOpts.vsockHost!.listen(vsockSocket);
    }
    const apiToken = flags.apiPort !== undefined ? randomBytes(24).toString("base64url") : undefined;
    const apiPort = apiToken !== undefined ? await control.listenHttp(flags.apiPort!, apiToken) : undefined;
    register(vmsDir, {
      name,
      pid: process.pid,
      apiSocket,
      apiPort,
      apiToken,
      vsockSocket,
      startedAt: new Date().toISOString(),
    });
    if (apiPort !== undefined) {
      say(`control API on http://127.0.0.1:${apiPort}/vm (its bearer token is in ${join(vmsDir, name, "vm.json")})`);
    }
  } catch (e) {
    failure = fail(e);
    monitor.stop();
  }
  let result: PowerOff;
  try {
    result = await running;
  } finally {
    detach();
    for (const s of SIGNALS) process.off(s, onSignal);
    await control.close();
    await monitorOpts.vsockHost!.close();
    await vnc?.close();
    if (failure === null) unregister(vmsDir, name);
    // After a migration the throwaway disks belong to the destination (monitor.ownedDir is null).
    if (monitor.ownedDir) rmSync(monitor.ownedDir, { recursive: true, force: true });
  }
  if (failure !== null) return failure;
  if (monitor.migratedAway) say(`${name} now runs in another process (migrated)`);
  if (signalled) {
    process.stderr.write(`\r\nyun: stopped by ${signalled}\r\n`);
    return 128 + (SIGNAL_NUMBERS[signalled] ?? 0);
  }
  if (result.kind === "fail") return result.code || 1;
  return 0;
}

/** Starts the VNC server on the VM's display; it follows the display to every later machine. */
async function serveVnc(monitor: VmMonitor, flags: NonNullable<MonitorFlags["vnc"]>): Promise<VncServer> {
  const first = monitor.machine.display;
  if (!first)
    throw new UsageError(`VM ${monitor.spec.name} has no display to show (it was started without --display vnc)`);
  const options = { ...first, display: first.gpu, name: monitor.spec.name, password: flags.password, log: say };
  const host = flags.host;
  const server =
    host === null
      ? VncServer.detached(options)
      : await VncServer.listen(options, host, flags.port).catch((e: NodeJS.ErrnoException) => {
          throw new Error(`the VNC server cannot listen on ${host}:${flags.port}: ${e.code ?? e.message}`);
        });
  monitor.watchMachine((m) => {
    if (m.display) server.attach({ ...m.display, display: m.display.gpu });
  });
  return server;
}

/**
 * When piped input reaches the guest (src/vmm/terminal.ts): a snapshot records whether its guest's
 * shell was ready; a migrated guest is past its boot; an image's boot shows a shell prompt (its
 * getty or init may flush the tty before); a kernel of the user's own may read its input without
 * a prompt, so a silent console lets it go.
 */
function typeAheadRule(opts: RunOptions): TypeAheadRule | undefined {
  if (opts.monitor.restore !== undefined) return undefined; // the snapshot's
  if (opts.monitor.incoming !== undefined) return "immediate";
  return opts.ownKernel === true ? "prompt-or-silence" : "prompt";
}

/**
 * Connects stdin to the guest console; returns a function that disconnects it. Keys from a
 * terminal go to the guest as typed; piped input is typed ahead (VmMonitor.typeIn).
 */
function attachConsole(monitor: VmMonitor, interactive: boolean): () => void {
  const stdin = process.stdin;
  // Yun's terminal answers for the screen the output goes to, if that is a terminal.
  if (process.stdout.isTTY) monitor.terminal.resize(process.stdout.rows, process.stdout.columns);
  let escape = false;
  const onData = (chunk: Buffer): void => {
    if (!interactive) {
      monitor.typeIn(chunk);
      return;
    }
    const out: number[] = [];
    for (const b of chunk) {
      if (escape) {
        escape = false;
        if (b === 0x78 || b === 0x58) {
          monitor.stop();
          process.stderr.write("\r\nyun: terminated by Ctrl-A X\r\n");
          return;
        }
        if (b === 0x01) out.push(1);
        continue;
      }
      if (b === 0x01) escape = true;
      else out.push(b);
    }
    if (out.length) monitor.input(Uint8Array.from(out));
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

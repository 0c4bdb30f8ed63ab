/**
 * A VM's description as plain data: what `yun run` resolved from its flags, what a snapshot
 * records and what a live migration sends ahead, so that another process can build the same
 * machine. `buildMachine` turns it into a VirtMachine with its disks and network card attached.
 */
import type { RamStorage } from "../cpu/bus.js";
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { VirtMachine, type Engine, type PayloadKind, type VirtConfig } from "./virt.js";
import type { BlockBackend } from "../devices/block.js";
import type { NetBackend } from "../devices/netdev.js";
import { checkTag, type ShareSpec } from "../devices/virtio/9p.js";
import { openDiskImage, type DiskFormat } from "../storage/image.js";
import { joinNetwork } from "../net/hub.js";
import { UserNet, type HostForward } from "../net/usernet.js";
import { MetadataService, MetadataTap, parseInstanceMetadata } from "../net/metadata.js";
import { DeferredDisk, DeferredNet } from "./deferred.js";

export type NetChoice =
  | { kind: "none" }
  /** A network card whose cable goes nowhere: a VM restored with its card, cut off (a sandbox without network). */
  | { kind: "unplugged" }
  | {
      kind: "user";
      publish: HostForward[];
      /** The guest's address and prefix ("10.0.7.15/16"); absent: 10.0.2.15/24. */
      address?: string;
      /** A JSON file of the instance's metadata (net/metadata.ts) served at 169.254.169.254; absent: none. */
      metadata?: string;
    }
  | {
      kind: "switch";
      name: string;
      /** As for "user": the metadata file, served by intercepting the NIC's frames before the switch. */
      metadata?: string;
    };

/** The instance metadata in a file (`yun run --metadata`), checked; throws SpecError naming the file. */
export function readMetadataFile(path: string): { service: MetadataService; address: string } {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new SpecError(
      `metadata file ${path} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  try {
    const record = parseInstanceMetadata(JSON.parse(text));
    return { service: new MetadataService(record), address: record.address };
  } catch (e) {
    throw new SpecError(`metadata file ${path}: ${(e as Error).message}`);
  }
}

export interface DiskRef {
  path: string;
  format: DiskFormat;
  readOnly: boolean;
}

export interface VmSpec {
  name: string;
  memoryMiB: number;
  cpus: number;
  engine: Engine;
  append: string;
  /** The S-mode program OpenSBI starts: a Linux Image, or (payload "raw") U-Boot, which boots a disk. */
  kernel: string;
  /** What `kernel` is (absent in descriptions from before disk boots: "linux"). */
  payload?: PayloadKind;
  initrd: string | null;
  /** OpenSBI fw_dynamic image, or null: the hypervisor answers SBI calls itself. */
  firmware: string | null;
  /** virtio-blk disks in /dev/vda, /dev/vdb ... order. */
  disks: DiskRef[];
  net: NetChoice;
  mac: string;
  /** At most this fraction of a host core; null: no cap. */
  cpuCap: number | null;
  /** A virtio-vsock device (the guest agent's channel) with this guest CID; absent or null: none. */
  vsock?: { guestCid: number } | null;
  /** A display (virtio-gpu in this mode, keyboard, tablet); absent or null: none. How it is shown
   *  (VNC) is the running process's business, not the VM's. */
  display?: { width: number; height: number } | null;
  /** Host directories served to the guest over virtio-9p (mount tag, path, read-only); absent: none. */
  shares?: ShareSpec[];
}

/** A problem with a spec or what it names, in one sentence. */
export class SpecError extends Error {}

/**
 * A boot file's contents; with `sizeOnly`, a buffer of its size holding just its first 4 KiB (the
 * Linux header): enough to lay out RAM when the RAM comes from a snapshot or a migration, and much
 * faster than reading tens of megabytes inside a migration's downtime.
 */
function readInput(path: string, what: string, sizeOnly = false): Uint8Array {
  if (!existsSync(path)) throw new SpecError(`${what} file not found: ${path}`);
  const st = statSync(path);
  if (!st.isFile()) throw new SpecError(`${what} is not a regular file: ${path}`);
  if (!sizeOnly) return readFileSync(path);
  const out = new Uint8Array(st.size);
  const fd = openSync(path, "r");
  try {
    readSync(fd, out, 0, Math.min(4096, st.size), 0);
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Opens the spec's network: user-mode NAT, a switch port, or nothing. Notes are for the user. */
export async function openNet(
  choice: NetChoice,
  netDir: string,
): Promise<{ backend: NetBackend | null; notes: string[] }> {
  switch (choice.kind) {
    case "none":
      return { backend: null, notes: [] };
    case "unplugged":
      return { backend: { send: () => {}, attach: () => {}, close: () => {} }, notes: [] };
    case "switch": {
      const metadata = choice.metadata ? readMetadataFile(choice.metadata) : undefined;
      let port: NetBackend;
      try {
        port = await joinNetwork(choice.name, netDir);
      } catch (e) {
        metadata?.service.close();
        throw e;
      }
      return { backend: metadata ? new MetadataTap(port, metadata.service, metadata.address) : port, notes: [] };
    }
    case "user": {
      const metadata = choice.metadata ? readMetadataFile(choice.metadata).service : undefined;
      let user: UserNet;
      try {
        user = new UserNet({ hostForwards: choice.publish, address: choice.address, metadata });
      } catch (e) {
        metadata?.close();
        throw new SpecError((e as Error).message);
      }
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

export interface BuildOptions {
  /** Where named networks' switch daemons live ($YUN_HOME/net). */
  netDir: string;
  output: VirtConfig["output"];
  log?: VirtConfig["log"];
  /** RAM contents to start from (see VirtConfig.ram). */
  ram?: RamStorage;
}

/** The machine of a spec, from its boot files and its opened (or stand-in) disks and network. */
function newMachine(
  spec: VmSpec,
  opts: BuildOptions,
  boot: { kernel: Uint8Array; initrd: Uint8Array | undefined; firmware: Uint8Array | null },
  disks: BlockBackend[],
  net: NetBackend | null,
): VirtMachine {
  const machine = new VirtMachine({
    kernel: boot.kernel,
    payload: spec.payload ?? "linux",
    initrd: boot.initrd,
    firmware: boot.firmware,
    firmwareKind: boot.firmware ? "dynamic" : "none",
    append: spec.append,
    memoryMiB: spec.memoryMiB,
    cpus: spec.cpus,
    engine: spec.engine,
    output: opts.output,
    log: opts.log,
    disks,
    net,
    mac: spec.mac,
    vsock: spec.vsock ?? null,
    ram: opts.ram,
    display: spec.display ?? null,
    shares: spec.shares ?? [],
  });
  if (spec.cpuCap !== null) machine.setCpuCap(spec.cpuCap);
  return machine;
}

/**
 * Builds the machine a spec describes: reads kernel, initrd and firmware, opens every disk (whole
 * chains checked before anything is written) and the network. Throws SpecError, DiskImageError or
 * a network error with nothing left open.
 */
export async function buildMachine(
  spec: VmSpec,
  opts: BuildOptions,
): Promise<{ machine: VirtMachine; notes: string[] }> {
  const sizeOnly = opts.ram !== undefined;
  const kernel = readInput(spec.kernel, "kernel", sizeOnly);
  const initrd = spec.initrd ? readInput(spec.initrd, "initrd", sizeOnly) : undefined;
  const firmware = spec.firmware ? readInput(spec.firmware, "firmware", sizeOnly) : null;
  for (const d of spec.disks) openDiskImage(d.path, { readOnly: true, lock: false, format: d.format }).close();
  const disks: BlockBackend[] = [];
  let net: { backend: NetBackend | null; notes: string[] } = { backend: null, notes: [] };
  try {
    for (const d of spec.disks) disks.push(openDiskImage(d.path, { readOnly: d.readOnly, format: d.format }));
    net = await openNet(spec.net, opts.netDir);
    const machine = newMachine(spec, opts, { kernel, initrd, firmware }, disks, net.backend);
    return { machine, notes: net.notes };
  } catch (e) {
    for (const d of disks) d.close();
    net.backend?.close();
    throw e;
  }
}

/** What the guest knows of a disk: its size, whether it is read-only and its serial. */
export interface DiskGeometry {
  size: number;
  readOnly: boolean;
  serial: string;
}

/**
 * Builds the machine a spec describes over `ram` (RAM arriving by migration) with stand-ins for its
 * disks (of the given geometry: nothing is opened) and network, so that it is ready before the disks
 * are free to open. `plug` then opens the real ones (at the paths of `final`) and connects them.
 */
export function buildDeferred(
  spec: VmSpec,
  geometry: DiskGeometry[],
  opts: BuildOptions & { ram: RamStorage },
): { machine: VirtMachine; plug: (final: VmSpec) => Promise<string[]> } {
  const kernel = readInput(spec.kernel, "kernel", true);
  const initrd = spec.initrd ? readInput(spec.initrd, "initrd", true) : undefined;
  const firmware = spec.firmware ? readInput(spec.firmware, "firmware", true) : null;
  const disks = geometry.map((g) => new DeferredDisk(g.size, g.readOnly, g.serial));
  const net = spec.net.kind === "none" ? null : new DeferredNet();
  const machine = newMachine(spec, opts, { kernel, initrd, firmware }, disks, net);
  const plug = async (final: VmSpec): Promise<string[]> => {
    const opened: BlockBackend[] = [];
    try {
      for (const d of final.disks) opened.push(openDiskImage(d.path, { readOnly: d.readOnly, format: d.format }));
      opened.forEach((b, i) => disks[i].plug(b));
      const n = await openNet(final.net, opts.netDir);
      if (net && n.backend) net.plug(n.backend);
      return n.notes;
    } catch (e) {
      for (const b of opened) b.close();
      throw e;
    }
  };
  return { machine, plug };
}

/** Why `v` is not a VmSpec (from a snapshot file or a migration peer), or null. */
export function checkSpec(v: unknown): string | null {
  if (typeof v !== "object" || v === null) return "the VM description is not an object";
  const s = v as Partial<VmSpec>;
  if (typeof s.name !== "string" || s.name === "") return "the VM description has no name";
  if (typeof s.memoryMiB !== "number" || !(s.memoryMiB >= 16 && s.memoryMiB <= 65536)) return "bad memory size";
  if (typeof s.cpus !== "number" || !(s.cpus >= 1 && s.cpus <= 8)) return "bad vCPU count";
  if (s.engine !== "jit" && s.engine !== "interp") return "bad engine";
  if (typeof s.append !== "string" || typeof s.kernel !== "string") return "no kernel";
  if (s.initrd !== null && typeof s.initrd !== "string") return "bad initrd";
  if (s.payload !== undefined && s.payload !== "linux" && s.payload !== "raw") return "bad boot payload";
  if (s.firmware !== null && typeof s.firmware !== "string") return "bad firmware";
  if (!Array.isArray(s.disks) || !s.disks.every((d) => typeof d?.path === "string")) return "bad disk list";
  if (typeof s.net !== "object" || s.net === null || !["none", "unplugged", "user", "switch"].includes(s.net.kind)) {
    return "bad network";
  }
  if (typeof s.mac !== "string") return "bad MAC address";
  if (s.cpuCap !== null && typeof s.cpuCap !== "number") return "bad CPU cap";
  if (s.vsock !== undefined && s.vsock !== null && typeof s.vsock?.guestCid !== "number") return "bad vsock device";
  if (s.shares !== undefined) {
    if (!Array.isArray(s.shares)) return "bad share list";
    for (const sh of s.shares) {
      if (typeof sh?.tag !== "string" || typeof sh.path !== "string") return "bad share";
      const why = checkTag(sh.tag);
      if (why) return why;
    }
  }
  if (s.display != null) {
    const d = s.display;
    if (typeof d !== "object" || !isDisplayDimension(d.width) || !isDisplayDimension(d.height))
      return "bad display mode";
  }
  return null;
}

/** Display modes run from 320x200 to 8192x8192 (the GPU's largest resource). */
export function isDisplayDimension(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 200 && v <= 8192;
}

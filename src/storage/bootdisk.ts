/**
 * The pre-flight of a disk that boots through firmware: Yun looks for what U-Boot's distro boot
 * (Debian's qemu-riscv64_smode build: `bootcmd=run distro_bootcmd`) will look for, the same way,
 * before the firmware starts, so a disk that cannot boot is reported in one sentence within
 * seconds instead of ending at U-Boot's prompt.
 *
 * U-Boot scans the partitions `part list -bootable` gives (GPT: legacy-BIOS-bootable attribute or
 * EFI system type; MBR: boot flag or type 0xef), or partition 1 when there are none. On each, with
 * a file system it reads (FAT, ext4): /extlinux/extlinux.conf and /boot/extlinux/extlinux.conf,
 * then boot.scr(.uimg) in / and /boot, then the removable-media EFI application
 * /EFI/BOOT/BOOTRISCV64.EFI (its name is case-sensitive on ext4, where U-Boot asks for
 * efi/boot/bootriscv64.efi).
 */
import { FatVolume } from "./fat.js";
import { Ext4Volume } from "./ext4read.js";
import {
  PartitionTableError,
  partitionReader,
  readPartitionTable,
  type DiskReader,
  type Partition,
  type PartitionTable,
} from "./partition.js";

/** Why a disk cannot boot through firmware, in one sentence (without the disk's name). */
export class BootDiskError extends Error {}

export interface BootEntry {
  method: "extlinux" | "script" | "efi";
  /** The partition (1-based) and the file U-Boot will load from it. */
  partition: number;
  path: string;
  fs: "FAT12" | "FAT16" | "FAT32" | "ext4";
  /** extlinux: the kernel its default entry names. */
  kernel?: string;
}

export interface BootDiskReport {
  table: PartitionTable;
  entry: BootEntry;
}

/** PE machine types (Microsoft PE format), for the message about an EFI binary of the wrong kind. */
const PE_MACHINES: Record<number, string> = {
  0x5064: "RISC-V 64",
  0x5032: "RISC-V 32",
  0x5128: "RISC-V 128",
  0x8664: "x86-64",
  0x014c: "i386",
  0xaa64: "ARM64",
  0x01c2: "ARM Thumb",
  0x01c4: "ARMv7",
  0x6264: "LoongArch 64",
};
export const PE_MACHINE_RISCV64 = 0x5064;

/** The PE machine field of an EFI binary's first bytes, or null when they hold no PE header. */
export function peMachine(head: Uint8Array): number | null {
  if (head.length < 0x40 || head[0] !== 0x4d || head[1] !== 0x5a) return null;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const pe = v.getUint32(0x3c, true);
  if (pe + 6 > head.length) return null;
  if (v.getUint32(pe, true) !== 0x00004550) return null; // "PE\0\0"
  return v.getUint16(pe + 4, true);
}

const EXTLINUX = ["/extlinux/extlinux.conf", "/boot/extlinux/extlinux.conf"];
const SCRIPTS = ["/boot.scr.uimg", "/boot.scr", "/boot/boot.scr.uimg", "/boot/boot.scr"];
const EFI_FAT = "/EFI/BOOT/BOOTRISCV64.EFI";
const EFI_EXT4 = "/efi/boot/bootriscv64.efi";

interface Volume {
  fs: BootEntry["fs"];
  exists(path: string): boolean;
  readFile(path: string, limit?: number): Uint8Array | undefined;
}

function openVolume(disk: DiskReader): Volume | null {
  try {
    const fat = new FatVolume(disk);
    return { fs: fat.kind, exists: (p) => fat.exists(p), readFile: (p, l) => fat.readFile(p, l) };
  } catch {
    // not FAT
  }
  try {
    const ext4 = new Ext4Volume(disk);
    return { fs: "ext4", exists: (p) => ext4.exists(p), readFile: (p, l) => ext4.readFile(p, l) };
  } catch {
    return null;
  }
}

/**
 * The kernel the default entry of an extlinux.conf names (the DEFAULT label's, else the first
 * label's), as an absolute path: U-Boot's sysboot takes absolute paths as they are and relative
 * ones from the directory of extlinux.conf.
 */
export function extlinuxKernel(conf: string, confPath: string): string | undefined {
  const labels: { name: string; kernel?: string }[] = [];
  let dflt: string | undefined;
  for (const raw of conf.split(/\r?\n/)) {
    const m = /^\s*(\S+)\s*(.*?)\s*$/.exec(raw.replace(/#.*$/, ""));
    if (!m) continue;
    const key = m[1].toLowerCase();
    if (key === "default") dflt = m[2];
    else if (key === "label") labels.push({ name: m[2] });
    else if ((key === "kernel" || key === "linux") && labels.length > 0)
      labels[labels.length - 1].kernel = m[2].split(/\s+/)[0];
  }
  const chosen = labels.find((l) => l.name === dflt) ?? labels[0];
  const k = chosen?.kernel;
  if (k === undefined) return undefined;
  return k.startsWith("/") ? k : confPath.slice(0, confPath.lastIndexOf("/") + 1) + k;
}

/** What U-Boot will boot on this partition, or null; a BootDiskError for a boot file that cannot work. */
function scanPartition(disk: DiskReader, p: Partition): BootEntry | null {
  const vol = openVolume(partitionReader(disk, p));
  if (vol === null) return null;
  const where = `partition ${p.index}`;
  for (const path of EXTLINUX) {
    const conf = vol.readFile(path, 256 * 1024);
    if (conf === undefined) continue;
    const kernel = extlinuxKernel(new TextDecoder().decode(conf), path);
    if (kernel === undefined)
      throw new BootDiskError(`${path} on ${where} names no kernel (no LABEL with a KERNEL line)`);
    if (!vol.exists(kernel))
      throw new BootDiskError(`${path} on ${where} names the kernel ${kernel}, which is not on ${where}`);
    return { method: "extlinux", partition: p.index, path, fs: vol.fs, kernel };
  }
  for (const path of SCRIPTS) {
    if (vol.exists(path)) return { method: "script", partition: p.index, path, fs: vol.fs };
  }
  const efi = vol.fs === "ext4" ? EFI_EXT4 : EFI_FAT;
  const head = vol.readFile(efi, 4096);
  if (head !== undefined) {
    const machine = peMachine(head);
    if (machine === null) throw new BootDiskError(`${efi} on ${where} is not an EFI application (no PE header)`);
    if (machine !== PE_MACHINE_RISCV64) {
      const arch = PE_MACHINES[machine] ?? "another architecture";
      const hex = (n: number): string => `0x${n.toString(16).padStart(4, "0")}`;
      throw new BootDiskError(
        `${efi} on ${where} is an EFI application for ${arch} (PE machine ${hex(machine)}), not for RISC-V 64 (${hex(PE_MACHINE_RISCV64)})`,
      );
    }
    return { method: "efi", partition: p.index, path: efi, fs: vol.fs };
  }
  return null;
}

/**
 * What U-Boot will boot from this disk: throws BootDiskError when the disk has no partition table,
 * a corrupt one, or nothing U-Boot can boot (the message says what was looked for, and where).
 */
export function checkBootDisk(disk: DiskReader): BootDiskReport {
  let table: PartitionTable | null;
  try {
    table = readPartitionTable(disk);
  } catch (e) {
    if (e instanceof PartitionTableError) throw new BootDiskError(e.message);
    throw e;
  }
  if (table === null) throw new BootDiskError("it has no partition table (GPT or MBR)");
  const bootable = table.partitions.filter((p) => p.bootable);
  const first = table.partitions.find((p) => p.index === 1);
  const scanned = bootable.length > 0 ? bootable : first ? [first] : [];
  for (const p of scanned) {
    const entry = scanPartition(disk, p);
    if (entry !== null) return { table, entry };
  }
  const which =
    bootable.length > 0
      ? `its bootable partition${bootable.length > 1 ? "s" : ""} (${bootable.map((p) => p.index).join(", ")})`
      : first
        ? "partition 1 (no partition is marked bootable)"
        : "any partition (it has no partition 1 and none is marked bootable)";
  throw new BootDiskError(
    `it has no bootable partition: U-Boot looks in ${which} for extlinux/extlinux.conf, boot.scr or ` +
      `${EFI_FAT} on a FAT or ext4 file system, and none is there`,
  );
}

// Builds the partitioned disks the firmware tests boot, with Debian's own tools (sgdisk from gdisk,
// mkfs.fat from dosfstools, mmd/mcopy from mtools, mke2fs from e2fsprogs, grub-mkimage from
// grub-common) and Debian's riscv64 GRUB modules (grub-efi-riscv64-bin, fetched through the
// project's private apt and cached like the image's packages).
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { CpioWriter, readCpio } from "../../src/images/cpio.js";
import { discoverDebianMirror, PrivateApt } from "../../src/images/apt.js";
import { extractDeb } from "../../src/images/deb.js";
import { aptStateDir, debCacheDir } from "../../src/images/paths.js";
import { findInPath } from "../../src/images/util.js";

export const MIB = 1024 * 1024;
export const MARKER = "YUN-DISK-BOOT-MARKER";

/** The host tools the disks need, and which are missing. */
export function missingTools(): string[] {
  return ["sgdisk", "mkfs.fat", "mmd", "mcopy", "mke2fs", "grub-mkimage"].filter(
    (t) => findInPath(t, `${process.env.PATH}:/usr/sbin:/sbin`) === undefined,
  );
}

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): void => {
  execFileSync(cmd, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin`, ...env },
  });
};

/**
 * A busybox initramfs whose /init prints MARKER and the kernel command line, then powers off: the
 * busybox binary comes from the image's own initramfs.
 */
export function markerInitramfs(imageInitrd: string): Buffer {
  const busybox = readCpio(readFileSync(imageInitrd)).find((e) => /^(usr\/)?bin\/busybox$/.test(e.name));
  if (!busybox) throw new Error(`${imageInitrd} holds no bin/busybox`);
  const w = new CpioWriter();
  w.dir("bin").dir("dev").dir("proc");
  w.charDevice("dev/console", 5, 1, { mode: 0o600 });
  w.file("bin/busybox", busybox.data, { mode: 0o755 });
  w.symlink("bin/sh", "busybox");
  w.file(
    "init",
    `#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho "${MARKER}: $(/bin/busybox cat /proc/cmdline)"\n/bin/busybox poweroff -f\n`,
    { mode: 0o755 },
  );
  return w.finish();
}

/** Writes `data` (a file's contents) into `disk` at byte `offset`. */
function place(disk: string, offset: number, data: Uint8Array): void {
  const fd = openSync(disk, "r+");
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Byte offset of partition `n` of a GPT disk, from sgdisk. */
function partStart(disk: string, n: number): number {
  const out = execFileSync("sgdisk", ["-i", String(n), disk], { encoding: "utf8" });
  const m = /First sector: (\d+)/.exec(out);
  if (!m) throw new Error(`sgdisk found no partition ${n} on ${disk}`);
  return Number(m[1]) * 512;
}

/**
 * A FAT32 image of `sizeMiB` holding `files` (path on the volume → contents), made with mkfs.fat
 * and mtools.
 */
export function fatImage(
  work: string,
  name: string,
  sizeMiB: number,
  files: Record<string, Uint8Array | string>,
): Buffer {
  const img = join(work, `${name}.fat`);
  rmSync(img, { force: true });
  // FAT32 needs 65525 clusters or more; smaller volumes get what mkfs.fat picks (FAT12 or FAT16).
  run("mkfs.fat", [...(sizeMiB >= 36 ? ["-F", "32"] : []), "-C", img, String(sizeMiB * 1024)]);
  const dirs = new Set<string>();
  for (const path of Object.keys(files)) {
    const parts = path.split("/").filter((p) => p);
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  const env = { MTOOLS_SKIP_CHECK: "1" };
  for (const d of [...dirs].sort()) run("mmd", ["-i", img, `::/${d}`], env);
  for (const [path, data] of Object.entries(files)) {
    const src = join(work, `${name}.tmp`);
    writeFileSync(src, data);
    run("mcopy", ["-i", img, src, `::/${path.replace(/^\//, "")}`], env);
  }
  return readFileSync(img);
}

/**
 * A GPT disk of `sizeMiB` with one partition from 1 MiB on, of sgdisk type `type` (ef00: EFI
 * system, 8300: Linux), its attributes set (`legacyBoot`: bit 2), holding `volume`.
 */
export function gptDisk(path: string, sizeMiB: number, type: string, volume: Uint8Array, legacyBoot = false): void {
  writeFileSync(path, "");
  execFileSync("truncate", ["-s", `${sizeMiB}M`, path]);
  const end = Math.ceil(volume.length / 512) + 2048 - 1;
  run("sgdisk", ["-n", `1:2048:${end}`, "-t", `1:${type}`, ...(legacyBoot ? ["-A", "1:set:2"] : []), path]);
  place(path, partStart(path, 1), volume);
}

/** An ext4 image of `sizeMiB` holding the directory tree `dir` (mke2fs -d). */
export function ext4Image(work: string, name: string, sizeMiB: number, dir: string): Buffer {
  const img = join(work, `${name}.ext4`);
  writeFileSync(img, "");
  execFileSync("truncate", ["-s", `${sizeMiB}M`, img]);
  run("mke2fs", ["-q", "-F", "-t", "ext4", "-d", dir, img]);
  return readFileSync(img);
}

/** A 4 KiB PE/COFF header for `machine` (0x5064 RISC-V 64, 0x8664 x86-64): enough for a pre-flight. */
export function peStub(machine: number): Buffer {
  const b = Buffer.alloc(4096);
  b.write("MZ", 0, "latin1");
  b.writeUInt32LE(0x80, 0x3c);
  b.write("PE\0\0", 0x80, "latin1");
  b.writeUInt16LE(machine, 0x84);
  return b;
}

/**
 * Debian trixie's riscv64 GRUB modules (grub-efi-riscv64-bin), fetched once through the private
 * apt into the package cache and unpacked into `work`; returns the modules directory.
 */
export async function grubModules(work: string): Promise<string> {
  const dir = join(work, "grub");
  const mods = join(dir, "usr/lib/grub/riscv64-efi");
  if (existsSync(mods)) return mods;
  const mirror = discoverDebianMirror();
  if (mirror === undefined) throw new Error("no Debian mirror in the host's apt sources for grub-efi-riscv64-bin");
  const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: mirror.uri });
  await apt.configure();
  const debs = debCacheDir();
  mkdirSync(debs, { recursive: true });
  let pkg;
  try {
    pkg = await apt.show("grub-efi-riscv64-bin");
  } catch {
    await apt.update();
    pkg = await apt.show("grub-efi-riscv64-bin");
  }
  const deb = join(debs, pkg.debName);
  if (!existsSync(deb)) await apt.download([`${pkg.name}=${pkg.version}`], debs);
  mkdirSync(dir, { recursive: true });
  await extractDeb(deb, dir);
  return mods;
}

/**
 * GRUB as a RISC-V EFI application (grub-mkimage -O riscv64-efi from Debian's modules), with an
 * embedded configuration that loads /EFI/BOOT/grub.cfg from the partition it was started from.
 */
export function grubEfi(work: string, modules: string): Buffer {
  const out = join(work, "grubriscv64.efi");
  run("grub-mkimage", [
    "-O",
    "riscv64-efi",
    "-d",
    modules,
    "-o",
    out,
    "-p",
    "/EFI/BOOT",
    ...["part_gpt", "part_msdos", "fat", "ext2", "normal", "linux", "echo", "configfile", "search", "test"],
  ]);
  return readFileSync(out);
}

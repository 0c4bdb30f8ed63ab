/**
 * The local image store: `$YUN_HOME/images/<name>/` with a manifest.json describing the files.
 * Manifests of another format than MANIFEST_FORMAT (older images, e.g. without a root disk) read as
 * absent, so the image is rebuilt by the next pull.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { imageDir, imagesRoot } from "./paths.js";
import { sha256File } from "./util.js";

/** Images `yun image pull` knows how to build. */
export const AVAILABLE_IMAGES: readonly string[] = ["debian", "debian-tiny"];

export interface ImageInfo {
  name: string;
  /** The image directory. */
  dir: string;
  /** Absolute path of the kernel (a flat RISC-V Image, EFI-stub header, not ELF). */
  kernel: string;
  /** Absolute path of the initramfs (uncompressed newc cpio). */
  initrd: string;
  /** Absolute paths of the OpenSBI firmware builds. */
  firmware: { jump: string; dynamic: string };
  /**
   * Absolute path of the root disk: a raw ext4 image (sparse) for the first virtio-blk device, booted
   * with "root=/dev/vda" on the kernel command line. It is the image's pristine copy: a VM should run
   * on its own copy (see copySparseFile), since writing to it makes `yun image pull` rebuild it.
   */
  rootDisk: string;
  /** The root file system's guest device ("/dev/vda" for a bare ext4 disk, "/dev/vda1" for a partitioned one). */
  rootDevice: string;
  kernelVersion: string;
  packages: { name: string; version: string }[];
  /** ISO 8601 time the image was built. */
  created: string;
  /** Disk space the image's files take (for the sparse root disk, what is allocated). */
  sizeBytes: number;
}

export const MANIFEST_FILE = "manifest.json";

/** The manifest format written now; images with another format are rebuilt by `yun image pull`. */
export const MANIFEST_FORMAT = 2;

/** What the root disk holds. */
export interface RootfsManifest {
  /** Guest device, label and file system type. */
  device: string;
  label: string;
  fsType: "ext4";
  /** File system size in bytes. */
  sizeBytes: number;
  /** Packages installed on it (a subset of the image's packages), sorted. */
  packages: string[];
  /** Dependencies deliberately not installed, and why. */
  omitted: { name: string; neededBy: string; reason: string }[];
  /** Busybox applets linked into /usr/bin and /usr/sbin. */
  busyboxApplets: number;
  /** Regular files and their total size. */
  files: number;
  fileBytes: number;
  /** ROOTFS_REVISION it was built with (absent: 1). */
  revision?: number;
  /** SHA-256 of guest/agent/agent.c when the image has the guest agent; null or absent: no agent. */
  agent?: string | null;
}

/** manifest.json as written by the image builder. */
export interface ImageManifest {
  format: typeof MANIFEST_FORMAT;
  name: string;
  created: string;
  suite: string;
  architecture: string;
  kernelVersion: string;
  packages: { name: string; version: string }[];
  kernel: string;
  initrd: string;
  firmware: { jump: string; dynamic: string };
  /** The root disk's file name. */
  rootDisk: string;
  rootfs: RootfsManifest;
  /** Kernel modules in the initramfs, in load order. */
  modules: string[];
  /** Every produced file (relative to the image directory) with its SHA-256 and size. */
  files: Record<string, { sha256: string; size: number }>;
  /** A partitioned root disk (the full image): its layout and u-boot-menu's extlinux.conf. */
  disk?: {
    partitionTable: "gpt";
    diskBytes: number;
    rootPartition: number;
    partitionOffsetBytes: number;
    partitionUuid: string;
    extlinux: string;
  };
  /** How the image was built (the full image): enough to rebuild it with the same package versions. */
  build?: {
    tool: "mmdebstrap";
    mirror: string;
    sourceDateEpoch: number;
    /** SHA-256 of guest/debian when it was built. */
    guestFiles: string;
    seconds: number;
    /** Built from a --versions file. */
    pinned: boolean;
  };
}

function isManifest(x: unknown): x is ImageManifest {
  if (typeof x !== "object" || x === null) return false;
  const m = x as Record<string, unknown>;
  const fw = m.firmware as Record<string, unknown> | undefined;
  return (
    m.format === MANIFEST_FORMAT &&
    typeof m.name === "string" &&
    typeof m.created === "string" &&
    typeof m.kernelVersion === "string" &&
    typeof m.kernel === "string" &&
    typeof m.initrd === "string" &&
    typeof m.rootDisk === "string" &&
    typeof m.rootfs === "object" &&
    m.rootfs !== null &&
    typeof fw === "object" &&
    fw !== null &&
    typeof fw.jump === "string" &&
    typeof fw.dynamic === "string" &&
    Array.isArray(m.packages) &&
    typeof m.files === "object" &&
    m.files !== null
  );
}

function validName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name);
}

/** Reads an image directory's manifest; undefined if absent or malformed. */
export function readManifest(dir: string): ImageManifest | undefined {
  try {
    const parsed: unknown = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), "utf8"));
    return isManifest(parsed) ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/** ImageInfo for a manifest in `dir`. */
export function imageInfo(dir: string, m: ImageManifest): ImageInfo {
  let size = 0;
  for (const [file, meta] of Object.entries(m.files)) {
    try {
      const st = statSync(join(dir, file));
      size += Math.min(st.size, st.blocks * 512);
    } catch {
      size += meta.size;
    }
  }
  return {
    name: m.name,
    dir,
    kernel: join(dir, m.kernel),
    initrd: join(dir, m.initrd),
    firmware: { jump: join(dir, m.firmware.jump), dynamic: join(dir, m.firmware.dynamic) },
    rootDisk: join(dir, m.rootDisk),
    rootDevice: m.rootfs.device,
    kernelVersion: m.kernelVersion,
    packages: m.packages.map((p) => ({ name: p.name, version: p.version })),
    created: m.created,
    sizeBytes: size,
  };
}

/** The installed image called `name`, or undefined if it is not there (or incomplete). */
export function findImage(name: string): ImageInfo | undefined {
  if (!validName(name)) return undefined;
  const dir = imageDir(name);
  const m = readManifest(dir);
  if (m === undefined || m.name !== name) return undefined;
  const info = imageInfo(dir, m);
  for (const p of [info.kernel, info.initrd, info.firmware.jump, info.firmware.dynamic, info.rootDisk]) {
    if (!existsSync(p)) return undefined;
  }
  return info;
}

/** Every installed image, sorted by name. */
export function listImages(): ImageInfo[] {
  let names: string[];
  try {
    names = readdirSync(imagesRoot(), { withFileTypes: true })
      .filter((e) => e.isDirectory() && !e.name.startsWith("."))
      .map((e) => e.name)
      .sort();
  } catch {
    return [];
  }
  const out: ImageInfo[] = [];
  for (const n of names) {
    const info = findImage(n);
    if (info !== undefined) out.push(info);
  }
  return out;
}

/**
 * Checks every file listed in the manifest against its recorded SHA-256.
 * Returns the list of problems (empty if the image is intact).
 */
export async function verifyImage(dir: string, manifest: ImageManifest): Promise<string[]> {
  const problems: string[] = [];
  const required = [
    manifest.kernel,
    manifest.initrd,
    manifest.firmware.jump,
    manifest.firmware.dynamic,
    manifest.rootDisk,
  ];
  for (const r of required) if (manifest.files[r] === undefined) problems.push(`${r} is not in the manifest`);
  for (const [file, meta] of Object.entries(manifest.files)) {
    const path = join(dir, file);
    try {
      if (statSync(path).size !== meta.size) {
        problems.push(`${file} has the wrong size`);
        continue;
      }
      if ((await sha256File(path)) !== meta.sha256) problems.push(`${file} does not match its checksum`);
    } catch {
      problems.push(`${file} is missing`);
    }
  }
  return problems;
}

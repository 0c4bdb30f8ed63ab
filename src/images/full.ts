/**
 * `yun image pull debian`: the full Debian trixie riscv64 image — systemd, apt (sources: the host's
 * Debian mirror), openssh-server, systemd-networkd DHCP on every NIC, cloud-init, qemu-guest-agent,
 * sudo, a root autologin getty on the serial console, Debian's kernel with its own initramfs, and
 * u-boot-menu's extlinux.conf.
 *
 * Debian's own tools build it: mmdebstrap installs the packages into a directory and runs every
 * maintainer script inside it under qemu-user (binfmt_misc), so the system is configured exactly as
 * Debian configures it (update-initramfs included). Yun's guest files (guest/debian/) are copied in
 * by a customize hook, which also checks `dpkg --audit`.
 *
 *   update      apt-get update in the target (the host's Debian mirror, or YUN_APT_MIRROR)
 *   download    the packages (reused from $YUN_HOME/cache/debs-full between pulls)
 *   unpack      every package unpacked
 *   essential   the Essential set configured
 *   configure   the rest configured (maintainer scripts under qemu-user)
 *   initramfs   update-initramfs in the target
 *   customize   guest/debian/customize.sh: Yun's files, lean boot, u-boot-update, dpkg --audit
 *   disk        disk.img: a sparse 4 GiB GPT disk, partition 1 (legacy BIOS bootable, for U-Boot's
 *               distro boot) an ext4 root made from the tree by mke2fs -d, checked by e2fsck
 *
 * The image directory holds disk.img, the kernel (vmlinux) and initrd.img from the target's /boot
 * and OpenSBI (for `yun run`'s kernel boot), and manifest.json: every package with its version, so
 * `yun image pull debian --versions manifest.json` rebuilds the same package set. It is replaced
 * atomically; a second pull is a no-op while the files match their checksums and guest/debian is
 * unchanged.
 */
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createHash } from "node:crypto";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { discoverDebianMirror, DEBIAN_KEYRING } from "./apt.js";
import { checkExt4, findE2fsTool, requireE2fsTools } from "./ext4.js";
import { guidFromSeed, LEGACY_BIOS_BOOTABLE, LINUX_FILESYSTEM_TYPE, SECTOR, usableLbas, writeGpt } from "./gpt.js";
import { cacheDir, imageDir, imagesRoot } from "./paths.js";
import { PhaseProgress } from "./progress.js";
import {
  imageInfo,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  readManifest,
  verifyImage,
  type ImageInfo,
  type ImageManifest,
} from "./store.js";
import type { PullOptions } from "./tiny.js";
import { DEBIAN_ARCH, DEBIAN_SUITE } from "./tiny.js";
import { findInPath, formatDuration, formatSize, ImageError, run, sha256File } from "./util.js";

/** The full Debian image. */
export const FULL_IMAGE = "debian";

/** Installed on top of Debian's "important" priority set (which brings apt, cron, logrotate, ...). */
export const FULL_PACKAGES: readonly string[] = [
  "systemd-sysv",
  "udev",
  "dbus",
  "systemd-resolved",
  "openssh-server",
  "iproute2",
  "ca-certificates",
  "sudo",
  "cloud-init",
  "qemu-guest-agent",
  "linux-image-riscv64",
  "initramfs-tools",
  "u-boot-menu",
  // Not used by the guest itself: its fw_dynamic.bin is what `yun run` boots the kernel with.
  "opensbi",
];

/** The disk: 4 GiB virtual (sparse), partition 1 from 1 MiB to the end. */
export const FULL_DISK_BYTES = 4 * 2 ** 30;
export const FULL_DISK_FILE = "disk.img";
const PARTITION_FIRST_LBA = 2048;
export const FULL_ROOT_LABEL = "debian-root";
/** The root partition as the guest sees it (first virtio-blk disk, partition 1); also in guest/debian's u-boot defaults. */
export const FULL_ROOT_DEVICE = "/dev/vda1";

const OPENSBI_DIR = "usr/lib/riscv64-linux-gnu/opensbi/generic";
const BINFMT_DIR = "/proc/sys/fs/binfmt_misc";
const BINFMT_CONF = "/usr/lib/binfmt.d/qemu-riscv64.conf";

/** guest/debian in the source tree (this file runs from dist/src/images/). */
export function guestDir(): string {
  return fileURLToPath(new URL("../../../guest/debian/", import.meta.url));
}

/** SHA-256 over guest/debian's files (paths and contents): an image built from other files is rebuilt. */
export function guestFilesDigest(dir = guestDir()): string {
  const h = createHash("sha256");
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        h.update(relative(dir, p) + "\0");
        h.update(readFileSync(p));
        h.update("\0");
      }
    }
  };
  walk(dir);
  return h.digest("hex");
}

/**
 * Package versions to pin, from `--versions FILE`: an image's manifest.json, or lines of
 * `name=version` (or `name version`); blank lines and `#` comments are skipped.
 */
export function readVersionsFile(path: string): { packages: Map<string, string>; sourceDateEpoch?: number } {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    throw new ImageError(`cannot read the versions file ${path}`);
  }
  const packages = new Map<string, string>();
  if (text.trimStart().startsWith("{")) {
    let m: Partial<ImageManifest>;
    try {
      m = JSON.parse(text) as Partial<ImageManifest>;
    } catch {
      throw new ImageError(`${path} is not valid JSON`);
    }
    if (!Array.isArray(m.packages)) throw new ImageError(`${path} has no "packages" list (is it a manifest.json?)`);
    for (const p of m.packages) {
      if (typeof p?.name !== "string" || typeof p.version !== "string")
        throw new ImageError(`${path}: every package needs a name and a version`);
      packages.set(p.name, p.version);
    }
    const epoch = m.build?.sourceDateEpoch;
    return { packages, sourceDateEpoch: typeof epoch === "number" ? epoch : undefined };
  }
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/#.*/, "").trim();
    if (line === "") return;
    const m = /^([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9]+)?(?:=|\s+)(\S+)$/.exec(line);
    if (m === null) throw new ImageError(`${path}:${i + 1}: expected "package=version", got "${line}"`);
    packages.set(m[1]!, m[2]!);
  });
  if (packages.size === 0) throw new ImageError(`${path} lists no packages`);
  return { packages };
}

/** apt preferences pinning every package to its version (priority 1001: even a downgrade). */
export function aptPins(packages: Map<string, string>): string {
  return [...packages].map(([n, v]) => `Package: ${n}\nPin: version ${v}\nPin-Priority: 1001\n`).join("\n");
}

/** Throws a clear ImageError unless this host can run mmdebstrap for riscv64. Registers qemu's binfmt if needed. */
export function requireFullImageTools(): void {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new ImageError(
      "building the full Debian image needs root (mmdebstrap --mode=root runs Debian's maintainer scripts in a chroot); run yun image pull debian as root",
    );
  }
  if (findInPath("mmdebstrap") === undefined) {
    throw new ImageError("building the full Debian image needs mmdebstrap; install it: apt-get install mmdebstrap");
  }
  if (findInPath("dpkg-query") === undefined) {
    throw new ImageError("building the full Debian image needs dpkg-query (a Debian/Ubuntu host)");
  }
  ensureRiscvBinfmt();
}

/** Makes sure riscv64 ELF binaries run through qemu-user (binfmt_misc), registering Debian's entry if needed. */
export function ensureRiscvBinfmt(): void {
  const entry = join(BINFMT_DIR, "qemu-riscv64");
  if (existsSync(entry) && readFileSync(entry, "utf8").startsWith("enabled")) return;
  if (!existsSync(BINFMT_CONF)) {
    throw new ImageError(
      `riscv64 programs cannot run on this host: no qemu-user binfmt entry (${BINFMT_CONF}); install qemu-user-static`,
    );
  }
  if (!existsSync(join(BINFMT_DIR, "register"))) {
    const r = spawnSync("mount", ["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR], { encoding: "utf8" });
    if (r.status !== 0) {
      throw new ImageError(`cannot mount binfmt_misc on ${BINFMT_DIR}: ${(r.stderr ?? "").trim() || "mount failed"}`);
    }
  }
  try {
    if (!existsSync(entry)) writeFileSync(join(BINFMT_DIR, "register"), readFileSync(BINFMT_CONF));
    else writeFileSync(entry, "1");
  } catch (e) {
    throw new ImageError(`cannot register qemu-riscv64 with binfmt_misc: ${(e as Error).message}`);
  }
  if (!readFileSync(entry, "utf8").startsWith("enabled")) {
    throw new ImageError("the qemu-riscv64 binfmt_misc entry is registered but disabled");
  }
}

/** What mmdebstrap is doing, from its "I: ..." lines. */
const MMDEBSTRAP_PHASES: [RegExp, string][] = [
  [/^I: running apt-get update/, "update"],
  [/^I: downloading packages/, "download"],
  [/^I: extracting archives/, "unpack"],
  [/^I: installing essential packages/, "essential"],
  [/^I: installing remaining packages/, "configure"],
  [/^update-initramfs: Generating/, "initramfs"],
  [/^I: running --customize-hook/, "customize"],
];

interface PhaseTracker {
  line(text: string): void;
  finish(): void;
}

/** Turns mmdebstrap's output into PhaseProgress phases (each ends with how many packages it saw). */
function trackPhases(progress: PhaseProgress): PhaseTracker {
  let current: string | undefined;
  let count = 0;
  const summary = (): string => {
    // dpkg's per-package lines reach us only when mmdebstrap passes them on; otherwise just "done".
    if (count > 0 && (current === "configure" || current === "essential")) return `${count} packages set up`;
    return "done";
  };
  return {
    line(text: string): void {
      for (const [re, phase] of MMDEBSTRAP_PHASES) {
        if (re.test(text) && phase !== current) {
          if (current !== undefined) progress.end(summary());
          current = phase;
          count = 0;
          progress.begin(phase, text.replace(/^I: /, ""));
          return;
        }
      }
      if (current === "initramfs" && /^(Setting up|Processing triggers) /.test(text)) {
        progress.end(summary());
        current = "configure";
        count = 0;
        progress.begin("configure", text);
      }
      if (/^Setting up /.test(text)) count++;
      if (/^(Setting up|Unpacking|Get:|Processing|update-initramfs|I: )/.test(text)) progress.update(text);
    },
    finish(): void {
      if (current !== undefined) progress.end(summary());
      current = undefined;
    },
  };
}

/** Removes scratch directories left behind by pulls that were killed. */
function cleanStaleWork(): void {
  for (const [root, prefix] of [
    [cacheDir(), "full-"],
    [imagesRoot(), `.${FULL_IMAGE}.`],
  ] as const) {
    let names: string[] = [];
    try {
      names = readdirSync(root).filter((n) => n.startsWith(prefix));
    } catch {
      continue;
    }
    for (const n of names) {
      try {
        if (Date.now() - statSync(join(root, n)).mtimeMs > 6 * 3600 * 1000)
          rmSync(join(root, n), { recursive: true, force: true });
      } catch {
        // somebody else's, or gone already
      }
    }
  }
}

function newest(dir: string, re: RegExp, what: string): string {
  const names = existsSync(dir) ? readdirSync(dir).filter((n) => re.test(n)) : [];
  names.sort();
  const last = names[names.length - 1];
  if (last === undefined) throw new ImageError(`the built system has no ${what} in ${dir}`);
  return join(dir, last);
}

/** The last lines of a failed tool's output, for the error message. */
function lastLines(lines: string[], n = 8): string {
  return lines.slice(-n).join("\n  ");
}

/** Builds the partitioned disk `dest` with an ext4 root partition made from `tree`. */
export async function buildDisk(
  tree: string,
  dest: string,
  seed: string,
): Promise<{ partition: { offsetBytes: number; sizeBytes: number; uuid: string } }> {
  const { last } = usableLbas(FULL_DISK_BYTES);
  // The partition (and the file system filling it) ends on a MiB boundary, as partitioning tools align.
  const partBytes = Math.floor(((last - PARTITION_FIRST_LBA + 1) * SECTOR) / 2 ** 20) * 2 ** 20;
  const offsetBytes = PARTITION_FIRST_LBA * SECTOR;
  const partUuid = guidFromSeed(`${seed}:partition`);
  closeSync(openSync(dest, "w", 0o644));
  const mke2fs = findE2fsTool("mke2fs") as string;
  const make = (extended: string) =>
    run(
      mke2fs,
      [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-L",
        FULL_ROOT_LABEL,
        "-U",
        guidFromSeed(`${seed}:ext4`),
        "-E",
        `${extended},offset=${offsetBytes},hash_seed=${guidFromSeed(`${seed}:htree`)}`,
        "-d",
        tree,
        dest,
        `${partBytes / 1024}k`,
      ],
      { env: { ...process.env, E2FSPROGS_FAKE_TIME: process.env.SOURCE_DATE_EPOCH ?? "" } },
    );
  // The new file reads as zeros, so the inode tables can stay holes (see ext4.ts).
  let r = await make("root_owner=0:0,assume_storage_prezeroed=1");
  if (r.code !== 0 && /assume_storage_prezeroed|Bad option/i.test(r.stderr + r.stdout)) {
    r = await make("root_owner=0:0,lazy_itable_init=0");
  }
  if (r.code !== 0) {
    throw new ImageError(
      `mke2fs could not build the root file system: ${(r.stderr || r.stdout).trim().split("\n")[0]}`,
    );
  }
  writeGpt(dest, {
    diskBytes: FULL_DISK_BYTES,
    diskGuid: guidFromSeed(`${seed}:disk`),
    partitions: [
      {
        typeGuid: LINUX_FILESYSTEM_TYPE,
        uniqueGuid: partUuid,
        firstLba: PARTITION_FIRST_LBA,
        lastLba: PARTITION_FIRST_LBA + partBytes / SECTOR - 1,
        attributes: LEGACY_BIOS_BOOTABLE,
        name: "root",
      },
    ],
  });
  await checkExt4(`${dest}?offset=${offsetBytes}`);
  return { partition: { offsetBytes, sizeBytes: partBytes, uuid: partUuid } };
}

/** Builds (or confirms) the full Debian image and returns its description. */
export async function pullFullImage(opts: PullOptions = {}): Promise<ImageInfo> {
  const log = opts.log ?? ((line: string) => void process.stderr.write(line + "\n"));
  const live = opts.progress ?? process.stderr.isTTY === true;
  const dir = imageDir(FULL_IMAGE);
  const guest = guestDir();
  if (!existsSync(join(guest, "customize.sh"))) throw new ImageError(`the guest files are missing: ${guest}`);
  const digest = guestFilesDigest(guest);
  const pins = opts.versions !== undefined ? readVersionsFile(opts.versions) : undefined;

  if (opts.force !== true && pins === undefined) {
    const m = readManifest(dir);
    if (m !== undefined && m.name === FULL_IMAGE && (await verifyImage(dir, m)).length === 0) {
      if (m.build?.guestFiles === digest) {
        log(`image ${FULL_IMAGE} is up to date`);
        return imageInfo(dir, m);
      }
      log(
        m.build === undefined
          ? `image ${FULL_IMAGE}: the image there is not the full Debian image (an older busybox build); rebuilding`
          : `image ${FULL_IMAGE}: guest/debian changed since it was built; rebuilding`,
      );
    }
  }

  requireFullImageTools();
  requireE2fsTools();
  const mirror = discoverDebianMirror();
  if (mirror === undefined) {
    throw new ImageError(
      "no usable Debian archive was found in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d); set YUN_APT_MIRROR to the URI of a Debian mirror",
    );
  }
  const epoch = pins?.sourceDateEpoch ?? Math.floor(Date.now() / 1000);

  const progress = new PhaseProgress({ live, log });
  const started = Date.now();
  cleanStaleWork();
  const debCache = join(cacheDir(), "debs-full");
  mkdirSync(debCache, { recursive: true });
  let work: string | undefined;
  let staging: string | undefined;
  try {
    work = mkdtempSync(join(cacheDir(), "full-"));
    const root = join(work, "root");
    const pinFile = join(work, "versions.pref");
    const args = [
      "--mode=root",
      `--architectures=${DEBIAN_ARCH}`,
      "--variant=important",
      `--include=${FULL_PACKAGES.join(",")}`,
      // Keep the package lists (apt-get install works at once in the guest) and reuse downloaded
      // packages between pulls: the cache goes in before the download and comes out after the install.
      "--skip=cleanup/apt/lists",
      "--skip=download/empty",
      "--skip=essential/unlink",
      `--setup-hook=mkdir -p "$1/var/cache/apt/archives"`,
      `--setup-hook=sync-in ${debCache} /var/cache/apt/archives/`,
    ];
    if (pins !== undefined) {
      writeFileSync(pinFile, aptPins(pins.packages));
      args.push(
        `--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp ${pinFile} "$1/etc/apt/preferences.d/yun-versions"`,
      );
    }
    args.push(
      `--essential-hook=${join(guest, "essential.sh")} "$1"`,
      `--customize-hook=${join(guest, "customize.sh")} "$1"`,
      `--customize-hook=sync-out /var/cache/apt/archives ${debCache}`,
      `--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1/etc/apt/preferences.d/yun-versions"`,
      DEBIAN_SUITE,
      root,
      `deb ${existsSync(DEBIAN_KEYRING) ? "" : "[trusted=yes] "}${mirror.uri} ${DEBIAN_SUITE} main`,
    );
    const tracker = trackPhases(progress);
    const output: string[] = [];
    const r = await run("mmdebstrap", args, {
      env: { ...process.env, SOURCE_DATE_EPOCH: String(epoch), LC_ALL: "C.UTF-8" },
      onLine: (line) => {
        output.push(line);
        if (output.length > 200) output.shift();
        tracker.line(line);
      },
    });
    if (r.code !== 0) {
      progress.abort();
      const why = output.filter((l) => /^E: |error|failed/i.test(l));
      const update = output.find((l) => /^E: The repository|^E: Failed to fetch|^E: Release file/.test(l));
      if (update !== undefined && output.some((l) => /apt-get update .*failed/.test(l))) {
        throw new ImageError(
          `apt-get update failed for ${mirror.uri} ${DEBIAN_SUITE} (${DEBIAN_ARCH}): ${update.replace(/^E: /, "")} ` +
            `(the mirror comes from ${mirror.from}; set YUN_APT_MIRROR to use another)`,
        );
      }
      throw new ImageError(`mmdebstrap failed (exit status ${r.code}):\n  ${lastLines(why.length > 0 ? why : output)}`);
    }
    tracker.finish();

    // ---- what was installed
    const q = await run("dpkg-query", [
      `--admindir=${join(root, "var/lib/dpkg")}`,
      "-W",
      "-f",
      "${Package}\t${Version}\t${db:Status-Abbrev}\n",
    ]);
    if (q.code !== 0) throw new ImageError(`dpkg-query could not list the image's packages: ${q.stderr.trim()}`);
    const packages = q.stdout
      .split("\n")
      .map((l) => l.split("\t"))
      .filter((f) => f.length >= 3 && f[2]!.startsWith("ii"))
      .map((f) => ({ name: f[0]!, version: f[1]! }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (pins !== undefined) {
      const differ = packages.filter((p) => pins.packages.has(p.name) && pins.packages.get(p.name) !== p.version);
      if (differ.length > 0) {
        throw new ImageError(
          `the mirror did not provide the pinned versions of ${differ.map((p) => `${p.name} (got ${p.version}, wanted ${pins.packages.get(p.name)})`).join(", ")}`,
        );
      }
    }
    const vmlinux = newest(join(root, "boot"), /^vmlinu[xz]-/, "kernel (/boot/vmlinux-*)");
    const kernelVersion = vmlinux.replace(/^.*\/vmlinu[xz]-/, "");
    const initrd = join(root, "boot", `initrd.img-${kernelVersion}`);
    if (!existsSync(initrd)) throw new ImageError(`update-initramfs made no /boot/initrd.img-${kernelVersion}`);
    const extlinux = join(root, "boot/extlinux/extlinux.conf");
    if (!existsSync(extlinux) || !readFileSync(extlinux, "utf8").includes(`root=${FULL_ROOT_DEVICE}`)) {
      throw new ImageError(`u-boot-update wrote no /boot/extlinux/extlinux.conf with root=${FULL_ROOT_DEVICE}`);
    }

    // ---- disk
    progress.begin("disk", `${FULL_DISK_FILE}: GPT, ext4 root from the tree`);
    mkdirSync(imagesRoot(), { recursive: true });
    staging = mkdtempSync(join(imagesRoot(), `.${FULL_IMAGE}.`));
    chmodSync(staging, 0o755);
    const disk = await buildDisk(root, join(staging, FULL_DISK_FILE), `yun-${FULL_IMAGE}-${epoch}`);
    const files: ImageManifest["files"] = {};
    const put = async (name: string, from?: string): Promise<void> => {
      const dest = join(staging as string, name);
      if (from !== undefined) copyFileSync(from, dest);
      files[name] = { sha256: await sha256File(dest), size: statSync(dest).size };
    };
    await put(FULL_DISK_FILE);
    await put("vmlinux", vmlinux);
    await put("initrd.img", initrd);
    await put("fw_jump.bin", join(root, OPENSBI_DIR, "fw_jump.bin"));
    await put("fw_dynamic.bin", join(root, OPENSBI_DIR, "fw_dynamic.bin"));
    const du = spawnSync("du", ["-sb", root], { encoding: "utf8" });
    const treeBytes = Number(/^(\d+)/.exec(du.stdout ?? "")?.[1] ?? 0);
    const manifest: ImageManifest = {
      format: MANIFEST_FORMAT,
      name: FULL_IMAGE,
      created: new Date().toISOString(),
      suite: DEBIAN_SUITE,
      architecture: DEBIAN_ARCH,
      kernelVersion,
      packages,
      kernel: "vmlinux",
      initrd: "initrd.img",
      firmware: { jump: "fw_jump.bin", dynamic: "fw_dynamic.bin" },
      rootDisk: FULL_DISK_FILE,
      rootfs: {
        device: FULL_ROOT_DEVICE,
        label: FULL_ROOT_LABEL,
        fsType: "ext4",
        sizeBytes: disk.partition.sizeBytes,
        packages: packages.map((p) => p.name),
        omitted: [],
        busyboxApplets: 0,
        files: 0,
        fileBytes: treeBytes,
      },
      modules: [],
      files,
      disk: {
        partitionTable: "gpt",
        diskBytes: FULL_DISK_BYTES,
        rootPartition: 1,
        partitionOffsetBytes: disk.partition.offsetBytes,
        partitionUuid: disk.partition.uuid,
        extlinux: readFileSync(extlinux, "utf8"),
      },
      build: {
        tool: "mmdebstrap",
        mirror: mirror.uri,
        sourceDateEpoch: epoch,
        guestFiles: digest,
        seconds: Math.round((Date.now() - started) / 1000),
        pinned: pins !== undefined,
      },
    };
    writeFileSync(join(staging, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + "\n");
    rmSync(dir, { recursive: true, force: true });
    renameSync(staging, dir);
    staging = undefined;
    const diskUse = statSync(join(dir, FULL_DISK_FILE)).blocks * 512;
    progress.end(
      `${FULL_DISK_FILE} ${FULL_DISK_BYTES / 2 ** 30} GiB GPT (${formatSize(diskUse)} used on the host), root ${FULL_ROOT_DEVICE} ext4 ${formatSize(treeBytes)}`,
    );
    const info = imageInfo(dir, manifest);
    log(
      `done      image ${FULL_IMAGE} (kernel ${kernelVersion}, ${packages.length} packages, ${formatSize(info.sizeBytes)}) in ${dir} (${formatDuration(Date.now() - started)})`,
    );
    return info;
  } catch (e) {
    progress.abort();
    throw e;
  } finally {
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
    if (staging !== undefined) rmSync(staging, { recursive: true, force: true });
  }
}

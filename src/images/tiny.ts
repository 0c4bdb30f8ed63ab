/**
 * `yun image pull debian-tiny`: builds a small bootable Debian trixie riscv64 image from stock Debian
 * packages: Debian's kernel with a busybox initramfs and a busybox root disk (no init system, no
 * package manager). It boots to a shell in seconds, which is what the fast tests need; the full
 * Debian image is `debian` (src/images/full.ts).
 *
 *   update     private `apt-get update` for trixie/riscv64 (archive URI from the host's sources or YUN_APT_MIRROR)
 *              and the Depends closure of the root disk's packages (ROOTFS_PACKAGES) from the package index
 *   download   linux-image-riscv64 (+ the versioned linux-image-* it depends on), opensbi, busybox-static
 *              and the root disk's packages, cached as .deb files in $YUN_HOME/cache/debs and checked
 *              against the archive's SHA-256
 *   unpack     dpkg-deb -x into a scratch directory
 *   modules    virtio_mmio, virtio_blk, virtio_net, virtio-rng, ext4 and their dependencies from .modinfo
 *   initramfs  busybox + applet links + modules + /init, as a newc cpio archive
 *   rootfs     the packages merged into one tree (merged /usr, busybox applets, /etc, busybox init),
 *              made into the ext4 image root.ext4 with mke2fs -d, owned by root, checked by e2fsck
 *
 * The result, in $YUN_HOME/images/debian-tiny/, is vmlinux, fw_jump.bin, fw_dynamic.bin, initrd.cpio,
 * root.ext4 and manifest.json (with the SHA-256 of every file). The directory is replaced atomically,
 * so an interrupted pull never leaves a half-built image behind.
 */
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { debFileName, discoverDebianMirror, PrivateApt, requireHostTools, type AptPackage } from "./apt.js";
import { debFields, extractDeb } from "./deb.js";
import { dependencyClosure, PackageIndex, type IndexedPackage } from "./depends.js";
import { buildExt4, requireE2fsTools } from "./ext4.js";
import { buildInitramfs } from "./initramfs.js";
import { resolveModules } from "./modules.js";
import { agentCompilerAvailable, agentSourceHash, buildAgent } from "./agent.js";
import { aptStateDir, cacheDir, debCacheDir, imageDir, imagesRoot } from "./paths.js";
import { PhaseProgress } from "./progress.js";
import {
  assembleRootfs,
  ROOT_DEVICE,
  ROOT_DISK_BYTES,
  ROOT_DISK_FILE,
  ROOT_DISK_LABEL,
  ROOTFS_EXCLUDE,
  ROOTFS_PACKAGES,
  ROOTFS_REVISION,
  ROOTFS_SATISFIED,
} from "./rootfs.js";
import {
  imageInfo,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  readManifest,
  verifyImage,
  type ImageInfo,
  type ImageManifest,
} from "./store.js";
import { formatDuration, formatSize, ImageError, sha256, sha256File } from "./util.js";

/** The busybox image: a small, fast guest for tests and quick VMs. */
export const TINY_IMAGE = "debian-tiny";
export const DEBIAN_SUITE = "trixie";
export const DEBIAN_ARCH = "riscv64";
/** The kernel metapackage; the versioned linux-image-* it depends on is fetched too. */
export const DEBIAN_KERNEL_PACKAGE = "linux-image-riscv64";
export const DEBIAN_PACKAGES: readonly string[] = [DEBIAN_KERNEL_PACKAGE, "opensbi", "busybox-static"];
/** Kernel modules put into the initramfs (with their dependencies). */
export const DEBIAN_MODULES: readonly string[] = [
  "virtio_mmio",
  "virtio_blk",
  "virtio_net",
  "virtio-rng",
  "ext4",
  // virtio-vsock for the guest agent (pulls in vsock and vmw_vsock_virtio_transport_common).
  "vmw_vsock_virtio_transport",
];
/** Modules a display needs (virtio-gpu's DRM driver with fbdev emulation, virtio-input), loaded
 *  by the initramfs only when the machine has those devices. */
export const DISPLAY_MODULES: readonly string[] = ["virtio_gpu", "virtio_input"];
/** Modules a share needs (virtio-9p: the 9p file system and its virtio transport, with 9pnet and
 *  netfs), loaded by the initramfs only when the machine has a virtio-9p device. */
export const SHARE_MODULES: readonly string[] = ["9pnet_virtio", "9p"];

const OPENSBI_DIR = "usr/lib/riscv64-linux-gnu/opensbi/generic";

export interface PullOptions {
  /** Rebuild even if an intact image is already there. */
  force?: boolean;
  /** Receives one line per finished phase (default: stderr). */
  log?: (line: string) => void;
  /** Draw a live progress line (default: whether stderr is a terminal). */
  progress?: boolean;
  /** Pin package versions (full image): a manifest.json or a list of name=version lines. */
  versions?: string;
}

/** Package names in a Depends field, alternatives and version constraints dropped. */
export function dependsNames(depends: string): string[] {
  return depends
    .split(/[,|]/)
    .map((d) =>
      d
        .trim()
        .replace(/\s*\(.*\)$/, "")
        .replace(/:[a-z0-9-]+$/, ""),
    )
    .filter((d) => d !== "");
}

function firstExisting(paths: string[], what: string): string {
  const p = paths.find((x) => existsSync(x));
  if (p === undefined) throw new ImageError(`the Debian packages do not contain ${what}`);
  return p;
}

/** The download description of a package of the index. */
function aptPackage(p: IndexedPackage): AptPackage {
  return {
    name: p.name,
    version: p.version,
    architecture: p.architecture,
    size: p.size,
    sha256: p.sha256,
    depends: p.depends,
    debName: debFileName(p.name, p.version, p.architecture),
  };
}

/** Removes scratch directories left behind by pulls that were killed. */
function cleanStaleWork(): void {
  const dirs: [string, string][] = [
    [cacheDir(), "work-"],
    [imagesRoot(), `.${TINY_IMAGE}.`],
  ];
  for (const [root, prefix] of dirs) {
    let names: string[] = [];
    try {
      names = readdirSync(root).filter((n) => n.startsWith(prefix));
    } catch {
      continue;
    }
    for (const n of names) {
      const p = join(root, n);
      try {
        if (Date.now() - statSync(p).mtimeMs > 6 * 3600 * 1000) rmSync(p, { recursive: true, force: true });
      } catch {
        // somebody else's, or gone already
      }
    }
  }
}

/** Deletes cached .deb files of older versions of the image's packages (and of older kernels). */
function pruneDebCache(debDir: string, current: AptPackage[]): void {
  const keep = new Set(current.map((p) => p.debName));
  const ours = (file: string): boolean =>
    /^linux-image-\d[^_]*_.*\.deb$/.test(file) ||
    current.some((p) => file.startsWith(`${p.name}_`) && file.endsWith(".deb"));
  for (const f of readdirSync(debDir)) {
    if (!keep.has(f) && ours(f)) rmSync(join(debDir, f), { force: true });
  }
}

/** Builds (or confirms) the debian-tiny image and returns its description. */
export async function pullTinyImage(opts: PullOptions = {}): Promise<ImageInfo> {
  const log = opts.log ?? ((line: string) => void process.stderr.write(line + "\n"));
  const live = opts.progress ?? process.stderr.isTTY === true;
  const dir = imageDir(TINY_IMAGE);

  if (opts.force !== true) {
    const m = readManifest(dir);
    if (m !== undefined && m.name === TINY_IMAGE && (await verifyImage(dir, m)).length === 0) {
      const agentStale = agentCompilerAvailable() && (m.rootfs.agent ?? null) !== agentSourceHash();
      if ((m.rootfs.revision ?? 1) === ROOTFS_REVISION && !agentStale) {
        log(`image ${TINY_IMAGE} is up to date`);
        return imageInfo(dir, m);
      }
      log(
        agentStale && (m.rootfs.revision ?? 1) === ROOTFS_REVISION
          ? `image ${TINY_IMAGE}: its guest agent is missing or older than guest/agent; rebuilding`
          : `image ${TINY_IMAGE}: its root disk is of an older revision; rebuilding`,
      );
    }
  }

  requireHostTools();
  requireE2fsTools();
  const mirror = discoverDebianMirror();
  if (mirror === undefined) {
    throw new ImageError(
      "no usable Debian archive was found in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d); set YUN_APT_MIRROR to the URI of a Debian mirror",
    );
  }

  const progress = new PhaseProgress({ live, log });
  const started = Date.now();
  cleanStaleWork();
  mkdirSync(cacheDir(), { recursive: true });
  let work: string | undefined;
  let staging: string | undefined;
  try {
    // ---- update
    progress.begin("update", `${DEBIAN_SUITE}/${DEBIAN_ARCH} package lists from ${mirror.uri}`);
    const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: mirror.uri, suite: DEBIAN_SUITE, arch: DEBIAN_ARCH });
    await apt.configure();
    await apt.update();
    const meta = await apt.show(DEBIAN_KERNEL_PACKAGE);
    const versionedName = dependsNames(meta.depends).find((n) => /^linux-image-\d/.test(n));
    if (versionedName === undefined) {
      throw new ImageError(
        `${DEBIAN_KERNEL_PACKAGE} ${meta.version} does not depend on a versioned linux-image package`,
      );
    }
    // The boot packages (unpacked together for the kernel, firmware and the initramfs's busybox).
    const boot: AptPackage[] = [meta, await apt.show(versionedName)];
    for (const n of DEBIAN_PACKAGES) if (n !== DEBIAN_KERNEL_PACKAGE) boot.push(await apt.show(n));
    const pkgs = [...boot];
    const index = new PackageIndex(await apt.dumpAvailable());
    const closure = dependencyClosure(index, ROOTFS_PACKAGES, {
      exclude: ROOTFS_EXCLUDE,
      satisfied: ROOTFS_SATISFIED,
      archive: `Debian ${DEBIAN_SUITE} for ${DEBIAN_ARCH}`,
    });
    for (const p of closure.packages) if (!pkgs.some((q) => q.name === p.name)) pkgs.push(aptPackage(p));
    const trust = apt.signed ? "" : " (no keyring: trusted=yes)";
    progress.end(
      `${DEBIAN_SUITE}/${DEBIAN_ARCH} from ${mirror.uri}${trust}; root disk: ${closure.packages.length} packages`,
    );

    // ---- download
    const debDir = debCacheDir();
    mkdirSync(debDir, { recursive: true });
    const cached = new Set<string>();
    for (const p of pkgs) {
      const path = join(debDir, p.debName);
      if (existsSync(path) && (p.sha256 === "" || (await sha256File(path)) === p.sha256)) cached.add(p.name);
    }
    const missing = pkgs.filter((p) => !cached.has(p.name));
    const total = missing.reduce((s, p) => s + p.size, 0);
    progress.begin(
      "download",
      missing.length === 0 ? "all packages cached" : `${missing.map((p) => p.name).join(", ")} (${formatSize(total)})`,
    );
    if (missing.length > 0) {
      let current = "";
      const poll = setInterval(() => {
        let have = 0;
        for (const p of missing) {
          try {
            have += statSync(join(debDir, p.debName)).size;
          } catch {
            // not started yet
          }
        }
        progress.update(`${current !== "" ? current + " " : ""}${formatSize(have)} / ${formatSize(total)}`);
      }, 200);
      poll.unref();
      try {
        await apt.download(
          missing.map((p) => `${p.name}=${p.version}`),
          debDir,
          (line) => {
            const m = /^Get:\d+\s+\S+\s+\S+\s+\S+\s+(\S+)/.exec(line);
            if (m?.[1] !== undefined) current = m[1];
          },
        );
      } finally {
        clearInterval(poll);
      }
      for (const p of missing) {
        const path = join(debDir, p.debName);
        if (!existsSync(path)) throw new ImageError(`apt-get download did not produce ${p.debName}`);
        if (p.sha256 !== "" && (await sha256File(path)) !== p.sha256) {
          rmSync(path, { force: true });
          throw new ImageError(`${p.debName} does not match the archive's SHA-256; it was removed, try again`);
        }
      }
    }
    pruneDebCache(debDir, pkgs);
    const list = pkgs.map(
      (p) => `${p.name} ${p.version} (${formatSize(p.size)}${cached.has(p.name) ? ", cached" : ""})`,
    );
    progress.end(list.join(", "));

    // ---- unpack
    progress.begin("unpack", pkgs.map((p) => p.name).join(", "));
    work = mkdtempSync(join(cacheDir(), "work-"));
    const root = join(work, "root");
    mkdirSync(root);
    const packages: { name: string; version: string }[] = [];
    for (const p of pkgs) {
      const fields = await debFields(join(debDir, p.debName));
      packages.push({ name: fields.get("Package") ?? p.name, version: fields.get("Version") ?? p.version });
    }
    await Promise.all(boot.filter((p) => p !== meta).map((p) => extractDeb(join(debDir, p.debName), root)));
    // Root disk packages each into their own directory; assembleRootfs merges them with merged /usr.
    const unpacked = closure.packages.map((p) => ({ name: p.name, dir: join(work as string, "pkgs", p.name) }));
    for (const u of unpacked) mkdirSync(u.dir, { recursive: true });
    await Promise.all(
      closure.packages.map((p, i) =>
        extractDeb(join(debDir, debFileName(p.name, p.version, p.architecture)), unpacked[i]!.dir),
      ),
    );
    const bootFiles = existsSync(join(root, "boot")) ? readdirSync(join(root, "boot")) : [];
    const vmlinuxName = bootFiles.find((n) => /^vmlinu[xz]-/.test(n));
    if (vmlinuxName === undefined) throw new ImageError(`${versionedName} contains no /boot/vmlinux-* kernel`);
    const kernelVersion = vmlinuxName.replace(/^vmlinu[xz]-/, "");
    const moduleRoot = firstExisting(
      [join(root, "usr/lib/modules", kernelVersion), join(root, "lib/modules", kernelVersion)],
      `the modules of kernel ${kernelVersion}`,
    );
    const busyboxPath = firstExisting([join(root, "usr/bin/busybox"), join(root, "bin/busybox")], "a busybox binary");
    const fwJump = firstExisting([join(root, OPENSBI_DIR, "fw_jump.bin")], "OpenSBI fw_jump.bin");
    const fwDynamic = firstExisting([join(root, OPENSBI_DIR, "fw_dynamic.bin")], "OpenSBI fw_dynamic.bin");
    progress.end(`kernel ${kernelVersion}, ${packages.length} packages (${closure.packages.length} for the root disk)`);

    // ---- modules
    progress.begin("modules", DEBIAN_MODULES.join(", "));
    const resolution = resolveModules(moduleRoot, [...DEBIAN_MODULES]);
    const base = new Set(resolution.order.map((m) => m.name));
    const displayModules = resolveModules(moduleRoot, [...DEBIAN_MODULES, ...DISPLAY_MODULES]).order.filter(
      (m) => !base.has(m.name),
    );
    const shareModules = resolveModules(moduleRoot, [...DEBIAN_MODULES, ...SHARE_MODULES]).order.filter(
      (m) => !base.has(m.name),
    );
    const builtinNote = resolution.builtin.length > 0 ? `; built in: ${resolution.builtin.join(", ")}` : "";
    progress.end(
      `${resolution.order.length} modules: ${resolution.order.map((m) => m.name).join(" ")}${builtinNote}; ` +
        `for a display: ${displayModules.map((m) => m.name).join(" ")}; ` +
        `for a share: ${shareModules.map((m) => m.name).join(" ")}`,
    );

    // ---- initramfs
    progress.begin("initramfs", "busybox, modules, /init");
    const builtinList = join(moduleRoot, "modules.builtin");
    const initramfs = buildInitramfs({
      busybox: readFileSync(busyboxPath),
      kernelVersion,
      modules: resolution.order,
      displayModules,
      shareModules,
      modulesBuiltin: existsSync(builtinList) ? readFileSync(builtinList, "utf8") : undefined,
    });
    mkdirSync(imagesRoot(), { recursive: true });
    staging = mkdtempSync(join(imagesRoot(), `.${TINY_IMAGE}.`));
    chmodSync(staging, 0o755);
    const files: ImageManifest["files"] = {};
    /** Records a file of the image (copied from `from`, written from a buffer, or already in place). */
    const put = async (name: string, from?: string | Buffer): Promise<void> => {
      const dest = join(staging as string, name);
      if (from === undefined) {
        files[name] = { sha256: await sha256File(dest), size: statSync(dest).size };
      } else if (typeof from === "string") {
        copyFileSync(from, dest);
        files[name] = { sha256: await sha256File(dest), size: statSync(dest).size };
      } else {
        writeFileSync(dest, from);
        files[name] = { sha256: sha256(from), size: from.length };
      }
    };
    await put("vmlinux", join(root, "boot", vmlinuxName));
    await put("fw_jump.bin", fwJump);
    await put("fw_dynamic.bin", fwDynamic);
    await put("initrd.cpio", initramfs.archive);
    progress.end(
      `initrd.cpio ${formatSize(initramfs.archive.length)}, ${initramfs.entries} entries, ${initramfs.applets.length} busybox applets${initramfs.appletsFromBinary ? "" : " (fallback list)"}`,
    );

    // ---- rootfs
    progress.begin("rootfs", `${closure.packages.length} packages into ${ROOT_DISK_FILE}`);
    const rootfsDir = join(work, "rootfs");
    mkdirSync(rootfsDir);
    chmodSync(rootfsDir, 0o755);
    const agent = await buildAgent();
    if (agent.binary === null) log(`note      ${agent.why}`);
    const rootfs = assembleRootfs(rootfsDir, unpacked, { agent: agent.binary });
    const ext4 = await buildExt4({
      source: rootfsDir,
      dest: join(staging, ROOT_DISK_FILE),
      sizeBytes: ROOT_DISK_BYTES,
      label: ROOT_DISK_LABEL,
    });
    await put(ROOT_DISK_FILE);
    const diskUse = statSync(join(staging, ROOT_DISK_FILE)).blocks * 512;
    const manifest: ImageManifest = {
      format: MANIFEST_FORMAT,
      name: TINY_IMAGE,
      created: new Date().toISOString(),
      suite: DEBIAN_SUITE,
      architecture: DEBIAN_ARCH,
      kernelVersion,
      packages,
      kernel: "vmlinux",
      initrd: "initrd.cpio",
      firmware: { jump: "fw_jump.bin", dynamic: "fw_dynamic.bin" },
      rootDisk: ROOT_DISK_FILE,
      rootfs: {
        device: ROOT_DEVICE,
        label: ROOT_DISK_LABEL,
        fsType: "ext4",
        sizeBytes: ROOT_DISK_BYTES,
        packages: closure.packages.map((p) => p.name),
        omitted: closure.omitted,
        busyboxApplets: rootfs.applets.length,
        files: rootfs.files,
        fileBytes: rootfs.fileBytes,
        revision: ROOTFS_REVISION,
        agent: agent.binary === null ? null : agent.sourceHash,
      },
      modules: resolution.order.map((m) => m.name),
      files,
    };
    writeFileSync(join(staging, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + "\n");
    rmSync(dir, { recursive: true, force: true });
    renameSync(staging, dir);
    staging = undefined;
    const appletNote = rootfs.appletsFromBinary ? "" : " (fallback list)";
    const ownerNote = ext4.ownersFixed > 0 ? `, ${ext4.ownersFixed} owners set to root` : "";
    progress.end(
      `${ROOT_DISK_FILE} ${ROOT_DISK_BYTES / 2 ** 30} GiB ext4 (${formatSize(diskUse)} used on the host): ` +
        `${rootfs.files} files, ${formatSize(rootfs.fileBytes)}, ${rootfs.applets.length} busybox applets${appletNote}${ownerNote}`,
    );

    const info = imageInfo(dir, manifest);
    log(
      `done      image ${TINY_IMAGE} (kernel ${kernelVersion}, ${formatSize(info.sizeBytes)}) in ${dir} (${formatDuration(Date.now() - started)})`,
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

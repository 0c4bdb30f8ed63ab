/**
 * Debian's U-Boot for QEMU's riscv64 virt board in S-mode (package u-boot-qemu, file
 * usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin): the boot loader a disk with a partition table
 * boots through (OpenSBI fw_dynamic, then U-Boot, then the disk's extlinux.conf or EFI
 * application). It is fetched with the image's private apt, its .deb kept in the package cache, and
 * the binary kept in $YUN_HOME/firmware/u-boot-qemu/ with a manifest (version, SHA-256), so
 * `yun run` needs no network once `yun image pull` has fetched it.
 */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { discoverDebianMirror, PrivateApt, requireHostTools, type AptPackage } from "./apt.js";
import { extractDeb } from "./deb.js";
import { aptStateDir, cacheDir, debCacheDir, yunHome } from "./paths.js";
import { ImageError, sha256, sha256File } from "./util.js";

export const UBOOT_PACKAGE = "u-boot-qemu";
/** The S-mode build for QEMU's virt board, inside the package. */
export const UBOOT_FILE = "usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";

export interface BootLoaderInfo {
  /** Absolute path of u-boot.bin. */
  path: string;
  package: string;
  version: string;
  sha256: string;
}

interface BootLoaderManifest {
  package: string;
  version: string;
  file: string;
  sha256: string;
  size: number;
}

/** Where the boot loader is kept. */
export function bootLoaderDir(): string {
  return join(yunHome(), "firmware", UBOOT_PACKAGE);
}

/** The fetched boot loader, if it is there and matches its manifest. */
export function findBootLoader(): BootLoaderInfo | undefined {
  const dir = bootLoaderDir();
  let m: BootLoaderManifest;
  try {
    m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as BootLoaderManifest;
  } catch {
    return undefined;
  }
  if (typeof m.file !== "string" || typeof m.sha256 !== "string" || typeof m.version !== "string") return undefined;
  const path = join(dir, m.file);
  try {
    if (sha256(readFileSync(path)) !== m.sha256) return undefined;
  } catch {
    return undefined;
  }
  return { path, package: m.package, version: m.version, sha256: m.sha256 };
}

/**
 * Fetches u-boot-qemu (or confirms the fetched one) and returns where its S-mode U-Boot is. Throws
 * an ImageError with apt's reason when it cannot be fetched.
 */
export async function pullBootLoader(
  opts: { force?: boolean; log?: (line: string) => void } = {},
): Promise<BootLoaderInfo> {
  const log = opts.log ?? ((line: string) => void process.stderr.write(line + "\n"));
  if (opts.force !== true) {
    const have = findBootLoader();
    if (have !== undefined) return have;
  }
  requireHostTools();
  const mirror = discoverDebianMirror();
  if (mirror === undefined) {
    throw new ImageError(
      "no usable Debian archive was found in the host's apt sources to fetch U-Boot from; set YUN_APT_MIRROR to the URI of a Debian mirror",
    );
  }
  mkdirSync(cacheDir(), { recursive: true });
  const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: mirror.uri });
  await apt.configure();
  const debDir = debCacheDir();
  mkdirSync(debDir, { recursive: true });
  // The package lists of the last pull usually do; if they are missing or stale, update them once.
  const fetch = async (): Promise<AptPackage> => {
    const p = await apt.show(UBOOT_PACKAGE);
    const deb = join(debDir, p.debName);
    if (!existsSync(deb) || (p.sha256 !== "" && (await sha256File(deb)) !== p.sha256)) {
      rmSync(deb, { force: true });
      await apt.download([`${p.name}=${p.version}`], debDir);
      if (p.sha256 !== "" && (await sha256File(deb)) !== p.sha256) {
        rmSync(deb, { force: true });
        throw new ImageError(`${p.debName} does not match the archive's SHA-256; it was removed, try again`);
      }
    }
    return p;
  };
  let pkg: AptPackage;
  try {
    pkg = await fetch();
  } catch {
    await apt.update();
    pkg = await fetch();
  }
  const work = mkdtempSync(join(cacheDir(), "work-"));
  const dir = bootLoaderDir();
  const staging = `${dir}.${process.pid}`;
  try {
    await extractDeb(join(debDir, pkg.debName), work);
    const bin = join(work, UBOOT_FILE);
    if (!existsSync(bin)) throw new ImageError(`${pkg.debName} does not contain ${UBOOT_FILE}`);
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging, { recursive: true });
    copyFileSync(bin, join(staging, "u-boot.bin"));
    const bytes = readFileSync(join(staging, "u-boot.bin"));
    const manifest: BootLoaderManifest = {
      package: UBOOT_PACKAGE,
      version: pkg.version,
      file: "u-boot.bin",
      sha256: sha256(bytes),
      size: bytes.length,
    };
    writeFileSync(join(staging, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
    rmSync(dir, { recursive: true, force: true });
    renameSync(staging, dir);
    log(`firmware  U-Boot ${pkg.version} (${UBOOT_PACKAGE}, qemu-riscv64_smode) in ${dir}`);
    return { path: join(dir, "u-boot.bin"), package: UBOOT_PACKAGE, version: pkg.version, sha256: manifest.sha256 };
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(staging, { recursive: true, force: true });
  }
}

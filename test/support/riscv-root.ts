/**
 * A riscv64 root file system for `yun exec` tests: Debian trixie packages unpacked into one
 * directory (with the merged-/usr links base-files would make), cached under
 * $YUN_HOME/cache/exec-roots/. The .debs come from the image builder's caches when they are
 * there, else through the project's private apt (the host's mirror).
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { PrivateApt, discoverDebianMirror } from "../../src/images/apt.js";
import { aptStateDir, cacheDir, debCacheDir } from "../../src/images/paths.js";
import { run } from "../../src/images/util.js";

/** busybox (dynamic), coreutils and python3.13 with their libraries; busybox-static goes to /usr/bin/busybox-static. */
export const EXEC_ROOT_PACKAGES = [
  "busybox",
  "libc6",
  "coreutils",
  "libacl1",
  "libattr1",
  "libcap2",
  "libgmp10",
  "libpcre2-8-0",
  "libselinux1",
  "libssl3t64",
  "libzstd1",
  "zlib1g",
  "python3.13-minimal",
  "libpython3.13-minimal",
  "libpython3.13-stdlib",
  "libexpat1",
];

function cachedDeb(name: string, dirs: string[]): string | undefined {
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    const hit = readdirSync(dir)
      .filter((f) => f.startsWith(`${name}_`) && f.endsWith(".deb"))
      .sort()
      .pop();
    if (hit !== undefined) return join(dir, hit);
  }
  return undefined;
}

async function debsFor(names: string[]): Promise<string[]> {
  const download = join(cacheDir(), "test-packages");
  const dirs = [debCacheDir(), join(cacheDir(), "debs-full"), download];
  const missing = names.filter((n) => cachedDeb(n, dirs) === undefined);
  if (missing.length > 0) {
    const mirror = discoverDebianMirror();
    if (mirror === undefined) throw new Error(`no Debian mirror to fetch ${missing.join(", ")} from`);
    const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: mirror.uri });
    await apt.configure();
    await apt.update();
    mkdirSync(download, { recursive: true });
    await apt.download(missing, download);
  }
  return names.map((n) => cachedDeb(n, dirs)!);
}

/** The root's directory, built on first use. */
export async function execTestRoot(): Promise<string> {
  const debs = await debsFor([...EXEC_ROOT_PACKAGES, "busybox-static"]);
  const key = createHash("sha256")
    .update(debs.map((d) => d.split("/").pop()).join("\n"))
    .digest("hex")
    .slice(0, 16);
  const base = join(cacheDir(), "exec-roots");
  const dir = join(base, key);
  if (existsSync(dir)) return dir;
  const work = `${dir}.part`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const unpack = async (deb: string, dest: string): Promise<void> => {
    const r = await run("dpkg-deb", ["-x", deb, dest]);
    if (r.code !== 0) throw new Error(`dpkg-deb -x ${deb} failed: ${r.stderr}`);
  };
  for (const deb of debs.slice(0, -1)) await unpack(deb, work);
  const staticDir = `${work}.static`;
  rmSync(staticDir, { recursive: true, force: true });
  await unpack(debs[debs.length - 1], staticDir);
  copyFileSync(join(staticDir, "usr/bin/busybox"), join(work, "usr/bin/busybox-static"));
  rmSync(staticDir, { recursive: true, force: true });
  for (const d of ["bin", "lib", "sbin"]) symlinkSync(`usr/${d}`, join(work, d));
  renameSync(work, dir);
  return dir;
}

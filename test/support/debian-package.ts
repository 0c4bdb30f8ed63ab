/**
 * A Debian trixie riscv64 package for a test, fetched through the project's private apt (the
 * host's mirror, as `yun image pull` uses) into $YUN_HOME/cache/test-packages/, checked against the
 * archive's SHA-256, and unpacked there once per version.
 */
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PrivateApt, discoverDebianMirror } from "../../src/images/apt.js";
import { aptStateDir, cacheDir } from "../../src/images/paths.js";
import { findInPath, run, sha256File } from "../../src/images/util.js";

/** Why packages cannot be fetched here, or null. */
export function packageFetchImpossible(): string | null {
  if (findInPath("apt-get") === undefined) return "no apt-get on this host";
  if (findInPath("dpkg-deb") === undefined) return "no dpkg-deb on this host";
  if (discoverDebianMirror() === undefined) return "no Debian mirror in the host's apt sources (or YUN_APT_MIRROR)";
  return null;
}

/** Fetches and unpacks package `name`; returns the directory it was unpacked into. */
export async function unpackedPackage(name: string): Promise<{ dir: string; version: string }> {
  const mirror = discoverDebianMirror();
  if (mirror === undefined) throw new Error("no Debian mirror in the host's apt sources");
  const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: mirror.uri });
  await apt.configure();
  await apt.update();
  const p = await apt.show(name);
  const base = join(cacheDir(), "test-packages");
  const dir = join(base, `${name}_${p.version}`);
  if (existsSync(join(dir, ".complete"))) return { dir, version: p.version };
  mkdirSync(base, { recursive: true });
  const deb = join(base, p.debName);
  if (!existsSync(deb) || (p.sha256 !== "" && (await sha256File(deb)) !== p.sha256)) {
    rmSync(deb, { force: true });
    await apt.download([`${name}=${p.version}`], base);
    if (p.sha256 !== "" && (await sha256File(deb)) !== p.sha256) throw new Error(`${p.debName}: SHA-256 mismatch`);
  }
  const work = `${dir}.part`;
  rmSync(work, { recursive: true, force: true });
  const r = await run("dpkg-deb", ["-x", deb, work]);
  if (r.code !== 0) throw new Error(`dpkg-deb -x ${deb} failed: ${r.stderr}`);
  writeFileSync(join(work, ".complete"), "");
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
  rmSync(deb, { force: true });
  return { dir, version: p.version };
}

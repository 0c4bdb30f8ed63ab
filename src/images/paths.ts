/**
 * Where Yun keeps its images and caches on the host.
 *
 * Everything lives under one directory, `$YUN_HOME` (default `~/.local/share/yun`):
 *
 *   images/<name>/     one directory per built image (vmlinux, firmware, initrd, manifest.json)
 *   cache/debs/        downloaded .deb files, reused across pulls
 *   cache/apt/         the private apt state (lists, status, package caches, sources)
 *
 * The environment is read on every call so tests (and users) can point YUN_HOME elsewhere at any time.
 */
import { homedir } from "node:os";
import { join, resolve } from "node:path";

/** Root of all Yun state: `$YUN_HOME` if set, else `~/.local/share/yun`. */
export function yunHome(): string {
  const env = process.env.YUN_HOME;
  if (env !== undefined && env !== "") return resolve(env);
  return join(homedir(), ".local", "share", "yun");
}

/** Directory that holds every image, one sub-directory each. */
export function imagesRoot(): string {
  return join(yunHome(), "images");
}

/** Directory of one image, e.g. `imageDir("debian")`. */
export function imageDir(name: string): string {
  return join(imagesRoot(), name);
}

/** Root of the download / apt caches. */
export function cacheDir(): string {
  return join(yunHome(), "cache");
}

/** Where downloaded .deb files are kept between pulls. */
export function debCacheDir(): string {
  return join(cacheDir(), "debs");
}

/** Private apt state directory (lists, status file, package caches, sources). */
export function aptStateDir(): string {
  return join(cacheDir(), "apt");
}

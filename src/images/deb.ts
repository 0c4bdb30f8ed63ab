/**
 * Reading Debian packages with the host's dpkg-deb (present on every Debian/Ubuntu host).
 */
import { parseControl } from "./apt.js";
import { ImageError, run } from "./util.js";

async function dpkgDeb(args: string[], what: string): Promise<string> {
  let r;
  try {
    r = await run("dpkg-deb", args);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new ImageError("yun image pull needs dpkg-deb (Debian/Ubuntu host), which was not found in PATH");
    }
    throw e;
  }
  if (r.code !== 0) {
    const msg = r.stderr.trim().split("\n").pop() ?? "";
    throw new ImageError(`${what} failed${msg !== "" ? `: ${msg}` : ""}`);
  }
  return r.stdout;
}

/** The control fields of a .deb (`dpkg-deb -f`), e.g. Package, Version, Depends. */
export async function debFields(debPath: string): Promise<Map<string, string>> {
  const text = await dpkgDeb(["-f", debPath], `reading ${debPath}`);
  return parseControl(text)[0] ?? new Map<string, string>();
}

/** Unpacks the files of a .deb into `dest` (`dpkg-deb -x`). */
export async function extractDeb(debPath: string, dest: string): Promise<void> {
  await dpkgDeb(["-x", debPath, dest], `unpacking ${debPath}`);
}

/** dtc (Debian's device-tree-compiler) as a test oracle for generated device trees. */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Why dtc tests must be skipped, or false when dtc is usable. */
export const dtcMissing: string | false =
  spawnSync("dtc", ["--version"]).status === 0
    ? false
    : "dtc not found: install Debian's device-tree-compiler to run this test";

/** Decompiles a DTB with `dtc -I dtb -O dts`, returning the source and dtc's warnings. */
export function decompile(dtb: Uint8Array): { dts: string; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), "yun-dtc-"));
  try {
    const file = join(dir, "t.dtb");
    writeFileSync(file, dtb);
    const r = spawnSync("dtc", ["-I", "dtb", "-O", "dts", file], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`dtc failed: ${r.stderr}`);
    return { dts: r.stdout, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

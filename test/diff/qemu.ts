/** Runs a generated program under qemu-riscv64 (user mode) and returns what its epilogue wrote. */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildElf } from "../support/elf.js";
import { OUT_LEN, type Program } from "./generate.js";

export const QEMU = process.env.YUN_QEMU_RISCV64 ?? "/usr/bin/qemu-riscv64";

export function haveQemu(): boolean {
  if (!existsSync(QEMU)) return false;
  return spawnSync(QEMU, ["--version"], { stdio: "ignore" }).status === 0;
}

export function elfOf(p: Program): Uint8Array {
  return buildElf(p.segment, p.entry);
}

/** Returns the OUT_LEN bytes written by the epilogue; throws with qemu's status if it misbehaved. */
export function runQemu(p: Program): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), "yun-diff-"));
  try {
    const file = join(dir, `t-${p.cls}-${p.seed}.elf`);
    writeFileSync(file, elfOf(p));
    chmodSync(file, 0o755);
    const r = spawnSync(QEMU, [file], { timeout: 20_000, maxBuffer: 1 << 20 });
    if (r.error) throw r.error;
    const out = new Uint8Array(r.stdout);
    if (r.status !== 0 || out.length !== OUT_LEN) {
      throw new Error(
        `qemu: status=${r.status} signal=${r.signal} stdout=${out.length}B (want ${OUT_LEN}) ` +
          `stderr=${String(r.stderr).trim().slice(0, 500)}`,
      );
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

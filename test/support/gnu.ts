/** Thin wrappers around the riscv64 GNU binutils (assembler, objcopy, objdump). */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const PREFIX = "riscv64-linux-gnu-";

export function haveTool(name: string): boolean {
  const r = spawnSync(name, ["--version"], { stdio: "ignore" });
  return r.status === 0;
}
export const haveBinutils = () => haveTool(PREFIX + "as") && haveTool(PREFIX + "objdump");

function withTmp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "yun-rv-"));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Assembles source text for rv64gc and returns the raw .text bytes. */
export function assemble(source: string): Uint8Array {
  return withTmp((dir) => {
    const s = join(dir, "a.s");
    const o = join(dir, "a.o");
    const bin = join(dir, "a.bin");
    writeFileSync(s, source);
    execFileSync(PREFIX + "as", ["-march=rv64gc", "-mno-relax", "-o", o, s], { stdio: ["ignore", "ignore", "pipe"] });
    execFileSync(PREFIX + "objcopy", ["-O", "binary", "-j", ".text", o, bin]);
    return new Uint8Array(readFileSync(bin));
  });
}

/** Hex halfwords, for when objdump is unavailable. */
function hexDump(bytes: Uint8Array, vma: number): string {
  const out: string[] = [];
  for (let i = 0; i + 1 < bytes.length; ) {
    const lo = bytes[i] | (bytes[i + 1] << 8);
    const len = (lo & 3) === 3 && i + 3 < bytes.length ? 4 : 2;
    const enc = len === 4 ? (lo | (bytes[i + 2] << 16) | (bytes[i + 3] << 24)) >>> 0 : lo;
    out.push(`  ${(vma + i).toString(16)}:\t${enc.toString(16).padStart(len * 2, "0")}`);
    i += len;
  }
  return out.join("\n");
}

/** Disassembles raw bytes as rv64gc code placed at `vma`; returns objdump's instruction lines. */
export function disassemble(bytes: Uint8Array, vma = 0): string {
  if (!haveTool(PREFIX + "objdump")) return hexDump(bytes, vma);
  return withTmp((dir) => {
    const bin = join(dir, "body.bin");
    writeFileSync(bin, bytes);
    const out = execFileSync(
      PREFIX + "objdump",
      ["-D", "-b", "binary", "-m", "riscv:rv64", "-M", "numeric", `--adjust-vma=0x${vma.toString(16)}`, bin],
      { encoding: "utf8" },
    );
    return out
      .split("\n")
      .filter((l) => /^\s*[0-9a-f]+:\t/.test(l))
      .join("\n");
  });
}

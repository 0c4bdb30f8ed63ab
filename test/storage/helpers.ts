/** Shared helpers for the storage tests: scratch directories and the real qemu-img / qemu-io. */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

export function scratch(): { dir: string; path: (name: string) => string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "yun-storage-test-"));
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs a command; throws with its stderr when it fails (unless `allowFail`). */
export function run(cmd: string, args: string[], allowFail = false): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) throw r.error;
  const code = r.status ?? -1;
  if (code !== 0 && !allowFail) throw new Error(`${cmd} ${args.join(" ")} failed (${code}): ${r.stderr}`);
  return { code, stdout: r.stdout, stderr: r.stderr };
}

export function qemuImg(...args: string[]): string {
  return run("qemu-img", args).stdout;
}

/** qemu-io commands (e.g. "write -P 0x11 0 64k") run against an image in one invocation. */
export function qemuIo(image: string, ...commands: string[]): void {
  const args: string[] = [];
  for (const c of commands) args.push("-c", c);
  run("qemu-io", [...args, image]);
}

export interface CheckResult {
  exit: number;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  text: string;
}

/** `qemu-img check`: exit 0 clean, 3 leaks only, 2 corruptions. */
export function qemuCheck(image: string): CheckResult {
  const r = run("qemu-img", ["check", "--output=json", image], true);
  let j: Record<string, number> = {};
  try {
    j = JSON.parse(r.stdout) as Record<string, number>;
  } catch {}
  return {
    exit: r.code,
    corruptions: j["corruptions"] ?? 0,
    leaks: j["leaks"] ?? 0,
    checkErrors: j["check-errors"] ?? 0,
    text: r.stdout + r.stderr,
  };
}

export function assertClean(image: string): void {
  const c = qemuCheck(image);
  assert.equal(c.exit, 0, `qemu-img check ${image} is not clean:\n${c.text}`);
}

/** `qemu-img compare` of an image against a raw file: true when the guest-visible contents agree. */
export function qemuSame(image: string, rawFile: string): boolean {
  const r = run("qemu-img", ["compare", "-F", "raw", image, rawFile], true);
  if (r.code > 1) throw new Error(`qemu-img compare failed: ${r.stderr}`);
  return r.code === 0;
}

/** The disk as QEMU reads it, via `qemu-img convert -O raw` (optionally a snapshot of it). */
export function qemuRead(image: string, out: string, snapshot?: string): Buffer {
  const args = ["convert", "-O", "raw"];
  if (snapshot) args.push("-l", `snapshot.name=${snapshot}`);
  qemuImg(...args, image, out);
  const data = readFileSync(out);
  rmSync(out);
  return data;
}

/** Content hash and mtime of each file, to show that a failed open changed nothing. */
export function fingerprint(files: string[]): string[] {
  return files.map((f) => {
    const st = statSync(f);
    return `${f} ${st.size} ${st.mtimeMs} ${createHash("sha256").update(readFileSync(f)).digest("hex")}`;
  });
}

/** Deterministic bytes. */
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (equalBytes(a, b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

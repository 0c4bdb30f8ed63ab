/** Differential runner: qemu-riscv64 vs Yun's hart on the same program, with a readable report. */
import { disassemble } from "../support/gnu.js";
import { DUMP_LEN, LOAD_ADDR, SCRATCH_LEN, generate, type GenOptions, type InsnClass, type Program } from "./generate.js";
import { runQemu } from "./qemu.js";
import { YunError, runYun } from "./yun.js";

export interface Dump {
  x: bigint[];
  f: bigint[];
  fcsr: bigint;
  mem: Uint8Array;
}

export function parseDump(out: Uint8Array): Dump {
  if (out.length !== SCRATCH_LEN + DUMP_LEN) throw new Error(`dump length ${out.length}`);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const at = (i: number) => v.getBigUint64(SCRATCH_LEN + 8 * i, true);
  return {
    x: Array.from({ length: 32 }, (_, i) => at(i)),
    f: Array.from({ length: 32 }, (_, i) => at(32 + i)),
    fcsr: at(64),
    mem: out.slice(0, SCRATCH_LEN),
  };
}

export interface Mismatch {
  name: string;
  expected: bigint;
  actual: bigint;
}

/** Registers first (x, f, fcsr), then scratch memory in 8-byte words. */
export function compare(expected: Dump, actual: Dump, outAddr: number): Mismatch[] {
  const out: Mismatch[] = [];
  for (let i = 0; i < 32; i++) if (expected.x[i] !== actual.x[i]) out.push({ name: `x${i}`, expected: expected.x[i], actual: actual.x[i] });
  for (let i = 0; i < 32; i++) if (expected.f[i] !== actual.f[i]) out.push({ name: `f${i}`, expected: expected.f[i], actual: actual.f[i] });
  if (expected.fcsr !== actual.fcsr) out.push({ name: "fcsr", expected: expected.fcsr, actual: actual.fcsr });
  const ev = new DataView(expected.mem.buffer, expected.mem.byteOffset);
  const av = new DataView(actual.mem.buffer, actual.mem.byteOffset);
  for (let o = 0; o < SCRATCH_LEN; o += 8) {
    const [e, a] = [ev.getBigUint64(o, true), av.getBigUint64(o, true)];
    if (e !== a) out.push({ name: `mem[0x${(outAddr + o).toString(16)}]`, expected: e, actual: a });
  }
  return out;
}

export const hex64 = (v: bigint) => "0x" + v.toString(16).padStart(16, "0");

type Outcome = { ok: true; qemu: Dump } | { ok: false; qemu: Dump; yunError?: string; mismatches: Mismatch[] };

/** Runs one program on both sides. */
export function runBoth(p: Program): Outcome {
  const qemu = parseDump(runQemu(p));
  let yun: Dump;
  try {
    yun = parseDump(runYun(p));
  } catch (e) {
    if (e instanceof YunError) return { ok: false, qemu, yunError: e.message, mismatches: [] };
    throw e;
  }
  const mismatches = compare(qemu, yun, p.outAddr);
  return mismatches.length === 0 ? { ok: true, qemu } : { ok: false, qemu, mismatches };
}

function describe(o: Outcome): string {
  if (o.ok) return "match";
  if (o.yunError) return `yun: ${o.yunError}`;
  const lines = o.mismatches
    .slice(0, 12)
    .map((m) => `  ${m.name.padEnd(16)} qemu=${hex64(m.expected)}  yun=${hex64(m.actual)}`);
  if (o.mismatches.length > 12) lines.push(`  ... ${o.mismatches.length - 12} more`);
  return lines.join("\n");
}

function bodyBytes(p: Program, from: number, to: number): Uint8Array {
  return p.segment.subarray(from - LOAD_ADDR, to - LOAD_ADDR);
}

/**
 * Checks one (class, seed). Returns null on a match, else a report: the first mismatch, a bisected
 * culprit unit (the shortest body prefix that diverges) with its input registers, and the body.
 */
export function checkSeed(cls: InsnClass, seed: number, opts: GenOptions = {}): string | null {
  const full = generate(seed, cls, opts);
  const res = runBoth(full);
  if (res.ok) return null;
  const parts = [`diff mismatch: class=${cls} seed=${seed} (${full.units} units)`, describe(res)];

  // Bisect on the number of emitted units: find k with prefix k diverging and prefix k-1 matching.
  const probe = (k: number) => runBoth(generate(seed, cls, { ...opts, truncate: k }));
  let lo = 0;
  let hi = full.units;
  const base = probe(0);
  if (!base.ok) {
    parts.push("even the empty body diverges (prologue/epilogue or harness):", describe(base));
  } else {
    let hiRes: Outcome = res;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      const r = probe(mid);
      if (r.ok) lo = mid;
      else [hi, hiRes] = [mid, r];
    }
    const p = generate(seed, cls, { ...opts, truncate: hi });
    const before = probe(hi - 1);
    const start = p.unitAddrs[hi - 1];
    const end = hi < p.unitAddrs.length ? p.unitAddrs[hi] : p.bodyEnd;
    const dis = disassemble(bodyBytes(p, start, end), start);
    parts.push(`culprit: unit ${hi - 1} (first diverging prefix = ${hi} units):`, dis);
    if (before.ok) {
      const used = new Set(dis.split("\n").flatMap((l) => l.split("\t").slice(3).join(" ").match(/\b[xf]\d+\b/g) ?? []));
      const regs = [...used].map((r) => {
        const i = Number(r.slice(1));
        return `  ${r.padEnd(4)}= ${hex64(r[0] === "x" ? before.qemu.x[i] : before.qemu.f[i])}`;
      });
      parts.push(`inputs before the culprit (qemu, fcsr=${hex64(before.qemu.fcsr)}):`, ...regs);
    }
    parts.push("state after the culprit:", describe(hiRes));
  }
  parts.push(`body (${full.cls} seed ${seed}):`, disassemble(bodyBytes(full, full.bodyStart, full.bodyEnd), full.bodyStart));
  return parts.join("\n");
}

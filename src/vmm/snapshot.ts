/**
 * Snapshots on disk: a directory with
 *   snapshot.json  {format: "yun-snapshot", version, checksum, body}; body = the VM's spec, the
 *                  machine state (harts, devices, queues), the memory file's description and the
 *                  disks; checksum = SHA-256 of the body's JSON
 *   memory.bin     RAM pages: a header, the page numbers, then the pages (4 KiB each)
 *   disk<N>.qcow2  copies of disks that belonged to the VM alone (throwaway overlays); other disks
 *                  are referenced by path, as QEMU's snapshots reference their drives
 * A full snapshot stores every page that is not all zeros; an incremental one stores the pages
 * written since its parent (the snapshot before it, referenced by path and id) and is restored on
 * top of the parent chain. Everything is checked (format, version, checksums, parent ids, sizes)
 * before a restore changes anything.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from "../storage/private.js";
import type { MachineState } from "./virt.js";
import { checkSpec, type VmSpec } from "./spec.js";
import { isTypeAheadRule, type TypeAheadRule } from "./terminal.js";
import { allocateRam, ramView, type RamStorage } from "../cpu/bus.js";

export const SNAPSHOT_FORMAT = "yun-snapshot";
export const SNAPSHOT_VERSION = 1;
const PAGE = 4096;
const MEMORY_MAGIC = "YUNMEM01";
const HEADER_BYTES = 32;

/** A snapshot that cannot be written or restored, in one sentence naming the directory. */
export class SnapshotError extends Error {}

export interface MemoryInfo {
  file: string;
  bytes: number;
  pages: number;
  totalPages: number;
  sha256: string;
}

export interface SnapshotBody {
  id: string;
  createdAt: string;
  spec: VmSpec;
  state: MachineState;
  /** The snapshot this one adds to (incremental), or null (full). */
  parent: { dir: string; id: string } | null;
  memory: MemoryInfo;
  /** Per disk of the spec: a copy in this directory (file name), or null (the spec's path). */
  diskCopies: (string | null)[];
  /**
   * When input piped into the restored VM reaches the guest (src/vmm/terminal.ts): "immediate" if
   * its shell was ready when the snapshot was taken, else its boot's rule. Older snapshots: none.
   */
  typeAhead?: TypeAheadRule;
}

/** The pages worth storing: those marked in `only` (incremental), or every page not all zeros. */
export function selectPages(ram: Uint8Array, only: Uint8Array | null): Uint32Array {
  const total = ram.length / PAGE;
  const words = new Int32Array(ram.buffer, ram.byteOffset, ram.length >> 2);
  const out = new Uint32Array(total);
  let n = 0;
  for (let p = 0; p < total; p++) {
    if (only !== null) {
      if (only[p] !== 0) out[n++] = p;
      continue;
    }
    for (let w = p * (PAGE >> 2), end = w + (PAGE >> 2); w < end; w++) {
      if (words[w] !== 0) {
        out[n++] = p;
        break;
      }
    }
  }
  return out.slice(0, n);
}

/** Writes the memory file; returns its description (size, pages, SHA-256 of the whole file). */
export function writeMemoryFile(path: string, ram: Uint8Array, pages: Uint32Array): MemoryInfo {
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(MEMORY_MAGIC, 0, "latin1");
  header.writeUInt32LE(PAGE, 8);
  header.writeUInt32LE(ram.length / PAGE, 12);
  header.writeUInt32LE(pages.length, 16);
  const index = Buffer.from(pages.buffer, pages.byteOffset, pages.byteLength);
  const hash = createHash("sha256");
  const fd = openSync(path, "w", PRIVATE_FILE_MODE);
  let bytes = 0;
  try {
    const put = (b: Uint8Array): void => {
      hash.update(b);
      let off = 0;
      while (off < b.length) off += writeSync(fd, b, off, b.length - off);
      bytes += b.length;
    };
    put(header);
    put(index);
    // Runs of consecutive pages go out as one write.
    let i = 0;
    while (i < pages.length) {
      let j = i + 1;
      while (j < pages.length && pages[j] === pages[j - 1] + 1 && j - i < 256) j++;
      put(ram.subarray(pages[i] * PAGE, (pages[j - 1] + 1) * PAGE));
      i = j;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { file: "memory.bin", bytes, pages: pages.length, totalPages: ram.length / PAGE, sha256: hash.digest("hex") };
}

/** Reads and checks a memory file against its description; returns the page numbers and the data. */
function readMemoryFile(dir: string, info: MemoryInfo): { pages: Uint32Array; data: Buffer } {
  const path = join(dir, info.file);
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch {
    throw new SnapshotError(`snapshot ${dir}: its memory file ${info.file} is missing`);
  }
  if (buf.length !== info.bytes) {
    throw new SnapshotError(`snapshot ${dir}: ${info.file} is ${buf.length} bytes, not ${info.bytes} (truncated?)`);
  }
  if (createHash("sha256").update(buf).digest("hex") !== info.sha256) {
    throw new SnapshotError(`snapshot ${dir}: ${info.file} is corrupt (checksum mismatch)`);
  }
  if (buf.toString("latin1", 0, 8) !== MEMORY_MAGIC || buf.readUInt32LE(8) !== PAGE) {
    throw new SnapshotError(`snapshot ${dir}: ${info.file} is not a Yun memory file`);
  }
  const total = buf.readUInt32LE(12);
  const count = buf.readUInt32LE(16);
  if (total !== info.totalPages || count !== info.pages || HEADER_BYTES + count * 4 + count * PAGE !== buf.length) {
    throw new SnapshotError(`snapshot ${dir}: ${info.file} does not match its description`);
  }
  const pages = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    pages[i] = buf.readUInt32LE(HEADER_BYTES + 4 * i);
    if (pages[i] >= total) throw new SnapshotError(`snapshot ${dir}: ${info.file} names page ${pages[i]} beyond RAM`);
  }
  return { pages, data: buf.subarray(HEADER_BYTES + count * 4) };
}

function checksum(body: unknown): string {
  return createHash("sha256").update(JSON.stringify(body)).digest("hex");
}

/** A fresh snapshot id. */
export function snapshotId(): string {
  return randomBytes(8).toString("hex");
}

/**
 * Writes snapshot.json last, through a temporary name: a directory without it holds no snapshot,
 * so a crash while writing never leaves a half snapshot that looks whole.
 */
export function writeSnapshotJson(dir: string, body: SnapshotBody): void {
  const doc = { format: SNAPSHOT_FORMAT, version: SNAPSHOT_VERSION, checksum: checksum(body), body };
  const tmp = join(dir, "snapshot.json.tmp");
  writeFileSync(tmp, JSON.stringify(doc), { mode: PRIVATE_FILE_MODE });
  renameSync(tmp, join(dir, "snapshot.json"));
}

/** Makes `dir` ready for a new snapshot: created if absent, refused if it holds anything. */
export function prepareSnapshotDir(dir: string): string {
  const abs = resolve(dir);
  if (existsSync(abs)) {
    let entries: string[];
    try {
      entries = readdirSync(abs);
    } catch {
      throw new SnapshotError(`snapshot directory ${abs} is not a directory`);
    }
    if (entries.length > 0) throw new SnapshotError(`snapshot directory ${abs} is not empty`);
  } else {
    mkdirSync(abs, { recursive: true, mode: PRIVATE_DIR_MODE });
  }
  return abs;
}

/** A file name inside the snapshot directory: no directories, no way out of it. */
const isPlainName = (v: unknown): v is string => typeof v === "string" && /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(v);
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** What is wrong with the parts of a body the reader relies on (the spec is checked apart), or null. */
function checkBody(b: SnapshotBody): string | null {
  if (typeof b.id !== "string" || b.id === "") return "the snapshot has no id";
  if (
    b.parent !== null &&
    (typeof b.parent !== "object" || typeof b.parent.dir !== "string" || typeof b.parent.id !== "string")
  ) {
    return "its parent reference is malformed";
  }
  const m = b.memory as Partial<MemoryInfo> | null;
  if (
    typeof m !== "object" ||
    m === null ||
    !isPlainName(m.file) ||
    !isCount(m.bytes) ||
    !isCount(m.pages) ||
    !isCount(m.totalPages) ||
    typeof m.sha256 !== "string"
  ) {
    return "its memory file description is malformed";
  }
  if (
    !Array.isArray(b.diskCopies) ||
    b.diskCopies.length !== b.spec.disks.length ||
    !b.diskCopies.every((f) => f === null || isPlainName(f))
  ) {
    return "its list of disk copies is malformed";
  }
  if (b.typeAhead !== undefined && !isTypeAheadRule(b.typeAhead)) return "its console input rule is malformed";
  return null;
}

/** Reads snapshot.json of `dir` and checks format, version and checksum. */
export function readSnapshotBody(dir: string): SnapshotBody {
  const path = join(dir, "snapshot.json");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    throw new SnapshotError(`${dir} holds no snapshot (no snapshot.json)`);
  }
  let doc: { format?: unknown; version?: unknown; checksum?: unknown; body?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch {
    throw new SnapshotError(`snapshot ${dir}: snapshot.json is corrupt (not JSON)`);
  }
  if (doc.format !== SNAPSHOT_FORMAT) throw new SnapshotError(`snapshot ${dir}: not a Yun snapshot`);
  if (doc.version !== SNAPSHOT_VERSION) {
    throw new SnapshotError(
      `snapshot ${dir}: format version ${String(doc.version)}, but this Yun reads version ${SNAPSHOT_VERSION}`,
    );
  }
  if (typeof doc.body !== "object" || doc.body === null || doc.checksum !== checksum(doc.body)) {
    throw new SnapshotError(`snapshot ${dir}: snapshot.json is corrupt (checksum mismatch)`);
  }
  const body = doc.body as SnapshotBody;
  const bad = checkSpec(body.spec) ?? checkBody(body);
  if (bad) throw new SnapshotError(`snapshot ${dir}: ${bad}`);
  if (typeof body.state !== "object" || body.state === null)
    throw new SnapshotError(`snapshot ${dir}: no machine state`);
  return body;
}

/** A snapshot chain, checked and ready to load: the newest body and its memory, oldest first. */
export interface LoadedSnapshot {
  dir: string;
  body: SnapshotBody;
  /** Full snapshot first, then each increment. */
  chain: { dir: string; pages: Uint32Array; data: Buffer }[];
}

/** Reads and checks a snapshot and its parents; nothing is changed anywhere. */
export function loadSnapshot(dir: string): LoadedSnapshot {
  const top = resolve(dir);
  const body = readSnapshotBody(top);
  const chain: LoadedSnapshot["chain"] = [];
  let cur = body;
  let curDir = top;
  const seen = new Set<string>();
  for (;;) {
    if (seen.has(cur.id)) throw new SnapshotError(`snapshot ${top}: its parent chain loops`);
    seen.add(cur.id);
    if (cur.memory.totalPages * PAGE !== body.spec.memoryMiB * 1024 * 1024) {
      throw new SnapshotError(`snapshot ${curDir}: memory size differs from the VM's`);
    }
    chain.unshift({ dir: curDir, ...readMemoryFile(curDir, cur.memory) });
    if (cur.parent === null) break;
    const parentDir = cur.parent.dir;
    let parent: SnapshotBody;
    try {
      parent = readSnapshotBody(parentDir);
    } catch (e) {
      throw new SnapshotError(`snapshot ${curDir} is incremental and its parent is unusable: ${(e as Error).message}`);
    }
    if (parent.id !== cur.parent.id) {
      throw new SnapshotError(`snapshot ${curDir}: its parent ${parentDir} was replaced by another snapshot`);
    }
    cur = parent;
    curDir = parentDir;
  }
  for (const [i, file] of body.diskCopies.entries()) {
    if (file !== null && !existsSync(join(top, file))) {
      throw new SnapshotError(`snapshot ${top}: its copy of disk ${i} (${file}) is missing`);
    }
  }
  return { dir: top, body, chain };
}

/** The RAM a loaded chain describes: a fresh buffer (zero pages are left out of full snapshots). */
export function snapshotRam(loaded: LoadedSnapshot): RamStorage {
  const storage = allocateRam(loaded.body.memory.totalPages * PAGE);
  const ram = ramView(storage, loaded.body.memory.totalPages * PAGE);
  for (const link of loaded.chain) {
    const pages = link.pages;
    // Runs of consecutive pages are one copy each.
    let i = 0;
    while (i < pages.length) {
      let j = i + 1;
      while (j < pages.length && pages[j] === pages[j - 1] + 1) j++;
      ram.set(link.data.subarray(i * PAGE, j * PAGE), pages[i] * PAGE);
      i = j;
    }
  }
  return storage;
}

/**
 * The object store's bytes: content-addressed blobs under `$YUN_HOME/cloud/objects/blobs/`
 * (`ab/abcdef...`, named by their sha256), written through `tmp/`. A write streams into a
 * temporary file while hashing (sha256, MD5, CRC32), is fsynced, renamed into place and the
 * directory fsynced; only then does the caller commit the record that names it, so a crash leaves
 * at worst a temporary file or an unreferenced blob, both removed at the next start (sweep). A
 * read checks the whole blob's sha256 and holds back its last chunk until the check passes, so a
 * blob that rotted on disk ends the response with an error instead of delivering wrong bytes.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, readdirSync, rmSync, unlinkSync } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable, Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { crc32 } from "node:zlib";
import { randomB32 } from "../db.js";
import { makePrivateDir } from "../../storage/private.js";
import { S3Error } from "./xml.js";

/** What a blob write measured. */
export interface WrittenBlob {
  sha256: string;
  md5: string;
  size: number;
  /** CRC32 as S3's checksum headers carry it: base64 of the big-endian value. */
  crc32: string;
}

/** What the sender vouched for: a mismatch discards the blob. */
export interface Expected {
  sha256?: string;
  md5Base64?: string;
  crc32Base64?: string;
  size?: number;
}

/** Reads are in chunks of this size (and one chunk is held back until the hash is checked). */
const READ_CHUNK = 1024 * 1024;

class Measure extends Transform {
  readonly sha = createHash("sha256");
  readonly md5 = createHash("md5");
  crc = 0;
  size = 0;
  constructor(private readonly maxBytes: number) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.maxBytes)
      return done(
        new S3Error(400, "EntityTooLarge", `the body is larger than the ${this.maxBytes} bytes this request may store`),
      );
    this.sha.update(chunk);
    this.md5.update(chunk);
    this.crc = crc32(chunk, this.crc);
    done(null, chunk);
  }
}

export class BlobStore {
  readonly blobs: string;
  readonly tmp: string;
  /** Blobs written but whose record is not committed yet: a collection must not remove them. */
  private readonly pending = new Map<string, number>();

  constructor(dir: string) {
    this.blobs = join(dir, "blobs");
    this.tmp = join(dir, "tmp");
    makePrivateDir(dir);
    makePrivateDir(this.blobs);
    makePrivateDir(this.tmp);
  }

  path(sha256: string): string {
    return join(this.blobs, sha256.slice(0, 2), sha256);
  }

  /**
   * Streams `source` into a new blob (at most maxBytes) and checks `expect`. The blob is held
   * (never collected) until `release` is called, which the caller does after committing the
   * record that names it, or after failing to.
   */
  async write(source: Readable, maxBytes: number, expect: Expected = {}): Promise<WrittenBlob> {
    const tmp = join(this.tmp, `${Date.now()}-${randomB32(12)}`);
    const measure = new Measure(maxBytes);
    try {
      await pipeline(source, measure, createWriteStream(tmp, { flags: "wx", mode: 0o600 }));
      const out: WrittenBlob = {
        sha256: measure.sha.digest("hex"),
        md5: measure.md5.digest("hex"),
        size: measure.size,
        crc32: crc32Base64(measure.crc),
      };
      if (expect.size !== undefined && out.size !== expect.size)
        throw new S3Error(
          400,
          "IncompleteBody",
          `the body has ${out.size} bytes, but the request declared ${expect.size}`,
        );
      if (expect.sha256 !== undefined && expect.sha256 !== out.sha256)
        throw new S3Error(
          400,
          "XAmzContentSHA256Mismatch",
          "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
      if (expect.md5Base64 !== undefined && expect.md5Base64 !== Buffer.from(out.md5, "hex").toString("base64"))
        throw new S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.");
      if (expect.crc32Base64 !== undefined && expect.crc32Base64 !== out.crc32)
        throw new S3Error(400, "BadDigest", "The CRC32 you specified did not match the calculated checksum.");
      const fh = await open(tmp, "r");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      this.hold(out.sha256);
      try {
        const dir = join(this.blobs, out.sha256.slice(0, 2));
        if (!existsSync(dir)) makePrivateDir(dir);
        await rename(tmp, this.path(out.sha256));
        const dh = await open(dir, "r");
        try {
          await dh.sync();
        } finally {
          await dh.close();
        }
      } catch (e) {
        this.release(out.sha256);
        throw e;
      }
      return out;
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** Keeps a blob from being collected (a write about to commit its record). */
  hold(sha256: string): void {
    this.pending.set(sha256, (this.pending.get(sha256) ?? 0) + 1);
  }

  release(sha256: string): void {
    const n = (this.pending.get(sha256) ?? 1) - 1;
    if (n <= 0) this.pending.delete(sha256);
    else this.pending.set(sha256, n);
  }

  /**
   * Removes the blobs no record names (referenced(sha) false) and no write holds. Synchronous
   * from the check to the unlink, so no write of this process can slip in between.
   */
  collect(shas: Iterable<string>, referenced: (sha256: string) => boolean): void {
    for (const sha of new Set(shas)) {
      if (this.pending.has(sha) || referenced(sha)) continue;
      try {
        unlinkSync(this.path(sha));
      } catch {}
    }
  }

  /**
   * At start: temporary files (writes cut off) and blobs no record names (a crash between a
   * blob's rename and its record's commit, or a delete cut off before its unlink) are removed.
   * Returns how many files went.
   */
  sweep(referenced: Set<string>): number {
    let removed = 0;
    for (const f of readdirSync(this.tmp)) {
      rmSync(join(this.tmp, f), { force: true });
      removed++;
    }
    for (const d of readdirSync(this.blobs)) {
      for (const f of readdirSync(join(this.blobs, d))) {
        if (referenced.has(f) || this.pending.has(f)) continue;
        rmSync(join(this.blobs, d, f), { force: true });
        removed++;
      }
    }
    return removed;
  }

  /** Every blob on disk (for checks). */
  list(): string[] {
    const out: string[] = [];
    for (const d of readdirSync(this.blobs)) out.push(...readdirSync(join(this.blobs, d)));
    return out;
  }

  /**
   * Bytes start..end (inclusive) of a blob, checked against its name: the stream errors (and the
   * bytes of its last chunk are never delivered) if the blob's sha256 is not what it should be.
   * The file is opened at once, so a delete after this call does not cut the read short.
   */
  read(sha256: string, start: number, end: number): Readable {
    const file = createReadStream(this.path(sha256), { highWaterMark: READ_CHUNK });
    return Readable.from(verifiedRange(file, sha256, start, end), { objectMode: false });
  }
}

async function* verifiedRange(file: Readable, sha256: string, start: number, end: number): AsyncGenerator<Buffer> {
  const hash = createHash("sha256");
  let offset = 0;
  let held: Buffer | null = null;
  try {
    for await (const chunk of file as AsyncIterable<Buffer>) {
      hash.update(chunk);
      const from = Math.max(start, offset);
      const to = Math.min(end + 1, offset + chunk.length);
      offset += chunk.length;
      if (to <= from) continue;
      if (held) yield held;
      held = chunk.subarray(from - (offset - chunk.length), to - (offset - chunk.length));
    }
  } finally {
    file.destroy();
  }
  if (hash.digest("hex") !== sha256)
    throw new Error(`the stored object's data is damaged (blob ${sha256.slice(0, 16)}... fails its sha256 check)`);
  if (offset <= end) throw new Error("the stored object's data is shorter than its record says");
  if (held) yield held;
}

export function crc32Base64(crc: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc >>> 0);
  return b.toString("base64");
}

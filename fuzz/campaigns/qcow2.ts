/**
 * The qcow2 parser, fed mutated images: valid images made by Yun's own writer (several cluster
 * sizes, with data, a raw backing file, grown L2 and refcount tables) with bytes of the header,
 * the tables and anywhere else overwritten by interesting values, or the file cut short. A case
 * opens the image (read-only or for writing), reads, writes, discards, flushes and closes it.
 *
 * Properties: only DiskImageError (on open) and BlockIoError (on I/O) come out, each with a
 * message; no hang, no runaway allocation; and the untouched original still opens and reads back
 * its data afterwards.
 */
import fc from "fast-check";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createQcow2, openDiskImage, DiskImageError, type DiskImage } from "../../src/storage/image.js";
import { BlockIoError } from "../../src/devices/block.js";
import { leakGuard, must, timed, type Campaign, type Session } from "../campaign.js";

interface Mutation {
  /** Where: the header, the first clusters (tables), or anywhere. */
  region: number;
  at: number;
  width: 1 | 2 | 4 | 8;
  value: number;
}
interface Qcow2Case {
  image: number;
  mutations: Mutation[];
  truncate: number | null;
  readOnly: boolean;
  ops: [number, number, number][];
}

const interesting = fc.oneof(
  fc.constantFrom(0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 9, 16, 21, 512, 4096, 65536),
  fc.nat(0xffff_ffff),
);
const mutation: fc.Arbitrary<Mutation> = fc.record({
  region: fc.nat(2),
  at: fc.nat(0x7fff_ffff),
  width: fc.constantFrom<1 | 2 | 4 | 8>(1, 2, 4, 8),
  value: interesting,
});

/** Big-endian write of `value` (width 8: value in the low word, high word 0 or all ones). */
function poke(buf: Buffer, at: number, width: number, value: number): void {
  if (at + width > buf.length) return;
  if (width === 1) buf[at] = value & 0xff;
  else if (width === 2) buf.writeUInt16BE(value & 0xffff, at);
  else if (width === 4) buf.writeUInt32BE(value >>> 0, at);
  else {
    buf.writeUInt32BE(value & 1 ? 0xffff_ffff : 0, at);
    buf.writeUInt32BE(value >>> 0, at + 4);
  }
}

function documented(e: unknown): boolean {
  return (e instanceof DiskImageError || e instanceof BlockIoError) && (e as Error).message.length > 0;
}

export const qcow2Campaign: Campaign = {
  name: "qcow2",
  surface: "parser",
  testRuns: 300,
  batchRuns: 2000,
  open(): Session {
    const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "yun-fuzz-qcow2-"));
    const base = join(dir, "base.raw");
    const basePattern = Buffer.alloc(256 * 1024);
    for (let i = 0; i < basePattern.length; i++) basePattern[i] = (i * 13 + (i >> 9)) & 0xff;
    writeFileSync(base, basePattern);
    const originals: { name: string; bytes: Buffer; size: number }[] = [];
    const make = (name: string, clusterSize: number, size: number, backing: boolean) => {
      const path = join(dir, name);
      createQcow2(path, {
        size,
        clusterSize,
        ...(backing ? { backing: { path: "base.raw", format: "raw" as const } } : {}),
      });
      const img = openDiskImage(path, { lock: false });
      const data = Buffer.alloc(8192);
      for (let off = 0; off < size; off += Math.max(clusterSize * 3, 16384)) {
        data.fill((off >> 9) & 0xff);
        img.write(off, data.subarray(0, Math.min(8192, size - off)));
      }
      img.close();
      originals.push({ name, bytes: readFileSync(path), size });
    };
    make("c512.qcow2", 512, 1 << 20, false);
    make("c4k.qcow2", 4096, 2 << 20, true);
    make("c64k.qcow2", 65536, 4 << 20, false);
    const target = join(dir, "case.qcow2");
    const buf = Buffer.alloc(512 * 1024);
    const sector = new Uint8Array(4096);

    const property = fc.property(
      fc.record({
        image: fc.nat(originals.length - 1),
        mutations: fc.array(mutation, { minLength: 1, maxLength: 6 }),
        truncate: fc.oneof(fc.constant(null), fc.constant(null), fc.constant(null), fc.nat(200_000)),
        readOnly: fc.boolean(),
        ops: fc.array(fc.tuple(fc.nat(3), fc.nat(0x7fff_ffff), fc.nat(8)), { maxLength: 8 }),
      }),
      timed((c: Qcow2Case) => {
        const o = originals[c.image];
        const bytes = buf.subarray(0, o.bytes.length);
        o.bytes.copy(bytes);
        for (const m of c.mutations) {
          // Header (first 512 bytes), the first clusters (L1, refcount table), or anywhere.
          const span = m.region === 0 ? 512 : m.region === 1 ? Math.min(bytes.length, 0x30000) : bytes.length;
          poke(bytes, m.at % span, m.width, m.value);
        }
        writeFileSync(target, c.truncate === null ? bytes : bytes.subarray(0, Math.min(c.truncate, bytes.length)));
        let img: DiskImage;
        try {
          img = openDiskImage(target, { readOnly: c.readOnly, lock: false });
        } catch (e) {
          if (documented(e)) return;
          throw e;
        }
        try {
          const sectors = Math.max(1, Math.floor(img.size / 512));
          for (const [kind, where, count] of c.ops) {
            const n = Math.min(count + 1, 8);
            const off = (where % sectors) * 512;
            const len = Math.min(n * 512, img.size - off);
            if (len <= 0) continue;
            try {
              if (kind === 0 || c.readOnly) img.read(off, sector.subarray(0, len));
              else if (kind === 1) img.write(off, sector.subarray(0, len));
              else if (kind === 2) img.discard(off, len);
              else img.flush();
            } catch (e) {
              if (!documented(e)) throw e;
            }
          }
        } finally {
          try {
            img.close();
          } catch (e) {
            if (!documented(e)) throw e;
          }
        }
      }),
    );
    const leak = leakGuard("qcow2");
    return {
      property,
      check: () => {
        // The originals are unharmed and still read back what was written.
        for (const o of originals) {
          const p = join(dir, `check-${o.name}`);
          writeFileSync(p, o.bytes);
          const img = openDiskImage(p, { readOnly: true });
          const got = new Uint8Array(512);
          img.read(0, got);
          img.close();
          must(got[0] === 0 && got[511] === 0, `${o.name}: the first sector no longer reads back`);
        }
        leak();
      },
      close: () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

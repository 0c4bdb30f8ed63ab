/**
 * Yun writes qcow2 images that QEMU accepts: `qemu-img check` finds no errors and `qemu-img
 * compare` sees exactly what was written (a raw model file kept beside the image). Covers images
 * Yun creates and images qemu-img made: version 2, internal snapshots (copy on write of shared
 * clusters; the snapshot keeps its contents), compressed clusters, backing files, zero writes,
 * discard, refcount table growth, L1 growth on resize, a tiny L2 cache (write-back on eviction).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import { createQcow2, diskInfo, openDiskImage, resizeDisk, type DiskImage } from "../../src/storage/image.js";
import { Rng } from "../support/rng.js";
import {
  assertClean,
  equalBytes,
  firstDiff,
  pattern,
  qemuImg,
  qemuIo,
  qemuRead,
  qemuSame,
  run,
  scratch,
} from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

/** A disk plus an in-memory copy of what it should contain. */
class Modelled {
  readonly model: Uint8Array;
  disk: DiskImage;
  constructor(
    readonly path: string,
    initial: Uint8Array,
    readonly opts: { l2CacheBytes?: number } = {},
  ) {
    this.model = new Uint8Array(initial);
    this.disk = openDiskImage(path, opts);
    assert.equal(this.disk.size, initial.length);
  }
  write(offset: number, data: Uint8Array): void {
    this.disk.write(offset, data);
    this.model.set(data, offset);
  }
  zero(offset: number, length: number, unmap: boolean): void {
    this.disk.writeZeroes(offset, length, unmap);
    this.model.fill(0, offset, offset + length);
  }
  /** Closes the disk, then holds it against the model with Yun, qemu-img check and qemu-img compare. */
  verify(): void {
    const got = new Uint8Array(this.disk.size);
    this.disk.read(0, got);
    assert.equal(firstDiff(got, this.model), -1, "Yun reads back what it wrote");
    this.disk.close();
    assertClean(this.path);
    writeSparse(p("model.raw"), this.model);
    assert.ok(qemuSame(this.path, p("model.raw")), `qemu-img compare ${this.path} against the model`);
  }
}

/** Writes `data` to a new file, skipping zero chunks (holes). */
function writeSparse(file: string, data: Uint8Array): void {
  const fd = openSync(file, "w");
  ftruncateSync(fd, data.length);
  const zero = Buffer.alloc(65536);
  for (let off = 0; off < data.length; off += 65536) {
    const chunk = Buffer.from(data.buffer, data.byteOffset + off, Math.min(65536, data.length - off));
    if (!chunk.equals(zero.subarray(0, chunk.length))) writeSync(fd, chunk, 0, chunk.length, off);
  }
  closeSync(fd);
}

/** Writes of every shape: whole clusters, partial head and tail, runs across L2 tables. */
function writeMix(m: Modelled, seed: number, ops = 120): void {
  const rng = new Rng(seed);
  const sectors = m.disk.size / 512;
  for (let i = 0; i < ops; i++) {
    const start = rng.int(0, sectors - 1);
    const len = rng.int(1, Math.min(sectors - start, rng.bool(0.2) ? 4096 : 300));
    m.write(start * 512, pattern(len * 512, seed * 1000 + i));
  }
}

test("a new image from createQcow2 passes qemu-img check and reads as zeroes", () => {
  createQcow2(p("new.qcow2"), { size: 64 << 20 });
  assertClean(p("new.qcow2"));
  const info = JSON.parse(qemuImg("info", "--output=json", p("new.qcow2"))) as Record<string, unknown>;
  assert.equal(info["virtual-size"], 64 << 20);
  assert.equal(info["cluster-size"], 65536);
  assert.equal((info["format-specific"] as { data: { compat: string } }).data.compat, "1.1");
  const disk = openDiskImage(p("new.qcow2"), { readOnly: true });
  const buf = new Uint8Array(1 << 20).fill(1);
  disk.read(5 << 20, buf);
  assert.ok(buf.every((b) => b === 0));
  disk.close();
});

test("writes of every shape into a Yun-created image", () => {
  createQcow2(p("w.qcow2"), { size: 16 << 20 });
  const m = new Modelled(p("w.qcow2"), new Uint8Array(16 << 20));
  writeMix(m, 1);
  m.verify();
  // Overwrite in place after reopening (clusters now have QCOW_OFLAG_COPIED).
  const sizeBefore = statSync(p("w.qcow2")).size;
  const again = new Modelled(p("w.qcow2"), m.model);
  again.write(4096, pattern(1 << 20, 77));
  again.verify();
  assert.ok(
    statSync(p("w.qcow2")).size <= sizeBefore + 65536 * 2,
    "overwriting allocated clusters allocates nothing new",
  );
});

test("a version 2 image made by qemu-img stays version 2 and consistent", () => {
  qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p("v2.qcow2"), "8M");
  qemuIo(p("v2.qcow2"), "write -P 0x11 0 3M");
  const m = new Modelled(p("v2.qcow2"), qemuRead(p("v2.qcow2"), p("tmp.raw")));
  writeMix(m, 2);
  m.zero(1 << 20, 256 << 10, true);
  m.zero(5 << 20, 100 << 10, false);
  m.verify();
  assert.equal(diskInfo(p("v2.qcow2")).compat, "0.10");
});

test("clusters shared with an internal snapshot are copied on write; the snapshot keeps its data", () => {
  const f = p("snap.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", f, "8M");
  qemuIo(f, "write -P 0x21 0 6M", "write -z 6M 1M");
  const before = qemuRead(f, p("tmp.raw"));
  qemuImg("snapshot", "-c", "s1", f);
  const m = new Modelled(f, before);
  writeMix(m, 3);
  m.zero(2 << 20, 64 << 10, true);
  m.disk.discard(3 << 20, 128 << 10);
  m.model.fill(0, 3 << 20, (3 << 20) + (128 << 10));
  m.verify();
  assert.ok(equalBytes(qemuRead(f, p("tmp.raw"), "s1"), before), "snapshot s1 unchanged");
  // Back to the snapshot with qemu-img, and Yun sees it.
  qemuImg("snapshot", "-a", "s1", f);
  assertClean(f);
  const disk = openDiskImage(f, { readOnly: true });
  const got = new Uint8Array(disk.size);
  disk.read(0, got);
  disk.close();
  assert.equal(firstDiff(got, before), -1);
});

test("writing over compressed clusters", () => {
  const raw = new Uint8Array(4 << 20);
  for (let i = 0; i < raw.length; i++) raw[i] = (i >> 10) & 0xff;
  writeFileSync(p("c.raw"), raw);
  qemuImg("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", p("c.raw"), p("c.qcow2"));
  const m = new Modelled(p("c.qcow2"), raw);
  writeMix(m, 4, 60);
  m.zero(0, 64 << 10, true);
  m.verify();
});

test("an overlay on a raw backing file: partial writes copy the rest of the cluster from it", () => {
  const base = pattern(6 << 20, 5);
  writeFileSync(p("base.raw"), base);
  createQcow2(p("ov.qcow2"), { backing: { path: "base.raw", format: "raw" }, clusterSize: 65536 });
  assert.equal(JSON.parse(qemuImg("info", "--output=json", p("ov.qcow2")))["backing-filename-format"], "raw");
  const m = new Modelled(p("ov.qcow2"), base);
  m.write(1000 * 512, pattern(512, 1)); // one sector inside a cluster
  writeMix(m, 6);
  m.zero(2 << 20, 1 << 20, true); // zero flag over backing data
  m.zero((4 << 20) + 512, 70 << 10, false);
  m.disk.discard(5 << 20, 1 << 20);
  m.model.fill(0, 5 << 20, 6 << 20);
  m.verify();
  assert.ok(equalBytes(readFileSync(p("base.raw")), base), "the backing file is untouched");
});

test("an overlay on a qcow2 overlay: writes through a three-level chain", () => {
  qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p("mid.qcow2"));
  qemuIo(p("mid.qcow2"), "write -P 0x5a 1m 2m");
  createQcow2(p("top.qcow2"), { backing: { path: "mid.qcow2" } });
  assert.equal(diskInfo(p("top.qcow2")).backingFormat, "qcow2");
  const m = new Modelled(p("top.qcow2"), qemuRead(p("top.qcow2"), p("tmp.raw")));
  writeMix(m, 7);
  m.verify();
  assertClean(p("mid.qcow2"));
});

test("512-byte clusters: refcount blocks are added and the refcount table moves as the file grows", () => {
  createQcow2(p("small.qcow2"), { size: 32 << 20, clusterSize: 512 });
  const m = new Modelled(p("small.qcow2"), new Uint8Array(32 << 20));
  for (let i = 0; i < 24; i++) m.write(i << 20, pattern(1 << 20, i));
  writeMix(m, 8, 60);
  m.verify();
  const h = readFileSync(p("small.qcow2")).subarray(0, 64);
  const reftableClusters = new DataView(h.buffer, h.byteOffset).getUint32(56);
  assert.ok(reftableClusters > 1, `the refcount table grew (now ${reftableClusters} clusters)`);
});

test("an L2 cache of four tables: dirty tables are written back on eviction", () => {
  createQcow2(p("evict.qcow2"), { size: 64 << 20, clusterSize: 4096 }); // one L2 table covers 2 MiB
  const m = new Modelled(p("evict.qcow2"), new Uint8Array(64 << 20), { l2CacheBytes: 4 * 4096 });
  writeMix(m, 9, 150);
  m.disk.flush();
  writeMix(m, 10, 60);
  m.verify();
});

test("writeZeroes and discard on whole clusters use the zero flag / deallocate", () => {
  createQcow2(p("z.qcow2"), { size: 8 << 20 });
  const m = new Modelled(p("z.qcow2"), new Uint8Array(8 << 20));
  m.write(0, pattern(8 << 20, 11));
  m.zero(1 << 20, 2 << 20, true);
  m.zero(4 << 20, 1 << 20, false);
  m.disk.discard(6 << 20, 2 << 20);
  m.model.fill(0, 6 << 20, 8 << 20);
  m.verify();
  const map = JSON.parse(qemuImg("map", "--output=json", p("z.qcow2"))) as {
    start: number;
    zero: boolean;
    data: boolean;
  }[];
  const at = (off: number) =>
    map.find((e) => e.start <= off && off < e.start + (e as unknown as { length: number }).length)!;
  assert.equal(at(1 << 20).data, false, "unmapped zeroes hold no data");
  assert.equal(at(4 << 20).zero, true, "zeroes without unmap read as zero");
  assert.equal(at(6 << 20).data, false, "discarded clusters hold no data");
  // The freed clusters are reused: rewriting grows the file by nothing.
  const size = statSync(p("z.qcow2")).size;
  const again = new Modelled(p("z.qcow2"), m.model);
  again.write(1 << 20, pattern(2 << 20, 12));
  again.verify();
  assert.equal(statSync(p("z.qcow2")).size, size);
});

test("resize grows the disk; with small clusters the L1 table moves", () => {
  const f = p("grow.qcow2");
  createQcow2(f, { size: 1 << 20, clusterSize: 512 });
  let disk = openDiskImage(f);
  disk.write(0, new Uint8Array(1 << 20).fill(0x5a));
  disk.close();
  resizeDisk(f, 600 << 20); // 19200 L1 entries: the table moves to 300 new clusters
  assertClean(f);
  assert.equal(diskInfo(f).virtualSize, 600 << 20);
  disk = openDiskImage(f);
  disk.write(599 << 20, new Uint8Array(1 << 20).fill(0xa5));
  const buf = new Uint8Array(1 << 20);
  disk.read(300 << 20, buf);
  assert.ok(
    buf.every((b) => b === 0),
    "the new space reads as zeroes",
  );
  disk.close();
  assertClean(f);
  const out = run("qemu-io", ["-c", "read -P 0x5a 0 1M", "-c", "read -P 0xa5 599M 1M", "-c", "read -P 0 1M 598M", f]);
  assert.doesNotMatch(out.stdout + out.stderr, /fail/i);
  assert.throws(() => resizeDisk(f, 1 << 20), /shrinking/);
});

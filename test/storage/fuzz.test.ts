/**
 * Seeded random I/O against an in-memory model: writes of random sizes and offsets (partial
 * clusters, runs across L2 tables), zero writes with and without unmap, discards, flushes and
 * reopens, with a backing file or over compressed clusters shared with a snapshot. Afterwards
 * qemu-img check must be clean and qemu-img compare must agree with the model.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, openSync, writeFileSync, writeSync } from "node:fs";
import { createQcow2, openDiskImage, type DiskImage } from "../../src/storage/image.js";
import { Rng } from "../support/rng.js";
import { assertClean, equalBytes, firstDiff, pattern, qemuImg, qemuRead, qemuSame, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

function fuzz(image: string, initial: Uint8Array, clusterSize: number, seed: number, ops: number): Uint8Array {
  const model = new Uint8Array(initial);
  const rng = new Rng(seed);
  let disk: DiskImage = openDiskImage(image);
  const sectors = model.length / 512;
  const check = (start: number, len: number) => {
    const buf = new Uint8Array(len);
    disk.read(start, buf);
    const d = firstDiff(buf, model.subarray(start, start + len));
    assert.equal(d, -1, `seed ${seed}: byte ${start + d} differs from the model`);
  };
  for (let i = 0; i < ops; i++) {
    const start = rng.int(0, sectors - 1);
    const big = rng.bool(0.1);
    const len = Math.min(sectors - start, rng.int(1, big ? 1024 : 24)) * 512;
    const off = start * 512;
    const r = rng.int(0, 99);
    if (r < 70) {
      const data = pattern(len, seed * 100000 + i);
      disk.write(off, data);
      model.set(data, off);
    } else if (r < 80) {
      disk.writeZeroes(off, len, rng.bool());
      model.fill(0, off, off + len);
    } else if (r < 88) {
      disk.discard(off, len);
      // Whole clusters inside the range read as zeroes afterwards; the rest keeps its data.
      const first = Math.ceil(off / clusterSize) * clusterSize;
      const end = off + len === model.length ? off + len : Math.floor((off + len) / clusterSize) * clusterSize;
      if (first < end) model.fill(0, first, end);
    } else if (r < 95) {
      disk.flush();
    } else {
      disk.close();
      disk = openDiskImage(image);
    }
    if (i % 25 === 0) check(off, len);
  }
  const all = new Uint8Array(model.length);
  disk.read(0, all);
  assert.equal(firstDiff(all, model), -1, `seed ${seed}: final contents`);
  disk.close();
  assertClean(image);
  const fd = openSync(p("model.raw"), "w");
  ftruncateSync(fd, model.length);
  writeSync(fd, model);
  closeSync(fd);
  assert.ok(qemuSame(image, p("model.raw")), `seed ${seed}: qemu-img compare agrees with the model`);
  return model;
}

test("fuzz: overlay with 4 KiB clusters on a smaller raw backing file", () => {
  const base = pattern(8 << 20, 1);
  writeFileSync(p("base.raw"), base);
  for (const seed of [1, 2]) {
    const image = p(`overlay${seed}.qcow2`);
    createQcow2(image, { size: 10 << 20, clusterSize: 4096, backing: { path: "base.raw", format: "raw" } });
    const initial = new Uint8Array(10 << 20);
    initial.set(base);
    fuzz(image, initial, 4096, seed, 500);
    assert.ok(equalBytes(qemuRead(p("base.raw"), p("tmp.raw")), base), "backing file unchanged");
  }
});

test("fuzz: overlay with 64 KiB clusters on a qcow2 backing file", () => {
  qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p("mid.qcow2"));
  createQcow2(p("top.qcow2"), { backing: { path: "mid.qcow2", format: "qcow2" } });
  fuzz(p("top.qcow2"), qemuRead(p("top.qcow2"), p("tmp.raw")), 65536, 3, 400);
  assertClean(p("mid.qcow2"));
});

test("fuzz: compressed clusters shared with an internal snapshot", () => {
  const raw = new Uint8Array(6 << 20);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7) >> 12;
  raw.set(pattern(1 << 20, 4), 2 << 20);
  writeFileSync(p("c.raw"), raw);
  qemuImg("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", p("c.raw"), p("cs.qcow2"));
  qemuImg("snapshot", "-c", "before", p("cs.qcow2"));
  fuzz(p("cs.qcow2"), raw, 4096, 5, 500);
  assert.ok(equalBytes(qemuRead(p("cs.qcow2"), p("tmp.raw"), "before"), raw), "snapshot unchanged");
});

test("fuzz: 512-byte clusters without backing (refcount structures grow)", () => {
  createQcow2(p("tiny.qcow2"), { size: 12 << 20, clusterSize: 512 });
  fuzz(p("tiny.qcow2"), new Uint8Array(12 << 20), 512, 6, 500);
});

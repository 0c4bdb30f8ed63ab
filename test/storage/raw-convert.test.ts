/**
 * The raw backend, and convert/resize/info across formats, checked with qemu-img.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { RawImage } from "../../src/storage/raw.js";
import {
  convertDisk,
  createQcow2,
  createRaw,
  diskInfo,
  openDiskImage,
  parseSize,
  resizeDisk,
} from "../../src/storage/image.js";
import { assertClean, equalBytes, pattern, qemuImg, qemuIo, qemuRead, qemuSame, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

test("raw: reads, writes, zeroes, flush; bytes past the end of the file read as zeroes", () => {
  writeFileSync(p("odd.raw"), pattern(1000, 1)); // not a multiple of 512
  const r = openDiskImage(p("odd.raw"));
  assert.equal(r.format, "raw");
  assert.equal(r.size, 1024);
  const buf = new Uint8Array(1024);
  r.read(0, buf);
  assert.ok(equalBytes(buf.subarray(0, 1000), pattern(1000, 1)));
  assert.ok(buf.subarray(1000).every((b) => b === 0));
  r.close();

  createRaw(p("d.raw"), 4 << 20);
  assert.ok(statSync(p("d.raw")).blocks * 512 < 64 << 10, "createRaw makes a sparse file");
  const d = openDiskImage(p("d.raw"));
  const data = pattern(3 << 20, 2);
  d.write(512, data);
  d.writeZeroes(4096, 2 << 20, true);
  d.discard(0, 4096); // a no-op: the old contents stay
  d.flush();
  d.close();
  const expected = new Uint8Array(4 << 20);
  expected.set(data, 512);
  expected.fill(0, 4096, 4096 + (2 << 20));
  assert.ok(equalBytes(readFileSync(p("d.raw")), expected));

  const ro = new RawImage(p("d.raw"), { readOnly: true });
  assert.throws(() => ro.write(0, new Uint8Array(512)), /read-only/);
  ro.close();
});

test("convert qcow2 (with a backing chain) to raw and back; only non-zero clusters are allocated", () => {
  writeFileSync(p("base.raw"), pattern(4 << 20, 3));
  createQcow2(p("ov.qcow2"), { size: 64 << 20, backing: { path: "base.raw", format: "raw" } });
  const ov = openDiskImage(p("ov.qcow2"));
  ov.write(10 << 20, pattern(1 << 20, 4));
  ov.writeZeroes(0, 1 << 20, true);
  ov.write(63 << 20, pattern(512, 5));
  ov.close();
  const expected = qemuRead(p("ov.qcow2"), p("tmp.raw"));

  const r1 = convertDisk(p("ov.qcow2"), p("flat.raw"), "raw");
  assert.ok(equalBytes(readFileSync(p("flat.raw")), expected));
  assert.ok(statSync(p("flat.raw")).blocks * 512 < 8 << 20, "the raw output is sparse");
  assert.equal(r1.dataBytes, (3 << 20) + (1 << 20) + 65536);

  convertDisk(p("flat.raw"), p("back.qcow2"), "qcow2");
  assertClean(p("back.qcow2"));
  assert.ok(qemuSame(p("back.qcow2"), p("flat.raw")));
  assert.equal(diskInfo(p("back.qcow2")).backingChain.length, 0, "flattened");
  const map = JSON.parse(qemuImg("map", "--output=json", p("back.qcow2"))) as { data: boolean; length: number }[];
  const allocated = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
  assert.equal(allocated, (3 << 20) + (1 << 20) + 65536, "only the non-zero clusters hold data");

  // A compressed qcow2 made by QEMU converts too, and nothing is overwritten.
  qemuImg("convert", "-c", "-O", "qcow2", p("flat.raw"), p("comp.qcow2"));
  convertDisk(p("comp.qcow2"), p("uncomp.qcow2"), "qcow2", { clusterSize: 4096 });
  assert.equal(diskInfo(p("uncomp.qcow2")).clusterSize, 4096);
  assert.ok(qemuSame(p("uncomp.qcow2"), p("flat.raw")));
  assert.throws(() => convertDisk(p("comp.qcow2"), p("flat.raw"), "raw"), /already exists/);
  assert.ok(equalBytes(readFileSync(p("flat.raw")), expected));
});

test("convert skips what is known to be empty: a 64 GiB image holding 1 MiB", () => {
  createQcow2(p("huge.qcow2"), { size: 64 * 2 ** 30 });
  const d = openDiskImage(p("huge.qcow2"));
  d.write(40 * 2 ** 30, pattern(1 << 20, 9));
  assert.equal(d.knownZero(0, 40 * 2 ** 30), true);
  assert.equal(d.knownZero(40 * 2 ** 30 - 512, 1024), false);
  d.close();
  const t = Date.now();
  assert.equal(convertDisk(p("huge.qcow2"), p("huge2.qcow2"), "qcow2").dataBytes, 1 << 20);
  assert.ok(Date.now() - t < 5000, "without reading 64 GiB of zeroes");
  assertClean(p("huge2.qcow2"));
  const a = openDiskImage(p("huge2.qcow2"), { readOnly: true });
  const buf = new Uint8Array(1 << 20);
  a.read(40 * 2 ** 30, buf);
  a.close();
  assert.ok(equalBytes(buf, pattern(1 << 20, 9)));
});

test("resize and info for raw images; info for a qcow2 chain made by qemu-img", () => {
  createRaw(p("grow.raw"), 1 << 20);
  resizeDisk(p("grow.raw"), 3 << 20);
  assert.equal(statSync(p("grow.raw")).size, 3 << 20);
  assert.throws(() => resizeDisk(p("grow.raw"), 1 << 20), /shrinking/);

  qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "base.raw", "-F", "raw", p("q.qcow2"), "16M");
  qemuIo(p("q.qcow2"), "write -P 1 0 1M");
  const info = diskInfo(p("q.qcow2"));
  const q = JSON.parse(qemuImg("info", "--output=json", p("q.qcow2"))) as Record<string, number | string>;
  assert.equal(info.format, "qcow2");
  assert.equal(info.virtualSize, q["virtual-size"]);
  assert.equal(info.clusterSize, q["cluster-size"]);
  assert.equal(info.actualSize, q["actual-size"]);
  assert.equal(info.backingFile, "base.raw");
  assert.equal(info.backingFormat, "raw");
  assert.deepEqual(info.backingChain, [{ path: p("base.raw"), format: "raw", virtualSize: 4 << 20 }]);
  assert.equal(info.dirty, false);

  resizeDisk(p("q.qcow2"), 20 << 20);
  assert.equal(JSON.parse(qemuImg("info", "--output=json", p("q.qcow2")))["virtual-size"], 20 << 20);
  assertClean(p("q.qcow2"));
});

test("parseSize", () => {
  assert.equal(parseSize("10G"), 10 * 2 ** 30);
  assert.equal(parseSize("512M"), 512 * 2 ** 20);
  assert.equal(parseSize("1T"), 2 ** 40);
  assert.equal(parseSize("64k"), 65536);
  assert.equal(parseSize("1.5G"), 1.5 * 2 ** 30);
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("2GiB"), 2 * 2 ** 30);
  assert.equal(parseSize("ten"), null);
  assert.equal(parseSize("-1G"), null);
  assert.equal(parseSize("5X"), null);
});

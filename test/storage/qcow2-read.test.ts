/**
 * Images made by qemu-img and qemu-io read by Yun exactly as QEMU reads them (`qemu-img convert
 * -O raw` is the reference): versions 2 and 3, small and large clusters, zero clusters, discarded
 * clusters, backing chains of raw and qcow2 files, compressed clusters, internal snapshots.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, openSync, readSync, writeFileSync, writeSync } from "node:fs";
import { openDiskImage, diskInfo, type DiskImage } from "../../src/storage/image.js";
import { Rng } from "../support/rng.js";
import { firstDiff, pattern, qemuImg, qemuIo, qemuRead, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

/** Reads the whole disk through Yun, and 200 random ranges, against QEMU's view. */
function assertReadsLikeQemu(image: string, seed = 1): void {
  const expected = qemuRead(image, p("ref.raw"));
  const disk = openDiskImage(image, { readOnly: true });
  try {
    assert.equal(disk.size, expected.length, "virtual size");
    const all = new Uint8Array(disk.size);
    disk.read(0, all);
    const d = firstDiff(all, expected);
    assert.equal(d, -1, `${image}: first difference at byte ${d}`);
    const rng = new Rng(seed);
    for (let i = 0; i < 200; i++) {
      const sectors = disk.size / 512;
      const start = rng.int(0, sectors - 1);
      const len = rng.int(1, Math.min(sectors - start, 600));
      const buf = new Uint8Array(len * 512);
      disk.read(start * 512, buf);
      assert.equal(
        firstDiff(buf, expected.subarray(start * 512, start * 512 + buf.length)),
        -1,
        `range at sector ${start}`,
      );
    }
  } finally {
    disk.close();
  }
}

/** Renames the backing-format header extension of a v3 image to an unknown type. */
function hideBackingFormat(image: string): void {
  const fd = openSync(image, "r+");
  const head = new Uint8Array(4096);
  readSync(fd, head, 0, head.length, 0);
  const v = new DataView(head.buffer);
  for (let pos = v.getUint32(100); v.getUint32(pos) !== 0; pos += 8 + ((v.getUint32(pos + 4) + 7) & ~7)) {
    if (v.getUint32(pos) === 0xe2792aca) {
      v.setUint32(pos, 0x1badcafe);
      writeSync(fd, head, pos, 4, pos);
    }
  }
  closeSync(fd);
}

function fill(image: string): void {
  qemuIo(
    image,
    "write -P 0x11 0 1M",
    "write -P 0x22 1536k 100k",
    "write -P 0x33 5000k 3k",
    "write -z 256k 128k", // zero clusters in the middle of data
    "discard 512k 64k",
    "write -P 0x44 7m 1m", // the last megabyte
  );
}

test("version 3 image with data, zero clusters and discards", () => {
  qemuImg("create", "-q", "-f", "qcow2", p("v3.qcow2"), "8M");
  fill(p("v3.qcow2"));
  assertReadsLikeQemu(p("v3.qcow2"));
});

test("version 2 (compat=0.10) image", () => {
  qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p("v2.qcow2"), "8M");
  fill(p("v2.qcow2"));
  assert.equal(diskInfo(p("v2.qcow2")).compat, "0.10");
  assertReadsLikeQemu(p("v2.qcow2"), 2);
});

test("512-byte and 2 MiB clusters", () => {
  for (const cs of ["512", "2M"]) {
    const f = p(`cs${cs}.qcow2`);
    qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, f, "8M");
    fill(f);
    assertReadsLikeQemu(f, 3);
  }
});

test("a qcow2 overlay over a raw backing file smaller than itself", () => {
  writeFileSync(p("base.raw"), pattern(3 << 20, 7));
  qemuImg("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p("over-raw.qcow2"), "8M");
  qemuIo(p("over-raw.qcow2"), "write -P 0x55 4096 1000", "write -P 0x66 2m 2m", "write -z 100k 64k");
  assertReadsLikeQemu(p("over-raw.qcow2"), 4);
});

test("a three-level chain: qcow2 over qcow2 over raw, backing format probed where not recorded", () => {
  writeFileSync(p("c0.raw"), pattern(4 << 20, 8));
  qemuImg("create", "-q", "-f", "qcow2", "-b", "c0.raw", "-F", "raw", p("c1.qcow2"));
  qemuIo(p("c1.qcow2"), "write -P 0x77 1m 1m", "write -z 0 64k");
  qemuImg("create", "-q", "-f", "qcow2", "-b", "c1.qcow2", "-F", "qcow2", p("c2.qcow2"), "6M");
  qemuIo(p("c2.qcow2"), "write -P 0x88 1536k 1m", "write -P 0x99 5m 512");
  // c3 names c2 without a format (its backing format extension is turned into an unknown one,
  // which both QEMU and Yun skip): the format is probed.
  qemuImg("create", "-q", "-f", "qcow2", "-b", "c2.qcow2", "-F", "qcow2", p("c3.qcow2"));
  hideBackingFormat(p("c3.qcow2"));
  assert.equal(diskInfo(p("c3.qcow2")).backingFormat, undefined);
  qemuIo(p("c3.qcow2"), "write -P 0xaa 3m 70k");
  assert.equal(diskInfo(p("c3.qcow2")).backingChain.length, 3);
  assertReadsLikeQemu(p("c3.qcow2"), 5);
});

test("compressed clusters (qemu-img convert -c)", () => {
  const raw = new Uint8Array(4 << 20);
  raw.set(pattern(300_000, 9), 0); // incompressible
  for (let i = 1 << 20; i < 3 << 20; i++) raw[i] = (i >> 9) & 0xff; // compressible
  writeFileSync(p("comp.raw"), raw);
  for (const cs of ["64k", "4k"]) {
    const f = p(`comp-${cs}.qcow2`);
    qemuImg("convert", "-c", "-O", "qcow2", "-o", `cluster_size=${cs}`, p("comp.raw"), f);
    assert.match(qemuImg("check", f), /compressed clusters/);
    assertReadsLikeQemu(f, 6);
  }
});

test("an image with an internal snapshot reads its current state", () => {
  const f = p("snap.qcow2");
  qemuImg("create", "-q", "-f", "qcow2", f, "4M");
  qemuIo(f, "write -P 0x12 0 2M");
  qemuImg("snapshot", "-c", "first", f);
  qemuIo(f, "write -P 0x34 1m 64k", "write -P 0x56 3m 1m");
  const info = diskInfo(f);
  assert.deepEqual(
    info.snapshots.map((s) => s.name),
    ["first"],
  );
  assertReadsLikeQemu(f, 7);
});

test("read-only images refuse writes", () => {
  const disk: DiskImage = openDiskImage(p("v3.qcow2"), { readOnly: true });
  assert.equal(disk.readOnly, true);
  assert.throws(() => disk.write(0, new Uint8Array(512)), /read-only/);
  disk.close();
});

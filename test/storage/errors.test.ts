/**
 * Bad images are refused with a DiskImageError that names the file and the problem, and nothing
 * is written: the bytes and mtimes of every file involved are unchanged afterwards. Also the
 * advisory lock against two writers.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readSync, renameSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { DiskImageError, MAX_BACKING_DEPTH, createQcow2, diskInfo, openDiskImage } from "../../src/storage/image.js";
import { fingerprint, qemuImg, qemuIo, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

/** Opening `image` (read-write unless told) fails with a message matching `re`, naming `image`, changing no file. */
function refused(image: string, re: RegExp, files: string[] = [image], readOnly = false): DiskImageError {
  const before = fingerprint(files);
  let caught: unknown;
  try {
    openDiskImage(image, { readOnly }).close();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof DiskImageError, `expected a DiskImageError, got ${String(caught)}`);
  assert.match(caught.message, re);
  assert.deepEqual(fingerprint(files), before, "no file changed");
  return caught;
}

function patch(image: string, offset: number, bytes: number[]): void {
  const fd = openSync(image, "r+");
  writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

function readU32(image: string, offset: number): number {
  const b = new Uint8Array(4);
  const fd = openSync(image, "r");
  readSync(fd, b, 0, 4, offset);
  closeSync(fd);
  return new DataView(b.buffer).getUint32(0);
}

function good(name: string): string {
  const f = p(name);
  qemuImg("create", "-q", "-f", "qcow2", f, "8M");
  qemuIo(f, "write -P 0x11 0 4M");
  return f;
}

test("corrupt headers", () => {
  let f = good("bits.qcow2");
  patch(f, 20, [0, 0, 0, 40]);
  const e = refused(f, /cluster_bits is 40/);
  assert.ok(e.message.includes(f), "the message names the file");

  f = good("version.qcow2");
  patch(f, 4, [0, 0, 0, 4]);
  refused(f, /qcow2 version 4/);

  f = good("magic.qcow2");
  patch(f, 0, [0x51, 0x46, 0x49, 0xfa]);
  assert.throws(() => openDiskImage(f, { format: "qcow2" }), /bad magic/);

  f = good("l1.qcow2");
  patch(f, 36, [0, 0, 0, 0]); // l1_size 0 for an 8 MiB disk
  refused(f, /L1 table \(0 entries\) is too small/);

  f = good("l1align.qcow2");
  patch(f, 46, [0x12]); // l1_table_offset no longer cluster-aligned
  refused(f, /l1_table_offset is not cluster-aligned/);

  f = good("reftable.qcow2");
  patch(f, 56, [0, 0, 0, 0]); // refcount_table_clusters 0
  refused(f, /refcount table is empty/);

  f = good("hdrlen.qcow2");
  patch(f, 100, [0, 0, 0, 50]);
  refused(f, /header_length is 50/);

  writeFileSync(p("short.qcow2"), Uint8Array.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
  refused(p("short.qcow2"), /shorter than a qcow2 header/);
});

test("feature bits: unknown, corrupt, dirty, extended L2, zstd, external data, 32-bit refcounts", () => {
  let f = good("unknown.qcow2");
  patch(f, 78, [0x04]); // incompatible bit 10
  refused(f, /features Yun does not know: unknown feature bit 10/);

  f = good("corrupt.qcow2");
  patch(f, 79, [0x02]);
  refused(f, /marked corrupt/);
  refused(f, /marked corrupt/, [f], true);
  assert.equal(diskInfo(f).corrupt, true);

  f = good("dirty.qcow2");
  patch(f, 79, [0x01]);
  refused(f, /dirty bit is set.*qemu-img check -r all/);
  assert.equal(diskInfo(f).dirty, true);
  const ro = openDiskImage(f, { readOnly: true }); // readable: the mapping is intact
  const buf = new Uint8Array(512);
  ro.read(0, buf);
  assert.equal(buf[0], 0x11);
  ro.close();

  qemuImg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", p("ext.qcow2"), "8M");
  refused(p("ext.qcow2"), /extended L2 entries/);
  refused(p("ext.qcow2"), /extended L2 entries/, [p("ext.qcow2")], true);

  qemuImg("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", p("zstd.qcow2"), "8M");
  refused(p("zstd.qcow2"), /zstd compression/);

  qemuImg("create", "-q", "-f", "qcow2", "-o", `data_file=${p("data.raw")}`, p("datafile.qcow2"), "8M");
  refused(p("datafile.qcow2"), /external data file/);

  qemuImg("create", "-q", "-f", "qcow2", "-o", "refcount_bits=32", p("rc32.qcow2"), "8M");
  refused(p("rc32.qcow2"), /32-bit refcounts; Yun supports only 16-bit/);
});

test("truncated images", () => {
  const f = good("trunc.qcow2");
  const l1 = readU32(f, 44);
  truncateSync(f, l1 + 4); // in the middle of the L1 table
  refused(f, /truncated: its L1 table/);

  const g = good("trunc2.qcow2");
  truncateSync(g, 0x40000 + 100); // keeps header, refcount table and block, L1; cuts the L2 table
  refused(g, /is truncated: its L2 table for L1 entry 0/);

  const h = good("trunc3.qcow2");
  patch(h, 0x10000 + 4, [0, 0xf0, 0, 0]); // refcount block 0 moved past the end of the file
  refused(h, /truncated: its refcount block 0 \(at 15728640\)/);
});

test("backing chains: missing file, loop, too deep, unsupported format", () => {
  // Missing.
  writeFileSync(p("gone.raw"), new Uint8Array(1 << 20));
  qemuImg("create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", p("orphan.qcow2"));
  renameSync(p("gone.raw"), p("moved.raw"));
  const e = refused(p("orphan.qcow2"), /the backing file .*gone\.raw of .*orphan\.qcow2 does not exist/);
  assert.ok(e.message.includes(p("orphan.qcow2")));

  // A loop: a -> b -> a.
  qemuImg("create", "-q", "-f", "qcow2", p("a.qcow2"), "1M");
  qemuImg("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", p("b.qcow2"));
  qemuImg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p("a.qcow2"));
  refused(p("b.qcow2"), /backing chain of .*b\.qcow2 loops back/, [p("a.qcow2"), p("b.qcow2")]);
  assert.throws(() => diskInfo(p("b.qcow2")), /loops back/);

  // Too deep: base + 17 overlays.
  qemuImg("create", "-q", "-f", "qcow2", p("d0.qcow2"), "1M");
  for (let i = 1; i <= MAX_BACKING_DEPTH + 1; i++) {
    qemuImg("create", "-q", "-f", "qcow2", "-b", `d${i - 1}.qcow2`, "-F", "qcow2", p(`d${i}.qcow2`));
  }
  refused(p(`d${MAX_BACKING_DEPTH + 1}.qcow2`), /more than 16 images deep/);
  const ok = openDiskImage(p(`d${MAX_BACKING_DEPTH - 1}.qcow2`), { readOnly: true }); // 16 images: fine
  ok.close();

  // A backing format Yun cannot read.
  qemuImg("create", "-q", "-f", "vmdk", p("base.vmdk"), "1M");
  qemuImg("create", "-q", "-f", "qcow2", "-b", "base.vmdk", "-F", "vmdk", p("onvmdk.qcow2"));
  refused(p("onvmdk.qcow2"), /in vmdk format; Yun reads raw and qcow2/);

  // createQcow2 checks its backing file first.
  assert.throws(() => createQcow2(p("x.qcow2"), { backing: { path: "nope.raw" } }), /nope\.raw does not exist/);
  assert.throws(() => createQcow2(p("orphan.qcow2"), { size: 1 << 20 }), /already exists/);
});

test("missing files and directories", () => {
  refused(p("nothing.qcow2"), /nothing\.qcow2 does not exist/, []);
  assert.throws(() => openDiskImage(tmp.dir), /is a directory/);
});

test("a second read-write open is refused while the first holds the lock; stale locks are taken over", () => {
  const f = p("locked.qcow2");
  createQcow2(f, { size: 1 << 20 });
  const first = openDiskImage(f);
  assert.throws(() => openDiskImage(f), /already open for writing by this process/);
  const reader = openDiskImage(f, { readOnly: true });
  reader.close();
  first.close();
  openDiskImage(f).close();
  // A lock left by a process that no longer runs.
  const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  writeFileSync(`${f}.yun-lock`, `${dead.stdout}\n`);
  openDiskImage(f).close();
  // A lock held by a live process.
  writeFileSync(`${f}.yun-lock`, `${process.ppid}\n`);
  assert.throws(() => openDiskImage(f), new RegExp(`Yun process ${process.ppid}`));
});

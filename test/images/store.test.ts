import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { imageDir } from "../../src/images/paths.js";
import {
  findImage,
  imageInfo,
  MANIFEST_FORMAT,
  readManifest,
  verifyImage,
  type ImageManifest,
} from "../../src/images/store.js";
import { copySparseFile, sha256 } from "../../src/images/util.js";

async function withHome(fn: (home: string) => Promise<void>): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), "yun-store-"));
  const saved = process.env.YUN_HOME;
  process.env.YUN_HOME = home;
  try {
    await fn(home);
  } finally {
    if (saved === undefined) delete process.env.YUN_HOME;
    else process.env.YUN_HOME = saved;
    rmSync(home, { recursive: true, force: true });
  }
}

/** Writes a small image with the given manifest format into $YUN_HOME/images/debian-tiny. */
function fakeImage(format: number, withDisk = true): { dir: string; manifest: ImageManifest } {
  const dir = imageDir("debian-tiny");
  mkdirSync(dir, { recursive: true });
  const files: ImageManifest["files"] = {};
  const names = ["vmlinux", "initrd.cpio", "fw_jump.bin", "fw_dynamic.bin", ...(withDisk ? ["root.ext4"] : [])];
  for (const n of names) {
    const data = Buffer.from(`contents of ${n}`);
    writeFileSync(join(dir, n), data);
    files[n] = { sha256: sha256(data), size: data.length };
  }
  const manifest = {
    format,
    name: "debian-tiny",
    created: "2025-01-02T03:04:05.000Z",
    suite: "trixie",
    architecture: "riscv64",
    kernelVersion: "6.12.0-test-riscv64",
    packages: [{ name: "busybox", version: "1" }],
    kernel: "vmlinux",
    initrd: "initrd.cpio",
    firmware: { jump: "fw_jump.bin", dynamic: "fw_dynamic.bin" },
    rootDisk: "root.ext4",
    rootfs: {
      device: "/dev/vda",
      label: "yun-root",
      fsType: "ext4",
      sizeBytes: 1 << 30,
      packages: ["busybox"],
      omitted: [],
      busyboxApplets: 1,
      files: 1,
      fileBytes: 1,
    },
    modules: [],
    files,
  } as unknown as ImageManifest;
  writeFileSync(join(dir, "manifest.json"), JSON.stringify(manifest));
  return { dir, manifest };
}

test("an image carries its root disk; a changed root disk fails verification", () =>
  withHome(async () => {
    const { dir, manifest } = fakeImage(MANIFEST_FORMAT);
    const info = findImage("debian-tiny");
    assert.ok(info !== undefined);
    assert.equal(info.rootDisk, join(dir, "root.ext4"));
    assert.deepEqual(info, imageInfo(dir, readManifest(dir)!));
    assert.deepEqual(await verifyImage(dir, manifest), []);
    writeFileSync(join(dir, "root.ext4"), "contents of root.ext5");
    assert.deepEqual(await verifyImage(dir, manifest), ["root.ext4 does not match its checksum"]);
    rmSync(join(dir, "root.ext4"));
    assert.equal(findImage("debian-tiny"), undefined, "no root disk, no image");
    assert.deepEqual(await verifyImage(dir, manifest), ["root.ext4 is missing"]);
  }));

test("an image of the previous manifest format (no root disk) reads as absent, so pull rebuilds it", () =>
  withHome(async () => {
    const { dir } = fakeImage(1, false);
    assert.equal(readManifest(dir), undefined);
    assert.equal(findImage("debian-tiny"), undefined);
  }));

test("a manifest without rootDisk is flagged by verification", () =>
  withHome(async () => {
    const { dir, manifest } = fakeImage(MANIFEST_FORMAT);
    const m = { ...manifest, files: { ...manifest.files } };
    delete m.files["root.ext4"];
    assert.deepEqual(await verifyImage(dir, m), ["root.ext4 is not in the manifest"]);
  }));

test("sparse copies keep holes and contents", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-sparse-"));
  try {
    const src = join(dir, "disk.img");
    const size = 8 << 20;
    const data = Buffer.alloc(size);
    data.write("superblock", 1024);
    data.fill(0x7e, 5 << 20, (5 << 20) + 100_000);
    data.write("tail", size - 4);
    writeFileSync(src, data);
    const dest = join(dir, "copy.img");
    const written = copySparseFile(src, dest);
    assert.ok(readFileSync(dest).equals(data));
    assert.equal(statSync(dest).size, size);
    assert.equal(written, 4 * 64 * 1024, "one block at the start, two in the middle, one at the end");
    assert.ok(statSync(dest).blocks * 512 <= 2 * written, `allocated ${statSync(dest).blocks * 512}`);
    // Copying over an existing file replaces it.
    writeFileSync(dest, "old");
    copySparseFile(src, dest);
    assert.ok(readFileSync(dest).equals(data));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

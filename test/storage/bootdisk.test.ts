// The disk pre-flight: partition tables (GPT with both CRC32s and the backup, MBR), the read-only
// FAT and ext4 readers, and the search for what U-Boot's distro boot will boot. Disks are built
// with Debian's tools (sgdisk, sfdisk, mkfs.fat, mtools, mke2fs, e2fsck) and read back here.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  readPartitionTable,
  partitionScheme,
  partitionReader,
  GPT_TYPE,
  type DiskReader,
} from "../../src/storage/partition.js";
import { FatVolume } from "../../src/storage/fat.js";
import { Ext4Volume } from "../../src/storage/ext4read.js";
import { checkBootDisk, extlinuxKernel, peMachine, BootDiskError } from "../../src/storage/bootdisk.js";
import { BootLoaderWatch } from "../../src/vmm/bootwatch.js";
import { findInPath } from "../../src/images/util.js";
import { gptDisk, fatImage, ext4Image, peStub } from "../firmware/disks.js";

const PATH = `${process.env.PATH}:/usr/sbin:/sbin`;
const tools = ["sgdisk", "sfdisk", "mkfs.fat", "mcopy", "mke2fs", "e2fsck"].filter((t) => !findInPath(t, PATH));
const skip = tools.length ? `missing host tools: ${tools.join(", ")}` : false;

let work = "";
before(() => {
  work = mkdtempSync(join(tmpdir(), "yun-bootdisk-"));
});
after(() => rmSync(work, { recursive: true, force: true }));

/** A disk image file as a DiskReader. */
function reader(path: string): DiskReader {
  const bytes = readFileSync(path);
  return { size: bytes.length, read: (off, buf) => buf.set(bytes.subarray(off, off + buf.length)) };
}

const buffer = (b: Uint8Array): DiskReader => ({
  size: b.length,
  read: (off, buf) => buf.set(b.subarray(off, off + buf.length)),
});

test(
  "GPT: partitions, types, the bootable attribute; a corrupt primary falls back to the backup; both corrupt is an error",
  { skip },
  () => {
    const disk = join(work, "gpt.img");
    gptDisk(disk, 8, "8300", Buffer.alloc(1024 * 1024), true);
    const t = readPartitionTable(reader(disk))!;
    assert.equal(t.scheme, "gpt");
    assert.equal(t.partitions.length, 1);
    assert.deepEqual(
      {
        index: t.partitions[0].index,
        start: t.partitions[0].start,
        type: t.partitions[0].type,
        bootable: t.partitions[0].bootable,
        linux: t.partitions[0].linux,
      },
      { index: 1, start: 1024 * 1024, type: GPT_TYPE.linuxData, bootable: true, linux: true },
    );
    const bytes = readFileSync(disk);
    // Corrupt the primary's entries: the backup answers, with a note.
    bytes[1024 + 20] ^= 0xff;
    const t2 = readPartitionTable(buffer(bytes))!;
    assert.equal(t2.partitions.length, 1);
    assert.match(
      t2.note ?? "",
      /primary GPT is corrupt \(its partition entries' CRC32 does not match\); using the backup/,
    );
    // And the backup's header: no table to trust.
    bytes[bytes.length - 512 + 24] ^= 0x01;
    assert.throws(
      () => readPartitionTable(buffer(bytes)),
      /its GPT is corrupt: the primary's partition entries' CRC32 does not match, and the backup header's CRC32 does not match/,
    );
  },
);

test("MBR: the boot flag and types; a bare file system and an empty disk have no partition table", { skip }, () => {
  const disk = join(work, "mbr.img");
  writeFileSync(disk, Buffer.alloc(8 * 1024 * 1024));
  execFileSync("sfdisk", ["-q", disk], {
    input: "label: dos\nstart=2048, size=4096, type=c\nstart=8192, size=4096, type=83, bootable\n",
    env: { ...process.env, PATH },
  });
  const t = readPartitionTable(reader(disk))!;
  assert.equal(t.scheme, "mbr");
  assert.deepEqual(
    t.partitions.map((p) => [p.index, p.start, p.type, p.bootable, p.linux]),
    [
      [1, 2048 * 512, "0x0c", false, false],
      [2, 8192 * 512, "0x83", true, true],
    ],
  );
  assert.equal(partitionScheme(buffer(new Uint8Array(1 << 20))), null);
  const fat = fatImage(work, "bare", 4, { "a.txt": "x" });
  assert.equal(partitionScheme(buffer(fat)), null, "a FAT boot sector is not an MBR");
  assert.throws(() => checkBootDisk(buffer(fat)), /it has no partition table \(GPT or MBR\)/);
});

test("FAT12, FAT16 and FAT32: long names, case-insensitive paths, files spanning clusters", { skip }, () => {
  const big = Buffer.alloc(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 9)) & 0xff;
  for (const [bits, mib] of [
    [12, 2],
    [16, 20],
    [32, 40],
  ] as const) {
    const img = join(work, `fat${bits}.img`);
    execFileSync("mkfs.fat", ["-F", String(bits), "-C", img, String(mib * 1024)], { env: { ...process.env, PATH } });
    const src = join(work, "big.bin");
    writeFileSync(src, big);
    const env = { ...process.env, MTOOLS_SKIP_CHECK: "1" };
    execFileSync("mmd", ["-i", img, "::/EFI", "::/EFI/BOOT", "::/a-rather-long-directory-name"], { env });
    execFileSync("mcopy", ["-i", img, src, "::/EFI/BOOT/BOOTRISCV64.EFI"], { env });
    execFileSync("mcopy", ["-i", img, src, "::/a-rather-long-directory-name/Mixed.Case.Name.txt"], { env });
    const vol = new FatVolume(reader(img));
    assert.equal(vol.kind, `FAT${bits}`);
    assert.ok(vol.exists("/efi/boot/bootriscv64.efi"));
    assert.ok(!vol.exists("/EFI/BOOT"), "a directory is not a file");
    assert.ok(!vol.exists("/EFI/BOOT/BOOTX64.EFI"));
    assert.deepEqual(vol.readFile("/A-RATHER-LONG-DIRECTORY-NAME/mixed.case.name.txt"), new Uint8Array(big));
    assert.deepEqual(vol.readFile("/EFI/BOOT/BOOTRISCV64.EFI", 4096), new Uint8Array(big.subarray(0, 4096)));
  }
});

test("ext4: extents, hashed directories, symbolic links", { skip }, () => {
  const tree = join(work, "tree");
  mkdirSync(join(tree, "boot/extlinux"), { recursive: true });
  mkdirSync(join(tree, "many"), { recursive: true });
  const big = Buffer.alloc(5 * 1024 * 1024 + 123);
  for (let i = 0; i < big.length; i += 4096) big[i] = (i >> 12) & 0xff;
  writeFileSync(join(tree, "boot/vmlinux-6.12"), big);
  for (let i = 0; i < 600; i++) writeFileSync(join(tree, "many", `file-with-a-long-name-${i}`), `n${i}`);
  execFileSync("ln", ["-s", "vmlinux-6.12", join(tree, "boot/vmlinux")]);
  execFileSync("ln", ["-s", "/boot", join(tree, "bootlink")]);
  const img = join(work, "fs.ext4");
  writeFileSync(img, ext4Image(work, "fs", 32, tree));
  // e2fsck -D turns large directories into hashed (htree) ones.
  execFileSync("e2fsck", ["-fyD", img], { env: { ...process.env, PATH }, stdio: "ignore" });
  const dump = execFileSync("debugfs", ["-R", "htree /many", img], {
    env: { ...process.env, PATH },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  assert.match(dump, /Root node dump/, "the directory should be hashed");
  const vol = new Ext4Volume(reader(img));
  assert.equal(Buffer.from(vol.readFile("/many/file-with-a-long-name-599")!).toString(), "n599");
  assert.equal(Buffer.from(vol.readFile("/many/file-with-a-long-name-0")!).toString(), "n0");
  assert.deepEqual(vol.readFile("/boot/vmlinux"), new Uint8Array(big));
  assert.ok(vol.exists("/bootlink/vmlinux-6.12"));
  assert.ok(!vol.exists("/boot/missing"));
  assert.ok(!vol.exists("/many"), "a directory is not a file");
});

test(
  "the pre-flight: extlinux on the bootable partition, its kernel checked; EFI binaries by PE machine; what U-Boot scans",
  { skip },
  () => {
    const tree = join(work, "x");
    mkdirSync(join(tree, "boot/extlinux"), { recursive: true });
    writeFileSync(join(tree, "boot/vmlinuz"), "kernel");
    writeFileSync(
      join(tree, "boot/extlinux/extlinux.conf"),
      "default b\nlabel a\n linux /boot/nothing\nlabel b\n kernel ../vmlinuz\n",
    );
    const disk = join(work, "x.img");
    gptDisk(disk, 12, "8300", ext4Image(work, "x", 8, tree), true);
    assert.deepEqual(checkBootDisk(reader(disk)).entry, {
      method: "extlinux",
      partition: 1,
      path: "/boot/extlinux/extlinux.conf",
      fs: "ext4",
      kernel: "/boot/extlinux/../vmlinuz",
    });
    writeFileSync(join(tree, "boot/extlinux/extlinux.conf"), "label a\n linux /boot/vmlinux-gone\n");
    gptDisk(disk, 12, "8300", ext4Image(work, "x", 8, tree), true);
    assert.throws(
      () => checkBootDisk(reader(disk)),
      /extlinux\.conf on partition 1 names the kernel \/boot\/vmlinux-gone, which is not on partition 1/,
    );

    const efi = join(work, "efi.img");
    gptDisk(efi, 12, "ef00", fatImage(work, "e", 8, { "EFI/BOOT/BOOTRISCV64.EFI": peStub(0x5064) }));
    assert.equal(checkBootDisk(reader(efi)).entry.method, "efi");
    gptDisk(efi, 12, "ef00", fatImage(work, "e", 8, { "EFI/BOOT/BOOTRISCV64.EFI": peStub(0xaa64) }));
    assert.throws(() => checkBootDisk(reader(efi)), /is an EFI application for ARM64 \(PE machine 0xaa64\)/);
    gptDisk(efi, 12, "ef00", fatImage(work, "e", 8, { "EFI/BOOT/BOOTRISCV64.EFI": "#!/bin/sh\n" }));
    assert.throws(
      () => checkBootDisk(reader(efi)),
      (e) => e instanceof BootDiskError && /not an EFI application \(no PE header\)/.test(e.message),
    );

    // Without a bootable partition U-Boot scans partition 1 only: extlinux on partition 1 of a
    // disk whose partition 1 is not flagged still boots.
    gptDisk(disk, 12, "8300", ext4Image(work, "x", 8, join(work, "tree")), false);
    assert.throws(() => checkBootDisk(reader(disk)), /U-Boot looks in partition 1 \(no partition is marked bootable\)/);
    const t = readPartitionTable(reader(disk))!;
    assert.ok(new Ext4Volume(partitionReader(reader(disk), t.partitions[0])).exists("/boot/vmlinux-6.12"));
  },
);

test("PE machine and extlinux parsing", () => {
  assert.equal(peMachine(peStub(0x5064)), 0x5064);
  assert.equal(peMachine(new Uint8Array(4096)), null);
  assert.equal(extlinuxKernel("LABEL x\n  KERNEL /vmlinuz\n", "/extlinux/extlinux.conf"), "/vmlinuz");
  assert.equal(extlinuxKernel("label x\n  linux Image # comment\n", "/extlinux/extlinux.conf"), "/extlinux/Image");
  assert.equal(extlinuxKernel("menu title nothing\n", "/extlinux/extlinux.conf"), undefined);
});

test("the boot loader watch: U-Boot's prompt and network fallback end the boot; a kernel starting or a typed key does not", () => {
  const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
  const banner = "\r\nU-Boot 2025.01-3+deb13u1 (Jun 24 2026)\r\n";
  let w = new BootLoaderWatch();
  assert.equal(
    w.feed(
      enc(banner + "Scanning virtio 0:1...\r\n** Invalid Image header **\r\nEXTLINUX FAILED: continuing...\r\n"),
      false,
    ),
    null,
  );
  assert.equal(
    w.feed(enc("=> "), false),
    'U-Boot found nothing it could boot and stopped at its prompt (its last complaint: "EXTLINUX FAILED: continuing...")',
  );
  w = new BootLoaderWatch();
  assert.equal(w.feed(enc(banner), false), null);
  assert.match(w.feed(enc("BOOTP broadcast 1\r\n"), false) ?? "", /fell back to network boot/);
  w = new BootLoaderWatch();
  assert.equal(w.feed(enc(banner + "=> "), true), null, "someone typed: the prompt is wanted");
  w = new BootLoaderWatch();
  assert.equal(w.feed(enc(banner + "Starting kernel ...\r\n\r\n"), false), null);
  assert.ok(w.finished);
  assert.equal(w.feed(enc("=> "), false), null, "after the kernel started nothing is watched");
  w = new BootLoaderWatch();
  assert.match(
    w.feed(enc(banner + "error: file `/vmlinux' not found.\r\ngrub> "), false) ?? "",
    /GRUB found nothing to boot .*file `\/vmlinux' not found/,
  );
});

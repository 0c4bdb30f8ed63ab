// The GPT writer of the full image's disk (src/images/gpt.ts), checked against the specification's
// layout and, where the host has it, against sfdisk's reading of the same file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import {
  guidBytes,
  guidFromSeed,
  LEGACY_BIOS_BOOTABLE,
  LINUX_FILESYSTEM_TYPE,
  usableLbas,
  writeGpt,
} from "../../src/images/gpt.js";
import { findInPath } from "../../src/images/util.js";

const DISK = 64 * 2 ** 20;

function build(): { dir: string; path: string; data: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), "yun-gpt-"));
  const path = join(dir, "disk.img");
  closeSync(openSync(path, "w"));
  writeGpt(path, {
    diskBytes: DISK,
    diskGuid: guidFromSeed("disk"),
    partitions: [
      {
        typeGuid: LINUX_FILESYSTEM_TYPE,
        uniqueGuid: guidFromSeed("root"),
        firstLba: 2048,
        lastLba: usableLbas(DISK).last,
        attributes: LEGACY_BIOS_BOOTABLE,
        name: "root",
      },
    ],
  });
  return { dir, path, data: readFileSync(path) };
}

test("GPT: protective MBR, both headers with valid CRCs, the partition entry", () => {
  const { dir, data } = build();
  try {
    assert.equal(data.length, DISK);
    assert.equal(data.readUInt16LE(510), 0xaa55);
    assert.equal(data[446 + 4], 0xee);
    const sectors = DISK / 512;
    for (const [lba, entriesLba] of [
      [1, 2],
      [sectors - 1, sectors - 33],
    ] as const) {
      const h = Buffer.from(data.subarray(lba * 512, lba * 512 + 92));
      assert.equal(h.toString("latin1", 0, 8), "EFI PART");
      assert.equal(Number(h.readBigUInt64LE(24)), lba, "MyLBA");
      assert.equal(Number(h.readBigUInt64LE(72)), entriesLba, "PartitionEntryLBA");
      const crc = h.readUInt32LE(16);
      h.writeUInt32LE(0, 16);
      assert.equal(crc32(h), crc, `header CRC at LBA ${lba}`);
      const entries = data.subarray(entriesLba * 512, entriesLba * 512 + 128 * 128);
      assert.equal(crc32(entries), h.readUInt32LE(88), `entry array CRC at LBA ${entriesLba}`);
    }
    const e = data.subarray(2 * 512, 2 * 512 + 128);
    assert.deepEqual(e.subarray(0, 16), guidBytes(LINUX_FILESYSTEM_TYPE));
    assert.equal(Number(e.readBigUInt64LE(32)), 2048);
    assert.equal(e.readBigUInt64LE(48), 4n, "legacy BIOS bootable attribute");
    assert.equal(e.toString("utf16le", 56, 64), "root");
    // Mixed-endian GUIDs: 0FC63DAF-8483-4772-... is stored AF 3D C6 0F 83 84 72 47.
    assert.equal(guidBytes(LINUX_FILESYSTEM_TYPE).toString("hex"), "af3dc60f838472478e793d69d8477de4");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("GPT: sfdisk reads the partition as written", (t) => {
  if (findInPath("sfdisk") === undefined) return t.skip("no sfdisk on this host");
  const { dir, path } = build();
  try {
    const r = spawnSync("sfdisk", ["--json", path], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const table = (JSON.parse(r.stdout) as { partitiontable: { label: string; partitions: Record<string, unknown>[] } })
      .partitiontable;
    assert.equal(table.label, "gpt");
    assert.equal(table.partitions.length, 1);
    const p = table.partitions[0]!;
    assert.equal(p.start, 2048);
    assert.equal(String(p.type).toLowerCase(), LINUX_FILESYSTEM_TYPE);
    assert.equal(String(p.uuid).toLowerCase(), guidFromSeed("root"));
    assert.equal(p.attrs, "LegacyBIOSBootable");
    assert.equal(p.name, "root");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("GPT: a partition outside the usable LBAs is refused with one clear error", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-gpt-"));
  const path = join(dir, "disk.img");
  closeSync(openSync(path, "w"));
  try {
    assert.throws(
      () =>
        writeGpt(path, {
          diskBytes: DISK,
          diskGuid: guidFromSeed("d"),
          partitions: [
            {
              typeGuid: LINUX_FILESYSTEM_TYPE,
              uniqueGuid: guidFromSeed("p"),
              firstLba: 2048,
              lastLba: DISK / 512,
              attributes: 0n,
              name: "x",
            },
          ],
        }),
      /partition 1 \(LBA 2048-\d+\) is outside 34-\d+/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

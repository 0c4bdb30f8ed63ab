// The full image's builder pieces that run without building: the --versions file, the apt pins it
// becomes, the guest files' digest, and the clear errors of a pull that cannot happen.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { aptPins, guestDir, guestFilesDigest, readVersionsFile } from "../../src/images/full.js";
import { pullImage } from "../../src/images/pull.js";
import { ImageError } from "../../src/images/util.js";

function withDir(f: (dir: string) => void | Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "yun-full-"));
    try {
      await f(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  "--versions: a manifest.json gives every package's version and the build's SOURCE_DATE_EPOCH",
  withDir((dir) => {
    const file = join(dir, "manifest.json");
    writeFileSync(
      file,
      JSON.stringify({
        packages: [
          { name: "systemd", version: "257.9-1~deb13u1" },
          { name: "hello", version: "2.10-5" },
        ],
        build: { sourceDateEpoch: 1765000000 },
      }),
    );
    const v = readVersionsFile(file);
    assert.equal(v.sourceDateEpoch, 1765000000);
    assert.deepEqual(
      [...v.packages],
      [
        ["systemd", "257.9-1~deb13u1"],
        ["hello", "2.10-5"],
      ],
    );
    assert.equal(
      aptPins(v.packages),
      "Package: systemd\nPin: version 257.9-1~deb13u1\nPin-Priority: 1001\n\nPackage: hello\nPin: version 2.10-5\nPin-Priority: 1001\n",
    );
  }),
);

test(
  "--versions: name=version lines (comments, blanks, an :arch suffix), and one clear error for a bad line",
  withDir((dir) => {
    const file = join(dir, "versions.txt");
    writeFileSync(file, "# pinned\nlibc6:riscv64=2.41-12\n\nsudo 1.9.16p2-3\n");
    assert.deepEqual(
      [...readVersionsFile(file).packages],
      [
        ["libc6", "2.41-12"],
        ["sudo", "1.9.16p2-3"],
      ],
    );
    writeFileSync(file, "libc6=2.41-12\nthis is not a pin\n");
    assert.throws(() => readVersionsFile(file), /versions\.txt:2: expected "package=version", got "this is not a pin"/);
    assert.throws(() => readVersionsFile(join(dir, "absent")), /cannot read the versions file/);
    writeFileSync(file, '{"name": "debian"}');
    assert.throws(() => readVersionsFile(file), /has no "packages" list/);
  }),
);

test(
  "the guest files' digest changes with their contents (a changed guest/debian rebuilds the image)",
  withDir((dir) => {
    mkdirSync(join(dir, "rootfs/etc"), { recursive: true });
    writeFileSync(join(dir, "rootfs/etc/hostname"), "debian\n");
    const a = guestFilesDigest(dir);
    assert.equal(guestFilesDigest(dir), a);
    writeFileSync(join(dir, "rootfs/etc/hostname"), "other\n");
    assert.notEqual(guestFilesDigest(dir), a);
    assert.match(guestFilesDigest(guestDir()), /^[0-9a-f]{64}$/, "the repository's guest/debian is found");
  }),
);

test("--versions is refused for the busybox image with one sentence", async () => {
  await assert.rejects(pullImage("debian-tiny", { versions: "/nonexistent" }), (e: unknown) => {
    assert.ok(e instanceof ImageError);
    assert.match(e.message, /--versions is for the full image \(debian\), not debian-tiny/);
    return true;
  });
});

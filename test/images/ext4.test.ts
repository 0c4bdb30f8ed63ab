import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  linkSync,
  lchownSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildExt4,
  checkExt4,
  chownScript,
  debugfs,
  entriesNotOwnedByRoot,
  findE2fsTool,
} from "../../src/images/ext4.js";

const missing = (["mke2fs", "debugfs", "e2fsck"] as const).filter((t) => findE2fsTool(t) === undefined);
const skip = missing.length > 0 ? `needs e2fsprogs (${missing.join(", ")})` : false;
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "yun-ext4-"));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** "User:  0   Group:  0" etc. from debugfs stat. */
function owner(stat: string): [number, number] {
  const m = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(stat);
  assert.ok(m, stat);
  return [Number(m[1]), Number(m[2])];
}

test("debugfs chown commands quote paths and refuse names they cannot quote", () => {
  assert.equal(
    chownScript(["", "usr/bin/a b"]),
    'sif "/" uid 0\nsif "/" gid 0\nsif "/usr/bin/a b" uid 0\nsif "/usr/bin/a b" gid 0\n',
  );
  assert.equal(chownScript([]), "");
  assert.throws(() => chownScript(['bad"name']), /^ImageError: cannot give "bad\\"name" to root in the root disk/);
});

test("an ext4 image from a directory: contents, symlinks, hard links, modes, all owned by root, clean", { skip }, () =>
  withDir(async (dir) => {
    const src = join(dir, "src");
    mkdirSync(join(src, "usr/bin"), { recursive: true });
    mkdirSync(join(src, "tmp"));
    chmodSync(join(src, "tmp"), 0o1777);
    writeFileSync(join(src, "usr/bin/tool"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
    writeFileSync(join(src, "usr/bin/with space"), "x");
    linkSync(join(src, "usr/bin/tool"), join(src, "usr/bin/tool2"));
    symlinkSync("usr/bin", join(src, "bin"));
    writeFileSync(join(src, "secret"), "s", { mode: 0o600 });
    chmodSync(src, 0o755);
    // Files a normal user unpacks are theirs; as root, make some not root's to exercise the same path.
    if (isRoot) {
      for (const p of ["", "usr/bin/tool", "usr/bin/with space", "bin", "tmp"]) lchownSync(join(src, p), 1234, 2345);
    }
    const notRoot = entriesNotOwnedByRoot(src);
    assert.ok(notRoot.length > 0);

    const img = join(dir, "root.ext4");
    const r = await buildExt4({ source: src, dest: img, sizeBytes: 32 << 20, label: "yun-test" });
    assert.equal(r.ownersFixed, notRoot.length);
    const st = statSync(img);
    assert.equal(st.size, 32 << 20);
    assert.ok(st.blocks * 512 < 8 << 20, `sparse: ${st.blocks * 512} bytes allocated`);
    await checkExt4(img);

    for (const p of ["/", "/usr/bin/tool", "/usr/bin/with space", "/bin", "/tmp", "/secret", "/usr", "/lost+found"]) {
      assert.deepEqual(owner(await debugfs(img, `stat "${p}"`)), [0, 0], `${p} owned by root`);
    }
    assert.equal(await debugfs(img, "cat /usr/bin/tool"), "#!/bin/sh\necho hi\n");
    assert.match(await debugfs(img, "stat /bin"), /Type: symlink[\s\S]*Fast link dest: "usr\/bin"/);
    assert.match(await debugfs(img, "stat /usr/bin/tool"), /Mode:\s+0755[\s\S]*Links: 2/);
    assert.match(await debugfs(img, "stat /tmp"), /Mode:\s+01777/);
    assert.match(await debugfs(img, "stat /secret"), /Mode:\s+0600/);
    const ls = await debugfs(img, "ls -l /usr/bin");
    for (const n of ["tool", "tool2", "with space"])
      assert.ok(ls.includes(` ${n}\n`) || ls.trimEnd().endsWith(` ${n}`), n);
    const dump = await debugfs(img, "stats");
    assert.match(dump, /Filesystem volume name:\s+yun-test/);
    assert.match(dump, /Filesystem features:.*has_journal.*extent/);
  }),
);

test("a file that is not ext4, a bad size and a missing source are reported clearly", { skip }, () =>
  withDir(async (dir) => {
    const junk = join(dir, "junk.img");
    writeFileSync(junk, Buffer.alloc(1 << 20, 0x5a));
    await assert.rejects(checkExt4(junk), (e: Error) => {
      assert.equal(e.name, "ImageError");
      assert.match(e.message, /^.*junk\.img is not a clean ext4 file system \(e2fsck: .+\)$/);
      return true;
    });
    await assert.rejects(
      buildExt4({ source: dir, dest: join(dir, "x.ext4"), sizeBytes: 1000, label: "x" }),
      /root disk size 1000 must be a multiple of 4 KiB and at least 16 MiB/,
    );
    await assert.rejects(
      buildExt4({ source: join(dir, "nonexistent"), dest: join(dir, "y.ext4"), sizeBytes: 16 << 20, label: "x" }),
      /^ImageError: mke2fs could not build .*y\.ext4: /,
    );
  }),
);

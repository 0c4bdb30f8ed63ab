import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CpioWriter, normalizeCpioPath, readCpio, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from "../../src/images/cpio.js";

const haveCpio = spawnSync("cpio", ["--version"]).status === 0;
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

function sample(withDevices: boolean): Buffer {
  const w = new CpioWriter({ mtime: 1700000000 });
  w.dir("/");
  w.dir("bin");
  w.file("bin/busybox", Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]), { mode: 0o755 });
  w.symlink("bin/sh", "busybox");
  w.symlink("sbin", "bin");
  w.file("init", "#!/bin/sh\necho hello\n", { mode: 0o755 });
  // Parents are created automatically; sizes not a multiple of 4 exercise the padding.
  w.file("lib/modules/6.1/kernel/a.ko", Buffer.alloc(4097, 0xab));
  w.file("etc/empty", "");
  w.dir("tmp", { mode: 0o1777 });
  if (withDevices) {
    w.charDevice("dev/console", 5, 1);
    w.charDevice("dev/null", 1, 3, { mode: 0o666 });
  }
  return w.finish();
}

test("paths are stored relative, root as '.'", () => {
  assert.equal(normalizeCpioPath("/"), ".");
  assert.equal(normalizeCpioPath(""), ".");
  assert.equal(normalizeCpioPath("/bin//sh"), "bin/sh");
  assert.equal(normalizeCpioPath("./etc/./x"), "etc/x");
  assert.throws(() => normalizeCpioPath("a/../b"), /\.\./);
});

test("archive layout: 4-byte alignment, trailer, round trip", () => {
  const a = sample(true);
  assert.equal(a.length % 4, 0);
  assert.equal(a.toString("ascii", 0, 6), "070701");
  assert.ok(a.includes(Buffer.from("TRAILER!!!\0")));
  const entries = readCpio(a);
  const byName = new Map(entries.map((e) => [e.name, e]));
  assert.deepEqual(
    entries.map((e) => e.name),
    [".", "bin", "bin/busybox", "bin/sh", "sbin", "init", "lib", "lib/modules", "lib/modules/6.1", "lib/modules/6.1/kernel",
      "lib/modules/6.1/kernel/a.ko", "etc", "etc/empty", "tmp", "dev", "dev/console", "dev/null"],
  );
  assert.equal(byName.get("bin")!.mode & S_IFMT, S_IFDIR);
  assert.equal(byName.get("bin/busybox")!.mode, S_IFREG | 0o755);
  assert.equal(byName.get("bin/sh")!.mode & S_IFMT, S_IFLNK);
  assert.equal(byName.get("bin/sh")!.data.toString(), "busybox");
  assert.equal(byName.get("lib/modules/6.1/kernel/a.ko")!.data.length, 4097);
  assert.equal(byName.get("tmp")!.mode, S_IFDIR | 0o1777);
  const con = byName.get("dev/console")!;
  assert.equal(con.mode, S_IFCHR | 0o600);
  assert.deepEqual([con.rdevMajor, con.rdevMinor], [5, 1]);
  const nul = byName.get("dev/null")!;
  assert.deepEqual([nul.rdevMajor, nul.rdevMinor, nul.mode], [1, 3, S_IFCHR | 0o666]);
  assert.equal(byName.get("init")!.mtime, 1700000000);
  // Inode numbers are unique.
  assert.equal(new Set(entries.map((e) => e.ino)).size, entries.length);
});

test("the output is deterministic", () => {
  assert.deepEqual(sample(true), sample(true));
});

test("misuse is rejected", () => {
  const w = new CpioWriter();
  w.file("a", "x");
  assert.throws(() => w.file("a", "y"), /duplicate/);
  assert.throws(() => w.file("a/b", "y"), /not a directory/);
  assert.throws(() => w.symlink("/", "x"), /root/);
  w.finish();
  assert.throws(() => w.file("c", "z"), /finished/);
});

test("GNU cpio lists the archive, with symlinks and device nodes", { skip: haveCpio ? false : "cpio is not installed" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-cpio-"));
  try {
    const file = join(dir, "a.cpio");
    writeFileSync(file, sample(true));
    const list = spawnSync("cpio", ["-it", "--quiet"], { input: readFileSync(file), encoding: "utf8" });
    assert.equal(list.status, 0, list.stderr);
    const names = list.stdout.trim().split("\n");
    for (const n of ["init", "bin/busybox", "bin/sh", "sbin", "dev/console", "dev/null", "lib/modules/6.1/kernel/a.ko"]) {
      assert.ok(names.includes(n), `${n} listed`);
    }
    const verbose = spawnSync("cpio", ["-itv", "--quiet"], { input: readFileSync(file), encoding: "utf8" });
    assert.equal(verbose.status, 0, verbose.stderr);
    const line = (n: string): string => verbose.stdout.split("\n").find((l) => l.endsWith(` ${n}`) || l.includes(` ${n} -> `)) ?? "";
    assert.match(line("dev/console"), /^crw------- .*\b5,\s*1\b/);
    assert.match(line("dev/null"), /^crw-rw-rw- .*\b1,\s*3\b/);
    assert.match(line("bin/sh"), /^lrwxrwxrwx .* bin\/sh -> busybox$/);
    assert.match(line("tmp"), /^drwxrwxrwt /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("GNU cpio extracts the archive", { skip: haveCpio ? false : "cpio is not installed" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-cpio-"));
  try {
    // Creating device nodes needs root; without it, extract a device-free archive.
    const archive = sample(isRoot);
    const out = join(dir, "root");
    spawnSync("mkdir", [out]);
    const r = spawnSync("cpio", ["-idv", "--no-absolute-filenames", "--quiet"], { cwd: out, input: archive, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(out, "init"), "utf8"), "#!/bin/sh\necho hello\n");
    assert.equal(statSync(join(out, "init")).mode & 0o777, 0o755);
    assert.equal(readlinkSync(join(out, "bin/sh")), "busybox");
    assert.equal(readlinkSync(join(out, "sbin")), "bin");
    assert.deepEqual(readFileSync(join(out, "lib/modules/6.1/kernel/a.ko")), Buffer.alloc(4097, 0xab));
    assert.equal(statSync(join(out, "etc/empty")).size, 0);
    if (isRoot) {
      const con = lstatSync(join(out, "dev/console"));
      assert.ok(con.isCharacterDevice());
      assert.equal(con.rdev, (5 << 8) | 1);
      const nul = lstatSync(join(out, "dev/null"));
      assert.ok(nul.isCharacterDevice());
      assert.equal(nul.rdev, (1 << 8) | 3);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

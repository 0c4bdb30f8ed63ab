import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatImageTable, imageCommand } from "../../src/cli/image.js";
import { findInPath } from "../../src/images/util.js";
import { pullTinyImage } from "../../src/images/tiny.js";
import { findImage, listImages } from "../../src/images/store.js";
import { imageDir, yunHome } from "../../src/images/paths.js";

/** Runs fn with stdout/stderr captured. */
async function capture(fn: () => Promise<number>): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const o = process.stdout.write.bind(process.stdout);
  const e = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((chunk: string | Uint8Array) => ((out += String(chunk)), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => ((err += String(chunk)), true)) as typeof process.stderr.write;
  try {
    return { code: await fn(), out, err };
  } finally {
    process.stdout.write = o;
    process.stderr.write = e;
  }
}

function withHome<T>(fn: (home: string) => Promise<T>): Promise<T> {
  const home = mkdtempSync(join(tmpdir(), "yun-home-"));
  const saved = { home: process.env.YUN_HOME, mirror: process.env.YUN_APT_MIRROR };
  process.env.YUN_HOME = home;
  return fn(home).finally(() => {
    if (saved.home === undefined) delete process.env.YUN_HOME;
    else process.env.YUN_HOME = saved.home;
    if (saved.mirror === undefined) delete process.env.YUN_APT_MIRROR;
    else process.env.YUN_APT_MIRROR = saved.mirror;
    rmSync(home, { recursive: true, force: true });
  });
}

test("paths follow YUN_HOME", () =>
  withHome(async (home) => {
    assert.equal(yunHome(), home);
    assert.equal(imageDir("debian-tiny"), join(home, "images", "debian-tiny"));
  }));

test("help, unknown commands, flags and images", async () => {
  const help = await capture(() => imageCommand(["--help"]));
  assert.equal(help.code, 0);
  assert.match(help.out, /Usage: yun image/);
  assert.match(help.out, /pull \[NAME\] \[--force\]/);

  const unknown = await capture(() => imageCommand(["frob"]));
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /unknown command "frob"/);

  const flag = await capture(() => imageCommand(["pull", "--bogus"]));
  assert.equal(flag.code, 2);
  assert.match(flag.err, /Unknown option '--bogus' \(see yun image --help\)/);

  const image = await capture(() => imageCommand(["pull", "fedora"]));
  assert.equal(image.code, 1);
  assert.match(image.err, /unknown image "fedora"; available: debian/);

  const extra = await capture(() => imageCommand(["list", "x"]));
  assert.equal(extra.code, 2);

  const none = await capture(() => imageCommand([]));
  assert.equal(none.code, 2);
});

test("list with no images prints the header and a hint", () =>
  withHome(async () => {
    const r = await capture(() => imageCommand(["list"]));
    assert.equal(r.code, 0);
    assert.match(r.out, /^NAME\s+KERNEL\s+CREATED\s+SIZE\n$/);
    assert.match(r.err, /yun image pull debian/);
    assert.deepEqual(listImages(), []);
    assert.equal(findImage("debian-tiny"), undefined);
  }));

test("image table", () => {
  const t = formatImageTable([
    {
      name: "debian",
      dir: "/x",
      kernel: "/x/vmlinux",
      initrd: "/x/initrd.cpio",
      firmware: { jump: "/x/fw_jump.bin", dynamic: "/x/fw_dynamic.bin" },
      rootDisk: "/x/root.ext4",
      kernelVersion: "6.12.117+deb13-riscv64",
      packages: [],
      created: "2025-01-02T03:04:05.000Z",
      sizeBytes: 43_200_000,
    },
  ]);
  const [head, row] = t.trimEnd().split("\n");
  assert.match(head!, /^NAME\s+KERNEL\s+CREATED\s+SIZE$/);
  assert.match(row!, /^debian\s+6\.12\.117\+deb13-riscv64\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+43\.2 MB$/);
  assert.equal(head!.indexOf("KERNEL"), row!.indexOf("6.12"));
});

test("an unreachable archive gives apt's reason", { skip: findInPath("apt-get") ? false : "apt-get is not installed" }, () =>
  withHome(async () => {
    // A file: URI that does not exist fails locally, without any network traffic.
    process.env.YUN_APT_MIRROR = "file:///nonexistent/yun-test-mirror/debian";
    await assert.rejects(pullTinyImage({ log: () => {}, progress: false }), (e: Error) => {
      assert.equal(e.name, "ImageError");
      assert.match(e.message, /^apt-get update failed for file:\/\/\/nonexistent\/yun-test-mirror\/debian trixie \(riscv64\): .*(not found|No such file)/i);
      assert.match(e.message, /YUN_APT_MIRROR/);
      return true;
    });
    const r = await capture(() => imageCommand(["pull"]));
    assert.equal(r.code, 1);
    assert.match(r.err, /^yun image: apt-get update failed/);
    assert.equal(findImage("debian-tiny"), undefined);
  }));

test("a host without apt-get gets one clear sentence", () =>
  withHome(async () => {
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      await assert.rejects(pullTinyImage({ log: () => {}, progress: false }), /^ImageError: yun image pull needs apt-get \(Debian\/Ubuntu host\)/);
    } finally {
      process.env.PATH = path;
    }
  }));

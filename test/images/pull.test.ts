// Integration test: builds the real Debian image from the Debian archive (needs network access to
// the mirror found in the host's apt sources, or YUN_APT_MIRROR).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { discoverDebianMirror, PrivateApt } from "../../src/images/apt.js";
import { aptStateDir } from "../../src/images/paths.js";
import { readCpio } from "../../src/images/cpio.js";
import { pullDebianImage } from "../../src/images/debian.js";
import { findImage, listImages, readManifest } from "../../src/images/store.js";
import { findInPath, sha256 } from "../../src/images/util.js";
import { imageCommand } from "../../src/cli/image.js";

function skipReason(): string | false {
  if (process.env.YUN_SKIP_NETWORK_TESTS === "1") return "YUN_SKIP_NETWORK_TESTS=1";
  if (findInPath("apt-get") === undefined || findInPath("dpkg-deb") === undefined) return "needs apt-get and dpkg-deb";
  if (findInPath("xz") === undefined) return "needs xz";
  try {
    if (discoverDebianMirror() === undefined) return "no Debian archive in the host's apt sources and YUN_APT_MIRROR unset";
  } catch (e) {
    return (e as Error).message;
  }
  return false;
}

test("yun image pull debian builds a bootable image, and a second pull is a no-op", { skip: skipReason(), timeout: 600_000 }, async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-pull-"));
  const saved = process.env.YUN_HOME;
  process.env.YUN_HOME = home;
  try {
    const lines: string[] = [];
    const t0 = Date.now();
    const info = await pullDebianImage({ log: (l) => lines.push(l), progress: false });
    const fresh = Date.now() - t0;
    process.stderr.write(`fresh pull ${fresh} ms:\n${lines.map((l) => `  ${l}`).join("\n")}\n`);

    // One line per phase.
    for (const phase of ["update", "download", "unpack", "modules", "initramfs", "done"]) {
      assert.equal(lines.filter((l) => l.startsWith(phase + " ")).length, 1, `one ${phase} line`);
    }

    assert.equal(info.name, "debian");
    assert.equal(info.dir, join(home, "images", "debian"));
    assert.match(info.kernelVersion, /^\d+\.\d+.*riscv64$/);
    const manifest = readManifest(info.dir)!;
    assert.ok(manifest !== undefined);
    assert.equal(manifest.name, "debian");
    assert.equal(manifest.kernelVersion, info.kernelVersion);
    const pkgNames = manifest.packages.map((p) => p.name);
    for (const n of ["linux-image-riscv64", `linux-image-${info.kernelVersion}`, "opensbi", "busybox-static"]) {
      assert.ok(pkgNames.includes(n), `${n} in manifest`);
    }
    for (const p of manifest.packages) assert.match(p.version, /^[0-9][\w.+:~-]*$/);
    for (const f of ["vmlinux", "fw_jump.bin", "fw_dynamic.bin", "initrd.cpio"]) {
      const data = readFileSync(join(info.dir, f));
      assert.equal(manifest.files[f]?.sha256, sha256(data), `${f} checksum`);
      assert.equal(manifest.files[f]?.size, data.length);
    }
    // vmlinux is the flat Image: RISC-V "RSC\x05" magic at 0x38, "MZ" EFI stub at 0.
    const kernel = readFileSync(info.kernel);
    assert.equal(kernel.toString("latin1", 0, 2), "MZ");
    assert.equal(kernel.toString("latin1", 0x38, 0x3c), "RSC\x05");
    assert.ok(existsSync(info.firmware.jump) && existsSync(info.firmware.dynamic));
    assert.deepEqual(manifest.modules.slice(0, 2), ["virtio_mmio", "virtio_blk"]);
    assert.ok(manifest.modules.indexOf("jbd2") < manifest.modules.indexOf("ext4"));

    // The initramfs, read by GNU cpio when available and by our reader in any case.
    const names = readCpio(readFileSync(info.initrd)).map((e) => e.name);
    const ko = `lib/modules/${info.kernelVersion}/kernel/drivers/block/virtio_blk.ko`;
    for (const n of ["init", "bin/busybox", "bin/sh", "bin/cttyhack", "dev/console", "dev/null", "etc/modules-load.order", ko]) {
      assert.ok(names.includes(n), `${n} in initrd`);
    }
    if (findInPath("cpio") !== undefined) {
      const r = spawnSync("cpio", ["-it", "--quiet"], { input: readFileSync(info.initrd), encoding: "utf8", maxBuffer: 1 << 26 });
      assert.equal(r.status, 0, r.stderr);
      const listed = r.stdout.split("\n");
      for (const n of ["init", "bin/busybox", ko]) assert.ok(listed.includes(n), `cpio lists ${n}`);
    }

    assert.deepEqual(findImage("debian"), info);
    assert.deepEqual(listImages().map((i) => i.name), ["debian"]);

    // Second pull: nothing is rebuilt.
    const again: string[] = [];
    const t1 = Date.now();
    const info2 = await pullDebianImage({ log: (l) => again.push(l), progress: false });
    process.stderr.write(`second pull ${Date.now() - t1} ms: ${again.join(" | ")}\n`);
    assert.deepEqual(again, ["image debian is up to date"]);
    assert.equal(info2.created, info.created);
    assert.equal(readManifest(info.dir)!.created, manifest.created);

    // --force rebuilds from the cached .deb files.
    const forced: string[] = [];
    const info3 = await pullDebianImage({ force: true, log: (l) => forced.push(l), progress: false });
    assert.match(forced.find((l) => l.startsWith("download "))!, /cached/);
    assert.notEqual(info3.created, info.created);
    assert.equal(readManifest(info.dir)!.files["initrd.cpio"]!.sha256, manifest.files["initrd.cpio"]!.sha256, "initrd is reproducible");

    // An unknown package is reported as such (the private apt state from the pull is reused).
    const apt = new PrivateApt({ stateDir: aptStateDir(), mirror: discoverDebianMirror()!.uri });
    await assert.rejects(apt.show("yun-no-such-package"), /unknown package yun-no-such-package: it is not in Debian trixie for riscv64/);

    // yun image list shows it.
    let out = "";
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((c: string | Uint8Array) => ((out += String(c)), true)) as typeof process.stdout.write;
    try {
      assert.equal(await imageCommand(["list"]), 0);
    } finally {
      process.stdout.write = write;
    }
    assert.match(out, new RegExp(`^debian\\s+${info.kernelVersion.replace(/[.+]/g, "\\$&")}\\s`, "m"));
  } finally {
    if (saved === undefined) delete process.env.YUN_HOME;
    else process.env.YUN_HOME = saved;
    rmSync(home, { recursive: true, force: true });
  }
});

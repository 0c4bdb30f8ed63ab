// Integration test: builds the real Debian image from the Debian archive (needs network access to
// the mirror found in the host's apt sources, or YUN_APT_MIRROR).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { discoverDebianMirror, PrivateApt } from "../../src/images/apt.js";
import { aptStateDir } from "../../src/images/paths.js";
import { readCpio } from "../../src/images/cpio.js";
import { pullTinyImage } from "../../src/images/tiny.js";
import { findImage, listImages, readManifest, type ImageManifest } from "../../src/images/store.js";
import { findInPath, sha256, sha256File } from "../../src/images/util.js";
import { debugfs, findE2fsTool } from "../../src/images/ext4.js";
import { imageCommand } from "../../src/cli/image.js";

function skipReason(): string | false {
  if (process.env.YUN_SKIP_NETWORK_TESTS === "1") return "YUN_SKIP_NETWORK_TESTS=1";
  if (findInPath("apt-get") === undefined || findInPath("dpkg-deb") === undefined) return "needs apt-get and dpkg-deb";
  if (findInPath("xz") === undefined) return "needs xz";
  for (const t of ["mke2fs", "debugfs", "e2fsck"] as const) {
    if (findE2fsTool(t) === undefined) return `needs ${t} (e2fsprogs)`;
  }
  try {
    if (discoverDebianMirror() === undefined) return "no Debian archive in the host's apt sources and YUN_APT_MIRROR unset";
  } catch (e) {
    return (e as Error).message;
  }
  return false;
}

/** The root disk: a clean ext4 file system with the userland, every file owned by root. */
async function checkRootDisk(disk: string, manifest: ImageManifest, scratch: string): Promise<void> {
  assert.ok(existsSync(disk), "root.ext4 exists");
  const st = statSync(disk);
  assert.equal(st.size, manifest.rootfs.sizeBytes);
  assert.equal(st.size, 1 << 30);
  assert.ok(st.blocks * 512 < 64e6, `root.ext4 is sparse (${st.blocks * 512} bytes allocated)`);
  assert.equal(manifest.rootDisk, "root.ext4");
  assert.equal(manifest.files["root.ext4"]?.sha256, await sha256File(disk));

  const fsck = spawnSync(findE2fsTool("e2fsck")!, ["-fn", disk], { encoding: "utf8" });
  assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  assert.match(fsck.stdout, /yun-root: \d+\/\d+ files/);

  const rootfs = manifest.rootfs;
  for (const n of ["busybox", "libc6", "gzip", "xz-utils", "liblzma5", "base-files"]) {
    assert.ok(rootfs.packages.includes(n), `${n} on the root disk`);
  }
  for (const n of ["systemd", "perl", "perl-base", "dpkg", "busybox-static"]) {
    assert.ok(!rootfs.packages.includes(n), `no ${n}`);
  }
  assert.ok(rootfs.fileBytes > 5e6 && rootfs.fileBytes < 60e6, `${rootfs.fileBytes} bytes of files`);
  assert.ok(rootfs.busyboxApplets > 200);
  const omitted = JSON.stringify(rootfs.omitted);
  process.stderr.write(
    `root disk: ${rootfs.packages.join(" ")}; ${rootfs.files} files, ${rootfs.fileBytes} bytes; omitted ${omitted}\n`,
  );

  const gzip = await debugfs(disk, "stat /usr/bin/gzip");
  assert.match(gzip, /Type: regular\s+Mode:\s+0755/);
  assert.match(gzip, /User:\s+0\s+Group:\s+0/);
  for (const [path, target] of [
    ["/bin", "usr/bin"],
    ["/sbin", "usr/sbin"],
    ["/lib", "usr/lib"],
    ["/usr/bin/sh", "busybox"],
    ["/usr/sbin/init", "../bin/busybox"],
    ["/usr/lib/ld-linux-riscv64-lp64d.so.1", "riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1"],
  ]) {
    const dest = new RegExp(`Fast link dest: "${target!.replace(/[.]/g, "\\.")}"`);
    assert.match(await debugfs(disk, `stat ${path}`), dest, path);
  }
  // Every entry of these directories is root's; the real gzip and xz are files, not busybox links.
  for (const dir of ["/", "/usr/bin", "/usr/sbin", "/etc", "/etc/init.d", "/usr/lib/riscv64-linux-gnu", "/root"]) {
    const rows = (await debugfs(disk, `ls -l ${dir}`)).split("\n").filter((l) => /^\s*\d+\s+\d+/.test(l));
    assert.ok(rows.length >= 2, dir);
    for (const row of rows) {
      const [, , , uid, gid] = row.trim().split(/\s+/);
      assert.equal(`${uid}:${gid}`, "0:0", `${dir}: ${row}`);
    }
  }
  const usrBin = await debugfs(disk, "ls -l /usr/bin");
  for (const real of ["gzip", "xz", "busybox", "zcat"]) {
    assert.match(usrBin, new RegExp(`^\\s*\\d+\\s+100755 .* ${real}$`, "m"), real);
  }
  assert.match(usrBin, /^\s*\d+\s+120777 .* ls$/m);
  const etc = ["/etc/inittab", "/etc/init.d/rcS", "/etc/fstab", "/etc/hostname", "/etc/passwd"];
  for (const f of [...etc, "/usr/share/udhcpc/default.script"]) {
    assert.match(await debugfs(disk, `stat ${f}`), /Type: regular/, f);
  }
  assert.equal(await debugfs(disk, "cat /etc/hostname"), "yun\n");
  assert.match(await debugfs(disk, "cat /etc/init.d/rcS"), /yun: init ready/);

  // The guest's own binaries run (user-mode QEMU, with the root disk's libraries).
  const qemu = findInPath("qemu-riscv64");
  if (qemu !== undefined) {
    const out = join(scratch, "rootfs-dump");
    mkdirSync(out);
    const dump = spawnSync(findE2fsTool("debugfs")!, ["-R", `rdump / ${out}`, disk], { encoding: "utf8" });
    assert.equal(dump.status, 0, dump.stderr);
    assert.ok(existsSync(join(out, "usr/bin/gzip")), `debugfs rdump: ${dump.stderr}`);
    const versions: [string, RegExp][] = [
      ["usr/bin/gzip", /^gzip \d/],
      ["usr/bin/xz", /^xz \(XZ Utils\) \d/],
    ];
    for (const [cmd, want] of versions) {
      const args = ["-L", out, join(out, cmd), "--version"];
      const ran: SpawnSyncReturns<string> = spawnSync(qemu, args, { encoding: "utf8" });
      assert.equal(ran.status, 0, `${cmd}: ${ran.stderr}`);
      assert.match(ran.stdout, want);
    }
    rmSync(out, { recursive: true, force: true });
  }
}

test("yun image pull debian-tiny builds a bootable image, and a second pull is a no-op", { skip: skipReason(), timeout: 600_000 }, async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-pull-"));
  const saved = process.env.YUN_HOME;
  process.env.YUN_HOME = home;
  try {
    const lines: string[] = [];
    const t0 = Date.now();
    const info = await pullTinyImage({ log: (l) => lines.push(l), progress: false });
    const fresh = Date.now() - t0;
    process.stderr.write(`fresh pull ${fresh} ms:\n${lines.map((l) => `  ${l}`).join("\n")}\n`);

    // One line per phase.
    for (const phase of ["update", "download", "unpack", "modules", "initramfs", "rootfs", "done"]) {
      assert.equal(lines.filter((l) => l.startsWith(phase + " ")).length, 1, `one ${phase} line`);
    }

    assert.equal(info.name, "debian-tiny");
    assert.equal(info.dir, join(home, "images", "debian-tiny"));
    assert.match(info.kernelVersion, /^\d+\.\d+.*riscv64$/);
    const manifest = readManifest(info.dir)!;
    assert.ok(manifest !== undefined);
    assert.equal(manifest.name, "debian-tiny");
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
    await checkRootDisk(info.rootDisk, manifest, home);

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

    assert.deepEqual(findImage("debian-tiny"), info);
    assert.deepEqual(listImages().map((i) => i.name), ["debian-tiny"]);

    // Second pull: nothing is rebuilt.
    const again: string[] = [];
    const t1 = Date.now();
    const info2 = await pullTinyImage({ log: (l) => again.push(l), progress: false });
    process.stderr.write(`second pull ${Date.now() - t1} ms: ${again.join(" | ")}\n`);
    assert.deepEqual(again, ["image debian-tiny is up to date"]);
    assert.equal(info2.created, info.created);
    assert.equal(readManifest(info.dir)!.created, manifest.created);

    // --force rebuilds from the cached .deb files.
    const forced: string[] = [];
    const info3 = await pullTinyImage({ force: true, log: (l) => forced.push(l), progress: false });
    assert.match(forced.find((l) => l.startsWith("download "))!, /cached/);
    assert.notEqual(info3.created, info.created);
    assert.equal(readManifest(info.dir)!.files["initrd.cpio"]!.sha256, manifest.files["initrd.cpio"]!.sha256, "initrd is reproducible");

    // An image from before the root disk (manifest format 1, no root.ext4) is rebuilt by a plain pull.
    const old = JSON.parse(readFileSync(join(info.dir, "manifest.json"), "utf8")) as Record<string, unknown>;
    old.format = 1;
    delete old.rootDisk;
    delete old.rootfs;
    delete (old.files as Record<string, unknown>)["root.ext4"];
    writeFileSync(join(info.dir, "manifest.json"), JSON.stringify(old));
    rmSync(info.rootDisk);
    assert.equal(findImage("debian-tiny"), undefined);
    const upgrade: string[] = [];
    const info4 = await pullTinyImage({ log: (l) => upgrade.push(l), progress: false });
    assert.ok(upgrade.some((l) => l.startsWith("rootfs ")), upgrade.join("\n"));
    assert.ok(existsSync(info4.rootDisk));
    assert.equal(readManifest(info.dir)!.format, 2);

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
    assert.match(out, new RegExp(`^debian-tiny\\s+${info.kernelVersion.replace(/[.+]/g, "\\$&")}\\s`, "m"));
  } finally {
    if (saved === undefined) delete process.env.YUN_HOME;
    else process.env.YUN_HOME = saved;
    rmSync(home, { recursive: true, force: true });
  }
});

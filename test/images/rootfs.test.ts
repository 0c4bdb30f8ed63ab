import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { INIT_READY_MARKER } from "../../src/images/initramfs.js";
import {
  assembleRootfs,
  isDroppedPath,
  mergedUsrPath,
  rootfsConfigFiles,
  rootfsFstab,
  rootfsInittab,
  rootfsProfile,
  rootfsRcK,
  rootfsRcS,
  ROOTFS_PACKAGES,
  UDHCPC_SCRIPT,
} from "../../src/images/rootfs.js";

const APPLETS = [
  "[",
  "ash",
  "busybox",
  "cat",
  "cttyhack",
  "dpkg",
  "gzip",
  "init",
  "ip",
  "linuxrc",
  "ls",
  "mount",
  "poweroff",
]
  .concat(["setsid", "sh", "sleep", "switch_root", "udhcpc", "umount", "xz", "zcat"])
  .sort();

/** A stand-in busybox binary: its applet table among other strings, as in the real .rodata. */
function fakeBusybox(applets = APPLETS): Buffer {
  return Buffer.from(`\x7fELF...\0usage\0\0${applets.join("\0")}\0\0more\0`, "latin1");
}

function put(root: string, rel: string, content: string | Buffer, mode = 0o644): void {
  const p = join(root, rel);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, content, { mode });
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "yun-rootfs-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("paths: merged /usr and documentation left out", () => {
  assert.equal(mergedUsrPath("bin/sh"), "usr/bin/sh");
  assert.equal(mergedUsrPath("lib/riscv64-linux-gnu/libc.so.6"), "usr/lib/riscv64-linux-gnu/libc.so.6");
  assert.equal(mergedUsrPath("lib64"), "usr/lib64");
  assert.equal(mergedUsrPath("usr/bin/gzip"), "usr/bin/gzip");
  assert.equal(mergedUsrPath("etc/passwd"), "etc/passwd");
  assert.equal(mergedUsrPath("library/x"), "library/x");
  assert.ok(isDroppedPath("usr/share/man"));
  assert.ok(isDroppedPath("usr/share/man/man1/gzip.1.gz"));
  assert.ok(isDroppedPath("usr/share/doc/gzip/changelog.gz"));
  assert.ok(isDroppedPath("usr/share/locale/de/LC_MESSAGES/xz.mo"));
  assert.ok(!isDroppedPath("usr/share/doc/gzip/copyright"));
  assert.ok(!isDroppedPath("usr/share/doc/gzip"));
  assert.ok(!isDroppedPath("usr/share/manx"));
  assert.ok(!isDroppedPath("usr/bin/gzip"));
});

test("the root disk gets the dynamic busybox, whose shell runs real gzip and xz from PATH", () => {
  assert.ok(ROOTFS_PACKAGES.includes("busybox"));
  assert.ok(!ROOTFS_PACKAGES.includes("busybox-static"));
  for (const p of ["libc6", "gzip", "xz-utils"]) assert.ok(ROOTFS_PACKAGES.includes(p), p);
});

test("assembling: merged /usr, applet links beside real commands, /etc and boot files", () =>
  withDir((dir) => {
    const pkgs = ["base", "busybox", "gzip"].map((name) => ({ name, dir: join(dir, "pkgs", name) }));
    const [base, bb, gz] = pkgs.map((p) => p.dir) as [string, string, string];
    // base: an old-style /bin and /lib, an empty /var/run, documentation.
    put(base, "bin/oldtool", "#!/bin/sh\n", 0o755);
    put(base, "lib/riscv64-linux-gnu/libold.so.1", "ELF");
    mkdirSync(join(base, "var/run"), { recursive: true });
    put(base, "usr/share/doc/base/changelog.gz", Buffer.alloc(5000));
    put(base, "usr/share/doc/base/copyright", "GPL");
    put(base, "usr/share/man/man1/oldtool.1.gz", Buffer.alloc(3000));
    put(bb, "usr/bin/busybox", fakeBusybox(), 0o755);
    put(gz, "usr/bin/gzip", "real gzip", 0o755);
    put(gz, "usr/bin/zcat", "real zcat", 0o755);
    const rootfs = join(dir, "rootfs");
    mkdirSync(rootfs);

    const r = assembleRootfs(rootfs, pkgs);
    assert.ok(r.appletsFromBinary);
    const link = (rel: string): string => readlinkSync(join(rootfs, rel));
    for (const d of ["bin", "sbin", "lib"]) assert.equal(link(d), `usr/${d}`);
    assert.equal(link("var/run"), "../run");
    assert.equal(link("var/lock"), "../run/lock");
    assert.equal(link("etc/mtab"), "../proc/self/mounts");
    assert.equal(readFileSync(join(rootfs, "usr/bin/oldtool"), "utf8"), "#!/bin/sh\n");
    assert.ok(existsSync(join(rootfs, "usr/lib/riscv64-linux-gnu/libold.so.1")));
    assert.equal(readFileSync(join(rootfs, "bin/oldtool"), "utf8"), "#!/bin/sh\n", "reachable through /bin");

    // Real gzip/zcat stay; busybox fills in the rest; sbin applets in /usr/sbin; no fake dpkg.
    assert.equal(readFileSync(join(rootfs, "usr/bin/gzip"), "utf8"), "real gzip");
    assert.ok(lstatSync(join(rootfs, "usr/bin/zcat")).isFile());
    assert.deepEqual(r.shadowed.sort(), ["gzip", "zcat"]);
    assert.equal(link("usr/bin/sh"), "busybox");
    assert.equal(link("usr/bin/xz"), "busybox");
    assert.equal(link("usr/bin/["), "busybox");
    assert.equal(link("usr/sbin/init"), "../bin/busybox");
    assert.equal(link("usr/sbin/ip"), "../bin/busybox");
    assert.equal(link("usr/sbin/switch_root"), "../bin/busybox");
    for (const gone of ["usr/bin/busybox-link", "usr/bin/linuxrc", "usr/bin/dpkg", "usr/bin/init", "usr/sbin/sh"]) {
      assert.ok(!existsSync(join(rootfs, gone)) && !isLink(join(rootfs, gone)), `${gone} absent`);
    }
    assert.equal(r.applets.length, APPLETS.length - 5); // minus busybox, linuxrc, dpkg, gzip, zcat

    // Documentation dropped except copyright.
    assert.ok(existsSync(join(rootfs, "usr/share/doc/base/copyright")));
    assert.ok(!existsSync(join(rootfs, "usr/share/doc/base/changelog.gz")));
    assert.ok(!existsSync(join(rootfs, "usr/share/man")));
    assert.equal(r.droppedBytes, 8000);

    // Config and boot files, with their modes.
    for (const [rel, [content, mode]] of rootfsConfigFiles()) {
      assert.equal(readFileSync(join(rootfs, rel), "utf8"), content, rel);
      assert.equal(statSync(join(rootfs, rel)).mode & 0o7777, mode, `${rel} mode`);
    }
    assert.equal(readFileSync(join(rootfs, "etc/hostname"), "utf8"), "yun\n");
    assert.match(readFileSync(join(rootfs, "etc/passwd"), "utf8"), /^root:x:0:0:root:\/root:\/bin\/sh$/m);
    assert.equal(statSync(join(rootfs, "etc/init.d/rcS")).mode & 0o777, 0o755);
    assert.equal(statSync(join(rootfs, UDHCPC_SCRIPT.slice(1))).mode & 0o777, 0o755);
    assert.equal(statSync(join(rootfs, "tmp")).mode & 0o7777, 0o1777);
    assert.equal(statSync(join(rootfs, "root")).mode & 0o7777, 0o700);
    for (const d of ["dev", "proc", "sys", "run"]) assert.ok(statSync(join(rootfs, d)).isDirectory(), d);

    // The packages' directories were emptied (files moved, not copied).
    assert.ok(!existsSync(join(gz, "usr/bin/gzip")));
    assert.ok(r.files >= 3 + rootfsConfigFiles().size);
    assert.ok(r.entries > r.files);
  }));

function isLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

test("assembling fails clearly without busybox or a needed applet", () =>
  withDir((dir) => {
    const pkg = { name: "x", dir: join(dir, "x") };
    put(pkg.dir, "usr/bin/gzip", "gzip");
    mkdirSync(join(dir, "r1"));
    assert.throws(
      () => assembleRootfs(join(dir, "r1"), [pkg]),
      /^ImageError: none of the root disk's packages installs \/usr\/bin\/busybox$/,
    );

    const bb = { name: "busybox", dir: join(dir, "bb") };
    put(bb.dir, "usr/bin/busybox", fakeBusybox(APPLETS.filter((a) => a !== "cttyhack")));
    mkdirSync(join(dir, "r2"));
    assert.throws(() => assembleRootfs(join(dir, "r2"), [bb]), /busybox has no cttyhack applet/);
  }));

test("boot scripts: init, mounts, DHCP in the background, the marker, shutdown", () => {
  const rcS = rootfsRcS();
  assert.ok(rcS.startsWith("#!/bin/sh\n"));
  for (const re of [
    /mount -t proc /,
    /mount -t sysfs /,
    /mount -t devtmpfs /,
    /mount -o remount,rw \//,
    /mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs \/run/,
    /mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs \/tmp/,
    /hostname -F \/etc\/hostname/,
    /ip link set lo up/,
    /if \[ -e \/sys\/class\/net\/eth0 \]; then\n\s+udhcpc -i eth0 -q -n -t 3 -T 1 -s \/usr\/share\/udhcpc\/default.script .*&\n/,
  ]) {
    assert.match(rcS, re);
  }
  assert.ok(rcS.trimEnd().endsWith(`echo "${INIT_READY_MARKER}"`), "the marker is the last thing rcS does");
  // A NoCloud seed: found by label, mounted read-only, its user data run once in the background.
  assert.match(rcS, /seed=\$\(findfs LABEL=cidata 2>\/dev\/null\)/);
  assert.match(rcS, /mount -t ext4 -o ro "\$seed" \/run\/cidata/);
  assert.match(rcS, /\(\/run\/user-data >\/run\/user-data\.log 2>&1; .*\) &\n/);

  const inittab = rootfsInittab();
  assert.match(inittab, /^::sysinit:\/etc\/init\.d\/rcS$/m);
  assert.match(inittab, /^::respawn:\/usr\/bin\/cttyhack \/bin\/sh -l$/m);
  assert.match(inittab, /^::shutdown:\/etc\/init\.d\/rcK$/m);
  assert.doesNotMatch(inittab, /yun-agent/, "no agent line without the agent");
  assert.match(rootfsInittab(true), /^::respawn:\/usr\/sbin\/yun-agent$/m, "init starts the agent and restarts it");

  const rcK = rootfsRcK();
  assert.match(rcK, /sync\n/);
  assert.match(rcK, /mount -o remount,ro \//);

  assert.match(rootfsProfile(), /export PS1='\\w \\\$ '/);
  assert.match(rootfsProfile(), /export HOME=\/root/);
  assert.match(rootfsFstab(), /^\/dev\/vda\t\/\text4\trw,/m);
});

test("boot scripts are valid shell", { skip: spawnSync("sh", ["-c", "true"]).status === 0 ? false : "no sh" }, () =>
  withDir((dir) => {
    for (const [name, text] of [
      ["rcS", rootfsRcS()],
      ["rcK", rootfsRcK()],
      ["profile", rootfsProfile()],
    ] as const) {
      writeFileSync(join(dir, name), text);
      const r = spawnSync("sh", ["-n", join(dir, name)], { encoding: "utf8" });
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    }
  }),
);

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readCpio, S_IFCHR, S_IFLNK, S_IFMT, S_IFREG } from "../../src/images/cpio.js";
import { buildInitramfs, busyboxApplets, FALLBACK_APPLETS, initScript, INIT_READY_MARKER, udhcpcScript } from "../../src/images/initramfs.js";
import type { ResolvedModule } from "../../src/images/modules.js";
import { readModuleInfo } from "../../src/images/elf.js";
import { fakeModule } from "./elf-fixture.js";

const TABLE = ["[", "[[", "ash", "awk", "cat", "cp", "cttyhack", "dd", "echo", "grep", "insmod", "ip", "ls", "mkdir", "mount",
  "poweroff", "setsid", "sh", "sleep", "switch_root", "busybox", "linuxrc", "udhcpc", "vi"]
  .sort()
  .join("\0");

function fakeBusybox(): Buffer {
  // Applet table surrounded by unrelated strings, as in the real binary's .rodata.
  return Buffer.concat([
    Buffer.from("\x7fELF...garbage\0usage: [ EXPR ]\0"),
    Buffer.from("\0" + TABLE + "\0\0"),
    Buffer.from("more\0strings\0"),
  ]);
}

test("busybox applet names are read from the binary's table", () => {
  const names = busyboxApplets(fakeBusybox());
  assert.ok(names !== undefined);
  assert.deepEqual(names, TABLE.split("\0"));
  assert.equal(busyboxApplets(Buffer.from("no table here\0sh\0ls\0")), undefined);
});

function mod(name: string, path: string, deps: string[]): ResolvedModule {
  const data = fakeModule([`depends=${deps.join(",")}`, `name=${name}`, `alias=alias-${name}`]);
  return { name, path, data, info: readModuleInfo(data), deps };
}

test("initramfs contents", () => {
  const modules = [
    mod("failover", "kernel/net/core/failover.ko", []),
    mod("net_failover", "kernel/drivers/net/net_failover.ko", ["failover"]),
  ];
  const r = buildInitramfs({ busybox: fakeBusybox(), kernelVersion: "6.1.0-test", modules, modulesBuiltin: "kernel/x.ko\n" });
  assert.ok(r.appletsFromBinary);
  assert.ok(!r.applets.includes("busybox") && !r.applets.includes("linuxrc"));
  const entries = new Map(readCpio(r.archive).map((e) => [e.name, e]));
  assert.equal(entries.size, r.entries);

  const init = entries.get("init")!;
  assert.equal(init.mode, S_IFREG | 0o755);
  assert.equal(init.data.toString(), initScript());
  assert.equal(entries.get("bin/busybox")!.mode, S_IFREG | 0o755);
  assert.equal(entries.get("bin/sh")!.mode & S_IFMT, S_IFLNK);
  assert.equal(entries.get("bin/sh")!.data.toString(), "busybox");
  assert.equal(entries.get("bin/[")!.data.toString(), "busybox");
  assert.equal(entries.get("sbin")!.data.toString(), "bin");
  const con = entries.get("dev/console")!;
  assert.deepEqual([con.mode & S_IFMT, con.rdevMajor, con.rdevMinor], [S_IFCHR, 5, 1]);
  const nul = entries.get("dev/null")!;
  assert.deepEqual([nul.mode & S_IFMT, nul.rdevMajor, nul.rdevMinor], [S_IFCHR, 1, 3]);

  const base = "lib/modules/6.1.0-test";
  assert.ok(entries.has(`${base}/kernel/drivers/net/net_failover.ko`));
  assert.equal(
    entries.get("etc/modules-load.order")!.data.toString().split("\n").filter((l) => l.startsWith("/")).join("\n"),
    `/${base}/kernel/net/core/failover.ko\n/${base}/kernel/drivers/net/net_failover.ko`,
  );
  assert.equal(
    entries.get(`${base}/modules.dep`)!.data.toString(),
    "kernel/net/core/failover.ko:\nkernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n",
  );
  assert.match(entries.get(`${base}/modules.alias`)!.data.toString(), /^alias alias-failover failover$/m);
  assert.equal(entries.get(`${base}/modules.builtin`)!.data.toString(), "kernel/x.ko\n");
  assert.ok(entries.has("etc/udhcpc/default.script"));
});

test("the fallback applet list covers what /init and users need", () => {
  const r = buildInitramfs({ busybox: Buffer.from("no applet table"), kernelVersion: "v", modules: [] });
  assert.ok(!r.appletsFromBinary);
  for (const a of ["sh", "mount", "insmod", "mkdir", "setsid", "cttyhack", "hostname", "sleep", "poweroff", "ip", "udhcpc"]) {
    assert.ok(FALLBACK_APPLETS.includes(a), a);
  }
});

test("/init does what the VM expects", () => {
  const s = initScript();
  assert.ok(s.startsWith("#!/bin/sh\n"));
  assert.ok(s.includes(`echo "${INIT_READY_MARKER}"`));
  assert.match(s, /mount -t proc /);
  assert.match(s, /mount -t sysfs /);
  assert.match(s, /mount -t devtmpfs /);
  assert.match(s, /insmod "\$mod"/);
  assert.match(s, /setsid cttyhack sh/);
  assert.match(s, /export HOME=\/root/);
  assert.match(s, /hostname yun/);
  assert.ok(s.indexOf("insmod") < s.indexOf(INIT_READY_MARKER));
});

test("/init and the udhcpc script are valid shell", { skip: spawnSync("sh", ["-c", "true"]).status === 0 ? false : "no sh" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-init-"));
  try {
    for (const [name, text] of [["init", initScript()], ["udhcpc", udhcpcScript()]] as const) {
      writeFileSync(join(dir, name), text);
      const r = spawnSync("sh", ["-n", join(dir, name)], { encoding: "utf8" });
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("/init switches to the root disk named by root=, and says why when it cannot", () => {
  const s = initScript();
  const marker = s.indexOf(`echo "${INIT_READY_MARKER}"`);
  const sw = s.indexOf('exec switch_root /newroot "$rootinit"');
  assert.ok(sw > s.indexOf("insmod"), "modules are loaded before the root disk is mounted");
  assert.ok(sw > 0 && sw < marker, "switch_root comes before the initramfs's own marker");
  assert.match(s, /root=\*\) root="\$\{arg#root=\}" ;;/);
  assert.match(s, /rootfstype=ext4\n/);
  assert.match(s, /rootmode=rw\n/);
  assert.match(s, /\n {4}ro\) rootmode=ro ;;\n {4}rw\) rootmode=rw ;;/);
  assert.match(s, /rootinit=\/sbin\/init\n/);
  assert.match(s, /LABEL=\*\|UUID=\*\|PARTUUID=\*\) rootdev=\$\(findfs "\$root"/);
  assert.match(s, /\[ -b "\$rootdev" \] && return 0/);
  assert.match(s, /mount -t "\$rootfstype" -o "\$rootmode\$\{rootflags:\+,\$rootflags\}" "\$rootdev" \/newroot/);
  assert.match(s, /for d in proc sys dev; do\n\s+\[ -d "\/newroot\/\$d" \] && mount --move "\/\$d" "\/newroot\/\$d"/);
  assert.match(s, /echo "yun: cannot mount root \$root: \$why"/);
  // Without root= the block is skipped and /init carries on exactly as before.
  assert.match(s, /if \[ -n "\$root" \]; then/);
  const r = buildInitramfs({ busybox: fakeBusybox(), kernelVersion: "v", modules: [] });
  const names = readCpio(r.archive).map((e) => e.name);
  assert.ok(names.includes("newroot"));
  assert.ok(r.applets.includes("switch_root"));
});

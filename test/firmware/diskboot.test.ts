// Disks booted the way a board boots them: OpenSBI, Debian's U-Boot (u-boot-qemu, S-mode), then
// the disk's EFI application (GRUB) or extlinux.conf. Each disk is built here from Debian's kernel
// (the busybox image's) and a small initramfs that prints a marker line and powers off. The GRUB
// disk also boots on qemu-system-riscv64 with the same OpenSBI and the same u-boot.bin.
import { test, before, after as afterAll } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findImage, type ImageInfo } from "../../src/images/store.js";
import { findBootLoader, pullBootLoader } from "../../src/images/uboot.js";
import { findInPath } from "../../src/images/util.js";
import { ROOT, TEST_TIMEOUT, tail, runYun } from "../e2e/harness.js";
import {
  MARKER,
  ext4Image,
  fatImage,
  gptDisk,
  grubEfi,
  grubModules,
  markerInitramfs,
  missingTools,
  peStub,
} from "./disks.js";

/** The busybox image: its kernel boots the disks, its busybox makes their initramfs. */
const imageName = "debian-tiny";
const image: ImageInfo | undefined = findImage(imageName);
const missing = missingTools();
const skip: string | false =
  image === undefined
    ? "no busybox image (yun image pull debian-tiny)"
    : missing.length > 0
      ? `missing host tools: ${missing.join(", ")} (see .ci/run)`
      : false;

let work = "";
let grubDisk = "";
let extlinuxDisk = "";
let loader = "";

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), "yun-fw-"));
  loader = (findBootLoader() ?? (await pullBootLoader({ log: () => {} }))).path;
  const initrd = markerInitramfs(image!.initrd);
  const kernel = readFileSync(image!.kernel);
  const cmdline = "console=ttyS0 cryptomgr.notests quiet";

  // (1) GPT, one EFI system partition: GRUB as the removable-media application, its grub.cfg, the
  // kernel and the initramfs.
  const grub = grubEfi(work, await grubModules(work));
  const esp = fatImage(work, "esp", 48, {
    "EFI/BOOT/BOOTRISCV64.EFI": grub,
    "EFI/BOOT/grub.cfg": `set timeout=0\nmenuentry 'yun' {\n  linux /vmlinux ${cmdline} yun.via=grub\n  initrd /initrd.cpio\n}\n`,
    vmlinux: kernel,
    "initrd.cpio": initrd,
  });
  grubDisk = join(work, "grub.img");
  gptDisk(grubDisk, 52, "ef00", esp);

  // (3) The contract with the full image: partition 1 ext4, legacy-BIOS-bootable, holding
  // /boot/extlinux/extlinux.conf as u-boot-menu writes it; booted as qcow2.
  const tree = join(work, "tree");
  mkdirSync(join(tree, "boot/extlinux"), { recursive: true });
  writeFileSync(join(tree, "boot/vmlinux"), kernel);
  writeFileSync(join(tree, "boot/initrd.cpio"), initrd);
  writeFileSync(
    join(tree, "boot/extlinux/extlinux.conf"),
    `## written like u-boot-menu's\ndefault l0\nmenu title U-Boot menu\nprompt 0\ntimeout 0\n\n` +
      `label l0\n\tmenu label Debian GNU/Linux (Yun test)\n\tlinux /boot/vmlinux\n\tinitrd /boot/initrd.cpio\n` +
      `\tappend ${cmdline} yun.via=extlinux\n`,
  );
  const raw = join(work, "extlinux.img");
  gptDisk(raw, 52, "8300", ext4Image(work, "root", 48, tree), true);
  extlinuxDisk = join(work, "extlinux.qcow2");
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, extlinuxDisk]);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A fresh copy of a disk (U-Boot writes its EFI variables file to the EFI system partition). */
function copy(disk: string, name: string): string {
  const out = join(work, name);
  copyFileSync(disk, out);
  return out;
}

test(
  "a GPT disk with GRUB on its EFI system partition boots through OpenSBI and U-Boot",
  { skip, timeout: TEST_TIMEOUT },
  async (t) => {
    const r = await runYun(["run", "--image", imageName, "--root", copy(grubDisk, "g1.img"), "--no-net"], "");
    t.diagnostic(`booted in ${r.seconds.toFixed(1)} s`);
    assert.equal(r.code, 0, `exit ${r.code ?? r.signal}${tail(r.console)}`);
    assert.match(
      r.stderr,
      /booting .*g1\.img through OpenSBI and U-Boot .*: EFI application \/EFI\/BOOT\/BOOTRISCV64\.EFI on partition 1 \(FAT32\)/,
    );
    assert.match(r.console, /OpenSBI v\d/);
    assert.match(r.console, /U-Boot 20\d\d\.\d\d/);
    assert.match(r.console, new RegExp(`${MARKER}: .*yun\\.via=grub`), `no marker line${tail(r.console)}`);
  },
);

test(
  "the same disk boots on qemu-system-riscv64 with the same OpenSBI and u-boot.bin",
  { skip: skip || (!findInPath("qemu-system-riscv64") && "no qemu-system-riscv64"), timeout: 120_000 },
  async (t) => {
    const disk = copy(grubDisk, "g2.img");
    const qemu = spawn(
      "qemu-system-riscv64",
      [
        "-M",
        "virt",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-bios",
        image!.firmware.dynamic,
        "-kernel",
        loader,
        "-drive",
        `file=${disk},format=raw,if=virtio`,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    const t0 = Date.now();
    const done = new Promise<number | null>((resolve) => qemu.on("close", resolve));
    qemu.stdout.on("data", (b: Buffer) => (out += b.toString()));
    qemu.stderr.on("data", (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => qemu.kill("SIGKILL"), 100_000);
    await done;
    clearTimeout(timer);
    t.diagnostic(`QEMU booted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    assert.match(out, /U-Boot 20\d\d\.\d\d/);
    assert.match(out, new RegExp(`${MARKER}: .*yun\\.via=grub`), `no marker line under QEMU${tail(out)}`);
  },
);

test(
  "a qcow2 disk with extlinux.conf on a bootable ext4 partition boots, and --boot kernel still boots the image's kernel",
  { skip, timeout: TEST_TIMEOUT * 2 },
  async (t) => {
    const disk = copy(extlinuxDisk, "x1.qcow2");
    const r = await runYun(["run", "--image", imageName, "--root", disk, "--no-net"], "");
    t.diagnostic(`extlinux boot in ${r.seconds.toFixed(1)} s`);
    assert.equal(r.code, 0, `exit ${r.code ?? r.signal}${tail(r.console)}`);
    assert.match(r.stderr, /extlinux \/boot\/extlinux\/extlinux\.conf on partition 1 \(ext4\)/);
    assert.match(r.console, /Starting kernel/);
    assert.match(r.console, new RegExp(`${MARKER}: .*yun\\.via=extlinux`), `no marker line${tail(r.console)}`);

    // --boot kernel: the image's kernel and initramfs, the root being the disk's Linux partition.
    const k = await runYun(
      ["run", "--image", imageName, "--root", disk, "--no-net", "--boot", "kernel"],
      "echo kernel-boot-$((6*7))\npoweroff -f\n",
    );
    assert.equal(k.code, 0, `exit ${k.code ?? k.signal}${tail(k.console)}`);
    assert.doesNotMatch(k.console, /U-Boot/);
    assert.match(k.console, /root=\/dev\/vda1/);
    assert.match(k.console, /kernel-boot-42/, `the image's shell did not answer${tail(k.console)}`);
  },
);

test(
  "a disk U-Boot cannot boot at run time ends with one clear error, not a prompt",
  { skip, timeout: TEST_TIMEOUT },
  async () => {
    // The pre-flight sees a kernel file; U-Boot finds it is not a kernel and falls to its prompt.
    const tree = join(work, "badtree");
    mkdirSync(join(tree, "boot/extlinux"), { recursive: true });
    writeFileSync(join(tree, "boot/vmlinux"), Buffer.alloc(64 * 1024, 0x5a));
    writeFileSync(
      join(tree, "boot/extlinux/extlinux.conf"),
      "default a\nlabel a\n  linux /boot/vmlinux\n  append console=ttyS0\n",
    );
    const disk = join(work, "bad-kernel.img");
    gptDisk(disk, 12, "8300", ext4Image(work, "bad", 8, tree), true);
    const r = await runYun(["run", "--image", imageName, "--root", disk, "--no-net"], "", 120_000);
    assert.equal(r.timedOut, false, `yun did not notice U-Boot giving up${tail(r.console)}`);
    assert.equal(r.code, 1, `exit ${r.code ?? r.signal}${tail(r.console)}`);
    assert.match(r.stderr, /yun: the disk did not boot: U-Boot found nothing it could boot and stopped at its prompt/);
    assert.ok(r.seconds < 90, `took ${r.seconds} s`);
  },
);

test(
  "bad disks: no bootable partition, a corrupt GPT, an x86-64 EFI binary: one line from yun within seconds",
  { skip, timeout: 60_000 },
  async () => {
    const disks: [string, RegExp][] = [];
    const empty = join(work, "empty-esp.img");
    gptDisk(empty, 40, "ef00", fatImage(work, "empty", 36, { "README.txt": "nothing to boot here\n" }));
    disks.push([
      empty,
      /cannot boot through firmware: it has no bootable partition: U-Boot looks in its bootable partition \(1\)/,
    ]);
    const corrupt = copy(grubDisk, "corrupt.img");
    const size = readFileSync(corrupt).length;
    const fd = Buffer.from([0xff]);
    for (const at of [512 + 40, size - 512 + 40])
      execFileSync("dd", [`of=${corrupt}`, "bs=1", `seek=${at}`, "conv=notrunc", "status=none"], { input: fd });
    disks.push([
      corrupt,
      /cannot boot through firmware: its GPT is corrupt: the primary's header's CRC32 does not match/,
    ]);
    const x86 = join(work, "x86.img");
    gptDisk(x86, 40, "ef00", fatImage(work, "x86", 36, { "EFI/BOOT/BOOTRISCV64.EFI": peStub(0x8664) }));
    disks.push([
      x86,
      /BOOTRISCV64\.EFI on partition 1 is an EFI application for x86-64 \(PE machine 0x8664\), not for RISC-V 64 \(0x5064\)/,
    ]);
    for (const [disk, why] of disks) {
      const r = await runYun(["run", "--image", imageName, "--root", disk, "--no-net"], "", 30_000);
      assert.equal(r.code, 1, `${disk}: exit ${r.code ?? r.signal}${tail(r.console)}`);
      assert.ok(r.seconds < 10, `${disk}: took ${r.seconds} s`);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, `${disk}: expected one line, got:\n${r.stderr}`);
      assert.match(lines[0], /^yun run: /);
      assert.match(lines[0], why);
      assert.doesNotMatch(r.console, /OpenSBI v|U-Boot 20/, "the firmware started");
    }
  },
);

test(
  "on a terminal, a key stops U-Boot's autoboot and its prompt takes commands",
  { skip: skip || (!findInPath("script") && "no script(1)"), timeout: TEST_TIMEOUT },
  async () => {
    const disk = copy(grubDisk, "tty.img");
    // script(1) gives yun a pseudo-terminal, so its input counts as typed.
    const cmd = `node ${JSON.stringify(join(ROOT, "bin/yun.js"))} run --image ${imageName} --root ${JSON.stringify(disk)} --no-net`;
    const child = spawn("script", ["-qfc", cmd, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    const steps: [RegExp, string][] = [
      [/Hit any key to stop autoboot/, " "],
      [/=> $/, "echo typed-at-$((2))-u-boot\r"],
      [/^typed-at-\$\(\(2\)\)-u-boot\r?$/m, "\x01x"],
    ];
    const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      if (steps.length > 0 && steps[0][0].test(out)) child.stdin.write(steps.shift()![1]);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), TEST_TIMEOUT - 20_000);
    await closed;
    clearTimeout(timer);
    assert.equal(steps.length, 0, `U-Boot did not take the typed input${tail(out)}`);
    assert.doesNotMatch(out, /the disk did not boot/, "a prompt someone typed at is not a failure");
    assert.doesNotMatch(out, new RegExp(MARKER), "the autoboot was stopped");
  },
);

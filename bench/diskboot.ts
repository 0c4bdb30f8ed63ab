/**
 * Disk boot benchmark: a disk booted the way a board boots it, OpenSBI, Debian's U-Boot (S-mode),
 * then GRUB from the EFI system partition or the kernel an extlinux.conf names, to the marker line
 * of a busybox initramfs, on Yun (`yun run --root DISK`) beside qemu-system-riscv64 with the same
 * fw_dynamic.bin, u-boot.bin and disk. The disks are the firmware tests' (test/firmware/disks.ts):
 * the image's kernel and a small initramfs that prints a marker and powers off. Times count from
 * spawn: to U-Boot's banner, to the marker line.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageInfo } from "../src/images/store.js";
import { findBootLoader, pullBootLoader } from "../src/images/uboot.js";
import {
  MARKER,
  ext4Image,
  fatImage,
  gptDisk,
  grubEfi,
  grubModules,
  markerInitramfs,
  missingTools,
} from "../test/firmware/disks.js";
import { killLifecycleGuests, start } from "./lifecycle.js";
import { QEMU_MEMORY_MIB } from "./qemu.js";

const YUN = fileURLToPath(new URL("../../bin/yun.js", import.meta.url));

export interface DiskBootResult {
  engine: "yun" | "qemu";
  method: "grub" | "extlinux";
  ubootS?: number;
  markerS?: number;
  error?: string;
}

/** Builds the GRUB (GPT, EFI system partition) and extlinux (GPT, bootable ext4) disks in `dir`. */
async function buildDisks(image: ImageInfo, dir: string): Promise<Record<DiskBootResult["method"], string>> {
  const kernel = readFileSync(image.kernel);
  const initrd = markerInitramfs(image.initrd);
  const cmdline = "console=ttyS0 cryptomgr.notests quiet";
  const esp = fatImage(dir, "esp", 48, {
    "EFI/BOOT/BOOTRISCV64.EFI": grubEfi(dir, await grubModules(dir)),
    "EFI/BOOT/grub.cfg": `set timeout=0\nmenuentry 'yun' {\n  linux /vmlinux ${cmdline}\n  initrd /initrd.cpio\n}\n`,
    vmlinux: kernel,
    "initrd.cpio": initrd,
  });
  const grub = join(dir, "grub.img");
  gptDisk(grub, 52, "ef00", esp);
  const tree = join(dir, "tree");
  mkdirSync(join(tree, "boot/extlinux"), { recursive: true });
  writeFileSync(join(tree, "boot/vmlinux"), kernel);
  writeFileSync(join(tree, "boot/initrd.cpio"), initrd);
  writeFileSync(
    join(tree, "boot/extlinux/extlinux.conf"),
    `default l0\ntimeout 0\nlabel l0\n\tlinux /boot/vmlinux\n\tinitrd /boot/initrd.cpio\n\tappend ${cmdline}\n`,
  );
  const extlinux = join(dir, "extlinux.img");
  gptDisk(extlinux, 52, "8300", ext4Image(dir, "root", 48, tree), true);
  return { grub, extlinux };
}

/** Boots `disk` (a fresh copy each time) on one engine; times from spawn. */
async function bootOnce(
  engine: DiskBootResult["engine"],
  method: DiskBootResult["method"],
  disk: string,
  fw: { opensbi: string; uboot: string },
  timeoutS: number,
): Promise<DiskBootResult> {
  const copy = `${disk}.${engine}`;
  copyFileSync(disk, copy);
  const t0 = performance.now();
  const { child, out } =
    engine === "yun"
      ? start(process.execPath, [YUN, "run", "--root", copy, "--no-net", "--memory", String(QEMU_MEMORY_MIB)])
      : start("qemu-system-riscv64", [
          ...["-M", "virt", "-m", String(QEMU_MEMORY_MIB), "-nographic", "-no-reboot", "-nic", "none"],
          ...["-bios", fw.opensbi, "-kernel", fw.uboot, "-drive", `file=${copy},format=raw,if=virtio`],
        ]);
  try {
    await out.wait("U-Boot's banner", /U-Boot 20\d\d\.\d\d/, timeoutS);
    const ubootS = (performance.now() - t0) / 1000;
    await out.wait("the marker line", new RegExp(MARKER), timeoutS);
    return { engine, method, ubootS, markerS: (performance.now() - t0) / 1000 };
  } catch (e) {
    return { engine, method, error: (e as Error).message.slice(0, 200) };
  } finally {
    child.kill("SIGKILL");
    rmSync(copy, { force: true });
  }
}

export async function runDiskBootBench(o: {
  image: ImageInfo;
  qemu: string | undefined;
  timeoutS: number;
  log: (line: string) => void;
}): Promise<DiskBootResult[]> {
  const missing = missingTools();
  if (missing.length > 0) {
    return [{ engine: "yun", method: "grub", error: `missing host tools: ${missing.join(", ")}` }];
  }
  const dir = mkdtempSync(join(tmpdir(), "yun-bench-disk-"));
  try {
    const uboot = (findBootLoader() ?? (await pullBootLoader({ log: o.log }))).path;
    const disks = await buildDisks(o.image, dir);
    const out: DiskBootResult[] = [];
    for (const method of ["grub", "extlinux"] as const) {
      for (const engine of o.qemu ? (["yun", "qemu"] as const) : (["yun"] as const)) {
        o.log(`bench: disk boot (${method}) on ${engine} ...`);
        out.push(
          await bootOnce(engine, method, disks[method], { opensbi: o.image.firmware.dynamic, uboot }, o.timeoutS),
        );
      }
    }
    return out;
  } finally {
    killLifecycleGuests();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatDiskBootTable(rows: DiskBootResult[]): string {
  const f = (n: number | undefined): string => (n === undefined ? "-" : `${n.toFixed(1)} s`);
  const lines = [["disk", "engine", "to U-Boot", "to marker", "Yun / QEMU"]];
  for (const r of rows) {
    const q = rows.find((x) => x.method === r.method && x.engine === "qemu");
    const ratio =
      r.engine === "yun" && r.markerS !== undefined && q?.markerS ? `${(r.markerS / q.markerS).toFixed(2)}x` : "";
    lines.push([
      r.method === "grub" ? "GPT, ESP, GRUB (EFI)" : "GPT, ext4, extlinux",
      r.engine,
      f(r.ubootS),
      r.error !== undefined ? `failed: ${r.error}` : f(r.markerS),
      ratio,
    ]);
  }
  const widths = lines[0].map((_, c) => Math.max(...lines.map((l) => l[c].length)));
  return (
    lines
      .map((l) =>
        l
          .map((cell, c) => cell.padEnd(widths[c]))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

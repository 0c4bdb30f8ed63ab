/** The QEMU command line every benchmark compares Yun with: `-M virt`, one hart (or `smp`), 256 MiB, the image's
 *  OpenSBI fw_dynamic, kernel and initramfs, the serial console on stdio. */
import type { ImageInfo } from "../src/images/store.js";

export const QEMU_MEMORY_MIB = 256;

export function qemuVirtArgs(image: ImageInfo, append: string, extra: string[] = [], smp = 1): string[] {
  return [
    "-M",
    "virt",
    "-m",
    String(QEMU_MEMORY_MIB),
    "-smp",
    String(smp),
    "-nographic",
    "-bios",
    image.firmware.dynamic,
    "-kernel",
    image.kernel,
    "-initrd",
    image.initrd,
    "-append",
    append,
    ...extra,
  ];
}

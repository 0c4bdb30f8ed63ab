/** The QEMU command line every benchmark compares Yun with: `-M virt`, one hart, 256 MiB, the image's
 *  OpenSBI fw_dynamic, kernel and initramfs, the serial console on stdio. */
import type { ImageInfo } from "../src/images/store.js";

export const QEMU_MEMORY_MIB = 256;

export function qemuVirtArgs(image: ImageInfo, append: string, extra: string[] = []): string[] {
  return [
    "-M",
    "virt",
    "-m",
    String(QEMU_MEMORY_MIB),
    "-smp",
    "1",
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

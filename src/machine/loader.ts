/**
 * Boot image placement: the RISC-V Linux Image header, and where firmware, kernel, initrd,
 * device tree and OpenSBI's fw_dynamic info go in RAM (Linux Documentation/arch/riscv/boot.rst,
 * OpenSBI docs/firmware/fw_dynamic.md).
 */

export interface LinuxImageHeader {
  textOffset: number;
  imageSize: number;
}

const MIB = 1024 * 1024;

/** Parses the 64-byte RISC-V Image header; throws a clear error when the file is not a kernel Image. */
export function parseLinuxImage(image: Uint8Array, name = "kernel"): LinuxImageHeader {
  if (image.length < 64) throw new Error(`${name} is too small to be a RISC-V Linux Image (${image.length} bytes)`);
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const magic = new TextDecoder().decode(image.subarray(0x30, 0x35));
  const magic2 = view.getUint32(0x38, true);
  if (magic !== "RISCV" && magic2 !== 0x05435352) {
    throw new Error(`${name} is not a RISC-V Linux Image (no "RISCV"/"RSC\\x05" magic at offset 0x30)`);
  }
  const textOffset = Number(view.getBigUint64(8, true));
  const imageSize = Number(view.getBigUint64(16, true));
  return { textOffset: textOffset || 2 * MIB, imageSize: Math.max(imageSize, image.length) };
}

/**
 * The placement of a raw S-mode program that is not a Linux Image, such as U-Boot's S-mode build:
 * it is linked to run at RAM + 2 MiB, where QEMU's `-kernel` puts it and OpenSBI jumps.
 */
export function rawImageHeader(image: Uint8Array, name = "boot loader"): LinuxImageHeader {
  if (image.length === 0) throw new Error(`${name} is an empty file`);
  return { textOffset: 2 * MIB, imageSize: image.length };
}

export interface BootLayout {
  firmwareAddr: number;
  kernelAddr: number;
  kernelEnd: number;
  dtbAddr: number;
  fwInfoAddr: number;
  initrd?: { start: number; end: number };
}

/** Places everything in RAM: firmware at the base, kernel 2 MiB above, DTB and initrd near the top. */
export function planBoot(
  ramBase: number,
  ramSize: number,
  kernel: LinuxImageHeader,
  initrdSize: number | undefined,
): BootLayout {
  const kernelAddr = ramBase + kernel.textOffset;
  const kernelEnd = kernelAddr + kernel.imageSize;
  const ramEnd = ramBase + ramSize;
  const dtbAddr = ramEnd - 2 * MIB;
  const fwInfoAddr = dtbAddr - 4096;
  let initrd: BootLayout["initrd"];
  if (initrdSize !== undefined) {
    const start = Math.floor((fwInfoAddr - initrdSize) / 4096) * 4096;
    initrd = { start, end: start + initrdSize };
    if (start < kernelEnd + 2 * MIB) {
      throw new Error(
        `guest memory is too small for the kernel and a ${Math.ceil(initrdSize / MIB)} MiB initrd; give more with --memory`,
      );
    }
  } else if (fwInfoAddr < kernelEnd + 2 * MIB) {
    throw new Error("guest memory is too small for the kernel; give more with --memory");
  }
  return { firmwareAddr: ramBase, kernelAddr, kernelEnd, dtbAddr, fwInfoAddr, initrd };
}

/** OpenSBI fw_dynamic_info (version 2): magic, version, next_addr, next_mode (1 = S), options, boot_hart. */
export function fwDynamicInfo(nextAddr: number): Uint8Array {
  const out = new Uint8Array(48);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, 0x4942534fn, true);
  view.setBigUint64(8, 2n, true);
  view.setBigUint64(16, BigInt(nextAddr), true);
  view.setBigUint64(24, 1n, true);
  view.setBigUint64(32, 0n, true);
  view.setBigUint64(40, 0xffff_ffff_ffff_ffffn, true);
  return out;
}

/**
 * A tiny "kernel" for monitor tests without Linux: a Linux Image header, then
 * t0 = pc + 1 MiB; forever { *(u64 *)t0 += 1 }. The counter shows whether a machine runs and where its
 * memory came from.
 */
import type { VmMonitor } from "../../src/vmm/monitor.js";
import * as A from "./rv-asm.js";

const T0 = 5;
const T1 = 6;
const COUNTER_OFFSET = 0x100000; // from the kernel's load address (RAM_BASE + 2 MiB)

export function counterKernel(): Uint8Array {
  const image = new Uint8Array(4096);
  const dv = new DataView(image.buffer);
  dv.setUint32(0, A.jal(0, 64), true);
  image.set(new TextEncoder().encode("RISCV"), 0x30);
  dv.setUint32(0x38, 0x05435352, true);
  const code = [A.auipc(T0, COUNTER_OFFSET >> 12), A.ld(T1, 0, T0), A.addi(T1, T1, 1), A.sd(T1, 0, T0), A.jal(0, -12)];
  code.forEach((w, i) => dv.setUint32(64 + 4 * i, w, true));
  return image;
}

/** The guest's counter: the doubleword at kernel + 1 MiB + 64 (auipc is at offset 64). */
export function counter(m: VmMonitor): number {
  const off = m.machine.layout.kernelAddr - m.machine.bus.ramBase + 64 + COUNTER_OFFSET;
  // 64-bit: the translated loop counts past 2^31 within seconds on an idle host.
  const ram32 = m.machine.bus.ram32;
  return (ram32[off >> 2]! >>> 0) + ram32[(off >> 2) + 1]! * 2 ** 32;
}

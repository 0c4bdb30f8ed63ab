import type { MmioDevice, Persistent } from "./device.js";

export const SYSCON_BASE = 0x0010_0000;
export const SYSCON_SIZE = 0x1000;

export const SYSCON_FAIL = 0x3333;
export const SYSCON_PASS = 0x5555;
export const SYSCON_RESET = 0x7777;

export interface PowerEvent {
  kind: "poweroff" | "reset" | "fail";
  code: number;
}

/** The "sifive,test0" finisher that QEMU virt exposes as a syscon for poweroff and reboot. */
export class SysCon implements MmioDevice, Persistent<Record<string, never>> {
  readonly name = "syscon";
  private readonly onPower: (event: PowerEvent) => void;

  constructor(onPower: (event: PowerEvent) => void) {
    this.onPower = onPower;
  }

  read(_offset: number, _size: 1 | 2 | 4): number {
    return 0;
  }

  write(offset: number, value: number, size: 1 | 2 | 4): void {
    if (offset !== 0 || size === 1) return;
    const status = value & 0xffff;
    const code = size === 4 ? (value >>> 16) & 0xffff : 0;
    if (status === SYSCON_PASS) this.onPower({ kind: "poweroff", code: 0 });
    else if (status === SYSCON_RESET) this.onPower({ kind: "reset", code: 0 });
    else if (status === SYSCON_FAIL) this.onPower({ kind: "fail", code });
  }

  save(): Record<string, never> {
    return {};
  }

  restore(_state: Record<string, never>): void {}
}

/**
 * The `virt` board, assembled: RAM, one hart, CLINT, PLIC, UART, syscon and RTC at QEMU virt's
 * addresses, the device tree generated from that same list, and the firmware/kernel loading.
 * It also runs the machine: slices of guest instructions between which timers, console I/O and
 * power events are served, and host sleep while the guest waits in WFI.
 */
import { Bus } from "../cpu/bus.js";
import { Hart, type HartClock } from "../cpu/hart.js";
import { MIP_MTIP } from "../cpu/csr.js";
import { Clint, CLINT_BASE, CLINT_SIZE } from "../machine/clint.js";
import { Plic, PLIC_BASE, PLIC_SIZE } from "../machine/plic.js";
import { buildVirtDeviceTree } from "./devicetree.js";
import { parseLinuxImage, planBoot, fwDynamicInfo, type BootLayout } from "../machine/loader.js";
import { HypervisorSbi } from "../machine/sbi.js";
import { TIMEBASE_HZ } from "../machine/interrupts.js";
import { Uart16550, UART_BASE, UART_SIZE, UART_IRQ } from "../devices/uart.js";
import { SysCon, SYSCON_BASE, SYSCON_SIZE } from "../devices/syscon.js";
import { GoldfishRtc, RTC_BASE, RTC_SIZE, RTC_IRQ } from "../devices/rtc.js";

export const RAM_BASE = 0x8000_0000;
export const ISA_STRING = "rv64imafdc_zicntr_zicsr_zifencei";

export type FirmwareKind = "dynamic" | "jump" | "none";

export interface VirtConfig {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  /** OpenSBI image (fw_dynamic.bin or fw_jump.bin); null boots the kernel with the hypervisor's own SBI. */
  firmware: Uint8Array | null;
  firmwareKind: FirmwareKind;
  append: string;
  memoryMiB: number;
  /** Receives guest console output. */
  output: (bytes: Uint8Array) => void;
}

export interface PowerOff {
  kind: "poweroff" | "reset" | "fail";
  code: number;
}

/** A monotonic timebase clock shared by the hart's `time` CSR, the CLINT and the SBI timer. */
class TimebaseClock implements HartClock {
  private readonly start = performance.now();
  now(): number {
    return Math.floor((performance.now() - this.start) * (TIMEBASE_HZ / 1000));
  }
}

const SLICE_INSTRUCTIONS = 200_000;
const YIELD_EVERY_MS = 25;

export class VirtMachine {
  readonly bus: Bus;
  readonly hart: Hart;
  readonly clint: Clint;
  readonly plic: Plic;
  readonly uart: Uart16550;
  readonly rtc: GoldfishRtc;
  readonly syscon: SysCon;
  readonly sbi: HypervisorSbi | null;
  readonly layout: BootLayout;
  readonly clock = new TimebaseClock();
  private readonly config: VirtConfig;
  private readonly inputQueue: number[] = [];
  private outBuf = new Uint8Array(4096);
  private outLen = 0;
  private power: PowerOff | null = null;
  private wake: (() => void) | null = null;
  /** Host time spent asleep while the guest waited (ms). */
  idleMs = 0;

  constructor(config: VirtConfig) {
    this.config = config;
    const ramSize = config.memoryMiB * 1024 * 1024;
    this.bus = new Bus(RAM_BASE, ramSize);
    this.hart = new Hart(this.bus, 0, this.clock);
    this.clint = new Clint([this.hart], this.clock);
    this.plic = new Plic([this.hart]);
    this.uart = new Uart16550((level) => this.plic.setLevel(UART_IRQ, level), (b) => this.putByte(b));
    this.rtc = new GoldfishRtc((level) => this.plic.setLevel(RTC_IRQ, level));
    this.syscon = new SysCon((e) => this.powerEvent({ kind: e.kind, code: e.code }));
    this.bus.map(SYSCON_BASE, SYSCON_SIZE, this.syscon);
    this.bus.map(RTC_BASE, RTC_SIZE, this.rtc);
    this.bus.map(CLINT_BASE, CLINT_SIZE, this.clint);
    this.bus.map(PLIC_BASE, PLIC_SIZE, this.plic);
    this.bus.map(UART_BASE, UART_SIZE, this.uart);

    const header = parseLinuxImage(config.kernel);
    this.layout = planBoot(RAM_BASE, ramSize, header, config.initrd?.length);
    const dtb = buildVirtDeviceTree({
      harts: 1,
      isa: ISA_STRING,
      mmu: "sv39",
      ramBase: RAM_BASE,
      ramSize,
      timebaseHz: TIMEBASE_HZ,
      bootargs: config.append,
      initrd: this.layout.initrd,
      virtio: [],
    });
    if (dtb.length > 1024 * 1024) throw new Error("device tree too large");
    this.bus.load(this.layout.kernelAddr, config.kernel);
    if (config.initrd && this.layout.initrd) this.bus.load(this.layout.initrd.start, config.initrd);
    this.bus.load(this.layout.dtbAddr, dtb);

    const hart = this.hart;
    hart.setXNumber(10, 0); // a0: hart id
    hart.setXNumber(11, this.layout.dtbAddr); // a1: device tree
    if (config.firmware) {
      if (this.layout.firmwareAddr + config.firmware.length > this.layout.kernelAddr) {
        throw new Error("firmware image is larger than the 2 MiB below the kernel");
      }
      this.bus.load(this.layout.firmwareAddr, config.firmware);
      if (config.firmwareKind === "dynamic") {
        this.bus.load(this.layout.fwInfoAddr, fwDynamicInfo(this.layout.kernelAddr));
        hart.setXNumber(12, this.layout.fwInfoAddr);
      }
      hart.pc = this.layout.firmwareAddr;
      this.sbi = null;
    } else {
      this.sbi = new HypervisorSbi([hart], {
        putByte: (b) => this.putByte(b),
        getByte: () => (this.inputQueue.length > 0 ? this.inputQueue.shift()! : -1),
        reset: (kind, reason) => this.powerEvent({ kind: kind === "poweroff" ? "poweroff" : "reset", code: reason }),
        readPhysical: (pa, len) => {
          const off = this.bus.ramOffset(pa);
          if (off < 0 || off + len > this.bus.ramSize) return undefined;
          return this.bus.ram.slice(off, off + len);
        },
      });
      this.sbi.prepareHart(hart);
      hart.pc = this.layout.kernelAddr;
    }
  }

  /** Queues console input; it is handed to the guest as its UART has room and a reader. */
  input(bytes: Uint8Array): void {
    for (const b of bytes) this.inputQueue.push(b);
    this.wake?.();
  }

  /** Asks the machine to stop as if powered off (host-side quit). */
  stop(kind: PowerOff["kind"] = "poweroff", code = 0): void {
    this.powerEvent({ kind, code });
  }

  private powerEvent(e: PowerOff): void {
    if (!this.power) this.power = e;
    this.hart.stopRequested = true;
    this.hart.attention = true;
    this.wake?.();
  }

  private putByte(b: number): void {
    if (this.outLen === this.outBuf.length) {
      const bigger = new Uint8Array(this.outBuf.length * 2);
      bigger.set(this.outBuf);
      this.outBuf = bigger;
    }
    this.outBuf[this.outLen++] = b;
  }

  private flushOutput(): void {
    if (this.outLen === 0) return;
    this.config.output(this.outBuf.slice(0, this.outLen));
    this.outLen = 0;
  }

  private feedInput(): void {
    while (this.inputQueue.length > 0 && this.uart.inputWanted()) {
      this.uart.pushInput([this.inputQueue.shift()!]);
    }
  }

  /** Services timers: returns the earliest future deadline (timebase ticks) that could wake the hart. */
  private serviceTimers(): number {
    this.clint.update();
    this.rtc.update();
    let deadline = Infinity;
    if ((this.hart.mip & MIP_MTIP) === 0) deadline = this.clint.nextDeadline(0);
    if (this.sbi) deadline = Math.min(deadline, this.sbi.update(this.clock.now()));
    return deadline;
  }

  /** Runs the guest until it powers off, resets or fails. */
  async run(): Promise<PowerOff> {
    const hart = this.hart;
    let lastYield = performance.now();
    while (this.power === null) {
      this.feedInput();
      if (!hart.waiting) hart.run(SLICE_INSTRUCTIONS);
      const deadline = this.serviceTimers();
      this.flushOutput();
      if (this.power !== null) break;
      if (hart.waiting) {
        if (hart.hasWakeup()) {
          hart.waiting = false;
          hart.attention = true;
          continue;
        }
        this.feedInput();
        if (hart.waiting && !hart.hasWakeup()) {
          const ms = Math.min(1000, Math.max(0, (deadline - this.clock.now()) / (TIMEBASE_HZ / 1000)));
          const t0 = performance.now();
          await new Promise<void>((resolve) => {
            const timer = setTimeout(() => { this.wake = null; resolve(); }, ms);
            this.wake = () => { clearTimeout(timer); this.wake = null; resolve(); };
          });
          this.idleMs += performance.now() - t0;
          lastYield = performance.now();
        }
        continue;
      }
      const now = performance.now();
      if (now - lastYield > YIELD_EVERY_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        lastYield = performance.now();
      }
    }
    this.flushOutput();
    return this.power;
  }
}

import { FdtWriter } from "../machine/fdt.js";
import { CLINT_BASE, CLINT_SIZE } from "../machine/clint.js";
import { PLIC_BASE, PLIC_SIZE, PLIC_SOURCES } from "../machine/plic.js";
import { MIP_MEIP, MIP_MSIP, MIP_MTIP, MIP_SEIP } from "../machine/interrupts.js";
import { UART_BASE, UART_CLOCK_HZ, UART_IRQ, UART_SIZE } from "../devices/uart.js";
import { SYSCON_BASE, SYSCON_PASS, SYSCON_RESET, SYSCON_SIZE } from "../devices/syscon.js";
import { RTC_BASE, RTC_IRQ, RTC_SIZE } from "../devices/rtc.js";

export interface VirtDtConfig {
  harts: number;
  /** e.g. "rv64imafdc_zicntr_zicsr_zifencei" */
  isa: string;
  mmu: "sv39" | "sv48";
  ramBase: number;
  ramSize: number;
  timebaseHz: number;
  bootargs: string;
  /**
   * Seed for the guest kernel's random number generator (/chosen/rng-seed, 32 bytes as QEMU's
   * virt machine gives): without it the CRNG of a distribution kernel waits for entropy that
   * arrives only once a driver (virtio-rng) is loaded, and everything that reads getrandom()
   * early (systemd-udevd in an initramfs) waits with it.
   */
  rngSeed?: Uint8Array;
  initrd?: { start: number; end: number };
  /** Emitted in this order, which is the order Linux probes them in (so the first disk is vda). */
  virtio: { base: number; size: number; irq: number }[];
}

const hex = (n: number): string => n.toString(16);

/** Splits an ISA string into the riscv,isa-extensions list ("g" expands as the spec says). */
export function isaExtensions(isa: string): string[] {
  const lower = isa.toLowerCase();
  const m = /^rv(32|64)([a-z]*)/.exec(lower);
  if (!m) throw new Error(`devicetree: bad ISA string ${isa}`);
  const out: string[] = [];
  const add = (e: string): void => {
    if (!out.includes(e)) out.push(e);
  };
  for (const ch of m[2]) {
    if (ch === "g") ["i", "m", "a", "f", "d", "zicsr", "zifencei"].forEach(add);
    else add(ch);
  }
  for (const part of lower.slice(m[0].length).split("_")) if (part) add(part);
  // Single letters first, in the order given, then multi-letter extensions.
  return [...out.filter((e) => e.length === 1), ...out.filter((e) => e.length > 1)];
}

/** The device tree QEMU's riscv virt machine (7.x/8.x) would hand to firmware, for this board's devices. */
export function buildVirtDeviceTree(cfg: VirtDtConfig): Uint8Array {
  const w = new FdtWriter();
  let nextPhandle = 1;
  const cpuPhandles: number[] = [];
  const intcPhandles: number[] = [];
  for (let h = 0; h < cfg.harts; h++) {
    cpuPhandles.push(nextPhandle++);
    intcPhandles.push(nextPhandle++);
  }
  const plicPhandle = nextPhandle++;
  const testPhandle = nextPhandle++;
  const uartPath = `/soc/serial@${hex(UART_BASE)}`;

  w.beginNode("");
  w.propU32("#address-cells", 2);
  w.propU32("#size-cells", 2);
  w.propString("compatible", "riscv-virtio");
  w.propString("model", "riscv-virtio,qemu");

  w.beginNode("poweroff");
  w.propU32("value", SYSCON_PASS);
  w.propU32("offset", 0);
  w.propU32("regmap", testPhandle);
  w.propString("compatible", "syscon-poweroff");
  w.endNode();

  w.beginNode("reboot");
  w.propU32("value", SYSCON_RESET);
  w.propU32("offset", 0);
  w.propU32("regmap", testPhandle);
  w.propString("compatible", "syscon-reboot");
  w.endNode();

  w.beginNode(`memory@${hex(cfg.ramBase)}`);
  w.propString("device_type", "memory");
  w.propU64("reg", cfg.ramBase, cfg.ramSize);
  w.endNode();

  w.beginNode("cpus");
  w.propU32("#address-cells", 1);
  w.propU32("#size-cells", 0);
  w.propU32("timebase-frequency", cfg.timebaseHz);
  const extensions = isaExtensions(cfg.isa);
  for (let h = 0; h < cfg.harts; h++) {
    w.beginNode(`cpu@${hex(h)}`);
    w.propU32("phandle", cpuPhandles[h]);
    w.propString("device_type", "cpu");
    w.propU32("reg", h);
    w.propString("status", "okay");
    w.propString("compatible", "riscv");
    w.propStrings("riscv,isa-extensions", ...extensions);
    w.propString("riscv,isa-base", cfg.isa.slice(0, 4).toLowerCase() + "i");
    w.propString("riscv,isa", cfg.isa);
    w.propString("mmu-type", `riscv,${cfg.mmu}`);
    w.beginNode("interrupt-controller");
    w.propU32("#address-cells", 0); // not in QEMU's tree; keeps dtc's interrupt_provider check quiet
    w.propU32("#interrupt-cells", 1);
    w.propEmpty("interrupt-controller");
    w.propString("compatible", "riscv,cpu-intc");
    w.propU32("phandle", intcPhandles[h]);
    w.endNode();
    w.endNode();
  }
  w.beginNode("cpu-map");
  w.beginNode("cluster0");
  for (let h = 0; h < cfg.harts; h++) {
    w.beginNode(`core${h}`);
    w.propU32("cpu", cpuPhandles[h]);
    w.endNode();
  }
  w.endNode();
  w.endNode();
  w.endNode(); // cpus

  w.beginNode("aliases");
  w.propString("serial0", uartPath);
  w.endNode();

  w.beginNode("chosen");
  // Without a command line (a boot loader's machine) there is no bootargs, as QEMU without -append.
  if (cfg.bootargs !== "") w.propString("bootargs", cfg.bootargs);
  w.propString("stdout-path", uartPath);
  if (cfg.rngSeed) w.prop("rng-seed", cfg.rngSeed);
  if (cfg.initrd) {
    w.propU64("linux,initrd-start", cfg.initrd.start);
    w.propU64("linux,initrd-end", cfg.initrd.end);
  }
  w.endNode();

  w.beginNode("soc");
  w.propU32("#address-cells", 2);
  w.propU32("#size-cells", 2);
  w.propString("compatible", "simple-bus");
  w.propEmpty("ranges");

  w.beginNode(`rtc@${hex(RTC_BASE)}`);
  w.propU32("interrupts", RTC_IRQ);
  w.propU32("interrupt-parent", plicPhandle);
  w.propU64("reg", RTC_BASE, RTC_SIZE);
  w.propString("compatible", "google,goldfish-rtc");
  w.endNode();

  w.beginNode(`serial@${hex(UART_BASE)}`);
  w.propU32("interrupts", UART_IRQ);
  w.propU32("interrupt-parent", plicPhandle);
  w.propU32("clock-frequency", UART_CLOCK_HZ);
  w.propU64("reg", UART_BASE, UART_SIZE);
  w.propString("compatible", "ns16550a");
  w.endNode();

  w.beginNode(`test@${hex(SYSCON_BASE)}`);
  w.propU32("phandle", testPhandle);
  w.propU64("reg", SYSCON_BASE, SYSCON_SIZE);
  w.propStrings("compatible", "sifive,test1", "sifive,test0", "syscon");
  w.endNode();

  for (const v of cfg.virtio) {
    w.beginNode(`virtio_mmio@${hex(v.base)}`);
    w.propU32("interrupts", v.irq);
    w.propU32("interrupt-parent", plicPhandle);
    w.propU64("reg", v.base, v.size);
    w.propString("compatible", "virtio,mmio");
    w.endNode();
  }

  w.beginNode(`plic@${hex(PLIC_BASE)}`);
  w.propU32("phandle", plicPhandle);
  w.propU32("riscv,ndev", PLIC_SOURCES - 1);
  w.propU64("reg", PLIC_BASE, PLIC_SIZE);
  w.propU32("interrupts-extended", ...intcPhandles.flatMap((p) => [p, MIP_MEIP, p, MIP_SEIP]));
  w.propEmpty("interrupt-controller");
  w.propStrings("compatible", "sifive,plic-1.0.0", "riscv,plic0");
  w.propU32("#address-cells", 0);
  w.propU32("#interrupt-cells", 1);
  w.endNode();

  w.beginNode(`clint@${hex(CLINT_BASE)}`);
  w.propU32("interrupts-extended", ...intcPhandles.flatMap((p) => [p, MIP_MSIP, p, MIP_MTIP]));
  w.propU64("reg", CLINT_BASE, CLINT_SIZE);
  w.propStrings("compatible", "sifive,clint0", "riscv,clint0");
  w.endNode();

  w.endNode(); // soc
  w.endNode(); // root
  return w.finish();
}

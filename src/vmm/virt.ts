/**
 * The `virt` board, assembled: RAM, one hart, CLINT, PLIC, UART, syscon and RTC at QEMU virt's
 * addresses, virtio-mmio devices (disks, network, console, entropy) in QEMU virt's slots, the device
 * tree generated from that same list, and the firmware/kernel loading.
 * It also runs the machine: slices of guest instructions between which timers, console I/O and
 * power events are served, and host sleep while the guest waits in WFI (until a timer, console
 * input or a device such as the network card wakes it).
 */
import { Bus } from "../cpu/bus.js";
import { Hart, type HartClock } from "../cpu/hart.js";
import { Jit } from "../cpu/jit.js";
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
import type { BlockBackend } from "../devices/block.js";
import type { NetBackend } from "../devices/netdev.js";
import {
  VIRTIO_MMIO_BASE,
  VIRTIO_MMIO_IRQ_BASE,
  VIRTIO_MMIO_SIZE,
  VIRTIO_MMIO_SLOTS,
  VIRTIO_MMIO_STRIDE,
} from "../devices/virtio/mmio.js";
import { VirtioBlk } from "../devices/virtio/blk.js";
import { VirtioNet } from "../devices/virtio/net.js";
import { VirtioConsole } from "../devices/virtio/console.js";
import { VirtioRng, type EntropySource } from "../devices/virtio/rng.js";
import { openDiskImage, type DiskFormat } from "../storage/image.js";
import { DmaWatch, type WatchedVirtio } from "./dma.js";

export const RAM_BASE = 0x8000_0000;
export const ISA_STRING = "rv64imafdc_zicntr_zicsr_zifencei";

export type FirmwareKind = "dynamic" | "jump" | "none";
/** How guest code runs: the interpreter, or the translator (with the interpreter for cold code). */
export type Engine = "interp" | "jit";

export interface VirtConfig {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  /** OpenSBI image (fw_dynamic.bin or fw_jump.bin); null boots the kernel with the hypervisor's own SBI. */
  firmware: Uint8Array | null;
  firmwareKind: FirmwareKind;
  append: string;
  memoryMiB: number;
  /** The timebase (default: host time). Lockstep runs give each machine a clock of its own instret. */
  clock?: HartClock;
  /** Wall clock of the RTC in ns since the epoch (default: the host's), and the virtio-rng's
   *  entropy (default: the host's CSPRNG): lockstep runs make both deterministic. */
  wallClock?: () => bigint;
  entropy?: EntropySource;
  /** Default: "jit". */
  engine?: Engine;
  /** Receives guest console output: the UART's and the virtio console's (hvc0), in guest order. */
  output: (bytes: Uint8Array) => void;
  /**
   * virtio-blk disks, in order: the first is /dev/vda, the next /dev/vdb, ... A path is opened (and
   * its whole backing chain checked) by the constructor, which throws the storage layer's
   * DiskImageError before anything is written; an opened backend is taken as it is. Either way the
   * machine owns the disk from then on and flushes and closes it when it stops.
   */
  disks?: (DiskSpec | BlockBackend)[];
  /** The network card's cable (user-mode NAT, a virtual switch port); none: no network card.
   *  The machine closes it when it stops. */
  net?: NetBackend | null;
  /** The network card's MAC address, e.g. "52:54:00:12:34:56" (default: that one). */
  mac?: string;
  /** Receives lines the devices log about driver errors (default: standard error). */
  log?: (line: string) => void;
}

/** A disk image file for a virtio-blk slot. */
export interface DiskSpec {
  path: string;
  readOnly?: boolean;
  /** The image format; probed from the file's first bytes when absent. */
  format?: DiskFormat;
}

/** QEMU's default MAC for the first network card. */
export const DEFAULT_MAC = "52:54:00:12:34:56";

/** One virtio-mmio slot: window, PLIC source and device tree `reg` (slot n at BASE + n·STRIDE). */
export function virtioSlot(n: number): { base: number; size: number; irq: number } {
  return { base: VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_STRIDE, size: VIRTIO_MMIO_SIZE, irq: VIRTIO_MMIO_IRQ_BASE + n };
}

/** Slots the console and entropy devices take, which are always present. */
const FIXED_VIRTIO_DEVICES = 2;

/** Most disks a machine takes: the slots left by the console, the entropy source and a network card. */
export function maxDisks(withNet: boolean): number {
  return VIRTIO_MMIO_SLOTS - FIXED_VIRTIO_DEVICES - (withNet ? 1 : 0);
}

function isBackend(d: DiskSpec | BlockBackend): d is BlockBackend {
  return typeof (d as BlockBackend).read === "function";
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
/** A busy guest hands the event loop a turn this often (ms), so host I/O and timers are served... */
const YIELD_EVERY_MS = 25;
/** ...and after every slice while its network card moved a frame within this many ms: TCP's
 *  acknowledgements then wait a slice (1-3 ms) rather than 25 ms, which bounds throughput. */
const NET_ACTIVE_MS = 100;

export class VirtMachine {
  readonly bus: Bus;
  readonly hart: Hart;
  readonly clint: Clint;
  readonly plic: Plic;
  readonly uart: Uart16550;
  readonly rtc: GoldfishRtc;
  readonly syscon: SysCon;
  readonly sbi: HypervisorSbi | null;
  readonly jit: Jit | null;
  readonly layout: BootLayout;
  /** virtio-blk devices, in /dev/vda, /dev/vdb ... order. */
  readonly disks: readonly VirtioBlk[];
  readonly net: VirtioNet | null;
  /** virtio-console (/dev/hvc0): output joins the UART's; see consoleInput(). */
  readonly console: VirtioConsole;
  readonly rng: VirtioRng;
  readonly clock: HartClock;
  private readonly diskBackends: BlockBackend[];
  private readonly netBackend: NetBackend | null;
  private readonly dma: DmaWatch | null;
  private closed = false;
  private readonly config: VirtConfig;
  private readonly inputQueue: number[] = [];
  private outBuf = new Uint8Array(4096);
  private outLen = 0;
  private power: PowerOff | null = null;
  private wake: (() => void) | null = null;
  /** performance.now() of the network card's last frame either way. */
  private lastNetIo = -Infinity;
  /** Host time spent asleep while the guest waited (ms). */
  idleMs = 0;

  /**
   * Builds the board. Disk paths are opened last, after the kernel and firmware checked out; if the
   * constructor throws, the disks it opened are closed again and the backends it was given stay
   * the caller's. Once built, the machine owns every disk and the network backend.
   */
  constructor(config: VirtConfig) {
    this.config = config;
    this.clock = config.clock ?? new TimebaseClock();
    const ramSize = config.memoryMiB * 1024 * 1024;
    this.bus = new Bus(RAM_BASE, ramSize);
    this.hart = new Hart(this.bus, 0, this.clock);
    this.jit = (config.engine ?? "jit") === "jit" ? new Jit(this.hart) : null;
    // Device writes to RAM matter only to a translator (it caches what RAM holds).
    this.dma = this.jit ? new DmaWatch(this.bus) : null;
    this.clint = new Clint([this.hart], this.clock);
    this.plic = new Plic([this.hart]);
    this.uart = new Uart16550(
      (level) => this.plic.setLevel(UART_IRQ, level),
      (b) => this.putByte(b),
    );
    this.rtc = new GoldfishRtc((level) => this.plic.setLevel(RTC_IRQ, level), config.wallClock);
    this.syscon = new SysCon((e) => this.powerEvent({ kind: e.kind, code: e.code }));
    this.bus.map(SYSCON_BASE, SYSCON_SIZE, this.syscon);
    this.bus.map(RTC_BASE, RTC_SIZE, this.rtc);
    this.bus.map(CLINT_BASE, CLINT_SIZE, this.clint);
    this.bus.map(PLIC_BASE, PLIC_SIZE, this.plic);
    this.bus.map(UART_BASE, UART_SIZE, this.uart);

    const header = parseLinuxImage(config.kernel);
    this.layout = planBoot(RAM_BASE, ramSize, header, config.initrd?.length);
    this.bus.load(this.layout.kernelAddr, config.kernel);
    if (config.initrd && this.layout.initrd) this.bus.load(this.layout.initrd.start, config.initrd);

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

    // virtio-mmio, in slot order: the disks (vda, vdb, ...), the network card, the console, the
    // entropy source. Linux probes the device tree's virtio nodes in the order they are listed and
    // names disks in probe order, so listing slot 0 first makes the first disk /dev/vda. (QEMU puts
    // its first -device in the highest slot and lists the nodes highest address first: the same
    // outcome, the first disk is vda.)
    const disks = config.disks ?? [];
    const net = config.net ?? null;
    const limit = maxDisks(net !== null);
    if (disks.length > limit) {
      throw new Error(
        `a machine takes at most ${limit} disks${net ? " besides its network card" : ""}, not ${disks.length}`,
      );
    }
    const opened: BlockBackend[] = [];
    try {
      for (const d of disks) {
        opened.push(isBackend(d) ? d : openDiskImage(d.path, { readOnly: d.readOnly ?? false, format: d.format }));
      }
    } catch (e) {
      for (let i = 0; i < opened.length; i++) if (!isBackend(disks[i])) opened[i].close();
      throw e;
    }
    this.diskBackends = opened;
    this.netBackend = net;

    const slots: { base: number; size: number; irq: number }[] = [];
    const irqLine = (slot: number) => (level: boolean) => this.plic.setLevel(virtioSlot(slot).irq, level);
    const kick = (): void => this.wake?.();
    const log = config.log;
    const place = <T extends WatchedVirtio>(device: T): T => {
      const slot = virtioSlot(slots.length);
      slots.push(slot);
      this.bus.map(slot.base, slot.size, this.dma ? this.dma.watch(device) : device);
      return device;
    };
    this.disks = opened.map((b, i) =>
      place(new VirtioBlk(this.bus, irqLine(slots.length), b, { name: `virtio-blk${i}`, log })),
    );
    this.net = net
      ? place(
          new VirtioNet(this.bus, irqLine(slots.length), this.watchNet(net), {
            mac: config.mac ?? DEFAULT_MAC,
            kick,
            log,
          }),
        )
      : null;
    this.console = place(
      new VirtioConsole(this.bus, irqLine(slots.length), (bytes) => this.putBytes(bytes), { kick, log }),
    );
    this.rng = place(new VirtioRng(this.bus, irqLine(slots.length), { log, entropy: config.entropy }));

    const dtb = buildVirtDeviceTree({
      harts: 1,
      isa: ISA_STRING,
      mmu: "sv39",
      ramBase: RAM_BASE,
      ramSize,
      timebaseHz: TIMEBASE_HZ,
      bootargs: config.append,
      initrd: this.layout.initrd,
      virtio: slots,
    });
    if (dtb.length > 1024 * 1024) throw new Error("device tree too large");
    this.bus.load(this.layout.dtbAddr, dtb);
  }

  /** The backend as the network card sees it: every frame either way notes the time. */
  private watchNet(backend: NetBackend): NetBackend {
    return {
      send: (frame) => {
        this.lastNetIo = performance.now();
        backend.send(frame);
      },
      attach: (deliver) =>
        backend.attach((frame) => {
          this.lastNetIo = performance.now();
          return deliver(frame);
        }),
      close: () => backend.close(),
    };
  }

  /** Types into /dev/hvc0 (the virtio console); the bytes wait until the guest reads them. */
  consoleInput(bytes: Uint8Array): void {
    this.console.input(bytes);
  }

  /**
   * Flushes and closes every disk and closes the network backend. run() does this when the guest
   * stops; a machine that is never run must be closed by its owner. Safe to call more than once.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let first: unknown = null;
    for (const d of this.diskBackends) {
      try {
        if (!d.readOnly) d.flush();
      } catch (e) {
        first ??= e;
      }
      try {
        d.close();
      } catch (e) {
        first ??= e;
      }
    }
    try {
      this.netBackend?.close();
    } catch (e) {
      first ??= e;
    }
    if (first !== null) throw first;
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

  private putBytes(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length; i++) this.putByte(bytes[i]);
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

  /**
   * One turn of the machine between slices, for drivers other than run() (lockstep): console
   * input, timers and output. Returns the earliest timer deadline (timebase ticks).
   */
  service(): number {
    this.feedInput();
    this.dma?.scan();
    const deadline = this.serviceTimers();
    this.flushOutput();
    return deadline;
  }

  /** How the machine stopped, or null while it runs. */
  get powerState(): PowerOff | null {
    return this.power;
  }

  /** Runs the guest until it powers off, resets or fails. */
  async run(): Promise<PowerOff> {
    const hart = this.hart;
    let lastYield = performance.now();
    while (this.power === null) {
      this.feedInput();
      // Device work done from the event loop (received frames, hvc0 input) wrote guest RAM.
      this.dma?.scan();
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
            const timer = setTimeout(() => {
              this.wake = null;
              resolve();
            }, ms);
            this.wake = () => {
              clearTimeout(timer);
              this.wake = null;
              resolve();
            };
          });
          this.idleMs += performance.now() - t0;
          lastYield = performance.now();
        }
        continue;
      }
      const now = performance.now();
      if (now - lastYield > YIELD_EVERY_MS || now - this.lastNetIo < NET_ACTIVE_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        lastYield = performance.now();
      }
    }
    this.flushOutput();
    this.close();
    return this.power;
  }
}

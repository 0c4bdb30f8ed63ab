/**
 * The `virt` board, assembled: RAM, one hart, CLINT, PLIC, UART, syscon and RTC at QEMU virt's
 * addresses, virtio-mmio devices (disks, network, console, entropy) in QEMU virt's slots, the device
 * tree generated from that same list, and the firmware/kernel loading.
 * It also runs the machine: slices of guest instructions between which timers, console I/O and
 * power events are served, and host sleep while the guest waits in WFI (until a timer, console
 * input or a device such as the network card wakes it).
 */
import { randomFillSync } from "node:crypto";
import { allocateRam, Bus, ramFits, ramView, type MmioDevice, type RamStorage } from "../cpu/bus.js";
import { Hart, type HartClock } from "../cpu/hart.js";
import { saveHart, restoreHart, checkHartState, type HartState } from "../cpu/state.js";
import { Jit } from "../cpu/jit.js";
import { MAX_SMP_HARTS, SharedCodeMap } from "../cpu/smp.js";
import { MIP_MTIP } from "../cpu/csr.js";
import { Clint, CLINT_BASE, CLINT_SIZE } from "../machine/clint.js";
import { Plic, PLIC_BASE, PLIC_SIZE } from "../machine/plic.js";
import { buildVirtDeviceTree } from "./devicetree.js";
import { parseLinuxImage, planBoot, fwDynamicInfo, rawImageHeader, type BootLayout } from "../machine/loader.js";
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
  VIRTIO_MMIO_HIGH_IRQ_BASE,
  VIRTIO_MMIO_STRIDE,
} from "../devices/virtio/mmio.js";
import { VirtioBlk } from "../devices/virtio/blk.js";
import { VirtioNet } from "../devices/virtio/net.js";
import { VirtioConsole } from "../devices/virtio/console.js";
import { VirtioRng, type EntropySource } from "../devices/virtio/rng.js";
import { VirtioVsock } from "../devices/virtio/vsock.js";
import { Virtio9p, type ShareSpec } from "../devices/virtio/9p.js";
import { VirtioGpu } from "../devices/virtio/gpu.js";
import { KEYBOARD_DESCRIPTION, TABLET_DESCRIPTION, VirtioInput } from "../devices/virtio/input.js";
import { openDiskImage, type DiskFormat } from "../storage/image.js";
import { VmClock, processCpuMicros } from "./clock.js";
import { HartThreads } from "./smp.js";

export { VmClock };

export const RAM_BASE = 0x8000_0000;
export const ISA_STRING = "rv64imafdc_zicntr_zicsr_zifencei";

export type FirmwareKind = "dynamic" | "jump" | "none";
/**
 * What `kernel` is: a Linux Image (its header places it; initrd and command line go in the device
 * tree), or a raw S-mode program such as U-Boot, the firmware's next stage, which finds its own
 * kernel on the disks (no initrd, no command line).
 */
export type PayloadKind = "linux" | "raw";
/** How guest code runs: the interpreter, or the translator (with the interpreter for cold code). */
export type Engine = "interp" | "jit";

export interface VirtConfig {
  kernel: Uint8Array;
  /** Default: "linux". */
  payload?: PayloadKind;
  initrd?: Uint8Array;
  /** OpenSBI image (fw_dynamic.bin or fw_jump.bin); null boots the kernel with the hypervisor's own SBI. */
  firmware: Uint8Array | null;
  firmwareKind: FirmwareKind;
  append: string;
  memoryMiB: number;
  /**
   * vCPUs (default 1). One hart runs in this thread; with more, each hart runs on a thread of its
   * own over shared RAM (SMP) and this thread keeps the devices. SMP boots through OpenSBI.
   */
  cpus?: number;
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
  /** A virtio-vsock device with this guest CID (the guest agent's channel); none: no device. */
  vsock?: { guestCid: number } | null;
  /** Receives lines the devices log about driver errors (default: standard error). */
  log?: (line: string) => void;
  /**
   * A display: virtio-gpu (this mode offered) with a virtio keyboard and tablet, in the three slots
   * after the entropy source. Absent or null: none of them, and nothing of them costs anything.
   */
  display?: { width: number; height: number } | null;
  /** Host directories served by virtio-9p devices, one slot each, after every other device. */
  shares?: ShareSpec[];
  /**
   * RAM to start from (a snapshot or a migration, whose state restoreState() then loads): the
   * firmware, kernel, initrd and device tree are not loaded into it.
   */
  ram?: RamStorage;
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
  const irq = n < 8 ? VIRTIO_MMIO_IRQ_BASE + n : VIRTIO_MMIO_HIGH_IRQ_BASE + n - 8;
  return { base: VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_STRIDE, size: VIRTIO_MMIO_SIZE, irq };
}

/** Slots the console and entropy devices take, which are always present. */
const FIXED_VIRTIO_DEVICES = 2;

/** Slots a display takes: the GPU, the keyboard and the tablet. */
export const DISPLAY_VIRTIO_DEVICES = 3;

/** Most disks a machine takes: the slots left by the console, the entropy source, a network card, a vsock device, a display and shares. */
export function maxDisks(withNet: boolean, withVsock = false, withDisplay = false, shares = 0): number {
  return (
    VIRTIO_MMIO_SLOTS -
    FIXED_VIRTIO_DEVICES -
    (withNet ? 1 : 0) -
    (withVsock ? 1 : 0) -
    (withDisplay ? DISPLAY_VIRTIO_DEVICES : 0) -
    shares
  );
}

/** A machine's display devices. */
export interface MachineDisplay {
  gpu: VirtioGpu;
  keyboard: VirtioInput;
  tablet: VirtioInput;
}

function isBackend(d: DiskSpec | BlockBackend): d is BlockBackend {
  return typeof (d as BlockBackend).read === "function";
}

export interface PowerOff {
  kind: "poweroff" | "reset" | "fail";
  code: number;
}

/** Everything of a machine but its RAM and its disks' contents, as plain data. */
export interface MachineState {
  clock: number;
  /** Hart 0. */
  hart: HartState;
  /** Every hart, when the machine has more than one. */
  harts?: HartState[];
  clint: ReturnType<Clint["save"]>;
  plic: ReturnType<Plic["save"]>;
  uart: ReturnType<Uart16550["save"]>;
  rtc: ReturnType<GoldfishRtc["save"]>;
  sbi: ReturnType<HypervisorSbi["save"]> | null;
  disks: ReturnType<VirtioBlk["save"]>[];
  net: ReturnType<VirtioNet["save"]> | null;
  console: ReturnType<VirtioConsole["save"]>;
  rng: ReturnType<VirtioRng["save"]>;
  /** The vsock device (absent in snapshots from before it existed: none). */
  vsock?: ReturnType<VirtioVsock["save"]> | null;
  /** The display devices (absent in snapshots from before displays: none). */
  display?: {
    gpu: ReturnType<VirtioGpu["save"]>;
    keyboard: ReturnType<VirtioInput["save"]>;
    tablet: ReturnType<VirtioInput["save"]>;
  } | null;
  /** The shares' virtio-9p devices (absent in snapshots from before shares: none). */
  shares?: ReturnType<Virtio9p["save"]>[];
  /** Console input typed but not yet read by the guest. */
  input: number[];
}

/** What a running machine has done, for the monitor's metrics. */
export interface MachineMetrics {
  instret: number;
  /** Host time spent running guest code (ms). */
  busyMs: number;
  /** Host time asleep while the guest waited in WFI (ms). */
  idleMs: number;
  mmioExits: number;
  wfiExits: number;
}

const SLICE_INSTRUCTIONS = 200_000;
/** A busy guest hands the event loop a turn this often (ms), so host I/O and timers are served... */
const YIELD_EVERY_MS = 25;
/** ...and after every slice while its network card moved a frame within this many ms: TCP's
 *  acknowledgements then wait a slice (1-3 ms) rather than 25 ms, which bounds throughput. */
const NET_ACTIVE_MS = 100;
/**
 * Longest host sleep while nothing is due (ms). Every event that needs the guest (timer deadlines,
 * the RTC alarm, console input, a network frame, a hart's device access) wakes the loop itself;
 * this bound only limits how long a missed wake-up could last.
 */
const MAX_SLEEP_MS = 1000;

export class VirtMachine {
  readonly bus: Bus;
  /**
   * Hart 0. With one vCPU it runs in this thread; with more (SMP) every hart runs on its own thread
   * and this object only held hart 0's power-on state: use metrics() and saveState() instead.
   */
  readonly hart: Hart;
  readonly cpus: number;
  /** SMP: the hart threads. */
  private readonly threads: HartThreads | null = null;
  private readonly codeMap: SharedCodeMap | null = null;
  /** The dirty-page log (snapshots, migration), or null when off. */
  private dirtyLog: Uint8Array | null = null;
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
  /** virtio-vsock (the guest agent's channel), or null. */
  readonly vsock: VirtioVsock | null;
  /** virtio-gpu, keyboard and tablet, or null without a display. */
  readonly display: MachineDisplay | null;
  /** virtio-9p devices, one per share. */
  readonly shares: readonly Virtio9p[];
  readonly clock: HartClock;
  private readonly diskBackends: BlockBackend[];
  /** The network card's backend (user-mode NAT, a switch port, a migration's stand-in), or null. */
  readonly netBackend: NetBackend | null;
  private closed = false;
  private readonly config: VirtConfig;
  private readonly inputQueue: number[] = [];
  /** How many bytes at the head of inputQueue are terminal answers (see answer()). */
  private answerBytes = 0;
  /** One byte for the UART, without an array per byte. */
  private readonly oneByte = new Uint8Array(1);
  private outBuf = new Uint8Array(4096);
  private outLen = 0;
  private power: PowerOff | null = null;
  private wake: (() => void) | null = null;
  /** performance.now() of the network card's last frame either way. */
  private lastNetIo = -Infinity;
  /** Console input bytes handed to the guest so far (a boot loader's prompt is then wanted). */
  inputTaken = 0;
  private bootLoaderInput = false;
  /** Host time spent asleep while the guest waited (ms). */
  idleMs = 0;
  /** Host time spent running guest slices (ms). */
  busyMs = 0;
  /** Times the guest went to sleep in WFI. */
  wfiExits = 0;
  private paused = false;
  /** SMP: run() is serving the hart threads (they run unless paused). */
  private running = false;
  private lastYield = 0;
  private resumeWaiter: (() => void) | null = null;
  /** The CPU cap: at most this fraction of a host core (Infinity: none), and its budget (ms). */
  private cpuCap = Infinity;
  private capBudgetMs = 0;
  private capStamp = performance.now();
  /** The process's CPU time (µs, all threads: V8's compilers and GC too) at the last accounting. */
  private capCpuStamp = 0;

  /**
   * Builds the board. Disk paths are opened last, after the kernel and firmware checked out; if the
   * constructor throws, the disks it opened are closed again and the backends it was given stay
   * the caller's. Once built, the machine owns every disk and the network backend.
   */
  constructor(config: VirtConfig) {
    this.config = config;
    const cpus = config.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_SMP_HARTS) {
      throw new Error(`a machine has 1 to ${MAX_SMP_HARTS} vCPUs, not ${cpus}`);
    }
    const smp = cpus > 1;
    if (smp && !config.firmware) {
      throw new Error(`${cpus} vCPUs need the OpenSBI firmware: the hypervisor's own SBI (--firmware none) runs one`);
    }
    if (smp && config.clock) throw new Error("an SMP machine keeps its own clock");
    this.cpus = cpus;
    this.clock = config.clock ?? new VmClock();
    const ramSize = config.memoryMiB * 1024 * 1024;
    let ram = config.ram;
    if (smp && ram !== undefined && !ramFits(ram, ramSize, cpus)) {
      // Harts on other threads need RAM they can share (a snapshot's RAM is not).
      const shared = allocateRam(ramSize, cpus);
      ramView(shared, ramSize).set(ramView(ram, ramSize));
      ram = shared;
    }
    this.bus = new Bus(RAM_BASE, ramSize, smp, ram ?? allocateRam(ramSize, cpus));
    const loading = config.ram === undefined;
    // SMP: this hart only lays out the power-on state (the hart threads run the harts); it shares
    // hart 0's area in the memory until hart 0's thread starts, and is not run or written after.
    this.hart = new Hart(this.bus, 0, this.clock);
    this.jit = !smp && (config.engine ?? "jit") === "jit" ? new Jit(this.hart) : null;
    if (smp) this.codeMap = new SharedCodeMap(SharedCodeMap.allocate(ramSize, cpus));
    // Device (DMA) and loader writes to RAM: the translator hears of them itself (SMP: the hart
    // threads, through the shared code map); the dirty-page log is kept here.
    this.bus.onExternalWrite((off, len) => {
      this.codeMap?.writtenRange(off, len);
      const dirty = this.dirtyLog;
      if (dirty === null || len <= 0) return;
      for (let p = off >>> 12, last = (off + len - 1) >>> 12; p <= last; p++) dirty[p] = 1;
    });
    // SMP: the interrupt controllers here reach the harts through the hart threads (made last).
    const targets = smp
      ? Array.from({ length: cpus }, (_, h) => ({
          setPending: (bit: number, level: boolean) => this.threads?.targets[h].setPending(bit, level),
        }))
      : [this.hart];
    const clintRegisters = smp ? Clint.allocate(cpus, true) : undefined;
    this.clint = new Clint(targets, this.clock, clintRegisters);
    this.plic = new Plic(targets);
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

    const raw = config.payload === "raw";
    if (raw && config.initrd) throw new Error("a boot loader takes no initrd: it loads the kernel's own from the disk");
    const header = raw ? rawImageHeader(config.kernel) : parseLinuxImage(config.kernel);
    this.layout = planBoot(RAM_BASE, ramSize, header, config.initrd?.length);
    if (loading) this.bus.load(this.layout.kernelAddr, config.kernel);
    if (loading && config.initrd && this.layout.initrd) this.bus.load(this.layout.initrd.start, config.initrd);

    const hart = this.hart;
    hart.setXNumber(10, 0); // a0: hart id
    hart.setXNumber(11, this.layout.dtbAddr); // a1: device tree
    if (config.firmware) {
      if (this.layout.firmwareAddr + config.firmware.length > this.layout.kernelAddr) {
        throw new Error("firmware image is larger than the 2 MiB below the kernel");
      }
      if (loading) this.bus.load(this.layout.firmwareAddr, config.firmware);
      if (config.firmwareKind === "dynamic") {
        if (loading) this.bus.load(this.layout.fwInfoAddr, fwDynamicInfo(this.layout.kernelAddr));
        hart.setXNumber(12, this.layout.fwInfoAddr);
      }
      hart.pc = this.layout.firmwareAddr;
      this.sbi = null;
    } else {
      this.sbi = new HypervisorSbi([hart], {
        putByte: (b) => this.putByte(b),
        getByte: () => this.nextInput(),
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
    const vsock = config.vsock ?? null;
    const withDisplay = config.display != null;
    const shareSpecs = config.shares ?? [];
    const limit = maxDisks(net !== null, vsock !== null, withDisplay, shareSpecs.length);
    if (limit < 0)
      throw new Error(`a machine has ${VIRTIO_MMIO_SLOTS} virtio slots: too few for ${shareSpecs.length} shares`);
    if (disks.length > limit) {
      const besides = [
        net ? "its network card" : "",
        vsock ? "its vsock device" : "",
        withDisplay ? "a display" : "",
        shareSpecs.length ? `${shareSpecs.length} shares` : "",
      ].filter((x) => x !== "");
      throw new Error(
        `a machine takes at most ${limit} disks${besides.length ? ` besides ${besides.join(" and ")}` : ""}, not ${disks.length}`,
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
    const place = <T extends MmioDevice>(device: T): T => {
      const slot = virtioSlot(slots.length);
      slots.push(slot);
      this.bus.map(slot.base, slot.size, device);
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
    // Last, so the other devices keep the slots they had before vsock existed.
    this.vsock = vsock
      ? place(
          new VirtioVsock(this.bus, irqLine(slots.length), {
            guestCid: vsock.guestCid,
            // Like network frames: while packets move, the event loop gets a turn after every slice.
            kick: () => {
              this.lastNetIo = performance.now();
              kick();
            },
            log,
          }),
        )
      : null;
    const mode = config.display;
    this.display = mode
      ? {
          gpu: place(new VirtioGpu(this.bus, irqLine(slots.length), { width: mode.width, height: mode.height, log })),
          keyboard: place(
            new VirtioInput(this.bus, irqLine(slots.length), KEYBOARD_DESCRIPTION, {
              name: "virtio-keyboard",
              kick,
              log,
            }),
          ),
          tablet: place(
            new VirtioInput(this.bus, irqLine(slots.length), TABLET_DESCRIPTION, { name: "virtio-tablet", kick, log }),
          ),
        }
      : null;
    // After everything else, so machines without shares keep their slots.
    const shares: Virtio9p[] = [];
    try {
      for (const share of shareSpecs) shares.push(place(new Virtio9p(this.bus, irqLine(slots.length), share, { log })));
    } catch (e) {
      for (const d of shares) d.close();
      for (let i = 0; i < opened.length; i++) if (!isBackend(disks[i])) opened[i].close();
      throw e;
    }
    this.shares = shares;

    const rngSeed = new Uint8Array(32);
    (config.entropy ?? ((b, o, n) => randomFillSync(b, o, n)))(rngSeed, 0, rngSeed.length);
    const dtb = buildVirtDeviceTree({
      harts: cpus,
      isa: ISA_STRING,
      mmu: "sv39",
      ramBase: RAM_BASE,
      ramSize,
      timebaseHz: TIMEBASE_HZ,
      bootargs: raw ? "" : config.append,
      rngSeed,
      initrd: this.layout.initrd,
      virtio: slots,
    });
    if (dtb.length > 1024 * 1024) throw new Error("device tree too large");
    if (loading) this.bus.load(this.layout.dtbAddr, dtb);

    if (smp) {
      // Every hart starts in the firmware with its id in a0 (OpenSBI picks the boot hart); they
      // reach the devices here through every window but the CLINT's, which each serves itself.
      const boot = saveHart(hart);
      const states = Array.from({ length: cpus }, (_, h) => {
        const s: HartState = { ...boot, hartId: h, x: [...boot.x] };
        s.x[20] = h;
        return s;
      });
      const log = config.log ?? ((line: string) => process.stderr.write(line + "\n"));
      this.threads = new HartThreads({
        engine: config.engine ?? "jit",
        bus: this.bus,
        clint: clintRegisters as SharedArrayBuffer,
        clock: (this.clock as VmClock).buffer,
        code: this.codeMap!.buffers,
        windows: [
          { base: 0, size: CLINT_BASE },
          { base: CLINT_BASE + CLINT_SIZE, size: RAM_BASE - CLINT_BASE - CLINT_SIZE },
        ],
        states,
        onFailure: (message) => {
          log(`yun: ${message}`);
          this.powerEvent({ kind: "fail", code: 1 });
        },
      });
    }
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

  /** What the guest knows of each disk (a migration's destination must offer the same). */
  diskGeometry(): { size: number; readOnly: boolean; serial: string }[] {
    return this.diskBackends.map((d) => ({ size: d.size, readOnly: d.readOnly, serial: d.serial }));
  }

  /**
   * Flushes and closes every disk and closes the network backend. run() does this when the guest
   * stops; a machine that is never run must be closed by its owner. Safe to call more than once.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.threads?.terminate();
    this.vsock?.closeAll("the VM stopped");
    for (const share of this.shares) share.close();
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

  /** Writes every disk's buffered data through to its file (snapshots, migration). */
  flushDisks(): void {
    for (const d of this.diskBackends) if (!d.readOnly) d.flush();
  }

  /** Queues console input; it is handed to the guest as its UART has room and a reader. */
  input(bytes: Uint8Array): void {
    for (const b of bytes) this.inputQueue.push(b);
    this.wake?.();
    this.threads?.ring();
  }

  /**
   * A terminal's answer to a query the guest wrote (src/vmm/terminal.ts): it goes ahead of the
   * input queued and not yet handed to the guest, after earlier answers still waiting, as a
   * terminal's answer reaches the guest before keys typed after it.
   */
  answer(bytes: Uint8Array): void {
    this.inputQueue.splice(this.answerBytes, 0, ...bytes);
    this.answerBytes += bytes.length;
    this.wake?.();
    this.threads?.ring();
  }

  /** Takes back the console input the guest has not read yet (a reboot hands it to the next boot). */
  takeInput(): Uint8Array {
    const out = Uint8Array.from(this.inputQueue);
    this.inputQueue.length = 0;
    this.answerBytes = 0;
    return out;
  }

  /** The next queued input byte, or -1. */
  private nextInput(): number {
    if (this.inputQueue.length === 0) return -1;
    // Terminal answers are not typed input (inputTaken tells the boot watch somebody typed).
    if (this.answerBytes > 0) this.answerBytes--;
    else this.inputTaken++;
    return this.inputQueue.shift()!;
  }

  /** Asks the machine to stop as if powered off (host-side quit). */
  stop(kind: PowerOff["kind"] = "poweroff", code = 0): void {
    this.powerEvent({ kind, code });
  }

  private powerEvent(e: PowerOff): void {
    if (!this.power) this.power = e;
    this.threads?.ring();
    this.hart.stopRequested = true;
    this.hart.attention = true;
    this.wake?.();
    this.wakePaused();
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

  /**
   * Hands console input to a boot loader that polls the UART without enabling its interrupts
   * (U-Boot, GRUB on U-Boot's EFI console), until the kernel starts; see feedInput. Off by default,
   * so piped input waits for the kernel's shell.
   */
  setBootLoaderInput(on: boolean): void {
    this.bootLoaderInput = on;
    if (on) this.wake?.();
  }

  private feedInput(): void {
    const uart = this.uart;
    while (this.inputQueue.length > 0 && (uart.inputWanted() || (this.bootLoaderInput && uart.inputRoom()))) {
      this.oneByte[0] = this.nextInput();
      uart.pushInput(this.oneByte);
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
    const deadline = this.serviceTimers();
    this.flushOutput();
    return deadline;
  }

  /**
   * Pauses the guest at the next slice boundary: no instruction runs and guest time stands still
   * until resume(). Devices keep their state; frames arriving meanwhile queue in the backend's way.
   */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.threads?.pause();
    if (this.clock instanceof VmClock) this.clock.pause();
    this.hart.stopRequested = true;
    this.hart.attention = true;
    this.wake?.();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.clock instanceof VmClock) this.clock.resume();
    if (this.threads && this.running) this.threads.resume();
    this.hart.attention = true;
    this.resumeWaiter?.();
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Limits the guest to `fraction` of a host core (Infinity: no limit). */
  setCpuCap(fraction: number): void {
    this.cpuCap = fraction > 0 ? fraction : Infinity;
    this.threads?.setCpuCap(this.cpuCap);
    this.capBudgetMs = 0;
    this.capStamp = performance.now();
    this.capCpuStamp = processCpuMicros();
  }

  metrics(): MachineMetrics {
    if (this.threads) return this.threads.totals();
    return {
      instret: this.hart.instret,
      busyMs: this.busyMs,
      idleMs: this.idleMs,
      mmioExits: this.bus.mmioAccesses,
      wfiExits: this.wfiExits,
    };
  }

  /** The machine's state but RAM. Take it while paused (or from a stopped slice) for a consistent picture. */
  saveState(): MachineState {
    const harts = this.threads?.save();
    return {
      clock: this.clock.now(),
      hart: harts ? harts[0] : saveHart(this.hart),
      ...(harts ? { harts } : {}),
      clint: this.clint.save(),
      plic: this.plic.save(),
      uart: this.uart.save(),
      rtc: this.rtc.save(),
      sbi: this.sbi ? this.sbi.save() : null,
      disks: this.disks.map((d) => d.save()),
      net: this.net ? this.net.save() : null,
      console: this.console.save(),
      rng: this.rng.save(),
      vsock: this.vsock ? this.vsock.save() : null,
      display: this.display
        ? {
            gpu: this.display.gpu.save(),
            keyboard: this.display.keyboard.save(),
            tablet: this.display.tablet.save(),
          }
        : null,
      ...(this.shares.length ? { shares: this.shares.map((d) => d.save()) } : {}),
      input: [...this.inputQueue],
    };
  }

  /**
   * Loads a state saved by a machine of the same shape (memory, disks, network card, firmware
   * kind); RAM must already hold the snapshot's contents. Throws with a sentence when the shapes
   * differ or a device refuses its state.
   */
  restoreState(s: MachineState): void {
    const bad = checkHartState(s.hart);
    if (bad) throw new Error(`snapshot: ${bad}`);
    const cpus = s.harts === undefined ? 1 : Array.isArray(s.harts) ? s.harts.length : -1;
    if (cpus !== this.cpus) throw new Error(`snapshot: the machine had ${cpus} vCPUs, this one has ${this.cpus}`);
    for (const h of s.harts ?? []) {
      const why = checkHartState(h);
      if (why) throw new Error(`snapshot: ${why}`);
    }
    if (!Array.isArray(s.disks) || s.disks.length !== this.disks.length) {
      throw new Error(`snapshot: the machine had ${s.disks?.length ?? "no"} disks, this one has ${this.disks.length}`);
    }
    if ((s.net === null) !== (this.net === null))
      throw new Error("snapshot: network card present in only one of the machines");
    if ((s.sbi === null) !== (this.sbi === null)) throw new Error("snapshot: firmware kind differs");
    if (((s.vsock ?? null) === null) !== (this.vsock === null)) {
      throw new Error("snapshot: vsock device present in only one of the machines");
    }
    if ((s.display == null) !== (this.display === null)) {
      throw new Error(
        `snapshot: the machine had ${s.display == null ? "no display" : "a display"}, this one ${this.display ? "has one" : "has none"}`,
      );
    }
    if ((s.shares?.length ?? 0) !== this.shares.length) {
      throw new Error(`snapshot: the machine had ${s.shares?.length ?? 0} shares, this one has ${this.shares.length}`);
    }
    if (typeof s.clock !== "number" || !Number.isFinite(s.clock))
      throw new Error("snapshot: the clock is not a number");
    if (!Array.isArray(s.input)) throw new Error("snapshot: the console input queue is not a list");
    // A device state of the wrong shape would fail deep inside the device: name the device instead.
    // The machine may be partly loaded then; callers discard it (VmMonitor closes it or goes back).
    const load = (what: string, restore: () => void): void => {
      try {
        restore();
      } catch (e) {
        throw new Error(`snapshot: the ${what} state is malformed (${(e as Error).message})`);
      }
    };
    if (this.clock instanceof VmClock) this.clock.set(s.clock);
    if (this.threads) this.threads.restore(s.harts!);
    else restoreHart(this.hart, s.hart);
    load("CLINT", () => this.clint.restore(s.clint));
    load("PLIC", () => this.plic.restore(s.plic));
    load("UART", () => this.uart.restore(s.uart));
    load("RTC", () => this.rtc.restore(s.rtc));
    if (this.sbi && s.sbi) load("SBI", () => this.sbi!.restore(s.sbi!));
    this.disks.forEach((d, i) => load(`disk ${i}`, () => d.restore(s.disks[i])));
    if (this.net && s.net) load("network card", () => this.net!.restore(s.net!));
    load("virtio console", () => this.console.restore(s.console));
    load("virtio-rng", () => this.rng.restore(s.rng));
    if (this.vsock && s.vsock) load("virtio-vsock", () => this.vsock!.restore(s.vsock!));
    this.vsock?.deliverPendingEvents();
    if (this.display && s.display) {
      const d = this.display;
      const saved = s.display;
      load("virtio-gpu", () => d.gpu.restore(saved.gpu));
      load("virtio keyboard", () => d.keyboard.restore(saved.keyboard));
      load("virtio tablet", () => d.tablet.restore(saved.tablet));
    }
    this.shares.forEach((d, i) => load(`share ${d.tag}`, () => d.restore(s.shares![i])));
    this.inputQueue.length = 0;
    this.answerBytes = 0;
    for (const b of s.input) this.inputQueue.push(Number(b) & 0xff);
    // RAM was replaced wholesale: drop translated code and cached translations.
    this.bus.externalWrite(0, this.bus.ramSize);
  }

  /**
   * Starts (or restarts) the dirty-page log: from now on every page the guest or a device writes is
   * marked. Returns the log of the pages marked since the previous call (null the first time).
   */
  takeDirtyLog(): Uint8Array | null {
    const previous = this.dirtyLog;
    if (this.threads) {
      const buffer = new SharedArrayBuffer(this.bus.ramSize / 4096);
      this.dirtyLog = new Uint8Array(buffer);
      this.threads.setDirtyLog(buffer);
    } else {
      this.dirtyLog = new Uint8Array(this.bus.ramSize / 4096);
      this.hart.dirtyPages = this.dirtyLog;
      this.hart.flushWriteTlb();
    }
    return previous;
  }

  /** Stops the dirty-page log. */
  stopDirtyLog(): void {
    this.dirtyLog = null;
    if (this.threads) this.threads.setDirtyLog(null);
    else this.hart.dirtyPages = null;
  }

  /** How the machine stopped, or null while it runs. */
  get powerState(): PowerOff | null {
    return this.power;
  }

  /** Runs the guest until it powers off, resets or fails. */
  async run(): Promise<PowerOff> {
    if (this.threads) return this.runThreads(this.threads);
    const hart = this.hart;
    let lastYield = performance.now();
    while (this.power === null) {
      if (this.paused) {
        this.flushOutput();
        await new Promise<void>((resolve) => (this.resumeWaiter = resolve));
        this.resumeWaiter = null;
        lastYield = performance.now();
        this.capStamp = lastYield;
        this.capCpuStamp = processCpuMicros();
        continue;
      }
      this.feedInput();
      if (!hart.waiting) {
        const t0 = performance.now();
        hart.run(SLICE_INSTRUCTIONS);
        const t1 = performance.now();
        this.busyMs += t1 - t0;
        if (this.cpuCap !== Infinity) {
          // A token bucket: the cap earns budget with wall time; the process's CPU time spends it
          // (guest slices, and the translator's compiles, GC and device work they cause); in
          // debt, sleep. What is capped is what a host sees the VM use.
          const cpu = processCpuMicros();
          this.capBudgetMs = Math.min(
            this.capBudgetMs + (t1 - this.capStamp) * this.cpuCap - (cpu - this.capCpuStamp) / 1000,
            20,
          );
          this.capStamp = t1;
          this.capCpuStamp = cpu;
          if (this.capBudgetMs < 0) {
            // Timers and output are served before the guest sleeps off its debt: a capped guest
            // that is always in debt must still get its timer interrupts (they preempt its busy
            // loops) and have its console flushed.
            this.serviceTimers();
            this.flushOutput();
            await new Promise<void>((resolve) => setTimeout(resolve, -this.capBudgetMs / this.cpuCap));
            lastYield = performance.now();
            continue;
          }
        }
        if (hart.waiting) this.wfiExits++;
      }
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
          const ms = Math.min(
            MAX_SLEEP_MS,
            Math.max(0, (deadline - this.clock.now()) / (TIMEBASE_HZ / 1000)),
            this.rtc.nsUntilAlarm() / 1e6,
          );
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

  /**
   * SMP: the harts run on their threads; this thread serves their device accesses, console I/O and
   * timers until the machine stops.
   */
  private async runThreads(threads: HartThreads): Promise<PowerOff> {
    this.running = true;
    if (!this.paused) threads.resume();
    // Atomics.waitAsync keeps no handle on Node's event loop (and the hart workers are unref'd): a
    // running VM holds the process open itself until its threads are gone, as the single-hart
    // loop's timers do.
    const keepAlive = setInterval(() => {}, 1 << 30);
    try {
      let lastService = 0;
      let woke = true;
      while (this.power === null) {
        let seen = threads.doorbell();
        let served = threads.serve();
        // A hart that just made a device access often makes the next right away (a console line, a
        // virtqueue notification and its interrupt claim): answer those without a trip through the
        // event loop (a futex wake-up costs tens of µs in a nested VM), spinning a few µs for each.
        for (let spin = 0; served > 0 && served < 256 && spin < 2000; spin++) {
          const bell = threads.doorbell();
          if (bell === seen) continue;
          seen = bell;
          const more = threads.serve();
          served += more;
          if (more > 0) spin = 0;
        }
        const now = performance.now();
        // After a wake-up (input, a hart's doorbell, a timeout) and while serving a stream of
        // accesses (throttled), hand over input, fire the RTC alarm and flush console output.
        if (woke || served > 0 || now - lastService > 5) {
          woke = false;
          lastService = now;
          this.feedInput();
          this.rtc.update();
          this.flushOutput();
        }
        if (this.power !== null) break;
        if (served === 0) {
          // Nothing to serve: sleep until a hart rings, input comes (input() rings too), or the
          // RTC alarm is due. The harts keep their own timers, so an idle guest costs this
          // thread no wake-ups at all (a fixed 10 ms poll here was 100 a second).
          await threads.waitAsync(seen, Math.min(MAX_SLEEP_MS, this.rtc.nsUntilAlarm() / 1e6));
          woke = true;
        } else if (now - this.lastYield > YIELD_EVERY_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          this.lastYield = performance.now();
        }
      }
      this.running = false;
      this.flushOutput();
      await threads.exit();
    } finally {
      clearInterval(keepAlive);
    }
    this.flushOutput();
    this.close();
    return this.power;
  }

  /** Wakes a run() that is waiting for resume() so it can see a power event (stop while paused). */
  private wakePaused(): void {
    this.resumeWaiter?.();
  }
}

/**
 * The MMIO registers of every board device: the 16550 UART, the goldfish RTC, syscon, the CLINT,
 * the PLIC and the virtio-mmio transport (behind a virtio-blk). A case is a sequence of reads and
 * writes at offsets biased towards the real registers (and anywhere in the window), of every size,
 * with time passing and device lines moving in between.
 *
 * Properties: no access throws; a read of n bytes answers an integer that fits n bytes; the state
 * survives save() -> JSON -> restore() into a fresh device unchanged; and after the garbage a
 * well-formed use of the device still works.
 */
import fc from "fast-check";
import { Uart16550, UART_SIZE } from "../../src/devices/uart.js";
import { GoldfishRtc, RTC_SIZE } from "../../src/devices/rtc.js";
import { SysCon, SYSCON_SIZE, type PowerEvent } from "../../src/devices/syscon.js";
import { Clint, CLINT_SIZE } from "../../src/machine/clint.js";
import { Plic, PLIC_SIZE } from "../../src/machine/plic.js";
import type { MmioDevice } from "../../src/cpu/bus.js";
import { REG, VIRTIO_MMIO_SIZE } from "../../src/devices/virtio/mmio.js";
import { VirtioBlk } from "../../src/devices/virtio/blk.js";
import { Guest } from "../../test/devices/virtio/driver.js";
import { MemDisk } from "../../test/devices/virtio/blkhelp.js";
import { leakGuard, must, timed, type Campaign, type Session } from "../campaign.js";

type Op =
  | { kind: "r"; off: number; size: 1 | 2 | 4 }
  | { kind: "w"; off: number; size: 1 | 2 | 4; value: number }
  /** Time passes (CLINT, RTC) or a device line / host input moves (PLIC, UART). */
  | { kind: "event"; value: number };

interface Target {
  dev: MmioDevice & { save(): unknown; restore(s: never): void };
  /** A fresh device of the same kind, for the save/restore round trip. */
  fresh: () => MmioDevice & { save(): unknown; restore(s: never): void };
  event: (value: number) => void;
  /** Back to a clean state and one well-formed use; fails the case if it does not work. */
  works: () => void;
}

const sizes = fc.constantFrom<1 | 2 | 4>(1, 2, 4);

function opArb(window: number, registers: number[]): fc.Arbitrary<Op> {
  const off = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.tuple(fc.constantFrom(...registers), fc.nat(3)).map(([r, d]) => Math.min(r + d, window - 1)),
    },
    { weight: 1, arbitrary: fc.nat(window - 1) },
  );
  const value = fc.oneof(fc.constantFrom(0, 1, 0xff, 0xffff_ffff, 0x5555, 0x7777, 0x3333), fc.nat(0xffff_ffff));
  return fc.oneof(
    fc.record({ kind: fc.constant("r" as const), off, size: sizes }),
    fc.record({ kind: fc.constant("w" as const), off, size: sizes, value }),
    fc.record({ kind: fc.constant("event" as const), value: fc.nat(0xffff_ffff) }),
  );
}

function registerCampaign(name: string, window: number, registers: number[], build: () => Target): Campaign {
  return {
    name,
    surface: "device",
    testRuns: 1500,
    batchRuns: 10000,
    open(): Session {
      const t = build();
      const property = fc.property(
        fc.array(opArb(window, registers), { maxLength: 40 }),
        timed((ops: Op[]) => {
          for (const op of ops) {
            if (op.kind === "r") {
              const v = t.dev.read(op.off, op.size);
              must(
                Number.isInteger(v) && v >= 0 && v < 2 ** (8 * op.size),
                `a ${op.size}-byte read at 0x${op.off.toString(16)} answered ${v}`,
              );
            } else if (op.kind === "w") t.dev.write(op.off, op.value, op.size);
            else t.event(op.value);
          }
          const saved = JSON.stringify(t.dev.save());
          const twin = t.fresh();
          twin.restore(JSON.parse(saved) as never);
          must(JSON.stringify(twin.save()) === saved, `save/restore round trip differs: ${saved}`);
          t.works();
        }),
      );
      return { property, check: leakGuard(name), close: () => {} };
    },
  };
}

/** Interrupt targets that remember their mip bits. */
function harts(n: number): { bits: number[]; targets: { setPending(bit: number, level: boolean): void }[] } {
  const bits = new Array<number>(n).fill(0);
  const targets = bits.map((_, i) => ({
    setPending(bit: number, level: boolean) {
      bits[i] = level ? bits[i] | (1 << bit) : bits[i] & ~(1 << bit);
    },
  }));
  return { bits, targets };
}

export const uartCampaign = registerCampaign("mmio-uart", UART_SIZE, [0, 1, 2, 3, 4, 5, 6, 7], () => {
  let irq = false;
  const out: number[] = [];
  const dev = new Uart16550(
    (l) => (irq = l),
    (b) => out.push(b),
  );
  return {
    dev,
    fresh: () =>
      new Uart16550(
        () => {},
        () => {},
      ),
    event: (v) => dev.pushInput([v & 0xff, (v >>> 8) & 0xff].slice(0, 1 + (v & 1))),
    works: () => {
      // 8N1 (DLAB off), no loopback, drain the input (bounded: the FIFO is finite), one byte out.
      dev.write(3, 0x03, 1);
      dev.write(4, 0, 1);
      for (let i = 0; i < 4096 && dev.read(5, 1) & 1; i++) dev.read(0, 1);
      must((dev.read(5, 1) & 1) === 0, "the receive FIFO never empties");
      out.length = 0;
      dev.write(0, 0x41, 1);
      must(out.length === 1 && out[0] === 0x41, "a byte written to THR did not come out");
      dev.write(1, 0, 1);
      void irq;
      if (out.length > 1 << 16) out.length = 0;
    },
  };
});

export const rtcCampaign = registerCampaign("mmio-rtc", RTC_SIZE, [0, 4, 8, 0xc, 0x10, 0x14, 0x18, 0x1c], () => {
  let now = 1_700_000_000_000_000_000n;
  const dev = new GoldfishRtc(
    () => {},
    () => now,
  );
  return {
    dev,
    fresh: () =>
      new GoldfishRtc(
        () => {},
        () => now,
      ),
    event: (v) => {
      now += BigInt(v) * 1000n;
      dev.update();
    },
    works: () => {
      const lo = dev.read(0, 4);
      const hi = dev.read(4, 4);
      must(Number.isInteger(lo) && Number.isInteger(hi), "the RTC time does not read");
      dev.write(0x1c, 1, 4);
    },
  };
});

export const sysconCampaign = registerCampaign("mmio-syscon", SYSCON_SIZE, [0], () => {
  const events: PowerEvent[] = [];
  const dev = new SysCon((e) => events.push(e));
  return {
    dev,
    fresh: () => new SysCon(() => {}),
    event: () => {},
    works: () => {
      events.length = 0;
      dev.write(0, 0x5555, 4);
      must(events.length === 1 && events[0].kind === "poweroff", "power-off write not seen");
    },
  };
});

export const clintCampaign = registerCampaign(
  "mmio-clint",
  CLINT_SIZE,
  [0, 4, 0x4000, 0x4004, 0x4008, 0x400c, 0xbff8, 0xbffc],
  () => {
    let now = 0;
    const clock = { now: () => now };
    const h = harts(2);
    const dev = new Clint(h.targets, clock);
    return {
      dev,
      fresh: () => new Clint(harts(2).targets, clock),
      event: (v) => {
        now += v % 1_000_000;
        dev.update();
      },
      works: () => {
        dev.write(0, 1, 4);
        must((h.bits[0] & (1 << 3)) !== 0, "MSIP write did not raise hart 0's software interrupt");
        dev.write(0, 0, 4);
        dev.write(0x4000, 0xffff_ffff, 4);
        dev.write(0x4004, 0xffff_ffff, 4);
        dev.update();
        must((h.bits[0] & (1 << 7)) === 0, "MTIP set with mtimecmp at its maximum");
        must(dev.read(0x4000, 4) === 0xffff_ffff, "mtimecmp does not read back");
      },
    };
  },
);

export const plicCampaign = registerCampaign(
  "mmio-plic",
  PLIC_SIZE,
  [0, 4, 0x28, 0x1000, 0x1004, 0x2000, 0x2080, 0x2100, 0x20_0000, 0x20_0004, 0x20_1000, 0x20_1004, 0x20_2004],
  () => {
    const h = harts(2);
    const dev = new Plic(h.targets);
    return {
      dev,
      fresh: () => new Plic(harts(2).targets),
      event: (v) => dev.setLevel(v % 100, (v & 0x100) !== 0),
      works: () => {
        // Quiet every line and complete whatever was claimed, then one interrupt end to end.
        // (A completion counts only in a context that has the source enabled: enable all first.)
        for (let s = 1; s < 96; s++) dev.setLevel(s, false);
        for (let ctx = 0; ctx < 4; ctx++) {
          for (let w = 0; w < 3; w++) dev.write(0x2000 + 0x80 * ctx + 4 * w, 0xffff_ffff, 4);
          for (let s = 1; s < 96; s++) dev.write(0x20_0004 + 0x1000 * ctx, s, 4);
          for (let w = 0; w < 3; w++) dev.write(0x2000 + 0x80 * ctx + 4 * w, 0, 4);
        }
        dev.write(4 * 5, 1, 4);
        dev.write(0x2000, 1 << 5, 4);
        dev.write(0x20_0000, 0, 4);
        dev.setLevel(5, true);
        must((h.bits[0] & (1 << 11)) !== 0, "an enabled, pending source did not raise MEIP");
        const claimed = dev.read(0x20_0004, 4);
        must(claimed === 5, `claim answered ${claimed}, not 5`);
        dev.setLevel(5, false);
        dev.write(0x20_0004, 5, 4);
      },
    };
  },
);

export const virtioRegistersCampaign = registerCampaign(
  "mmio-virtio",
  VIRTIO_MMIO_SIZE,
  [...Object.values(REG), 0x104, 0x108, 0x13c] as number[],
  () => {
    const g = new Guest();
    const disk = new MemDisk(64 * 1024);
    const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: () => {} });
    return {
      dev,
      fresh: () => new VirtioBlk(g.bus, () => {}, disk, { log: () => {} }),
      event: (v) => {
        // Ring memory changes under the device: random words where the rings tend to be.
        const off = (v % 0x8000) & ~3;
        g.bus.ram32[off >>> 2] = Math.imul(v, 0x9e37_79b1);
      },
      works: () => {
        dev.write(REG.STATUS, 0, 4);
        must(dev.read(REG.STATUS, 4) === 0, "reset did not clear the status");
        must(dev.read(REG.MAGIC, 4) === 0x7472_6976 && dev.read(REG.VERSION, 4) === 2, "identity registers changed");
        dev.write(REG.STATUS, 1, 4);
        must(dev.read(REG.STATUS, 4) === 1, "ACKNOWLEDGE did not stick");
        dev.write(REG.STATUS, 0, 4);
      },
    };
  },
);

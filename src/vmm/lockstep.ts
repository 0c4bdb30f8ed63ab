/**
 * A whole machine in lockstep: two identical virt boards, one running the translator and one the
 * interpreter, compared after every translated block (src/cpu/lockstep.ts). Time is virtual: each
 * board's clock counts its own instructions (and skips ahead while the guest waits in WFI), so
 * timer interrupts, the console and the devices see the same history on both sides.
 */
import type { HartClock } from "../cpu/hart.js";
import { Lockstep, type Divergence } from "../cpu/lockstep.js";
import { VirtMachine, type VirtConfig } from "./virt.js";

/** A fixed boot date for the RTC: 2026-01-01T00:00:00Z, in ns. */
const EPOCH_NS = 1_767_225_600_000_000_000n;

/** Deterministic "entropy" (xorshift32), the same sequence on both machines. */
function pseudoEntropy(): (buf: Uint8Array, offset: number, length: number) => void {
  let s = 0x9e3779b9;
  return (buf, offset, length) => {
    for (let i = 0; i < length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      buf[offset + i] = s & 0xff;
    }
  };
}

/** Virtual timebase: 10 MHz at a nominal 100 guest MIPS, plus the time skipped in WFI. */
class InstretClock implements HartClock {
  skipped = 0;
  machine: VirtMachine | null = null;
  now(): number {
    return Math.floor((this.machine?.hart.instret ?? 0) / 10) + this.skipped;
  }
}

export interface LockstepResult {
  /** Instructions both engines retired in agreement. */
  instructions: number;
  /** Translated blocks (or interpreted stretches) compared. */
  steps: number;
  divergence: Divergence | null;
  /** Why the run ended: "poweroff"/"reset"/"fail", "budget", "marker" (the console showed `until`). */
  end: string;
  /** Console output (of the translated machine; the other one must print the same). */
  output: string;
  translatedBlocks: number;
}

const SLICE = 100_000;

export function runLockstep(
  config: Omit<VirtConfig, "engine" | "clock" | "output" | "wallClock" | "entropy">,
  options: { maxInstructions: number; until?: string; threshold?: number; input?: string },
): LockstepResult {
  const clocks = [new InstretClock(), new InstretClock()];
  const outputs = ["", ""];
  const machines = clocks.map(
    (clock, i) =>
      new VirtMachine({
        ...config,
        engine: i === 0 ? "jit" : "interp",
        clock,
        // The RTC counts the same virtual time (100 ns per timebase tick).
        wallClock: () => EPOCH_NS + BigInt(clock.now()) * 100n,
        entropy: pseudoEntropy(),
        output: (bytes) => (outputs[i] += Buffer.from(bytes).toString("latin1")),
      }),
  );
  clocks.forEach((c, i) => (c.machine = machines[i]));
  const [a, b] = machines;
  if (options.input) {
    a.input(Buffer.from(options.input));
    b.input(Buffer.from(options.input));
  }
  // The translated side compiles early (threshold) so that most of the run is translated code.
  a.jit!.detach();
  const ls = new Lockstep(a.hart, b.hart, { threshold: options.threshold ?? 50 });
  let end = "budget";
  let divergence: Divergence | null = null;
  try {
    while (a.hart.instret < options.maxInstructions) {
      if (a.powerState || b.powerState) {
        end = (a.powerState ?? b.powerState)!.kind;
        break;
      }
      if (options.until && outputs[0].includes(options.until)) {
        end = "marker";
        break;
      }
      if (a.hart.waiting && b.hart.waiting) {
        const deadline = Math.min(a.service(), b.service());
        if (a.hart.hasWakeup() || b.hart.hasWakeup()) {
          for (const m of machines) {
            m.hart.waiting = false;
            m.hart.attention = true;
          }
        } else if (deadline !== Infinity) {
          const skip = Math.max(1, deadline - clocks[0].now());
          for (const c of clocks) c.skipped += skip;
          a.service();
          b.service();
        } else {
          end = "both harts wait with nothing to wake them";
          break;
        }
        continue;
      }
      const sliceEnd = (Math.floor(a.hart.instret / SLICE) + 1) * SLICE;
      divergence = ls.run(sliceEnd - a.hart.instret);
      if (divergence !== null) break;
      if (a.hart.waiting !== b.hart.waiting) {
        divergence = {
          instret: a.hart.instret,
          stepPc: a.hart.pc,
          what: "wfi",
          translated: String(a.hart.waiting),
          interpreted: String(b.hart.waiting),
        };
        break;
      }
      if (a.hart.instret >= sliceEnd || a.hart.stopRequested) {
        a.service();
        b.service();
      }
      if (outputs[0] !== outputs[1]) {
        divergence = {
          instret: a.hart.instret,
          stepPc: a.hart.pc,
          what: "console output",
          translated: outputs[0].slice(-80),
          interpreted: outputs[1].slice(-80),
        };
        break;
      }
    }
  } finally {
    a.close();
    b.close();
  }
  return {
    instructions: a.hart.instret,
    steps: ls.steps,
    divergence,
    end,
    output: outputs[0],
    translatedBlocks: ls.jit.stats().translated,
  };
}

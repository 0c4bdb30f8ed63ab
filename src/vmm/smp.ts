/**
 * The hart threads of an SMP machine, seen from the VM's thread (which keeps the devices, the I/O
 * and the control API): starting them, serving their MMIO requests with the machine's bus,
 * raising their external interrupts, and pausing, saving and restoring them.
 *
 * Control operations are synchronous: the VM thread posts a command, wakes the hart, and waits on
 * the doorbell, serving MMIO requests meanwhile (a hart may be inside an access when the command
 * comes), until the hart has answered.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from "node:worker_threads";
import type { Bus } from "../cpu/bus.js";
import type { SharedCodeBuffers } from "../cpu/smp.js";
import type { HartState } from "../cpu/state.js";
import type { InterruptTarget } from "../machine/interrupts.js";
import { MIP_MSIP } from "../machine/interrupts.js";
import * as ch from "./smp-channel.js";
import type { Engine, MachineMetrics } from "./virt.js";

/** Atomics.waitAsync (ES2024; in Node since 16), which this project's TypeScript lib does not declare. */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      a: Int32Array,
      index: number,
      value: number,
      ms: number,
    ): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

/** How long a control request may wait for a hart before the machine is declared broken (ms). */
const CONTROL_TIMEOUT_MS = 30_000;

export interface HartThreadsConfig {
  engine: Engine;
  bus: Bus;
  clint: SharedArrayBuffer;
  clock: SharedArrayBuffer;
  code: SharedCodeBuffers;
  /** Device windows the harts reach through this thread. */
  windows: { base: number; size: number }[];
  /** Every hart's power-on state. */
  states: HartState[];
  /** Called (once) when a hart thread fails: a bug, reported as the machine failing. */
  onFailure: (message: string) => void;
}

export class HartThreads {
  readonly count: number;
  private readonly control: Int32Array;
  private readonly stats: Float64Array;
  private readonly bus: Bus;
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  private readonly served: Int32Array;
  private readonly onFailure: (message: string) => void;
  private failed = false;
  private exited = false;
  /** Interrupt targets for the PLIC and for the VM thread's view of the CLINT. */
  readonly targets: InterruptTarget[];

  constructor(config: HartThreadsConfig) {
    const n = config.states.length;
    this.count = n;
    this.bus = config.bus;
    this.onFailure = config.onFailure;
    this.control = new Int32Array(new SharedArrayBuffer(4 * ch.controlWords(n)));
    this.stats = new Float64Array(new SharedArrayBuffer(8 * ch.HART_STATS * n));
    this.served = new Int32Array(n);
    for (let h = 0; h < n; h++) this.control[ch.hartBase(h) + ch.CTL] = ch.CTL_PAUSE;
    this.targets = config.states.map((_, h) => ({
      setPending: (bit: number, level: boolean) => this.setPending(h, bit, level),
    }));
    const ram = config.bus.ramStorage;
    if (!(config.bus.ramBuffer instanceof SharedArrayBuffer)) throw new Error("SMP needs RAM the threads can share");
    for (let h = 0; h < n; h++) {
      const channel = new MessageChannel();
      const data: ch.HartWorkerData & { port: MessagePort } = {
        hartId: h,
        harts: n,
        engine: config.engine,
        ramBase: config.bus.ramBase,
        ramSize: config.bus.ramSize,
        ram: ram as SharedArrayBuffer | WebAssembly.Memory,
        control: this.control.buffer as SharedArrayBuffer,
        stats: this.stats.buffer as SharedArrayBuffer,
        clint: config.clint,
        clock: config.clock,
        code: config.code,
        windows: config.windows,
        state: config.states[h],
        cpuCap: Infinity,
        dirty: null,
        port: channel.port2,
      };
      const worker = new Worker(new URL("./hart-worker.js", import.meta.url), {
        workerData: data,
        transferList: [channel.port2],
      });
      worker.on("message", (m: { failed?: string }) => {
        if (m.failed) this.fail(`hart ${h} stopped: ${m.failed}`);
      });
      worker.on("error", (e) => this.fail(`hart ${h} stopped: ${e.message}`));
      worker.unref();
      this.workers.push(worker);
      this.ports.push(channel.port1);
    }
  }

  private fail(message: string): void {
    if (this.failed) return;
    this.failed = true;
    this.onFailure(message);
  }

  private word(h: number, w: number): number {
    return ch.hartBase(h) + w;
  }

  /** Wakes hart `h` from WFI or a pause so that it looks at its lines and its mail. */
  wake(h: number): void {
    ch.bump(this.control, this.word(h, ch.WAKE));
  }

  /** An interrupt line of hart `h` as the VM thread's PLIC (MEIP, SEIP) or CLINT (MSIP) drives it. */
  private setPending(h: number, bit: number, level: boolean): void {
    // The hart's thread reads MSIP and MTIP from the shared CLINT registers itself.
    if (bit === MIP_MSIP) {
      if (level) this.wake(h);
      return;
    }
    if (bit !== 9 && bit !== 11) return;
    const at = this.word(h, ch.EXT);
    const mask = 1 << bit;
    const old = level ? Atomics.or(this.control, at, mask) : Atomics.and(this.control, at, ~mask);
    if (((old & mask) !== 0) !== level) this.wake(h);
  }

  /** Serves the MMIO requests waiting; returns how many. */
  serve(): number {
    let done = 0;
    const c = this.control;
    for (let h = 0; h < this.count; h++) {
      const seq = Atomics.load(c, this.word(h, ch.REQ_SEQ));
      if (seq === this.served[h]) continue;
      this.served[h] = seq;
      const kind = c[this.word(h, ch.REQ_KIND)];
      const pa = c[this.word(h, ch.REQ_ADDR)] >>> 0;
      const size = c[this.word(h, ch.REQ_SIZE)] as 1 | 2 | 4;
      let ok = 1;
      let value = 0;
      try {
        if (kind === ch.REQ_WRITE) {
          if (!this.bus.mmioWrite(pa, c[this.word(h, ch.REQ_VALUE)] >>> 0, size)) ok = 0;
        } else {
          const v = this.bus.mmioRead(pa, size);
          if (v === undefined) ok = 0;
          else value = v;
        }
      } catch (e) {
        ok = 0;
        this.fail(`device error at 0x${pa.toString(16)}: ${e instanceof Error ? e.message : String(e)}`);
      }
      c[this.word(h, ch.RESP_VALUE)] = value | 0;
      c[this.word(h, ch.RESP_OK)] = ok;
      Atomics.store(c, this.word(h, ch.RESP_SEQ), seq);
      Atomics.notify(c, this.word(h, ch.RESP_SEQ));
      done++;
    }
    return done;
  }

  /** The doorbell's value: pass it to waitAsync or waitSync. */
  doorbell(): number {
    return Atomics.load(this.control, ch.DOORBELL);
  }

  /** Rings the doorbell from this thread: a waitAsync() returns now. */
  ring(): void {
    ch.bump(this.control, ch.DOORBELL);
  }

  /** Resolves when a hart rings (or after `ms`). */
  async waitAsync(seen: number, ms: number): Promise<void> {
    const r = waitAsync(this.control, ch.DOORBELL, seen, ms);
    if (r.async) await r.value;
  }

  /**
   * Waits in this thread, serving MMIO, until `done()` holds. Throws when a hart failed or does
   * not answer within the control timeout.
   */
  private waitUntil(done: () => boolean, what: string): void {
    const limit = performance.now() + CONTROL_TIMEOUT_MS;
    for (;;) {
      const seen = this.doorbell();
      this.serve();
      if (done()) return;
      if (this.failed) throw new Error(`cannot ${what}: a hart thread failed`);
      if (performance.now() > limit) {
        this.fail(`a hart did not answer "${what}" within ${CONTROL_TIMEOUT_MS / 1000} s`);
        throw new Error(`cannot ${what}: a hart does not answer`);
      }
      Atomics.wait(this.control, ch.DOORBELL, seen, 5);
    }
  }

  private state(h: number): number {
    return Atomics.load(this.control, this.word(h, ch.STATE));
  }

  /** Stops every hart at its next slice boundary and returns when all have. */
  pause(): void {
    for (let h = 0; h < this.count; h++) {
      Atomics.store(this.control, this.word(h, ch.CTL), ch.CTL_PAUSE);
      this.wake(h);
    }
    this.waitUntil(() => {
      for (let h = 0; h < this.count; h++) {
        const s = this.state(h);
        if (s !== ch.STATE_PAUSED && s !== ch.STATE_EXITED) return false;
      }
      return true;
    }, "pause the harts");
  }

  /** Lets every hart run. */
  resume(): void {
    for (let h = 0; h < this.count; h++) {
      Atomics.store(this.control, this.word(h, ch.CTL), ch.CTL_RUN);
      this.wake(h);
    }
  }

  /** Posts a command to hart `h` and returns its answer. */
  private call(h: number, cmd: ch.HartCommand): ch.HartAnswer {
    const acked = Atomics.load(this.control, this.word(h, ch.ACK));
    this.ports[h].postMessage(cmd);
    Atomics.add(this.control, this.word(h, ch.MAIL), 1);
    this.wake(h);
    this.waitUntil(() => Atomics.load(this.control, this.word(h, ch.ACK)) !== acked, cmd.op);
    const m = receiveMessageOnPort(this.ports[h]);
    if (m === undefined) throw new Error(`hart ${h} answered "${cmd.op}" with nothing`);
    const a = m.message as ch.HartAnswer;
    if (!a.ok) throw new Error(`hart ${h}: ${a.error}`);
    return a;
  }

  private callAll(cmd: ch.HartCommand): ch.HartAnswer[] {
    const out: ch.HartAnswer[] = [];
    for (let h = 0; h < this.count; h++) out.push(this.call(h, cmd));
    return out;
  }

  /** Every hart's architectural state; the harts must be paused. */
  save(): HartState[] {
    return this.callAll({ op: "save" }).map((a, h) => {
      if (!a.ok || !a.state) throw new Error(`hart ${h} gave no state`);
      return a.state;
    });
  }

  /** Loads every hart's state (and drops their translated code); the harts must be paused. */
  restore(states: HartState[]): void {
    if (states.length !== this.count) throw new Error(`${states.length} hart states for ${this.count} harts`);
    for (let h = 0; h < this.count; h++) this.call(h, { op: "restore", state: states[h] });
  }

  /** Points every hart's dirty-page log at `buffer` (null: off); each drops its write TLB. */
  setDirtyLog(buffer: SharedArrayBuffer | null): void {
    this.callAll({ op: "dirty-log", buffer });
  }

  /** Gives each hart an equal share of a cap of `fraction` of a host core (Infinity: none). */
  setCpuCap(fraction: number): void {
    this.callAll({ op: "cpu-cap", fraction: fraction === Infinity ? Infinity : fraction / this.count });
  }

  /** RAM was replaced: every hart drops its translated code and TLBs. */
  flushCode(): void {
    this.callAll({ op: "flush-code" });
  }

  /** What the harts have done, summed over them. */
  totals(): MachineMetrics {
    const t: MachineMetrics = { instret: 0, busyMs: 0, idleMs: 0, wfiExits: 0, mmioExits: 0 };
    for (let h = 0; h < this.count; h++) {
      const s = h * ch.HART_STATS;
      t.instret += this.stats[s + ch.STAT_INSTRET];
      t.busyMs += this.stats[s + ch.STAT_BUSY_MS];
      t.idleMs += this.stats[s + ch.STAT_IDLE_MS];
      t.wfiExits += this.stats[s + ch.STAT_WFI];
      t.mmioExits += this.stats[s + ch.STAT_MMIO];
    }
    return t;
  }

  /** Ends the hart threads without waiting (a machine closed without running). */
  terminate(): void {
    if (this.exited) return;
    this.exited = true;
    for (let h = 0; h < this.count; h++) {
      Atomics.store(this.control, this.word(h, ch.CTL), ch.CTL_EXIT);
      this.wake(h);
    }
    for (const w of this.workers) void w.terminate();
    for (const p of this.ports) p.close();
  }

  /** Stops every hart thread for good and waits for the threads to end. */
  async exit(): Promise<void> {
    if (this.exited) return;
    this.exited = true;
    for (let h = 0; h < this.count; h++) {
      Atomics.store(this.control, this.word(h, ch.CTL), ch.CTL_EXIT);
      this.wake(h);
    }
    // A hart inside an MMIO access gets its answer (the devices still exist) and then sees EXIT.
    const limit = performance.now() + 2000;
    for (;;) {
      this.serve();
      let all = true;
      for (let h = 0; h < this.count; h++) {
        const s = this.state(h);
        if (s !== ch.STATE_EXITED && s !== ch.STATE_FAILED) all = false;
      }
      if (all || performance.now() > limit) break;
      await this.waitAsync(this.doorbell(), 5);
    }
    await Promise.all(this.workers.map((w) => w.terminate()));
    for (const p of this.ports) p.close();
  }
}

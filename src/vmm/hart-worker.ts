/**
 * One hart of an SMP machine, on a thread of its own (a worker) over the machine's shared RAM.
 *
 * The hart runs slices of guest code as the single-hart machine does. Its CLINT registers (its
 * timer and its software interrupt) are served here, from memory all harts share; every other
 * device window goes to the VM's thread as a request in the control block, which the hart waits
 * for. Between slices it takes in its interrupt lines, drops code other harts or devices wrote,
 * and answers the VM thread's control requests. In WFI it sleeps on its wake word until an
 * interrupt, an IPI or a control request, or its timer deadline.
 */
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from "node:worker_threads";
import { Bus, type MmioDevice } from "../cpu/bus.js";
import { Hart } from "../cpu/hart.js";
import { Jit } from "../cpu/jit.js";
import { SharedCodeMap } from "../cpu/smp.js";
import { restoreHart, saveHart } from "../cpu/state.js";
import { Clint, CLINT_BASE, CLINT_SIZE } from "../machine/clint.js";
import { MIP_MEIP, MIP_MSIP, MIP_MTIP, MIP_SEIP, TIMEBASE_HZ, type InterruptTarget } from "../machine/interrupts.js";
import { VmClock, processCpuMicros } from "./clock.js";
import * as ch from "./smp-channel.js";

/** Guest instructions between two looks at interrupts and control: IPI latency is about one slice. */
const SLICE_INSTRUCTIONS = 50_000;
/** Spins on an MMIO answer before sleeping: a futex wake-up costs tens of µs in a nested VM. */
const ANSWER_SPINS = 20_000;

const data = workerData as ch.HartWorkerData & { port: MessagePort };
const me = data.hartId;
const control = new Int32Array(data.control);
const base = ch.hartBase(me);
const stats = new Float64Array(data.stats, me * ch.HART_STATS * 8, ch.HART_STATS);

function wakeHart(hart: number): void {
  ch.bump(control, ch.hartBase(hart) + ch.WAKE);
}

function ringDoorbell(): void {
  ch.bump(control, ch.DOORBELL);
}

/** A device window of the VM thread: each access is a request there, answered while the hart waits. */
class RemoteWindow implements MmioDevice {
  readonly name = "vm-thread device";
  private static seq = 0;
  constructor(private readonly windowBase: number) {}

  private request(kind: number, offset: number, value: number, size: number): number | undefined {
    const seq = (RemoteWindow.seq = (RemoteWindow.seq + 1) | 0);
    control[base + ch.REQ_KIND] = kind;
    control[base + ch.REQ_ADDR] = this.windowBase + offset;
    control[base + ch.REQ_SIZE] = size;
    control[base + ch.REQ_VALUE] = value;
    Atomics.store(control, base + ch.REQ_SEQ, seq);
    ringDoorbell();
    let spins = 0;
    while (Atomics.load(control, base + ch.RESP_SEQ) !== seq) {
      if (++spins > ANSWER_SPINS)
        Atomics.wait(control, base + ch.RESP_SEQ, Atomics.load(control, base + ch.RESP_SEQ), 50);
    }
    return control[base + ch.RESP_OK] === 1 ? control[base + ch.RESP_VALUE] >>> 0 : undefined;
  }

  read(offset: number, size: 1 | 2 | 4): number {
    const v = this.request(ch.REQ_READ, offset, 0, size);
    if (v === undefined) throw new AccessFault();
    return v;
  }

  write(offset: number, value: number, size: 1 | 2 | 4): void {
    if (this.request(ch.REQ_WRITE, offset, value, size) === undefined) throw new AccessFault();
  }
}

/** Nothing answered at that address in the VM thread: the bus reports an access fault. */
class AccessFault extends Error {}

/** A bus whose device windows may answer "nothing here" from the other side. */
class WorkerBus extends Bus {
  override mmioRead(pa: number, size: 1 | 2 | 4): number | undefined {
    try {
      return super.mmioRead(pa, size);
    } catch (e) {
      if (e instanceof AccessFault) return undefined;
      throw e;
    }
  }
  override mmioWrite(pa: number, value: number, size: 1 | 2 | 4): boolean {
    try {
      return super.mmioWrite(pa, value, size);
    } catch (e) {
      if (e instanceof AccessFault) return false;
      throw e;
    }
  }
}

const clock = new VmClock(data.clock);
const bus = new WorkerBus(data.ramBase, data.ramSize, true, data.ram);
const hart = new Hart(bus, me, clock);
const jit = data.engine === "jit" ? new Jit(hart, { shared: new SharedCodeMap(data.code) }) : null;
// This thread's CLINT: its own hart is a real target; the others are woken and read their bits themselves.
const targets: InterruptTarget[] = [];
for (let h = 0; h < data.harts; h++) {
  targets.push(
    h === me
      ? hart
      : {
          setPending: (bit, level) => {
            if (level && bit === MIP_MSIP) wakeHart(h);
          },
        },
  );
}
const clint = new Clint(targets, clock, data.clint);
bus.map(CLINT_BASE, CLINT_SIZE, clint);
for (const w of data.windows) bus.map(w.base, w.size, new RemoteWindow(w.base));
restoreHart(hart, data.state);
if (data.dirty) hart.dirtyPages = new Uint8Array(data.dirty);
/** This hart's share of the VM's CPU cap (a fraction of a host core; Infinity: none), and its budget. */
let cpuCap = data.cpuCap;
let capBudgetMs = 0;
let capStamp = performance.now();
let capCpuStamp = processCpuMicros();

const port = data.port;
let mailSeen = 0;

function answer(a: ch.HartAnswer): void {
  port.postMessage(a);
  Atomics.add(control, base + ch.ACK, 1);
  ringDoorbell();
}

function handle(cmd: ch.HartCommand): ch.HartAnswer {
  switch (cmd.op) {
    case "save":
      return { ok: true, state: saveHart(hart) };
    case "restore":
      restoreHart(hart, cmd.state);
      jit?.flush();
      return { ok: true };
    case "dirty-log":
      hart.dirtyPages = cmd.buffer ? new Uint8Array(cmd.buffer) : null;
      hart.flushWriteTlb();
      return { ok: true };
    case "cpu-cap":
      cpuCap = cmd.fraction;
      capBudgetMs = 0;
      capStamp = performance.now();
      capCpuStamp = processCpuMicros();
      return { ok: true };
    case "flush-code":
      jit?.flush();
      hart.flushAllTlbs();
      return { ok: true };
  }
}

function readMail(): void {
  const mail = Atomics.load(control, base + ch.MAIL);
  if (mail === mailSeen) return;
  mailSeen = mail;
  for (;;) {
    const m = receiveMessageOnPort(port);
    if (m === undefined) break;
    let a: ch.HartAnswer;
    try {
      a = handle(m.message as ch.HartCommand);
    } catch (e) {
      a = { ok: false, error: e instanceof Error ? e.message : String(e) };
    }
    answer(a);
  }
}

/** Takes in the interrupt lines that other threads drive. */
function syncInterrupts(): void {
  const ext = Atomics.load(control, base + ch.EXT);
  hart.setPending(MIP_MEIP, (ext & (1 << MIP_MEIP)) !== 0);
  hart.setPending(MIP_SEIP, (ext & (1 << MIP_SEIP)) !== 0);
  hart.setPending(MIP_MSIP, clint.softwarePending(me));
  hart.setPending(MIP_MTIP, clint.timerPending(me));
}

function publishStats(): void {
  stats[ch.STAT_INSTRET] = hart.instret;
  stats[ch.STAT_MMIO] = bus.mmioAccesses;
}

function sleep(ms: number): void {
  const wake = Atomics.load(control, base + ch.WAKE);
  const t0 = performance.now();
  Atomics.wait(control, base + ch.WAKE, wake, ms);
  stats[ch.STAT_IDLE_MS] += performance.now() - t0;
}

function main(): void {
  for (;;) {
    readMail();
    const ctl = Atomics.load(control, base + ch.CTL);
    if (ctl === ch.CTL_EXIT) break;
    if (ctl === ch.CTL_PAUSE) {
      const wake = Atomics.load(control, base + ch.WAKE);
      if (Atomics.load(control, base + ch.STATE) !== ch.STATE_PAUSED) {
        publishStats();
        Atomics.store(control, base + ch.STATE, ch.STATE_PAUSED);
        ringDoorbell();
      }
      if (Atomics.load(control, base + ch.CTL) === ch.CTL_PAUSE && Atomics.load(control, base + ch.MAIL) === mailSeen) {
        Atomics.wait(control, base + ch.WAKE, wake, 1000);
      }
      continue;
    }
    // Read before looking at the interrupt lines: a wake-up after this read is not missed.
    const wake = Atomics.load(control, base + ch.WAKE);
    syncInterrupts();
    jit?.syncShared();
    if (hart.waiting) {
      if (hart.hasWakeup()) {
        hart.waiting = false;
        hart.attention = true;
      } else {
        if (Atomics.load(control, base + ch.STATE) !== ch.STATE_WAITING) {
          publishStats();
          Atomics.store(control, base + ch.STATE, ch.STATE_WAITING);
        }
        // A timer interrupt already pending but masked (OpenSBI clears MTIE when it passes the
        // tick on as STIP, and mtimecmp stays in the past) is no deadline: sleeping 0 ms then
        // would spin until the guest programs its next one.
        const deadline = (hart.mip & (1 << MIP_MTIP)) !== 0 ? Infinity : clint.nextDeadline(me);
        const ms = Math.min(1000, Math.max(0, (deadline - clock.now()) / (TIMEBASE_HZ / 1000)));
        const t0 = performance.now();
        if (ms > 0) Atomics.wait(control, base + ch.WAKE, wake, ms);
        stats[ch.STAT_IDLE_MS] += performance.now() - t0;
        continue;
      }
    }
    Atomics.store(control, base + ch.STATE, ch.STATE_RUNNING);
    const t0 = performance.now();
    hart.run(SLICE_INSTRUCTIONS);
    const t1 = performance.now();
    stats[ch.STAT_BUSY_MS] += t1 - t0;
    if (hart.waiting) stats[ch.STAT_WFI]++;
    publishStats();
    if (cpuCap !== Infinity) {
      // A token bucket per hart: its share of the cap earns budget with wall time, and its share of
      // the process's CPU time (every hart, the VM thread, V8's compilers and GC) spends it, so the
      // whole VM uses what its cap says.
      const cpu = processCpuMicros();
      capBudgetMs = Math.min(capBudgetMs + (t1 - capStamp) * cpuCap - (cpu - capCpuStamp) / 1000 / data.harts, 20);
      capStamp = t1;
      capCpuStamp = cpu;
      if (capBudgetMs < 0) sleep(-capBudgetMs / cpuCap);
    }
  }
  publishStats();
  Atomics.store(control, base + ch.STATE, ch.STATE_EXITED);
  ringDoorbell();
}

try {
  main();
} catch (e) {
  const message = e instanceof Error ? (e.stack ?? e.message) : String(e);
  parentPort?.postMessage({ failed: message });
  Atomics.store(control, base + ch.STATE, ch.STATE_FAILED);
  ringDoorbell();
}

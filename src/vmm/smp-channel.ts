/**
 * The words that the VM's thread (devices, I/O, control) and its hart threads share, and what
 * crosses between them. One Int32Array over a SharedArrayBuffer: a global part, then a block per
 * hart. Everything that happens per instruction stays inside a hart's thread; these words are
 * touched at slice boundaries, on MMIO accesses and on control requests.
 */
import type { HartState } from "../cpu/state.js";
import type { SharedCodeBuffers } from "../cpu/smp.js";
import type { Engine } from "./virt.js";

/** Global words. */
export const DOORBELL = 0; // bumped by a hart thread that wants the VM thread's attention
export const GLOBAL_WORDS = 16;

/** Per-hart words, at GLOBAL_WORDS + hart * HART_WORDS. */
export const CTL = 0; // what the VM thread wants: CTL_RUN, CTL_PAUSE, CTL_EXIT
export const WAKE = 1; // bumped to wake the hart's thread from a wait (IPI, interrupt, control)
export const EXT = 2; // external interrupt levels from the PLIC: bit MIP_MEIP, bit MIP_SEIP
export const STATE = 3; // what the hart thread is doing: STATE_*
export const REQ_SEQ = 4; // MMIO request: sequence number, kind, address, size, value
export const REQ_KIND = 5;
export const REQ_ADDR = 6;
export const REQ_SIZE = 7;
export const REQ_VALUE = 8;
export const RESP_SEQ = 9; // MMIO answer: sequence number, value, ok (0: access fault)
export const RESP_VALUE = 10;
export const RESP_OK = 11;
export const MAIL = 12; // bumped by the VM thread after posting a command to the hart's port
export const ACK = 13; // bumped by the hart thread after answering a command
export const HART_WORDS = 16;

export const CTL_RUN = 0;
export const CTL_PAUSE = 1;
export const CTL_EXIT = 2;

export const STATE_STARTING = 0;
export const STATE_RUNNING = 1;
export const STATE_WAITING = 2;
export const STATE_PAUSED = 3;
export const STATE_EXITED = 4;
export const STATE_FAILED = 5;

export const REQ_READ = 0;
export const REQ_WRITE = 1;

/** Per-hart counters (Float64Array, HART_STATS per hart), written by the hart thread after each slice. */
export const STAT_INSTRET = 0;
export const STAT_BUSY_MS = 1;
export const STAT_IDLE_MS = 2;
export const STAT_WFI = 3;
export const STAT_MMIO = 4;
export const HART_STATS = 8;

export function controlWords(harts: number): number {
  return GLOBAL_WORDS + harts * HART_WORDS;
}

export function hartBase(hart: number): number {
  return GLOBAL_WORDS + hart * HART_WORDS;
}

/** Bumps a counter word and wakes whoever waits on it (a hart's WAKE word, the DOORBELL). */
export function bump(control: Int32Array, index: number): void {
  Atomics.add(control, index, 1);
  Atomics.notify(control, index);
}

/** What a hart thread starts from. */
export interface HartWorkerData {
  hartId: number;
  harts: number;
  engine: Engine;
  ramBase: number;
  ramSize: number;
  /** Shared RAM: a shared WebAssembly memory (so the hart translates to WebAssembly) or a buffer. */
  ram: SharedArrayBuffer | WebAssembly.Memory;
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  clint: SharedArrayBuffer;
  clock: SharedArrayBuffer;
  code: SharedCodeBuffers;
  /** Physical windows served by the VM thread's devices. */
  windows: { base: number; size: number }[];
  /** The hart's state at power-on. */
  state: HartState;
  /** At most this fraction of a host core (Infinity: none). */
  cpuCap: number;
  /** The dirty-page log, if one is on. */
  dirty: SharedArrayBuffer | null;
}

/** Commands the VM thread posts to a hart thread's port; each gets one answer. */
export type HartCommand =
  | { op: "save" }
  | { op: "restore"; state: HartState }
  | { op: "dirty-log"; buffer: SharedArrayBuffer | null }
  | { op: "cpu-cap"; fraction: number }
  | { op: "flush-code" };

export type HartAnswer = { ok: true; state?: HartState } | { ok: false; error: string };

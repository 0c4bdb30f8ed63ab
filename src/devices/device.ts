/**
 * Device contracts. The MMIO access contract lives with the bus in the CPU layer (the lowest
 * layer that dispatches accesses); devices re-export it from here.
 */
export type { MmioDevice } from "../cpu/bus.js";

/** A device's interrupt output: drives one PLIC source line high or low. */
export type IrqLine = (level: boolean) => void;

/** Parts with state that snapshots must carry return plain, JSON-serializable data. */
export interface Persistent<S> {
  save(): S;
  restore(state: S): void;
}

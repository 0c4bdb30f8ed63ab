/**
 * Device contracts. The MMIO access contract lives with the bus in the CPU layer (the lowest layer
 * that dispatches accesses) and the persistence contract in the machine layer; devices use them
 * from here.
 */
export type { MmioDevice } from "../cpu/bus.js";
export type { Persistent } from "../machine/persist.js";

/** A device's interrupt output: drives one PLIC source line high or low. */
export type IrqLine = (level: boolean) => void;

/** What a hart exposes to interrupt controllers: set or clear a bit of its mip CSR (MSIP=3, MTIP=7, SEIP=9, MEIP=11). */
export interface InterruptTarget {
  setPending(bit: number, level: boolean): void;
}

/** Machine timer source: mtime in ticks of the 10 MHz timebase. */
export interface Clock {
  now(): number;
}

export const TIMEBASE_HZ = 10_000_000;

export const MIP_MSIP = 3;
export const MIP_MTIP = 7;
export const MIP_SEIP = 9;
export const MIP_MEIP = 11;

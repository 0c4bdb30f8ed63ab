/**
 * A hart's architectural state as plain data, for snapshots and live migration.
 *
 * Everything a program can observe is here: registers, pc, privilege, the CSRs, instret, the LR
 * reservation and whether the hart sleeps in WFI. Caches (TLBs, translated code) are not state:
 * restoring drops them.
 */
import type { Hart } from "./hart.js";

/** Scalar fields of Hart that hold architectural state (numbers or booleans). */
const SCALARS = [
  "pc",
  "priv",
  "fflags",
  "frm",
  "mstatus",
  "mie",
  "mip",
  "medeleg",
  "mideleg",
  "mtvec",
  "stvec",
  "mepc",
  "sepc",
  "mcauseLo",
  "mcauseInterrupt",
  "scauseLo",
  "scauseInterrupt",
  "mtvalLo",
  "mtvalHi",
  "stvalLo",
  "stvalHi",
  "satpLo",
  "satpHi",
  "mcounteren",
  "scounteren",
  "menvcfg",
  "senvcfg",
  "mcountinhibit",
  "instret",
  "reservationValid",
  "reservationAddr",
  "waiting",
] as const;

type Scalar = (typeof SCALARS)[number];

export interface HartState {
  hartId: number;
  scalars: Record<Scalar, number | boolean>;
  x: number[];
  f: number[];
  mscratch: number[];
  sscratch: number[];
  pmpcfg: number[];
  pmpaddr: number[];
}

export function saveHart(h: Hart): HartState {
  const scalars = {} as Record<Scalar, number | boolean>;
  for (const k of SCALARS) scalars[k] = h[k];
  return {
    hartId: h.hartId,
    scalars,
    x: Array.from(h.x),
    f: Array.from(h.f),
    mscratch: Array.from(h.mscratch),
    sscratch: Array.from(h.sscratch),
    pmpcfg: Array.from(h.pmpcfg),
    pmpaddr: Array.from(h.pmpaddr),
  };
}

/** Why `s` cannot be a hart's state, or null when it can. */
export function checkHartState(s: unknown): string | null {
  if (typeof s !== "object" || s === null) return "hart state is not an object";
  const st = s as Partial<HartState>;
  const arrays: [keyof HartState, number][] = [
    ["x", 64],
    ["f", 64],
    ["mscratch", 2],
    ["sscratch", 2],
    ["pmpcfg", 32],
    ["pmpaddr", 64],
  ];
  for (const [k, n] of arrays) {
    const a = st[k];
    if (!Array.isArray(a) || a.length !== n || !a.every((v) => typeof v === "number" && Number.isFinite(v))) {
      return `hart state field ${k} is not ${n} numbers`;
    }
  }
  if (typeof st.scalars !== "object" || st.scalars === null) return "hart state has no scalars";
  for (const k of SCALARS) {
    const v = (st.scalars as Record<string, unknown>)[k];
    if (typeof v !== "number" && typeof v !== "boolean") return `hart state field ${k} is missing`;
  }
  const priv = st.scalars.priv;
  if (priv !== 0 && priv !== 1 && priv !== 3) return `hart state has privilege ${String(priv)}`;
  return null;
}

/** Loads `s` (checked with checkHartState) into `h` and drops its cached translations. */
export function restoreHart(h: Hart, s: HartState): void {
  const target = h as unknown as Record<Scalar, number | boolean>;
  for (const k of SCALARS) target[k] = s.scalars[k];
  h.x.set(s.x);
  h.f.set(s.f);
  h.mscratch.set(s.mscratch);
  h.sscratch.set(s.sscratch);
  h.pmpcfg.set(s.pmpcfg);
  h.pmpaddr.set(s.pmpaddr);
  h.flushAllTlbs();
  h.attention = true;
}

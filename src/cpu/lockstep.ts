/**
 * Lockstep: the translator checked against the interpreter. Two harts start from the same state
 * on separate copies of memory; the translated one runs one block (or one interpreted stretch),
 * the reference interprets exactly as many instructions, and their architectural state must be
 * equal. The first difference is reported with the pc and instret where it appeared.
 */
import type { Hart } from "./hart.js";
import { Jit, type Backend } from "./jit.js";

export interface Divergence {
  /** instret of both harts when the difference was seen. */
  instret: number;
  /** pc of the translated hart before the step that diverged. */
  stepPc: number;
  what: string;
  translated: string;
  interpreted: string;
}

/** CSRs compared after every step (the ones traps, xRET and the MMU touch). */
const COMPARED_CSRS: [string, number][] = [
  ["mstatus", 0x300],
  ["mie", 0x304],
  ["mip", 0x344],
  ["mepc", 0x341],
  ["mcause", 0x342],
  ["mtval", 0x343],
  ["sepc", 0x141],
  ["scause", 0x142],
  ["stval", 0x143],
  ["satp", 0x180],
];

const hex = (v: bigint | number): string => "0x" + BigInt.asUintN(64, BigInt(v)).toString(16);

/** The first architectural difference between two harts, or null. */
export function compareHarts(a: Hart, b: Hart): Omit<Divergence, "instret" | "stepPc"> | null {
  if (a.pc !== b.pc) return { what: "pc", translated: hex(a.pc), interpreted: hex(b.pc) };
  if (a.priv !== b.priv) return { what: "privilege", translated: String(a.priv), interpreted: String(b.priv) };
  if (a.instret !== b.instret)
    return { what: "instret", translated: String(a.instret), interpreted: String(b.instret) };
  for (let i = 0; i < 64; i++) {
    if (a.x[i] !== b.x[i])
      return { what: `x${i >> 1}`, translated: hex(a.getX(i >> 1)), interpreted: hex(b.getX(i >> 1)) };
  }
  for (let i = 0; i < 64; i++) {
    if (a.f[i] !== b.f[i]) return { what: `f${i >> 1}`, translated: String(a.f[i]), interpreted: String(b.f[i]) };
  }
  if (a.fflags !== b.fflags || a.frm !== b.frm) {
    return { what: "fcsr", translated: `${a.frm}/${a.fflags}`, interpreted: `${b.frm}/${b.fflags}` };
  }
  if (a.waiting !== b.waiting) return { what: "wfi", translated: String(a.waiting), interpreted: String(b.waiting) };
  if (a.reservationValid !== b.reservationValid) {
    return { what: "reservation", translated: String(a.reservationValid), interpreted: String(b.reservationValid) };
  }
  const sa = a.priv,
    sb = b.priv;
  for (const [name, n] of COMPARED_CSRS) {
    const va = a.getCsr(n),
      vb = b.getCsr(n);
    if (va !== vb) return { what: name, translated: hex(va), interpreted: hex(vb) };
  }
  if (a.priv !== sa || b.priv !== sb) throw new Error("lockstep: reading CSRs changed privilege");
  return null;
}

export class Lockstep {
  readonly jit: Jit;
  /** Steps taken (translated blocks or interpreted stretches). */
  steps = 0;

  constructor(
    readonly translated: Hart,
    readonly reference: Hart,
    options: { threshold?: number; backend?: Backend } = {},
  ) {
    if (reference.translator !== null) throw new Error("lockstep: the reference hart must interpret");
    // One block per WebAssembly module: blocks run translated from their threshold on, not a batch later.
    this.jit =
      translated.translator instanceof Jit ? translated.translator : new Jit(translated, { batch: 1, ...options });
    this.jit.singleStep = true;
  }

  /**
   * Runs up to `budget` instructions in lockstep. Returns the first divergence, or null when the
   * budget ran out or both harts wait (WFI) or stop.
   */
  run(budget: number): Divergence | null {
    const t = this.translated,
      r = this.reference;
    const end = t.instret + budget;
    while (t.instret < end) {
      const stepPc = t.pc;
      const n = t.run(end - t.instret);
      r.run(n);
      // One engine may have taken an interrupt at this boundary already: bring the other there too.
      t.serviceInterrupts();
      r.serviceInterrupts();
      this.steps++;
      const d = compareHarts(t, r);
      if (d !== null) return { instret: t.instret, stepPc, ...d };
      if (n === 0 && (t.waiting || t.stopRequested)) return null;
    }
    return null;
  }

  /** First differing RAM word offset (bytes), or -1 when both memories are equal. */
  static compareMemory(a: Hart, b: Hart): number {
    const wa = a.ram32,
      wb = b.ram32;
    for (let i = 0; i < wa.length; i++) if (wa[i] !== wb[i]) return i * 4;
    return -1;
  }
}

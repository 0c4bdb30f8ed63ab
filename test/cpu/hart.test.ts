/**
 * Instruction-level tests of the hart's privileged architecture: traps and their CSR state,
 * delegation, xRET, interrupts and their priority, WFI, misaligned accesses, LR/SC and AMOs, and
 * counter access control. Each test builds a tiny program in RAM with the rv-asm encoder and
 * steps the hart through it.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Bus } from "../../src/cpu/bus.js";
import { Hart, PRIV_M, PRIV_S, PRIV_U } from "../../src/cpu/hart.js";
import {
  CSR,
  MSTATUS_SIE,
  MSTATUS_MIE,
  MSTATUS_SPIE,
  MSTATUS_MPIE,
  MSTATUS_SPP,
  MSTATUS_MPP,
  MSTATUS_MPP_SHIFT,
  MSTATUS_MPRV,
  MSTATUS_TSR,
  MSTATUS_TW,
  MSTATUS_FS,
} from "../../src/cpu/csr.js";
import * as A from "../support/rv-asm.js";
import { withTestEngine } from "../support/engine.js";

// ---------------------------------------------------------------------------------------------
// Harness

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 1 << 20;
const MTRAP = RAM_BASE + 0x100; // M-mode trap handler: a self-loop
const STRAP = RAM_BASE + 0x200; // S-mode trap handler: a self-loop
const CODE = RAM_BASE + 0x1000;
const DATA = RAM_BASE + 0x8000;

const T0 = 5,
  T1 = 6,
  T2 = 7,
  A0 = 10,
  A1 = 11,
  A2 = 12;
const INTERRUPT = 1n << 63n;

interface Machine {
  bus: Bus;
  hart: Hart;
  clock: { t: number; now(): number };
  dv: DataView;
}

function machine(): Machine {
  const bus = new Bus(RAM_BASE, RAM_SIZE);
  const clock = {
    t: 0,
    now(): number {
      return this.t;
    },
  };
  const hart = withTestEngine(new Hart(bus, 0, clock));
  const m = { bus, hart, clock, dv: new DataView(bus.ramBuffer) };
  code(m, MTRAP, [A.jal(0, 0)]);
  code(m, STRAP, [A.jal(0, 0)]);
  hart.setCsr(CSR.mtvec, BigInt(MTRAP));
  hart.setCsr(CSR.stvec, BigInt(STRAP));
  hart.pc = CODE;
  return m;
}

/** Writes instructions (16-bit for compressed encodings) at a physical address; returns the end. */
function code(m: Machine, addr: number, insns: number[]): number {
  let a = addr;
  for (const w of insns) {
    if ((w & 3) !== 3) {
      m.dv.setUint16(a - RAM_BASE, w, true);
      a += 2;
    } else {
      m.dv.setUint32(a - RAM_BASE, w >>> 0, true);
      a += 4;
    }
  }
  m.hart.bus.externalWrite(addr - RAM_BASE, a - addr);
  return a;
}
const w64 = (m: Machine, addr: number, v: bigint) => m.dv.setBigUint64(addr - RAM_BASE, BigInt.asUintN(64, v), true);
const r64 = (m: Machine, addr: number) => m.dv.getBigUint64(addr - RAM_BASE, true);
const u64 = (v: bigint) => BigInt.asUintN(64, v);
const csr = (m: Machine, n: number) => u64(m.hart.getCsr(n));
const x = (m: Machine, r: number) => u64(m.hart.getX(r));
const mstatus = (m: Machine) => Number(csr(m, CSR.mstatus) & 0xffffffffn);
function setMstatusBits(m: Machine, set: number, clear = 0): void {
  m.hart.setCsr(CSR.mstatus, BigInt((mstatus(m) & ~clear) | set) & 0xffffffffn);
}
function mpp(m: Machine): number {
  return (mstatus(m) & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT;
}
/** Puts the hart at `pc` in privilege `priv`. */
function enter(m: Machine, priv: number, pc = CODE): void {
  m.hart.setPrivilege(priv);
  m.hart.pc = pc;
}
/** Steps one instruction and asserts the hart landed on the M-mode trap vector with this cause. */
function expectMTrap(m: Machine, cause: bigint, epc: number, tval?: bigint): void {
  assert.equal(m.hart.priv, PRIV_M, "trap taken in M");
  assert.equal(csr(m, CSR.mcause), cause, "mcause");
  assert.equal(csr(m, CSR.mepc), u64(BigInt(epc)), "mepc");
  if (tval !== undefined) assert.equal(csr(m, CSR.mtval), tval, "mtval");
}
function expectSTrap(m: Machine, cause: bigint, epc: number, tval?: bigint): void {
  assert.equal(m.hart.priv, PRIV_S, "trap taken in S");
  assert.equal(csr(m, CSR.scause), cause, "scause");
  assert.equal(csr(m, CSR.sepc), u64(BigInt(epc)), "sepc");
  if (tval !== undefined) assert.equal(csr(m, CSR.stval), tval, "stval");
}

const rdtime = (rd: number) => A.csrrs(rd, CSR.time, 0);
const rdcycle = (rd: number) => A.csrrs(rd, CSR.cycle, 0);
const rdinstret = (rd: number) => A.csrrs(rd, CSR.instret, 0);
const WFI = 0x10500073;
const MRET = 0x30200073;
const SRET = 0x10200073;

// ---------------------------------------------------------------------------------------------
// Synchronous traps

describe("synchronous traps", () => {
  test("an illegal instruction sets mcause 2, mtval = the instruction bits, mepc = pc", () => {
    const m = machine();
    // csrrs t0, 0x8c0, x0: an unimplemented CSR; bit 31 set checks mtval is zero-extended
    const bad = A.csrrs(T0, 0x8c0, 0);
    code(m, CODE, [A.addi(T1, 0, 7), bad, A.addi(T2, 0, 1)]);
    m.hart.step();
    m.hart.step();
    assert.equal(m.hart.pc, MTRAP);
    expectMTrap(m, 2n, CODE + 4, BigInt(bad));
    assert.equal(x(m, T1), 7n);
    assert.equal(x(m, T0), 0n, "the faulting instruction has no effect");
    m.hart.step();
    assert.equal(x(m, T2), 0n, "the instruction after it did not run");
  });

  test("an all-ones word and reserved opcodes are illegal", () => {
    for (const word of [0xffffffff, 0x0000000b /* custom-0 */, 0x00000000 /* c.unimp */]) {
      const m = machine();
      code(m, CODE, [word]);
      m.dv.setUint32(CODE - RAM_BASE, word, true);
      m.hart.step();
      expectMTrap(m, 2n, CODE);
      const tval = csr(m, CSR.mtval);
      // mtval is the faulting instruction (or, for the 16-bit c.unimp, its 16 bits which are 0)
      assert.equal(tval, word === 0 ? 0n : BigInt(word), `mtval for 0x${word.toString(16)}`);
    }
  });

  test("a compressed instruction that is illegal reports its own 16 bits (or 0) in mtval", () => {
    const m = machine();
    // c.fld f8, 0(x8) with mstatus.FS = Off: the C encoding is legal, the FP access is not
    setMstatusBits(m, 0, MSTATUS_FS);
    const cfld = A.c_fld(8, 0, 8);
    code(m, CODE, [cfld]);
    m.hart.setX(8, BigInt(DATA));
    m.hart.step();
    expectMTrap(m, 2n, CODE);
    const tval = csr(m, CSR.mtval);
    assert.ok(
      tval === 0n || tval === BigInt(cfld),
      `mtval = 0x${tval.toString(16)}, expected 0x${cfld.toString(16)} (the 16-bit parcel) or 0`,
    );
  });

  test("ecall from U, S and M gives causes 8, 9 and 11 with mepc = pc and mtval = 0", () => {
    for (const [priv, cause] of [
      [PRIV_U, 8n],
      [PRIV_S, 9n],
      [PRIV_M, 11n],
    ] as const) {
      const m = machine();
      m.hart.setCsr(CSR.mtval, 0x1234n);
      code(m, CODE, [A.addi(0, 0, 0), A.ecall()]);
      enter(m, priv);
      m.hart.step();
      m.hart.step();
      expectMTrap(m, cause, CODE + 4, 0n);
      assert.equal(m.hart.pc, MTRAP);
      assert.equal(mpp(m), priv, "MPP records the previous privilege");
    }
  });

  test("ebreak gives cause 3 with mtval = pc", () => {
    const m = machine();
    code(m, CODE, [A.ebreak()]);
    m.hart.step();
    expectMTrap(m, 3n, CODE, BigInt(CODE));
  });

  test("a trap to M saves MIE in MPIE and clears MIE", () => {
    const m = machine();
    setMstatusBits(m, MSTATUS_MIE, MSTATUS_MPIE);
    code(m, CODE, [A.ecall()]);
    m.hart.step();
    expectMTrap(m, 11n, CODE);
    assert.equal(mstatus(m) & MSTATUS_MIE, 0);
    assert.equal(mstatus(m) & MSTATUS_MPIE, MSTATUS_MPIE);
    assert.equal(mpp(m), PRIV_M);
  });

  test("medeleg routes a U-mode ecall to S: scause, sepc, SPP, SPIE, SIE; sret returns", () => {
    const m = machine();
    m.hart.setCsr(CSR.medeleg, 1n << 8n);
    m.hart.setCsr(CSR.mcause, 0n);
    setMstatusBits(m, MSTATUS_SIE | MSTATUS_SPP, MSTATUS_SPIE);
    // S handler: sepc += 4; sret
    code(m, STRAP, [A.csrrs(T0, CSR.sepc, 0), A.addi(T0, T0, 4), A.csrrw(0, CSR.sepc, T0), SRET]);
    code(m, CODE, [A.ecall(), A.addi(A0, 0, 42)]);
    enter(m, PRIV_U);
    m.hart.step();
    assert.equal(m.hart.pc, STRAP + 4, "took the trap at stvec (and ran its first instruction)");
    expectSTrap(m, 8n, CODE, 0n);
    assert.equal(csr(m, CSR.mcause), 0n, "M-mode trap state untouched");
    const s = Number(csr(m, CSR.sstatus) & 0xffffffffn);
    assert.equal(s & MSTATUS_SPP, 0, "SPP = U");
    assert.equal(s & MSTATUS_SPIE, MSTATUS_SPIE, "SPIE = old SIE");
    assert.equal(s & MSTATUS_SIE, 0, "SIE cleared");
    m.hart.step(); // addi
    m.hart.step(); // csrw sepc
    m.hart.step(); // sret
    assert.equal(m.hart.priv, PRIV_U);
    assert.equal(m.hart.pc, CODE + 4);
    const after = mstatus(m);
    assert.equal(after & MSTATUS_SIE, MSTATUS_SIE, "sret restores SIE from SPIE");
    assert.equal(after & MSTATUS_SPIE, MSTATUS_SPIE, "sret sets SPIE");
    assert.equal(after & MSTATUS_SPP, 0, "sret clears SPP");
    m.hart.step();
    assert.equal(x(m, A0), 42n);
  });

  test("a delegated exception from S records SPP = S and SPIE = 0 when SIE was clear", () => {
    const m = machine();
    m.hart.setCsr(CSR.medeleg, 1n << 2n);
    setMstatusBits(m, MSTATUS_SPIE, MSTATUS_SIE | MSTATUS_SPP);
    const bad = 0xffffffff;
    code(m, CODE, [bad]);
    enter(m, PRIV_S);
    m.hart.step();
    expectSTrap(m, 2n, CODE, BigInt(bad));
    assert.equal(mstatus(m) & MSTATUS_SPP, MSTATUS_SPP);
    assert.equal(mstatus(m) & MSTATUS_SPIE, 0);
  });

  test("an exception in M is never delegated", () => {
    const m = machine();
    m.hart.setCsr(CSR.medeleg, 0xffffn);
    code(m, CODE, [0xffffffff]);
    m.hart.step();
    expectMTrap(m, 2n, CODE);
  });

  test("medeleg cannot delegate ecall from M", () => {
    const m = machine();
    m.hart.setCsr(CSR.medeleg, 0xffffn);
    assert.equal(csr(m, CSR.medeleg) & (1n << 11n), 0n);
    assert.equal(csr(m, CSR.medeleg) & (1n << 8n), 1n << 8n);
  });

  test("mret restores privilege from MPP and MIE from MPIE, then MPP = U and MPIE = 1", () => {
    const m = machine();
    const target = CODE + 0x100;
    m.hart.setCsr(CSR.mepc, BigInt(target));
    setMstatusBits(m, (PRIV_S << MSTATUS_MPP_SHIFT) | MSTATUS_MPIE, MSTATUS_MIE | MSTATUS_MPP);
    code(m, CODE, [MRET]);
    m.hart.step();
    assert.equal(m.hart.priv, PRIV_S);
    assert.equal(m.hart.pc, target);
    const s = mstatus(m);
    assert.equal(s & MSTATUS_MIE, MSTATUS_MIE);
    assert.equal(s & MSTATUS_MPIE, MSTATUS_MPIE);
    assert.equal(mpp(m), PRIV_U);
  });

  test("mret to U with MPIE = 0 leaves MIE clear; mret to a lower mode clears MPRV", () => {
    const m = machine();
    m.hart.setCsr(CSR.mepc, BigInt(CODE + 0x40));
    setMstatusBits(m, MSTATUS_MIE | MSTATUS_MPRV, MSTATUS_MPIE | MSTATUS_MPP);
    code(m, CODE, [MRET]);
    m.hart.step();
    assert.equal(m.hart.priv, PRIV_U);
    assert.equal(m.hart.pc, CODE + 0x40);
    assert.equal(mstatus(m) & MSTATUS_MIE, 0);
    assert.equal(mstatus(m) & MSTATUS_MPRV, 0);
  });

  test("sret restores S and clears MPRV", () => {
    const m = machine();
    m.hart.setCsr(CSR.sepc, BigInt(CODE + 0x20));
    setMstatusBits(m, MSTATUS_SPP | MSTATUS_MPRV, MSTATUS_SPIE);
    code(m, CODE, [SRET]);
    m.hart.step();
    assert.equal(m.hart.priv, PRIV_S);
    assert.equal(m.hart.pc, CODE + 0x20);
    assert.equal(mstatus(m) & MSTATUS_SIE, 0);
    assert.equal(mstatus(m) & MSTATUS_MPRV, 0);
  });

  test("mret from S, sret from U, and sret from S with TSR are illegal", () => {
    for (const [priv, insn, status] of [
      [PRIV_S, MRET, 0],
      [PRIV_U, SRET, 0],
      [PRIV_S, SRET, MSTATUS_TSR],
    ] as const) {
      const m = machine();
      setMstatusBits(m, status);
      code(m, CODE, [insn]);
      enter(m, priv);
      m.hart.step();
      expectMTrap(m, 2n, CODE, BigInt(insn));
      assert.equal(mpp(m), priv);
    }
  });

  test("accessing a higher-privilege or writing a read-only CSR is illegal", () => {
    for (const [priv, insn] of [
      [PRIV_U, A.csrrs(T0, CSR.sstatus, 0)],
      [PRIV_S, A.csrrs(T0, CSR.mstatus, 0)],
      [PRIV_M, A.csrrw(0, CSR.mhartid, T0)],
      [PRIV_M, A.csrrw(0, CSR.cycle, T0)],
    ] as const) {
      const m = machine();
      code(m, CODE, [insn]);
      enter(m, priv);
      m.hart.step();
      expectMTrap(m, 2n, CODE, BigInt(insn));
    }
  });

  test("accesses to unmapped physical addresses give access faults 1, 5, 7 with tval = the address", () => {
    const hole = 0x1000_0040;
    for (const [insn, cause] of [
      [A.ld(T0, 0, A0), 5n],
      [A.sw(T0, 0, A0), 7n],
      [A.jalr(0, 0, A0), 1n],
    ] as const) {
      const m = machine();
      m.hart.setX(A0, BigInt(hole));
      code(m, CODE, [insn]);
      m.hart.step();
      if (cause === 1n) m.hart.step();
      expectMTrap(m, cause, cause === 1n ? hole : CODE, BigInt(hole));
    }
  });

  test("mstatus.SD summarises FS = Dirty", () => {
    const m = machine();
    setMstatusBits(m, MSTATUS_FS);
    assert.equal(csr(m, CSR.mstatus) >> 63n, 1n);
    assert.equal(csr(m, CSR.sstatus) >> 63n, 1n);
    assert.equal((csr(m, CSR.sstatus) >> 32n) & 3n, 2n, "UXL = 64");
    setMstatusBits(m, 0, MSTATUS_FS);
    assert.equal(csr(m, CSR.mstatus) >> 63n, 0n);
  });

  test("mepc drops bit 0 on write", () => {
    const m = machine();
    m.hart.setCsr(CSR.mepc, BigInt(CODE + 3));
    assert.equal(csr(m, CSR.mepc), BigInt(CODE + 2));
  });

  test("vectored mtvec: interrupts go to base + 4 * cause, exceptions to base", () => {
    const m = machine();
    const base = RAM_BASE + 0x400;
    for (let i = 0; i < 16; i++) code(m, base + 4 * i, [A.jal(0, 0)]);
    m.hart.setCsr(CSR.mtvec, BigInt(base + 1));
    assert.equal(csr(m, CSR.mtvec), BigInt(base + 1));
    m.hart.setCsr(CSR.mie, 1n << 7n);
    m.hart.setPending(7, true);
    code(m, CODE, [A.addi(T0, 0, 1)]);
    enter(m, PRIV_S); // M-level interrupts are always enabled below M
    m.hart.step();
    assert.equal(m.hart.pc, base + 4 * 7);
    expectMTrap(m, INTERRUPT | 7n, CODE);
    assert.equal(x(m, T0), 0n);

    const e = machine();
    for (let i = 0; i < 16; i++) code(e, base + 4 * i, [A.jal(0, 0)]);
    e.hart.setCsr(CSR.mtvec, BigInt(base + 1));
    code(e, CODE, [A.ecall()]);
    e.hart.step();
    assert.equal(e.hart.pc, base);
    expectMTrap(e, 11n, CODE);
  });

  test("vectored stvec: a delegated timer interrupt goes to base + 4 * 5", () => {
    const m = machine();
    const base = RAM_BASE + 0x600;
    for (let i = 0; i < 16; i++) code(m, base + 4 * i, [A.jal(0, 0)]);
    m.hart.setCsr(CSR.stvec, BigInt(base + 1));
    m.hart.setCsr(CSR.mideleg, 1n << 5n);
    m.hart.setCsr(CSR.mie, 1n << 5n);
    m.hart.setPending(5, true);
    code(m, CODE, [A.addi(T0, 0, 1)]);
    enter(m, PRIV_U);
    m.hart.step();
    assert.equal(m.hart.pc, base + 4 * 5);
    expectSTrap(m, INTERRUPT | 5n, CODE, 0n);
  });
});

// ---------------------------------------------------------------------------------------------
// Interrupts

describe("interrupts", () => {
  test("MTIP with mie.MTIE and mstatus.MIE in M traps with mcause 0x8000000000000007", () => {
    const m = machine();
    setMstatusBits(m, MSTATUS_MIE);
    m.hart.setCsr(CSR.mie, 1n << 7n);
    code(m, CODE, [A.addi(T0, 0, 1), A.addi(T1, 0, 2)]);
    m.hart.step();
    assert.equal(x(m, T0), 1n);
    m.hart.setPending(7, true);
    assert.equal((Number(csr(m, CSR.mip)) >> 7) & 1, 1);
    m.hart.step();
    assert.equal(csr(m, CSR.mcause), 0x8000000000000007n);
    expectMTrap(m, 0x8000000000000007n, CODE + 4, 0n);
    assert.equal(x(m, T1), 0n, "the interrupted instruction did not run");
    assert.equal(m.hart.pc, MTRAP);
    assert.equal(mstatus(m) & MSTATUS_MIE, 0);
    assert.equal(mstatus(m) & MSTATUS_MPIE, MSTATUS_MPIE);
    assert.equal(mpp(m), PRIV_M);
  });

  test("MTIP is not taken in M without MIE or without MTIE", () => {
    for (const [status, mie] of [
      [0, 1n << 7n],
      [MSTATUS_MIE, 0n],
    ] as const) {
      const m = machine();
      setMstatusBits(m, status);
      m.hart.setCsr(CSR.mie, mie);
      m.hart.setPending(7, true);
      code(m, CODE, [A.addi(T0, 0, 1)]);
      m.hart.step();
      assert.equal(m.hart.pc, CODE + 4);
      assert.equal(x(m, T0), 1n);
    }
  });

  test("enabling MIE with csrrsi takes the pending interrupt before the next instruction", () => {
    const m = machine();
    m.hart.setCsr(CSR.mie, 1n << 7n);
    m.hart.setPending(7, true);
    code(m, CODE, [A.csrrsi(0, CSR.mstatus, MSTATUS_MIE), A.addi(T0, 0, 1)]);
    m.hart.step();
    assert.equal(m.hart.pc, CODE + 4);
    m.hart.step();
    expectMTrap(m, INTERRUPT | 7n, CODE + 4);
    assert.equal(x(m, T0), 0n);
  });

  test("delegated STIP is taken in S only when SIE is set", () => {
    const m = machine();
    m.hart.setCsr(CSR.mideleg, 1n << 5n);
    m.hart.setCsr(CSR.mie, 1n << 5n);
    setMstatusBits(m, MSTATUS_MIE, MSTATUS_SIE);
    m.hart.setCsr(CSR.mcause, 0n);
    code(m, CODE, [A.addi(T0, 0, 1), A.csrrsi(0, CSR.sstatus, MSTATUS_SIE), A.addi(T1, 0, 1)]);
    enter(m, PRIV_S);
    m.hart.setPending(5, true);
    m.hart.step();
    assert.equal(x(m, T0), 1n, "SIE clear: no interrupt in S");
    assert.equal(m.hart.priv, PRIV_S);
    m.hart.step(); // sets SIE
    m.hart.step();
    assert.equal(x(m, T1), 0n);
    expectSTrap(m, INTERRUPT | 5n, CODE + 8, 0n);
    assert.equal(m.hart.pc, STRAP);
    assert.equal(csr(m, CSR.mcause), 0n, "not taken in M");
    const s = mstatus(m);
    assert.equal(s & MSTATUS_SPP, MSTATUS_SPP);
    assert.equal(s & MSTATUS_SPIE, MSTATUS_SPIE);
    assert.equal(s & MSTATUS_SIE, 0);
  });

  test("delegated STIP is taken in U even with SIE clear", () => {
    const m = machine();
    m.hart.setCsr(CSR.mideleg, 1n << 5n);
    m.hart.setCsr(CSR.mie, 1n << 5n);
    setMstatusBits(m, 0, MSTATUS_SIE);
    m.hart.setPending(5, true);
    code(m, CODE, [A.addi(T0, 0, 1)]);
    enter(m, PRIV_U);
    m.hart.step();
    expectSTrap(m, INTERRUPT | 5n, CODE);
    assert.equal(mstatus(m) & MSTATUS_SPP, 0);
    assert.equal(x(m, T0), 0n);
  });

  test("delegated STIP is never taken in M", () => {
    const m = machine();
    m.hart.setCsr(CSR.mideleg, 1n << 5n);
    m.hart.setCsr(CSR.mie, 1n << 5n);
    setMstatusBits(m, MSTATUS_MIE | MSTATUS_SIE);
    m.hart.setPending(5, true);
    code(m, CODE, [A.addi(T0, 0, 1)]);
    m.hart.step();
    assert.equal(m.hart.priv, PRIV_M);
    assert.equal(x(m, T0), 1n);
  });

  test("undelegated STIP from S goes to M regardless of MIE", () => {
    const m = machine();
    m.hart.setCsr(CSR.mie, 1n << 5n);
    setMstatusBits(m, 0, MSTATUS_MIE);
    m.hart.setPending(5, true);
    code(m, CODE, [A.addi(T0, 0, 1)]);
    enter(m, PRIV_S);
    m.hart.step();
    expectMTrap(m, INTERRUPT | 5n, CODE);
  });

  test("priority is MEI > MSI > MTI > SEI > SSI > STI", () => {
    const m = machine();
    const all = [11, 3, 7, 9, 1, 5];
    m.hart.setCsr(CSR.mie, BigInt(all.reduce((a, b) => a | (1 << b), 0)));
    for (const b of all) m.hart.setPending(b, true);
    code(m, CODE, [A.addi(0, 0, 0)]);
    const order: number[] = [];
    for (let i = 0; i < all.length; i++) {
      enter(m, PRIV_U);
      m.hart.step();
      const cause = csr(m, CSR.mcause);
      assert.equal(cause & INTERRUPT, INTERRUPT);
      const n = Number(cause & 0xffn);
      order.push(n);
      m.hart.setPending(n, false);
    }
    assert.deepEqual(order, all);
  });

  test("an M-level interrupt wins over a delegated one; delegated ones go SEI > SSI > STI", () => {
    const m = machine();
    m.hart.setCsr(CSR.mideleg, 0x222n);
    m.hart.setCsr(CSR.mie, 0x2a2n | (1n << 7n));
    for (const b of [1, 5, 9, 7]) m.hart.setPending(b, true);
    setMstatusBits(m, MSTATUS_SIE);
    code(m, CODE, [A.addi(0, 0, 0)]);
    enter(m, PRIV_S);
    m.hart.step();
    expectMTrap(m, INTERRUPT | 7n, CODE);
    m.hart.setPending(7, false);
    const order: number[] = [];
    for (let i = 0; i < 3; i++) {
      setMstatusBits(m, MSTATUS_SIE);
      enter(m, PRIV_S);
      m.hart.step();
      assert.equal(m.hart.priv, PRIV_S);
      const n = Number(csr(m, CSR.scause) & 0xffn);
      order.push(n);
      m.hart.setPending(n, false);
    }
    assert.deepEqual(order, [9, 1, 5]);
  });

  test("sie and sip are views of the delegated bits of mie and mip", () => {
    const m = machine();
    m.hart.setCsr(CSR.mideleg, 1n << 5n);
    m.hart.setCsr(CSR.mie, (1n << 7n) | (1n << 5n) | (1n << 1n));
    m.hart.setPending(5, true);
    m.hart.setPending(7, true);
    assert.equal(csr(m, CSR.sie), 1n << 5n);
    assert.equal(csr(m, CSR.sip), 1n << 5n);
    m.hart.setCsr(CSR.sie, 0n);
    assert.equal(csr(m, CSR.mie), (1n << 7n) | (1n << 1n));
  });

  test("WFI with nothing pending sets waiting and returns from run()", () => {
    const m = machine();
    m.hart.setCsr(CSR.mie, 1n << 7n);
    code(m, CODE, [A.addi(T0, 0, 1), WFI, A.addi(T1, 0, 1), A.addi(T2, 0, 1)]);
    const n = m.hart.run(100);
    assert.equal(n, 2);
    assert.equal(m.hart.waiting, true);
    assert.equal(m.hart.pc, CODE + 8);
    assert.equal(x(m, T1), 0n);
    // a pending bit that is not enabled does not wake the hart
    m.hart.setPending(3, true);
    assert.equal(m.hart.waiting, true);
    // an enabled one does, even with MIE clear (the interrupt is then not taken in M)
    m.hart.setPending(7, true);
    assert.equal(m.hart.waiting, false);
    m.hart.run(2);
    assert.equal(x(m, T1), 1n);
    assert.equal(x(m, T2), 1n);
  });

  test("WFI wakes into the interrupt handler when the interrupt is globally enabled", () => {
    const m = machine();
    m.hart.setCsr(CSR.mie, 1n << 7n);
    setMstatusBits(m, MSTATUS_MIE);
    code(m, CODE, [WFI, A.addi(T1, 0, 1)]);
    m.hart.run(10);
    assert.equal(m.hart.waiting, true);
    m.hart.setPending(7, true);
    assert.equal(m.hart.waiting, false);
    m.hart.step();
    expectMTrap(m, INTERRUPT | 7n, CODE + 4);
    assert.equal(x(m, T1), 0n);
  });

  test("WFI with an enabled interrupt already pending does not wait", () => {
    const m = machine();
    m.hart.setCsr(CSR.mie, 1n << 3n);
    m.hart.setPending(3, true);
    code(m, CODE, [WFI, A.addi(T1, 0, 1)]);
    assert.equal(m.hart.run(2), 2);
    assert.equal(m.hart.waiting, false);
    assert.equal(x(m, T1), 1n);
  });

  test("WFI is illegal in U, and in S when TW is set", () => {
    for (const [priv, status] of [
      [PRIV_U, 0],
      [PRIV_S, MSTATUS_TW],
    ] as const) {
      const m = machine();
      setMstatusBits(m, status);
      code(m, CODE, [WFI]);
      enter(m, priv);
      m.hart.step();
      expectMTrap(m, 2n, CODE, BigInt(WFI));
      assert.equal(m.hart.waiting, false);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Memory: misaligned accesses, LR/SC, AMOs

describe("misaligned accesses", () => {
  test("misaligned loads of every size within RAM", () => {
    const m = machine();
    for (let i = 0; i < 32; i++) m.dv.setUint8(DATA - RAM_BASE + i, 0x80 + i);
    m.hart.setX(A0, BigInt(DATA));
    code(m, CODE, [
      A.ld(T2, 0, A0), // aligned first: the page is now in the TLB
      A.lh(T0, 1, A0),
      A.lhu(T1, 3, A0),
      A.lw(12, 5, A0),
      A.lwu(13, 6, A0),
      A.ld(14, 9, A0),
      A.ld(15, 15, A0),
    ]);
    m.hart.run(7);
    assert.equal(m.hart.priv, PRIV_M);
    assert.equal(m.hart.pc, CODE + 28, "no trap");
    assert.equal(x(m, T0), u64(BigInt.asIntN(16, 0x8281n)));
    assert.equal(x(m, T1), 0x8483n);
    assert.equal(x(m, 12), u64(BigInt.asIntN(32, 0x88878685n)));
    assert.equal(x(m, 13), 0x89888786n);
    assert.equal(x(m, 14), 0x908f8e8d8c8b8a89n);
    assert.equal(x(m, 15), 0x969594939291908fn);
  });

  test("misaligned stores of every size within RAM", () => {
    const m = machine();
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, 0x1122334455667788n);
    code(m, CODE, [A.sd(0, 0, A0), A.sh(A1, 1, A0), A.sw(A1, 0x11, A0), A.sd(A1, 0x23, A0)]);
    w64(m, DATA + 0x10, 0n);
    w64(m, DATA + 0x18, 0n);
    w64(m, DATA + 0x20, 0n);
    w64(m, DATA + 0x28, 0n);
    m.hart.run(4);
    assert.equal(m.hart.pc, CODE + 16, "no trap");
    assert.equal(r64(m, DATA), 0x778800n);
    assert.equal(r64(m, DATA + 0x10), 0x5566778800n);
    assert.equal(r64(m, DATA + 0x20), 0x4455667788000000n);
    assert.equal(r64(m, DATA + 0x28), 0x112233n);
  });

  test("misaligned load and store across a 4 KiB page boundary", () => {
    const m = machine();
    const page = DATA + 0x1000;
    for (let i = -8; i < 8; i++) m.dv.setUint8(page - RAM_BASE + i, 0x40 + i + 8);
    m.hart.setX(A0, BigInt(page - 3));
    m.hart.setX(A1, 0xa1a2a3a4a5a6a7a8n);
    code(m, CODE, [A.ld(T0, 0, A0), A.lw(T1, 1, A0), A.sd(A1, 0, A0)]);
    m.hart.run(3);
    assert.equal(m.hart.pc, CODE + 12, "no trap");
    assert.equal(x(m, T0), 0x4c4b4a4948474645n);
    assert.equal(x(m, T1), 0x49484746n);
    assert.equal(r64(m, page - 8), 0xa6a7a84443424140n);
    assert.equal(r64(m, page), 0x4f4e4da1a2a3a4a5n);
  });
});

describe("LR/SC and AMOs", () => {
  test("LR/SC pair succeeds (rd = 0) and stores; SC without reservation fails (rd = 1)", () => {
    const m = machine();
    w64(m, DATA, 0x1111n);
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, 0x2222n);
    m.hart.setX(A2, 0x3333n);
    m.hart.setX(T1, 99n);
    code(m, CODE, [A.lr_d(T0, A0), A.sc_d(T1, A1, A0), A.sc_d(T2, A2, A0)]);
    m.hart.step();
    assert.equal(x(m, T0), 0x1111n);
    m.hart.step();
    assert.equal(x(m, T1), 0n, "sc succeeded");
    assert.equal(r64(m, DATA), 0x2222n);
    m.hart.setX(T2, 77n);
    m.hart.step();
    assert.equal(x(m, T2), 1n, "second sc has no reservation");
    assert.equal(r64(m, DATA), 0x2222n, "failed sc does not store");
  });

  test("SC with no prior LR fails and an SC to another address fails", () => {
    const m = machine();
    w64(m, DATA, 5n);
    w64(m, DATA + 8, 6n);
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, BigInt(DATA + 8));
    m.hart.setX(A2, 0x77n);
    code(m, CODE, [A.sc_w(T0, A2, A0), A.lr_w(T1, A0), A.sc_w(T2, A2, A1)]);
    m.hart.run(3);
    assert.equal(x(m, T0), 1n);
    assert.equal(x(m, T2), 1n);
    assert.equal(r64(m, DATA), 5n);
    assert.equal(r64(m, DATA + 8), 6n);
  });

  test("lr.w sign-extends; sc.w writes only 32 bits", () => {
    const m = machine();
    w64(m, DATA, 0xaaaaaaaa_80000001n);
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, 0x12345678_9abcdef0n);
    code(m, CODE, [A.lr_w(T0, A0), A.sc_w(T1, A1, A0)]);
    m.hart.run(2);
    assert.equal(x(m, T0), 0xffffffff_80000001n);
    assert.equal(x(m, T1), 0n);
    assert.equal(r64(m, DATA), 0xaaaaaaaa_9abcdef0n);
  });

  test("a trap between LR and SC clears the reservation", () => {
    const m = machine();
    w64(m, DATA, 1n);
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, 2n);
    code(m, CODE, [A.lr_d(T0, A0), A.ecall(), A.sc_d(T1, A1, A0)]);
    code(m, MTRAP, [A.csrrs(T2, CSR.mepc, 0), A.addi(T2, T2, 4), A.csrrw(0, CSR.mepc, T2), MRET]);
    assert.equal(m.hart.run(6), 6); // lr, (ecall traps), csrr, addi, csrw, mret, sc
    assert.equal(m.hart.pc, CODE + 12);
    assert.equal(x(m, T1), 1n);
    assert.equal(r64(m, DATA), 1n);
  });

  test("AMOs return the old value and store the result", () => {
    const m = machine();
    w64(m, DATA, 0xfffffffffffffff0n);
    w64(m, DATA + 8, 0x00000001_7fffffffn);
    m.hart.setX(A0, BigInt(DATA));
    m.hart.setX(A1, BigInt(DATA + 8));
    m.hart.setX(A2, 0x20n);
    code(m, CODE, [A.amoadd_d(T0, A2, A0), A.amomaxu_w(T1, A2, A1), A.amomin_w(T2, A2, A1)]);
    m.hart.run(3);
    assert.equal(x(m, T0), 0xfffffffffffffff0n);
    assert.equal(r64(m, DATA), 0x10n);
    assert.equal(x(m, T1), 0x7fffffffn);
    assert.equal(x(m, T2), 0x7fffffffn);
    assert.equal(r64(m, DATA + 8), 0x00000001_00000020n);
  });

  test("a misaligned AMO raises cause 6 with mtval = the address; misaligned LR raises 4", () => {
    for (const [insn, addr, cause] of [
      [A.amoadd_w(T0, A1, A0), DATA + 2, 6n],
      [A.amoswap_d(T0, A1, A0), DATA + 4, 6n],
      [A.sc_d(T0, A1, A0), DATA + 4, 6n],
      [A.lr_w(T0, A0), DATA + 1, 4n],
    ] as const) {
      const m = machine();
      w64(m, DATA, 0x55n);
      m.hart.setX(A0, BigInt(addr));
      m.hart.setX(A1, 0x99n);
      m.hart.setX(T0, 0x1234n);
      code(m, CODE, [insn]);
      m.hart.step();
      expectMTrap(m, cause, CODE, BigInt(addr));
      assert.equal(x(m, T0), 0x1234n, "rd unchanged");
      assert.equal(r64(m, DATA), 0x55n, "memory unchanged");
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Counters

describe("counter access", () => {
  test("rdtime and rdcycle from U trap as illegal unless mcounteren and scounteren allow", () => {
    const cases: [number, number, number, boolean][] = [
      // [insn builder bit, mcounteren, scounteren, allowed]
      [1, 0, 0, false],
      [1, 2, 0, false],
      [1, 0, 2, false],
      [1, 2, 2, true],
      [0, 1, 0, false],
      [0, 0, 1, false],
      [0, 1, 1, true],
      [2, 4, 4, true],
      [2, 3, 3, false],
    ];
    for (const [bit, mce, sce, ok] of cases) {
      const m = machine();
      m.clock.t = 123456789;
      m.hart.setCsr(CSR.mcounteren, BigInt(mce));
      m.hart.setCsr(CSR.scounteren, BigInt(sce));
      const insn = bit === 0 ? rdcycle(T0) : bit === 1 ? rdtime(T0) : rdinstret(T0);
      code(m, CODE, [insn]);
      enter(m, PRIV_U);
      m.hart.step();
      if (ok) {
        assert.equal(m.hart.priv, PRIV_U, `bit ${bit} mcounteren ${mce} scounteren ${sce}`);
        assert.equal(m.hart.pc, CODE + 4);
        if (bit === 1) assert.equal(x(m, T0), 123456789n);
      } else {
        expectMTrap(m, 2n, CODE, BigInt(insn));
      }
    }
  });

  test("in S only mcounteren matters", () => {
    for (const [mce, ok] of [
      [0, false],
      [2, true],
    ] as const) {
      const m = machine();
      m.clock.t = 42;
      m.hart.setCsr(CSR.mcounteren, BigInt(mce));
      code(m, CODE, [rdtime(T0)]);
      enter(m, PRIV_S);
      m.hart.step();
      if (ok) {
        assert.equal(m.hart.priv, PRIV_S);
        assert.equal(x(m, T0), 42n);
      } else {
        expectMTrap(m, 2n, CODE);
      }
    }
  });

  test("M can always read time; time is read-only", () => {
    const m = machine();
    m.clock.t = 2 ** 40 + 5;
    code(m, CODE, [rdtime(T0), A.csrrw(0, CSR.time, T0)]);
    m.hart.step();
    assert.equal(x(m, T0), BigInt(2 ** 40 + 5));
    m.hart.step();
    expectMTrap(m, 2n, CODE + 4);
  });
});

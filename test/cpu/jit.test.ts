/**
 * The translator on its own terms: self-modifying code, precise faults and interrupts in the
 * middle of a block, the bounded cache, and lockstep against the interpreter. (The instruction,
 * MMU and privilege tests run on the translator too: see test/support/engine.ts.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Bus, type MmioDevice } from "../../src/cpu/bus.js";
import { Hart } from "../../src/cpu/hart.js";
import { Jit, type Backend } from "../../src/cpu/jit.js";
import { Lockstep } from "../../src/cpu/lockstep.js";
import * as A from "../support/rv-asm.js";

const RAM_BASE = 0x8000_0000;
const CODE = RAM_BASE + 0x1000;
const MTRAP = RAM_BASE + 0x100;
const DEVICE = 0x2000_0000;
const WFI = 0x10500073;
const RA = 1,
  T0 = 5,
  T1 = 6,
  T2 = 7,
  A0 = 10,
  A1 = 11,
  A2 = 12,
  A3 = 13,
  T3 = 28;
const CSR_MTVEC = 0x305,
  CSR_MEPC = 0x341,
  CSR_MCAUSE = 0x342,
  CSR_MIE = 0x304,
  CSR_MSTATUS = 0x300,
  CSR_MSCRATCH = 0x340,
  CSR_INSTRET = 0xc02;

/** A device whose every write raises the machine software interrupt of its hart. */
class DoorBell implements MmioDevice {
  readonly name = "doorbell";
  hart: Hart | null = null;
  read(): number {
    return 0;
  }
  write(): void {
    this.hart!.setPending(3, true);
  }
}

function machine(
  program: number[],
  options: { jit?: boolean; threshold?: number; maxBlocks?: number; backend?: Backend } = {},
) {
  const bus = new Bus(RAM_BASE, 1 << 20);
  const bell = new DoorBell();
  bus.map(DEVICE, 0x1000, bell);
  const hart = new Hart(bus, 0, { now: () => 0 });
  bell.hart = hart;
  const dv = new DataView(bus.ramBuffer);
  dv.setUint32(MTRAP - RAM_BASE, A.jal(0, 0), true); // the trap handler spins
  program.forEach((w, i) => dv.setUint32(CODE - RAM_BASE + 4 * i, w >>> 0, true));
  hart.setCsr(CSR_MTVEC, BigInt(MTRAP));
  hart.pc = CODE;
  const jit =
    options.jit === false
      ? null
      : new Jit(hart, {
          threshold: options.threshold ?? 0,
          maxBlocks: options.maxBlocks,
          batch: 1,
          backend: options.backend,
        });
  return { bus, hart, jit, dv };
}

/** Runs until WFI (or the budget), in slices as the machine does. */
function runToWfi(hart: Hart, budget = 1_000_000): void {
  while (!hart.waiting && hart.instret < budget) hart.run(10_000);
}

/** Calls FN (addi a0, a0, 1) 100 times, patches FN to add 100 with a store and fence.i, calls it 100 times more. */
function selfModifying(): number[] {
  const p: number[] = [];
  p.push(A.addi(T1, 0, 100)); // 0
  p.push(A.jal(RA, 0x100 - 4)); // 4
  p.push(A.addi(T1, T1, -1)); // 8
  p.push(A.bne(T1, 0, -8)); // 12
  p.push(A.lui(T2, 0x06450)); // 16: t2 = addi a0, a0, 100 (0x06450513)
  p.push(A.addi(T2, T2, 0x513)); // 20
  p.push(A.auipc(T3, 0)); // 24
  p.push(A.addi(T3, T3, 0x100 - 24)); // 28: t3 = FN
  p.push(A.sw(T2, 0, T3)); // 32
  p.push(A.fence_i()); // 36
  p.push(A.addi(T1, 0, 100)); // 40
  p.push(A.jal(RA, 0x100 - 44)); // 44
  p.push(A.addi(T1, T1, -1)); // 48
  p.push(A.bne(T1, 0, -8)); // 52
  p.push(WFI); // 56
  while (p.length < 0x40) p.push(A.addi(0, 0, 0));
  p.push(A.addi(A0, A0, 1)); // FN at 0x100
  p.push(A.jalr(0, 0, RA));
  return p;
}

// Both backends: WebAssembly (the default) and JavaScript (RAM in a plain buffer, SMP).
for (const backend of ["wasm", "js"] as const) {
  test(`self-modifying code: a store over translated code and fence.i run the new instruction (${backend})`, () => {
    for (const threshold of [0, 5]) {
      const m = machine(selfModifying(), { threshold, backend });
      runToWfi(m.hart);
      assert.equal(m.hart.getX(A0), 100n + 100n * 100n, `threshold ${threshold}`);
      assert.ok(m.jit!.stats().invalidations >= 1, "the patched page was invalidated");
      assert.ok(m.jit!.stats().translatedInstructions > 500, "the loops ran translated");
    }
  });

  test(`code written by DMA (Bus.externalWrite) replaces translated code (${backend})`, () => {
    const m = machine([A.addi(A0, A0, 1), WFI], { backend });
    runToWfi(m.hart);
    assert.equal(m.hart.getX(A0), 1n);
    m.dv.setUint32(CODE - RAM_BASE, A.addi(A0, A0, 7), true);
    m.bus.externalWrite(CODE - RAM_BASE, 4);
    m.hart.waiting = false;
    m.hart.pc = CODE;
    runToWfi(m.hart, 100);
    assert.equal(m.hart.getX(A0), 8n);
  });

  test(`a fault in the middle of a block is precise: pc, registers and instret as the interpreter's (${backend})`, () => {
    const program = [A.addi(A0, 0, 5), A.addi(A1, 0, 7), A.ld(A2, 0, T0), A.addi(A3, 0, 9), WFI];
    const m = machine(program, { backend });
    m.hart.setX(T0, 0x1000n); // no RAM, no device: load access fault
    m.hart.run(3); // two addi, the faulting ld, then one instruction of the handler
    assert.equal(m.hart.getCsr(CSR_MCAUSE), 5n);
    assert.equal(Number(m.hart.getCsr(CSR_MEPC)), CODE + 8);
    assert.equal(m.hart.getX(A0), 5n);
    assert.equal(m.hart.getX(A1), 7n);
    assert.equal(m.hart.getX(A3), 0n);
    assert.equal(m.hart.instret, 3);
    assert.equal(m.hart.pc, MTRAP);
    assert.ok(m.jit!.stats().translated >= 1);
  });

  test(`an MMIO write that raises an interrupt is taken right after that instruction (${backend})`, () => {
    const program = [A.addi(A0, 0, 1), A.sw(A0, 0, T0), A.addi(A1, 0, 1), A.addi(A2, 0, 1), WFI];
    const m = machine(program, { backend });
    m.hart.setX(T0, BigInt(DEVICE));
    m.hart.setCsr(CSR_MIE, 1n << 3n);
    m.hart.setCsr(CSR_MSTATUS, m.hart.getCsr(CSR_MSTATUS) | 8n); // MIE
    m.hart.run(10);
    assert.equal(BigInt.asUintN(64, m.hart.getCsr(CSR_MCAUSE)), (1n << 63n) | 3n);
    assert.equal(Number(m.hart.getCsr(CSR_MEPC)), CODE + 8);
    assert.equal(m.hart.getX(A1), 0n);
  });

  test(`CSR accesses run inside a block: exact counters, and a write enabling an interrupt takes it right after (${backend})`, () => {
    const program = [
      A.addi(A0, 0, 5),
      A.csrrw(A1, CSR_MSCRATCH, A0), // a1 = 0, mscratch = 5
      A.csrrs(A2, CSR_INSTRET, 0), // a2 = 2: the instructions retired before it
      A.csrrs(A3, CSR_MSCRATCH, 0), // a3 = 5
      A.csrrw(0, CSR_MIE, T0), // enables the pending software interrupt: taken after this
      A.addi(A0, A0, 1), // not reached
      WFI,
    ];
    const jit = machine(program, { backend });
    const ref = machine(program, { jit: false });
    for (const m of [jit, ref]) {
      m.hart.setX(T0, 1n << 3n);
      m.hart.setPending(3, true);
      m.hart.setCsr(CSR_MSTATUS, m.hart.getCsr(CSR_MSTATUS) | 8n); // MIE
      m.hart.run(6); // up to the interrupt, then the handler's first instruction
    }
    assert.equal(jit.hart.getX(A1), 0n);
    assert.equal(jit.hart.getX(A2), 2n);
    assert.equal(jit.hart.getX(A3), 5n);
    assert.equal(jit.hart.getX(A0), 5n);
    assert.equal(BigInt.asUintN(64, jit.hart.getCsr(CSR_MCAUSE)), (1n << 63n) | 3n);
    assert.equal(Number(jit.hart.getCsr(CSR_MEPC)), CODE + 20);
    for (const r of [A0, A1, A2, A3]) assert.equal(jit.hart.getX(r), ref.hart.getX(r), `x${r}`);
    assert.equal(jit.hart.instret, ref.hart.instret);
    assert.equal(jit.hart.pc, ref.hart.pc);
    // The five up to the interrupt in one block (ending at the first CSR access, it would be one).
    assert.equal(jit.jit!.stats().translatedInstructions, 6, "the block ran through its CSR accesses");
  });

  test(`the translation cache is bounded: past its limit it is flushed and code is translated again (${backend})`, () => {
    // 40 blocks (jal chains), run 30 times around.
    const p: number[] = [A.addi(T1, 0, 30)];
    for (let i = 0; i < 40; i++) p.push(A.addi(A0, A0, 1), A.jal(0, 4));
    p.push(A.addi(T1, T1, -1), A.bne(T1, 0, -(4 * 80 + 4)), WFI);
    const m = machine(p, { maxBlocks: 8, backend });
    runToWfi(m.hart);
    assert.equal(m.hart.getX(A0), 1200n);
    const s = m.jit!.stats();
    assert.ok(s.flushes > 10, `flushes ${s.flushes}`);
    assert.ok(s.translated <= 8);
    assert.ok(s.estimatedBytes > 0 && s.sourceBytes > 0);
  });

  test(`a loop runs inside its block and stops exactly at the budget, as the interpreter (${backend})`, () => {
    const program = [
      A.addi(T1, 0, 1000), // 0
      A.jal(0, 8), // 4
      A.addi(A1, A1, 99), // 8: jumped over
      A.addi(A0, A0, 3), // 12: the loop: a block that branches back to itself
      A.sd(A0, 0, T0), // 16
      A.addi(T1, T1, -1), // 20
      A.bne(T1, 0, -12), // 24
      WFI, // 28
    ];
    const jit = machine(program, { backend });
    const ref = machine(program, { jit: false });
    for (const m of [jit, ref]) m.hart.setX(T0, BigInt(RAM_BASE + 0x8000));
    // Odd slices end mid-iteration: the loop must stop where the interpreter stops.
    while (!ref.hart.waiting) {
      jit.hart.run(37);
      ref.hart.run(37);
      assert.equal(jit.hart.instret, ref.hart.instret);
      assert.equal(jit.hart.pc, ref.hart.pc, `pc at instret ${ref.hart.instret}`);
      for (const r of [A0, A1, T1])
        assert.equal(jit.hart.getX(r), ref.hart.getX(r), `x${r} at instret ${ref.hart.instret}`);
    }
    assert.ok(jit.hart.waiting);
    assert.equal(jit.hart.getX(A0), 3000n);
    assert.equal(jit.hart.getX(A1), 0n);
    assert.equal(jit.dv.getUint32(0x8000, true), 3000);
    assert.ok(jit.jit!.stats().translatedInstructions > 3500, "the loop ran translated");
  });

  test(`lockstep: translator and interpreter agree after every block of a program with loops, faults and interrupts (${backend})`, () => {
    const build = () => {
      const m = machine(selfModifying(), { jit: false });
      m.hart.setX(T0, BigInt(DEVICE));
      return m;
    };
    const a = build(),
      b = build();
    const ls = new Lockstep(a.hart, b.hart, { threshold: 3, backend });
    assert.equal(ls.run(100_000), null);
    assert.equal(a.hart.getX(A0), 10100n);
    assert.ok(ls.steps > 100);
    assert.equal(Lockstep.compareMemory(a.hart, b.hart), -1);
  });
}

test("lockstep reports a divergence with where it happened", () => {
  const a = machine([A.addi(A0, 0, 1), A.addi(A0, A0, 1), WFI], { jit: false });
  const b = machine([A.addi(A0, 0, 1), A.addi(A0, A0, 2), WFI], { jit: false });
  const d = new Lockstep(a.hart, b.hart, { threshold: 0 }).run(100);
  assert.ok(d !== null);
  assert.equal(d.what, "x10");
  assert.equal(d.translated, "0x2");
  assert.equal(d.interpreted, "0x3");
});

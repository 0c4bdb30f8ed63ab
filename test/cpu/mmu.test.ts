/**
 * Sv39 and Sv48 address translation as a kernel depends on it: page tables are built in RAM,
 * short programs run in S or U mode, and the tests check translations, page faults and their
 * tval, permission rules (U/SUM, MXR, X-only), A/D updates by the walker, superpage alignment,
 * canonical addresses, sfence.vma, satp WARL behaviour, MPRV, and accesses that cross pages.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Bus } from "../../src/cpu/bus.js";
import { Hart, PRIV_M, PRIV_S, PRIV_U } from "../../src/cpu/hart.js";
import {
  CSR,
  MSTATUS_MPP,
  MSTATUS_MPP_SHIFT,
  MSTATUS_MPRV,
  MSTATUS_MXR,
  MSTATUS_SUM,
  MSTATUS_TVM,
} from "../../src/cpu/csr.js";
import * as A from "../support/rv-asm.js";
import { withTestEngine } from "../support/engine.js";

// ---------------------------------------------------------------------------------------------
// Harness

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 8 << 20;
const MTRAP = RAM_BASE + 0x100;
const STRAP = RAM_BASE + 0x200;
const CODE = RAM_BASE + 0x1000; // S-mode code, reached through the identity gigapage
const UCODE_PA = RAM_BASE + 0x3000; // U-mode code page (mapped at UCODE_VA)
const TABLES = RAM_BASE + 0x10_0000; // page-table pages are allocated from here
const MEGA_PA = RAM_BASE + 0x20_0000; // 2 MiB aligned
const DPAGE = RAM_BASE + 0x40_0000; // data pages
const DPAGE2 = RAM_BASE + 0x40_5000;

const T0 = 5,
  T1 = 6,
  A0 = 10,
  A1 = 11;

// PTE bits
const V = 1,
  R = 2,
  W = 4,
  X = 8,
  U = 16,
  AC = 64,
  DI = 128;
const RWX = R | W | X | AC | DI | V;
const RW = R | W | AC | DI | V;

interface Machine {
  hart: Hart;
  dv: DataView;
  pt: PageTables;
}

const u64 = (v: bigint) => BigInt.asUintN(64, v);

class PageTables {
  readonly root: number;
  private next: number;
  constructor(
    private readonly dv: DataView,
    readonly levels: number,
    base = TABLES,
  ) {
    this.next = base;
    this.root = this.alloc();
  }
  private alloc(): number {
    const pa = this.next;
    this.next += 4096;
    for (let i = 0; i < 4096; i += 8) this.dv.setBigUint64(pa - RAM_BASE + i, 0n, true);
    return pa;
  }
  get satp(): bigint {
    return (BigInt(this.levels === 3 ? 8 : 9) << 60n) | BigInt(this.root / 4096);
  }
  /** Address of the PTE for `va` at `level`, creating intermediate tables. */
  pteAddr(va: bigint, level: number): number {
    let table = this.root;
    for (let l = this.levels - 1; l > level; l--) {
      const addr = table + Number((u64(va) >> BigInt(12 + 9 * l)) & 0x1ffn) * 8;
      let pte = this.dv.getBigUint64(addr - RAM_BASE, true);
      if ((pte & 1n) === 0n) {
        const t = this.alloc();
        pte = (BigInt(t / 4096) << 10n) | 1n;
        this.dv.setBigUint64(addr - RAM_BASE, pte, true);
      }
      table = Number(pte >> 10n) * 4096;
    }
    return table + Number((u64(va) >> BigInt(12 + 9 * level)) & 0x1ffn) * 8;
  }
  /** Maps `va` to physical `pa` with a leaf at `level` (0: 4 KiB, 1: 2 MiB, 2: 1 GiB, 3: 512 GiB). */
  map(va: bigint, pa: number, flags: number, level = 0): number {
    const addr = this.pteAddr(va, level);
    this.dv.setBigUint64(addr - RAM_BASE, (BigInt(Math.floor(pa / 4096)) << 10n) | BigInt(flags), true);
    return addr;
  }
  pte(addr: number): bigint {
    return this.dv.getBigUint64(addr - RAM_BASE, true);
  }
  setPte(addr: number, v: bigint): void {
    this.dv.setBigUint64(addr - RAM_BASE, v, true);
  }
}

/** A hart with `levels`-level paging on, RAM identity-mapped (supervisor RWX) by a gigapage. */
function machine(levels: 3 | 4 = 3): Machine {
  const bus = new Bus(RAM_BASE, RAM_SIZE);
  const hart = withTestEngine(new Hart(bus, 0, { now: () => 0 }));
  const dv = new DataView(bus.ramBuffer);
  const pt = new PageTables(dv, levels);
  pt.map(BigInt(RAM_BASE), RAM_BASE, RWX, 2);
  const m = { hart, dv, pt };
  code(m, MTRAP, [A.jal(0, 0)]);
  code(m, STRAP, [A.jal(0, 0)]);
  hart.setCsr(CSR.mtvec, BigInt(MTRAP));
  hart.setCsr(CSR.stvec, BigInt(STRAP));
  hart.setCsr(CSR.satp, pt.satp);
  assert.equal(u64(hart.getCsr(CSR.satp)), pt.satp);
  enter(m, PRIV_S, CODE);
  return m;
}

function code(m: { dv: DataView; hart: Hart }, addr: number, insns: number[]): void {
  let a = addr;
  for (const w of insns) {
    m.dv.setUint32(a - RAM_BASE, w >>> 0, true);
    a += 4;
  }
  m.hart.bus.externalWrite(addr - RAM_BASE, a - addr);
}
const w64 = (m: Machine, pa: number, v: bigint) => m.dv.setBigUint64(pa - RAM_BASE, u64(v), true);
const r64 = (m: Machine, pa: number) => m.dv.getBigUint64(pa - RAM_BASE, true);
const csr = (m: Machine, n: number) => u64(m.hart.getCsr(n));
const x = (m: Machine, r: number) => u64(m.hart.getX(r));
const setX = (m: Machine, r: number, v: bigint | number) => m.hart.setX(r, BigInt(v));
const mstatus = (m: Machine) => Number(csr(m, CSR.mstatus) & 0xffffffffn);
function setStatus(m: Machine, set: number, clear = 0): void {
  m.hart.setCsr(CSR.mstatus, BigInt((mstatus(m) & ~clear) | set) & 0xffffffffn);
}
function enter(m: Machine, priv: number, pc: number | bigint): void {
  m.hart.setPrivilege(priv);
  m.hart.pc = Number(BigInt.asIntN(64, BigInt(pc)));
}
/** Runs one instruction at CODE in S-mode. */
function runS(m: Machine, insn: number): void {
  code(m, CODE, [insn]);
  enter(m, PRIV_S, CODE);
  m.hart.step();
}
function expectMTrap(m: Machine, cause: bigint, epc: bigint | number, tval: bigint | number): void {
  assert.equal(m.hart.priv, PRIV_M, "trap taken in M");
  assert.equal(csr(m, CSR.mcause), cause, "mcause");
  assert.equal(csr(m, CSR.mepc), u64(BigInt(epc)), "mepc");
  assert.equal(csr(m, CSR.mtval), u64(BigInt(tval)), "mtval");
}
function expectNoTrap(m: Machine, priv = PRIV_S): void {
  assert.equal(m.hart.priv, priv, `no trap (mcause ${csr(m, CSR.mcause)}, mtval 0x${csr(m, CSR.mtval).toString(16)})`);
}

const LOAD_PF = 13n,
  STORE_PF = 15n,
  FETCH_PF = 12n;
const SFENCE = 0x12000073; // sfence.vma x0, x0

// ---------------------------------------------------------------------------------------------

for (const levels of [3, 4] as const) {
  const name = levels === 3 ? "Sv39" : "Sv48";
  describe(`${name} translation`, () => {
    test("a 4 KiB page translates loads and stores", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, RW);
      w64(m, DPAGE + 8, 0x1122334455667788n);
      setX(m, A0, va);
      runS(m, A.ld(T0, 8, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x1122334455667788n);
      setX(m, A1, 0xcafef00dn);
      runS(m, A.sd(A1, 0x7f8, A0));
      expectNoTrap(m);
      assert.equal(r64(m, DPAGE + 0x7f8), 0xcafef00dn);
    });

    test("a 2 MiB megapage translates", () => {
      const m = machine(levels);
      const va = 0x0020_0000n;
      m.pt.map(va, MEGA_PA, RW, 1);
      w64(m, MEGA_PA + 0x12340, 0xabcdn);
      setX(m, A0, va + 0x12340n);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0xabcdn);
      setX(m, A1, 0x5a5an);
      setX(m, A0, va + 0x1ffff8n);
      runS(m, A.sd(A1, 0, A0));
      expectNoTrap(m);
      assert.equal(r64(m, MEGA_PA + 0x1ffff8), 0x5a5an);
    });

    test("a 1 GiB gigapage translates", () => {
      const m = machine(levels);
      const va = 0x4000_0000n;
      m.pt.map(va, RAM_BASE, RW, 2);
      w64(m, DPAGE + 0x18, 0x600dn);
      setX(m, A0, va + BigInt(DPAGE - RAM_BASE + 0x18));
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x600dn);
    });

    test("a high-half (negative) virtual address translates for fetch and data", () => {
      const m = machine(levels);
      const kva = levels === 3 ? 0xffff_ffff_8000_0000n : 0xffff_8000_8000_0000n;
      m.pt.map(kva, RAM_BASE, RWX, 2);
      const kcode = kva + BigInt(CODE - RAM_BASE);
      // at CODE (identity): jump to the alias of CODE + 0x10 in the high half
      code(m, CODE, [A.jalr(0, 0x10, A0)]);
      code(m, CODE + 0x10, [A.auipc(T0, 0), A.ld(T1, 0, A1), A.ecall()]);
      w64(m, DPAGE, 0x4b4b4b4bn);
      setX(m, A0, kcode);
      setX(m, A1, kva + BigInt(DPAGE - RAM_BASE));
      enter(m, PRIV_S, CODE);
      m.hart.step();
      assert.equal(u64(BigInt(m.hart.pc)), kcode + 0x10n);
      m.hart.step();
      m.hart.step();
      expectNoTrap(m);
      assert.equal(x(m, T0), kcode + 0x10n, "auipc sees the high virtual pc");
      assert.equal(x(m, T1), 0x4b4b4b4bn);
      m.hart.step();
      expectMTrap(m, 9n, kcode + 0x18n, 0n);
    });

    test("unmapped addresses give load/store/fetch page faults with tval = the virtual address", () => {
      const va = 0x1234_5678n;
      for (const [insn, cause] of [
        [A.ld(T0, 0, A0), LOAD_PF],
        [A.lbu(T0, 0, A0), LOAD_PF],
        [A.sd(T0, 0, A0), STORE_PF],
        [A.sb(T0, 0, A0), STORE_PF],
        [A.amoadd_w(T0, T0, A0), STORE_PF],
        [A.lr_w(T0, A0), LOAD_PF],
      ] as const) {
        const m = machine(levels);
        setX(m, A0, va);
        setX(m, T0, 0x77);
        runS(m, insn);
        expectMTrap(m, cause, CODE, va);
        assert.equal(x(m, T0), 0x77n);
      }
    });

    test("a fetch from an unmapped address faults with sepc = stval = that address (delegated)", () => {
      const m = machine(levels);
      m.hart.setCsr(CSR.medeleg, (1n << 12n) | (1n << 13n) | (1n << 15n));
      const target = 0x1000_0124n;
      setX(m, A0, target);
      runS(m, A.jalr(0, 0, A0));
      assert.equal(u64(BigInt(m.hart.pc)), target);
      m.hart.step();
      assert.equal(m.hart.priv, PRIV_S);
      assert.equal(csr(m, CSR.scause), FETCH_PF);
      assert.equal(csr(m, CSR.sepc), target);
      assert.equal(csr(m, CSR.stval), target, "stval is the faulting pc, not its page");
    });

    test("a fetch from an unmapped page-aligned address faults with cause 12", () => {
      const m = machine(levels);
      const target = 0x1000_0000n;
      setX(m, A0, target);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      expectMTrap(m, FETCH_PF, target, target);
    });

    test("delegated load and store page faults report scause and stval", () => {
      const m = machine(levels);
      m.hart.setCsr(CSR.medeleg, (1n << 12n) | (1n << 13n) | (1n << 15n));
      m.hart.setCsr(CSR.mcause, 0n);
      const va = 0x3000_0abcn;
      setX(m, A0, va);
      runS(m, A.lw(T0, 0, A0));
      assert.equal(m.hart.priv, PRIV_S);
      assert.equal(csr(m, CSR.scause), LOAD_PF);
      assert.equal(csr(m, CSR.stval), va);
      assert.equal(csr(m, CSR.sepc), BigInt(CODE));
      assert.equal(m.hart.pc, STRAP);
      runS(m, A.sw(T0, 0, A0));
      assert.equal(csr(m, CSR.scause), STORE_PF);
      assert.equal(csr(m, CSR.stval), va);
      assert.equal(csr(m, CSR.mcause), 0n, "M never saw them");
    });

    test("a U page is not accessible from S unless SUM (loads/stores); never fetchable", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, RWX | U);
      w64(m, DPAGE, 0x77n);
      setX(m, A0, va);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
      runS(m, A.sd(A0, 0, A0));
      expectMTrap(m, STORE_PF, CODE, va);
      setStatus(m, MSTATUS_SUM);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x77n);
      runS(m, A.sd(A0, 8, A0));
      expectNoTrap(m);
      assert.equal(r64(m, DPAGE + 8), va);
      // fetch from a U page in S faults even with SUM
      code(m, DPAGE, [A.addi(T1, 0, 1)]);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      expectMTrap(m, FETCH_PF, va, va);
      // clearing SUM (as the kernel does after copy_from_user) takes effect at once
      setStatus(m, 0, MSTATUS_SUM);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
    });

    test("csrc sstatus.SUM inside S revokes access to a U page that was just used", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, RW | U);
      setStatus(m, MSTATUS_SUM);
      setX(m, A0, va);
      setX(m, A1, MSTATUS_SUM);
      code(m, CODE, [A.ld(T0, 0, A0), A.csrrc(0, CSR.sstatus, A1), A.ld(T1, 0, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.step();
      m.hart.step();
      m.hart.step();
      expectMTrap(m, LOAD_PF, CODE + 8, va);
    });

    test("U mode may use U pages only", () => {
      const m = machine(levels);
      const ucode = 0x2000_0000n;
      const udata = 0x1000_0000n;
      const sdata = 0x1000_1000n;
      m.pt.map(ucode, UCODE_PA, R | X | AC | V | U);
      m.pt.map(udata, DPAGE, RW | U);
      m.pt.map(sdata, DPAGE2, RW);
      w64(m, DPAGE, 0x11n);
      code(m, UCODE_PA, [A.ld(T0, 0, A0), A.sd(T0, 8, A0), A.ld(T1, 0, A1)]);
      setX(m, A0, udata);
      setX(m, A1, sdata);
      enter(m, PRIV_U, ucode);
      m.hart.step();
      m.hart.step();
      expectNoTrap(m, PRIV_U);
      assert.equal(x(m, T0), 0x11n);
      assert.equal(r64(m, DPAGE + 8), 0x11n);
      m.hart.step();
      expectMTrap(m, LOAD_PF, ucode + 8n, sdata);
      // and U cannot execute a supervisor page
      enter(m, PRIV_U, CODE);
      m.hart.step();
      expectMTrap(m, FETCH_PF, CODE, CODE);
    });

    test("MXR allows loads from execute-only pages; stores still fault", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, X | AC | DI | V);
      w64(m, DPAGE + 0x10, 0x3131n);
      setX(m, A0, va + 0x10n);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va + 0x10n);
      setStatus(m, MSTATUS_MXR);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x3131n);
      runS(m, A.sd(T0, 0, A0));
      expectMTrap(m, STORE_PF, CODE, va + 0x10n);
      setStatus(m, 0, MSTATUS_MXR);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va + 0x10n);
    });

    test("an execute-only page can be executed from", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, X | AC | V);
      code(m, DPAGE, [A.addi(T1, 0, 5)]);
      setX(m, A0, va);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      expectNoTrap(m);
      assert.equal(x(m, T1), 5n);
    });

    test("the walker sets A on access and D on store in the PTE in RAM", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const pte = m.pt.map(va, DPAGE, R | W | X | V);
      setX(m, A0, va);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(m.pt.pte(pte) & BigInt(AC | DI), BigInt(AC), "A set, D clear after a load");
      runS(m, A.sd(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(m.pt.pte(pte) & BigInt(AC | DI), BigInt(AC | DI), "D set after a store");
      // fetch sets A
      const va2 = 0x1000_1000n;
      const pte2 = m.pt.map(va2, DPAGE2, X | V);
      code(m, DPAGE2, [A.addi(T1, 0, 1)]);
      setX(m, A0, va2);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      expectNoTrap(m);
      assert.equal(m.pt.pte(pte2) & BigInt(AC | DI), BigInt(AC));
    });

    test("a store to a page first read sets D even though the read was cached", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const pte = m.pt.map(va, DPAGE, R | W | AC | V);
      setX(m, A0, va);
      code(m, CODE, [A.ld(T0, 0, A0), A.ld(T0, 8, A0), A.sd(T0, 16, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.run(3);
      expectNoTrap(m);
      assert.equal(m.pt.pte(pte) & BigInt(DI), BigInt(DI));
    });

    test("the walker sets A and D in a superpage leaf", () => {
      const m = machine(levels);
      const va = 0x0020_0000n;
      const pte = m.pt.map(va, MEGA_PA, R | W | V, 1);
      setX(m, A0, va + 0x1000n);
      runS(m, A.sd(A0, 0, A0));
      expectNoTrap(m);
      assert.equal(m.pt.pte(pte) & BigInt(AC | DI), BigInt(AC | DI));
    });

    test("a misaligned superpage faults", () => {
      for (const [level, pa, va] of [
        [1, MEGA_PA + 0x1000, 0x0020_0000n],
        [2, RAM_BASE + 0x20_0000, 0x4000_0000n],
      ] as const) {
        const m = machine(levels);
        m.pt.map(va, pa, RW, level);
        setX(m, A0, va + 8n);
        runS(m, A.ld(T0, 0, A0));
        expectMTrap(m, LOAD_PF, CODE, va + 8n);
        runS(m, A.sd(T0, 0, A0));
        expectMTrap(m, STORE_PF, CODE, va + 8n);
      }
    });

    test("reserved PTE encodings fault: W without R, a non-leaf at level 0, reserved high bits", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const pte = m.pt.map(va, DPAGE, W | AC | DI | V);
      setX(m, A0, va);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
      m.pt.setPte(pte, (BigInt(DPAGE2 / 4096) << 10n) | 1n); // pointer at the last level
      runS(m, SFENCE);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
      m.pt.setPte(pte, (BigInt(DPAGE / 4096) << 10n) | BigInt(RW) | (1n << 60n));
      runS(m, SFENCE);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
      m.pt.setPte(pte, (BigInt(DPAGE / 4096) << 10n) | BigInt(RW));
      runS(m, SFENCE);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
    });

    test("non-canonical addresses fault", () => {
      const bad =
        levels === 3
          ? [0x0000_0040_0000_0000n, 0xffff_ffbf_ffff_f000n, 0x0010_0000_8000_0000n]
          : [0x0000_8000_0000_0000n, 0xffff_7fff_ffff_f000n, 0x0001_0000_8000_0000n];
      for (const va of bad) {
        const m = machine(levels);
        // map the address the truncated VPN would select, so only the canonical check can fault
        m.pt.map(va, RAM_BASE, RWX, 2);
        setX(m, A0, va + 0x10n);
        runS(m, A.ld(T0, 0, A0));
        expectMTrap(m, LOAD_PF, CODE, va + 0x10n);
        runS(m, A.sd(T0, 0, A0));
        expectMTrap(m, STORE_PF, CODE, va + 0x10n);
        setX(m, A0, va); // page-aligned target: the fetch-tval test covers offsets
        runS(m, A.jalr(0, 0, A0));
        m.hart.step();
        expectMTrap(m, FETCH_PF, va, va);
      }
    });

    test("a non-canonical address far from zero reports its exact value in tval", () => {
      const m = machine(levels);
      const va = 0x8000_0000_8000_0010n; // the identity gigapage's VPN with bit 63 set
      setX(m, A0, va);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
    });

    test("after changing a PTE, sfence.vma makes the new mapping visible", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const pte = m.pt.map(va, DPAGE, RW);
      w64(m, DPAGE, 0x1111n);
      w64(m, DPAGE2, 0x2222n);
      setX(m, A0, va);
      code(m, CODE, [A.ld(T0, 0, A0), SFENCE, A.ld(T1, 0, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.step();
      assert.equal(x(m, T0), 0x1111n);
      m.pt.setPte(pte, (BigInt(DPAGE2 / 4096) << 10n) | BigInt(RW));
      m.hart.step();
      m.hart.step();
      expectNoTrap(m);
      assert.equal(x(m, T1), 0x2222n);
      // unmapping plus sfence.vma gives a fault, also for stores and fetches
      m.pt.setPte(pte, 0n);
      runS(m, SFENCE);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va);
      runS(m, A.sd(T0, 0, A0));
      expectMTrap(m, STORE_PF, CODE, va);
    });

    test("sfence.vma of one address makes its new mapping visible, also of a megapage it lies in", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const mega = 0x0020_0000n;
      const mega2Pa = RAM_BASE + 0x60_0000; // 2 MiB aligned
      const pte = m.pt.map(va, DPAGE, RW);
      const megaPte = m.pt.map(mega, MEGA_PA, RW, 1);
      w64(m, DPAGE, 0x1111n);
      w64(m, DPAGE2, 0x2222n);
      w64(m, MEGA_PA + 0x12340, 0x3333n);
      w64(m, mega2Pa + 0x12340, 0x4444n);
      setX(m, A0, va);
      setX(m, A1, mega + 0x12340n);
      setX(m, T1, mega + 0x5000n); // another 4 KiB page of the megapage
      const sfenceOf = (rs1: number) => SFENCE | (rs1 << 15);
      code(m, CODE, [A.ld(T0, 0, A0), A.ld(T0, 0, A1), sfenceOf(A0), sfenceOf(T1), A.ld(T0, 0, A0), A.ld(A1, 0, A1)]);
      enter(m, PRIV_S, CODE);
      m.hart.run(2);
      assert.equal(x(m, T0), 0x3333n);
      m.pt.setPte(pte, (BigInt(DPAGE2 / 4096) << 10n) | BigInt(RW));
      m.pt.setPte(megaPte, (BigInt(mega2Pa / 4096) << 10n) | BigInt(RW));
      m.hart.run(4);
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x2222n, "the page's new mapping");
      assert.equal(x(m, A1), 0x4444n, "the megapage's new mapping");
    });

    test("sfence.vma also drops a cached instruction translation", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      const pte = m.pt.map(va, DPAGE, X | AC | V);
      code(m, DPAGE, [A.addi(T1, 0, 1), A.jalr(0, 0, A1)]);
      code(m, DPAGE2, [A.addi(T1, 0, 2), A.jalr(0, 0, A1)]);
      code(m, CODE, [A.jalr(A1, 0, A0), SFENCE, A.jalr(A1, 0, A0)]);
      code(m, CODE + 12, [A.jal(0, 0)]);
      setX(m, A0, va);
      enter(m, PRIV_S, CODE);
      m.hart.run(3); // jalr, addi, jalr back
      assert.equal(x(m, T1), 1n);
      m.pt.setPte(pte, (BigInt(DPAGE2 / 4096) << 10n) | BigInt(X | AC | V));
      m.hart.run(4); // sfence, jalr, addi, jalr back
      expectNoTrap(m);
      assert.equal(x(m, T1), 2n);
    });

    test("sfence.vma is illegal in U, and in S with TVM; satp access in S with TVM is illegal", () => {
      const m = machine(levels);
      const ucode = 0x2000_0000n;
      m.pt.map(ucode, UCODE_PA, R | X | AC | V | U);
      code(m, UCODE_PA, [SFENCE]);
      enter(m, PRIV_U, ucode);
      m.hart.step();
      expectMTrap(m, 2n, ucode, SFENCE);
      const n = machine(levels);
      setStatus(n, MSTATUS_TVM);
      runS(n, SFENCE);
      expectMTrap(n, 2n, CODE, SFENCE);
      runS(n, A.csrrs(T0, CSR.satp, 0));
      expectMTrap(n, 2n, CODE, A.csrrs(T0, CSR.satp, 0));
    });

    test("satp writes with an unsupported mode are ignored", () => {
      const m = machine(levels);
      const before = csr(m, CSR.satp);
      for (const mode of [1n, 7n, 10n, 11n, 15n]) {
        setX(m, A0, (mode << 60n) | 0x12345n);
        runS(m, A.csrrw(0, CSR.satp, A0));
        expectNoTrap(m);
        assert.equal(csr(m, CSR.satp), before, `mode ${mode}`);
        m.hart.setCsr(CSR.satp, (mode << 60n) | 0x777n);
        assert.equal(csr(m, CSR.satp), before, `mode ${mode} via setCsr`);
      }
      // translation still works with the old root
      setX(m, A0, CODE);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
    });

    test("satp = 0 (Bare) turns translation off", () => {
      const m = machine(levels);
      w64(m, DPAGE, 0x4242n);
      setX(m, A0, DPAGE);
      setX(m, A1, 0);
      code(m, CODE, [A.csrrw(0, CSR.satp, A1), A.ld(T0, 0, A0)]);
      m.hart.run(2);
      expectNoTrap(m);
      assert.equal(csr(m, CSR.satp), 0n);
      assert.equal(x(m, T0), 0x4242n);
    });

    /** A second tree like the first (RAM identity-mapped), and A0 = va, A1 = its satp. */
    const secondTree = (m: Machine, va: bigint): PageTables => {
      const other = new PageTables(m.dv, levels, TABLES + 0x8_0000);
      other.map(BigInt(RAM_BASE), RAM_BASE, RWX, 2);
      setX(m, A0, va);
      setX(m, A1, other.satp);
      return other;
    };

    test("a satp write to another tree drops the old tree's (non-global) translations", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, RW);
      w64(m, DPAGE, 0x1111n);
      w64(m, DPAGE2, 0x2222n);
      secondTree(m, va).map(va, DPAGE2, RW);
      code(m, CODE, [A.ld(T0, 0, A0), A.csrrw(0, CSR.satp, A1), A.ld(T1, 0, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.run(3);
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x1111n);
      assert.equal(x(m, T1), 0x2222n);
    });

    test("global translations kept across a satp write go at sfence.vma, and when paging goes off", () => {
      const G = 32;
      const m = machine(levels);
      // Two trees that map the code's megapage alike and DPAGE (as a virtual address; in Bare
      // mode it reads DPAGE itself) globally to different pages.
      const tree = (base: number, pa: number): PageTables => {
        const t = new PageTables(m.dv, levels, base);
        t.map(BigInt(RAM_BASE), RAM_BASE, RWX, 1);
        t.map(BigInt(DPAGE), pa, RW | G);
        return t;
      };
      const first = tree(TABLES + 0x4_0000, DPAGE2);
      const second = tree(TABLES + 0x8_0000, DPAGE2 + 0x1000);
      w64(m, DPAGE, 0x1111n);
      w64(m, DPAGE2, 0x2222n);
      w64(m, DPAGE2 + 0x1000, 0x3333n);
      m.hart.setCsr(CSR.satp, first.satp);
      setX(m, A0, DPAGE);
      setX(m, A1, second.satp);
      code(m, CODE, [A.ld(T0, 0, A0), A.csrrw(0, CSR.satp, A1), SFENCE, A.ld(T1, 0, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.run(4);
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x2222n);
      assert.equal(x(m, T1), 0x3333n, "sfence.vma x0 drops global translations too");
      setX(m, A1, 0);
      code(m, CODE, [A.ld(T0, 0, A0), A.csrrw(0, CSR.satp, A1), A.ld(T1, 0, A0)]);
      enter(m, PRIV_S, CODE);
      m.hart.run(3);
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x3333n);
      assert.equal(x(m, T1), 0x1111n, "Bare: no translation, global or not");
    });

    test("a misaligned load/store across a page boundary uses both translations", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      // second virtual page maps *below* the first physical page: not contiguous
      m.pt.map(va, DPAGE2, RW);
      m.pt.map(va + 0x1000n, DPAGE, RW);
      for (let i = 0; i < 8; i++) {
        m.dv.setUint8(DPAGE2 + 0xff8 + i - RAM_BASE, 0x10 + i);
        m.dv.setUint8(DPAGE + i - RAM_BASE, 0x20 + i);
      }
      setX(m, A0, va + 0xffdn);
      runS(m, A.ld(T0, 0, A0));
      expectNoTrap(m);
      assert.equal(x(m, T0), 0x2423222120171615n);
      setX(m, A1, 0xa1a2a3a4a5a6a7a8n);
      runS(m, A.sd(A1, 0, A0));
      expectNoTrap(m);
      assert.equal(r64(m, DPAGE2 + 0xff8), 0xa6a7a81413121110n);
      assert.equal(r64(m, DPAGE), 0x272625a1a2a3a4a5n);
    });

    test("a misaligned access whose second page is unmapped faults at that page; memory untouched", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE, RW);
      w64(m, DPAGE + 0xff8, 0x0102030405060708n);
      setX(m, A0, va + 0xffcn);
      setX(m, A1, -1n);
      setX(m, T0, 0x99n);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, LOAD_PF, CODE, va + 0x1000n);
      assert.equal(x(m, T0), 0x99n);
      runS(m, A.sd(A1, 0, A0));
      expectMTrap(m, STORE_PF, CODE, va + 0x1000n);
      assert.equal(r64(m, DPAGE + 0xff8), 0x0102030405060708n, "first page not written");
      // second page read-only: same for stores
      m.pt.map(va + 0x1000n, DPAGE2, R | AC | V);
      runS(m, SFENCE);
      runS(m, A.sw(A1, 2, A0));
      expectMTrap(m, STORE_PF, CODE, va + 0x1000n);
      assert.equal(r64(m, DPAGE + 0xff8), 0x0102030405060708n, "first page not written");
    });

    test("a 32-bit instruction straddling two pages is fetched through both translations", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE2, X | AC | V);
      m.pt.map(va + 0x1000n, DPAGE, X | AC | V);
      const insn = A.addi(T1, 0, 0x123);
      m.dv.setUint16(DPAGE2 + 0xffe - RAM_BASE, insn & 0xffff, true);
      m.dv.setUint16(DPAGE - RAM_BASE, insn >>> 16, true);
      code(m, DPAGE + 2, [A.addi(T0, 0, 9)]);
      setX(m, A0, va + 0xffen);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      m.hart.step();
      expectNoTrap(m);
      assert.equal(x(m, T1), 0x123n);
      assert.equal(x(m, T0), 9n);
    });

    test("a straddling instruction whose second page is unmapped: epc = its start, tval = next page", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      m.pt.map(va, DPAGE2, X | AC | V);
      const insn = A.addi(T1, 0, 0x123);
      m.dv.setUint16(DPAGE2 + 0xffe - RAM_BASE, insn & 0xffff, true);
      setX(m, A0, va + 0xffen);
      runS(m, A.jalr(0, 0, A0));
      m.hart.step();
      expectMTrap(m, FETCH_PF, va + 0xffen, va + 0x1000n);
      assert.equal(x(m, T1), 0n);
    });

    test("a page-table pointer outside RAM gives an access fault, not a page fault", () => {
      const m = machine(levels);
      const va = 0x1000_0000n;
      // the level-2 entry for va (not the one that maps the code) points outside RAM
      const l2 = m.pt.pteAddr(va, 2);
      m.pt.setPte(l2, (BigInt(0x1000_0000 / 4096) << 10n) | 1n);
      runS(m, SFENCE);
      setX(m, A0, va);
      runS(m, A.ld(T0, 0, A0));
      expectMTrap(m, 5n, CODE, va);
      runS(m, A.sd(T0, 0, A0));
      expectMTrap(m, 7n, CODE, va);
    });
  });
}

describe("Sv48 only", () => {
  test("a 512 GiB terapage translates", () => {
    const m = machine(4);
    const va = 0x0000_0080_0000_0000n; // level-3 index 1
    m.pt.map(va, 0, RW, 3);
    w64(m, DPAGE + 0x20, 0x7e7en);
    setX(m, A0, va + BigInt(DPAGE + 0x20));
    runS(m, A.ld(T0, 0, A0));
    expectNoTrap(m);
    assert.equal(x(m, T0), 0x7e7en);
  });

  test("an address above the Sv39 range is canonical in Sv48", () => {
    const m = machine(4);
    const va = 0x0000_0040_0000_0000n;
    m.pt.map(va, DPAGE, RW);
    w64(m, DPAGE, 0x48n);
    setX(m, A0, va);
    runS(m, A.ld(T0, 0, A0));
    expectNoTrap(m);
    assert.equal(x(m, T0), 0x48n);
  });

  test("switching satp from an Sv48 tree to an Sv39 tree takes effect at once", () => {
    const m = machine(4);
    const va = 0x1000_0000n;
    m.pt.map(va, DPAGE, RW);
    w64(m, DPAGE, 0x48n);
    w64(m, DPAGE2, 0x39n);
    const sv39 = new PageTables(m.dv, 3, TABLES + 0x8_0000);
    sv39.map(BigInt(RAM_BASE), RAM_BASE, RWX, 2);
    sv39.map(va, DPAGE2, RW);
    setX(m, A0, va);
    setX(m, A1, sv39.satp);
    code(m, CODE, [A.ld(T0, 0, A0), A.csrrw(0, CSR.satp, A1), A.ld(T1, 0, A0)]);
    enter(m, PRIV_S, CODE);
    m.hart.run(3);
    expectNoTrap(m);
    assert.equal(csr(m, CSR.satp), sv39.satp);
    assert.equal(x(m, T0), 0x48n);
    assert.equal(x(m, T1), 0x39n);
  });
});

describe("MPRV", () => {
  test("M-mode loads and stores with MPRV and MPP = S are translated", () => {
    const m = machine(3);
    const va = 0x1000_0000n;
    m.pt.map(va, DPAGE, RW);
    w64(m, DPAGE, 0x5151n);
    setStatus(m, MSTATUS_MPRV | (PRIV_S << MSTATUS_MPP_SHIFT), MSTATUS_MPP);
    setX(m, A0, va);
    setX(m, A1, 0x6262n);
    code(m, CODE, [A.ld(T0, 0, A0), A.sd(A1, 8, A0), A.addi(T1, 0, 3)]);
    enter(m, PRIV_M, CODE);
    m.hart.run(3);
    expectNoTrap(m, PRIV_M);
    assert.equal(m.hart.pc, CODE + 12, "fetch is not translated... and not trapped");
    assert.equal(x(m, T0), 0x5151n);
    assert.equal(r64(m, DPAGE + 8), 0x6262n);
  });

  test("MPRV with MPP = S faults on an unmapped address with the virtual address in mtval", () => {
    const m = machine(3);
    setStatus(m, MSTATUS_MPRV | (PRIV_S << MSTATUS_MPP_SHIFT), MSTATUS_MPP);
    const va = 0x3000_0010n;
    setX(m, A0, va);
    code(m, CODE, [A.ld(T0, 0, A0)]);
    enter(m, PRIV_M, CODE);
    m.hart.step();
    expectMTrap(m, LOAD_PF, CODE, va);
    // the trap set MPP = M, so a retry in the handler would not translate
    assert.equal((mstatus(m) & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT, PRIV_M);
  });

  test("MPRV with MPP = U enforces U permissions; SUM does not apply to U", () => {
    const m = machine(3);
    const uva = 0x1000_0000n;
    const sva = 0x1000_1000n;
    m.pt.map(uva, DPAGE, RW | U);
    m.pt.map(sva, DPAGE2, RW);
    w64(m, DPAGE, 0x55n);
    setStatus(m, MSTATUS_MPRV | MSTATUS_SUM, MSTATUS_MPP);
    setX(m, A0, uva);
    setX(m, A1, sva);
    code(m, CODE, [A.ld(T0, 0, A0), A.ld(T1, 0, A1)]);
    enter(m, PRIV_M, CODE);
    m.hart.step();
    expectNoTrap(m, PRIV_M);
    assert.equal(x(m, T0), 0x55n);
    m.hart.step();
    expectMTrap(m, LOAD_PF, CODE + 4, sva);
  });

  test("M-mode without MPRV is not translated", () => {
    const m = machine(3);
    w64(m, DPAGE, 0x6060n);
    setX(m, A0, DPAGE);
    code(m, CODE, [A.ld(T0, 0, A0)]);
    enter(m, PRIV_M, CODE);
    m.hart.step();
    expectNoTrap(m, PRIV_M);
    assert.equal(x(m, T0), 0x6060n);
  });

  test("toggling MPRV switches between physical and virtual addressing at once", () => {
    const m = machine(3);
    const va = 0x1000_0000n; // not RAM physically
    m.pt.map(va, DPAGE2, RW);
    w64(m, DPAGE2, 0xbbbbn);
    setStatus(m, PRIV_S << MSTATUS_MPP_SHIFT, MSTATUS_MPP | MSTATUS_MPRV);
    setX(m, A0, va);
    setX(m, A1, MSTATUS_MPRV);
    code(m, CODE, [A.csrrs(0, CSR.mstatus, A1), A.ld(T1, 0, A0), A.csrrc(0, CSR.mstatus, A1), A.ld(T0, 0, A0)]);
    enter(m, PRIV_M, CODE);
    m.hart.run(3);
    expectNoTrap(m, PRIV_M);
    assert.equal(x(m, T1), 0xbbbbn);
    m.hart.step();
    expectMTrap(m, 5n, CODE + 12, va); // physical 0x10000000: nothing there
  });
});

/**
 * The hypervisor's own SBI (`--firmware none`): a guest in S-mode executes `ecall` and the
 * hypervisor answers in a0/a1. The tests run real ecall instructions on a Hart prepared with
 * `prepareHart`, and check the results and the side effects on the host and on mip.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Bus } from "../../src/cpu/bus.js";
import { Hart, PRIV_S, PRIV_U } from "../../src/cpu/hart.js";
import { CSR, MSTATUS_SIE } from "../../src/cpu/csr.js";
import { HypervisorSbi, type SbiHost } from "../../src/machine/sbi.js";
import * as A from "../support/rv-asm.js";
import { withTestEngine } from "../support/engine.js";

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 1 << 20;
const STRAP = RAM_BASE + 0x200;
const MTRAP = RAM_BASE + 0x100;
const CODE = RAM_BASE + 0x1000;
const DATA = RAM_BASE + 0x8000;

const EXT = {
  BASE: 0x10,
  TIME: 0x54494d45,
  IPI: 0x735049,
  RFENCE: 0x52464e43,
  HSM: 0x48534d,
  SRST: 0x53525354,
  DBCN: 0x4442434e,
} as const;

const A0 = 10,
  A1 = 11,
  A6 = 16,
  A7 = 17,
  T0 = 5;
const STIP = 1 << 5,
  SSIP = 1 << 1;
const u64 = (v: bigint) => BigInt.asUintN(64, v);

class Host implements SbiHost {
  readonly out: number[] = [];
  readonly resets: [string, number][] = [];
  input: number[] = [];
  constructor(private readonly bus: Bus) {}
  putByte(byte: number): void {
    this.out.push(byte);
  }
  getByte(): number {
    return this.input.length > 0 ? this.input.shift()! : -1;
  }
  reset(kind: "poweroff" | "reboot", reason: number): void {
    this.resets.push([kind, reason]);
  }
  readPhysical(pa: number, length: number): Uint8Array | undefined {
    const off = this.bus.ramOffset(pa);
    if (off < 0 || off + length > this.bus.ramSize) return undefined;
    return this.bus.ram.slice(off, off + length);
  }
  get text(): string {
    return String.fromCharCode(...this.out);
  }
}

interface Guest {
  bus: Bus;
  harts: Hart[];
  hart: Hart;
  host: Host;
  sbi: HypervisorSbi;
  clock: { t: number; now(): number };
}

function guest(nharts = 1): Guest {
  const bus = new Bus(RAM_BASE, RAM_SIZE);
  const clock = {
    t: 1000,
    now(): number {
      return this.t;
    },
  };
  const harts = Array.from({ length: nharts }, (_, i) => withTestEngine(new Hart(bus, i, clock)));
  const host = new Host(bus);
  const sbi = new HypervisorSbi(harts, host);
  const dv = new DataView(bus.ramBuffer);
  dv.setUint32(MTRAP - RAM_BASE, A.jal(0, 0), true);
  dv.setUint32(STRAP - RAM_BASE, A.jal(0, 0), true);
  dv.setUint32(CODE - RAM_BASE, A.ecall(), true);
  dv.setUint32(CODE + 4 - RAM_BASE, A.addi(T0, T0, 1), true);
  for (const h of harts) {
    h.setCsr(CSR.mtvec, BigInt(MTRAP));
    sbi.prepareHart(h);
    h.setCsr(CSR.stvec, BigInt(STRAP));
    h.pc = CODE;
  }
  return { bus, harts, hart: harts[0], host, sbi, clock };
}

/** Executes one `ecall` in S-mode with a7 = ext, a6 = fid and a0.. = args; returns [a0, a1]. */
function call(g: Guest, ext: number, fid: number, args: (bigint | number)[] = [], hart = g.hart): [bigint, bigint] {
  hart.pc = CODE;
  hart.setX(A7, BigInt(ext));
  hart.setX(A6, BigInt(fid));
  for (let i = 0; i < 6; i++) hart.setX(A0 + i, BigInt(args[i] ?? 0));
  hart.step();
  assert.equal(hart.priv, PRIV_S, "still in S after the ecall");
  assert.equal(hart.pc, CODE + 4, "ecall returned to the next instruction");
  return [BigInt.asIntN(64, hart.getX(A0)), BigInt.asIntN(64, hart.getX(A1))];
}

const SBI_ERR_NOT_SUPPORTED = -2n;
const SBI_ERR_INVALID_PARAM = -3n;
const SBI_ERR_ALREADY_AVAILABLE = -6n;

describe("prepareHart", () => {
  test("boots the hart in S with traps delegated except ecall from S", () => {
    const g = guest();
    const h = g.hart;
    assert.equal(h.priv, PRIV_S);
    const medeleg = u64(h.getCsr(CSR.medeleg));
    assert.equal(medeleg & (1n << 9n), 0n, "ecall from S is not delegated");
    for (const c of [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 15])
      assert.equal((medeleg >> BigInt(c)) & 1n, 1n, `cause ${c}`);
    assert.equal(u64(h.getCsr(CSR.mideleg)), 0x222n);
    assert.equal(u64(h.getCsr(CSR.mcounteren)) & 7n, 7n);
  });

  test("rdtime works in the guest kernel", () => {
    const g = guest();
    g.clock.t = 987654;
    const dv = new DataView(g.bus.ramBuffer);
    dv.setUint32(CODE + 0x10 - RAM_BASE, A.csrrs(T0, CSR.time, 0), true);
    g.hart.pc = CODE + 0x10;
    g.hart.step();
    assert.equal(g.hart.priv, PRIV_S);
    assert.equal(g.hart.getX(T0), 987654n);
  });

  test("an ecall from U goes to the guest kernel's stvec, not to the SBI", () => {
    const g = guest();
    g.hart.setPrivilege(PRIV_U);
    g.hart.pc = CODE;
    g.hart.setX(A7, 0x10n);
    g.hart.setX(A6, 0n);
    g.hart.setX(A0, 0x1234n);
    g.hart.step();
    assert.equal(g.hart.priv, PRIV_S);
    assert.equal(g.hart.pc, STRAP);
    assert.equal(u64(g.hart.getCsr(CSR.scause)), 8n);
    assert.equal(u64(g.hart.getCsr(CSR.sepc)), BigInt(CODE));
    assert.equal(g.hart.getX(A0), 0x1234n, "a0 untouched");
  });

  test("the ecall preserves every register but a0 and a1", () => {
    const g = guest();
    for (let r = 1; r < 32; r++) g.hart.setX(r, BigInt(r) * 0x0101010101n);
    g.hart.setX(A7, BigInt(EXT.BASE));
    g.hart.setX(A6, 0n);
    g.hart.pc = CODE;
    g.hart.step();
    for (let r = 1; r < 32; r++) {
      if (r === A0 || r === A1 || r === A6 || r === A7) continue;
      assert.equal(g.hart.getX(r), BigInt(r) * 0x0101010101n, `x${r}`);
    }
    // and execution continues normally after it
    g.hart.step();
    assert.equal(g.hart.getX(T0), 5n * 0x0101010101n + 1n);
  });
});

describe("base extension", () => {
  test("get_spec_version reports v2.0", () => {
    const g = guest();
    assert.deepEqual(call(g, EXT.BASE, 0), [0n, 0x2000000n]);
  });

  test("impl id, impl version and machine ids succeed", () => {
    const g = guest();
    const [e1, id] = call(g, EXT.BASE, 1);
    assert.equal(e1, 0n);
    assert.notEqual(id, 0n, "not BBL's id");
    assert.equal(call(g, EXT.BASE, 2)[0], 0n);
    for (const fid of [4, 5, 6]) assert.deepEqual(call(g, EXT.BASE, fid), [0n, 0n]);
    assert.equal(call(g, EXT.BASE, 7)[0], SBI_ERR_NOT_SUPPORTED);
  });

  test("probe_extension: 1 for TIME, IPI, RFENCE, HSM, SRST, DBCN; 0 for an unknown one", () => {
    const g = guest();
    for (const [name, id] of Object.entries(EXT)) {
      assert.deepEqual(call(g, EXT.BASE, 3, [id]), [0n, 1n], name);
    }
    for (const id of [0x12345678, 0x4e41434c /* NACL */, 0x504d55 /* PMU */, 0x535553 /* SUSP */]) {
      assert.deepEqual(call(g, EXT.BASE, 3, [id]), [0n, 0n], `0x${id.toString(16)}`);
    }
  });

  test("an unknown extension returns SBI_ERR_NOT_SUPPORTED (-2)", () => {
    const g = guest();
    const [err] = call(g, 0x0a000000, 0);
    assert.equal(err, SBI_ERR_NOT_SUPPORTED);
    assert.equal(u64(g.hart.getX(A0)), 0xfffffffffffffffen);
    assert.equal(call(g, 0x12345678, 3)[0], SBI_ERR_NOT_SUPPORTED);
  });
});

describe("TIME", () => {
  test("set_timer in the past raises STIP at once", () => {
    const g = guest();
    g.clock.t = 1000;
    assert.equal(call(g, EXT.TIME, 0, [500])[0], 0n);
    assert.equal(g.hart.mip & STIP, STIP);
    assert.equal(u64(g.hart.getCsr(CSR.sip)) & BigInt(STIP), BigInt(STIP), "visible in sip");
  });

  test("set_timer in the future clears STIP and raises it only once update() passes the deadline", () => {
    const g = guest();
    g.clock.t = 1000;
    call(g, EXT.TIME, 0, [500]);
    assert.equal(g.hart.mip & STIP, STIP);
    call(g, EXT.TIME, 0, [5000]);
    assert.equal(g.hart.mip & STIP, 0, "a new deadline clears the pending timer");
    assert.equal(g.sbi.update(4999), 5000, "update returns the next deadline");
    assert.equal(g.hart.mip & STIP, 0);
    g.sbi.update(5000);
    assert.equal(g.hart.mip & STIP, STIP);
  });

  test("set_timer(all ones) disarms the timer", () => {
    const g = guest();
    call(g, EXT.TIME, 0, [500]);
    call(g, EXT.TIME, 0, [-1n]);
    assert.equal(g.hart.mip & STIP, 0);
    assert.equal(g.sbi.update(2 ** 53), Infinity);
    assert.equal(g.hart.mip & STIP, 0);
  });

  test("the timer interrupt reaches the guest's stvec when sie.STIE and SIE are set", () => {
    const g = guest();
    const h = g.hart;
    h.setCsr(CSR.sie, BigInt(STIP));
    h.setCsr(CSR.sstatus, BigInt(MSTATUS_SIE));
    g.clock.t = 1000;
    call(g, EXT.TIME, 0, [2000]);
    h.step(); // the instruction after the ecall runs: nothing pending
    assert.equal(h.getX(T0), 1n);
    g.clock.t = 2000;
    g.sbi.update(g.clock.now());
    h.pc = CODE + 4;
    h.step();
    assert.equal(h.priv, PRIV_S);
    assert.equal(u64(h.getCsr(CSR.scause)), 0x8000000000000005n);
    assert.equal(u64(h.getCsr(CSR.sepc)), BigInt(CODE + 4));
    assert.equal(h.pc, STRAP);
    assert.equal(h.getX(T0), 1n, "the interrupted instruction did not run");
  });

  test("set_timer wakes a hart that waits in WFI once update() raises STIP", () => {
    const g = guest();
    const h = g.hart;
    h.setCsr(CSR.sie, BigInt(STIP));
    g.clock.t = 1000;
    call(g, EXT.TIME, 0, [3000]);
    const dv = new DataView(g.bus.ramBuffer);
    dv.setUint32(CODE + 0x20 - RAM_BASE, 0x10500073, true); // wfi
    h.pc = CODE + 0x20;
    h.run(10);
    assert.equal(h.waiting, true);
    g.sbi.update(2999);
    assert.equal(h.waiting, true);
    g.sbi.update(3000);
    assert.equal(h.waiting, false);
  });

  test("legacy set_timer (a7 = 0) works and returns 0 in a0", () => {
    const g = guest();
    g.clock.t = 1000;
    g.hart.pc = CODE;
    assert.equal(call(g, 0x00, 0, [999])[0], 0n);
    assert.equal(g.hart.mip & STIP, STIP);
    call(g, 0x00, 0, [1001]);
    assert.equal(g.hart.mip & STIP, 0);
  });

  test("each hart has its own deadline", () => {
    const g = guest(2);
    const [h0, h1] = g.harts;
    g.clock.t = 100;
    call(g, EXT.TIME, 0, [200], h1);
    call(g, EXT.TIME, 0, [300], h0);
    g.sbi.update(250);
    assert.equal(h1.mip & STIP, STIP);
    assert.equal(h0.mip & STIP, 0);
  });
});

describe("IPI, RFENCE, HSM", () => {
  test("send_ipi raises SSIP on the harts in the mask; base -1 means all", () => {
    const g = guest(3);
    const [h0, h1, h2] = g.harts;
    assert.equal(call(g, EXT.IPI, 0, [0b10, 1])[0], 0n); // mask bit 1 with base 1: hart 2
    assert.deepEqual([h0.mip & SSIP, h1.mip & SSIP, h2.mip & SSIP], [0, 0, SSIP]);
    call(g, EXT.IPI, 0, [0, -1n]);
    assert.deepEqual([h0.mip & SSIP, h1.mip & SSIP, h2.mip & SSIP], [SSIP, SSIP, SSIP]);
  });

  test("legacy clear_ipi clears SSIP", () => {
    const g = guest();
    call(g, EXT.IPI, 0, [1, 0]);
    assert.equal(g.hart.mip & SSIP, SSIP);
    call(g, 0x03, 0);
    assert.equal(g.hart.mip & SSIP, 0);
  });

  test("remote fences succeed; hypervisor fences are not supported", () => {
    const g = guest();
    for (const fid of [0, 1, 2]) assert.equal(call(g, EXT.RFENCE, fid, [1, 0, 0, 0x1000])[0], 0n, `fid ${fid}`);
    for (const fid of [3, 4, 5, 6, 7])
      assert.equal(call(g, EXT.RFENCE, fid, [1, 0])[0], SBI_ERR_NOT_SUPPORTED, `fid ${fid}`);
  });

  test("hart_get_status reports STARTED for hart 0 and INVALID_PARAM for a missing hart", () => {
    const g = guest();
    assert.deepEqual(call(g, EXT.HSM, 2, [0]), [0n, 0n]);
    assert.equal(call(g, EXT.HSM, 2, [7])[0], SBI_ERR_INVALID_PARAM);
    assert.equal(call(g, EXT.HSM, 0, [0, CODE, 0])[0], SBI_ERR_ALREADY_AVAILABLE);
  });
});

describe("console and reset", () => {
  test("DBCN write_byte reaches putByte", () => {
    const g = guest();
    assert.deepEqual(call(g, EXT.DBCN, 2, [0x41]), [0n, 0n]);
    call(g, EXT.DBCN, 2, [0x10a]); // only the low byte
    assert.deepEqual(g.host.out, [0x41, 0x0a]);
  });

  test("DBCN write of a buffer in RAM reaches putByte and returns the byte count", () => {
    const g = guest();
    const msg = "hello, yun\n";
    g.bus.load(DATA, new TextEncoder().encode(msg));
    assert.deepEqual(call(g, EXT.DBCN, 0, [msg.length, DATA, 0]), [0n, BigInt(msg.length)]);
    assert.equal(g.host.text, msg);
  });

  test("DBCN write of a buffer outside RAM is INVALID_PARAM and writes nothing", () => {
    const g = guest();
    assert.equal(call(g, EXT.DBCN, 0, [4, 0x1000, 0])[0], SBI_ERR_INVALID_PARAM);
    assert.equal(call(g, EXT.DBCN, 0, [8, RAM_BASE + RAM_SIZE - 4, 0])[0], SBI_ERR_INVALID_PARAM);
    assert.deepEqual(g.host.out, []);
  });

  test("legacy console_putchar (a7 = 1) reaches putByte and returns 0", () => {
    const g = guest();
    g.hart.setX(A0, 0x78n);
    assert.equal(call(g, 0x01, 0, [0x78])[0], 0n);
    assert.deepEqual(g.host.out, [0x78]);
  });

  test("legacy console_getchar (a7 = 2) returns the next byte or -1", () => {
    const g = guest();
    g.host.input = [0x71];
    assert.equal(call(g, 0x02, 0)[0], 0x71n);
    assert.equal(call(g, 0x02, 0)[0], -1n);
  });

  test("SRST shutdown calls reset('poweroff'); reboots call reset('reboot')", () => {
    const g = guest();
    assert.equal(call(g, EXT.SRST, 0, [0, 0])[0], 0n);
    assert.deepEqual(g.host.resets, [["poweroff", 0]]);
    call(g, EXT.SRST, 0, [1, 1]);
    call(g, EXT.SRST, 0, [2, 0]);
    assert.deepEqual(g.host.resets, [
      ["poweroff", 0],
      ["reboot", 1],
      ["reboot", 0],
    ]);
  });

  test("SRST with an unknown reset type is INVALID_PARAM and does not reset", () => {
    const g = guest();
    assert.equal(call(g, EXT.SRST, 0, [0x1234, 0])[0], SBI_ERR_INVALID_PARAM);
    assert.deepEqual(g.host.resets, []);
  });

  test("legacy shutdown (a7 = 8) powers off", () => {
    const g = guest();
    call(g, 0x08, 0);
    assert.deepEqual(g.host.resets, [["poweroff", 0]]);
  });
});

/**
 * The SBI answered by the hypervisor itself (`--firmware none`): para-virtualization in its plain
 * form, where the guest kernel calls the hypervisor directly through `ecall` instead of through
 * M-mode firmware. Implements SBI v2.0 base, TIME, IPI, RFENCE, HSM, SRST and DBCN, plus the
 * legacy console, timer and shutdown calls.
 */
import type { Hart } from "../cpu/hart.js";
import { PRIV_S } from "../cpu/hart.js";
import { MIP_STIP, MIP_SSIP } from "../cpu/csr.js";

const EXT_BASE = 0x10;
const EXT_TIME = 0x54494d45;
const EXT_IPI = 0x735049;
const EXT_RFENCE = 0x52464e43;
const EXT_HSM = 0x48534d;
const EXT_SRST = 0x53525354;
const EXT_DBCN = 0x4442434e;

const SBI_SUCCESS = 0;
const SBI_ERR_NOT_SUPPORTED = -2;
const SBI_ERR_INVALID_PARAM = -3;
const SBI_ERR_ALREADY_AVAILABLE = -6;

/** Implementation ID reported by sbi_get_impl_id: not one of the registered IDs. */
const YUN_IMPL_ID = 0x59554e; // "YUN"

export interface SbiHost {
  /** Console output of one byte (DBCN / legacy putchar). */
  putByte(byte: number): void;
  /** Next console input byte, or -1. */
  getByte(): number;
  /** System reset: poweroff, cold/warm reboot. */
  reset(kind: "poweroff" | "reboot", reason: number): void;
  /** Physical memory read for DBCN write (returns undefined outside RAM). */
  readPhysical(pa: number, length: number): Uint8Array | undefined;
}

export interface SbiState {
  timerDeadline: number[];
}

export class HypervisorSbi {
  private readonly harts: Hart[];
  private readonly host: SbiHost;
  /** Per-hart supervisor timer deadline in timebase ticks (Infinity: none). */
  readonly timerDeadline: number[];

  constructor(harts: Hart[], host: SbiHost) {
    this.harts = harts;
    this.host = host;
    this.timerDeadline = harts.map(() => Infinity);
  }

  /** Boots a hart straight into S-mode with every trap delegated to the guest kernel. */
  prepareHart(hart: Hart): void {
    hart.setCsr(0x302, 0xb1ffn); // medeleg: everything except ecall from S (ours)
    hart.setCsr(0x303, BigInt(0x222)); // mideleg: SSI, STI, SEI
    hart.setCsr(0x306, 7n); // mcounteren: cycle, time, instret readable in S
    // scounteren as OpenSBI leaves it: U may read them too (the vDSO's clock_gettime reads time).
    hart.setCsr(0x106, 7n);
    hart.setCsr(0x300, 0n);
    hart.setPrivilege(PRIV_S);
    hart.ecallHandler = (h) => this.handle(h);
  }

  /** Raises STIP on harts whose deadline has passed; returns the next deadline. */
  update(now: number): number {
    let next = Infinity;
    for (let i = 0; i < this.harts.length; i++) {
      const d = this.timerDeadline[i];
      if (d <= now) this.harts[i].setPending(5, true);
      else if (d < next) next = d;
    }
    return next;
  }

  private setTimer(hart: Hart, value: bigint): void {
    const v = BigInt.asUintN(64, value);
    this.timerDeadline[hart.hartId] = v >= 1n << 62n ? Infinity : Number(v);
    hart.mip &= ~MIP_STIP;
    hart.attention = true;
    this.update(hart.clock.now());
  }

  private ret(hart: Hart, error: number, value: bigint | number = 0): true {
    hart.setX(10, BigInt(error));
    hart.setX(11, typeof value === "bigint" ? value : BigInt(value));
    return true;
  }

  private hartMask(mask: bigint, base: bigint): Hart[] {
    if (base === -1n || base === 0xffff_ffff_ffff_ffffn) return this.harts;
    const out: Hart[] = [];
    for (const h of this.harts) {
      const bit = BigInt(h.hartId) - base;
      if (bit >= 0n && bit < 64n && ((mask >> bit) & 1n) !== 0n) out.push(h);
    }
    return out;
  }

  handle(hart: Hart): boolean {
    const ext = Number(BigInt.asUintN(32, hart.getX(17)));
    const fid = Number(BigInt.asUintN(32, hart.getX(16)));
    const a0 = hart.getX(10);
    const a1 = hart.getX(11);
    switch (ext) {
      // legacy extensions (v0.1): a0 carries the result
      case 0x00: this.setTimer(hart, a0); hart.setX(10, 0n); return true;
      case 0x01: this.host.putByte(Number(a0 & 0xffn)); hart.setX(10, 0n); return true;
      case 0x02: hart.setX(10, BigInt(this.host.getByte())); return true;
      case 0x03: hart.mip &= ~MIP_SSIP; hart.setX(10, 0n); return true;
      case 0x04: for (const h of this.harts) h.setPending(1, true); hart.setX(10, 0n); return true;
      case 0x05: case 0x06: case 0x07: for (const h of this.harts) h.flushTlb(); hart.setX(10, 0n); return true;
      case 0x08: this.host.reset("poweroff", 0); hart.setX(10, 0n); return true;
      case EXT_BASE:
        switch (fid) {
          case 0: return this.ret(hart, SBI_SUCCESS, 0x2000000n); // spec v2.0
          case 1: return this.ret(hart, SBI_SUCCESS, YUN_IMPL_ID);
          case 2: return this.ret(hart, SBI_SUCCESS, 1);
          case 3: {
            const probe = Number(BigInt.asUintN(32, a0));
            const known = [EXT_BASE, EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST, EXT_DBCN, 0, 1, 2, 3, 4, 5, 6, 7, 8];
            return this.ret(hart, SBI_SUCCESS, known.includes(probe) ? 1 : 0);
          }
          case 4: case 5: case 6: return this.ret(hart, SBI_SUCCESS, 0); // mvendorid, marchid, mimpid
          default: return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        }
      case EXT_TIME:
        if (fid !== 0) return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        this.setTimer(hart, a0);
        return this.ret(hart, SBI_SUCCESS);
      case EXT_IPI:
        if (fid !== 0) return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        for (const h of this.hartMask(a0, a1)) h.setPending(1, true);
        return this.ret(hart, SBI_SUCCESS);
      case EXT_RFENCE:
        if (fid > 6) return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        // No hypervisor extension in the guest: the H-fences (fid 3..6) are not supported.
        if (fid >= 3) return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        for (const h of this.hartMask(a0, a1)) h.flushTlb();
        return this.ret(hart, SBI_SUCCESS);
      case EXT_HSM:
        switch (fid) {
          case 0: return this.ret(hart, this.harts.some((h) => BigInt(h.hartId) === a0) ? SBI_ERR_ALREADY_AVAILABLE : SBI_ERR_INVALID_PARAM);
          case 1: return this.ret(hart, SBI_ERR_NOT_SUPPORTED); // stopping the only running hart
          case 2: return this.ret(hart, this.harts.some((h) => BigInt(h.hartId) === a0) ? SBI_SUCCESS : SBI_ERR_INVALID_PARAM, 0); // STARTED
          case 3: return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
          default: return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        }
      case EXT_SRST: {
        if (fid !== 0) return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        const type = Number(BigInt.asUintN(32, a0));
        if (type === 0) this.host.reset("poweroff", Number(a1 & 0xffffffffn));
        else if (type === 1 || type === 2) this.host.reset("reboot", Number(a1 & 0xffffffffn));
        else return this.ret(hart, SBI_ERR_INVALID_PARAM);
        return this.ret(hart, SBI_SUCCESS);
      }
      case EXT_DBCN:
        switch (fid) {
          case 0: {
            const len = Number(BigInt.asUintN(32, a0));
            const bytes = this.host.readPhysical(Number(BigInt.asUintN(64, a1)) + Number(hart.getX(12)) * 2 ** 32, Math.min(len, 4096));
            if (!bytes) return this.ret(hart, SBI_ERR_INVALID_PARAM);
            for (const b of bytes) this.host.putByte(b);
            return this.ret(hart, SBI_SUCCESS, bytes.length);
          }
          case 1: return this.ret(hart, SBI_ERR_NOT_SUPPORTED); // console read: not offered
          case 2: this.host.putByte(Number(a0 & 0xffn)); return this.ret(hart, SBI_SUCCESS);
          default: return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
        }
      default:
        return this.ret(hart, SBI_ERR_NOT_SUPPORTED);
    }
  }

  save(): SbiState {
    return { timerDeadline: this.timerDeadline.map((d) => (Number.isFinite(d) ? d : -1)) };
  }

  /** One deadline per hart of this machine; anything but a non-negative number means none. */
  restore(state: SbiState): void {
    for (let i = 0; i < this.harts.length; i++) {
      const d = state.timerDeadline[i];
      this.timerDeadline[i] = typeof d === "number" && d >= 0 && d < Infinity ? d : Infinity;
    }
  }
}

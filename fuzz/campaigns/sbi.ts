/**
 * The hypervisor's SBI (`--firmware none`): what a guest kernel can pass in a7 (extension), a6
 * (function) and a0..a5. Properties: the call always returns (handled), a0 holds an SBI error code
 * the spec defines (or a legacy call's result), console output stays within what DBCN allows,
 * only SRST or the legacy shutdown power anything off, the timer state survives save/restore, and
 * a well-formed call still answers after the garbage.
 */
import fc from "fast-check";
import { Bus } from "../../src/cpu/bus.js";
import { Hart } from "../../src/cpu/hart.js";
import { HypervisorSbi, type SbiHost } from "../../src/machine/sbi.js";
import { leakGuard, must, timed, type Campaign, type Session } from "../campaign.js";

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 1 << 20;
const EXTENSIONS = [
  0x10, 0x54494d45, 0x735049, 0x52464e43, 0x48534d, 0x53525354, 0x4442434e, 0, 1, 2, 3, 4, 5, 6, 7, 8,
];
/** SBI_SUCCESS, ERR_FAILED .. ERR_DENIED (-1..-9): the codes a v2.0 call may answer. */
const ERRORS = new Set([0n, -1n, -2n, -3n, -4n, -5n, -6n, -7n, -8n, -9n]);

interface Call {
  ext: number;
  fid: number;
  args: bigint[];
}

const u64 = fc.oneof(
  fc.constantFrom(0n, 1n, 2n, 0xffff_ffff_ffff_ffffn, BigInt(RAM_BASE), BigInt(RAM_BASE + RAM_SIZE - 1), 1n << 63n),
  fc.bigInt({ min: 0n, max: 0xffff_ffff_ffff_ffffn }),
  fc.bigInt({ min: 0n, max: 5000n }),
);
const callArb: fc.Arbitrary<Call> = fc.record({
  ext: fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...EXTENSIONS) },
    { weight: 1, arbitrary: fc.nat(0xffff_ffff) },
  ),
  fid: fc.oneof(fc.nat(8), fc.nat(0xffff_ffff)),
  args: fc.array(u64, { minLength: 6, maxLength: 6 }),
});

export const sbiCampaign: Campaign = {
  name: "sbi",
  surface: "device",
  testRuns: 2000,
  batchRuns: 20000,
  open(): Session {
    const bus = new Bus(RAM_BASE, RAM_SIZE);
    let now = 1000;
    const clock = { now: () => now };
    const harts = [new Hart(bus, 0, clock), new Hart(bus, 1, clock)];
    let out = 0;
    const resets: string[] = [];
    const input = [0x61, 0x62];
    const host: SbiHost = {
      putByte: (b) => {
        must(Number.isInteger(b) && b >= 0 && b < 256, `putByte(${b})`);
        out++;
      },
      getByte: () => (input.length > 0 ? input.shift()! : -1),
      reset: (kind) => resets.push(kind),
      readPhysical: (pa, len) => {
        must(Number.isFinite(pa) && len >= 0 && len <= 4096, `readPhysical(${pa}, ${len})`);
        const off = bus.ramOffset(pa);
        if (off < 0 || off + len > bus.ramSize) return undefined;
        return bus.ram.subarray(off, off + len);
      },
    };
    const sbi = new HypervisorSbi(harts, host);
    for (const h of harts) sbi.prepareHart(h);
    const property = fc.property(
      fc.array(callArb, { minLength: 1, maxLength: 8 }),
      timed((calls: Call[]) => {
        for (const c of calls) {
          const h = harts[c.fid & 1];
          h.setX(17, BigInt(c.ext));
          h.setX(16, BigInt(c.fid));
          for (let i = 0; i < 6; i++) h.setX(10 + i, c.args[i]);
          out = 0;
          resets.length = 0;
          must(sbi.handle(h) === true, "an ecall was left unhandled");
          const a0 = BigInt.asIntN(64, h.getX(10));
          if (c.ext > 8) must(ERRORS.has(a0), `extension 0x${c.ext.toString(16)} fid ${c.fid} answered a0=${a0}`);
          must(out <= 4096, `one call printed ${out} bytes`);
          if (resets.length > 0) {
            must(c.ext === 8 || c.ext === 0x53525354, `extension 0x${c.ext.toString(16)} reset the machine`);
          }
          now += Number(c.args[5] & 0xffffn);
          sbi.update(now);
        }
        const saved = JSON.stringify(sbi.save());
        const twin = new HypervisorSbi(harts, host);
        twin.restore(JSON.parse(saved));
        must(JSON.stringify(twin.save()) === saved, "save/restore round trip differs");
        // Well-formed: sbi_get_spec_version.
        const h = harts[0];
        h.setX(17, 0x10n);
        h.setX(16, 0n);
        sbi.handle(h);
        must(h.getX(10) === 0n && h.getX(11) === 0x2000000n, "sbi_get_spec_version no longer answers v2.0");
        if (input.length === 0) input.push(0x61, 0x62);
      }),
    );
    return { property, check: leakGuard("sbi"), close: () => {} };
  },
};

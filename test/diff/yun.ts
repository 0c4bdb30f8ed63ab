/** Runs a generated program on Yun's hart until it reaches the epilogue's write ecall. */
import { Bus } from "../../src/cpu/bus.js";
import { Hart } from "../../src/cpu/hart.js";
import { withTestEngine } from "../support/engine.js";
import { LOAD_ADDR, OUT_LEN, type Program } from "./generate.js";

const RAM_SIZE = 1 << 20;
/** mtvec: an address the program never reaches on its own. */
export const TRAP_ADDR = LOAD_ADDR + 0x80000;
const CSR_MSTATUS = 0x300;
const CSR_MTVEC = 0x305;
const CSR_MEPC = 0x341;
const CSR_MCAUSE = 0x342;
const CSR_MTVAL = 0x343;

export class YunError extends Error {}

const hex = (v: bigint | number) => "0x" + v.toString(16);

/** Returns the OUT_LEN bytes the epilogue stored; throws YunError on a trap, a hang or a JS exception. */
export function runYun(p: Program, maxSteps = 200_000): Uint8Array {
  const bus = new Bus(LOAD_ADDR, RAM_SIZE);
  bus.ram.set(p.segment, p.entry - LOAD_ADDR);
  // The trap vector spins (jal x0, 0), so whatever trapped stays visible in mepc/mcause.
  new DataView(bus.ramBuffer).setUint32(TRAP_ADDR - LOAD_ADDR, 0x0000006f, true);
  const hart = withTestEngine(new Hart(bus, 0));
  hart.pc = p.entry;
  hart.setCsr(CSR_MSTATUS, hart.getCsr(CSR_MSTATUS) | (3n << 13n)); // FS = Dirty
  hart.setCsr(CSR_MTVEC, BigInt(TRAP_ADDR));
  while (hart.pc !== TRAP_ADDR) {
    if (hart.instret >= maxSteps) throw new YunError(`no ecall after ${maxSteps} steps; pc=${hex(hart.pc)}`);
    try {
      hart.run(64);
    } catch (e) {
      throw new YunError(`run() threw at pc=${hex(hart.pc)}: ${(e as Error).stack ?? e}`);
    }
  }
  const mepc = Number(hart.getCsr(CSR_MEPC));
  const mcause = hart.getCsr(CSR_MCAUSE);
  if (mcause !== 11n || mepc !== p.ecallAddr) {
    throw new YunError(
      `trap at pc=${hex(mepc)}: mcause=${hex(mcause)} mtval=${hex(hart.getCsr(CSR_MTVAL))}`,
    );
  }
  const off = p.outAddr - LOAD_ADDR;
  return bus.ram.slice(off, off + OUT_LEN);
}

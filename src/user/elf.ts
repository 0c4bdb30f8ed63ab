/**
 * The parts of an ELF executable a program loader needs: the header and the program headers
 * (loadable segments, the interpreter, the program header table's own address).
 *
 * Only riscv64 little-endian executables and shared objects are accepted; anything else is an
 * ExecError whose message is the one line `yun exec` prints.
 */

export const EM_RISCV = 243;
const ET_EXEC = 2;
const ET_DYN = 3;
export const PT_LOAD = 1;
export const PT_INTERP = 3;
export const PT_PHDR = 6;
export const PT_GNU_STACK = 0x6474e551;
export const PF_X = 1;
export const PF_W = 2;
export const PF_R = 4;

/** Why a program cannot be started; `status` is the exit status (126 not executable, 127 not found). */
export class ExecError extends Error {
  constructor(
    message: string,
    readonly status: 126 | 127,
  ) {
    super(message);
  }
}

export interface ProgramHeader {
  type: number;
  flags: number;
  offset: number;
  vaddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfImage {
  /** ET_DYN (position-independent: loaded at a bias) or ET_EXEC (at its own addresses). */
  dynamic: boolean;
  entry: number;
  phoff: number;
  phentsize: number;
  phnum: number;
  headers: ProgramHeader[];
  /** The PT_INTERP path, if any. */
  interpreter: string | null;
}

const MACHINES: Record<number, string> = {
  3: "x86",
  40: "ARM",
  62: "x86-64",
  183: "AArch64",
  8: "MIPS",
  21: "PowerPC64",
};

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new ExecError(`${what}: address 0x${v.toString(16)} out of range`, 126);
  return Number(v);
}

/** Parses an executable's headers; `name` is what messages call it. */
export function parseElf(buf: Buffer, name: string): ElfImage {
  if (buf.length < 4 || buf.readUInt32BE(0) !== 0x7f454c46) {
    throw new ExecError(`${name}: not an ELF executable`, 126);
  }
  if (buf.length < 64) throw new ExecError(`${name}: truncated ELF file (${buf.length} bytes)`, 126);
  const machine = buf.readUInt16LE(18);
  if (buf[4] !== 2 || buf[5] !== 1 || machine !== EM_RISCV) {
    const what = buf[5] === 1 ? (MACHINES[machine] ?? `machine ${machine}`) : "big-endian";
    const bits = buf[4] === 2 ? "64-bit" : "32-bit";
    throw new ExecError(`${name}: a ${bits} ${what} ELF file, not riscv64`, 126);
  }
  const type = buf.readUInt16LE(16);
  if (type !== ET_EXEC && type !== ET_DYN) throw new ExecError(`${name}: ELF type ${type} is not an executable`, 126);
  const entry = u64(buf, 24, name);
  const phoff = u64(buf, 32, name);
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  if (phentsize < 56 || phnum === 0 || phoff + phnum * phentsize > buf.length) {
    throw new ExecError(`${name}: truncated ELF file (program headers beyond its ${buf.length} bytes)`, 126);
  }
  const headers: ProgramHeader[] = [];
  let interpreter: string | null = null;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    const h: ProgramHeader = {
      type: buf.readUInt32LE(at),
      flags: buf.readUInt32LE(at + 4),
      offset: u64(buf, at + 8, name),
      vaddr: u64(buf, at + 16, name),
      filesz: u64(buf, at + 32, name),
      memsz: u64(buf, at + 40, name),
    };
    if (h.type === PT_LOAD && (h.offset + h.filesz > buf.length || h.filesz > h.memsz)) {
      throw new ExecError(`${name}: truncated ELF file (a segment ends past its ${buf.length} bytes)`, 126);
    }
    if (h.type === PT_INTERP) {
      if (h.offset + h.filesz > buf.length) throw new ExecError(`${name}: truncated ELF file`, 126);
      interpreter = buf
        .subarray(h.offset, h.offset + h.filesz)
        .toString("latin1")
        .replace(/\0.*$/s, "");
    }
    headers.push(h);
  }
  if (!headers.some((h) => h.type === PT_LOAD)) throw new ExecError(`${name}: ELF file without loadable segments`, 126);
  return { dynamic: type === ET_DYN, entry, phoff, phentsize, phnum, headers, interpreter };
}

/** The lowest and highest (exclusive, page-rounded) addresses the loadable segments span. */
export function loadSpan(image: ElfImage): { low: number; high: number } {
  let low = Infinity;
  let high = 0;
  for (const h of image.headers) {
    if (h.type !== PT_LOAD) continue;
    low = Math.min(low, h.vaddr - (h.vaddr % 4096));
    high = Math.max(high, Math.ceil((h.vaddr + h.memsz) / 4096) * 4096);
  }
  return { low, high };
}

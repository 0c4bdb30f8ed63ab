/**
 * Loads a riscv64 Linux program into an address space as Linux's binfmt_elf does: its loadable
 * segments (a PIE one at PIE_BASE), the dynamic loader its PT_INTERP names (from the root) among
 * the mappings, the heap after the program, and the initial stack: argc, argv, envp, the
 * auxiliary vector and the strings they point to.
 */
import { readFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { ExecError, loadSpan, parseElf, PT_LOAD, PT_PHDR, type ElfImage } from "./elf.js";
import { AddressSpace, PIE_BASE, PAGE, PROT_EXEC, PROT_READ } from "./memory.js";

const AT_PHDR = 3;
const AT_PHENT = 4;
const AT_PHNUM = 5;
const AT_PAGESZ = 6;
const AT_BASE = 7;
const AT_FLAGS = 8;
const AT_ENTRY = 9;
const AT_UID = 11;
const AT_EUID = 12;
const AT_GID = 13;
const AT_EGID = 14;
const AT_PLATFORM = 15;
const AT_HWCAP = 16;
const AT_CLKTCK = 17;
const AT_SECURE = 23;
const AT_RANDOM = 25;
const AT_HWCAP2 = 26;
const AT_EXECFN = 31;
const AT_MINSIGSTKSZ = 51;

/** The ISA letters Yun's hart implements, as Linux reports them in AT_HWCAP: I, M, A, F, D, C. */
const HWCAP = [..."IMAFDC"].reduce((bits, c) => bits | (1 << (c.charCodeAt(0) - 65)), 0);

export interface LoadedProgram {
  entry: number;
  sp: number;
}

export interface ProgramFiles {
  /** Host path of the program. */
  path: string;
  /** Host path of its interpreter, found by `interpreterPath`. */
  interpreter: (guestPath: string) => string | null;
}

function readProgram(path: string, name: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new ExecError(`${name}: no such file`, 127);
    if (code === "EISDIR") throw new ExecError(`${name}: is a directory`, 126);
    if (code === "EACCES") throw new ExecError(`${name}: permission denied`, 126);
    throw new ExecError(`${name}: cannot read it (${code ?? String(e)})`, 126);
  }
}

/** Copies an image's segments to `bias` + their addresses (already mapped). */
function copySegments(space: AddressSpace, file: Buffer, image: ElfImage, bias: number): void {
  for (const h of image.headers) {
    if (h.type !== PT_LOAD || h.filesz === 0) continue;
    space.write(h.vaddr + bias, file.subarray(h.offset, h.offset + h.filesz));
  }
}

/**
 * Gives each page of an image the protection of the segments on it (p_flags' R, W, X; the union
 * where two share a page); pages of the span no segment covers get none, as Linux leaves them
 * unmapped.
 */
function protectSegments(space: AddressSpace, image: ElfImage, bias: number): void {
  const span = loadSpan(image);
  const prot = new Uint8Array((span.high - span.low) / PAGE);
  for (const h of image.headers) {
    if (h.type !== PT_LOAD) continue;
    const p = ((h.flags & 4) !== 0 ? PROT_READ : 0) | (h.flags & 2) | ((h.flags & 1) !== 0 ? PROT_EXEC : 0);
    const first = Math.floor((h.vaddr - span.low) / PAGE);
    const last = Math.ceil((h.vaddr + h.memsz - span.low) / PAGE);
    for (let i = first; i < last; i++) prot[i] |= p;
  }
  prot.forEach((p, i) => space.protect(span.low + bias + i * PAGE, PAGE, p));
}

/** Where the program header table is in memory (AT_PHDR). */
function phdrAddress(image: ElfImage, bias: number): number {
  const own = image.headers.find((h) => h.type === PT_PHDR);
  if (own !== undefined) return own.vaddr + bias;
  for (const h of image.headers) {
    if (h.type === PT_LOAD && image.phoff >= h.offset && image.phoff < h.offset + h.filesz) {
      return h.vaddr - h.offset + image.phoff + bias;
    }
  }
  return 0;
}

/**
 * Loads `files.path` with `argv` and `envp` into `space`; `execfn` is the name AT_EXECFN gives.
 * Throws an ExecError for a program that cannot run (its message is one line for the user).
 */
export function loadProgram(
  space: AddressSpace,
  files: ProgramFiles,
  argv: string[],
  envp: string[],
  execfn: string,
): LoadedProgram {
  const name = execfn;
  const file = readProgram(files.path, name);
  const image = parseElf(file, name);
  let interp: { file: Buffer; image: ElfImage } | null = null;
  if (image.interpreter !== null) {
    const path = files.interpreter(image.interpreter);
    if (path === null) throw new ExecError(`${name}: its interpreter ${image.interpreter} was not found`, 127);
    const interpFile = readProgram(path, image.interpreter);
    const interpImage = parseElf(interpFile, image.interpreter);
    if (interpImage.interpreter !== null)
      throw new ExecError(`${image.interpreter}: an interpreter that needs an interpreter`, 126);
    interp = { file: interpFile, image: interpImage };
  }

  const span = loadSpan(image);
  const bias = image.dynamic ? PIE_BASE - span.low : 0;
  if (span.low + bias < PAGE || span.high + bias > space.mmapTop - (64 << 20)) {
    throw new ExecError(
      `${name}: its segments (0x${span.low.toString(16)}-0x${span.high.toString(16)}) do not fit the address space`,
      126,
    );
  }
  space.mapFixed(span.low + bias, span.high - span.low);
  copySegments(space, file, image, bias);
  protectSegments(space, image, bias);
  space.brkStart = space.brk = span.high + bias;

  let entry = image.entry + bias;
  let interpBase = 0;
  if (interp !== null) {
    const s = loadSpan(interp.image);
    const base = space.map(s.high - s.low);
    if (base < 0) throw new ExecError(`${name}: no room for its interpreter`, 126);
    const interpBias = base - s.low;
    copySegments(space, interp.file, interp.image, interpBias);
    protectSegments(space, interp.image, interpBias);
    interpBase = base;
    entry = interp.image.entry + interpBias;
  }

  // The stack, from the top: strings, 16 random bytes, then (16-aligned) argc, argv, envp, auxv.
  let top = space.stackTop - 16;
  const putString = (s: string): number => {
    const bytes = Buffer.from(s + "\0", "utf8");
    top -= bytes.length;
    space.write(top, bytes);
    return top;
  };
  const execfnAt = putString(execfn);
  const platformAt = putString("riscv64");
  const envAt = envp.map(putString);
  const argAt = argv.map(putString);
  top -= 16;
  top -= top % 16;
  const randomAt = top;
  space.write(randomAt, randomFillSync(Buffer.alloc(16)));
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const auxv: [number, number][] = [
    [AT_PHDR, phdrAddress(image, bias)],
    [AT_PHENT, image.phentsize],
    [AT_PHNUM, image.phnum],
    [AT_PAGESZ, PAGE],
    [AT_BASE, interpBase],
    [AT_FLAGS, 0],
    [AT_ENTRY, image.entry + bias],
    [AT_UID, uid],
    [AT_EUID, process.geteuid?.() ?? uid],
    [AT_GID, gid],
    [AT_EGID, process.getegid?.() ?? gid],
    [AT_PLATFORM, platformAt],
    [AT_HWCAP, HWCAP],
    [AT_CLKTCK, 100],
    [AT_SECURE, 0],
    [AT_RANDOM, randomAt],
    [AT_HWCAP2, 0],
    [AT_EXECFN, execfnAt],
    [AT_MINSIGSTKSZ, 2048],
    [0, 0],
  ];
  const words = 1 + argAt.length + 1 + envAt.length + 1 + auxv.length * 2;
  let sp = top - words * 8;
  sp -= sp % 16;
  let at = sp;
  const push = (v: number): void => {
    space.setU64(at, v);
    at += 8;
  };
  push(argAt.length);
  for (const a of argAt) push(a);
  push(0);
  for (const e of envAt) push(e);
  push(0);
  for (const [k, v] of auxv) {
    push(k);
    push(v);
  }
  return { entry, sp };
}

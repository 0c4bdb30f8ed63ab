/**
 * A user process's address space: guest virtual address = RAM offset (the hart runs with bare
 * addressing, RAM based at 0), so a pointer the program passes is an index into `ram`.
 *
 * Layout (RAM of `size` bytes): a non-PIE program at its own addresses (0x10000 for riscv64), a
 * PIE one at PIE_BASE; the heap (brk) right above the program, growing up; mappings (mmap, the
 * dynamic loader, libraries) allocated top-down below the stack; the stack at the top.
 * Pages carry no protection (mprotect is accepted and changes nothing): bare addressing has none.
 */
import type { Bus } from "../cpu/bus.js";

export const PAGE = 4096;
export const PIE_BASE = 0x200000;
export const STACK_SIZE = 8 << 20;

const FREE = 0;
const MAPPED = 1;
/** Unmapped again after use: zeroed when mapped next (fresh RAM is zero already). */
const USED = 2;

export class AddressSpace {
  readonly bus: Bus;
  readonly ram: Uint8Array;
  readonly size: number;
  private readonly view: DataView;
  /** Per page: FREE, MAPPED or USED. */
  private readonly pages: Uint8Array;
  /** Mappings are searched from here downwards (the stack's guard page). */
  readonly mmapTop: number;
  brkStart = 0;
  brk = 0;

  constructor(bus: Bus) {
    this.bus = bus;
    this.ram = bus.ram;
    this.size = bus.ramSize;
    this.view = new DataView(this.ram.buffer, 0, this.size);
    this.pages = new Uint8Array(this.size / PAGE);
    this.mmapTop = this.size - STACK_SIZE - PAGE;
    this.mark(this.size - STACK_SIZE, STACK_SIZE, MAPPED);
  }

  /** Whether [addr, addr + length) is inside the address space. */
  valid(addr: number, length: number): boolean {
    return addr >= 0 && length >= 0 && addr + length <= this.size;
  }

  u8(addr: number): number {
    return this.ram[addr];
  }
  u32(addr: number): number {
    return this.view.getUint32(addr, true);
  }
  i32(addr: number): number {
    return this.view.getInt32(addr, true);
  }
  u64(addr: number): number {
    return this.view.getUint32(addr, true) + this.view.getUint32(addr + 4, true) * 4294967296;
  }
  i64(addr: number): number {
    return this.view.getUint32(addr, true) + this.view.getInt32(addr + 4, true) * 4294967296;
  }
  setU16(addr: number, v: number): void {
    this.view.setUint16(addr, v, true);
  }
  setU32(addr: number, v: number): void {
    this.view.setUint32(addr, v >>> 0, true);
  }
  setU64(addr: number, v: number | bigint): void {
    this.view.setBigUint64(addr, BigInt.asUintN(64, BigInt(v)), true);
  }

  /** A NUL-terminated string at `addr` (at most `max` bytes), or null when it runs off the space. */
  cString(addr: number, max = 4096): string | null {
    if (!this.valid(addr, 1)) return null;
    const end = Math.min(this.size, addr + max);
    const nul = this.ram.indexOf(0, addr);
    if (nul < 0 || nul >= end) return null;
    return Buffer.from(this.ram.buffer, addr, nul - addr).toString("utf8");
  }

  /** The bytes at `addr` (a view, not a copy). */
  bytes(addr: number, length: number): Uint8Array {
    return this.ram.subarray(addr, addr + length);
  }

  /** Copies host bytes into guest memory, announcing the write (translated code there is dropped). */
  write(addr: number, data: Uint8Array): void {
    this.ram.set(data, addr);
    this.bus.externalWrite(addr, data.length);
  }

  /** Announces that the host wrote guest memory directly (a read() into a guest buffer). */
  written(addr: number, length: number): void {
    if (length > 0) this.bus.externalWrite(addr, length);
  }

  private mark(addr: number, length: number, state: number): void {
    const first = Math.floor(addr / PAGE);
    const last = Math.ceil((addr + length) / PAGE);
    for (let p = first; p < last; p++) {
      // A new mapping reads as zero, also where it replaces one (MAP_FIXED over a library's bss).
      if (state === MAPPED && this.pages[p] !== FREE) this.ram.fill(0, p * PAGE, (p + 1) * PAGE);
      if (state === MAPPED || this.pages[p] === MAPPED) this.pages[p] = state;
    }
    if (state === MAPPED) this.bus.externalWrite(first * PAGE, (last - first) * PAGE);
  }

  /** Maps [addr, addr + length) at a fixed place (zeroed where it was used before). */
  mapFixed(addr: number, length: number): boolean {
    if (addr % PAGE !== 0 || !this.valid(addr, length)) return false;
    this.mark(addr, length, MAPPED);
    return true;
  }

  /** Finds and maps `length` bytes (top-down from the stack); returns the address or -1. */
  map(length: number, hint = 0): number {
    const pages = Math.ceil(length / PAGE);
    if (pages === 0) return -1;
    if (hint !== 0 && hint % PAGE === 0 && this.isFree(hint, pages)) {
      this.mark(hint, pages * PAGE, MAPPED);
      return hint;
    }
    let run = 0;
    const floor = Math.ceil(this.brk / PAGE) + 256; // keep 1 MiB above the heap for it to grow
    for (let p = this.mmapTop / PAGE - 1; p >= floor; p--) {
      run = this.pages[p] === MAPPED ? 0 : run + 1;
      if (run === pages) {
        this.mark(p * PAGE, pages * PAGE, MAPPED);
        return p * PAGE;
      }
    }
    return -1;
  }

  private isFree(addr: number, pages: number): boolean {
    const first = addr / PAGE;
    if (first + pages > this.mmapTop / PAGE || addr < this.brk) return false;
    for (let p = first; p < first + pages; p++) if (this.pages[p] === MAPPED) return false;
    return true;
  }

  unmap(addr: number, length: number): boolean {
    if (addr % PAGE !== 0 || !this.valid(addr, length)) return false;
    this.mark(addr, length, USED);
    return true;
  }

  /** Whether page `p` holds anything but zeros (untouched RAM reads as zero). */
  private holdsData(words: Int32Array, p: number): boolean {
    const first = p * (PAGE / 4);
    for (let i = first; i < first + PAGE / 4; i++) if (words[i] !== 0) return true;
    return false;
  }

  /** Back to a fresh space, for an image a new process reuses: every page written is zeroed. */
  reset(): void {
    const words = new Int32Array(this.ram.buffer, 0, this.size / 4);
    for (let p = 0; p < this.pages.length; p++) {
      if (this.pages[p] === FREE) continue;
      this.pages[p] = FREE;
      if (!this.holdsData(words, p)) continue;
      this.ram.fill(0, p * PAGE, (p + 1) * PAGE);
      this.bus.externalWrite(p * PAGE, PAGE);
    }
    this.brk = this.brkStart = 0;
    this.mark(this.size - STACK_SIZE, STACK_SIZE, MAPPED);
  }

  /** A fork's copy of `other` (the same size) into this fresh space: its layout and written pages. */
  copyFrom(other: AddressSpace): void {
    this.pages.set(other.pages);
    this.brk = other.brk;
    this.brkStart = other.brkStart;
    const words = new Int32Array(other.ram.buffer, 0, other.size / 4);
    for (let p = 0; p < other.pages.length; p++) {
      if (other.pages[p] !== MAPPED || !other.holdsData(words, p)) continue;
      this.ram.set(other.ram.subarray(p * PAGE, (p + 1) * PAGE), p * PAGE);
      this.bus.externalWrite(p * PAGE, PAGE);
    }
  }

  /** Moves the program break; returns the break in effect afterwards (Linux's brk semantics). */
  setBrk(addr: number): number {
    if (addr < this.brkStart) return this.brk;
    const oldTop = Math.ceil(this.brk / PAGE) * PAGE;
    const newTop = Math.ceil(addr / PAGE) * PAGE;
    if (newTop > oldTop) {
      for (let p = oldTop / PAGE; p < newTop / PAGE; p++)
        if (p >= this.pages.length || this.pages[p] === MAPPED) return this.brk;
      this.mark(oldTop, newTop - oldTop, MAPPED);
    } else if (newTop < oldTop) {
      this.mark(newTop, oldTop - newTop, USED);
    }
    this.brk = addr;
    return addr;
  }
}

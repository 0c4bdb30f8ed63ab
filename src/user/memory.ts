/**
 * A user process's address space: guest virtual address = RAM offset (RAM based at 0), so a
 * pointer the program passes is an index into `ram`.
 *
 * Layout (RAM of `size` bytes): a non-PIE program at its own addresses (0x10000 for riscv64), a
 * PIE one at PIE_BASE; the heap (brk) right above the program, growing up; mappings (mmap, the
 * dynamic loader, libraries) allocated top-down below the stack; the stack; one read-execute page
 * with the signal return trampoline; at the very top the page tables, which the program can never
 * map.
 *
 * Protection is the hart's own: U-mode runs under Sv39 with an identity page table kept here (a
 * leaf per mapped page with U and the mapping's R/W/X, unmapped pages invalid, page 0 included), so
 * a NULL dereference, a write to a read-only page or a jump into data is a page fault (causes
 * 12/13/15 with the address in mtval) that the process turns into SIGSEGV.
 */
import type { Bus } from "../cpu/bus.js";

export const PAGE = 4096;
export const PIE_BASE = 0x200000;
export const STACK_SIZE = 8 << 20;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
const PROT_RWX = PROT_READ | PROT_WRITE | PROT_EXEC;

const FREE = 0;
const MAPPED = 1;
/** Unmapped again after use: zeroed when mapped next (fresh RAM is zero already). */
const USED = 2;

const PTE_V = 1;
const PTE_U = 0x10;
/** Accessed and dirty set up front: the hart's walker never has to write them back. */
const PTE_AD = 0xc0;
/** `li a7, 139; ecall`: rt_sigreturn, where a signal handler returns to (Linux's vDSO has the same). */
const SIGRETURN_CODE = [0x08b00893, 0x00000073];

/**
 * The host touched guest memory the program cannot access (unmapped, PROT_NONE, the page tables):
 * thrown by the accessors, it makes a system call return EFAULT (`errno`, as Node's errors carry it).
 */
export class MemoryFault extends Error {
  readonly errno = -14;
  constructor(addr: number) {
    super(`no user memory at 0x${addr.toString(16)}`);
  }
}

export class AddressSpace {
  readonly bus: Bus;
  readonly ram: Uint8Array;
  readonly size: number;
  private readonly view: DataView;
  /** Per page: FREE, MAPPED or USED. */
  private readonly pages: Uint8Array;
  /** Per page: PROT_READ | PROT_WRITE | PROT_EXEC of a mapped page. */
  private readonly prot: Uint8Array;
  /** Mappings are searched from here downwards (the stack's guard page). */
  readonly mmapTop: number;
  /** The end of the stack (its first byte above): the program's memory ends here. */
  readonly stackTop: number;
  /** The read-execute page holding the signal return code (`li a7, 139; ecall`). */
  readonly sigreturnAddress: number;
  /** Page number of the Sv39 root table: satp's PPN, to run the program under these protections. */
  readonly rootPage: number;
  /** Byte offset of the first level-0 table; they are contiguous, so page p's leaf is at +8p. */
  private readonly leafTables: number;
  /**
   * Called when pages that were accessible lose access (unmapped, protection lowered, replaced):
   * the runner drops the hart's cached translations of them (what sfence.vma does in a kernel).
   */
  onUnmap: ((addr: number, length: number, execLost: boolean) => void) | null = null;
  brkStart = 0;
  brk = 0;

  constructor(bus: Bus) {
    this.bus = bus;
    this.ram = bus.ram;
    this.size = bus.ramSize;
    this.view = new DataView(this.ram.buffer, 0, this.size);
    const pageCount = this.size / PAGE;
    this.pages = new Uint8Array(pageCount);
    this.prot = new Uint8Array(pageCount);
    // Tables at the top: the root, one level-1 table per GiB, one level-0 table per 2 MiB.
    const gigs = Math.ceil(this.size / (1 << 30));
    const leafCount = Math.ceil(this.size / (2 << 20));
    const root = this.size - (1 + gigs + leafCount) * PAGE;
    this.leafTables = root + (1 + gigs) * PAGE;
    for (let g = 0; g < gigs; g++) {
      this.setPte(root + g * 8, (root + (1 + g) * PAGE) / PAGE, PTE_V);
      for (let m = 0; m < 512 && g * 512 + m < leafCount; m++) {
        this.setPte(root + (1 + g) * PAGE + m * 8, (this.leafTables + (g * 512 + m) * PAGE) / PAGE, PTE_V);
      }
    }
    this.rootPage = root / PAGE;
    this.sigreturnAddress = root - PAGE;
    this.stackTop = this.sigreturnAddress;
    this.mmapTop = this.stackTop - STACK_SIZE - PAGE;
    this.mark(this.sigreturnAddress, PAGE, MAPPED, PROT_READ | PROT_EXEC);
    SIGRETURN_CODE.forEach((insn, i) => this.view.setUint32(this.sigreturnAddress + 4 * i, insn, true));
    this.mark(this.stackTop - STACK_SIZE, STACK_SIZE, MAPPED, PROT_READ | PROT_WRITE);
  }

  private setPte(at: number, ppn: number, flags: number): void {
    this.view.setUint32(at, ((ppn << 10) | flags) >>> 0, true);
    this.view.setUint32(at + 4, Math.floor(ppn / 4194304), true);
  }

  /** Writes page p's leaf from its state and protection. */
  private updateLeaf(p: number): void {
    const prot = this.pages[p] === MAPPED ? this.prot[p] : 0;
    if (prot === 0) {
      this.setPte(this.leafTables + p * 8, 0, 0);
      return;
    }
    // Write-only is not a valid leaf: Linux maps PROT_WRITE as read-write too.
    const r = (prot & (PROT_READ | PROT_WRITE)) !== 0 ? 2 : 0;
    const w = (prot & PROT_WRITE) !== 0 ? 4 : 0;
    const x = (prot & PROT_EXEC) !== 0 ? 8 : 0;
    this.setPte(this.leafTables + p * 8, p, PTE_V | PTE_U | PTE_AD | r | w | x);
  }

  /** Whether [addr, addr + length) is mapped with some access (system calls answer EFAULT otherwise). */
  valid(addr: number, length: number): boolean {
    if (!(addr >= 0 && length >= 0 && addr + length <= this.stackTop)) return false;
    const last = Math.ceil((addr + length) / PAGE);
    for (let p = Math.floor(addr / PAGE); p < last; p++)
      if (this.pages[p] !== MAPPED || this.prot[p] === 0) return false;
    return true;
  }

  /** Whether the page holding `addr` is mapped at all (SEGV_ACCERR rather than SEGV_MAPERR). */
  isMapped(addr: number): boolean {
    return addr >= 0 && addr < this.size && this.pages[Math.floor(addr / PAGE)] === MAPPED;
  }

  /** The protection of the page holding `addr` (0 when unmapped). */
  protection(addr: number): number {
    return this.isMapped(addr) ? this.prot[Math.floor(addr / PAGE)] : 0;
  }

  /** Whether [addr, addr + length) is mapped writable (the kernel's copy_to_user succeeds). */
  writable(addr: number, length: number): boolean {
    if (!this.valid(addr, length)) return false;
    const last = Math.ceil((addr + length) / PAGE);
    for (let p = Math.floor(addr / PAGE); p < last; p++) if ((this.prot[p] & PROT_WRITE) === 0) return false;
    return true;
  }

  /** Throws EFAULT (which a system call returns) unless [addr, addr + length) can be read. */
  private check(addr: number, length: number): void {
    if (!this.valid(addr, length)) throw new MemoryFault(addr);
  }

  /** Throws EFAULT unless [addr, addr + length) can be written. */
  private checkWrite(addr: number, length: number): void {
    if (!this.writable(addr, length)) throw new MemoryFault(addr);
  }

  u8(addr: number): number {
    this.check(addr, 1);
    return this.ram[addr];
  }
  u32(addr: number): number {
    this.check(addr, 4);
    return this.view.getUint32(addr, true);
  }
  i32(addr: number): number {
    this.check(addr, 4);
    return this.view.getInt32(addr, true);
  }
  u64(addr: number): number {
    this.check(addr, 8);
    return this.view.getUint32(addr, true) + this.view.getUint32(addr + 4, true) * 4294967296;
  }
  i64(addr: number): number {
    this.check(addr, 8);
    return this.view.getUint32(addr, true) + this.view.getInt32(addr + 4, true) * 4294967296;
  }
  setU16(addr: number, v: number): void {
    this.checkWrite(addr, 2);
    this.view.setUint16(addr, v, true);
  }
  setU32(addr: number, v: number): void {
    this.checkWrite(addr, 4);
    this.view.setUint32(addr, v >>> 0, true);
  }
  setU64(addr: number, v: number | bigint): void {
    this.checkWrite(addr, 8);
    this.view.setBigUint64(addr, BigInt.asUintN(64, BigInt(v)), true);
  }

  /** A NUL-terminated string at `addr` (at most `max` bytes), or null when it runs off the space. */
  cString(addr: number, max = 4096): string | null {
    if (!this.valid(addr, 1)) return null;
    const end = Math.min(this.stackTop, addr + max);
    const nul = this.ram.indexOf(0, addr);
    if (nul < 0 || nul >= end || !this.valid(addr, nul - addr + 1)) return null;
    return Buffer.from(this.ram.buffer, addr, nul - addr).toString("utf8");
  }

  /** The bytes at `addr` (a view, not a copy). */
  bytes(addr: number, length: number): Uint8Array {
    return this.ram.subarray(addr, addr + length);
  }

  /** Copies host bytes into guest memory, announcing the write (translated code there is dropped). */
  write(addr: number, data: Uint8Array): void {
    this.checkWrite(addr, data.length);
    this.ram.set(data, addr);
    this.bus.externalWrite(addr, data.length);
  }

  /** Announces that the host wrote guest memory directly (a read() into a guest buffer). */
  written(addr: number, length: number): void {
    if (length > 0) this.bus.externalWrite(addr, length);
  }

  private mark(addr: number, length: number, state: number, prot = 0): void {
    const first = Math.floor(addr / PAGE);
    const last = Math.ceil((addr + length) / PAGE);
    let lost = false;
    let execLost = false;
    for (let p = first; p < last; p++) {
      const before = this.pages[p] === MAPPED ? this.prot[p] : 0;
      // A new mapping reads as zero, also where it replaces one (MAP_FIXED over a library's bss).
      if (state === MAPPED && this.pages[p] !== FREE) this.ram.fill(0, p * PAGE, (p + 1) * PAGE);
      if (state === MAPPED || this.pages[p] === MAPPED) this.pages[p] = state;
      this.prot[p] = state === MAPPED ? prot : 0;
      if (before !== 0) {
        lost = true;
        if ((before & PROT_EXEC) !== 0) execLost = true;
      }
      this.updateLeaf(p);
    }
    if (state === MAPPED) this.bus.externalWrite(first * PAGE, (last - first) * PAGE);
    if (lost) this.onUnmap?.(first * PAGE, (last - first) * PAGE, execLost);
  }

  /** Maps [addr, addr + length) at a fixed place (zeroed where it was used before). */
  mapFixed(addr: number, length: number, prot = PROT_RWX): boolean {
    if (addr % PAGE !== 0 || !(addr >= 0 && length >= 0 && addr + length <= this.stackTop)) return false;
    this.mark(addr, length, MAPPED, prot);
    return true;
  }

  /** Finds and maps `length` bytes (top-down from the stack); returns the address or -1. */
  map(length: number, hint = 0, prot = PROT_RWX): number {
    const pages = Math.ceil(length / PAGE);
    if (pages === 0) return -1;
    if (hint !== 0 && hint % PAGE === 0 && this.isFree(hint, pages)) {
      this.mark(hint, pages * PAGE, MAPPED, prot);
      return hint;
    }
    let run = 0;
    const floor = Math.ceil(this.brk / PAGE) + 256; // keep 1 MiB above the heap for it to grow
    for (let p = this.mmapTop / PAGE - 1; p >= floor; p--) {
      run = this.pages[p] === MAPPED ? 0 : run + 1;
      if (run === pages) {
        this.mark(p * PAGE, pages * PAGE, MAPPED, prot);
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
    if (addr % PAGE !== 0 || !(addr >= 0 && length >= 0 && addr + length <= this.stackTop)) return false;
    this.mark(addr, length, USED);
    return true;
  }

  /**
   * mprotect: new protection for whole mapped pages; false when part of the range is not mapped
   * (Linux's ENOMEM).
   */
  protect(addr: number, length: number, prot: number): boolean {
    if (!(addr >= 0 && length >= 0 && addr + length <= this.stackTop)) return false;
    const first = addr / PAGE;
    const last = Math.ceil((addr + length) / PAGE);
    for (let p = first; p < last; p++) if (this.pages[p] !== MAPPED) return false;
    let lost = false;
    let execLost = false;
    for (let p = first; p < last; p++) {
      const before = this.prot[p];
      if ((before & ~prot) !== 0) lost = true;
      if ((before & PROT_EXEC) !== 0 && (prot & PROT_EXEC) === 0) execLost = true;
      this.prot[p] = prot;
      this.updateLeaf(p);
    }
    if (lost) this.onUnmap?.(first * PAGE, (last - first) * PAGE, execLost);
    return true;
  }

  /** Whether page `p` holds anything but zeros (untouched RAM reads as zero). */
  private holdsData(words: Int32Array, p: number): boolean {
    const first = p * (PAGE / 4);
    for (let i = first; i < first + PAGE / 4; i++) if (words[i] !== 0) return true;
    return false;
  }

  /**
   * Back to a fresh space, for an image a new process reuses: every page written is zeroed and
   * every leaf cleared, then the signal-return page and the stack are mapped as at construction.
   */
  reset(): void {
    const words = new Int32Array(this.ram.buffer, 0, this.size / 4);
    for (let p = 0; p < this.pages.length; p++) {
      if (this.pages[p] === FREE) continue;
      this.pages[p] = FREE;
      this.prot[p] = 0;
      this.updateLeaf(p);
      if (!this.holdsData(words, p)) continue;
      this.ram.fill(0, p * PAGE, (p + 1) * PAGE);
      this.bus.externalWrite(p * PAGE, PAGE);
    }
    this.brk = this.brkStart = 0;
    this.mark(this.sigreturnAddress, PAGE, MAPPED, PROT_READ | PROT_EXEC);
    SIGRETURN_CODE.forEach((insn, i) => this.view.setUint32(this.sigreturnAddress + 4 * i, insn, true));
    this.mark(this.stackTop - STACK_SIZE, STACK_SIZE, MAPPED, PROT_READ | PROT_WRITE);
    this.onUnmap?.(0, this.size, true);
  }

  /**
   * A fork's copy of `other` (the same size) into this fresh space: its layout, page protections
   * (the page table's leaves) and written pages.
   */
  copyFrom(other: AddressSpace): void {
    for (let p = 0; p < this.pages.length; p++) {
      if (this.pages[p] === FREE && other.pages[p] === FREE) continue;
      this.pages[p] = other.pages[p];
      this.prot[p] = other.prot[p];
      this.updateLeaf(p);
    }
    this.brk = other.brk;
    this.brkStart = other.brkStart;
    const words = new Int32Array(other.ram.buffer, 0, other.size / 4);
    for (let p = 0; p < other.pages.length; p++) {
      if (other.pages[p] !== MAPPED || !other.holdsData(words, p)) continue;
      this.ram.set(other.ram.subarray(p * PAGE, (p + 1) * PAGE), p * PAGE);
      this.bus.externalWrite(p * PAGE, PAGE);
    }
    this.onUnmap?.(0, this.size, true);
  }

  /** Moves the program break; returns the break in effect afterwards (Linux's brk semantics). */
  setBrk(addr: number): number {
    if (addr < this.brkStart) return this.brk;
    const oldTop = Math.ceil(this.brk / PAGE) * PAGE;
    const newTop = Math.ceil(addr / PAGE) * PAGE;
    if (newTop > oldTop) {
      for (let p = oldTop / PAGE; p < newTop / PAGE; p++)
        if (p >= this.mmapTop / PAGE || this.pages[p] === MAPPED) return this.brk;
      this.mark(oldTop, newTop - oldTop, MAPPED, PROT_READ | PROT_WRITE);
    } else if (newTop < oldTop) {
      this.mark(newTop, oldTop - newTop, USED);
    }
    this.brk = addr;
    return addr;
  }
}

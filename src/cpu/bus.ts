/**
 * Physical address space as the hart sees it: one RAM block and a list of MMIO windows.
 *
 * RAM accesses from the hart never come here on the fast path (the TLB holds RAM offsets);
 * this is the slow path for MMIO and the home of the RAM views the hart reads through.
 */

/** The contract of every memory-mapped device: 1, 2 or 4-byte accesses at an offset in its window.
 *  An 8-byte access is split by the hart into two 4-byte accesses, low word first. */
export interface MmioDevice {
  readonly name: string;
  read(offset: number, size: 1 | 2 | 4): number;
  write(offset: number, value: number, size: 1 | 2 | 4): void;
}

interface Window {
  base: number;
  end: number;
  device: MmioDevice;
}

/**
 * Per-hart state that translated WebAssembly code reads and writes, laid out in the memory after
 * RAM (offsets from the area's start): the integer registers, exchange slots, the TLB sets.
 */
export const HART_AREA = {
  /** x0..x31 as little-endian int64 (the Int32Array pairs of Hart.x). */
  regs: 0,
  /** f64: the pc a translated block exits with (or faulted at). */
  pc: 512,
  /** i32: instructions the block retired (exit) or retired before the current one (slow call). */
  count: 520,
  /** i32: high word of a slow load's value. */
  hi: 524,
  /** i32: 1 when a slow access raised attention (an interrupt may be pending). */
  attention: 528,
  /** i32: the id of the block that exited (translated blocks chain into each other). */
  block: 532,
  /** i32: the hart's fetchKey while translated code runs (links between pages hold under one key). */
  fetchKey: 536,
  /** i32: the table index of the block a chaining exit names (the hub calls it next). */
  next: 540,
  /** Three TLB sets (M, S, U), TLB_SET_BYTES each. */
  tlb: 1024,
  bytes: 1024 + 3 * 9216,
} as const;
/** One TLB set: read, write and fetch tags (f64 × 256 each), then their RAM offsets (i32 × 256 each). */
export const TLB_SET_BYTES = 9216;
const WASM_PAGE = 65536;
/** The largest memory V8 gives WebAssembly (memory32): 4 GiB. */
const WASM_MAX_BYTES = 65536 * WASM_PAGE;

/** Where RAM lives: a plain buffer, or a WebAssembly memory that translated code can address. */
export type RamStorage = ArrayBuffer | SharedArrayBuffer | WebAssembly.Memory;

/** Link slots between translated WebAssembly blocks (jit.ts): 24 bytes each, per hart. */
export const LINK_SLOTS = 1 << 18;
export const LINK_SLOT_BYTES = 24;

/**
 * Bytes of each hart's region after RAM: its state area, its translator's code-page marks (one
 * byte per RAM page) and its link slots (8-aligned).
 */
function hartRegionBytes(ramSize: number): number {
  return Math.ceil((HART_AREA.bytes + ramSize / 4096) / 8) * 8 + LINK_SLOTS * LINK_SLOT_BYTES;
}

/** Bytes of a WebAssembly memory holding `ramSize` bytes of RAM and the regions of `harts` harts. */
function wasmBytes(ramSize: number, harts: number): number {
  const bytes = ramSize + harts * hartRegionBytes(ramSize);
  return Math.ceil(bytes / WASM_PAGE) * WASM_PAGE;
}

/**
 * Allocates RAM for a machine of `harts` harts: as a WebAssembly memory (RAM at address 0, then
 * each hart's region) when it fits, so that the translator can emit WebAssembly, shared between
 * threads when there are several harts; otherwise a plain (Shared)ArrayBuffer.
 */
export function allocateRam(ramSize: number, harts = 1): RamStorage {
  const bytes = wasmBytes(ramSize, harts);
  if (bytes > WASM_MAX_BYTES) return harts > 1 ? new SharedArrayBuffer(ramSize) : new ArrayBuffer(ramSize);
  return new WebAssembly.Memory({ initial: bytes / WASM_PAGE, maximum: bytes / WASM_PAGE, shared: harts > 1 });
}

/** Whether a storage can serve as RAM for `harts` harts: shared when there are several, with a region each. */
export function ramFits(storage: RamStorage, ramSize: number, harts: number): boolean {
  if (storage instanceof WebAssembly.Memory) {
    const shared = storage.buffer instanceof SharedArrayBuffer;
    return shared === harts > 1 && storage.buffer.byteLength >= wasmBytes(ramSize, harts);
  }
  return storage.byteLength === ramSize && storage instanceof SharedArrayBuffer === harts > 1;
}

/** The RAM bytes of a storage (the first `ramSize` bytes of its buffer). */
export function ramView(storage: RamStorage, ramSize: number): Uint8Array {
  return new Uint8Array(storage instanceof WebAssembly.Memory ? storage.buffer : storage, 0, ramSize);
}

export class Bus {
  readonly ramBase: number;
  readonly ramSize: number;
  /** The buffer RAM lives in: RAM is its first `ramSize` bytes (a WebAssembly memory holds more after it). */
  readonly ramBuffer: ArrayBuffer | SharedArrayBuffer;
  /** The WebAssembly memory RAM lives in, when it does (see allocateRam). */
  readonly ramMemory: WebAssembly.Memory | null;
  /** Harts with a region in the WebAssembly memory (0: RAM is a plain buffer). */
  readonly harts: number;
  readonly ram: Uint8Array;
  readonly ram16: Uint16Array;
  readonly ram32: Int32Array;
  private readonly windows: Window[] = [];
  private readonly writeListeners: ((offset: number, length: number) => void)[] = [];
  /** MMIO accesses so far (each one an exit from guest code to a device model). */
  mmioAccesses = 0;

  /**
   * `storage`: RAM to use (from allocateRam) or contents to start from (a snapshot, a migration):
   * a plain buffer of exactly `ramSize` bytes, or a memory from allocateRam(ramSize).
   */
  constructor(ramBase: number, ramSize: number, shared = false, storage?: RamStorage) {
    if (ramSize % 4096 !== 0) throw new Error("RAM size must be a multiple of 4 KiB");
    storage ??= shared ? new SharedArrayBuffer(ramSize) : allocateRam(ramSize);
    if (storage instanceof WebAssembly.Memory) {
      const bytes = storage.buffer.byteLength;
      // Regions are far larger than the 64 KiB rounding: the count is exact.
      const harts = Math.floor((bytes - ramSize) / hartRegionBytes(ramSize));
      if (harts < 1 || bytes !== wasmBytes(ramSize, harts))
        throw new Error(`RAM memory of ${bytes} bytes for ${ramSize} bytes of RAM`);
      this.ramMemory = storage;
      this.ramBuffer = storage.buffer;
      this.harts = harts;
    } else {
      if (storage.byteLength !== ramSize)
        throw new Error(`RAM buffer of ${storage.byteLength} bytes for ${ramSize} bytes of RAM`);
      this.ramMemory = null;
      this.ramBuffer = storage;
      this.harts = 0;
    }
    this.ramBase = ramBase;
    this.ramSize = ramSize;
    this.ram = new Uint8Array(this.ramBuffer, 0, ramSize);
    this.ram16 = new Uint16Array(this.ramBuffer, 0, ramSize >>> 1);
    this.ram32 = new Int32Array(this.ramBuffer, 0, ramSize >>> 2);
  }

  /** Offset of a hart's state area (HART_AREA) in `ramBuffer`, or -1 when it has none. */
  hartArea(hartId: number): number {
    return hartId < this.harts ? this.ramSize + hartId * hartRegionBytes(this.ramSize) : -1;
  }

  /** Offset of a hart's code-page marks (one byte per RAM page), or -1. */
  codePagesArea(hartId: number): number {
    return hartId < this.harts ? this.hartArea(hartId) + HART_AREA.bytes : -1;
  }

  /** Offset of a hart's link slots (LINK_SLOTS × LINK_SLOT_BYTES, 8-aligned), or -1. */
  linkArea(hartId: number): number {
    return hartId < this.harts
      ? this.hartArea(hartId) + hartRegionBytes(this.ramSize) - LINK_SLOTS * LINK_SLOT_BYTES
      : -1;
  }

  /** RAM and whatever else its storage holds, for handing it to a new Bus (a rebuilt machine). */
  get ramStorage(): RamStorage {
    return this.ramMemory ?? this.ramBuffer;
  }

  map(base: number, size: number, device: MmioDevice): void {
    for (const w of this.windows) {
      if (base < w.end && base + size > w.base)
        throw new Error(`MMIO window of ${device.name} overlaps ${w.device.name}`);
    }
    this.windows.push({ base, end: base + size, device });
  }

  /** RAM offset of a physical address, or -1 when it is not RAM. */
  ramOffset(pa: number): number {
    const off = pa - this.ramBase;
    return off >= 0 && off < this.ramSize ? off : -1;
  }

  private find(pa: number): Window | undefined {
    for (const w of this.windows) if (pa >= w.base && pa < w.end) return w;
    return undefined;
  }

  /** MMIO read; returns undefined when nothing is mapped there (an access fault). */
  mmioRead(pa: number, size: 1 | 2 | 4): number | undefined {
    this.mmioAccesses++;
    const w = this.find(pa);
    if (!w) return undefined;
    return w.device.read(pa - w.base, size);
  }

  /** MMIO write; returns false when nothing is mapped there (an access fault). */
  mmioWrite(pa: number, value: number, size: 1 | 2 | 4): boolean {
    this.mmioAccesses++;
    const w = this.find(pa);
    if (!w) return false;
    w.device.write(pa - w.base, value, size);
    return true;
  }

  /** Registers a listener for RAM writes that do not come from a hart's stores (translators). */
  onExternalWrite(listener: (offset: number, length: number) => void): void {
    this.writeListeners.push(listener);
  }

  /**
   * Announces that RAM bytes [offset, offset + length) were written other than by a hart's stores:
   * device DMA, loaders, tools. Whoever caches what RAM holds (translated code) drops it.
   */
  externalWrite(offset: number, length: number): void {
    for (const l of this.writeListeners) l(offset, length);
  }

  /** Copies bytes into RAM at a physical address (loaders). */
  load(pa: number, bytes: Uint8Array): void {
    const off = this.ramOffset(pa);
    if (off < 0 || off + bytes.length > this.ramSize) {
      throw new Error(`cannot load ${bytes.length} bytes at 0x${pa.toString(16)}: outside RAM`);
    }
    this.ram.set(bytes, off);
    this.externalWrite(off, bytes.length);
  }
}

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

export class Bus {
  readonly ramBase: number;
  readonly ramSize: number;
  readonly ramBuffer: ArrayBuffer | SharedArrayBuffer;
  readonly ram: Uint8Array;
  readonly ram16: Uint16Array;
  readonly ram32: Int32Array;
  private readonly windows: Window[] = [];
  private readonly writeListeners: ((offset: number, length: number) => void)[] = [];
  /** MMIO accesses so far (each one an exit from guest code to a device model). */
  mmioAccesses = 0;

  /** `buffer`: RAM contents to start from (a snapshot, a migration), of exactly `ramSize` bytes. */
  constructor(ramBase: number, ramSize: number, shared = false, buffer?: ArrayBuffer | SharedArrayBuffer) {
    if (ramSize % 4096 !== 0) throw new Error("RAM size must be a multiple of 4 KiB");
    if (buffer && buffer.byteLength !== ramSize) throw new Error(`RAM buffer of ${buffer.byteLength} bytes for ${ramSize} bytes of RAM`);
    this.ramBase = ramBase;
    this.ramSize = ramSize;
    this.ramBuffer = buffer ?? (shared ? new SharedArrayBuffer(ramSize) : new ArrayBuffer(ramSize));
    this.ram = new Uint8Array(this.ramBuffer);
    this.ram16 = new Uint16Array(this.ramBuffer);
    this.ram32 = new Int32Array(this.ramBuffer);
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

/**
 * Translated code shared knowledge between harts that run on different threads over one RAM.
 *
 * Each hart's translator caches code of its own. A store by one hart (or a device's DMA) to a page
 * another hart translated must drop that hart's blocks before it runs them again. Per RAM page,
 * `owners` holds a bit per hart that has translated code there; a hart's stores to such a page
 * leave its write TLB (as for its own code pages) and mark the page stale for the other owners,
 * who drop their blocks at their next slice boundary. That is before they take the IPI of the
 * remote fence.i that RISC-V requires after cross-modifying code, since interrupts, too, are taken
 * at slice boundaries. When a hart starts translating a page, `epoch` moves on, and every hart
 * drops its write TLB at its next boundary so that its stores to the page take the slow path.
 */
export const MAX_SMP_HARTS = 8;

export interface SharedCodeBuffers {
  pages: number;
  harts: number;
  /** Per page: bit h = hart h has translated code there. */
  owners: SharedArrayBuffer;
  /** harts × pages: the page changed under hart h's translations. */
  stale: SharedArrayBuffer;
  /** [epoch, stale count of hart 0, of hart 1, ...] */
  counters: SharedArrayBuffer;
}

export class SharedCodeMap {
  readonly pages: number;
  readonly harts: number;
  readonly owners: Uint8Array;
  private readonly stale: Uint8Array;
  private readonly counters: Int32Array;

  constructor(readonly buffers: SharedCodeBuffers) {
    this.pages = buffers.pages;
    this.harts = buffers.harts;
    this.owners = new Uint8Array(buffers.owners);
    this.stale = new Uint8Array(buffers.stale);
    this.counters = new Int32Array(buffers.counters);
  }

  static allocate(ramSize: number, harts: number): SharedCodeBuffers {
    if (harts < 1 || harts > MAX_SMP_HARTS) throw new Error(`1 to ${MAX_SMP_HARTS} harts, not ${harts}`);
    const pages = Math.ceil(ramSize / 4096);
    return {
      pages,
      harts,
      owners: new SharedArrayBuffer(pages),
      stale: new SharedArrayBuffer(pages * harts),
      counters: new SharedArrayBuffer(4 * (1 + harts)),
    };
  }

  /** The translation epoch: it changes whenever some hart starts translating a page. */
  epoch(): number {
    return Atomics.load(this.counters, 0);
  }

  /** Hart `hart` now has translated code in `page`. */
  claim(hart: number, page: number): void {
    const bit = 1 << hart;
    if ((Atomics.or(this.owners, page, bit) & bit) === 0) Atomics.add(this.counters, 0, 1);
  }

  /** Hart `hart` dropped its code in `page`. */
  release(hart: number, page: number): void {
    Atomics.and(this.owners, page, ~(1 << hart) & 0xff);
  }

  /** Page `page` is being written by `writer` (-1: a device): every other owner must drop its code there. */
  written(page: number, writer: number): void {
    const others = Atomics.load(this.owners, page) & ~(writer >= 0 ? 1 << writer : 0);
    if (others === 0) return;
    for (let h = 0; h < this.harts; h++) {
      if ((others & (1 << h)) === 0) continue;
      const at = h * this.pages + page;
      if (Atomics.exchange(this.stale, at, 1) === 0) Atomics.add(this.counters, 1 + h, 1);
    }
  }

  /** A device wrote RAM bytes [offset, offset + length): every owner of those pages drops its code. */
  writtenRange(offset: number, length: number): void {
    if (length <= 0) return;
    const last = Math.min(this.pages - 1, (offset + length - 1) >>> 12);
    for (let page = offset >>> 12; page <= last; page++) {
      if (this.owners[page] !== 0) this.written(page, -1);
    }
  }

  /** Stale marks of hart `hart` so far (a counter: compare with the last value seen). */
  staleCount(hart: number): number {
    return Atomics.load(this.counters, 1 + hart);
  }

  /** Calls `drop` for every page marked stale for `hart`, clearing the marks. */
  takeStale(hart: number, drop: (page: number) => void): void {
    const base = hart * this.pages;
    const stale = this.stale;
    for (let page = 0; page < this.pages; page++) {
      if (stale[base + page] !== 0) {
        Atomics.store(stale, base + page, 0);
        drop(page);
      }
    }
  }
}

/**
 * Split virtqueues (virtio 1.2 §2.7): the descriptor table, the driver's available ring and the
 * device's used ring, all in guest RAM and read through the bus's RAM views on every access (guest
 * RAM may be shared with other threads later, so nothing is cached).
 *
 * The device side of a queue: `pop()` walks the next available descriptor chain into a reusable
 * `DescriptorChain` (a list of RAM segments, device-readable ones first), the device copies to and
 * from those segments, and `push()` returns the chain through the used ring. Everything the driver
 * wrote is distrusted: an index, address, length or flag that breaks the rules makes `pop()` throw
 * `VirtqueueError`, which the transport turns into DEVICE_NEEDS_RESET. Every walk is bounded by the
 * queue size and the indirect table size, and no segment reaches outside RAM.
 */
import type { Bus } from "../../cpu/bus.js";

/** What a virtqueue needs from the bus: the RAM views and the physical-to-RAM-offset mapping. */
export type GuestRam = Pick<Bus, "ram" | "ram16" | "ram32" | "ramSize" | "ramOffset" | "externalWrite">;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Most descriptors one indirect table may hold (Linux never builds more than a few hundred). */
export const MAX_INDIRECT_DESCRIPTORS = 1024;
/** used.len is 32 bits, so neither direction of a chain may carry more. */
export const MAX_CHAIN_BYTES = 0xffff_ffff;

const TWO32 = 4294967296;

/** A driver broke the virtqueue rules; the message names what it did. */
export class VirtqueueError extends Error {}

/** dst[dstOff..] = src[srcOff..srcOff+len]. Short copies loop; long ones use one temporary view. */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void {
  if (len <= 32) {
    for (let i = 0; i < len; i++) dst[dstOff + i] = src[srcOff + i];
  } else {
    dst.set(src.subarray(srcOff, srcOff + len), dstOff);
  }
}

/**
 * A preallocated byte buffer that hands out exact-length views of its start, cached by length, so
 * a device can pass "the first n bytes" to a backend without allocating per request.
 */
export class Scratch {
  readonly bytes: Uint8Array;
  private readonly views = new Map<number, Uint8Array>();

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }

  /** The first `length` bytes (length <= size). */
  view(length: number): Uint8Array {
    let v = this.views.get(length);
    if (v === undefined) {
      if (this.views.size >= 4096) this.views.clear();
      v = this.bytes.subarray(0, length);
      this.views.set(length, v);
    }
    return v;
  }
}

/**
 * One available buffer as the device sees it: `count` RAM segments, of which the first `readCount`
 * are device-readable (the driver's request) and the rest device-writable (room for the answer).
 * Positions passed to read()/write() count bytes from the start of the readable or writable part.
 */
export class DescriptorChain {
  /** Descriptor index of the chain's head: the id returned in the used ring. */
  head = 0;
  count = 0;
  readCount = 0;
  readBytes = 0;
  writeBytes = 0;
  /** RAM offsets and lengths of the segments (zero-length descriptors are left out). */
  readonly offsets: Float64Array;
  readonly lengths: Uint32Array;
  private readonly ram: Uint8Array;
  private readonly mem: GuestRam;

  constructor(mem: GuestRam, capacity: number) {
    this.mem = mem;
    this.ram = mem.ram;
    this.offsets = new Float64Array(capacity);
    this.lengths = new Uint32Array(capacity);
  }

  /** Copies up to `len` readable bytes starting `pos` bytes in into dst; returns the bytes copied. */
  read(pos: number, dst: Uint8Array, dstOff: number, len: number): number {
    let copied = 0;
    for (let i = 0; i < this.readCount && copied < len; i++) {
      const segLen = this.lengths[i];
      if (pos >= segLen) {
        pos -= segLen;
        continue;
      }
      const n = Math.min(segLen - pos, len - copied);
      copyBytes(dst, dstOff + copied, this.ram, this.offsets[i] + pos, n);
      copied += n;
      pos = 0;
    }
    return copied;
  }

  /** Copies up to `len` bytes of src into the writable part starting `pos` bytes in; returns the bytes copied. */
  write(pos: number, src: Uint8Array, srcOff: number, len: number): number {
    let copied = 0;
    for (let i = this.readCount; i < this.count && copied < len; i++) {
      const segLen = this.lengths[i];
      if (pos >= segLen) {
        pos -= segLen;
        continue;
      }
      const n = Math.min(segLen - pos, len - copied);
      copyBytes(this.ram, this.offsets[i] + pos, src, srcOff + copied, n);
      this.mem.externalWrite(this.offsets[i] + pos, n);
      copied += n;
      pos = 0;
    }
    return copied;
  }

  /** Stores one byte at `pos` in the writable part (false when pos is beyond it). */
  writeByte(pos: number, value: number): boolean {
    for (let i = this.readCount; i < this.count; i++) {
      const segLen = this.lengths[i];
      if (pos < segLen) {
        this.ram[this.offsets[i] + pos] = value;
        this.mem.externalWrite(this.offsets[i] + pos, 1);
        return true;
      }
      pos -= segLen;
    }
    return false;
  }
}

/** A virtqueue's plain state for snapshots. Ring addresses are kept as 32-bit halves. */
export interface VirtqueueState {
  size: number;
  ready: boolean;
  descLo: number;
  descHi: number;
  driverLo: number;
  driverHi: number;
  deviceLo: number;
  deviceHi: number;
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  signalledValid: boolean;
}

/** The device side of one split virtqueue. */
export class Virtqueue {
  readonly index: number;
  /** QueueNumMax: the largest size the driver may choose. */
  readonly maxSize: number;
  /** Upper bound on the readable and on the writable bytes of one chain; more is a driver error. */
  readonly maxBytes: number;

  /** Registers the driver writes before QueueReady. */
  size: number;
  descLo = 0;
  descHi = 0;
  driverLo = 0;
  driverHi = 0;
  deviceLo = 0;
  deviceHi = 0;
  ready = false;

  /** Negotiated ring features, fixed when the queue is enabled. */
  private eventIdx = false;
  private indirect = false;
  /** RAM offsets of the descriptor table, available ring and used ring (valid while ready). */
  private descOff = 0;
  private availOff = 0;
  private usedOff = 0;
  /** Next available-ring position to consume and next used-ring position to fill (free-running u16). */
  private lastAvail = 0;
  private usedIdx = 0;
  /** EVENT_IDX: the used index when interrupts were last considered (valid after the first). */
  private signalledUsed = 0;
  private signalledValid = false;
  /** Used entries added since interrupts were last considered. */
  private unsignalled = 0;

  private readonly mem: GuestRam;

  constructor(mem: GuestRam, index: number, maxSize: number, maxBytes = MAX_CHAIN_BYTES) {
    if (maxSize < 1 || maxSize > 32768 || (maxSize & (maxSize - 1)) !== 0) {
      throw new Error(`virtqueue ${index}: maximum size ${maxSize} is not a power of 2 up to 32768`);
    }
    this.mem = mem;
    this.index = index;
    this.maxSize = maxSize;
    this.maxBytes = maxBytes;
    this.size = maxSize;
  }

  /** Capacity a DescriptorChain needs to hold any chain this queue accepts. */
  get chainCapacity(): number {
    return this.maxSize + MAX_INDIRECT_DESCRIPTORS;
  }

  /** Back to the post-reset state: not ready, no addresses, indices at 0. */
  reset(): void {
    this.size = this.maxSize;
    this.descLo = this.descHi = this.driverLo = this.driverHi = this.deviceLo = this.deviceHi = 0;
    this.ready = false;
    this.eventIdx = this.indirect = false;
    this.lastAvail = this.usedIdx = 0;
    this.signalledUsed = 0;
    this.signalledValid = false;
    this.unsignalled = 0;
  }

  /**
   * QueueReady = 1: checks the size and the three rings against RAM and starts the queue at index 0.
   * Returns an error message (the queue stays disabled) or undefined.
   */
  enable(eventIdx: boolean, indirect: boolean): string | undefined {
    const err = this.locateRings();
    if (err) return err;
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    this.lastAvail = this.usedIdx = 0;
    this.signalledUsed = 0;
    this.signalledValid = false;
    this.unsignalled = 0;
    this.ready = true;
    return undefined;
  }

  private locateRings(): string | undefined {
    const n = this.size;
    if (n < 1 || n > this.maxSize || (n & (n - 1)) !== 0) {
      return `queue ${this.index}: size ${n} is not a power of 2 between 1 and ${this.maxSize}`;
    }
    const desc = this.region(this.descLo, this.descHi, 16 * n);
    const avail = this.region(this.driverLo, this.driverHi, 6 + 2 * n);
    const used = this.region(this.deviceLo, this.deviceHi, 6 + 8 * n);
    if (desc < 0 || avail < 0 || used < 0) {
      const which = desc < 0 ? "descriptor table" : avail < 0 ? "available ring" : "used ring";
      return `queue ${this.index}: the ${which} lies outside guest RAM`;
    }
    if (desc % 16 !== 0 || avail % 2 !== 0 || used % 4 !== 0) {
      return `queue ${this.index}: misaligned rings (descriptors need 16 bytes, available 2, used 4)`;
    }
    this.descOff = desc;
    this.availOff = avail;
    this.usedOff = used;
    return undefined;
  }

  /** RAM offset of [lo/hi, +len) or -1 when any of it is outside RAM. */
  private region(lo: number, hi: number, len: number): number {
    const off = this.mem.ramOffset(hi * TWO32 + lo);
    return off < 0 || off + len > this.mem.ramSize ? -1 : off;
  }

  private u16(off: number): number {
    if ((off & 1) === 0) return this.mem.ram16[off >>> 1];
    const ram = this.mem.ram;
    return ram[off] | (ram[off + 1] << 8);
  }

  private u32(off: number): number {
    if ((off & 3) === 0) return this.mem.ram32[off >>> 2] >>> 0;
    const ram = this.mem.ram;
    return (ram[off] | (ram[off + 1] << 8) | (ram[off + 2] << 16) | (ram[off + 3] << 24)) >>> 0;
  }

  /**
   * Takes the next available chain into `chain`. Returns false when the driver has made nothing
   * new available; throws VirtqueueError when what it made available breaks the rules.
   */
  pop(chain: DescriptorChain): boolean {
    const size = this.size;
    // Spec order: the available index first, then the ring entry, then the descriptors.
    const availIdx = this.mem.ram16[(this.availOff + 2) >>> 1];
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending === 0) return false;
    if (pending > size) {
      throw new VirtqueueError(
        `queue ${this.index}: available index jumped from ${this.lastAvail} to ${availIdx}, more than the queue size ${size}`,
      );
    }
    const head = this.mem.ram16[(this.availOff + 4 + 2 * (this.lastAvail & (size - 1))) >>> 1];
    if (head >= size) {
      throw new VirtqueueError(
        `queue ${this.index}: available ring names descriptor ${head} beyond the queue size ${size}`,
      );
    }
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.walk(head, chain);
    return true;
  }

  /** Gives back the last `n` chains taken by pop() (they will be popped again). */
  unpop(n: number): void {
    this.lastAvail = (this.lastAvail - n) & 0xffff;
  }

  private walk(head: number, chain: DescriptorChain): void {
    const q = this.index;
    chain.head = head;
    chain.count = chain.readCount = chain.readBytes = chain.writeBytes = 0;
    let table = this.descOff;
    let tableSize = this.size;
    let inIndirect = false;
    let sawWritable = false;
    let i = head;
    let visited = 0;
    for (;;) {
      if (++visited > tableSize) {
        throw new VirtqueueError(
          inIndirect
            ? `queue ${q}: chain ${head} loops inside its indirect table of ${tableSize} descriptors`
            : `queue ${q}: chain ${head} is longer than the queue size ${tableSize} (a loop?)`,
        );
      }
      const d = table + 16 * i;
      const addrLo = this.u32(d);
      const addrHi = this.u32(d + 4);
      const len = this.u32(d + 8);
      const flags = this.u16(d + 12);
      const next = this.u16(d + 14);

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) {
          throw new VirtqueueError(`queue ${q}: chain ${head} uses an indirect table without VIRTIO_F_INDIRECT_DESC`);
        }
        if (inIndirect) throw new VirtqueueError(`queue ${q}: chain ${head} nests an indirect table in another`);
        if (flags & VIRTQ_DESC_F_NEXT) {
          throw new VirtqueueError(`queue ${q}: chain ${head} sets both INDIRECT and NEXT on descriptor ${i}`);
        }
        if (len === 0 || len % 16 !== 0) {
          throw new VirtqueueError(
            `queue ${q}: chain ${head} has an indirect table of ${len} bytes (not a multiple of 16)`,
          );
        }
        if (len / 16 > MAX_INDIRECT_DESCRIPTORS) {
          throw new VirtqueueError(
            `queue ${q}: chain ${head} has an indirect table of ${len / 16} descriptors (at most ${MAX_INDIRECT_DESCRIPTORS})`,
          );
        }
        const off = this.region(addrLo, addrHi, len);
        if (off < 0) throw new VirtqueueError(`queue ${q}: chain ${head} has an indirect table outside guest RAM`);
        table = off;
        tableSize = len / 16;
        inIndirect = true;
        visited = 0;
        i = 0;
        continue;
      }

      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (writable) {
        sawWritable = true;
        chain.writeBytes += len;
      } else {
        if (sawWritable) {
          throw new VirtqueueError(`queue ${q}: chain ${head} puts a device-readable descriptor after a writable one`);
        }
        chain.readBytes += len;
      }
      if (chain.readBytes > this.maxBytes || chain.writeBytes > this.maxBytes) {
        throw new VirtqueueError(`queue ${q}: chain ${head} carries more than ${this.maxBytes} bytes`);
      }
      if (len > 0) {
        const off = this.region(addrLo, addrHi, len);
        if (off < 0) {
          const pa = addrHi * TWO32 + addrLo;
          throw new VirtqueueError(
            `queue ${q}: chain ${head} points at 0x${pa.toString(16)} (+${len}) outside guest RAM`,
          );
        }
        chain.offsets[chain.count] = off;
        chain.lengths[chain.count] = len;
        chain.count++;
        if (!writable) chain.readCount++;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      if (next >= tableSize) {
        throw new VirtqueueError(
          `queue ${q}: chain ${head} links to descriptor ${next} beyond its table of ${tableSize}`,
        );
      }
      i = next;
    }
  }

  /** Returns a chain to the driver through the used ring: `len` bytes were written into it. */
  push(head: number, len: number): void {
    const ram32 = this.mem.ram32;
    const e = this.usedOff + 4 + 8 * (this.usedIdx & (this.size - 1));
    ram32[e >>> 2] = head;
    ram32[(e + 4) >>> 2] = len | 0;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.mem.ram16[(this.usedOff + 2) >>> 1] = this.usedIdx;
    this.mem.externalWrite(e, 8);
    this.mem.externalWrite(this.usedOff + 2, 2);
    this.unsignalled++;
  }

  /**
   * Whether the entries pushed since the last call deserve a used-buffer interrupt: with EVENT_IDX
   * when the used index passed the driver's used_event, otherwise unless the driver set NO_INTERRUPT.
   */
  takeInterrupt(): boolean {
    if (this.unsignalled === 0) return false;
    this.unsignalled = 0;
    const ram16 = this.mem.ram16;
    if (this.eventIdx) {
      const usedEvent = ram16[(this.availOff + 4 + 2 * this.size) >>> 1];
      const old = this.signalledUsed;
      const now = this.usedIdx;
      const valid = this.signalledValid;
      this.signalledUsed = now;
      this.signalledValid = true;
      return !valid || ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (ram16[this.availOff >>> 1] & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Tells the driver whether the device wants a notification when it adds buffers: with EVENT_IDX
   * by moving avail_event to the current available index (or leaving it behind), otherwise with
   * the used ring's NO_NOTIFY flag.
   */
  setNotify(wanted: boolean): void {
    const ram16 = this.mem.ram16;
    if (this.eventIdx) {
      if (wanted) {
        ram16[(this.usedOff + 4 + 8 * this.size) >>> 1] = ram16[(this.availOff + 2) >>> 1];
        this.mem.externalWrite(this.usedOff + 4 + 8 * this.size, 2);
      }
    } else {
      ram16[this.usedOff >>> 1] = wanted ? 0 : VIRTQ_USED_F_NO_NOTIFY;
      this.mem.externalWrite(this.usedOff, 2);
    }
  }

  save(): VirtqueueState {
    return {
      size: this.size,
      ready: this.ready,
      descLo: this.descLo,
      descHi: this.descHi,
      driverLo: this.driverLo,
      driverHi: this.driverHi,
      deviceLo: this.deviceLo,
      deviceHi: this.deviceHi,
      lastAvail: this.lastAvail,
      usedIdx: this.usedIdx,
      signalledUsed: this.signalledUsed,
      signalledValid: this.signalledValid,
    };
  }

  /** Rebuilds the queue; returns an error message when a ready queue's rings do not fit this RAM. */
  restore(s: VirtqueueState, eventIdx: boolean, indirect: boolean): string | undefined {
    this.size = s.size >>> 0;
    this.descLo = s.descLo >>> 0;
    this.descHi = s.descHi >>> 0;
    this.driverLo = s.driverLo >>> 0;
    this.driverHi = s.driverHi >>> 0;
    this.deviceLo = s.deviceLo >>> 0;
    this.deviceHi = s.deviceHi >>> 0;
    this.ready = false;
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    this.lastAvail = s.lastAvail & 0xffff;
    this.usedIdx = s.usedIdx & 0xffff;
    this.signalledUsed = s.signalledUsed & 0xffff;
    this.signalledValid = s.signalledValid;
    this.unsignalled = 0;
    if (!s.ready) return undefined;
    const err = this.locateRings();
    if (err) return err;
    this.ready = true;
    return undefined;
  }
}

/**
 * virtio-blk (virtio 1.2 §5.2) over a BlockBackend. One request queue; each request completes
 * synchronously while the driver's notify is handled, so the device has no I/O in flight to carry
 * in a snapshot. Data moves through a preallocated scratch buffer in chunks, so requests of any
 * size allocate nothing.
 */
import { BlockIoError, type BlockBackend } from "../block.js";
import type { IrqLine } from "../device.js";
import { VIRTIO_ID_BLOCK, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import { Scratch, VirtqueueError, type DescriptorChain, type GuestRam } from "./queue.js";

export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

const WRITE_ZEROES_FLAG_UNMAP = 1;
const SECTOR = 512;
const QUEUE_SIZE = 256;
/** Data segments per request: the queue size less the header and status descriptors. */
const SEG_MAX = QUEUE_SIZE - 2;
/** Largest discard / write-zeroes range, in sectors (just under 2 GiB, as QEMU). */
const MAX_DWZ_SECTORS = 0x3f_ffff;
const ID_BYTES = 20;
const HEADER_BYTES = 16;
/** Bytes moved per backend call. */
const CHUNK = 256 * 1024;

/** Request counters for metrics. */
export interface VirtioBlkStats {
  readRequests: number;
  readBytes: number;
  writeRequests: number;
  writeBytes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  /** Requests answered IOERR (backend failure, range outside the disk, write to a read-only disk). */
  errors: number;
}

export interface VirtioBlkOptions extends VirtioOptions {
  /** discard_sector_alignment advertised to the guest, in 512-byte sectors (default 8 = 4 KiB). */
  discardSectorAlignment?: number;
}

/** virtio-blk keeps no state beyond the transport's: requests never outlive a notify. */
export type VirtioBlkState = Record<string, never>;

export class VirtioBlk extends VirtioMmioDevice<VirtioBlkState> {
  private readonly backend: BlockBackend;
  private readonly chain: DescriptorChain;
  private readonly scratch = new Scratch(CHUNK);
  private readonly header = new Uint8Array(HEADER_BYTES);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly id = new Uint8Array(ID_BYTES);
  private readonly counters: VirtioBlkStats = {
    readRequests: 0,
    readBytes: 0,
    writeRequests: 0,
    writeBytes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    errors: 0,
  };

  constructor(mem: GuestRam, irq: IrqLine, backend: BlockBackend, options: VirtioBlkOptions = {}) {
    const features =
      (1 << VIRTIO_BLK_F_SEG_MAX) |
      (1 << VIRTIO_BLK_F_BLK_SIZE) |
      (1 << VIRTIO_BLK_F_FLUSH) |
      (1 << VIRTIO_BLK_F_DISCARD) |
      (1 << VIRTIO_BLK_F_WRITE_ZEROES) |
      (backend.readOnly ? 1 << VIRTIO_BLK_F_RO : 0);
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_BLOCK,
        defaultName: "virtio-blk",
        features,
        queues: [{ size: QUEUE_SIZE }],
        configSize: 60,
      },
      options,
    );
    if (backend.size % SECTOR !== 0) {
      throw new Error(`${this.name}: disk size ${backend.size} is not a multiple of 512 bytes`);
    }
    this.backend = backend;
    this.chain = this.newChain();
    new TextEncoder().encodeInto(backend.serial, this.id);

    const c = this.configView;
    const capacity = backend.size / SECTOR;
    c.setUint32(0, capacity % 4294967296, true); // capacity (u64, sectors)
    c.setUint32(4, Math.floor(capacity / 4294967296), true);
    c.setUint32(12, SEG_MAX, true); // seg_max
    c.setUint32(20, SECTOR, true); // blk_size
    c.setUint32(36, MAX_DWZ_SECTORS, true); // max_discard_sectors
    c.setUint32(40, 1, true); // max_discard_seg
    c.setUint32(44, options.discardSectorAlignment ?? 8, true); // discard_sector_alignment
    c.setUint32(48, MAX_DWZ_SECTORS, true); // max_write_zeroes_sectors
    c.setUint32(52, 1, true); // max_write_zeroes_seg
    c.setUint8(56, 1); // write_zeroes_may_unmap
  }

  /** A copy of the request counters. */
  stats(): VirtioBlkStats {
    return { ...this.counters };
  }

  protected queueNotified(_index: number): void {
    const q = this.queues[0];
    const c = this.chain;
    while (this.live && q.pop(c)) q.push(c.head, this.handle(c));
    this.complete(q);
  }

  /** Serves one request; returns the used length (the writable bytes, status byte last). */
  private handle(c: DescriptorChain): number {
    if (c.readBytes < HEADER_BYTES || c.writeBytes < 1) {
      throw new VirtqueueError(`queue 0: request ${c.head} lacks its 16-byte header or its status byte`);
    }
    c.read(0, this.header, 0, HEADER_BYTES);
    const type = this.headerView.getUint32(0, true);
    const sector = this.headerView.getUint32(8, true) + this.headerView.getUint32(12, true) * 4294967296;
    let status: number;
    try {
      status = this.execute(type, sector, c);
    } catch (e) {
      if (!(e instanceof BlockIoError)) throw e;
      status = VIRTIO_BLK_S_IOERR;
    }
    if (status === VIRTIO_BLK_S_IOERR) this.counters.errors++;
    c.writeByte(c.writeBytes - 1, status);
    return c.writeBytes;
  }

  /** True when [sector, +bytes) is a whole number of sectors inside the disk. */
  private inRange(sector: number, bytes: number): boolean {
    return bytes % SECTOR === 0 && sector * SECTOR + bytes <= this.backend.size;
  }

  private execute(type: number, sector: number, c: DescriptorChain): number {
    const b = this.backend;
    switch (type) {
      case VIRTIO_BLK_T_IN: {
        const len = c.writeBytes - 1;
        if (!this.inRange(sector, len)) return VIRTIO_BLK_S_IOERR;
        const base = sector * SECTOR;
        for (let done = 0; done < len;) {
          const n = Math.min(CHUNK, len - done);
          b.read(base + done, this.scratch.view(n));
          c.write(done, this.scratch.bytes, 0, n);
          done += n;
        }
        this.counters.readRequests++;
        this.counters.readBytes += len;
        return VIRTIO_BLK_S_OK;
      }
      case VIRTIO_BLK_T_OUT: {
        const len = c.readBytes - HEADER_BYTES;
        if (b.readOnly || !this.inRange(sector, len)) return VIRTIO_BLK_S_IOERR;
        const base = sector * SECTOR;
        for (let done = 0; done < len;) {
          const n = Math.min(CHUNK, len - done);
          c.read(HEADER_BYTES + done, this.scratch.bytes, 0, n);
          b.write(base + done, this.scratch.view(n));
          done += n;
        }
        this.counters.writeRequests++;
        this.counters.writeBytes += len;
        return VIRTIO_BLK_S_OK;
      }
      case VIRTIO_BLK_T_FLUSH:
        b.flush();
        this.counters.flushes++;
        return VIRTIO_BLK_S_OK;
      case VIRTIO_BLK_T_GET_ID:
        c.write(0, this.id, 0, Math.min(ID_BYTES, c.writeBytes - 1));
        return VIRTIO_BLK_S_OK;
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        return this.discardOrZero(type === VIRTIO_BLK_T_DISCARD, c);
      default:
        return VIRTIO_BLK_S_UNSUPP;
    }
  }

  /** One virtio_blk_discard_write_zeroes segment {sector u64, num_sectors u32, flags u32}. */
  private discardOrZero(discard: boolean, c: DescriptorChain): number {
    if (c.readBytes - HEADER_BYTES !== 16) return VIRTIO_BLK_S_UNSUPP; // max_*_seg is 1
    c.read(HEADER_BYTES, this.header, 0, 16);
    const v = this.headerView;
    const sector = v.getUint32(0, true) + v.getUint32(4, true) * 4294967296;
    const count = v.getUint32(8, true);
    const flags = v.getUint32(12, true);
    if ((flags & ~WRITE_ZEROES_FLAG_UNMAP) !== 0 || (discard && flags !== 0)) return VIRTIO_BLK_S_UNSUPP;
    const bytes = count * SECTOR;
    if (this.backend.readOnly || count > MAX_DWZ_SECTORS || !this.inRange(sector, bytes)) return VIRTIO_BLK_S_IOERR;
    if (count === 0) return VIRTIO_BLK_S_OK;
    if (discard) {
      this.backend.discard(sector * SECTOR, bytes);
      this.counters.discards++;
    } else {
      this.backend.writeZeroes(sector * SECTOR, bytes, (flags & WRITE_ZEROES_FLAG_UNMAP) !== 0);
      this.counters.writeZeroes++;
    }
    return VIRTIO_BLK_S_OK;
  }

  protected saveDevice(): VirtioBlkState {
    return {};
  }

  protected restoreDevice(_state: VirtioBlkState): void {}
}

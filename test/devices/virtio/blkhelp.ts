/** Block-device test fixtures: an in-memory BlockBackend and virtio-blk request builders. */
import assert from "node:assert/strict";
import { BlockIoError, type BlockBackend } from "../../../src/devices/block.js";
import { VirtioBlk } from "../../../src/devices/virtio/blk.js";
import { Driver, Guest, RAM_BASE, type Seg } from "./driver.js";

/** An in-memory disk that records what the device asked of it. */
export class MemDisk implements BlockBackend {
  readonly data: Uint8Array;
  readonly serial: string;
  readOnly: boolean;
  flushes = 0;
  onFlush: () => void = () => {};
  readonly discards: [number, number][] = [];
  readonly zeroes: [number, number, boolean][] = [];
  /** Byte range whose access fails with BlockIoError. */
  bad: [number, number] = [0, 0];

  constructor(size: number, readOnly = false, serial = "yun-disk-0001") {
    this.data = new Uint8Array(size);
    for (let i = 0; i < size; i++) this.data[i] = (i * 7 + (i >> 9)) & 0xff;
    this.readOnly = readOnly;
    this.serial = serial;
  }
  get size(): number {
    return this.data.length;
  }
  private check(offset: number, len: number): void {
    assert.ok(
      offset % 512 === 0 && len % 512 === 0 && offset + len <= this.size,
      `bad backend access ${offset}+${len}`,
    );
    if (offset < this.bad[1] && offset + len > this.bad[0]) throw new BlockIoError(`I/O error at ${offset}`);
  }
  read(offset: number, buf: Uint8Array): void {
    this.check(offset, buf.length);
    buf.set(this.data.subarray(offset, offset + buf.length));
  }
  write(offset: number, data: Uint8Array): void {
    assert.ok(!this.readOnly, "write to a read-only backend");
    this.check(offset, data.length);
    this.data.set(data, offset);
  }
  flush(): void {
    this.onFlush();
    this.flushes++;
  }
  discard(offset: number, length: number): void {
    this.check(offset, length);
    this.discards.push([offset, length]);
  }
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.check(offset, length);
    this.data.fill(0, offset, offset + length);
    this.zeroes.push([offset, length, unmap]);
  }
  close(): void {}
}

export const QBASE = RAM_BASE + 0x1000;
export const HDRS = RAM_BASE + 0x10000;
export const STATUS = RAM_BASE + 0x11000;
export const DATA = RAM_BASE + 0x20000;
export const DISK_SIZE = 4 * 1024 * 1024;

export function setupBlk(opts: { readOnly?: boolean; wanted?: bigint; qsize?: number } = {}) {
  const g = new Guest();
  const disk = new MemDisk(DISK_SIZE, opts.readOnly);
  const dev = new VirtioBlk(g.bus, g.irqLine, disk, { log: g.log });
  const d = new Driver(dev, g);
  const features = d.negotiate(opts.wanted ?? ~0n);
  assert.ok(features !== undefined, "FEATURES_OK accepted");
  const q = d.setupQueue(0, opts.qsize ?? 128, QBASE);
  d.driverOk();
  return { g, disk, dev, d, q, features };
}

/** Writes a request header in slot `slot` and returns the chain's segments (header, data, status). */
export function request(g: Guest, type: number, sector: number, data: Seg[], slot = 0): Seg[] {
  const hdr = HDRS + 32 * slot;
  g.w32(hdr, type);
  g.w32(hdr + 4, 0);
  g.w64(hdr + 8, sector);
  g.w8(STATUS + slot, 0xee);
  return [{ pa: hdr, len: 16 }, ...data, { pa: STATUS + slot, len: 1, write: true }];
}

export function statusOf(g: Guest, slot = 0): number {
  return g.r8(STATUS + slot);
}

/**
 * The contract between a block device (virtio-blk) and its backing store (src/storage: raw, qcow2).
 * The device layer defines it so that devices never depend on the storage layer.
 *
 * Calls are synchronous: a request completes before the guest runs again, which keeps device state
 * plain data (no I/O in flight to carry in a snapshot). Offsets and lengths are bytes, multiples of
 * 512, and lie within `size` (the device checks before calling).
 */
export interface BlockBackend {
  /** Virtual disk size in bytes (a multiple of 512). */
  readonly size: number;
  readonly readOnly: boolean;
  /** Fills `buf` with the bytes at `offset`. */
  read(offset: number, buf: Uint8Array): void;
  /** Writes `data` at `offset`. Must not be called on a read-only backend. */
  write(offset: number, data: Uint8Array): void;
  /** Makes every write completed so far durable (fsync of every file written). */
  flush(): void;
  /** The guest no longer needs the range; afterwards it reads as zeroes or as its old contents. */
  discard(offset: number, length: number): void;
  /** Afterwards the range reads as zeroes; `unmap` allows deallocating it. */
  writeZeroes(offset: number, length: number, unmap: boolean): void;
  /** A stable identifier for the disk (virtio-blk GET_ID, at most 20 bytes). */
  readonly serial: string;
  close(): void;
}

/** Thrown by a backend when an access fails (the device answers VIRTIO_BLK_S_IOERR). */
export class BlockIoError extends Error {}

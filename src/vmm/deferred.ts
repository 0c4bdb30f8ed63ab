/**
 * Stand-ins for a disk and a network cable that are plugged in later. A live migration's
 * destination builds its machine while the pages arrive, long before the source lets go of the
 * disks; the stand-ins carry what the devices need at construction (size, read-only, serial) and
 * forward to the real backends once `plug()` connects them. No guest code runs in between, so
 * nothing reaches a stand-in unplugged (if something did, it fails loudly).
 */
import type { BlockBackend } from "../devices/block.js";
import type { NetBackend } from "../devices/netdev.js";

export class DeferredDisk implements BlockBackend {
  private target: BlockBackend | null = null;

  constructor(
    readonly size: number,
    readonly readOnly: boolean,
    readonly serial: string,
  ) {}

  /** Connects the real disk (of the same size, read-only flag and serial). */
  plug(target: BlockBackend): void {
    if (target.size !== this.size) {
      throw new Error(`the disk is ${target.size} bytes here, ${this.size} bytes on the source`);
    }
    if (target.readOnly !== this.readOnly) {
      throw new Error(`the disk is ${target.readOnly ? "read-only" : "writable"} here, not on the source`);
    }
    this.target = target;
  }

  private get real(): BlockBackend {
    if (!this.target) throw new Error("disk accessed before it was plugged in");
    return this.target;
  }

  read(offset: number, buf: Uint8Array): void {
    this.real.read(offset, buf);
  }
  write(offset: number, data: Uint8Array): void {
    this.real.write(offset, data);
  }
  flush(): void {
    this.target?.flush();
  }
  discard(offset: number, length: number): void {
    this.real.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.real.writeZeroes(offset, length, unmap);
  }
  close(): void {
    this.target?.close();
    this.target = null;
  }
}

export class DeferredNet implements NetBackend {
  private target: NetBackend | null = null;

  /** The backend plugged in, or null before. */
  get plugged(): NetBackend | null {
    return this.target;
  }
  private deliver: ((frame: Uint8Array) => boolean) | null = null;

  plug(target: NetBackend): void {
    this.target = target;
    if (this.deliver) target.attach(this.deliver);
  }
  send(frame: Uint8Array): void {
    if (!this.target) throw new Error("network used before it was plugged in");
    this.target.send(frame);
  }
  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
    this.target?.attach(deliver);
  }
  close(): void {
    this.target?.close();
    this.target = null;
  }
}

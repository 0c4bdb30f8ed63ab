/**
 * virtio-rng (virtio 1.2 §5.4): one request queue; every writable buffer the guest posts comes back
 * filled from the host's CSPRNG, at most 64 KiB per request.
 */
import { randomFillSync } from "node:crypto";
import type { IrqLine } from "../device.js";
import { VIRTIO_ID_RNG, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import type { DescriptorChain, GuestRam } from "./queue.js";

const QUEUE_SIZE = 64;
/** Most random bytes given for one request. */
export const RNG_MAX_BYTES_PER_REQUEST = 64 * 1024;

export type VirtioRngState = Record<string, never>;

/** Fills `length` bytes of `buf` at `offset` with entropy (default: the host's CSPRNG). */
export type EntropySource = (buf: Uint8Array, offset: number, length: number) => void;

export class VirtioRng extends VirtioMmioDevice<VirtioRngState> {
  private readonly chain: DescriptorChain;
  private bytesServed = 0;
  private readonly fill: EntropySource;

  constructor(mem: GuestRam, irq: IrqLine, options: VirtioOptions & { entropy?: EntropySource } = {}) {
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_RNG,
        defaultName: "virtio-rng",
        features: 0,
        queues: [{ size: QUEUE_SIZE }],
        configSize: 0,
      },
      options,
    );
    this.chain = this.newChain();
    this.fill = options.entropy ?? ((buf, offset, length) => void randomFillSync(buf, offset, length));
  }

  /** Random bytes handed to the guest so far. */
  get served(): number {
    return this.bytesServed;
  }

  protected queueNotified(_index: number): void {
    const q = this.queues[0];
    const c = this.chain;
    const ram = this.mem.ram;
    while (this.live && q.pop(c)) {
      let left = Math.min(c.writeBytes, RNG_MAX_BYTES_PER_REQUEST);
      let written = 0;
      for (let i = c.readCount; i < c.count && left > 0; i++) {
        const n = Math.min(c.lengths[i], left);
        this.fill(ram, c.offsets[i], n);
        this.mem.externalWrite(c.offsets[i], n);
        written += n;
        left -= n;
      }
      this.bytesServed += written;
      q.push(c.head, written);
    }
    this.complete(q);
  }

  protected saveDevice(): VirtioRngState {
    return {};
  }

  protected restoreDevice(_state: VirtioRngState): void {}
}

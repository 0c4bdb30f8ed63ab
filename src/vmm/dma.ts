/**
 * Keeps the translator honest about device writes to guest RAM.
 *
 * The JIT (src/cpu/jit.ts) notices every store the hart makes to a page holding translated code,
 * but virtio devices write guest RAM directly (a disk read lands in a page-cache page, a frame in a
 * receive buffer), and such a page may hold stale translations from the code that last lived
 * there: Linux reuses freed pages. Every such write ends with the chain being returned through its
 * queue's used ring, so the watch reads the used rings: for each entry added since the last look it
 * walks that chain's descriptors (still intact: the driver has not run since) and drops the
 * writable ranges from the translator.
 *
 * Each such range is announced with `bus.externalWrite()`, which the translator listens to.
 *
 * The machine calls `scan()` right after every MMIO write to a virtio window (a notify is served
 * synchronously inside it) and before each slice of guest code (receive work done from the event
 * loop). Between two scans a queue can gain at most its size in used entries, because the driver
 * cannot post more buffers without running. The watch only reads guest memory, allocates nothing
 * per request, and trusts nothing it reads: the device has already refused any malformed chain.
 */
import type { Bus, MmioDevice } from "../cpu/bus.js";
import type { VirtioMmioState } from "../devices/virtio/mmio.js";
import { REG } from "../devices/virtio/mmio.js";
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../devices/virtio/queue.js";

const TWO32 = 4294967296;

/** What the watch needs from a virtio device: its MMIO window and its plain state (queue registers). */
export interface WatchedVirtio extends MmioDevice {
  save(): VirtioMmioState<unknown>;
}

/** One enabled queue: RAM offsets of its descriptor table and used ring, and how far it was read. */
interface QueueView {
  desc: number;
  used: number;
  size: number;
  lastUsed: number;
}

export class DmaWatch {
  private readonly bus: Bus;
  private readonly devices: WatchedVirtio[] = [];
  /** Per device: its enabled queues (rebuilt when the driver enables, disables or resets queues). */
  private readonly views: QueueView[][] = [];

  constructor(bus: Bus) {
    this.bus = bus;
  }

  /** Watches `device`; returns the MMIO device to map in its place (it scans after every write). */
  watch(device: WatchedVirtio): MmioDevice {
    const index = this.devices.length;
    this.devices.push(device);
    this.views.push([]);
    this.refresh(index);
    const after = (offset: number): void => {
      // Queue addresses only change around QueueReady and Status writes (enable, reset).
      if (offset === REG.QUEUE_READY || offset === REG.STATUS) this.refresh(index);
      this.scan();
    };
    return {
      name: device.name,
      read: (offset, size) => device.read(offset, size),
      write: (offset, value, size) => {
        device.write(offset, value, size);
        after(offset);
      },
    };
  }

  /** Re-reads every device's queue addresses (after a snapshot restore). */
  refreshAll(): void {
    for (let i = 0; i < this.devices.length; i++) this.refresh(i);
  }

  private refresh(index: number): void {
    this.scan(); // entries pushed under the old layout are accounted for first
    const views: QueueView[] = [];
    const bus = this.bus;
    for (const q of this.devices[index].save().queues) {
      if (!q.ready) continue;
      const size = q.size;
      const desc = bus.ramOffset(q.descHi * TWO32 + q.descLo);
      const used = bus.ramOffset(q.deviceHi * TWO32 + q.deviceLo);
      if (desc < 0 || used < 0 || desc + 16 * size > bus.ramSize || used + 4 + 8 * size > bus.ramSize) continue;
      views.push({ desc, used, size, lastUsed: bus.ram16[(used + 2) >>> 1] });
    }
    this.views[index] = views;
  }

  /** Drops from the translator whatever the devices wrote since the last scan. */
  scan(): void {
    const ram16 = this.bus.ram16;
    const ram32 = this.bus.ram32;
    for (const views of this.views) {
      for (const v of views) {
        const now = ram16[(v.used + 2) >>> 1];
        let at = v.lastUsed;
        if (at === now) continue;
        // Never more than the queue size (see above); a larger jump is a driver rewriting the ring.
        let budget = v.size;
        while (at !== now && budget-- > 0) {
          const entry = v.used + 4 + 8 * (at & (v.size - 1));
          this.dropChain(v, ram32[entry >>> 2] >>> 0);
          at = (at + 1) & 0xffff;
        }
        v.lastUsed = now;
      }
    }
  }

  /** Invalidates the device-writable buffers of the chain that starts at descriptor `head`. */
  private dropChain(v: QueueView, head: number): void {
    const bus = this.bus;
    const ram16 = bus.ram16;
    const ram32 = bus.ram32;
    let table = v.desc;
    let tableSize = v.size;
    let i = head;
    let steps = 0;
    let indirect = false;
    while (i < tableSize && steps++ < tableSize) {
      const d = table + 16 * i;
      const addr = (ram32[d >>> 2] >>> 0) + (ram32[(d + 4) >>> 2] >>> 0) * TWO32;
      const len = ram32[(d + 8) >>> 2] >>> 0;
      const flags = ram16[(d + 12) >>> 1];
      const next = ram16[(d + 14) >>> 1];
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        const off = bus.ramOffset(addr);
        if (indirect || off < 0 || off % 16 !== 0 || off + len > bus.ramSize) return;
        table = off;
        tableSize = len >>> 4;
        indirect = true;
        i = 0;
        steps = 0;
        continue;
      }
      if (flags & VIRTQ_DESC_F_WRITE && len > 0) {
        const off = bus.ramOffset(addr);
        if (off >= 0) bus.externalWrite(off, Math.min(len, bus.ramSize - off));
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      i = next;
    }
  }
}

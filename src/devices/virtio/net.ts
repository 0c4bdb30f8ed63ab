/**
 * virtio-net (virtio 1.2 §5.1) over a NetBackend: one receive and one transmit queue, no offloads.
 * Every buffer starts with the 12-byte virtio_net_hdr_v1, which carries nothing but num_buffers.
 *
 * Transmit: on notify each chain loses its header and goes to backend.send().
 * Receive: frames from the backend go straight into the guest's receive buffers (spread over
 * several with MRG_RXBUF). When the guest has none, up to 256 frames wait in a preallocated ring;
 * it drains when the guest adds buffers, and the device asks for that notification only then.
 */
import type { IrqLine } from "../device.js";
import type { NetBackend } from "../netdev.js";
import { VIRTIO_ID_NET, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import { Scratch, VirtqueueError, type DescriptorChain, type GuestRam } from "./queue.js";

export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_S_LINK_UP = 1;

/** sizeof(struct virtio_net_hdr_v1): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VIRTIO_NET_HDR_BYTES = 12;
/** Largest frame either way: a 65535-byte MTU plus Ethernet and VLAN headers. */
export const MAX_FRAME = 65535 + 18;
const MIN_FRAME = 14;
const QUEUE_SIZE = 256;
const RX = 0;
const TX = 1;
/** Frames the backlog holds while the guest has no receive buffers, and their total bytes. */
export const BACKLOG_FRAMES = 256;
const BACKLOG_BYTES = 1024 * 1024;

const DELIVERED = 0;
const NO_ROOM = 1;
const DROPPED = 2;

export interface VirtioNetStats {
  rxPackets: number;
  rxBytes: number;
  /** Frames from the backend that were lost: backlog full, too short or long, no fitting buffer. */
  rxDrops: number;
  txPackets: number;
  txBytes: number;
  /** Chains the guest sent that carried no frame (shorter than a header) or went out while the link was down. */
  txDrops: number;
}

export interface VirtioNetOptions extends VirtioOptions {
  /** The guest's MAC address: "52:54:00:12:34:56" or six bytes. */
  mac: string | Uint8Array;
  /** Called after a received frame reached guest memory, to wake a VM loop sleeping in WFI. */
  kick?: () => void;
}

export interface VirtioNetState {
  linkUp: boolean;
  /** Frames waiting for receive buffers, base64. */
  backlog: string[];
}

/** Parses "52:54:00:12:34:56" (or "-" separated); throws a clear error otherwise. */
export function parseMac(mac: string | Uint8Array): Uint8Array {
  if (typeof mac !== "string") {
    if (mac.length !== 6) throw new Error(`a MAC address has 6 bytes, not ${mac.length}`);
    return Uint8Array.from(mac);
  }
  const parts = mac.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new Error(`invalid MAC address "${mac}": expected six hex bytes like 52:54:00:12:34:56`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export class VirtioNet extends VirtioMmioDevice<VirtioNetState> {
  readonly mac: Uint8Array;
  private readonly backend: NetBackend;
  private readonly kick: (() => void) | undefined;
  private linkUp = true;

  private readonly txChain: DescriptorChain;
  private readonly txScratch = new Scratch(MAX_FRAME);
  private readonly rxFirst: DescriptorChain;
  private readonly rxMore: DescriptorChain;
  private readonly rxHeads = new Uint16Array(QUEUE_SIZE);
  private readonly rxLens = new Uint32Array(QUEUE_SIZE);
  private readonly rxHeader = new Uint8Array(VIRTIO_NET_HDR_BYTES);

  // Backlog: frames stored contiguously in a byte ring, in arrival order.
  private readonly blBytes = new Uint8Array(BACKLOG_BYTES);
  private readonly blStart = new Uint32Array(BACKLOG_FRAMES);
  private readonly blLen = new Uint32Array(BACKLOG_FRAMES);
  private blHead = 0;
  private blCount = 0;
  /** Byte offset just past the newest frame. */
  private blTail = 0;

  private readonly counters: VirtioNetStats = {
    rxPackets: 0,
    rxBytes: 0,
    rxDrops: 0,
    txPackets: 0,
    txBytes: 0,
    txDrops: 0,
  };

  constructor(mem: GuestRam, irq: IrqLine, backend: NetBackend, options: VirtioNetOptions) {
    const features = (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_NET_F_STATUS);
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_NET,
        defaultName: "virtio-net",
        features,
        queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE, maxBytes: VIRTIO_NET_HDR_BYTES + MAX_FRAME }],
        configSize: 8,
      },
      options,
    );
    this.mac = parseMac(options.mac);
    this.backend = backend;
    this.kick = options.kick;
    this.txChain = this.newChain();
    this.rxFirst = this.newChain();
    this.rxMore = this.newChain();
    this.config.set(this.mac, 0);
    this.configView.setUint16(6, VIRTIO_NET_S_LINK_UP, true);
    backend.attach(this.deliver);
  }

  stats(): VirtioNetStats {
    return { ...this.counters };
  }

  /** Frames waiting for guest receive buffers. */
  get backlog(): number {
    return this.blCount;
  }

  /** Plugs or unplugs the virtual cable (config status LINK_UP and a config-change interrupt). */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.configView.setUint16(6, up ? VIRTIO_NET_S_LINK_UP : 0, true);
    this.configChanged();
  }

  /** The backend's receive callback: false when the frame was dropped. */
  private readonly deliver = (frame: Uint8Array): boolean => {
    const len = frame.length;
    if (len < MIN_FRAME || len > MAX_FRAME || !this.linkUp) {
      this.counters.rxDrops++;
      return false;
    }
    if (this.blCount === 0 && this.queueLive(RX)) {
      try {
        const r = this.receive(frame, 0, len);
        if (r === DELIVERED) {
          this.counters.rxPackets++;
          this.counters.rxBytes += len;
          this.complete(this.queues[RX], false);
          this.kick?.();
          return true;
        }
        if (r === DROPPED) {
          this.counters.rxDrops++;
          return false;
        }
      } catch (e) {
        this.guard(e);
      }
    }
    if (!this.backlogPush(frame)) {
      this.counters.rxDrops++;
      return false;
    }
    // Now the device wants to hear about new receive buffers.
    if (this.queueLive(RX)) this.complete(this.queues[RX], true);
    return true;
  };

  protected queueNotified(index: number): void {
    if (index === TX) this.transmit();
    else if (index === RX) {
      const q = this.queues[RX];
      this.drainBacklog();
      this.complete(q, this.blCount > 0);
    }
  }

  private transmit(): void {
    const q = this.queues[TX];
    const c = this.txChain;
    while (this.live && q.pop(c)) {
      const len = c.readBytes - VIRTIO_NET_HDR_BYTES;
      if (len < MIN_FRAME || !this.linkUp) {
        this.counters.txDrops++;
      } else {
        c.read(VIRTIO_NET_HDR_BYTES, this.txScratch.bytes, 0, len);
        this.counters.txPackets++;
        this.counters.txBytes += len;
        this.backend.send(this.txScratch.view(len));
      }
      q.push(c.head, 0);
    }
    this.complete(q);
  }

  /** Moves backlogged frames into guest buffers while there are some. */
  private drainBacklog(): void {
    while (this.blCount > 0 && this.queueLive(RX)) {
      const len = this.blLen[this.blHead];
      const r = this.receive(this.blBytes, this.blStart[this.blHead], len);
      if (r === NO_ROOM) return;
      if (r === DELIVERED) {
        this.counters.rxPackets++;
        this.counters.rxBytes += len;
      } else {
        this.counters.rxDrops++;
      }
      this.backlogShift();
    }
  }

  /**
   * Places one frame (src[off..off+len)) in the guest's receive buffers. NO_ROOM leaves the queue as
   * it was; DROPPED means it could never fit (without MRG_RXBUF, a buffer smaller than the frame).
   */
  private receive(src: Uint8Array, off: number, len: number): number {
    const q = this.queues[RX];
    const first = this.rxFirst;
    if (!q.pop(first)) return NO_ROOM;
    const mrg = this.negotiated(VIRTIO_NET_F_MRG_RXBUF);
    if (first.writeBytes < VIRTIO_NET_HDR_BYTES) {
      throw new VirtqueueError(
        `queue 0: receive buffer ${first.head} has ${first.writeBytes} writable bytes, less than the ${VIRTIO_NET_HDR_BYTES}-byte header`,
      );
    }
    let done = Math.min(len, first.writeBytes - VIRTIO_NET_HDR_BYTES);
    if (done < len && !mrg) {
      q.unpop(1);
      return DROPPED;
    }
    first.write(VIRTIO_NET_HDR_BYTES, src, off, done);
    this.rxHeads[0] = first.head;
    this.rxLens[0] = VIRTIO_NET_HDR_BYTES + done;
    let n = 1;
    const more = this.rxMore;
    while (done < len) {
      // At most the queue size of pops: pop() fails once the available ring is exhausted.
      if (!q.pop(more)) {
        q.unpop(n);
        return NO_ROOM;
      }
      const k = more.write(0, src, off + done, len - done);
      this.rxHeads[n] = more.head;
      this.rxLens[n] = k;
      n++;
      done += k;
    }
    const h = this.rxHeader;
    h.fill(0);
    h[10] = n & 0xff; // num_buffers
    h[11] = n >>> 8;
    first.write(0, h, 0, VIRTIO_NET_HDR_BYTES);
    for (let i = 0; i < n; i++) q.push(this.rxHeads[i], this.rxLens[i]);
    return DELIVERED;
  }

  // ---- backlog ring ----

  private backlogPush(frame: Uint8Array): boolean {
    const len = frame.length;
    if (this.blCount === BACKLOG_FRAMES) return false;
    let at: number;
    if (this.blCount === 0) {
      at = 0;
    } else {
      const first = this.blStart[this.blHead];
      if (this.blTail > first) {
        // Unwrapped: [first, tail) in use; room after tail, or from 0 up to first.
        if (this.blTail + len <= BACKLOG_BYTES) at = this.blTail;
        else if (len <= first) at = 0;
        else return false;
      } else {
        // Wrapped: [first, end) and [0, tail) in use; room between tail and first.
        if (this.blTail + len <= first) at = this.blTail;
        else return false;
      }
    }
    this.blBytes.set(frame, at);
    const slot = (this.blHead + this.blCount) % BACKLOG_FRAMES;
    this.blStart[slot] = at;
    this.blLen[slot] = len;
    this.blCount++;
    this.blTail = at + len;
    return true;
  }

  private backlogShift(): void {
    this.blHead = (this.blHead + 1) % BACKLOG_FRAMES;
    this.blCount--;
    if (this.blCount === 0) this.blHead = this.blTail = 0;
  }

  protected saveDevice(): VirtioNetState {
    const backlog: string[] = [];
    for (let i = 0; i < this.blCount; i++) {
      const slot = (this.blHead + i) % BACKLOG_FRAMES;
      const start = this.blStart[slot];
      backlog.push(Buffer.from(this.blBytes.subarray(start, start + this.blLen[slot])).toString("base64"));
    }
    return { linkUp: this.linkUp, backlog };
  }

  protected restoreDevice(state: VirtioNetState): void {
    this.linkUp = state.linkUp !== false;
    this.configView.setUint16(6, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    this.blHead = this.blCount = this.blTail = 0;
    for (const b64 of state.backlog ?? []) this.backlogPush(Buffer.from(b64, "base64"));
  }
}

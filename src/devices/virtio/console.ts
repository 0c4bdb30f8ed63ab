/**
 * virtio-console (virtio 1.2 §5.3), a single port without MULTIPORT: receive queue 0, transmit
 * queue 1. Linux drives it as /dev/hvc0. Host input waits in an unbounded queue (typed or piped
 * bytes are never dropped) until the guest posts receive buffers.
 */
import type { IrqLine } from "../device.js";
import { VIRTIO_ID_CONSOLE, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import type { DescriptorChain, GuestRam } from "./queue.js";

export const VIRTIO_CONSOLE_F_SIZE = 0;

const QUEUE_SIZE = 64;
const RX = 0;
const TX = 1;
/** Most bytes one transmit chain may carry (Linux sends at most a page). */
const MAX_TX_BYTES = 1024 * 1024;

export interface VirtioConsoleOptions extends VirtioOptions {
  /** Called after input reached guest memory, to wake a VM loop sleeping in WFI. */
  kick?: () => void;
  /** Offer VIRTIO_CONSOLE_F_SIZE with this terminal size (cols/rows read 80x24 either way). */
  size?: { cols: number; rows: number };
}

export interface VirtioConsoleState {
  cols: number;
  rows: number;
  /** Input not yet taken by the guest, base64. */
  pending: string;
}

export class VirtioConsole extends VirtioMmioDevice<VirtioConsoleState> {
  private readonly output: (bytes: Uint8Array) => void;
  private readonly kick: (() => void) | undefined;
  private readonly chain: DescriptorChain;
  /** Pending input: chunks in order, the first partly consumed up to `pendingOffset`. */
  private pendingChunks: Uint8Array[] = [];
  private pendingOffset = 0;
  private pendingTotal = 0;

  /** `output` receives each transmit buffer's bytes in a fresh array it may keep. */
  constructor(mem: GuestRam, irq: IrqLine, output: (bytes: Uint8Array) => void, options: VirtioConsoleOptions = {}) {
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_CONSOLE,
        defaultName: "virtio-console",
        features: options.size ? 1 << VIRTIO_CONSOLE_F_SIZE : 0,
        queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE, maxBytes: MAX_TX_BYTES }],
        configSize: 12,
      },
      options,
    );
    this.output = output;
    this.kick = options.kick;
    this.chain = this.newChain();
    this.setSize(options.size?.cols ?? 80, options.size?.rows ?? 24);
    this.configView.setUint32(4, 1, true); // max_nr_ports
  }

  /** Bytes of host input the guest has not taken yet. */
  get pendingInput(): number {
    return this.pendingTotal;
  }

  /** Queues host input (copied) and hands it to the guest as far as its buffers allow. */
  input(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.pendingChunks.push(Uint8Array.from(bytes));
    this.pendingTotal += bytes.length;
    if (!this.queueLive(RX)) return;
    try {
      const delivered = this.fillReceive();
      this.complete(this.queues[RX], this.pendingTotal > 0);
      if (delivered) this.kick?.();
    } catch (e) {
      this.guard(e);
    }
  }

  /** A new terminal size: config cols/rows and, when SIZE was offered, a config-change interrupt. */
  resize(cols: number, rows: number): void {
    this.setSize(cols, rows);
    this.configChanged();
  }

  private setSize(cols: number, rows: number): void {
    this.configView.setUint16(0, cols, true);
    this.configView.setUint16(2, rows, true);
  }

  protected queueNotified(index: number): void {
    if (index === TX) this.transmit();
    else if (index === RX) {
      this.fillReceive();
      this.complete(this.queues[RX], this.pendingTotal > 0);
    }
  }

  private transmit(): void {
    const q = this.queues[TX];
    const c = this.chain;
    while (this.live && q.pop(c)) {
      if (c.readBytes > 0) {
        const bytes = new Uint8Array(c.readBytes);
        c.read(0, bytes, 0, bytes.length);
        this.output(bytes);
      }
      q.push(c.head, 0);
    }
    this.complete(q);
  }

  /** Copies pending input into receive buffers; true when any was delivered. */
  private fillReceive(): boolean {
    const q = this.queues[RX];
    const c = this.chain;
    let delivered = false;
    while (this.pendingTotal > 0 && this.live && q.pop(c)) {
      let written = 0;
      while (written < c.writeBytes && this.pendingTotal > 0) {
        const chunk = this.pendingChunks[0];
        const n = c.write(written, chunk, this.pendingOffset, chunk.length - this.pendingOffset);
        written += n;
        this.pendingTotal -= n;
        this.pendingOffset += n;
        if (this.pendingOffset === chunk.length) {
          this.pendingChunks.shift();
          this.pendingOffset = 0;
        }
      }
      q.push(c.head, written);
      delivered = true;
    }
    return delivered;
  }

  protected saveDevice(): VirtioConsoleState {
    const parts = this.pendingChunks.map((c, i) => (i === 0 ? c.subarray(this.pendingOffset) : c));
    return {
      cols: this.configView.getUint16(0, true),
      rows: this.configView.getUint16(2, true),
      pending: Buffer.concat(parts).toString("base64"),
    };
  }

  protected restoreDevice(state: VirtioConsoleState): void {
    this.setSize(state.cols, state.rows);
    const pending = new Uint8Array(Buffer.from(state.pending ?? "", "base64"));
    this.pendingChunks = pending.length > 0 ? [pending] : [];
    this.pendingOffset = 0;
    this.pendingTotal = pending.length;
  }
}

/**
 * virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest (CID 3 by default) and the
 * host (CID 2), without a network. Queues: receive 0 (device to guest), transmit 1 (guest to
 * device), event 2 (TRANSPORT_RESET after a restore). Every packet starts with the 44-byte header
 * (src/dst CID and port, payload length, type, op, flags, buf_alloc, fwd_cnt).
 *
 * The host side of each connection is a VsockConnection: a host program connects to a guest port
 * (connect()) or accepts what the guest connects to (listen()). Flow control is credit based both
 * ways, so nothing buffers without bound: the guest may send a connection at most HOST_BUF_ALLOC
 * bytes the host has not consumed yet (consumed() returns credit), and the host's write() queues at
 * most about HOST_QUEUE_LIMIT bytes beyond what the guest's advertised buffer takes (then it returns
 * false and `drain` follows). A peer that stops reading stalls only its own connection.
 *
 * The guest is distrusted: a malformed packet (short header, a length beyond the chain or
 * MAX_PACKET_PAYLOAD, a wrong CID, type or op, data beyond its credit) resets its connection or is
 * dropped; only virtqueue rule breaks put the device into DEVICE_NEEDS_RESET. Connections are not
 * part of the saved state: a restored device starts without any and tells the guest with
 * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does.
 */
import type { IrqLine } from "../device.js";
import { VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import { VirtqueueError, type DescriptorChain, type GuestRam } from "./queue.js";

export const VIRTIO_ID_VSOCK = 19;
export const VSOCK_HOST_CID = 2;
export const DEFAULT_GUEST_CID = 3;
export const VSOCK_HEADER_BYTES = 44;

export const VSOCK_TYPE_STREAM = 1;
export const VSOCK_OP_REQUEST = 1;
export const VSOCK_OP_RESPONSE = 2;
export const VSOCK_OP_RST = 3;
export const VSOCK_OP_SHUTDOWN = 4;
export const VSOCK_OP_RW = 5;
export const VSOCK_OP_CREDIT_UPDATE = 6;
export const VSOCK_OP_CREDIT_REQUEST = 7;
export const VSOCK_SHUTDOWN_RCV = 1;
export const VSOCK_SHUTDOWN_SEND = 2;
export const VSOCK_EVENT_TRANSPORT_RESET = 0;

/** The host's receive buffer per connection: the credit the guest gets. */
export const HOST_BUF_ALLOC = 256 * 1024;
/** Host bytes a connection queues for the guest before write() asks the writer to wait. */
export const HOST_QUEUE_LIMIT = 256 * 1024;
/** Most payload one packet carries (Linux sends at most 64 KiB). */
export const MAX_PACKET_PAYLOAD = 64 * 1024;
/** Most connections at once; more requests are reset. */
export const MAX_CONNECTIONS = 1024;
/** Resets for packets of unknown connections waiting for receive buffers; more are dropped. */
const MAX_PENDING_RESETS = 64;
/** Host-side ports of host-initiated connections start here (as Firecracker's). */
const FIRST_LOCAL_PORT = 1 << 30;

const QUEUE_SIZE = 256;
const RX = 0;
const TX = 1;
const EVENT = 2;

/** What a host program hears of its connection. Called on the event loop, never re-entrantly. */
export interface VsockHandlers {
  /** Host-initiated only: the guest accepted; write() may start. */
  open?(): void;
  /** Bytes from the guest, in an array the callee may keep. Call consumed(n) once they are passed on. */
  data(bytes: Uint8Array): void;
  /** The guest sends no more (it shut down its sending side); the connection may still receive. */
  end(): void;
  /** The connection is gone; no further calls. `error` is false for an orderly close by the guest. */
  close(reason: string, error: boolean): void;
  /** write() returned false earlier and the queue has room again. */
  drain?(): void;
}

type ConnState = "connecting" | "accepting" | "open" | "closing" | "closed";

/** One stream between a host port and a guest port. */
export class VsockConnection {
  state: ConnState;
  handlers: VsockHandlers | null;
  /** The guest's buffer (buf_alloc) and what it has consumed of our bytes (fwd_cnt). */
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** Bytes sent to the guest (free-running u32). */
  txCnt = 0;
  /** Bytes from the guest the host consumed, and the count last told the guest. */
  fwdCnt = 0;
  reportedFwdCnt = 0;
  /** Bytes from the guest handed to the host and not yet consumed. */
  unconsumed = 0;
  /** Host bytes waiting for the guest: chunks, the first sent up to headOffset. */
  readonly queue: Uint8Array[] = [];
  headOffset = 0;
  queued = 0;
  wantDrain = false;
  /** Control packets owed to the guest. */
  sendRequest = false;
  sendResponse = false;
  sendRst = false;
  sendCredit = false;
  /** The host will write no more: SHUTDOWN(flags) once the queue is empty (0: none owed). */
  shutdownFlags = 0;
  shutdownSent = false;
  /** The guest said it sends no more / receives no more. */
  guestSendDone = false;
  guestRcvDone = false;

  constructor(
    private readonly device: VirtioVsock,
    readonly hostPort: number,
    readonly guestPort: number,
    state: ConnState,
    handlers: VsockHandlers | null,
  ) {
    this.state = state;
    this.handlers = handlers;
  }

  /** Credit the guest has left for our bytes. */
  get peerCredit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  /** Accepts a guest-initiated connection (see VirtioVsock.listen). */
  accept(handlers: VsockHandlers): void {
    if (this.state !== "accepting") return;
    this.handlers = handlers;
    this.state = "open";
    this.sendResponse = true;
    this.device.scheduled(this);
  }

  /**
   * Queues bytes for the guest (the array is kept, not copied). Returns false when the queue is
   * over HOST_QUEUE_LIMIT: wait for `drain`. Bytes written after end() or close are dropped.
   */
  write(bytes: Uint8Array): boolean {
    if (this.state === "closed" || this.shutdownFlags !== 0 || this.guestRcvDone) return false;
    if (bytes.length > 0) {
      this.queue.push(bytes);
      this.queued += bytes.length;
      this.device.scheduled(this);
    }
    if (this.queued >= HOST_QUEUE_LIMIT) {
      this.wantDrain = true;
      return false;
    }
    return true;
  }

  /** The host sends no more: the guest reads end of file after the queued bytes. */
  end(): void {
    if (this.state === "closed" || this.shutdownFlags !== 0) return;
    this.shutdownFlags = VSOCK_SHUTDOWN_SEND;
    this.device.scheduled(this);
  }

  /** Closes both ways after the queued bytes (the guest answers with a reset, which ends it). */
  close(): void {
    if (this.state === "closed") return;
    if (this.state === "accepting" || this.state === "connecting") {
      this.destroy();
      return;
    }
    this.shutdownFlags = VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV;
    this.device.scheduled(this);
  }

  /** Resets the connection now; queued bytes are dropped. No further handler calls. */
  destroy(): void {
    if (this.state === "closed") return;
    this.handlers = null;
    this.device.resetConnection(this);
  }

  /** The host passed on `n` bytes of what `data` delivered: the guest may send that many more. */
  consumed(n: number): void {
    if (this.state === "closed" || n <= 0) return;
    n = Math.min(n, this.unconsumed);
    this.unconsumed -= n;
    this.fwdCnt = (this.fwdCnt + n) >>> 0;
    const unreported = (this.fwdCnt - this.reportedFwdCnt) >>> 0;
    // The guest waits for an update only when short of credit; tell it in quarter-buffer steps
    // and whenever everything it sent was consumed.
    if (unreported >= HOST_BUF_ALLOC / 4 || (this.unconsumed === 0 && unreported > 0)) {
      this.sendCredit = true;
      this.device.scheduled(this);
    }
  }

  /** The connection is gone (refused, reset, closed): accept() and write() do nothing. */
  get closed(): boolean {
    return this.state === "closed";
  }

  /** Whether a packet can go to the guest now. */
  get hasWork(): boolean {
    if (this.state === "closed") return false;
    if (this.sendRst || this.sendRequest || this.sendResponse || this.sendCredit) return true;
    if (this.state !== "open" && this.state !== "closing") return false;
    if (this.queued > 0) return this.peerCredit > 0 && !this.guestRcvDone;
    return this.shutdownFlags !== 0 && !this.shutdownSent;
  }
}

/** The device's plain state: connections are not kept (see the file comment). */
export interface VirtioVsockState {
  guestCid: number;
  /** A TRANSPORT_RESET event owed to the guest (it had posted no event buffer yet). */
  resetEventPending: boolean;
}

export interface VirtioVsockOptions extends VirtioOptions {
  /** The guest's context ID (default 3; 0-2 and 0xffffffff are reserved). */
  guestCid?: number;
  /** Called after packets moved either way: wakes a VM loop sleeping in WFI, and tells it I/O is under way. */
  kick?: () => void;
}

/** A guest's connection request to a host port: accept it (conn.accept) or refuse it (conn.destroy). */
export type VsockListener = (conn: VsockConnection) => void;

export class VirtioVsock extends VirtioMmioDevice<VirtioVsockState> {
  readonly guestCid: number;
  private readonly kick: (() => void) | undefined;
  private readonly txChain: DescriptorChain;
  private readonly rxChain: DescriptorChain;
  private readonly eventChain: DescriptorChain;
  private readonly header = new Uint8Array(VSOCK_HEADER_BYTES);
  private readonly headerView = new DataView(this.header.buffer);
  /** hostPort -> guestPort -> connection. */
  private readonly connections = new Map<number, Map<number, VsockConnection>>();
  private connectionCount = 0;
  /** Connections with a packet to send, in the order they got it (round-robin). */
  private readonly ready = new Set<VsockConnection>();
  /** Resets owed for packets that named no connection: [hostPort, guestPort] pairs. */
  private readonly orphanResets: number[] = [];
  private listener: VsockListener | null = null;
  private nextLocalPort = FIRST_LOCAL_PORT;
  private resetEventPending = false;
  private filling = false;
  private refill = false;
  private readonly drains: VsockConnection[] = [];
  private drainScheduled = false;

  constructor(mem: GuestRam, irq: IrqLine, options: VirtioVsockOptions = {}) {
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_VSOCK,
        defaultName: "virtio-vsock",
        // No feature bits: stream sockets are implied without VIRTIO_VSOCK_F_NO_IMPLIED_STREAM.
        features: 0,
        queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE }, { size: 64 }],
        configSize: 8,
      },
      options,
    );
    const cid = options.guestCid ?? DEFAULT_GUEST_CID;
    if (!Number.isInteger(cid) || cid < 3 || cid >= 0xffff_ffff) {
      throw new Error(`a guest CID is a whole number from 3 to 4294967294, not ${cid}`);
    }
    this.guestCid = cid;
    this.kick = options.kick;
    this.txChain = this.newChain();
    this.rxChain = this.newChain();
    this.eventChain = this.newChain();
    this.configView.setUint32(0, cid, true);
    this.configView.setUint32(4, 0, true);
  }

  /** Receives the guest's connection requests to host ports (without one they are refused). */
  listen(listener: VsockListener | null): void {
    this.listener = listener;
  }

  /** Connections open or being opened. */
  get connectionsOpen(): number {
    return this.connectionCount;
  }

  /**
   * Connects to the guest's listener on `guestPort`. `handlers.open` follows when it accepts,
   * `close` when it refuses (nothing listens) or the driver is not ready. Throws when the device
   * cannot take another connection.
   */
  connect(guestPort: number, handlers: VsockHandlers): VsockConnection {
    if (!Number.isInteger(guestPort) || guestPort < 0 || guestPort > 0xffff_ffff) {
      throw new Error(`a vsock port is a whole number from 0 to 4294967295, not ${guestPort}`);
    }
    if (this.connectionCount >= MAX_CONNECTIONS) {
      throw new Error(`the VM has ${MAX_CONNECTIONS} vsock connections open; no more are taken`);
    }
    let hostPort = this.nextLocalPort;
    while (this.find(hostPort, guestPort) !== undefined)
      hostPort = hostPort + 1 >= 0xffff_ffff ? FIRST_LOCAL_PORT : hostPort + 1;
    this.nextLocalPort = hostPort + 1 >= 0xffff_ffff ? FIRST_LOCAL_PORT : hostPort + 1;
    const conn = new VsockConnection(this, hostPort, guestPort, "connecting", handlers);
    this.add(conn);
    if (!this.live) {
      this.remove(conn);
      queueMicrotask(() => handlers.close("the guest has no vsock driver running", true));
      return conn;
    }
    conn.sendRequest = true;
    this.scheduled(conn);
    return conn;
  }

  /** Ends every connection (the machine stops or is replaced); the guest is not told. */
  closeAll(reason: string): void {
    for (const byGuest of this.connections.values()) {
      for (const conn of byGuest.values()) {
        const h = conn.handlers;
        conn.state = "closed";
        conn.handlers = null;
        h?.close(reason, true);
      }
    }
    this.connections.clear();
    this.connectionCount = 0;
    this.ready.clear();
    this.orphanResets.length = 0;
  }

  // ---- connection bookkeeping (VsockConnection calls these) ----

  /** `conn` may have a packet for the guest: send what the receive buffers take. */
  scheduled(conn: VsockConnection): void {
    if (conn.hasWork) this.ready.add(conn);
    this.pump();
  }

  /** Resets `conn` (host side): a RST goes to the guest, the connection is forgotten. */
  resetConnection(conn: VsockConnection): void {
    this.remove(conn);
    // A request still unsent needs no reset: the guest never heard of the connection.
    if (!(conn.state === "connecting" && conn.sendRequest)) this.orphanReset(conn.hostPort, conn.guestPort);
    conn.state = "closed";
    this.pump();
  }

  private find(hostPort: number, guestPort: number): VsockConnection | undefined {
    return this.connections.get(hostPort)?.get(guestPort);
  }

  private add(conn: VsockConnection): void {
    let byGuest = this.connections.get(conn.hostPort);
    if (byGuest === undefined) {
      byGuest = new Map();
      this.connections.set(conn.hostPort, byGuest);
    }
    byGuest.set(conn.guestPort, conn);
    this.connectionCount++;
  }

  private remove(conn: VsockConnection): void {
    const byGuest = this.connections.get(conn.hostPort);
    if (byGuest?.get(conn.guestPort) !== conn) return;
    byGuest.delete(conn.guestPort);
    if (byGuest.size === 0) this.connections.delete(conn.hostPort);
    this.connectionCount--;
    this.ready.delete(conn);
  }

  /** Ends `conn` from the guest's side: forgotten, and the host told why. */
  private drop(conn: VsockConnection, reason: string, error: boolean): void {
    this.remove(conn);
    const h = conn.handlers;
    conn.state = "closed";
    conn.handlers = null;
    h?.close(reason, error);
  }

  private orphanReset(hostPort: number, guestPort: number): void {
    if (this.orphanResets.length >= 2 * MAX_PENDING_RESETS) return;
    this.orphanResets.push(hostPort, guestPort);
  }

  // ---- queues ----

  protected queueNotified(index: number): void {
    if (index === TX) this.transmit();
    else if (index === RX) this.pumpNow();
    else if (index === EVENT) this.deliverResetEvent();
  }

  private pump(): void {
    if (!this.queueLive(RX)) return;
    try {
      this.pumpNow();
    } catch (e) {
      this.guard(e);
    }
  }

  /** Fills receive buffers with owed packets, round-robin over the connections. */
  private pumpNow(): void {
    if (this.filling) {
      this.refill = true;
      return;
    }
    this.filling = true;
    try {
      const q = this.queues[RX];
      const c = this.rxChain;
      let sent = false;
      do {
        this.refill = false;
        while (this.live && (this.ready.size > 0 || this.orphanResets.length > 0)) {
          if (!q.pop(c)) break;
          if (c.writeBytes < VSOCK_HEADER_BYTES) {
            throw new VirtqueueError(`receive buffer of ${c.writeBytes} bytes is smaller than the 44-byte header`);
          }
          let len = -1;
          if (this.orphanResets.length > 0) {
            const hostPort = this.orphanResets.shift()!;
            const guestPort = this.orphanResets.shift()!;
            len = this.writeHeader(c, hostPort, guestPort, VSOCK_OP_RST, 0, 0, 0);
          } else {
            const conn = this.ready.values().next().value as VsockConnection;
            this.ready.delete(conn);
            len = this.packetFor(conn, c);
            if (conn.hasWork) this.ready.add(conn);
          }
          if (len < 0) {
            q.unpop(1);
            continue;
          }
          q.push(c.head, len);
          sent = true;
        }
      } while (this.refill);
      this.complete(q, true);
      if (sent) this.kick?.();
    } finally {
      this.filling = false;
    }
    this.runDrains();
  }

  /** Writes conn's next packet into `c`; returns the bytes written, or -1 when it had none. */
  private packetFor(conn: VsockConnection, c: DescriptorChain): number {
    if (conn.sendRst) {
      conn.sendRst = false;
      return this.writeHeader(c, conn.hostPort, conn.guestPort, VSOCK_OP_RST, 0, 0, 0);
    }
    if (conn.sendRequest) {
      conn.sendRequest = false;
      return this.connHeader(c, conn, VSOCK_OP_REQUEST, 0, 0);
    }
    if (conn.sendResponse) {
      conn.sendResponse = false;
      return this.connHeader(c, conn, VSOCK_OP_RESPONSE, 0, 0);
    }
    if (conn.state === "open" || conn.state === "closing") {
      if (conn.queued > 0 && !conn.guestRcvDone) {
        const room = Math.min(c.writeBytes - VSOCK_HEADER_BYTES, conn.peerCredit, MAX_PACKET_PAYLOAD, conn.queued);
        if (room > 0) {
          let written = 0;
          while (written < room) {
            const chunk = conn.queue[0];
            const n = Math.min(room - written, chunk.length - conn.headOffset);
            c.write(VSOCK_HEADER_BYTES + written, chunk, conn.headOffset, n);
            written += n;
            conn.headOffset += n;
            if (conn.headOffset === chunk.length) {
              conn.queue.shift();
              conn.headOffset = 0;
            }
          }
          conn.queued -= written;
          conn.txCnt = (conn.txCnt + written) >>> 0;
          conn.sendCredit = false;
          if (conn.wantDrain && conn.queued < HOST_QUEUE_LIMIT) {
            conn.wantDrain = false;
            this.drains.push(conn);
          }
          return this.connHeader(c, conn, VSOCK_OP_RW, 0, written);
        }
      }
      if (conn.queued === 0 && conn.shutdownFlags !== 0 && !conn.shutdownSent) {
        conn.shutdownSent = true;
        conn.sendCredit = false;
        if (conn.shutdownFlags & VSOCK_SHUTDOWN_RCV) conn.state = "closing";
        return this.connHeader(c, conn, VSOCK_OP_SHUTDOWN, conn.shutdownFlags, 0);
      }
    }
    if (conn.sendCredit) {
      conn.sendCredit = false;
      return this.connHeader(c, conn, VSOCK_OP_CREDIT_UPDATE, 0, 0);
    }
    return -1;
  }

  private connHeader(c: DescriptorChain, conn: VsockConnection, op: number, flags: number, len: number): number {
    conn.reportedFwdCnt = conn.fwdCnt;
    return this.writeHeader(c, conn.hostPort, conn.guestPort, op, flags, len, conn.fwdCnt);
  }

  private writeHeader(
    c: DescriptorChain,
    hostPort: number,
    guestPort: number,
    op: number,
    flags: number,
    len: number,
    fwdCnt: number,
  ): number {
    const v = this.headerView;
    v.setUint32(0, VSOCK_HOST_CID, true);
    v.setUint32(4, 0, true);
    v.setUint32(8, this.guestCid, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, hostPort, true);
    v.setUint32(20, guestPort, true);
    v.setUint32(24, len, true);
    v.setUint16(28, VSOCK_TYPE_STREAM, true);
    v.setUint16(30, op, true);
    v.setUint32(32, flags, true);
    v.setUint32(36, op === VSOCK_OP_RST ? 0 : HOST_BUF_ALLOC, true);
    v.setUint32(40, fwdCnt, true);
    c.write(0, this.header, 0, VSOCK_HEADER_BYTES);
    return VSOCK_HEADER_BYTES + len;
  }

  private runDrains(): void {
    if (this.drains.length === 0 || this.drainScheduled) return;
    this.drainScheduled = true;
    // Later, not from inside a queue handler: a writer's drain handler writes again.
    queueMicrotask(() => {
      this.drainScheduled = false;
      const list = this.drains.splice(0);
      for (const conn of list) if (conn.state !== "closed") conn.handlers?.drain?.();
    });
  }

  private transmit(): void {
    const q = this.queues[TX];
    const c = this.txChain;
    let received = false;
    while (this.live && q.pop(c)) {
      this.receivePacket(c);
      q.push(c.head, 0);
      received = true;
    }
    this.complete(q);
    this.pumpNow();
    if (received) this.kick?.();
  }

  /** One packet from the guest. */
  private receivePacket(c: DescriptorChain): void {
    if (c.readBytes < VSOCK_HEADER_BYTES) return; // not even a header: nothing to answer
    c.read(0, this.header, 0, VSOCK_HEADER_BYTES);
    const v = this.headerView;
    const srcCidLo = v.getUint32(0, true);
    const srcCidHi = v.getUint32(4, true);
    const dstCidLo = v.getUint32(8, true);
    const dstCidHi = v.getUint32(12, true);
    const guestPort = v.getUint32(16, true);
    const hostPort = v.getUint32(20, true);
    const len = v.getUint32(24, true);
    const type = v.getUint16(28, true);
    const op = v.getUint16(30, true);
    const flags = v.getUint32(32, true);
    const bufAlloc = v.getUint32(36, true);
    const fwdCnt = v.getUint32(40, true);
    // Packets claiming another sender or another destination are dropped (no host peer exists).
    if (srcCidLo !== this.guestCid || srcCidHi !== 0 || dstCidLo !== VSOCK_HOST_CID || dstCidHi !== 0) return;
    const conn = this.find(hostPort, guestPort);
    if (op === VSOCK_OP_RST) {
      if (conn) {
        const refused = conn.state === "connecting";
        this.drop(
          conn,
          refused
            ? `nothing listens on guest vsock port ${guestPort} (the guest refused the connection)`
            : "the guest reset the connection",
          refused || conn.state !== "closing",
        );
      }
      return;
    }
    const malformed = type !== VSOCK_TYPE_STREAM || len > MAX_PACKET_PAYLOAD || len > c.readBytes - VSOCK_HEADER_BYTES;
    if (conn === undefined) {
      if (op === VSOCK_OP_REQUEST && !malformed) this.guestConnects(hostPort, guestPort, bufAlloc, fwdCnt);
      else this.orphanReset(hostPort, guestPort);
      return;
    }
    if (malformed) {
      this.log(
        `the guest sent a malformed packet on port ${guestPort} -> ${hostPort} (type ${type}, ${len} bytes); the connection is reset`,
      );
      this.hostReset(conn, "the guest sent a malformed packet");
      return;
    }
    const creditBefore = conn.peerCredit;
    conn.peerBufAlloc = bufAlloc;
    conn.peerFwdCnt = fwdCnt;
    if (conn.peerCredit > creditBefore && conn.hasWork) this.ready.add(conn);
    switch (op) {
      case VSOCK_OP_RESPONSE:
        if (conn.state !== "connecting") {
          this.hostReset(conn, "the guest answered a connection request nobody made");
          return;
        }
        conn.state = "open";
        if (conn.hasWork) this.ready.add(conn);
        conn.handlers?.open?.();
        return;
      case VSOCK_OP_RW: {
        if (conn.state !== "open" || conn.guestSendDone) {
          if (conn.state !== "closing") this.hostReset(conn, "the guest sent data on a connection not open for it");
          return;
        }
        if (len === 0) return;
        if (conn.unconsumed + len > HOST_BUF_ALLOC) {
          this.log(`the guest sent beyond its credit on port ${guestPort} -> ${hostPort}; the connection is reset`);
          this.hostReset(conn, "the guest sent more than the host's buffer takes");
          return;
        }
        const bytes = new Uint8Array(len);
        c.read(VSOCK_HEADER_BYTES, bytes, 0, len);
        conn.unconsumed += len;
        conn.handlers?.data(bytes);
        return;
      }
      case VSOCK_OP_SHUTDOWN:
        if (conn.state === "connecting" || conn.state === "accepting") {
          this.hostReset(conn, "the guest shut down a connection that was not open");
          return;
        }
        if (flags & VSOCK_SHUTDOWN_RCV && !conn.guestRcvDone) {
          conn.guestRcvDone = true;
          conn.queue.length = 0;
          conn.queued = 0;
          conn.headOffset = 0;
        }
        if (flags & VSOCK_SHUTDOWN_SEND && !conn.guestSendDone) {
          conn.guestSendDone = true;
          conn.handlers?.end();
        }
        if (conn.guestRcvDone && conn.guestSendDone) {
          // Both ways shut: the guest waits for our reset to free its socket.
          this.remove(conn);
          conn.sendRst = true;
          conn.state = "closed";
          this.ready.add(conn);
          const h = conn.handlers;
          conn.handlers = null;
          h?.close("the guest closed the connection", false);
        }
        return;
      case VSOCK_OP_CREDIT_UPDATE:
        return;
      case VSOCK_OP_CREDIT_REQUEST:
        conn.sendCredit = true;
        this.ready.add(conn);
        return;
      default:
        this.hostReset(conn, `the guest sent an unknown operation ${op}`);
    }
  }

  /** Resets `conn` because of the guest: RST to it, close(reason) to the host. */
  private hostReset(conn: VsockConnection, reason: string): void {
    this.drop(conn, reason, true);
    this.orphanReset(conn.hostPort, conn.guestPort);
  }

  private guestConnects(hostPort: number, guestPort: number, bufAlloc: number, fwdCnt: number): void {
    const listener = this.listener;
    if (listener === null || this.connectionCount >= MAX_CONNECTIONS) {
      this.orphanReset(hostPort, guestPort);
      return;
    }
    const conn = new VsockConnection(this, hostPort, guestPort, "accepting", null);
    conn.peerBufAlloc = bufAlloc;
    conn.peerFwdCnt = fwdCnt;
    this.add(conn);
    listener(conn);
  }

  private deliverResetEvent(): void {
    if (!this.resetEventPending || !this.queueLive(EVENT)) return;
    const q = this.queues[EVENT];
    const c = this.eventChain;
    if (!q.pop(c)) return;
    if (c.writeBytes < 4) throw new VirtqueueError(`event buffer of ${c.writeBytes} bytes is smaller than an event`);
    this.headerView.setUint32(0, VSOCK_EVENT_TRANSPORT_RESET, true);
    c.write(0, this.header, 0, 4);
    q.push(c.head, 4);
    this.resetEventPending = false;
    this.complete(q);
    this.kick?.();
  }

  protected override resetDevice(): void {
    this.closeAll("the guest's vsock driver reset the device");
    this.resetEventPending = false;
  }

  protected saveDevice(): VirtioVsockState {
    // Connections are not saved: if any is open, the restored guest must hear they are gone.
    return { guestCid: this.guestCid, resetEventPending: this.resetEventPending || this.connectionCount > 0 };
  }

  protected restoreDevice(state: VirtioVsockState): void {
    if (state.guestCid !== this.guestCid) {
      throw new Error(`the snapshot's guest CID is ${state.guestCid}, this device's ${this.guestCid}`);
    }
    this.closeAll("the VM was restored from a snapshot");
    // Sent by deliverPendingEvents() once the whole machine is loaded, so that restoring a saved
    // state and saving it again gives the same state.
    this.resetEventPending = state.resetEventPending === true;
  }

  /** Sends an owed TRANSPORT_RESET (after a restore) if the guest has an event buffer posted. */
  deliverPendingEvents(): void {
    try {
      this.deliverResetEvent();
    } catch (e) {
      this.guard(e);
    }
  }
}

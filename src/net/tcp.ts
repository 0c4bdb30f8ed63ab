/**
 * TCP NAT for user-mode networking: a small TCP endpoint that terminates the guest's connections
 * and splices each one to a host socket.
 *
 * Guest to host: a guest SYN to X:p opens net.connect(X:p) (10.0.2.2 is the host's 127.0.0.1); the
 * guest gets the SYN-ACK only once the host connect succeeded, and a RST when it failed. Host to
 * guest (port forwarding): an accepted host socket becomes our SYN to the guest's port.
 *
 * Flow control both ways: data from the host waits in a per-connection ring until the guest
 * acknowledges it, and the host socket is paused while the ring is full; data from the guest is
 * written to the host socket and our advertised window is what that socket has not yet flushed,
 * so neither direction buffers without bound. Data to the guest is retransmitted on timeout
 * (RFC 6298 timer, go-back-N), on three duplicate ACKs, and soon after the guest had no receive
 * buffer for it. A connection is forgotten as soon as both FINs are acknowledged: no TIME_WAIT.
 *
 * The per-segment path writes into the link's one frame buffer and allocates only the Buffer that
 * carries guest data to the host socket.
 */
import net from "node:net";
import type { Duplex } from "node:stream";
import {
  L4_OFF,
  PROTO_TCP,
  TCP_ACK,
  TCP_FIN,
  TCP_HLEN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  readTcpSynOptions,
  readU16,
  readU32,
  writeTcpHeader,
  writeTcpSynOptions,
  formatIpv4Address,
} from "./ip.js";
import { inGuestNetwork, type GuestLink } from "./link.js";

/** What a connection is spliced to: a host socket, or an in-process stream (see TcpIntercept). */
export type HostSocket = Duplex & { setNoDelay(noDelay?: boolean): unknown; resetAndDestroy(): unknown };

/**
 * Serves some guest connections in-process instead of through a host socket (the metadata
 * service): given the SYN's source and destination, answers the stream to splice the connection
 * to, or null to treat the connection as any other.
 */
export type TcpIntercept = (src: number, dst: number, dport: number) => HostSocket | null;

/** Largest segment we send or accept: an Ethernet MTU of 1500 minus IPv4 and TCP headers. */
export const TCP_MSS = 1460;
const DEFAULT_MSS = 536;
/** Guest-to-host bytes accepted but not yet flushed by the host socket: our receive window. */
const RCV_BUF = 256 * 1024;
const RCV_SHIFT = 3;
/** Host-to-guest bytes buffered (unacknowledged or unsent) before the host socket is paused. */
const SND_HIGH = 256 * 1024;
const SND_LOW = 64 * 1024;
const SND_MIN_CAP = 16 * 1024;
const RTO_INIT = 1000;
const RTO_MIN = 200;
const RTO_MAX = 30_000;
const DATA_RETRIES = 12;
const SYN_RETRIES = 5;
/** Port forwards keep knocking for a guest that is still booting: every 2 s for about half a minute. */
const FORWARD_SYN_RETRIES = 16;
const FORWARD_SYN_RTO_MAX = 2000;
const PERSIST_MAX = 5000;
/** Retry delay after the guest had no receive buffer for a frame. */
const RETRY_MS = 10;
const MAX_CONNECTIONS = 1024;
const FORWARD_PORT_FIRST = 49152;

const CONNECTING = 0; // guest SYN received, host connect in progress
const SYN_RECEIVED = 1; // SYN-ACK sent to the guest
const SYN_SENT = 2; // port forward: our SYN sent to the guest
const ESTABLISHED = 3; // data both ways; half-closes tracked by hostEnded/finSent/guestFin
const CLOSED = 4;

class Conn {
  state = CONNECTING;
  /** Next connection in the same lookup bucket (same remote IP and guest port). */
  next: Conn | null = null;
  socket: HostSocket | null = null;

  // Sequence space towards the guest. Ring byte i holds sequence number sndUna + i.
  iss = 0;
  sndUna = 0;
  sndNxt = 0;
  sndMax = 0;
  sndWnd = 0;
  sndShift = 0;
  mss = DEFAULT_MSS;
  ring: Buffer | null = null;
  ringStart = 0;
  ringLen = 0;
  paused = false;
  hostEnded = false;
  finSent = false;
  finAcked = false;
  /** Our FIN has been sent at least once, so finSeq is its sequence number. */
  finQueued = false;
  finSeq = 0;
  dupAcks = 0;

  // Sequence space from the guest.
  rcvNxt = 0;
  rcvShift = 0;
  /** Right edge of the window last advertised; it never moves left. */
  rcvEdge = 0;
  guestFin = false;
  unackedSegments = 0;
  ackPending = false;

  // Timers: one Node timer per connection, armed for the earliest of these deadlines (0 = none).
  rto = RTO_INIT;
  /** The RTO from the RTT estimate, before any backoff. */
  rtoBase = RTO_INIT;
  /** Loss recovery after a fast retransmit lasts until everything sent before it (recover) is acked. */
  inRecovery = false;
  recover = 0;
  /** A fast retransmission the guest had no room for; retried with the next timer. */
  retransmitPending = false;
  rtoAt = 0;
  retries = 0;
  persistAt = 0;
  persistBackoff = 0;
  retryAt = 0;
  timer: NodeJS.Timeout | null = null;
  timerAt = 0;
  srtt = 0;
  rttvar = 0;
  timing = false;
  timedSeq = 0;
  timedAt = 0;

  constructor(
    readonly remoteIp: number,
    readonly remotePort: number,
    readonly guestPort: number,
  ) {}
}

function seqLt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

function randomIss(): number {
  return (Math.random() * 0x1_0000_0000) >>> 0;
}

export interface TcpNatStats {
  connections: number;
  /** Bytes held for connections: host-to-guest ring contents plus guest-to-host bytes the host socket has not flushed. */
  bufferedBytes: number;
}

export class TcpNat {
  private readonly buckets = new Map<number, Conn>();
  private count = 0;
  private readonly ackQueue: Conn[] = [];
  private ackFlushScheduled = false;
  private nextForwardPort = FORWARD_PORT_FIRST;
  private closed = false;
  private readonly onTimerBound = (c: Conn) => this.onTimer(c);
  private readonly flushAcksBound = () => this.flushAcks();

  /** `dnsTarget` is where the guest's TCP to 10.0.2.3:53 goes (the first nameserver), if anywhere. */
  constructor(
    private readonly link: GuestLink,
    private readonly dnsTarget: () => { address: string; port: number } | undefined,
    private readonly intercept: TcpIntercept | null = null,
  ) {}

  stats(): TcpNatStats {
    let buffered = 0;
    for (const head of this.buckets.values()) {
      for (let c: Conn | null = head; c; c = c.next) buffered += c.ringLen + (c.socket ? c.socket.writableLength : 0);
    }
    return { connections: this.count, bufferedBytes: buffered };
  }

  /** A TCP segment from the guest's `src` to `dst`: frame[l4, end) is the TCP header and payload. */
  input(frame: Uint8Array, l4: number, end: number, dst: number, src = this.link.guestIp): void {
    if (this.closed || end - l4 < TCP_HLEN) return;
    const hlen = (frame[l4 + 12] >>> 4) << 2;
    if (hlen < TCP_HLEN || l4 + hlen > end) return;
    const sport = readU16(frame, l4);
    const dport = readU16(frame, l4 + 2);
    const seq = readU32(frame, l4 + 4);
    const ack = readU32(frame, l4 + 8);
    const flags = frame[l4 + 13];
    const window = readU16(frame, l4 + 14);
    const dataOff = l4 + hlen;
    const len = end - dataOff;

    const c = this.find(dst, dport, sport);
    if (!c) {
      if (flags & TCP_RST) return;
      if ((flags & (TCP_SYN | TCP_ACK | TCP_FIN)) === TCP_SYN) {
        this.openFromGuest(src, dst, dport, sport, seq, window, frame, l4 + TCP_HLEN, dataOff);
      } else {
        this.resetUnknown(dst, dport, sport, seq, ack, flags, len);
      }
      return;
    }

    if (flags & TCP_RST) {
      if (c.state === SYN_SENT && (!(flags & TCP_ACK) || ack !== (c.iss + 1) >>> 0)) return;
      this.destroy(c, true);
      return;
    }

    if (c.state === SYN_SENT) {
      if ((flags & (TCP_SYN | TCP_ACK)) !== (TCP_SYN | TCP_ACK)) return;
      if (ack !== (c.iss + 1) >>> 0) {
        this.resetUnknown(dst, dport, sport, seq, ack, flags, len);
        return;
      }
      const opts = readTcpSynOptions(frame, l4 + TCP_HLEN, dataOff);
      c.mss = Math.min(TCP_MSS, opts.mss > 0 ? opts.mss : DEFAULT_MSS);
      if (opts.wscale >= 0) c.sndShift = opts.wscale;
      else c.rcvShift = 0;
      c.rcvNxt = (seq + 1) >>> 0;
      c.sndUna = c.sndNxt = c.sndMax = (c.iss + 1) >>> 0;
      c.sndWnd = window;
      this.handshakeDone(c);
      this.sendAck(c);
      c.socket?.resume();
      this.output(c);
      return;
    }

    if (flags & TCP_SYN) {
      // A retransmitted SYN (our SYN-ACK was lost) or a stray one: answer with what we have.
      if (c.state === SYN_RECEIVED) this.sendSyn(c);
      else if (c.state === ESTABLISHED) this.sendAck(c);
      return;
    }
    if (!(flags & TCP_ACK) || c.state === CONNECTING) return;

    if (c.state === SYN_RECEIVED) {
      if (ack !== (c.iss + 1) >>> 0) {
        this.resetUnknown(dst, dport, sport, seq, ack, flags, len);
        return;
      }
      c.sndUna = c.sndNxt = c.sndMax = ack;
      c.sndWnd = window << c.sndShift;
      this.handshakeDone(c);
    }

    if (!this.processAck(c, ack, window, len === 0 && !(flags & TCP_FIN))) return;
    if (len > 0 || flags & TCP_FIN) this.processData(c, frame, dataOff, len, seq, (flags & TCP_FIN) !== 0);
    if (c.state === CLOSED) return;
    if (c.retryAt !== 0) {
      // The guest is processing frames again: what it had no room for can go now.
      c.retryAt = 0;
      if (c.retransmitPending) this.fastRetransmit(c);
      if (c.ackPending && c.retryAt === 0) this.sendAck(c);
    }
    this.output(c);
    this.maybeFinished(c);
  }

  private handshakeDone(c: Conn): void {
    if (c.timing) {
      c.timing = false;
      this.rttSample(c, Date.now() - c.timedAt); // the SYN was not retransmitted (Karn)
    }
    c.rtoAt = 0;
    c.retries = 0;
    c.rto = c.rtoBase;
    c.state = ESTABLISHED;
  }

  /** Port forwarding: `socket` was accepted on the host (paused); connect it to the guest's port. */
  acceptForward(socket: net.Socket, guestPort: number): void {
    if (this.closed || this.count >= MAX_CONNECTIONS) {
      socket.destroy();
      return;
    }
    let port = this.nextForwardPort;
    const gateway = this.link.addresses.gateway;
    for (let i = 0; this.find(gateway, port, guestPort) && i < 65536; i++) {
      port = port >= 65535 ? FORWARD_PORT_FIRST : port + 1;
    }
    this.nextForwardPort = port >= 65535 ? FORWARD_PORT_FIRST : port + 1;
    const c = new Conn(gateway, port, guestPort);
    c.state = SYN_SENT;
    c.iss = randomIss();
    c.sndUna = c.iss;
    c.sndNxt = c.sndMax = (c.iss + 1) >>> 0;
    c.rcvShift = RCV_SHIFT;
    this.insert(c);
    socket.setNoDelay(true);
    this.attachSocket(c, socket);
    this.sendSyn(c);
    this.armRto(c, Date.now());
  }

  /** The guest just became reachable: send the SYNs of port forwards that were waiting for it. */
  guestReady(): void {
    for (const head of this.buckets.values()) {
      for (let c: Conn | null = head; c; c = c.next) if (c.state === SYN_SENT) this.sendSyn(c);
    }
  }

  close(): void {
    this.closed = true;
    for (const head of [...this.buckets.values()]) {
      for (let c: Conn | null = head; c; c = c.next) {
        if (c.timer) clearTimeout(c.timer);
        c.timer = null;
        c.state = CLOSED;
        c.socket?.destroy();
        c.socket = null;
      }
    }
    this.buckets.clear();
    this.count = 0;
  }

  // ---- connection table: bucket key is remote IP and guest port, chained by remote port ----

  private find(remoteIp: number, remotePort: number, guestPort: number): Conn | null {
    for (let c = this.buckets.get(remoteIp * 65536 + guestPort) ?? null; c; c = c.next) {
      if (c.remotePort === remotePort) return c;
    }
    return null;
  }

  private insert(c: Conn): void {
    const key = c.remoteIp * 65536 + c.guestPort;
    c.next = this.buckets.get(key) ?? null;
    this.buckets.set(key, c);
    this.count++;
  }

  private remove(c: Conn): void {
    const key = c.remoteIp * 65536 + c.guestPort;
    let prev: Conn | null = null;
    for (let x = this.buckets.get(key) ?? null; x; prev = x, x = x.next) {
      if (x !== c) continue;
      if (prev) prev.next = x.next;
      else if (x.next) this.buckets.set(key, x.next);
      else this.buckets.delete(key);
      this.count--;
      break;
    }
    c.next = null;
    c.state = CLOSED;
    if (c.timer) clearTimeout(c.timer);
    c.timer = null;
  }

  // ---- opening ----

  private openFromGuest(
    src: number,
    dst: number,
    dport: number,
    sport: number,
    seq: number,
    window: number,
    frame: Uint8Array,
    optStart: number,
    optEnd: number,
  ): void {
    const local = this.intercept?.(src, dst, dport) ?? null;
    let host = "";
    let port = dport;
    const a = this.link.addresses;
    if (local) {
      if (this.count >= MAX_CONNECTIONS) {
        local.destroy();
        return this.resetUnknown(dst, dport, sport, seq, 0, TCP_SYN, 0);
      }
    } else if (dst === a.gateway) host = "127.0.0.1";
    else if (dst === a.dns) {
      const dns = dport === 53 ? this.dnsTarget() : undefined;
      if (!dns) return this.resetUnknown(dst, dport, sport, seq, 0, TCP_SYN, 0);
      host = dns.address;
      port = dns.port;
    } else if (inGuestNetwork(dst, a)) {
      return this.resetUnknown(dst, dport, sport, seq, 0, TCP_SYN, 0);
    } else if (dst >>> 16 === 0xa9fe) {
      // Link-local (169.254.0.0/16): the host's own metadata service, if it runs in a cloud, is not the guest's.
      return this.resetUnknown(dst, dport, sport, seq, 0, TCP_SYN, 0);
    } else if (dst === 0 || dst >>> 28 >= 14 || dst >>> 24 === 127 || dst === 0xffffffff) {
      return; // unspecified, multicast, reserved, loopback: nothing to connect to
    } else host = formatIpv4Address(dst);
    if (this.count >= MAX_CONNECTIONS) return this.resetUnknown(dst, dport, sport, seq, 0, TCP_SYN, 0);

    const c = new Conn(dst, dport, sport);
    const opts = readTcpSynOptions(frame, optStart, optEnd);
    c.mss = Math.min(TCP_MSS, opts.mss > 0 ? opts.mss : DEFAULT_MSS);
    if (opts.wscale >= 0) {
      c.sndShift = opts.wscale;
      c.rcvShift = RCV_SHIFT;
    }
    c.sndWnd = window;
    c.rcvNxt = (seq + 1) >>> 0;
    this.insert(c);
    const socket: HostSocket = local ?? net.connect({ host, port, allowHalfOpen: true });
    const connected = (): void => {
      if (c.state !== CONNECTING) return;
      socket.setNoDelay(true);
      c.state = SYN_RECEIVED;
      c.iss = randomIss();
      c.sndUna = c.iss;
      c.sndNxt = c.sndMax = (c.iss + 1) >>> 0;
      this.sendSyn(c);
      this.armRto(c, Date.now());
    };
    this.attachSocket(c, socket);
    if (local) connected();
    else socket.once("connect", connected);
  }

  private attachSocket(c: Conn, socket: HostSocket): void {
    c.socket = socket;
    socket.on("data", (data: Buffer) => this.onHostData(c, data));
    socket.on("end", () => {
      if (c.state === CLOSED) return;
      c.hostEnded = true;
      this.output(c);
    });
    socket.on("drain", () => {
      if (c.state === ESTABLISHED && !c.guestFin && ((c.rcvEdge - c.rcvNxt) | 0) < RCV_BUF / 2) this.sendAck(c);
    });
    socket.on("error", () => {
      if (c.state === CLOSED) return;
      if (c.state === CONNECTING) {
        // Connection refused or unreachable: the guest's connect fails with a reset.
        this.emitTcp(c.remoteIp, c.remotePort, c.guestPort, 0, c.rcvNxt, TCP_RST | TCP_ACK, 0, 0, 0);
        this.remove(c);
        c.socket = null;
        return;
      }
      this.destroy(c, false);
    });
    socket.on("close", () => {
      if (c.state === CLOSED) return;
      if (c.hostEnded && c.guestFin) {
        c.socket = null; // both directions closed on the host; waiting for the guest to ack our FIN
        return;
      }
      this.destroy(c, false);
    });
  }

  private onHostData(c: Conn, data: Buffer): void {
    if (c.state === CLOSED) return;
    const n = data.length;
    const need = c.ringLen + n;
    let ring = c.ring;
    if (!ring || ring.length < need) {
      let cap = ring ? ring.length : SND_MIN_CAP;
      while (cap < need) cap *= 2;
      const grown = Buffer.allocUnsafe(cap);
      if (ring) this.copyFromRing(c, 0, c.ringLen, grown, 0);
      c.ring = ring = grown;
      c.ringStart = 0;
    }
    const cap = ring.length;
    const pos = (c.ringStart + c.ringLen) % cap;
    const first = Math.min(n, cap - pos);
    data.copy(ring, pos, 0, first);
    if (first < n) data.copy(ring, 0, first, n);
    c.ringLen = need;
    if (c.ringLen >= SND_HIGH && !c.paused) {
      c.paused = true;
      c.socket?.pause();
    }
    this.output(c);
  }

  private copyFromRing(c: Conn, offset: number, len: number, dst: Buffer, dstOff: number): void {
    const ring = c.ring!;
    const cap = ring.length;
    const pos = (c.ringStart + offset) % cap;
    const first = Math.min(len, cap - pos);
    ring.copy(dst, dstOff, pos, pos + first);
    if (first < len) ring.copy(dst, dstOff + first, 0, len - first);
  }

  // ---- receiving from the guest ----

  /** Returns false when the segment is unacceptable and must be dropped. */
  private processAck(c: Conn, ack: number, window: number, pureAck: boolean): boolean {
    const acked = (ack - c.sndUna) | 0;
    if (((ack - c.sndMax) | 0) > 0) {
      this.sendAck(c); // acknowledges data we never sent
      return false;
    }
    const oldWnd = c.sndWnd;
    if (acked < 0) return true; // an old acknowledgment; the data may still be new
    c.sndWnd = window << c.sndShift;
    c.retries = 0; // the guest is alive
    const now = Date.now();
    if (acked > 0) {
      let data = acked;
      if (c.finQueued && ack === (c.finSeq + 1) >>> 0 && !c.finAcked) {
        c.finAcked = true;
        data--;
      }
      if (data > 0) {
        c.ringLen -= data;
        c.ringStart = c.ringLen === 0 ? 0 : (c.ringStart + data) % c.ring!.length;
      }
      c.sndUna = ack;
      if (seqLt(c.sndNxt, ack)) c.sndNxt = ack;
      if (c.finAcked) c.finSent = true;
      c.dupAcks = 0;
      c.rto = c.rtoBase; // progress ends any backoff
      if (c.timing && !seqLt(ack, c.timedSeq)) {
        c.timing = false;
        this.rttSample(c, now - c.timedAt);
      }
      if (c.inRecovery) {
        // A partial acknowledgment uncovers the next hole: resend it now (NewReno).
        if (seqLt(ack, c.recover) && c.sndNxt === c.sndMax) this.fastRetransmit(c);
        else c.inRecovery = false;
      }
      if (c.sndUna === c.sndMax) c.rtoAt = 0;
      else {
        c.rtoAt = now + c.rto;
        this.schedule(c);
      }
      if (c.paused && c.ringLen <= SND_LOW) {
        c.paused = false;
        c.socket?.resume();
      }
    } else if (pureAck && c.sndWnd === oldWnd && c.sndUna !== c.sndMax) {
      if (++c.dupAcks === 3 && !c.inRecovery) {
        c.inRecovery = true;
        c.recover = c.sndMax;
        this.fastRetransmit(c);
      }
    }
    if (c.sndWnd > 0) {
      c.persistAt = 0;
      c.persistBackoff = 0;
    }
    return true;
  }

  private processData(c: Conn, frame: Uint8Array, dataOff: number, len: number, seq: number, fin: boolean): void {
    if (c.guestFin) {
      this.sendAck(c);
      return;
    }
    const skip = (c.rcvNxt - seq) | 0;
    if (skip < 0 || skip > len || (skip === len && !fin)) {
      this.sendAck(c); // out of order or an old duplicate: tell the guest where we are
      return;
    }
    let n = len - skip;
    const room = (c.rcvEdge - c.rcvNxt) | 0;
    let finOk = fin;
    if (n > room) {
      n = room > 0 ? room : 0;
      finOk = false;
    }
    if (n > 0) {
      // Written at once (measured: gathering a burst with cork() was slower, as the window then shrank).
      c.socket?.write(Buffer.copyBytesFrom(frame, dataOff + skip, n));
      c.rcvNxt = (c.rcvNxt + n) >>> 0;
    }
    if (finOk) {
      c.rcvNxt = (c.rcvNxt + 1) >>> 0;
      c.guestFin = true;
      c.socket?.end();
    }
    if (finOk || n < len - skip || skip > 0 || ++c.unackedSegments >= 2) this.sendAck(c);
    else this.queueAck(c);
  }

  private maybeFinished(c: Conn): void {
    if (c.state !== ESTABLISHED || !c.guestFin || !c.finAcked) return;
    this.remove(c);
    if (c.ackPending) this.sendAck(c);
    c.socket = null; // ended both ways: Node closes it once its writes are flushed
  }

  /** Ends a connection abnormally: RST to the guest unless it sent one, reset the host side. */
  private destroy(c: Conn, fromGuest: boolean): void {
    if (!fromGuest && c.state !== CONNECTING) {
      this.emitTcp(c.remoteIp, c.remotePort, c.guestPort, c.sndNxt, c.rcvNxt, TCP_RST | TCP_ACK, 0, 0, 0);
    }
    this.remove(c);
    const s = c.socket;
    c.socket = null;
    if (s && !s.destroyed) s.resetAndDestroy();
  }

  // ---- sending to the guest ----

  /** Sends what the window allows, then our FIN once the host has ended and everything is out. */
  private output(c: Conn): void {
    if (c.state !== ESTABLISHED || c.retryAt !== 0) return;
    const now = Date.now();
    while (!c.finSent) {
      const inFlight = (c.sndNxt - c.sndUna) | 0;
      const unsent = c.ringLen - inFlight;
      if (unsent > 0) {
        const room = (c.sndUna + c.sndWnd - c.sndNxt) | 0;
        if (room <= 0) {
          if (inFlight === 0 && c.persistAt === 0) {
            c.persistBackoff = Math.max(c.rto, RTO_MIN);
            c.persistAt = now + c.persistBackoff;
            this.schedule(c);
          }
          return;
        }
        let n = unsent < room ? unsent : room;
        if (n > c.mss) n = c.mss;
        // Avoid silly windows: wait for room for a whole segment while data is in flight.
        if (n < c.mss && n < unsent && inFlight > 0) return;
        const fin = c.hostEnded && n === unsent;
        if (!this.sendData(c, c.sndNxt, inFlight, n, fin)) {
          this.retryLater(c, now);
          return;
        }
        if (!c.timing && c.sndNxt === c.sndMax) {
          c.timing = true;
          c.timedSeq = (c.sndNxt + n) >>> 0;
          c.timedAt = now;
        }
        c.sndNxt = (c.sndNxt + n) >>> 0;
        if (fin) {
          c.finQueued = true;
          c.finSeq = c.sndNxt;
          c.sndNxt = (c.sndNxt + 1) >>> 0;
          c.finSent = true;
        }
      } else if (c.hostEnded) {
        if (!this.sendData(c, c.sndNxt, inFlight, 0, true)) {
          this.retryLater(c, now);
          return;
        }
        c.finQueued = true;
        c.finSeq = c.sndNxt;
        c.sndNxt = (c.sndNxt + 1) >>> 0;
        c.finSent = true;
      } else return;
      if (seqLt(c.sndMax, c.sndNxt)) c.sndMax = c.sndNxt;
      if (c.rtoAt === 0) this.armRto(c, now);
    }
  }

  /** One segment of `len` ring bytes starting `offset` bytes after sndUna, at sequence `seq`. */
  private sendData(c: Conn, seq: number, offset: number, len: number, fin: boolean): boolean {
    const tx = this.link.tx;
    if (len > 0) this.copyFromRing(c, offset, len, tx, L4_OFF + TCP_HLEN);
    let flags = TCP_ACK;
    if (fin) flags |= TCP_FIN;
    if (len > 0 && offset + len === c.ringLen) flags |= TCP_PSH;
    const ok = this.emitTcp(c.remoteIp, c.remotePort, c.guestPort, seq, c.rcvNxt, flags, this.window(c), 0, len);
    if (ok) {
      c.ackPending = false;
      c.unackedSegments = 0;
    }
    return ok;
  }

  private fastRetransmit(c: Conn): void {
    const inFlightData = Math.min(c.ringLen, (c.sndNxt - c.sndUna) | 0);
    const n = Math.min(c.mss, inFlightData);
    const fin = c.finSent && !c.finAcked && n === c.ringLen;
    if (n === 0 && !fin) return;
    c.timing = false;
    c.retransmitPending = !this.sendData(c, c.sndUna, 0, n, fin);
    if (c.retransmitPending) this.retryLater(c, Date.now());
  }

  private sendSyn(c: Conn): void {
    const tx = this.link.tx;
    const optLen = writeTcpSynOptions(tx, L4_OFF + TCP_HLEN, TCP_MSS, c.rcvShift > 0 ? c.rcvShift : -1);
    const wnd = Math.min(0xffff, RCV_BUF);
    c.rcvEdge = (c.rcvNxt + wnd) >>> 0;
    const flags = c.state === SYN_SENT ? TCP_SYN : TCP_SYN | TCP_ACK;
    const ok = this.emitTcp(c.remoteIp, c.remotePort, c.guestPort, c.iss, c.rcvNxt, flags, wnd, optLen, 0);
    if (!ok) this.retryLater(c, Date.now());
    // Time the handshake unless this is a retransmission (Karn's algorithm).
    c.timing = ok && c.retries === 0 && c.retryAt === 0;
    c.timedAt = Date.now();
  }

  private sendAck(c: Conn): void {
    const ok = this.emitTcp(c.remoteIp, c.remotePort, c.guestPort, c.sndNxt, c.rcvNxt, TCP_ACK, this.window(c), 0, 0);
    c.unackedSegments = 0;
    c.ackPending = !ok;
    if (!ok) this.retryLater(c, Date.now());
  }

  private queueAck(c: Conn): void {
    if (c.ackPending) return;
    c.ackPending = true;
    this.ackQueue.push(c);
    if (!this.ackFlushScheduled) {
      this.ackFlushScheduled = true;
      setImmediate(this.flushAcksBound);
    }
  }

  private flushAcks(): void {
    this.ackFlushScheduled = false;
    const q = this.ackQueue;
    for (let i = 0; i < q.length; i++) {
      const c = q[i];
      if (c.ackPending && c.state !== CLOSED) this.sendAck(c);
    }
    q.length = 0;
  }

  /** The window field for our next segment: what the host socket has room for, never shrinking the edge. */
  private window(c: Conn): number {
    let avail = RCV_BUF - (c.socket ? c.socket.writableLength : 0);
    if (avail < 0) avail = 0;
    const promised = (c.rcvEdge - c.rcvNxt) | 0;
    if (avail < promised) avail = promised;
    let field = avail >>> c.rcvShift;
    if (field > 0xffff) field = 0xffff;
    c.rcvEdge = (c.rcvNxt + (field << c.rcvShift)) >>> 0;
    return field;
  }

  private emitTcp(
    remoteIp: number,
    remotePort: number,
    guestPort: number,
    seq: number,
    ack: number,
    flags: number,
    window: number,
    optLen: number,
    payloadLen: number,
  ): boolean {
    const guestIp = this.link.guestIp;
    const tx = this.link.tx;
    writeTcpHeader(tx, L4_OFF, remoteIp, guestIp, remotePort, guestPort, seq, ack, flags, window, optLen, payloadLen);
    return this.link.emitIpv4(PROTO_TCP, remoteIp, guestIp, TCP_HLEN + optLen + payloadLen);
  }

  /** RST for a segment that belongs to no connection (RFC 793's reset generation). */
  private resetUnknown(
    remoteIp: number,
    remotePort: number,
    guestPort: number,
    seq: number,
    ack: number,
    flags: number,
    len: number,
  ): void {
    if (flags & TCP_ACK) this.emitTcp(remoteIp, remotePort, guestPort, ack, 0, TCP_RST, 0, 0, 0);
    else {
      const end = seq + len + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0);
      this.emitTcp(remoteIp, remotePort, guestPort, 0, end >>> 0, TCP_RST | TCP_ACK, 0, 0, 0);
    }
  }

  // ---- timers ----

  private rttSample(c: Conn, r: number): void {
    if (c.srtt === 0) {
      c.srtt = r || 1;
      c.rttvar = r / 2;
    } else {
      c.rttvar = 0.75 * c.rttvar + 0.25 * Math.abs(c.srtt - r);
      c.srtt = 0.875 * c.srtt + 0.125 * r;
    }
    c.rto = c.rtoBase = Math.min(RTO_MAX, Math.max(RTO_MIN, Math.ceil(c.srtt + Math.max(1, 4 * c.rttvar))));
  }

  private armRto(c: Conn, now: number): void {
    c.rtoAt = now + c.rto;
    this.schedule(c);
  }

  /** After the guest refused a frame: try again soon. Without a guest to talk to, the RTO timer paces retries. */
  private retryLater(c: Conn, now: number): void {
    if (c.retryAt === 0 && this.link.ready) {
      c.retryAt = now + RETRY_MS;
      this.schedule(c);
    }
  }

  private schedule(c: Conn): void {
    let at = Infinity;
    if (c.rtoAt !== 0) at = c.rtoAt;
    if (c.persistAt !== 0 && c.persistAt < at) at = c.persistAt;
    if (c.retryAt !== 0 && c.retryAt < at) at = c.retryAt;
    if (at === Infinity || (c.timer && c.timerAt <= at)) return;
    if (c.timer) clearTimeout(c.timer);
    c.timerAt = at;
    c.timer = setTimeout(this.onTimerBound, Math.max(1, at - Date.now()), c);
    c.timer.unref();
  }

  private onTimer(c: Conn): void {
    c.timer = null;
    if (c.state === CLOSED) return;
    const now = Date.now();
    if (c.retryAt !== 0 && now >= c.retryAt) {
      c.retryAt = 0;
      if (c.state === SYN_RECEIVED || c.state === SYN_SENT) this.sendSyn(c);
      else if (c.state === ESTABLISHED) {
        if (c.retransmitPending) this.fastRetransmit(c);
        if (c.ackPending) this.sendAck(c);
        this.output(c);
      }
    }
    if (c.rtoAt !== 0 && now >= c.rtoAt) {
      c.rtoAt = 0;
      this.onRto(c, now);
      if (c.state === CLOSED) return;
    }
    if (c.persistAt !== 0 && now >= c.persistAt) {
      // Zero-window probe: an out-of-window ACK makes the guest answer with its current window.
      this.emitTcp(
        c.remoteIp,
        c.remotePort,
        c.guestPort,
        (c.sndUna - 1) >>> 0,
        c.rcvNxt,
        TCP_ACK,
        this.window(c),
        0,
        0,
      );
      c.persistBackoff = Math.min(PERSIST_MAX, c.persistBackoff * 2);
      c.persistAt = now + c.persistBackoff;
    }
    this.schedule(c);
  }

  private onRto(c: Conn, now: number): void {
    c.retries++;
    c.rto = Math.min(RTO_MAX, c.rto * 2);
    c.timing = false;
    if (c.state === SYN_SENT) c.rto = Math.min(c.rto, FORWARD_SYN_RTO_MAX);
    if (c.state === SYN_RECEIVED || c.state === SYN_SENT) {
      if (c.retries > (c.state === SYN_SENT ? FORWARD_SYN_RETRIES : SYN_RETRIES)) return this.destroy(c, false);
      this.sendSyn(c);
      this.armRto(c, now);
      return;
    }
    if (c.state !== ESTABLISHED || c.sndUna === c.sndMax) return;
    if (c.retries > DATA_RETRIES) return this.destroy(c, false);
    // Go back to the first unacknowledged byte and send again from there.
    c.inRecovery = false;
    c.sndNxt = c.sndUna;
    if (!c.finAcked) c.finSent = false;
    c.retryAt = 0;
    this.output(c);
    if (c.rtoAt === 0 && c.sndUna !== c.sndMax) this.armRto(c, now);
  }
}

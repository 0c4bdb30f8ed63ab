/**
 * A minimal guest-side network stack driven by frames, for tests and benchmarks of the backends:
 * it plays the guest behind a NetBackend the way a VM's kernel would (DHCP, ARP, ping, UDP, and a
 * small TCP with windows, retransmission and half-close), without a VM.
 *
 * Frames from the backend are copied and handled on a later turn of the event loop, as a guest
 * would after its device interrupt; `dropEvery`/`loseEvery` simulate a full receive queue.
 */
import type { NetBackend } from "../devices/netdev.js";
import {
  dhcpAddressOption,
  buildDhcp,
  DHCP_ACK,
  DHCP_CLIENT_PORT,
  DHCP_DISCOVER,
  DHCP_OFFER,
  DHCP_REQUEST,
  DHCP_SERVER_PORT,
  ipOption,
  OPT_DNS,
  OPT_LEASE_TIME,
  OPT_REQUESTED_IP,
  OPT_ROUTER,
  OPT_SERVER_ID,
  OPT_SUBNET_MASK,
  parseDhcp,
  type DhcpMessage,
} from "./dhcp.js";
import {
  ARP_REPLY,
  ARP_REQUEST,
  BROADCAST_MAC,
  buildArp,
  copyBytes,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  parseArp,
  parseMac,
  writeEthernet,
} from "./ethernet.js";
import {
  buildIcmpEchoFrame,
  buildTcpFrame,
  buildUdpFrame,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  IP_OFF,
  L4_OFF,
  parseIcmp,
  parseIpv4,
  parseUdp,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  readTcpSynOptions,
  readU16,
  readU32,
  TCP_ACK,
  TCP_FIN,
  TCP_HLEN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  writeIpv4Header,
  writeTcpHeader,
  writeTcpSynOptions,
  type Ipv4Header,
} from "./ip.js";

export interface GuestStackOptions {
  /** Default 52:54:00:12:34:56. */
  mac?: string;
  /** IPv4 address before DHCP (default 0.0.0.0). */
  ip?: number;
  /** Gateway for addresses outside the subnet (found by ARP). Default 10.0.2.2. */
  gateway?: number;
  /** Refuse every Nth frame (deliver returns false), like a guest with no free receive buffer. */
  dropEvery?: number;
  /** Silently lose every Nth frame (deliver returns true). */
  loseEvery?: number;
  /** How long to wait for ARP replies (default 3000 ms). */
  arpTimeoutMs?: number;
  /** TCP receive buffer per connection (default 256 KiB). */
  tcpReceiveBuffer?: number;
}

interface Waiter {
  match: (frame: Uint8Array, ip: Ipv4Header | null) => unknown;
  resolve: (v: unknown) => void;
}

const GUEST_WSCALE = 4;
const GUEST_MSS = 1460;
const RTO_MS = 250;

export class GuestStack {
  readonly mac: Uint8Array;
  ip: number;
  gateway: number;
  private gatewayMac: Uint8Array | null = null;
  private readonly queue: Uint8Array[] = [];
  private scheduled = false;
  private waiters: Waiter[] = [];
  private readonly conns = new Map<string, GuestTcpConnection>();
  private readonly listeners = new Map<number, (c: GuestTcpConnection) => void>();
  private nextPort = 40000;
  private frames = 0;
  private ipId = 1;
  /** @internal */
  readonly tx = new Uint8Array(65600);
  /** @internal */
  readonly rcvBuffer: number;
  closed = false;

  constructor(
    private readonly backend: NetBackend,
    private readonly options: GuestStackOptions = {},
  ) {
    this.mac = parseMac(options.mac ?? "52:54:00:12:34:56");
    this.ip = options.ip ?? 0;
    this.gateway = options.gateway ?? 0x0a000202;
    this.rcvBuffer = options.tcpReceiveBuffer ?? 256 * 1024;
    backend.attach((frame) => this.receive(frame));
  }

  close(): void {
    this.closed = true;
    for (const c of this.conns.values()) c.stopTimer();
    this.conns.clear();
  }

  sendFrame(frame: Uint8Array): void {
    if (!this.closed) this.backend.send(frame);
  }

  /** Waits for a frame `match` returns a value (not undefined) for. */
  expect<T>(
    match: (frame: Uint8Array, ip: Ipv4Header | null) => T | undefined,
    timeoutMs = 3000,
    what = "a reply",
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const w: Waiter = {
        match,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`guest: timed out waiting for ${what}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** DISCOVER, OFFER, REQUEST, ACK; configures `ip` and returns the ACK. */
  async dhcp(): Promise<{
    address: number;
    mask?: number;
    router?: number;
    dns?: number;
    lease?: number;
    server?: number;
  }> {
    const xid = (Math.random() * 0xffffffff) >>> 0;
    const offerP = this.expectDhcp(xid, DHCP_OFFER);
    this.sendDhcp(buildDhcp({ op: "request", xid, chaddr: this.mac, type: DHCP_DISCOVER }));
    const offer = await offerP;
    const server = dhcpAddressOption(offer, OPT_SERVER_ID)!;
    const ackP = this.expectDhcp(xid, DHCP_ACK);
    this.sendDhcp(
      buildDhcp({
        op: "request",
        xid,
        chaddr: this.mac,
        type: DHCP_REQUEST,
        options: [
          [OPT_REQUESTED_IP, ipOption(offer.yiaddr)],
          [OPT_SERVER_ID, ipOption(server)],
        ],
      }),
    );
    const ack = await ackP;
    this.ip = ack.yiaddr;
    const lease = ack.options.get(OPT_LEASE_TIME);
    return {
      address: ack.yiaddr,
      mask: dhcpAddressOption(ack, OPT_SUBNET_MASK),
      router: dhcpAddressOption(ack, OPT_ROUTER),
      dns: dhcpAddressOption(ack, OPT_DNS),
      lease: lease ? readU32(lease, 0) : undefined,
      server: dhcpAddressOption(ack, OPT_SERVER_ID),
    };
  }

  /** Sends a DHCP message from 0.0.0.0:68 to broadcast:67. */
  sendDhcp(payload: Uint8Array): void {
    this.sendFrame(
      buildUdpFrame(
        { srcMac: this.mac, dstMac: BROADCAST_MAC, src: 0, dst: 0xffffffff },
        DHCP_CLIENT_PORT,
        DHCP_SERVER_PORT,
        payload,
      ),
    );
  }

  expectDhcp(xid: number, type?: number): Promise<DhcpMessage> {
    return this.expect(
      (frame, ip) => {
        if (!ip || ip.proto !== PROTO_UDP) return undefined;
        const udp = parseUdp(frame, ip);
        if (!udp || udp.dport !== DHCP_CLIENT_PORT) return undefined;
        const m = parseDhcp(udp.payload);
        return m && m.xid === xid && (type === undefined || m.type === type) ? m : undefined;
      },
      3000,
      "a DHCP reply",
    );
  }

  /** The MAC that answers ARP for `ip`. */
  async arp(ip: number, timeoutMs = this.options.arpTimeoutMs ?? 3000): Promise<Uint8Array> {
    const p = this.expect(
      (frame) => {
        if (readU16(frame, 12) !== ETHERTYPE_ARP) return undefined;
        const a = parseArp(frame);
        return a && a.op === ARP_REPLY && a.senderIp === ip ? copyBytes(frame, 22, 28) : undefined;
      },
      timeoutMs,
      "an ARP reply",
    );
    this.sendFrame(buildArp(ARP_REQUEST, this.mac, this.ip, null, ip));
    return p;
  }

  async ping(dst: number, payload: Uint8Array, id = 0x1234, seq = 1): Promise<Uint8Array> {
    const mac = await this.nextHop(dst);
    const p = this.expect(
      (frame, ip) => {
        if (!ip || ip.proto !== PROTO_ICMP || ip.src !== dst) return undefined;
        const m = parseIcmp(frame, ip);
        return m && m.type === ICMP_ECHO_REPLY && m.id === id && m.seq === seq && m.checksumOk
          ? copyBytes(m.payload)
          : undefined;
      },
      3000,
      "an echo reply",
    );
    this.sendFrame(
      buildIcmpEchoFrame({ srcMac: this.mac, dstMac: mac, src: this.ip, dst }, ICMP_ECHO_REQUEST, id, seq, payload),
    );
    return p;
  }

  /** Sends one datagram and resolves with the first one that comes back to `sport`. */
  async udpExchange(
    dst: number,
    dport: number,
    payload: Uint8Array,
    sport = 5000,
    timeoutMs = 3000,
  ): Promise<{ from: number; sport: number; payload: Uint8Array }> {
    const mac = await this.nextHop(dst);
    const p = this.expect(
      (frame, ip) => {
        if (!ip || ip.proto !== PROTO_UDP) return undefined;
        const u = parseUdp(frame, ip);
        return u && u.dport === sport && u.checksumOk
          ? { from: ip.src, sport: u.sport, payload: copyBytes(u.payload) }
          : undefined;
      },
      timeoutMs,
      "a UDP reply",
    );
    this.sendFrame(buildUdpFrame({ srcMac: this.mac, dstMac: mac, src: this.ip, dst }, sport, dport, payload));
    return p;
  }

  /** Opens a TCP connection; rejects with "connection refused" on RST. */
  async connect(dst: number, dport: number): Promise<GuestTcpConnection> {
    const mac = await this.nextHop(dst);
    const c = new GuestTcpConnection(this, mac, this.nextPort++, dst, dport, false);
    this.conns.set(c.key, c);
    c.sendSyn();
    await c.established;
    return c;
  }

  /** Accepts connections to `port`. */
  listen(port: number, onConnection: (c: GuestTcpConnection) => void): void {
    this.listeners.set(port, onConnection);
  }

  /** @internal */
  forget(c: GuestTcpConnection): void {
    if (this.conns.get(c.key) === c) this.conns.delete(c.key);
  }

  /** @internal writes Ethernet+IPv4 headers for a TCP payload already at L4_OFF and sends. */
  emitTcp(mac: Uint8Array, dst: number, tcpLength: number): void {
    writeEthernet(this.tx, mac, this.mac, ETHERTYPE_IPV4);
    writeIpv4Header(this.tx, IP_OFF, PROTO_TCP, this.ip, dst, tcpLength, this.ipId++);
    this.sendFrame(this.tx.subarray(0, L4_OFF + tcpLength));
  }

  private refuse(frame: Uint8Array, ip: Ipv4Header, flags: number): void {
    this.sendFrame(refuseSegment(this, frame, ip, flags));
  }

  private async nextHop(dst: number): Promise<Uint8Array> {
    const onLink = ((dst ^ this.ip) & 0xffffff00) === 0;
    if (onLink) return this.arp(dst);
    if (!this.gatewayMac) this.gatewayMac = await this.arp(this.gateway);
    return this.gatewayMac;
  }

  private receive(frame: Uint8Array): boolean {
    this.frames++;
    if (this.options.dropEvery && this.frames % this.options.dropEvery === 0) return false;
    if (this.options.loseEvery && this.frames % this.options.loseEvery === 0) return true;
    this.queue.push(copyBytes(frame));
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.process());
    }
    return true;
  }

  private process(): void {
    this.scheduled = false;
    const frames = this.queue.splice(0);
    for (const f of frames) this.handle(f);
    for (const c of this.conns.values()) c.afterBatch();
  }

  private handle(frame: Uint8Array): void {
    if (this.closed) return;
    const type = readU16(frame, 12);
    let ip: Ipv4Header | null = null;
    if (type === ETHERTYPE_IPV4) ip = parseIpv4(frame);
    if (type === ETHERTYPE_ARP) {
      const a = parseArp(frame);
      if (a && a.op === ARP_REQUEST && a.targetIp === this.ip && this.ip !== 0) {
        this.sendFrame(buildArp(ARP_REPLY, this.mac, this.ip, copyBytes(frame, 22, 28), a.senderIp));
      }
    }
    for (const w of this.waiters) {
      const v = w.match(frame, ip);
      if (v !== undefined) {
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(v);
        return;
      }
    }
    if (ip && ip.proto === PROTO_TCP && ip.dst === this.ip) this.tcp(frame, ip);
  }

  private tcp(frame: Uint8Array, ip: Ipv4Header): void {
    const o = ip.payloadOffset;
    const sport = readU16(frame, o);
    const dport = readU16(frame, o + 2);
    const flags = frame[o + 13];
    const key = connKey(dport, ip.src, sport);
    let c = this.conns.get(key);
    if (!c) {
      const accept = this.listeners.get(dport);
      if (!accept || (flags & (TCP_SYN | TCP_ACK)) !== TCP_SYN) {
        if (!(flags & TCP_RST)) this.refuse(frame, ip, flags);
        return;
      }
      c = new GuestTcpConnection(this, copyBytes(frame, 6, 12), dport, ip.src, sport, true);
      c.onEstablished = accept;
      this.conns.set(key, c);
      c.input(frame, ip);
      return;
    }
    c.input(frame, ip);
  }
}

/** RST|ACK for a segment no connection or listener wants, as a kernel answers a closed port. */
function refuseSegment(stack: GuestStack, frame: Uint8Array, ip: Ipv4Header, flags: number): Uint8Array {
  const o = ip.payloadOffset;
  const hlen = (frame[o + 12] >>> 4) * 4;
  const len = ip.end - o - hlen + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0);
  const seq = flags & TCP_ACK ? readU32(frame, o + 8) : 0;
  return buildTcpFrame(
    { srcMac: stack.mac, dstMac: copyBytes(frame, 6, 12), src: stack.ip, dst: ip.src },
    {
      sport: readU16(frame, o + 2),
      dport: readU16(frame, o),
      seq,
      ack: (readU32(frame, o + 4) + len) >>> 0,
      flags: TCP_RST | TCP_ACK,
      window: 0,
    },
  );
}

function connKey(localPort: number, remoteIp: number, remotePort: number): string {
  return `${localPort}/${remoteIp}/${remotePort}`;
}

/** One TCP connection of the GuestStack. */
export class GuestTcpConnection {
  readonly key: string;
  /** Resolves when the handshake completes; rejects on RST ("connection refused"). */
  readonly established: Promise<void>;
  /** Resolves when the peer's FIN arrived (all data received), rejects on RST. */
  readonly finished: Promise<void>;
  reset = false;
  state: "syn-sent" | "syn-received" | "established" | "closed";

  private resolveEst!: () => void;
  private rejectEst!: (e: Error) => void;
  private resolveFin!: () => void;
  private rejectFin!: (e: Error) => void;
  private iss = (Math.random() * 0xffffffff) >>> 0;
  private sndUna: number;
  private sndNxt: number;
  private sndWnd = 0;
  private sndShift = 0;
  private rcvShift = GUEST_WSCALE;
  private peerMss = 536;
  private out: Buffer = Buffer.alloc(0);
  private outStart = 0; // out[outStart] holds sequence number sndUna
  private outLen = 0; // bytes in `out` from sndUna on
  private finWanted = false;
  private finSent = false;
  private finAcked = false;
  private rcvNxt = 0;
  private peerFin = false;
  private ackNeeded = false;
  private readonly chunks: Buffer[] = [];
  private readonly ooo = new Map<number, { data: Buffer; fin: boolean }>();
  private unread: Buffer[] = [];
  private unreadBytes = 0;
  private reading = true;
  private lastProgress = Date.now();
  private timer: NodeJS.Timeout | null = null;
  /** @internal a listener's callback, run as the handshake completes, before any data is handled */
  onEstablished: ((c: GuestTcpConnection) => void) | null = null;
  /** Called with each chunk as it arrives in order (while reading). */
  onData: ((chunk: Buffer) => void) | null = null;
  received = 0;

  constructor(
    private readonly stack: GuestStack,
    private readonly peerMac: Uint8Array,
    readonly localPort: number,
    readonly remoteIp: number,
    readonly remotePort: number,
    passive: boolean,
  ) {
    this.key = connKey(localPort, remoteIp, remotePort);
    this.state = passive ? "syn-received" : "syn-sent";
    this.sndUna = this.iss;
    this.sndNxt = (this.iss + 1) >>> 0;
    this.established = new Promise((res, rej) => {
      this.resolveEst = res;
      this.rejectEst = rej;
    });
    this.finished = new Promise((res, rej) => {
      this.resolveFin = res;
      this.rejectFin = rej;
    });
    this.established.catch(() => {});
    this.finished.catch(() => {});
    this.timer = setInterval(() => this.tick(), 50);
    this.timer.unref();
  }

  /** All data received so far (after `finished`, the whole stream). */
  data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  write(data: Uint8Array): void {
    if (this.finWanted) throw new Error("guest: write after end");
    const need = this.outLen + data.length;
    if (this.out.length < this.outStart + need) {
      const grown = need <= this.out.length ? this.out : Buffer.alloc(Math.max(need, this.out.length * 2, 65536));
      this.out.copy(grown, 0, this.outStart, this.outStart + this.outLen);
      this.out = grown;
      this.outStart = 0;
    }
    this.out.set(data, this.outStart + this.outLen);
    this.outLen = need;
    this.pump();
  }

  end(): void {
    this.finWanted = true;
    this.pump();
  }

  /** Stop taking data from the receive buffer: the advertised window shrinks to zero. */
  pauseReading(): void {
    this.reading = false;
  }

  resumeReading(): void {
    this.reading = true;
    for (const b of this.unread) this.consume(b);
    this.unread = [];
    this.unreadBytes = 0;
    this.sendAck();
  }

  /** Sends RST and forgets the connection. */
  abort(): void {
    this.segment(this.sndNxt, this.rcvNxt, TCP_RST | TCP_ACK, 0, 0);
    this.close();
  }

  /** Bytes sent but not yet acknowledged plus bytes not yet sent. */
  get pendingOutput(): number {
    return this.outLen;
  }

  /** @internal */
  stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** @internal */
  sendSyn(): void {
    const tx = this.stack.tx;
    const optLen = writeTcpSynOptions(tx, L4_OFF + TCP_HLEN, GUEST_MSS, GUEST_WSCALE);
    const flags = this.state === "syn-sent" ? TCP_SYN : TCP_SYN | TCP_ACK;
    this.writeTcp(this.iss, this.rcvNxt, flags, Math.min(0xffff, this.stack.rcvBuffer), optLen, 0);
  }

  /** @internal */
  input(frame: Uint8Array, ip: Ipv4Header): void {
    const o = ip.payloadOffset;
    const seq = readU32(frame, o + 4);
    const ack = readU32(frame, o + 8);
    const hlen = (frame[o + 12] >>> 4) * 4;
    const flags = frame[o + 13];
    const wnd = readU16(frame, o + 14);
    const payload = frame.subarray(o + hlen, ip.end);
    if (flags & TCP_RST) {
      this.reset = true;
      this.rejectEst(new Error("connection refused"));
      this.rejectFin(new Error("connection reset"));
      this.close();
      return;
    }
    if (this.state === "syn-sent") {
      if ((flags & (TCP_SYN | TCP_ACK)) !== (TCP_SYN | TCP_ACK) || ack !== (this.iss + 1) >>> 0) return;
      const opts = readTcpSynOptions(frame, o + TCP_HLEN, o + hlen);
      this.peerMss = opts.mss > 0 ? opts.mss : 536;
      if (opts.wscale >= 0) this.sndShift = opts.wscale;
      else this.rcvShift = 0;
      this.rcvNxt = (seq + 1) >>> 0;
      this.sndUna = this.sndNxt = ack;
      this.sndWnd = wnd;
      this.state = "established";
      this.sendAck();
      this.resolveEst();
      this.pump();
      return;
    }
    if (this.state === "syn-received") {
      if (flags & TCP_SYN) {
        const opts = readTcpSynOptions(frame, o + TCP_HLEN, o + hlen);
        this.peerMss = opts.mss > 0 ? opts.mss : 536;
        if (opts.wscale >= 0) this.sndShift = opts.wscale;
        else this.rcvShift = 0;
        this.rcvNxt = (seq + 1) >>> 0;
        this.sndWnd = wnd;
        this.sendSyn();
        return;
      }
      if (!(flags & TCP_ACK) || ack !== (this.iss + 1) >>> 0) return;
      this.sndUna = this.sndNxt = ack;
      this.state = "established";
      this.resolveEst();
      this.onEstablished?.(this);
    }
    if (this.state !== "established" || !(flags & TCP_ACK)) return;
    // Acknowledgment.
    const acked = (ack - this.sndUna) | 0;
    if (acked > 0 && ((ack - this.sndNxt) | 0) <= 0) {
      let data = acked;
      if (this.finSent && ack === this.sndNxt) {
        this.finAcked = true;
        data--;
      }
      this.outStart += data;
      this.outLen -= data;
      if (this.outLen === 0) this.outStart = 0;
      this.sndUna = ack;
      this.lastProgress = Date.now();
    }
    if (acked >= 0) this.sndWnd = wnd << this.sndShift;
    // Data: in order it is taken; ahead of a hole it waits in the out-of-order queue, as in Linux.
    if (payload.length > 0 || flags & TCP_FIN) {
      if (this.peerFin || ((seq - this.rcvNxt) | 0) < 0) this.sendAck();
      else if (seq !== this.rcvNxt) {
        if (this.ooo.size < 1024) this.ooo.set(seq, { data: Buffer.from(payload), fin: (flags & TCP_FIN) !== 0 });
        this.sendAck(); // a duplicate ACK right away
      } else {
        this.take(payload, (flags & TCP_FIN) !== 0);
        for (let next = this.ooo.get(this.rcvNxt); next && !this.peerFin; next = this.ooo.get(this.rcvNxt)) {
          this.ooo.delete(this.rcvNxt);
          this.take(next.data, next.fin);
        }
        this.ackNeeded = true;
      }
    }
    this.pump();
    this.maybeDone();
  }

  /** @internal once per batch of frames: one ACK for everything received. */
  afterBatch(): void {
    if (this.ackNeeded) this.sendAck();
  }

  private take(payload: Uint8Array, fin: boolean): void {
    const n = Math.min(payload.length, this.stack.rcvBuffer - this.unreadBytes);
    if (n > 0) {
      const chunk = Buffer.from(payload.subarray(0, n));
      this.rcvNxt = (this.rcvNxt + n) >>> 0;
      if (this.reading) this.consume(chunk);
      else {
        this.unread.push(chunk);
        this.unreadBytes += n;
      }
    }
    if (fin && n === payload.length) {
      this.rcvNxt = (this.rcvNxt + 1) >>> 0;
      this.peerFin = true;
      this.ooo.clear();
      this.resolveFin();
    }
  }

  private consume(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.received += chunk.length;
    this.onData?.(chunk);
  }

  private pump(): void {
    if (this.state !== "established" || this.finAcked) return;
    for (;;) {
      const inFlight = (this.sndNxt - this.sndUna) | 0;
      const dataInFlight = this.finSent ? inFlight - 1 : inFlight;
      const unsent = this.outLen - dataInFlight;
      const room = this.sndWnd - inFlight;
      if (unsent > 0 && room > 0) {
        const n = Math.min(unsent, room, this.peerMss);
        const tx = this.stack.tx;
        const from = this.outStart + dataInFlight;
        tx.set(this.out.subarray(from, from + n), L4_OFF + TCP_HLEN);
        this.writeTcp(this.sndNxt, this.rcvNxt, TCP_ACK | (n === unsent ? TCP_PSH : 0), this.window(), 0, n);
        this.sndNxt = (this.sndNxt + n) >>> 0;
        this.ackNeeded = false;
        continue;
      }
      if (unsent === 0 && this.finWanted && !this.finSent) {
        this.finSent = true;
        this.segment(this.sndNxt, this.rcvNxt, TCP_ACK | TCP_FIN, this.window(), 0);
        this.sndNxt = (this.sndNxt + 1) >>> 0;
        this.ackNeeded = false;
      }
      return;
    }
  }

  private tick(): void {
    if (this.state === "closed") return;
    if (this.state === "syn-sent" && Date.now() - this.lastProgress > RTO_MS * 4) {
      this.lastProgress = Date.now();
      this.sendSyn();
      return;
    }
    if (this.sndUna !== this.sndNxt && Date.now() - this.lastProgress > RTO_MS) {
      // Go back to the first unacknowledged byte.
      this.sndNxt = this.sndUna;
      if (!this.finAcked) this.finSent = false;
      this.lastProgress = Date.now();
      this.pump();
    }
  }

  private window(): number {
    return Math.min(0xffff, Math.max(0, this.stack.rcvBuffer - this.unreadBytes) >>> this.rcvShift);
  }

  private sendAck(): void {
    this.ackNeeded = false;
    this.segment(this.sndNxt, this.rcvNxt, TCP_ACK, this.window(), 0);
  }

  private segment(seq: number, ack: number, flags: number, window: number, optLen: number): void {
    this.writeTcp(seq, ack, flags, window, optLen, 0);
  }

  private writeTcp(seq: number, ack: number, flags: number, window: number, optLen: number, payloadLen: number): void {
    const tx = this.stack.tx;
    writeTcpHeader(
      tx,
      L4_OFF,
      this.stack.ip,
      this.remoteIp,
      this.localPort,
      this.remotePort,
      seq,
      ack,
      flags,
      window,
      optLen,
      payloadLen,
    );
    this.stack.emitTcp(this.peerMac, this.remoteIp, TCP_HLEN + optLen + payloadLen);
  }

  private maybeDone(): void {
    if (!this.peerFin || !this.finAcked) return;
    if (this.ackNeeded) this.sendAck();
    this.close();
  }

  private close(): void {
    this.state = "closed";
    this.stopTimer();
    this.stack.forget(this);
  }
}

/**
 * User-mode networking, after QEMU's slirp: the guest sits alone on 10.0.2.0/24 behind a virtual
 * gateway and reaches the host's network through ordinary host sockets, with no privileges.
 *
 *   10.0.2.2   gateway: answers ARP and ping; TCP/UDP to it reach the host's 127.0.0.1
 *   10.0.2.3   DNS: queries are forwarded to the host's nameservers
 *   10.0.2.15  the guest, handed out by the built-in DHCP server
 *   169.254.169.254:80  the instance metadata service (metadata.ts), when the VM has one
 *
 * Another guest address and prefix can be given (`address`, e.g. 10.0.7.15/16): the gateway and
 * DNS are then .2 and .3 of that network. Published ports can be added and removed while the VM
 * runs (addForward, removeForward).
 *
 * TCP and UDP to any other address leave through host sockets (see tcp.ts, udp.ts); published
 * host ports are spliced to the guest's ports. ICMP other than ping to the gateway is dropped:
 * Node has no unprivileged ICMP sockets.
 *
 * Everything is driven by events: frames from the guest arrive through send(), frames for the
 * guest leave through the callback given to attach(), and all timers are unref'd.
 */
import net from "node:net";
import type { NetBackend } from "../devices/netdev.js";
import {
  dhcpServerReply,
  DHCP_CLIENT_PORT,
  DHCP_FLAG_BROADCAST,
  DHCP_NAK,
  DHCP_REQUEST,
  DHCP_SERVER_PORT,
  parseDhcp,
  type DhcpLease,
} from "./dhcp.js";
import { DNS_PORT, DnsForwarder, systemNameservers } from "./dns.js";
import {
  ARP_LEN,
  ARP_REPLY,
  ARP_REQUEST,
  BROADCAST_MAC,
  copyBytes,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  formatMac,
  macEquals,
  writeArp,
  writeEthernet,
} from "./ethernet.js";
import {
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMP_HLEN,
  internetChecksum,
  IP_OFF,
  IPV4_HLEN,
  L4_OFF,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  readU16,
  readU32,
  UDP_HLEN,
  writeIpv4Header,
  writeU16,
  writeUdpHeader,
} from "./ip.js";
import {
  DEFAULT_ADDRESSES,
  GATEWAY_MAC,
  inGuestNetwork,
  METADATA_IP,
  MTU,
  userNetAddresses,
  type GuestLink,
  type UserNetAddresses,
} from "./link.js";
import type { MetadataService } from "./metadata.js";
import { TcpNat } from "./tcp.js";
import { UdpNat } from "./udp.js";

export { DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP } from "./link.js";

export interface HostForward {
  /** Host address to listen on, e.g. "127.0.0.1" or "0.0.0.0". */
  hostAddr: string;
  /** Host port; 0 picks a free one (see UserNet.published). */
  hostPort: number;
  guestPort: number;
  proto: "tcp";
}

export interface UserNetOptions {
  hostForwards?: HostForward[];
  /** The guest's address and prefix ("10.0.7.15/16"); default 10.0.2.15/24. */
  address?: string;
  /** Serves http://169.254.169.254/ to this guest; without it, TCP to 169.254.0.0/16 is refused. */
  metadata?: MetadataService;
  /** Nameservers for 10.0.2.3 ("ip" or "ip:port"); default: the host's /etc/resolv.conf. */
  dnsServers?: string[];
  /** How long each nameserver gets before the next is tried (default 2000 ms). */
  dnsTimeoutMs?: number;
  /** Idle time after which a UDP flow's host socket is closed (default 60 s). */
  udpIdleMs?: number;
}

export interface UserNetStats {
  tcpConnections: number;
  tcpBufferedBytes: number;
  udpFlows: number;
}

const LEASE_SECONDS = 86400;
const ARP_RETRY_MS = 1000;
/** Room for the largest IPv4 packet plus its Ethernet header. */
const TX_SIZE = ETH_HLEN + 65535;

function checkPort(value: number, what: string, allowZero: boolean): void {
  if (!Number.isInteger(value) || value < (allowZero ? 0 : 1) || value > 65535) {
    throw new Error(`invalid ${what} ${value}: expected a port number ${allowZero ? 0 : 1}-65535`);
  }
}

function checkForward(f: HostForward): void {
  if (f.proto !== "tcp") throw new Error(`cannot publish ${f.hostAddr}:${f.hostPort}: only tcp is supported`);
  checkPort(f.hostPort, "host port", true);
  checkPort(f.guestPort, "guest port", false);
}

export interface PublishedForward {
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

function describeForward(e: { f: HostForward; server: net.Server | null }): PublishedForward {
  const a = e.server?.address() as net.AddressInfo | null | undefined;
  return { hostAddr: e.f.hostAddr, hostPort: a ? a.port : e.f.hostPort, guestPort: e.f.guestPort };
}

function describeListenError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "address in use";
    case "EACCES":
      return "permission denied";
    case "EADDRNOTAVAIL":
      return "no such address on this host";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "unknown host name";
    default:
      return err.message;
  }
}

export class UserNet implements NetBackend {
  private deliver: ((frame: Uint8Array) => boolean) | null = null;
  private readonly tx = Buffer.alloc(TX_SIZE);
  private readonly arpBuf = new Uint8Array(ETH_HLEN + ARP_LEN);
  private view: Uint8Array = this.tx.subarray(0, 0);
  private guestMac: Uint8Array | null = null;
  private readonly addresses: UserNetAddresses;
  private guestAddr: number;
  /** The guest has sent from its address, so it is configured. */
  private guestUp = false;
  private ipId = 1;
  private lastArpRequest = 0;
  /** >0 while a frame is being handed to the guest; frames sent back meanwhile wait in `deferred`. */
  private depth = 0;
  private deferred: Uint8Array[] = [];
  private closed = false;
  private started = false;
  /** Published forwards and their listening servers, in the order they were added. */
  private readonly forwards: { f: HostForward; server: net.Server | null }[];
  private readonly link: GuestLink;
  private readonly tcp: TcpNat;
  private readonly udp: UdpNat;
  private readonly dns: DnsForwarder;
  private readonly lease: DhcpLease;
  private readonly metadata: MetadataService | null;

  constructor(options: UserNetOptions = {}) {
    const a = (this.addresses = options.address ? userNetAddresses(options.address) : { ...DEFAULT_ADDRESSES });
    this.guestAddr = a.guest;
    this.lease = {
      address: a.guest,
      mask: a.netmask,
      router: a.gateway,
      dns: a.dns,
      server: a.gateway,
      leaseSeconds: LEASE_SECONDS,
    };
    this.forwards = (options.hostForwards ?? []).map((f) => {
      checkForward(f);
      return { f: { ...f }, server: null };
    });
    this.dns = new DnsForwarder(options.dnsServers ?? systemNameservers(), options.dnsTimeoutMs ?? 2000);
    const guestIp = () => this.guestAddr;
    const ready = () => this.deliver !== null && this.guestMac !== null;
    const addresses = a;
    this.link = {
      tx: this.tx,
      addresses,
      emitIpv4: (proto, src, dst, len) => this.emitIpv4(proto, src, dst, len),
      emitUdp: (src, sport, dport, payload) => this.emitUdp(src, sport, dport, payload),
      get guestIp() {
        return guestIp();
      },
      get ready() {
        return ready();
      },
    };
    const metadata = (this.metadata = options.metadata ?? null);
    this.tcp = new TcpNat(
      this.link,
      () => this.dns.primary,
      (src, dst, dport) =>
        metadata && dst === METADATA_IP && dport === 80 ? metadata.connect(src === addresses.guest) : null,
    );
    this.udp = new UdpNat(this.link, { idleMs: options.udpIdleMs });
  }

  /** Publishes the host forwards; rejects with "cannot publish ADDR:PORT: REASON" if one cannot listen. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    for (const entry of this.forwards) {
      try {
        entry.server = await this.listen(entry.f);
      } catch (e) {
        for (const x of this.forwards) x.server?.close();
        for (const x of this.forwards) x.server = null;
        throw e;
      }
    }
  }

  private async listen(f: HostForward): Promise<net.Server> {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
      if (this.closed) socket.destroy();
      else this.tcp.acceptForward(socket, f.guestPort);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host: f.hostAddr, port: f.hostPort }, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (e) {
      throw new Error(`cannot publish ${f.hostAddr}:${f.hostPort}: ${describeListenError(e as NodeJS.ErrnoException)}`);
    }
    server.on("error", () => {});
    if (this.closed) server.close();
    return server;
  }

  /**
   * Publishes one more forward while the VM runs; answers it with the port actually bound.
   * Rejects with one sentence if it cannot listen (the address in use, ...).
   */
  async addForward(f: HostForward): Promise<PublishedForward> {
    checkForward(f);
    if (this.closed) throw new Error("the network is closed");
    const entry: { f: HostForward; server: net.Server | null } = { f: { ...f }, server: null };
    if (this.started) entry.server = await this.listen(entry.f);
    this.forwards.push(entry);
    return describeForward(entry);
  }

  /**
   * Stops publishing the forward bound at hostAddr:hostPort (connections already spliced go on
   * until they end). Answers false if there is none.
   */
  removeForward(hostAddr: string, hostPort: number): boolean {
    const i = this.forwards.findIndex((e) => {
      const p = describeForward(e);
      return p.hostAddr === hostAddr && p.hostPort === hostPort;
    });
    if (i < 0) return false;
    const [entry] = this.forwards.splice(i, 1);
    entry.server?.close();
    return true;
  }

  /** The published forwards with the ports actually bound (after start()). */
  get published(): PublishedForward[] {
    return this.forwards.filter((e) => e.server).map(describeForward);
  }

  /** The guest's assigned address and prefix, e.g. "10.0.2.15/24". */
  get guestAddress(): UserNetAddresses {
    return { ...this.addresses };
  }

  /** The guest's MAC as learned from its frames, or null before it sent any. */
  get guestMacAddress(): string | null {
    return this.guestMac ? formatMac(this.guestMac) : null;
  }

  stats(): UserNetStats {
    const t = this.tcp.stats();
    return { tcpConnections: t.connections, tcpBufferedBytes: t.bufferedBytes, udpFlows: this.udp.size };
  }

  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const e of this.forwards) e.server?.close();
    this.tcp.close();
    this.udp.close();
    this.dns.close();
    this.metadata?.close();
    this.deferred.length = 0;
    this.deliver = null;
  }

  send(frame: Uint8Array): void {
    if (this.closed || frame.length < ETH_HLEN) return;
    if (this.depth > 0) {
      // Sent from inside our own deliver callback: handle it once the current frame is done.
      if (this.deferred.push(copyBytes(frame)) === 1) queueMicrotask(() => this.drainDeferred());
      return;
    }
    // Unicast frames for someone else (on a shared segment) are not ours.
    if ((frame[0] & 1) === 0 && !macEquals(frame, 0, GATEWAY_MAC, 0)) return;
    if ((frame[6] & 1) === 0 && (!this.guestMac || !macEquals(frame, 6, this.guestMac, 0))) {
      this.guestMac = copyBytes(frame, 6, 12);
    }
    const type = readU16(frame, 12);
    if (type === ETHERTYPE_IPV4) this.ipv4(frame);
    else if (type === ETHERTYPE_ARP) this.arp(frame);
  }

  private drainDeferred(): void {
    const frames = this.deferred;
    this.deferred = [];
    for (const f of frames) this.send(f);
  }

  // ---- to the guest ----

  private emit(buf: Uint8Array, len: number): boolean {
    const deliver = this.deliver;
    if (!deliver) return false;
    let view: Uint8Array;
    if (buf === this.tx) {
      view = this.view;
      if (view.length !== len) this.view = view = this.tx.subarray(0, len);
    } else view = buf.subarray(0, len);
    this.depth++;
    try {
      return deliver(view);
    } finally {
      this.depth--;
    }
  }

  private emitIpv4(proto: number, src: number, dst: number, payloadLength: number): boolean {
    const mac = this.guestMac;
    if (!mac) {
      this.arpForGuest();
      return false;
    }
    return this.emitIpv4To(mac, proto, src, dst, payloadLength, 0x4000);
  }

  private emitIpv4To(
    mac: Uint8Array,
    proto: number,
    src: number,
    dst: number,
    payloadLength: number,
    fragment: number,
  ): boolean {
    const tx = this.tx;
    writeEthernet(tx, mac, GATEWAY_MAC, ETHERTYPE_IPV4);
    writeIpv4Header(tx, IP_OFF, proto, src, dst, payloadLength, this.ipId, 64, fragment);
    if ((fragment & 0x2000) === 0) this.ipId = (this.ipId + 1) & 0xffff;
    return this.emit(tx, L4_OFF + payloadLength);
  }

  private emitUdp(src: number, sport: number, dport: number, payload: Uint8Array): void {
    this.emitUdpTo(this.guestMac, src, this.guestAddr, sport, dport, payload);
  }

  private emitUdpTo(
    mac: Uint8Array | null,
    src: number,
    dst: number,
    sport: number,
    dport: number,
    payload: Uint8Array,
  ): void {
    if (!mac) {
      this.arpForGuest();
      return;
    }
    const total = UDP_HLEN + payload.length;
    if (total > 0xffff - IPV4_HLEN) return;
    const tx = this.tx;
    tx.set(payload, L4_OFF + UDP_HLEN);
    writeUdpHeader(tx, L4_OFF, src, dst, sport, dport, payload.length);
    if (IPV4_HLEN + total <= MTU) {
      this.emitIpv4To(mac, PROTO_UDP, src, dst, total, 0x4000);
      return;
    }
    // Too big for one frame: send IPv4 fragments of the datagram (slow path, allocates).
    const datagram = copyBytes(tx, L4_OFF, L4_OFF + total);
    const step = (MTU - IPV4_HLEN) & ~7;
    for (let off = 0; off < total; off += step) {
      const n = Math.min(step, total - off);
      tx.set(datagram.subarray(off, off + n), L4_OFF);
      const more = off + n < total ? 0x2000 : 0;
      this.emitIpv4To(mac, PROTO_UDP, src, dst, n, more | (off >>> 3));
    }
  }

  private arpForGuest(): void {
    const now = Date.now();
    if (now - this.lastArpRequest < ARP_RETRY_MS) return;
    this.lastArpRequest = now;
    const b = this.arpBuf;
    writeEthernet(b, BROADCAST_MAC, GATEWAY_MAC, ETHERTYPE_ARP);
    writeArp(b, ETH_HLEN, ARP_REQUEST, GATEWAY_MAC, this.addresses.gateway, new Uint8Array(6), this.guestAddr);
    this.emit(b, b.length);
  }

  // ---- from the guest ----

  private arp(frame: Uint8Array): void {
    const o = ETH_HLEN;
    if (frame.length < o + ARP_LEN || readU16(frame, o) !== 1 || readU16(frame, o + 2) !== ETHERTYPE_IPV4) return;
    const senderIp = readU32(frame, o + 14);
    const a = this.addresses;
    if (senderIp !== 0 && inGuestNetwork(senderIp, a) && senderIp !== a.gateway && senderIp !== a.dns) {
      this.guestAddr = senderIp;
    }
    if (readU16(frame, o + 6) !== ARP_REQUEST) return;
    const target = readU32(frame, o + 24);
    if (target !== a.gateway && target !== a.dns) return;
    const b = this.arpBuf;
    const requester = frame.subarray(o + 8, o + 14);
    writeEthernet(b, requester, GATEWAY_MAC, ETHERTYPE_ARP);
    writeArp(b, ETH_HLEN, ARP_REPLY, GATEWAY_MAC, target, requester, senderIp);
    this.emit(b, b.length);
  }

  private ipv4(frame: Uint8Array): void {
    const o = IP_OFF;
    if (frame.length < o + IPV4_HLEN || frame[o] >>> 4 !== 4) return;
    const ihl = (frame[o] & 0x0f) << 2;
    const end = o + readU16(frame, o + 2);
    if (ihl < IPV4_HLEN || end > frame.length || end < o + ihl) return;
    if ((readU16(frame, o + 6) & 0x3fff) !== 0) return; // fragments are not reassembled
    if (internetChecksum(frame, o, o + ihl) !== 0) return;
    const src = readU32(frame, o + 12);
    const dst = readU32(frame, o + 16);
    const a = this.addresses;
    if (src !== this.guestAddr || !this.guestUp) {
      if (src !== 0 && inGuestNetwork(src, a) && src !== a.gateway && src !== a.dns) {
        // The guest speaks from a configured address: port forwards waiting for it can go now.
        this.guestAddr = src;
        this.guestUp = true;
        queueMicrotask(() => this.tcp.guestReady());
      }
    }
    const l4 = o + ihl;
    switch (frame[o + 9]) {
      case PROTO_TCP:
        this.tcp.input(frame, l4, end, dst, src);
        break;
      case PROTO_UDP:
        this.udpIn(frame, l4, end, dst);
        break;
      case PROTO_ICMP:
        this.icmpIn(frame, l4, end, src, dst);
        break;
    }
  }

  private udpIn(frame: Uint8Array, l4: number, end: number, dst: number): void {
    if (end - l4 < UDP_HLEN) return;
    const sport = readU16(frame, l4);
    const dport = readU16(frame, l4 + 2);
    const len = readU16(frame, l4 + 4);
    if (len < UDP_HLEN || l4 + len > end) return;
    const payload = frame.subarray(l4 + UDP_HLEN, l4 + len);
    const a = this.addresses;
    if (dport === DHCP_SERVER_PORT) {
      if (sport === DHCP_CLIENT_PORT && (dst === 0xffffffff || dst === a.gateway)) this.dhcp(payload);
      return;
    }
    if (dst === a.dns) {
      if (dport === DNS_PORT) this.dns.query(payload, (reply) => this.emitUdp(a.dns, DNS_PORT, sport, reply));
      return;
    }
    if (inGuestNetwork(dst, a) && dst !== a.gateway) return;
    if (dst >>> 16 === 0xa9fe) return; // link-local: not the host's own metadata service
    if (dst === 0 || dst >>> 28 >= 14 || dst >>> 24 === 127) return; // unspecified, multicast, broadcast, loopback
    this.udp.input(dst, sport, dport, payload);
  }

  private dhcp(payload: Uint8Array): void {
    const msg = parseDhcp(payload);
    if (!msg) return;
    const reply = dhcpServerReply(msg, this.lease);
    if (!reply) return;
    const type = reply.type;
    if (msg.type === DHCP_REQUEST && type !== DHCP_NAK) this.guestAddr = this.lease.address;
    // RFC 2131 4.1: a configured client (ciaddr) gets unicast; NAKs and clients that asked for it get broadcast.
    let mac: Uint8Array = msg.chaddr;
    let dst = this.lease.address;
    if (msg.ciaddr !== 0 && type !== DHCP_NAK) dst = msg.ciaddr;
    else if (type === DHCP_NAK || msg.flags & DHCP_FLAG_BROADCAST) {
      mac = BROADCAST_MAC;
      dst = 0xffffffff;
    }
    this.emitUdpTo(mac, this.addresses.gateway, dst, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, reply.payload);
  }

  private icmpIn(frame: Uint8Array, l4: number, end: number, src: number, dst: number): void {
    if (end - l4 < ICMP_HLEN || frame[l4] !== ICMP_ECHO_REQUEST) return;
    if (dst !== this.addresses.gateway && dst !== this.addresses.dns) return;
    if (internetChecksum(frame, l4, end) !== 0 || !this.guestMac) return;
    const len = end - l4;
    const tx = this.tx;
    tx.set(frame.subarray(l4, end), L4_OFF);
    tx[L4_OFF] = ICMP_ECHO_REPLY;
    writeU16(tx, L4_OFF + 2, 0);
    writeU16(tx, L4_OFF + 2, internetChecksum(tx, L4_OFF, L4_OFF + len));
    this.emitIpv4To(this.guestMac, PROTO_ICMP, dst, src, len, 0);
  }
}

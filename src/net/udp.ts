/**
 * UDP NAT for user-mode networking: each guest source port gets a host UDP socket; datagrams the
 * guest sends through it go to their destination (10.0.2.2 means the host's 127.0.0.1) and
 * whatever comes back to that socket returns to the guest's port. Idle flows expire.
 */
import dgram from "node:dgram";
import { formatIpv4Address, parseIpv4Address } from "./ip.js";
import { guestAddressFor, hostAddressFor, type GuestLink } from "./link.js";

interface Flow {
  guestPort: number;
  socket: dgram.Socket;
  lastUsed: number;
}

export interface UdpNatOptions {
  /** A flow with no traffic either way for this long is closed (default 60 s). */
  idleMs?: number;
  /** At most this many flows; the least recently used one makes room (default 256). */
  maxFlows?: number;
}

export class UdpNat {
  private readonly flows = new Map<number, Flow>();
  private readonly idleMs: number;
  private readonly maxFlows: number;
  private sweeper: NodeJS.Timeout | null = null;

  constructor(
    private readonly link: GuestLink,
    options: UdpNatOptions = {},
  ) {
    this.idleMs = options.idleMs ?? 60_000;
    this.maxFlows = options.maxFlows ?? 256;
  }

  get size(): number {
    return this.flows.size;
  }

  /** A datagram from the guest's `sport` to dst:dport. */
  input(dst: number, sport: number, dport: number, payload: Uint8Array): void {
    if (dport === 0) return;
    let flow = this.flows.get(sport);
    const now = Date.now();
    if (!flow) flow = this.open(sport, now);
    else {
      // Keep the map in least-recently-used order for eviction.
      this.flows.delete(sport);
      this.flows.set(sport, flow);
    }
    flow.lastUsed = now;
    flow.socket.send(Buffer.from(payload), dport, formatIpv4Address(hostAddressFor(dst, this.link.addresses.gateway)));
  }

  close(): void {
    for (const f of this.flows.values()) f.socket.close();
    this.flows.clear();
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  private open(guestPort: number, now: number): Flow {
    if (this.flows.size >= this.maxFlows) {
      const oldest = this.flows.keys().next().value!;
      this.drop(oldest);
    }
    const socket = dgram.createSocket("udp4");
    const flow: Flow = { guestPort, socket, lastUsed: now };
    socket.on("error", () => {});
    socket.on("message", (msg, rinfo) => {
      if (this.flows.get(guestPort) !== flow) return;
      let from: number;
      try {
        from = parseIpv4Address(rinfo.address);
      } catch {
        return;
      }
      flow.lastUsed = Date.now();
      this.link.emitUdp(guestAddressFor(from, this.link.addresses.gateway), rinfo.port, guestPort, msg);
    });
    this.flows.set(guestPort, flow);
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.min(5000, this.idleMs / 2))).unref();
    }
    return flow;
  }

  private drop(guestPort: number): void {
    const f = this.flows.get(guestPort);
    if (!f) return;
    this.flows.delete(guestPort);
    f.socket.close();
  }

  private sweep(): void {
    const limit = Date.now() - this.idleMs;
    for (const f of this.flows.values()) if (f.lastUsed <= limit) this.drop(f.guestPort);
    if (this.flows.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }
}

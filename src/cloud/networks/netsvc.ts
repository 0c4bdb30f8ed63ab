/**
 * The services of a project's private network, run by the cloud daemon on its own port of the
 * network's switch (as a DHCP agent does in other clouds): a DHCP server that hands every instance
 * the address the database assigned to its MAC, and the gateway address (.1) answering ARP and
 * ping. Networks are separate switches, so projects cannot see each other's traffic.
 */
import { join } from "node:path";
import { joinNetwork, type NetworkLink } from "../../net/hub.js";
import {
  dhcpServerReply,
  DHCP_CLIENT_PORT,
  DHCP_FLAG_BROADCAST,
  DHCP_NAK,
  DHCP_SERVER_PORT,
  parseDhcp,
} from "../../net/dhcp.js";
import {
  ARP_REPLY,
  ARP_REQUEST,
  BROADCAST_MAC,
  buildArp,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  formatMac,
  parseArp,
  parseMac,
  stableMac,
} from "../../net/ethernet.js";
import {
  buildIcmpEchoFrame,
  buildUdpFrame,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  parseIcmp,
  parseIpv4,
  parseUdp,
  PROTO_ICMP,
  PROTO_UDP,
} from "../../net/ip.js";

export const LEASE_SECONDS = 86_400;

interface Served {
  link: NetworkLink;
  gateway: number;
  mask: number;
  mac: Uint8Array;
  /** MAC (aa:bb:...) → IPv4 address. */
  leases: Map<string, number>;
}

export class NetworkServices {
  private readonly nets = new Map<string, Promise<Served>>();

  constructor(private readonly yunHome: string) {}

  /** Joins network `id` (once) and serves it with `leases`; later calls replace the leases. */
  async serve(id: string, cidr: { base: number; prefix: number }, leases: Map<string, number>): Promise<void> {
    let p = this.nets.get(id);
    if (!p) {
      p = this.start(id, cidr);
      this.nets.set(id, p);
      p.catch(() => this.nets.delete(id));
    }
    const s = await p;
    s.leases = leases;
  }

  private async start(id: string, cidr: { base: number; prefix: number }): Promise<Served> {
    const link = await joinNetwork(id, join(this.yunHome, "net"));
    const s: Served = {
      link,
      gateway: (cidr.base + 1) >>> 0,
      mask: cidr.prefix === 0 ? 0 : (0xffffffff << (32 - cidr.prefix)) >>> 0,
      mac: parseMac(stableMac(`yun-network-gateway:${id}`)),
      leases: new Map(),
    };
    link.attach((frame) => {
      try {
        this.input(s, frame);
      } catch {}
      return true;
    });
    return s;
  }

  /** Stops serving network `id` (it was deleted). */
  async stop(id: string): Promise<void> {
    const p = this.nets.get(id);
    if (!p) return;
    this.nets.delete(id);
    try {
      (await p).link.close();
    } catch {}
  }

  close(): void {
    for (const id of [...this.nets.keys()]) void this.stop(id);
  }

  private input(s: Served, frame: Uint8Array): void {
    if (frame.length < ETH_HLEN) return;
    const type = (frame[12] << 8) | frame[13];
    if (type === ETHERTYPE_ARP) {
      const arp = parseArp(frame);
      if (arp && arp.op === ARP_REQUEST && arp.targetIp === s.gateway) {
        s.link.send(buildArp(ARP_REPLY, s.mac, s.gateway, parseMac(arp.senderMac), arp.senderIp));
      }
      return;
    }
    if (type !== ETHERTYPE_IPV4) return;
    const ip = parseIpv4(frame);
    if (!ip) return;
    if (ip.proto === PROTO_UDP) {
      const udp = parseUdp(frame, ip);
      if (!udp || udp.dport !== DHCP_SERVER_PORT || udp.sport !== DHCP_CLIENT_PORT) return;
      if (ip.dst !== 0xffffffff && ip.dst !== s.gateway) return;
      this.dhcp(s, udp.payload);
    } else if (ip.proto === PROTO_ICMP && ip.dst === s.gateway) {
      const icmp = parseIcmp(frame, ip);
      if (!icmp || icmp.type !== ICMP_ECHO_REQUEST) return;
      const a = { srcMac: s.mac, dstMac: frame.subarray(6, 12), src: s.gateway, dst: ip.src };
      s.link.send(buildIcmpEchoFrame(a, ICMP_ECHO_REPLY, icmp.id, icmp.seq, icmp.payload));
    }
  }

  private dhcp(s: Served, payload: Uint8Array): void {
    const msg = parseDhcp(payload);
    if (!msg) return;
    const address = s.leases.get(formatMac(msg.chaddr));
    if (address === undefined) return; // not an instance of this network: stay silent
    const reply = dhcpServerReply(msg, {
      address,
      mask: s.mask,
      router: s.gateway,
      dns: s.gateway,
      server: s.gateway,
      leaseSeconds: LEASE_SECONDS,
    });
    if (!reply) return;
    let dstMac: Uint8Array = msg.chaddr.subarray(0, 6);
    let dst = address;
    if (msg.ciaddr !== 0 && reply.type !== DHCP_NAK) dst = msg.ciaddr;
    else if (reply.type === DHCP_NAK || msg.flags & DHCP_FLAG_BROADCAST) {
      dstMac = BROADCAST_MAC;
      dst = 0xffffffff;
    }
    s.link.send(
      buildUdpFrame({ srcMac: s.mac, dstMac, src: s.gateway, dst }, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, reply.payload),
    );
  }
}

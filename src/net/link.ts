/**
 * The addresses of user-mode networking (QEMU's slirp conventions) and the narrow interface its
 * UDP and TCP parts use to put IPv4 packets on the guest's wire.
 *
 * The default network is slirp's 10.0.2.0/24 with the guest at .15; a VM may be given another
 * guest address and prefix (`yun run --net-address`), and then its gateway is the network's .2
 * and its DNS server .3, as in the default.
 */
import { formatIpv4Address, parseIpv4Address } from "./ip.js";

export const NETWORK_IP = 0x0a000200; // 10.0.2.0
export const NETMASK = 0xffffff00; // /24
export const GATEWAY_IP = 0x0a000202; // 10.0.2.2, also the host's loopback as the guest sees it
export const DNS_IP = 0x0a000203; // 10.0.2.3
export const GUEST_IP = 0x0a00020f; // 10.0.2.15, what DHCP hands out
export const LOOPBACK_IP = 0x7f000001; // 127.0.0.1
/** The gateway's MAC is QEMU's: 52:55 then the gateway's IPv4 address. */
export const GATEWAY_MAC: Uint8Array = Uint8Array.of(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02);
export const MTU = 1500;

/** The metadata service's address (link-local, as on OpenStack and EC2). */
export const METADATA_IP = 0xa9fea9fe; // 169.254.169.254

/** The addresses of one user-mode network. */
export interface UserNetAddresses {
  network: number;
  netmask: number;
  prefix: number;
  gateway: number;
  dns: number;
  /** The guest's address, which DHCP hands out. */
  guest: number;
}

export const DEFAULT_ADDRESSES: Readonly<UserNetAddresses> = Object.freeze({
  network: NETWORK_IP,
  netmask: NETMASK,
  prefix: 24,
  gateway: GATEWAY_IP,
  dns: DNS_IP,
  guest: GUEST_IP,
});

/**
 * The network of a guest address in CIDR form ("10.0.7.15/16"): gateway .2 and DNS .3 of its
 * network. Throws one sentence when the address cannot be a guest's.
 */
export function userNetAddresses(cidr: string): UserNetAddresses {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(cidr.trim());
  if (!m) throw new Error(`invalid guest address ${cidr}: expected an IPv4 address with its prefix, e.g. 10.0.2.15/24`);
  let guest: number;
  try {
    guest = parseIpv4Address(m[1]);
  } catch {
    throw new Error(`invalid guest address ${cidr}: ${m[1]} is not an IPv4 address`);
  }
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 29) throw new Error(`invalid guest address ${cidr}: the prefix must be 8-29`);
  const netmask = (0xffffffff << (32 - prefix)) >>> 0;
  const network = (guest & netmask) >>> 0;
  const broadcast = (network | ~netmask) >>> 0;
  const top = guest >>> 24;
  if (top === 0 || top === 127 || top >= 224 || guest >>> 16 === 0xa9fe) {
    throw new Error(`invalid guest address ${cidr}: ${m[1]} is not a unicast address a guest can have`);
  }
  const a: UserNetAddresses = { network, netmask, prefix, gateway: network + 2, dns: network + 3, guest };
  if (guest === network || guest === broadcast || guest === a.gateway || guest === a.dns) {
    throw new Error(
      `invalid guest address ${cidr}: ${m[1]} is the network's own (network, broadcast, gateway .2 or DNS .3)`,
    );
  }
  return a;
}

/** "10.0.2.15/24" */
export function formatGuestCidr(a: UserNetAddresses): string {
  return `${formatIpv4Address(a.guest)}/${a.prefix}`;
}

export function inGuestNetwork(addr: number, a: UserNetAddresses = DEFAULT_ADDRESSES): boolean {
  return (addr & a.netmask) >>> 0 === a.network;
}

/** Where the guest's packets to `addr` go on the host: the gateway (10.0.2.2) is the host itself. */
export function hostAddressFor(addr: number, gateway = GATEWAY_IP): number {
  return addr === gateway ? LOOPBACK_IP : addr;
}

/** How a host address appears to the guest: the host's loopback is the gateway (10.0.2.2). */
export function guestAddressFor(addr: number, gateway = GATEWAY_IP): number {
  return addr >>> 24 === 127 ? gateway : addr;
}

export interface GuestLink {
  /**
   * The shared outgoing frame buffer. A sender writes its IPv4 payload at L4_OFF and then calls
   * emitIpv4, which adds the Ethernet and IPv4 headers and hands the frame to the guest.
   */
  readonly tx: Buffer;
  /** False when the frame did not reach the guest (no MAC known yet, no receive buffer): a loss. */
  emitIpv4(proto: number, src: number, dst: number, payloadLength: number): boolean;
  /** Sends a UDP datagram to the guest, fragmenting it when it does not fit the MTU. */
  emitUdp(src: number, sport: number, dport: number, payload: Uint8Array): void;
  /** The guest's IPv4 address (learned from its packets; the assigned one until then). */
  readonly guestIp: number;
  /** The network's addresses (gateway, DNS, the assigned guest address). */
  readonly addresses: Readonly<UserNetAddresses>;
  /** A guest is attached and its MAC is known: a failed emit means it had no room, worth a quick retry. */
  readonly ready: boolean;
}

/**
 * The addresses of user-mode networking (QEMU's slirp conventions) and the narrow interface its
 * UDP and TCP parts use to put IPv4 packets on the guest's wire.
 */
export const NETWORK_IP = 0x0a000200; // 10.0.2.0
export const NETMASK = 0xffffff00; // /24
export const GATEWAY_IP = 0x0a000202; // 10.0.2.2, also the host's loopback as the guest sees it
export const DNS_IP = 0x0a000203; // 10.0.2.3
export const GUEST_IP = 0x0a00020f; // 10.0.2.15, what DHCP hands out
export const LOOPBACK_IP = 0x7f000001; // 127.0.0.1
/** The gateway's MAC is QEMU's: 52:55 then the gateway's IPv4 address. */
export const GATEWAY_MAC: Uint8Array = Uint8Array.of(0x52, 0x55, 0x0a, 0x00, 0x02, 0x02);
export const MTU = 1500;

export function inGuestNetwork(addr: number): boolean {
  return (addr & NETMASK) >>> 0 === NETWORK_IP;
}

/** Where the guest's packets to `addr` go on the host: 10.0.2.2 is the host itself. */
export function hostAddressFor(addr: number): number {
  return addr === GATEWAY_IP ? LOOPBACK_IP : addr;
}

/** How a host address appears to the guest: the host's loopback is 10.0.2.2. */
export function guestAddressFor(addr: number): number {
  return addr >>> 24 === 127 ? GATEWAY_IP : addr;
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
  /** The guest's IPv4 address (learned from its packets; 10.0.2.15 until then). */
  readonly guestIp: number;
  /** A guest is attached and its MAC is known: a failed emit means it had no room, worth a quick retry. */
  readonly ready: boolean;
}

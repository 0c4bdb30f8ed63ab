/**
 * IPv4, UDP, TCP and ICMP: addresses, the Internet checksum, header writers that fill a caller's
 * buffer (hot paths), and parsers/builders that allocate (slow paths and tests).
 *
 * Addresses are unsigned 32-bit numbers (10.0.2.15 is 0x0a00020f).
 */
import { ETH_HLEN, ETHERTYPE_IPV4, writeEthernet } from "./ethernet.js";

export const IPV4_HLEN = 20;
export const UDP_HLEN = 8;
export const TCP_HLEN = 20;
export const ICMP_HLEN = 8;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const ICMP_ECHO_REPLY = 0;
export const ICMP_ECHO_REQUEST = 8;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

/** Offsets of the headers in a frame that carries IPv4 without options. */
export const IP_OFF = ETH_HLEN;
export const L4_OFF = ETH_HLEN + IPV4_HLEN;

export function parseIpv4Address(text: string): number {
  const parts = text.trim().split(".");
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new Error(`invalid IPv4 address "${text}": expected four numbers 0-255 like 10.0.2.15`);
  }
  return ((+parts[0] << 24) | (+parts[1] << 16) | (+parts[2] << 8) | +parts[3]) >>> 0;
}

export function formatIpv4Address(addr: number): string {
  return `${addr >>> 24}.${(addr >>> 16) & 0xff}.${(addr >>> 8) & 0xff}.${addr & 0xff}`;
}

export function readU16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

export function readU32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

export function writeU16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

export function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** Adds the big-endian 16-bit words of buf[start, end) to `sum` (not folded; an odd tail is padded). */
export function sumWords(buf: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  const last = end - 1;
  for (; i < last; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (i < end) sum += buf[i] << 8;
  return sum;
}

/** Folds a word sum to 16 bits and complements it: the value that goes into a checksum field. */
export function foldChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** RFC 1071 Internet checksum of buf[start, end). Over data that includes a correct checksum it is 0. */
export function internetChecksum(buf: Uint8Array, start: number, end: number, initial = 0): number {
  return foldChecksum(sumWords(buf, start, end, initial));
}

/** The TCP/UDP pseudo-header's contribution to the checksum sum. */
export function pseudoHeaderSum(src: number, dst: number, proto: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + length;
}

/**
 * Writes a 20-byte IPv4 header at `off` with its checksum; `fragment` is the flags+offset field
 * (default: don't fragment). Returns the offset of the payload.
 */
export function writeIpv4Header(
  buf: Uint8Array,
  off: number,
  proto: number,
  src: number,
  dst: number,
  payloadLength: number,
  id: number,
  ttl = 64,
  fragment = 0x4000,
): number {
  buf[off] = 0x45;
  buf[off + 1] = 0;
  writeU16(buf, off + 2, IPV4_HLEN + payloadLength);
  writeU16(buf, off + 4, id & 0xffff);
  writeU16(buf, off + 6, fragment);
  buf[off + 8] = ttl;
  buf[off + 9] = proto;
  buf[off + 10] = 0;
  buf[off + 11] = 0;
  writeU32(buf, off + 12, src);
  writeU32(buf, off + 16, dst);
  writeU16(buf, off + 10, internetChecksum(buf, off, off + IPV4_HLEN));
  return off + IPV4_HLEN;
}

/** Writes a UDP header at `off` for the payload already at off+8, with its checksum. */
export function writeUdpHeader(
  buf: Uint8Array,
  off: number,
  src: number,
  dst: number,
  sport: number,
  dport: number,
  payloadLength: number,
): number {
  const len = UDP_HLEN + payloadLength;
  writeU16(buf, off, sport);
  writeU16(buf, off + 2, dport);
  writeU16(buf, off + 4, len);
  buf[off + 6] = 0;
  buf[off + 7] = 0;
  const c = internetChecksum(buf, off, off + len, pseudoHeaderSum(src, dst, PROTO_UDP, len));
  writeU16(buf, off + 6, c === 0 ? 0xffff : c);
  return off + UDP_HLEN;
}

/**
 * Writes a TCP header at `off`; `optionsLength` bytes of options (a multiple of 4) must already be
 * at off+20 and the payload after them. Computes the checksum over all of it.
 */
export function writeTcpHeader(
  buf: Uint8Array,
  off: number,
  src: number,
  dst: number,
  sport: number,
  dport: number,
  seq: number,
  ack: number,
  flags: number,
  window: number,
  optionsLength: number,
  payloadLength: number,
): number {
  const hlen = TCP_HLEN + optionsLength;
  writeU16(buf, off, sport);
  writeU16(buf, off + 2, dport);
  writeU32(buf, off + 4, seq >>> 0);
  writeU32(buf, off + 8, ack >>> 0);
  buf[off + 12] = (hlen >>> 2) << 4;
  buf[off + 13] = flags;
  writeU16(buf, off + 14, window);
  buf[off + 16] = 0;
  buf[off + 17] = 0;
  buf[off + 18] = 0;
  buf[off + 19] = 0;
  const len = hlen + payloadLength;
  writeU16(buf, off + 16, internetChecksum(buf, off, off + len, pseudoHeaderSum(src, dst, PROTO_TCP, len)));
  return off + hlen;
}

/** Writes TCP SYN options (MSS, and window scale when `wscale` >= 0); returns their padded length. */
export function writeTcpSynOptions(buf: Uint8Array, off: number, mss: number, wscale: number): number {
  buf[off] = 2;
  buf[off + 1] = 4;
  writeU16(buf, off + 2, mss);
  if (wscale < 0) return 4;
  buf[off + 4] = 1;
  buf[off + 5] = 3;
  buf[off + 6] = 3;
  buf[off + 7] = wscale;
  return 8;
}

/** Reads MSS and window scale from TCP options in buf[start, end); -1 for absent ones. */
export function readTcpSynOptions(buf: Uint8Array, start: number, end: number): { mss: number; wscale: number } {
  let mss = -1;
  let wscale = -1;
  let i = start;
  while (i < end) {
    const kind = buf[i];
    if (kind === 0) break;
    if (kind === 1) {
      i++;
      continue;
    }
    if (i + 1 >= end) break;
    const len = buf[i + 1];
    if (len < 2 || i + len > end) break;
    if (kind === 2 && len === 4) mss = readU16(buf, i + 2);
    else if (kind === 3 && len === 3) wscale = Math.min(buf[i + 2], 14);
    i += len;
  }
  return { mss, wscale };
}

export interface Ipv4Header {
  src: number;
  dst: number;
  proto: number;
  ttl: number;
  id: number;
  headerLength: number;
  totalLength: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** In bytes. */
  fragmentOffset: number;
  checksumOk: boolean;
  /** Offset of the IP payload in the buffer given to parseIpv4. */
  payloadOffset: number;
  /** Offset just past the IP packet (frames may carry Ethernet padding after it). */
  end: number;
}

/** Parses the IPv4 header at `offset`; null if the bytes there are not a well-formed IPv4 packet. */
export function parseIpv4(buf: Uint8Array, offset = IP_OFF): Ipv4Header | null {
  if (buf.length < offset + IPV4_HLEN || buf[offset] >>> 4 !== 4) return null;
  const headerLength = (buf[offset] & 0x0f) * 4;
  const totalLength = readU16(buf, offset + 2);
  if (headerLength < IPV4_HLEN || totalLength < headerLength || offset + totalLength > buf.length) return null;
  const frag = readU16(buf, offset + 6);
  return {
    src: readU32(buf, offset + 12),
    dst: readU32(buf, offset + 16),
    proto: buf[offset + 9],
    ttl: buf[offset + 8],
    id: readU16(buf, offset + 4),
    headerLength,
    totalLength,
    dontFragment: (frag & 0x4000) !== 0,
    moreFragments: (frag & 0x2000) !== 0,
    fragmentOffset: (frag & 0x1fff) * 8,
    checksumOk: internetChecksum(buf, offset, offset + headerLength) === 0,
    payloadOffset: offset + headerLength,
    end: offset + totalLength,
  };
}

export interface UdpDatagram {
  sport: number;
  dport: number;
  checksumOk: boolean;
  payload: Uint8Array;
}

export function parseUdp(buf: Uint8Array, ip: Ipv4Header): UdpDatagram | null {
  const o = ip.payloadOffset;
  if (ip.proto !== PROTO_UDP || ip.end - o < UDP_HLEN) return null;
  const len = readU16(buf, o + 4);
  if (len < UDP_HLEN || o + len > ip.end) return null;
  const stored = readU16(buf, o + 6);
  const checksumOk =
    stored === 0 || internetChecksum(buf, o, o + len, pseudoHeaderSum(ip.src, ip.dst, PROTO_UDP, len)) === 0;
  return {
    sport: readU16(buf, o),
    dport: readU16(buf, o + 2),
    checksumOk,
    payload: buf.subarray(o + UDP_HLEN, o + len),
  };
}

export interface TcpSegment {
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** -1 when the segment carries no such option. */
  mss: number;
  wscale: number;
  checksumOk: boolean;
  payload: Uint8Array;
}

export function parseTcp(buf: Uint8Array, ip: Ipv4Header): TcpSegment | null {
  const o = ip.payloadOffset;
  if (ip.proto !== PROTO_TCP || ip.end - o < TCP_HLEN) return null;
  const hlen = (buf[o + 12] >>> 4) * 4;
  if (hlen < TCP_HLEN || o + hlen > ip.end) return null;
  const len = ip.end - o;
  const { mss, wscale } = readTcpSynOptions(buf, o + TCP_HLEN, o + hlen);
  return {
    sport: readU16(buf, o),
    dport: readU16(buf, o + 2),
    seq: readU32(buf, o + 4),
    ack: readU32(buf, o + 8),
    flags: buf[o + 13],
    window: readU16(buf, o + 14),
    mss,
    wscale,
    checksumOk: internetChecksum(buf, o, o + len, pseudoHeaderSum(ip.src, ip.dst, PROTO_TCP, len)) === 0,
    payload: buf.subarray(o + hlen, ip.end),
  };
}

export interface IcmpMessage {
  type: number;
  code: number;
  /** Identifier and sequence number of echo messages. */
  id: number;
  seq: number;
  checksumOk: boolean;
  payload: Uint8Array;
}

export function parseIcmp(buf: Uint8Array, ip: Ipv4Header): IcmpMessage | null {
  const o = ip.payloadOffset;
  if (ip.proto !== PROTO_ICMP || ip.end - o < ICMP_HLEN) return null;
  return {
    type: buf[o],
    code: buf[o + 1],
    id: readU16(buf, o + 4),
    seq: readU16(buf, o + 6),
    checksumOk: internetChecksum(buf, o, ip.end) === 0,
    payload: buf.subarray(o + ICMP_HLEN, ip.end),
  };
}

/** Link and network addresses of a frame to build. */
export interface FrameAddresses {
  srcMac: Uint8Array;
  dstMac: Uint8Array;
  src: number;
  dst: number;
}

export interface TcpSpec {
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** SYN options: MSS, and window scale when `wscale` is given. */
  mss?: number;
  wscale?: number;
  payload?: Uint8Array;
}

let buildId = 1;

function ipv4Frame(a: FrameAddresses, proto: number, l4Length: number): Uint8Array {
  const frame = new Uint8Array(L4_OFF + l4Length);
  writeEthernet(frame, a.dstMac, a.srcMac, ETHERTYPE_IPV4);
  writeIpv4Header(frame, IP_OFF, proto, a.src, a.dst, l4Length, buildId++);
  return frame;
}

export function buildUdpFrame(a: FrameAddresses, sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const frame = ipv4Frame(a, PROTO_UDP, UDP_HLEN + payload.length);
  frame.set(payload, L4_OFF + UDP_HLEN);
  writeUdpHeader(frame, L4_OFF, a.src, a.dst, sport, dport, payload.length);
  return frame;
}

export function buildTcpFrame(a: FrameAddresses, s: TcpSpec): Uint8Array {
  const payload = s.payload ?? new Uint8Array(0);
  const optLen = s.mss === undefined ? 0 : s.wscale === undefined ? 4 : 8;
  const frame = ipv4Frame(a, PROTO_TCP, TCP_HLEN + optLen + payload.length);
  if (s.mss !== undefined) writeTcpSynOptions(frame, L4_OFF + TCP_HLEN, s.mss, s.wscale ?? -1);
  frame.set(payload, L4_OFF + TCP_HLEN + optLen);
  writeTcpHeader(
    frame,
    L4_OFF,
    a.src,
    a.dst,
    s.sport,
    s.dport,
    s.seq,
    s.ack,
    s.flags,
    s.window,
    optLen,
    payload.length,
  );
  return frame;
}

/** Writes an ICMP header (with checksum) at `off` for the payload already after it. */
export function writeIcmpHeader(
  buf: Uint8Array,
  off: number,
  type: number,
  code: number,
  id: number,
  seq: number,
  payloadLength: number,
): number {
  buf[off] = type;
  buf[off + 1] = code;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  writeU16(buf, off + 4, id);
  writeU16(buf, off + 6, seq);
  writeU16(buf, off + 2, internetChecksum(buf, off, off + ICMP_HLEN + payloadLength));
  return off + ICMP_HLEN;
}

export function buildIcmpEchoFrame(
  a: FrameAddresses,
  type: number,
  id: number,
  seq: number,
  payload: Uint8Array,
): Uint8Array {
  const frame = ipv4Frame(a, PROTO_ICMP, ICMP_HLEN + payload.length);
  frame.set(payload, L4_OFF + ICMP_HLEN);
  writeIcmpHeader(frame, L4_OFF, type, 0, id, seq, payload.length);
  return frame;
}

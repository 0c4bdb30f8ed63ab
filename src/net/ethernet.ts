/**
 * Ethernet II and ARP: MAC address helpers, header readers and writers.
 *
 * Writers put headers into a caller's buffer at an offset so that hot paths reuse one frame
 * buffer; the `build*` functions allocate a fresh frame and exist for slow paths and tests.
 */
import { createHash } from "node:crypto";

export const ETH_HLEN = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ARP_REQUEST = 1;
export const ARP_REPLY = 2;
/** Length of an Ethernet/IPv4 ARP packet (without the Ethernet header). */
export const ARP_LEN = 28;

export const BROADCAST_MAC: Uint8Array = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
const ZERO_MAC = new Uint8Array(6);

/**
 * A copy of bytes [start, end) as a plain Uint8Array. (Buffer's slice() returns a view, so code
 * that may be handed a Buffer copies with this.)
 */
export function copyBytes(src: Uint8Array, start = 0, end = src.length): Uint8Array {
  return new Uint8Array(src.subarray(start, end));
}

/** A MAC address in text form, e.g. "52:54:00:12:34:56" (a dash also separates). */
export function parseMac(text: string): Uint8Array {
  const m =
    /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(
      text.trim(),
    );
  if (!m) throw new Error(`invalid MAC address "${text}": expected six hex bytes like 52:54:00:12:34:56`);
  const out = new Uint8Array(6);
  for (let i = 0; i < 6; i++) out[i] = parseInt(m[i + 1], 16);
  return out;
}

export function formatMac(bytes: Uint8Array, offset = 0): string {
  let s = "";
  for (let i = 0; i < 6; i++) {
    if (i) s += ":";
    s += bytes[offset + i].toString(16).padStart(2, "0");
  }
  return s;
}

/**
 * A unicast MAC in QEMU's locally administered 52:54:00 range whose last three bytes come from a
 * hash of `seed` (e.g. a VM's id), so a VM keeps its MAC across reboots and two VMs rarely collide.
 */
export function stableMac(seed: string): string {
  const h = createHash("sha256").update("yun-mac\0").update(seed).digest();
  return formatMac(Uint8Array.of(0x52, 0x54, 0x00, h[0], h[1], h[2]));
}

/** The 48-bit address as an exact JS number: a Map key without allocating a string. */
export function macKey(bytes: Uint8Array, offset: number): number {
  return (
    ((bytes[offset] << 8) | bytes[offset + 1]) * 0x1_0000_0000 +
    (((bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) | (bytes[offset + 4] << 8) | bytes[offset + 5]) >>> 0)
  );
}

/** Group bit set: multicast, including broadcast. */
export function isMulticastMac(bytes: Uint8Array, offset = 0): boolean {
  return (bytes[offset] & 1) !== 0;
}

export function isBroadcastMac(bytes: Uint8Array, offset = 0): boolean {
  return (
    (bytes[offset] &
      bytes[offset + 1] &
      bytes[offset + 2] &
      bytes[offset + 3] &
      bytes[offset + 4] &
      bytes[offset + 5]) ===
    0xff
  );
}

export function macEquals(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number): boolean {
  for (let i = 0; i < 6; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

export interface EthernetHeader {
  dst: string;
  src: string;
  type: number;
}

/** Returns null for a frame too short to hold an Ethernet header. */
export function parseEthernet(frame: Uint8Array): EthernetHeader | null {
  if (frame.length < ETH_HLEN) return null;
  return { dst: formatMac(frame, 0), src: formatMac(frame, 6), type: (frame[12] << 8) | frame[13] };
}

/** Writes the 14-byte header at offset 0; returns the offset of the payload. */
export function writeEthernet(buf: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): number {
  buf.set(dst, 0);
  buf.set(src, 6);
  buf[12] = type >>> 8;
  buf[13] = type & 0xff;
  return ETH_HLEN;
}

export function buildEthernet(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(ETH_HLEN + payload.length);
  writeEthernet(frame, dst, src, type);
  frame.set(payload, ETH_HLEN);
  return frame;
}

export interface ArpPacket {
  op: number;
  senderMac: string;
  senderIp: number;
  targetMac: string;
  targetIp: number;
}

function readU32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** Parses an Ethernet/IPv4 ARP packet at `offset`; null if it is not one. */
export function parseArp(buf: Uint8Array, offset = ETH_HLEN): ArpPacket | null {
  if (buf.length < offset + ARP_LEN) return null;
  const htype = (buf[offset] << 8) | buf[offset + 1];
  const ptype = (buf[offset + 2] << 8) | buf[offset + 3];
  if (htype !== 1 || ptype !== ETHERTYPE_IPV4 || buf[offset + 4] !== 6 || buf[offset + 5] !== 4) return null;
  return {
    op: (buf[offset + 6] << 8) | buf[offset + 7],
    senderMac: formatMac(buf, offset + 8),
    senderIp: readU32(buf, offset + 14),
    targetMac: formatMac(buf, offset + 18),
    targetIp: readU32(buf, offset + 24),
  };
}

/** Writes an ARP packet at `offset`; returns the offset after it. */
export function writeArp(
  buf: Uint8Array,
  offset: number,
  op: number,
  senderMac: Uint8Array,
  senderIp: number,
  targetMac: Uint8Array,
  targetIp: number,
): number {
  buf[offset] = 0;
  buf[offset + 1] = 1;
  buf[offset + 2] = 0x08;
  buf[offset + 3] = 0x00;
  buf[offset + 4] = 6;
  buf[offset + 5] = 4;
  buf[offset + 6] = 0;
  buf[offset + 7] = op;
  buf.set(senderMac, offset + 8);
  writeU32(buf, offset + 14, senderIp);
  buf.set(targetMac, offset + 18);
  writeU32(buf, offset + 24, targetIp);
  return offset + ARP_LEN;
}

/** A whole ARP frame; a request goes to broadcast with a zero target MAC. */
export function buildArp(
  op: number,
  senderMac: Uint8Array,
  senderIp: number,
  targetMac: Uint8Array | null,
  targetIp: number,
): Uint8Array {
  const frame = new Uint8Array(ETH_HLEN + ARP_LEN);
  writeEthernet(frame, targetMac && op === ARP_REPLY ? targetMac : BROADCAST_MAC, senderMac, ETHERTYPE_ARP);
  writeArp(frame, ETH_HLEN, op, senderMac, senderIp, targetMac ?? ZERO_MAC, targetIp);
  return frame;
}

/**
 * DHCP (RFC 2131) messages: the BOOTP layout with the options that a small server and a client
 * such as busybox udhcpc exchange.
 */
import { copyBytes } from "./ethernet.js";
import { readU32, writeU16, writeU32 } from "./ip.js";

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;

export const DHCP_DISCOVER = 1;
export const DHCP_OFFER = 2;
export const DHCP_REQUEST = 3;
export const DHCP_DECLINE = 4;
export const DHCP_ACK = 5;
export const DHCP_NAK = 6;
export const DHCP_RELEASE = 7;
export const DHCP_INFORM = 8;

export const OPT_SUBNET_MASK = 1;
export const OPT_ROUTER = 3;
export const OPT_DNS = 6;
export const OPT_DOMAIN_NAME = 15;
export const OPT_BROADCAST = 28;
export const OPT_REQUESTED_IP = 50;
export const OPT_LEASE_TIME = 51;
export const OPT_MESSAGE_TYPE = 53;
export const OPT_SERVER_ID = 54;
export const OPT_PARAMETER_LIST = 55;
export const OPT_END = 255;

const BOOTREQUEST = 1;
const BOOTREPLY = 2;
const MAGIC = 0x63825363;
const FIXED_LEN = 236;
const OPTIONS_OFF = 240;
/** Some clients discard BOOTP messages shorter than this. */
const MIN_LEN = 300;
/** The broadcast bit of the flags field: the client cannot receive unicast before it is configured. */
export const DHCP_FLAG_BROADCAST = 0x8000;

export interface DhcpMessage {
  op: "request" | "reply";
  xid: number;
  flags: number;
  ciaddr: number;
  yiaddr: number;
  siaddr: number;
  chaddr: Uint8Array;
  /** DHCP message type (option 53); 0 for plain BOOTP. */
  type: number;
  options: Map<number, Uint8Array>;
}

/** Parses a BOOTP/DHCP message (a UDP payload); null if it is not one. */
export function parseDhcp(payload: Uint8Array): DhcpMessage | null {
  if (payload.length < OPTIONS_OFF || payload[1] !== 1 || payload[2] !== 6) return null;
  if (payload[0] !== BOOTREQUEST && payload[0] !== BOOTREPLY) return null;
  if (readU32(payload, FIXED_LEN) !== MAGIC) return null;
  const options = new Map<number, Uint8Array>();
  let i = OPTIONS_OFF;
  while (i < payload.length) {
    const code = payload[i];
    if (code === OPT_END) break;
    if (code === 0) {
      i++;
      continue;
    }
    if (i + 1 >= payload.length) return null;
    const len = payload[i + 1];
    if (i + 2 + len > payload.length) return null;
    options.set(code, copyBytes(payload, i + 2, i + 2 + len));
    i += 2 + len;
  }
  const t = options.get(OPT_MESSAGE_TYPE);
  return {
    op: payload[0] === BOOTREQUEST ? "request" : "reply",
    xid: readU32(payload, 4),
    flags: (payload[10] << 8) | payload[11],
    ciaddr: readU32(payload, 12),
    yiaddr: readU32(payload, 16),
    siaddr: readU32(payload, 20),
    chaddr: copyBytes(payload, 28, 34),
    type: t && t.length === 1 ? t[0] : 0,
    options,
  };
}

/** The first IPv4 address an option carries (router, DNS, server id, ...), or undefined. */
export function dhcpAddressOption(msg: DhcpMessage, code: number): number | undefined {
  const v = msg.options.get(code);
  return v && v.length >= 4 ? readU32(v, 0) : undefined;
}

export interface DhcpBuild {
  op: "request" | "reply";
  xid: number;
  flags?: number;
  ciaddr?: number;
  yiaddr?: number;
  siaddr?: number;
  chaddr: Uint8Array;
  type: number;
  /** Further options in order, each [code, value]. */
  options?: [number, Uint8Array][];
}

export function buildDhcp(m: DhcpBuild): Uint8Array {
  const opts = m.options ?? [];
  let len = OPTIONS_OFF + 3 + 1;
  for (const [, v] of opts) len += 2 + v.length;
  const out = new Uint8Array(Math.max(MIN_LEN, len));
  out[0] = m.op === "request" ? BOOTREQUEST : BOOTREPLY;
  out[1] = 1;
  out[2] = 6;
  writeU32(out, 4, m.xid);
  writeU16(out, 10, m.flags ?? 0);
  writeU32(out, 12, m.ciaddr ?? 0);
  writeU32(out, 16, m.yiaddr ?? 0);
  writeU32(out, 20, m.siaddr ?? 0);
  out.set(m.chaddr.subarray(0, 6), 28);
  writeU32(out, FIXED_LEN, MAGIC);
  let i = OPTIONS_OFF;
  out[i++] = OPT_MESSAGE_TYPE;
  out[i++] = 1;
  out[i++] = m.type;
  for (const [code, v] of opts) {
    out[i++] = code;
    out[i++] = v.length;
    out.set(v, i);
    i += v.length;
  }
  out[i] = OPT_END;
  return out;
}

export function ipOption(addr: number): Uint8Array {
  const b = new Uint8Array(4);
  writeU32(b, 0, addr);
  return b;
}

export function u32Option(value: number): Uint8Array {
  return ipOption(value);
}

/** What a DHCP server decides for one client message. */
export interface DhcpLease {
  address: number;
  mask: number;
  router: number;
  dns: number;
  server: number;
  leaseSeconds: number;
}

/**
 * The server's answer to a client message, or null when it must stay silent: OFFER for DISCOVER,
 * ACK for a REQUEST of the leased address, NAK for any other address, ACK without a lease for INFORM.
 * A REQUEST naming another server (it chose someone else's offer) gets no answer.
 */
export function dhcpServerReply(msg: DhcpMessage, lease: DhcpLease): { type: number; payload: Uint8Array } | null {
  if (msg.op !== "request") return null;
  const server = dhcpAddressOption(msg, OPT_SERVER_ID);
  let type: number;
  let yiaddr = lease.address;
  switch (msg.type) {
    case DHCP_DISCOVER:
      type = DHCP_OFFER;
      break;
    case DHCP_REQUEST: {
      if (server !== undefined && server !== lease.server) return null;
      const wanted = dhcpAddressOption(msg, OPT_REQUESTED_IP) ?? msg.ciaddr;
      type = wanted === lease.address ? DHCP_ACK : DHCP_NAK;
      break;
    }
    case DHCP_INFORM:
      type = DHCP_ACK;
      yiaddr = 0;
      break;
    default:
      return null;
  }
  const options: [number, Uint8Array][] = [[OPT_SERVER_ID, ipOption(lease.server)]];
  if (type !== DHCP_NAK) {
    if (msg.type !== DHCP_INFORM) options.push([OPT_LEASE_TIME, u32Option(lease.leaseSeconds)]);
    options.push(
      [OPT_SUBNET_MASK, ipOption(lease.mask)],
      [OPT_ROUTER, ipOption(lease.router)],
      [OPT_DNS, ipOption(lease.dns)],
      [OPT_BROADCAST, ipOption((lease.address | ~lease.mask) >>> 0)],
    );
  }
  const payload = buildDhcp({
    op: "reply",
    xid: msg.xid,
    flags: msg.flags,
    ciaddr: msg.type === DHCP_INFORM ? msg.ciaddr : 0,
    yiaddr: type === DHCP_NAK ? 0 : yiaddr,
    siaddr: lease.server,
    chaddr: msg.chaddr,
    type,
    options,
  });
  return { type, payload };
}

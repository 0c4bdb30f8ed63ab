/**
 * The DNS forwarder behind user-mode networking's 10.0.2.3: queries go to the host's nameservers
 * one after another; when none answers the guest gets SERVFAIL instead of silence.
 */
import dgram from "node:dgram";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";

export const DNS_PORT = 53;
export const DNS_SERVFAIL = 2;
const DNS_HLEN = 12;
const MAX_IN_FLIGHT = 512;

export interface DnsServer {
  address: string;
  port: number;
  family: 4 | 6;
}

/** "1.2.3.4", "1.2.3.4:5353", "::1" or "[::1]:5353". */
export function parseDnsServer(spec: string): DnsServer {
  const text = spec.trim();
  let address = text;
  let port = DNS_PORT;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracket) {
    address = bracket[1];
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else {
    const v4 = /^([\d.]+):(\d+)$/.exec(text);
    if (v4) {
      address = v4[1];
      port = Number(v4[2]);
    }
  }
  const family = isIP(address);
  if ((family !== 4 && family !== 6) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid DNS server "${spec}": expected an IP address with an optional port, like 1.1.1.1:53`);
  }
  return { address, port, family };
}

/** The `nameserver` entries of a resolv.conf text that are usable IP addresses. */
export function parseResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && isIP(m[1].replace(/%.*$/, ""))) out.push(m[1].replace(/%.*$/, ""));
  }
  return out;
}

/** The host's nameservers from /etc/resolv.conf; none if it is missing or unreadable. */
export function systemNameservers(path = "/etc/resolv.conf"): string[] {
  try {
    return parseResolvConf(readFileSync(path, "utf8"));
  } catch {
    return [];
  }
}

/**
 * An answer to `query` carrying only an error code: same id, the question echoed, no records.
 * Null when the query is too short to have an id.
 */
export function dnsErrorResponse(query: Uint8Array, rcode: number): Uint8Array | null {
  if (query.length < DNS_HLEN) return null;
  let end = DNS_HLEN;
  const qdcount = (query[4] << 8) | query[5];
  if (qdcount === 1) {
    let i = DNS_HLEN;
    while (i < query.length && query[i] !== 0 && (query[i] & 0xc0) === 0) i += query[i] + 1;
    end = i < query.length && query[i] === 0 && i + 5 <= query.length ? i + 5 : DNS_HLEN;
  }
  const out = new Uint8Array(end);
  out.set(query.subarray(0, end));
  out[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
  out[3] = 0x80 | (rcode & 0x0f); // RA
  out[4] = 0;
  out[5] = end > DNS_HLEN ? 1 : 0;
  out.fill(0, 6, 12);
  return out;
}

interface Pending {
  guestId: number;
  query: Buffer;
  reply: (response: Uint8Array) => void;
  server: number;
  timer: NodeJS.Timeout | null;
}

export class DnsForwarder {
  private readonly servers: DnsServer[];
  private sockets: (dgram.Socket | null)[] = [null, null];
  private readonly pending = new Map<number, Pending>();
  private nextId = (Math.random() * 0x10000) >>> 0;
  private closed = false;

  /** `servers` as for parseDnsServer; `timeoutMs` is how long each server gets to answer. */
  constructor(
    servers: string[],
    private readonly timeoutMs = 2000,
  ) {
    this.servers = servers.map(parseDnsServer);
  }

  /** The first nameserver, where DNS over TCP goes; undefined when there is none. */
  get primary(): DnsServer | undefined {
    return this.servers[0];
  }

  /** Forwards one query; `reply` is called exactly once, with the answer or a SERVFAIL. */
  query(payload: Uint8Array, reply: (response: Uint8Array) => void): void {
    if (payload.length < DNS_HLEN) return;
    if (this.closed || this.servers.length === 0 || this.pending.size >= MAX_IN_FLIGHT) {
      const fail = dnsErrorResponse(payload, DNS_SERVFAIL);
      if (fail) reply(fail);
      return;
    }
    let id = this.nextId;
    while (this.pending.has(id)) id = (id + 1) & 0xffff;
    this.nextId = (id + 1) & 0xffff;
    const query = Buffer.from(payload);
    const p: Pending = { guestId: (query[0] << 8) | query[1], query, reply, server: -1, timer: null };
    query[0] = id >>> 8;
    query[1] = id & 0xff;
    this.pending.set(id, p);
    this.tryNext(id, p);
  }

  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) if (p.timer) clearTimeout(p.timer);
    this.pending.clear();
    for (const s of this.sockets) s?.close();
    this.sockets = [null, null];
  }

  private tryNext(id: number, p: Pending): void {
    if (p.timer) clearTimeout(p.timer);
    p.timer = null;
    if (this.pending.get(id) !== p) return;
    p.server++;
    if (p.server >= this.servers.length) {
      this.pending.delete(id);
      const fail = dnsErrorResponse(this.restoreId(p, p.query), DNS_SERVFAIL);
      if (fail) p.reply(fail);
      return;
    }
    const server = this.servers[p.server];
    const tried = p.server;
    p.timer = setTimeout(() => this.tryNext(id, p), this.timeoutMs).unref();
    this.socket(server.family).send(p.query, server.port, server.address, (err) => {
      if (err && this.pending.get(id) === p && p.server === tried) this.tryNext(id, p);
    });
  }

  private restoreId(p: Pending, msg: Uint8Array): Uint8Array {
    msg[0] = p.guestId >>> 8;
    msg[1] = p.guestId & 0xff;
    return msg;
  }

  private socket(family: 4 | 6): dgram.Socket {
    const i = family === 4 ? 0 : 1;
    let s = this.sockets[i];
    if (!s) {
      s = dgram.createSocket(family === 4 ? "udp4" : "udp6");
      s.on("error", () => {});
      s.on("message", (msg, rinfo) => this.onMessage(msg, rinfo));
      this.sockets[i] = s;
    }
    return s;
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length < DNS_HLEN) return;
    const id = (msg[0] << 8) | msg[1];
    const p = this.pending.get(id);
    if (!p) return;
    const server = this.servers[p.server];
    if (rinfo.port !== server.port || rinfo.address !== server.address) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.reply(this.restoreId(p, msg));
  }
}

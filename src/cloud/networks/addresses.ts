/** IPv4 networks as numbers: parsing a CIDR (a 400 naming it when malformed) and printing an address. */
import { badRequest } from "../errors.js";

export function parseCidr(cidr: string): { base: number; prefix: number } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  if (!m) throw badRequest(`cidr "${cidr}" is not an IPv4 network like 10.1.0.0/24`);
  const parts = m.slice(1, 5).map(Number);
  if (parts.some((x) => x > 255)) throw badRequest(`cidr "${cidr}" has an octet above 255`);
  const prefix = Number(m[5]);
  if (prefix > 32) throw badRequest(`cidr "${cidr}": the prefix must be at most 32`);
  const addr = ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { base: (addr & mask) >>> 0, prefix };
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

/**
 * OpenSSH public key lines (`ssh-ed25519 AAAA... comment`), checked before a key pair is stored:
 * the key is written into guests' authorized_keys, so a line must be exactly one key of a known
 * type whose base64 blob parses as that type (RFC 4253 §6.6, RFC 5656 §3.1, PROTOCOL.u2f), of a
 * sane size, with no options prefix and no second line.
 */
import { createHash } from "node:crypto";

export interface SshPublicKey {
  type: string;
  /** Key size in bits (RSA: the modulus; ECDSA: the curve; Ed25519: 256). */
  bits: number;
  /** The line as stored: type, base64 blob and comment, single spaces. */
  line: string;
  /** SHA256:<base64 of the blob's SHA-256, unpadded>, as ssh-keygen -l prints it. */
  fingerprint: string;
}

const CURVES: Record<string, { bits: number; point: number }> = {
  nistp256: { bits: 256, point: 65 },
  nistp384: { bits: 384, point: 97 },
  nistp521: { bits: 521, point: 133 },
};
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 16384;
const SK_ED25519 = "sk-ssh-ed25519@openssh.com";
const SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com";
const KNOWN_TYPES = [
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  SK_ED25519,
  SK_ECDSA,
];

/** Reads the SSH wire format's length-prefixed strings; throws on a short buffer. */
class Wire {
  private at = 0;
  constructor(private readonly buf: Buffer) {}
  bytes(): Buffer {
    if (this.at + 4 > this.buf.length) throw new Error("the key data ends early");
    const n = this.buf.readUInt32BE(this.at);
    if (n > this.buf.length - this.at - 4) throw new Error("the key data ends early");
    const b = this.buf.subarray(this.at + 4, this.at + 4 + n);
    this.at += 4 + n;
    return b;
  }
  text(): string {
    return this.bytes().toString("latin1");
  }
  /** An mpint's size in bits (positive, minimal encoding). */
  mpintBits(): number {
    const b = this.bytes();
    if (b.length === 0 || (b[0] & 0x80) !== 0) throw new Error("an RSA number is zero or negative");
    let i = 0;
    while (i < b.length && b[i] === 0) i++;
    if (i > 1 || (i === 1 && (b.length === 1 || (b[1] & 0x80) === 0))) throw new Error("an RSA number is not minimal");
    if (i === b.length) throw new Error("an RSA number is zero");
    return (b.length - i) * 8 - Math.clz32(b[i]) + 24;
  }
  end(): void {
    if (this.at !== this.buf.length) throw new Error("the key data has trailing bytes");
  }
}

/**
 * Parses one public key line; throws an Error whose message says what is wrong (the caller adds
 * the field name).
 */
export function parseSshPublicKey(input: string): SshPublicKey {
  const text = input.trim();
  if (/[\r\n]/.test(text)) throw new Error("must be a single line (one key)");
  const m = /^(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(text);
  if (!m) throw new Error("must be an OpenSSH public key line (ssh-ed25519 AAAA... comment)");
  const [, type, b64, comment] = m;
  if (!KNOWN_TYPES.includes(type))
    throw new Error(
      `must be an OpenSSH public key line, and its type ${JSON.stringify(type)} is not one of ${KNOWN_TYPES.join(", ")} (options before the key are not accepted)`,
    );
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new Error("its key data is not base64");
  if (comment !== undefined && /[\x00-\x1f\x7f]/.test(comment)) throw new Error("its comment has control characters");
  const blob = Buffer.from(b64, "base64");
  const w = new Wire(blob);
  let embedded: string;
  try {
    embedded = w.text();
  } catch {
    throw new Error("its key data is too short to be a key");
  }
  if (embedded !== type) throw new Error(`its key data is a ${JSON.stringify(embedded)} key, not ${type}`);
  let bits: number;
  try {
    if (type === "ssh-ed25519" || type === SK_ED25519) {
      if (w.bytes().length !== 32) throw new Error("an Ed25519 key is 32 bytes");
      if (type === SK_ED25519) w.text(); // the security key's application ("ssh:")
      bits = 256;
    } else if (type === "ssh-rsa") {
      const e = w.mpintBits();
      bits = w.mpintBits();
      if (e > 64) throw new Error("its RSA exponent is implausibly large");
      if (bits < MIN_RSA_BITS) throw new Error(`an RSA key needs at least ${MIN_RSA_BITS} bits, this one has ${bits}`);
      if (bits > MAX_RSA_BITS)
        throw new Error(`an RSA key may have at most ${MAX_RSA_BITS} bits, this one has ${bits}`);
    } else if (/^ecdsa-sha2-nistp(256|384|521)$/.test(type) || type === SK_ECDSA) {
      const curve = type === SK_ECDSA ? "nistp256" : type.slice("ecdsa-sha2-".length);
      const named = w.text();
      if (named !== curve) throw new Error(`its key data names curve ${JSON.stringify(named)}, not ${curve}`);
      const point = w.bytes();
      if (point.length !== CURVES[curve].point || point[0] !== 4)
        throw new Error(`its ${curve} point is not an uncompressed point of ${CURVES[curve].point} bytes`);
      if (type === SK_ECDSA) w.text();
      bits = CURVES[curve].bits;
    } else {
      throw new Error(`its type ${JSON.stringify(type)} is not supported`); // unreachable: KNOWN_TYPES
    }
    w.end();
  } catch (e) {
    const msg = (e as Error).message;
    throw new Error(msg.startsWith("its ") || msg.startsWith("an ") ? msg : `its key data is not valid: ${msg}`);
  }
  const fingerprint = "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
  const line = comment !== undefined && comment.trim() !== "" ? `${type} ${b64} ${comment.trim()}` : `${type} ${b64}`;
  return { type, bits, line, fingerprint };
}

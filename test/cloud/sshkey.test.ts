// The OpenSSH public key parser against random and mutated input: it answers a key or throws one
// Error whose message the API puts after "publicKey", never anything else, and what it accepts
// is one line of a known type.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseSshPublicKey } from "../../src/cloud/keypairs/sshkey.js";

const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host";
const TYPES =
  /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)$/;

function check(line: string): void {
  try {
    const k = parseSshPublicKey(line);
    assert.match(k.type, TYPES);
    assert.doesNotMatch(k.line, /[\r\n]/);
    assert.match(k.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
  } catch (e) {
    assert.ok(e instanceof Error && !(e instanceof assert.AssertionError), String(e));
    assert.ok(e.message.length > 0 && !e.message.includes("undefined"), e.message);
  }
}

test("random lines and random blobs: a key or one clear error", () => {
  fc.assert(fc.property(fc.string({ maxLength: 300 }), check), { seed: 22, numRuns: 2000 });
  fc.assert(
    fc.property(
      fc.constantFrom("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"),
      fc.uint8Array({ maxLength: 600 }),
      (t, b) => check(`${t} ${Buffer.from(b).toString("base64")}`),
    ),
    { seed: 22, numRuns: 2000 },
  );
});

test("mutations of a valid key: bytes flipped, cut or appended in its blob", () => {
  const [type, b64, comment] = ED25519.split(" ");
  const blob = Buffer.from(b64, "base64");
  fc.assert(
    fc.property(fc.nat(blob.length - 1), fc.integer({ min: 1, max: 255 }), fc.nat(blob.length), (at, x, cut) => {
      const flipped = Buffer.from(blob);
      flipped[at] ^= x;
      check(`${type} ${flipped.toString("base64")} ${comment}`);
      check(`${type} ${blob.subarray(0, cut).toString("base64")}`);
      check(`${type} ${Buffer.concat([blob, Buffer.alloc(cut % 7, x)]).toString("base64")}`);
    }),
    { seed: 22, numRuns: 1000 },
  );
  // Flipping a byte of the 32-byte key itself keeps it a well-formed Ed25519 key.
  const k = Buffer.from(blob);
  k[k.length - 1] ^= 1;
  assert.equal(parseSshPublicKey(`${type} ${k.toString("base64")}`).type, "ssh-ed25519");
  // Its length prefix or embedded type changed: refused.
  const len = Buffer.from(blob);
  len[3] = 12;
  assert.throws(() => parseSshPublicKey(`${type} ${len.toString("base64")}`), /key data/);
});

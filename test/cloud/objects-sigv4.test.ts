/**
 * SigV4 and aws-chunked against AWS's own published examples (the S3 documentation's signature
 * calculation examples: secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, 2013-05-24): a GET with
 * header auth, a presigned GET, and a signed chunked upload of 66560 bytes in chunks of 65536,
 * 1024 and 0 bytes, whose every signature the decoder must check.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { Writable } from "node:stream";
import { parseSignedRequest, queryPairs, verifySignature } from "../../src/cloud/objects/sigv4.js";
import { AwsChunkedDecoder } from "../../src/cloud/objects/chunked.js";
import { S3Error } from "../../src/cloud/objects/xml.js";

const SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const AT = Date.UTC(2013, 4, 24, 0, 0, 0);
const EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

test("AWS's GET example (header auth) verifies; a changed header or secret does not", () => {
  const headers = {
    host: "examplebucket.s3.amazonaws.com",
    range: "bytes=0-9",
    "x-amz-content-sha256": EMPTY,
    "x-amz-date": "20130524T000000Z",
    authorization:
      "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
  };
  const req = parseSignedRequest(headers, [], AT)!;
  assert.equal(req.accessKeyId, "AKIAIOSFODNN7EXAMPLE");
  verifySignature(req, SECRET, "GET", "/test.txt", [], headers);
  assert.throws(
    () => verifySignature(req, SECRET, "GET", "/test.txt", [], { ...headers, range: "bytes=0-10" }),
    (e: S3Error) => e.code === "SignatureDoesNotMatch",
  );
  assert.throws(
    () => verifySignature(req, SECRET.replace("K", "k"), "GET", "/test.txt", [], headers),
    (e: S3Error) => e.code === "SignatureDoesNotMatch",
  );
  // A day later the same request is refused as skewed.
  assert.throws(
    () => parseSignedRequest(headers, [], AT + 86_400_000),
    (e: S3Error) => e.code === "RequestTimeTooSkewed",
  );
});

test("AWS's presigned GET example verifies until it expires", () => {
  const query =
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
  const pairs = queryPairs(query);
  const headers = { host: "examplebucket.s3.amazonaws.com" };
  const req = parseSignedRequest(headers, pairs, AT + 3600_000)!;
  assert.equal(req.presigned, true);
  verifySignature(req, SECRET, "GET", "/test.txt", pairs, headers);
  assert.throws(
    () => verifySignature(req, SECRET, "GET", "/other.txt", pairs, headers),
    (e: S3Error) => e.code === "SignatureDoesNotMatch",
  );
  assert.throws(
    () => parseSignedRequest(headers, pairs, AT + 86_401_000),
    (e: S3Error) => e.code === "AccessDenied" && /expired/.test(e.message),
  );
});

test("AWS's signed chunked upload example: every chunk signature checks; a changed byte does not", async () => {
  const headers = {
    host: "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    authorization:
      "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
  };
  const req = parseSignedRequest(headers, [], AT)!;
  const signing = verifySignature(req, SECRET, "PUT", "/examplebucket/chunkObject.txt", [], headers);
  const body = (flip: boolean): Buffer => {
    const one = Buffer.alloc(65536, "a");
    if (flip) one[1000] = 0x62;
    return Buffer.concat([
      Buffer.from("10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"),
      one,
      Buffer.from("\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"),
      Buffer.alloc(1024, "a"),
      Buffer.from("\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"),
    ]);
  };
  assert.equal(body(false).length, 66824);
  const decode = async (bytes: Buffer): Promise<Buffer> => {
    const out: Buffer[] = [];
    // Fed in odd slices, as a network delivers it.
    const slices = [];
    for (let i = 0; i < bytes.length; i += 777) slices.push(bytes.subarray(i, i + 777));
    await pipeline(
      Readable.from(slices),
      new AwsChunkedDecoder({ signing, decodedLength: 66560 }),
      new Writable({
        write(chunk: Buffer, _e, done) {
          out.push(chunk);
          done();
        },
      }),
    );
    return Buffer.concat(out);
  };
  assert.deepEqual(await decode(body(false)), Buffer.alloc(66560, "a"));
  await assert.rejects(decode(body(true)), (e: S3Error) => e.code === "SignatureDoesNotMatch");
  // Cut short: an incomplete body, not a shorter object.
  await assert.rejects(decode(body(false).subarray(0, 40_000)), (e: S3Error) => e.code === "IncompleteBody");
});

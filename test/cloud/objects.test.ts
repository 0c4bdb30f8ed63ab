/**
 * Object storage end to end: a real `yun serve` and S3 clients nobody here wrote
 * (@aws-sdk/client-s3, @smithy/signature-v4's presigner, Debian's s3cmd, curl).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  createReadStream,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  closeSync,
  writeFileSync,
  writeSync,
  mkdtempSync,
  rmSync,
  readdirSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { crc32 } from "node:zlib";
import { join } from "node:path";
import {
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutBucketAclCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { YunClient } from "../../src/cloud/client.js";
import { serveProcess } from "./serve-process.js";
import {
  member,
  presignedGet,
  s3Client,
  s3Failure,
  s3PortOf,
  sha256,
  sha256File,
  sha256Stream,
  signedFetch,
  yun,
  type AccessKey,
  type Served,
} from "./s3-support.js";

const MiB = 1024 * 1024;
const S3CMD = spawnSync("s3cmd", ["--version"]).status === 0;

let srv: Served;
let port: number;
let work: string;
let alice: { client: YunClient; token: string; key: AccessKey };
let bob: { client: YunClient; token: string; key: AccessKey };
let s3: S3Client;
/** The x-amz-content-sha256 of every request the SDK client sent. */
const payloadForms: string[] = [];

before(async () => {
  srv = await serveProcess();
  port = s3PortOf(srv);
  work = mkdtempSync(join(tmpdir(), "yun-s3-"));
  alice = await member(srv, "team-a", "alice");
  bob = await member(srv, "team-b", "bob");
  s3 = s3Client(port, alice.key);
  s3.middlewareStack.add(
    (next) => async (args) => {
      const h = (args.request as { headers: Record<string, string> }).headers;
      payloadForms.push(h["x-amz-content-sha256"] ?? "");
      return next(args);
    },
    { step: "finalizeRequest", priority: "low" },
  );
});

after(async () => {
  await srv.stop();
  rmSync(work, { recursive: true, force: true });
});

test("yun serve --s3-port: a bad value is one sentence and exit 2", () => {
  const r = yun(srv, srv.token, "serve", "--s3-port", "lots");
  assert.equal(r.status, 2);
  assert.equal(r.err, 'yun serve: --s3-port takes a port number 0-65535 or off, got "lots"\n');
});

test("yun user keys: create --json prints exactly the key id and secret; list and delete", async () => {
  const made = yun(srv, alice.token, "user", "keys", "create", "--json");
  assert.equal(made.status, 0, made.err);
  const k = JSON.parse(made.out) as Record<string, string>;
  assert.deepEqual(Object.keys(k), ["accessKeyId", "secretAccessKey"]);
  assert.match(k.accessKeyId, /^YUN[A-Z2-7]{17}$/);
  assert.equal(k.secretAccessKey.length, 40);
  const listed = yun(srv, alice.token, "user", "keys", "list");
  assert.equal(listed.status, 0, listed.err);
  assert.match(listed.out, new RegExp(k.accessKeyId));
  assert.doesNotMatch(listed.out, new RegExp(k.secretAccessKey.replace(/[+/]/g, "."))); // never shown again
  // The key works, then is deleted and answers InvalidAccessKeyId.
  const c = s3Client(port, k as unknown as AccessKey);
  await c.send(new CreateBucketCommand({ Bucket: "alice-scratch" }));
  const del = yun(srv, alice.token, "user", "keys", "delete", k.accessKeyId);
  assert.equal(del.status, 0, del.err);
  const f = await s3Failure(c.send(new DeleteBucketCommand({ Bucket: "alice-scratch" })));
  assert.deepEqual(f, { status: 403, code: "InvalidAccessKeyId" });
  // A member may not make keys for another user; bad arguments are one sentence, exit 2.
  const other = yun(srv, alice.token, "user", "keys", "create", "--user", "admin");
  assert.equal(other.status, 1);
  const bad = yun(srv, alice.token, "user", "keys", "rotate");
  assert.equal(bad.status, 2);
  assert.match(bad.err, /keys takes create, list or delete/);
  await s3.send(new DeleteBucketCommand({ Bucket: "alice-scratch" }));
});

test("the AWS SDK: bucket, 100 MiB multipart, listing, ranges, conditionals, copy, metadata, delete", async () => {
  await s3.send(new CreateBucketCommand({ Bucket: "photos" }));
  assert.equal((await s3.send(new HeadBucketCommand({ Bucket: "photos" }))).$metadata.httpStatusCode, 200);
  assert.equal((await s3Failure(s3.send(new HeadBucketCommand({ Bucket: "no-such-bucket" })))).status, 404);
  const bad = await s3Failure(s3.send(new CreateBucketCommand({ Bucket: "Not_A_Bucket" })));
  assert.deepEqual(bad, { status: 400, code: "InvalidBucketName" });
  const exists = await s3Failure(s3.send(new CreateBucketCommand({ Bucket: "photos" })));
  assert.deepEqual(exists, { status: 409, code: "BucketAlreadyOwnedByYou" });

  // 100 MiB of random bytes, uploaded as 7 parts streamed from the file.
  const big = join(work, "big.bin");
  const fd = openSync(big, "w");
  for (let i = 0; i < 100; i++) writeSync(fd, randomBytes(MiB));
  closeSync(fd);
  const bigSha = await sha256File(big);
  const partSize = 16 * MiB;
  const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: "photos", Key: "big.bin" }));
  const parts: { PartNumber: number; ETag: string }[] = [];
  for (let n = 1, off = 0; off < 100 * MiB; n++, off += partSize) {
    const len = Math.min(partSize, 100 * MiB - off);
    const r = await s3.send(
      new UploadPartCommand({
        Bucket: "photos",
        Key: "big.bin",
        UploadId,
        PartNumber: n,
        Body: createReadStream(big, { start: off, end: off + len - 1 }),
        ContentLength: len,
      }),
    );
    parts.push({ PartNumber: n, ETag: r.ETag! });
  }
  // The SDK streamed the parts as aws-chunked bodies with a CRC32 trailer, which the server checked.
  assert.ok(payloadForms.includes("STREAMING-UNSIGNED-PAYLOAD-TRAILER"), payloadForms.join(" "));
  const listed = await s3.send(new ListPartsCommand({ Bucket: "photos", Key: "big.bin", UploadId }));
  assert.equal(listed.Parts?.length, 7);
  // Not visible before it is completed.
  assert.equal((await s3Failure(s3.send(new HeadObjectCommand({ Bucket: "photos", Key: "big.bin" })))).status, 404);
  const done = await s3.send(
    new CompleteMultipartUploadCommand({
      Bucket: "photos",
      Key: "big.bin",
      UploadId,
      MultipartUpload: { Parts: parts },
    }),
  );
  const md5s = createHash("md5");
  for (const p of parts) md5s.update(Buffer.from(p.ETag.replace(/"/g, ""), "hex"));
  assert.equal(done.ETag, `"${md5s.digest("hex")}-7"`);
  const got = await s3.send(new GetObjectCommand({ Bucket: "photos", Key: "big.bin" }));
  assert.equal(got.ContentLength, 100 * MiB);
  assert.equal(await sha256Stream(got.Body as AsyncIterable<Uint8Array>), bigSha);

  // A byte range: 206 with the same bytes as the file's; past the end: 416.
  const part = await s3.send(
    new GetObjectCommand({ Bucket: "photos", Key: "big.bin", Range: "bytes=50000000-50999999" }),
  );
  assert.equal(part.$metadata.httpStatusCode, 206);
  assert.equal(part.ContentRange, `bytes 50000000-50999999/${100 * MiB}`);
  assert.equal(await sha256Stream(part.Body as AsyncIterable<Uint8Array>), await sha256File(big, 50000000, 50999999));
  const suffix = await s3.send(new GetObjectCommand({ Bucket: "photos", Key: "big.bin", Range: "bytes=-10" }));
  assert.equal(suffix.ContentLength, 10);
  const beyond = await s3Failure(
    s3.send(new GetObjectCommand({ Bucket: "photos", Key: "big.bin", Range: `bytes=${100 * MiB}-` })),
  );
  assert.deepEqual(beyond, { status: 416, code: "InvalidRange" });

  // Small objects with metadata and content types; the ETag of a single PUT is the MD5.
  const readme = Buffer.from("# photos\nsome text\n");
  const put = await s3.send(
    new PutObjectCommand({
      Bucket: "photos",
      Key: "readme.md",
      Body: readme,
      ContentType: "text/markdown",
      Metadata: { owner: "alice", "taken-in": "Kyoto" },
    }),
  );
  assert.equal(put.ETag, `"${createHash("md5").update(readme).digest("hex")}"`);
  for (const k of ["2026/jan/a.jpg", "2026/jan/b.jpg", "2026/feb/c.jpg", "2027/d.jpg"])
    await s3.send(new PutObjectCommand({ Bucket: "photos", Key: k, Body: k, ContentType: "image/jpeg" }));
  const head = await s3.send(new HeadObjectCommand({ Bucket: "photos", Key: "readme.md" }));
  assert.deepEqual(head.Metadata, { owner: "alice", "taken-in": "Kyoto" });
  assert.equal(head.ContentType, "text/markdown");
  assert.equal(head.ContentLength, readme.length);

  // Listing: the delimiter rolls keys up into common prefixes; a prefix narrows it.
  const top = await s3.send(new ListObjectsV2Command({ Bucket: "photos", Delimiter: "/" }));
  assert.deepEqual(
    top.CommonPrefixes?.map((p) => p.Prefix),
    ["2026/", "2027/"],
  );
  assert.deepEqual(
    top.Contents?.map((o) => o.Key),
    ["big.bin", "readme.md"],
  );
  assert.equal(top.Contents?.[0].Size, 100 * MiB);
  const y2026 = await s3.send(new ListObjectsV2Command({ Bucket: "photos", Prefix: "2026/", Delimiter: "/" }));
  assert.deepEqual(
    y2026.CommonPrefixes?.map((p) => p.Prefix),
    ["2026/feb/", "2026/jan/"],
  );
  assert.equal(y2026.Contents, undefined);
  // Pages of two through continuation tokens: every key once, in order.
  const keys: string[] = [];
  let token: string | undefined;
  let pages = 0;
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: "photos", MaxKeys: 2, ContinuationToken: token }));
    keys.push(...(page.Contents ?? []).map((o) => o.Key!));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
    pages++;
  } while (token);
  assert.deepEqual(keys, ["2026/feb/c.jpg", "2026/jan/a.jpg", "2026/jan/b.jpg", "2027/d.jpg", "big.bin", "readme.md"]);
  assert.equal(pages, 3);

  // Conditional requests.
  const notModified = await s3Failure(
    s3.send(new GetObjectCommand({ Bucket: "photos", Key: "readme.md", IfNoneMatch: put.ETag })),
  );
  assert.equal(notModified.status, 304);
  const stale = await s3Failure(
    s3.send(new GetObjectCommand({ Bucket: "photos", Key: "readme.md", IfMatch: '"0000"' })),
  );
  assert.deepEqual(stale, { status: 412, code: "PreconditionFailed" });
  const ok = await s3.send(new GetObjectCommand({ Bucket: "photos", Key: "readme.md", IfMatch: put.ETag }));
  assert.equal(await ok.Body!.transformToString(), readme.toString());
  const since = await s3Failure(
    s3.send(
      new GetObjectCommand({ Bucket: "photos", Key: "readme.md", IfModifiedSince: new Date(Date.now() + 60_000) }),
    ),
  );
  assert.equal(since.status, 304);
  const unmodified = await s3Failure(
    s3.send(
      new GetObjectCommand({ Bucket: "photos", Key: "readme.md", IfUnmodifiedSince: new Date(Date.now() - 3600_000) }),
    ),
  );
  assert.equal(unmodified.status, 412);

  // A presigned GET (made by @smithy's signer) works in curl; the same URL for another key does not.
  const url = await presignedGet(port, alice.key, "/photos/readme.md");
  assert.equal(execFileSync("curl", ["-sf", url], { encoding: "utf8" }), readme.toString());
  const download = await presignedGet(port, alice.key, "/photos/readme.md", 300, {
    "response-content-disposition": 'attachment; filename="notes.md"',
  });
  const headers = execFileSync("curl", ["-sf", "-D", "-", "-o", "/dev/null", download], { encoding: "utf8" });
  assert.match(headers, /content-disposition: attachment; filename="notes.md"/i);
  const tampered = url.replace("/photos/readme.md", "/photos/2027/d.jpg");
  const refused = spawnSync("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", tampered], { encoding: "utf8" });
  assert.equal(refused.stdout, "403");
  const expired = await presignedGet(port, alice.key, "/photos/readme.md", 1);
  await new Promise((r) => setTimeout(r, 2100));
  assert.match(execFileSync("curl", ["-s", expired], { encoding: "utf8" }), /<Code>AccessDenied<\/Code>.*expired/s);

  // Copy: the same bytes and metadata under another key (no data is moved: same blob).
  const copy = await s3.send(
    new CopyObjectCommand({ Bucket: "photos", Key: "copies/readme.md", CopySource: "photos/readme.md" }),
  );
  assert.equal(copy.CopyObjectResult?.ETag, put.ETag);
  const copied = await s3.send(new GetObjectCommand({ Bucket: "photos", Key: "copies/readme.md" }));
  assert.deepEqual(copied.Metadata, { owner: "alice", "taken-in": "Kyoto" });
  assert.equal(await copied.Body!.transformToString(), readme.toString());
  const replaced = await s3.send(
    new CopyObjectCommand({
      Bucket: "photos",
      Key: "copies/readme2.md",
      CopySource: "photos/readme.md",
      MetadataDirective: "REPLACE",
      Metadata: { owner: "carol" },
      ContentType: "text/plain",
    }),
  );
  assert.ok(replaced.CopyObjectResult);
  const h2 = await s3.send(new HeadObjectCommand({ Bucket: "photos", Key: "copies/readme2.md" }));
  assert.deepEqual([h2.Metadata, h2.ContentType], [{ owner: "carol" }, "text/plain"]);

  // Deletes: one, a batch; a bucket with objects refuses to go.
  const full = await s3Failure(s3.send(new DeleteBucketCommand({ Bucket: "photos" })));
  assert.deepEqual(full, { status: 409, code: "BucketNotEmpty" });
  await s3.send(new DeleteObjectCommand({ Bucket: "photos", Key: "big.bin" }));
  const batch = await s3.send(
    new DeleteObjectsCommand({
      Bucket: "photos",
      Delete: {
        Objects: ["2026/jan/a.jpg", "2026/jan/b.jpg", "2026/feb/c.jpg", "2027/d.jpg", "copies/readme2.md"].map(
          (Key) => ({ Key }),
        ),
      },
    }),
  );
  assert.equal(batch.Deleted?.length, 5);
  const rest = await s3.send(new ListObjectsV2Command({ Bucket: "photos" }));
  assert.deepEqual(
    rest.Contents?.map((o) => o.Key),
    ["copies/readme.md", "readme.md"],
  );
  const gone = await s3Failure(s3.send(new GetObjectCommand({ Bucket: "photos", Key: "big.bin" })));
  assert.deepEqual(gone, { status: 404, code: "NoSuchKey" });
  // The big blob is gone from disk; the two readmes share one blob.
  const blobs = readdirSync(join(srv.home, "cloud", "objects", "blobs")).flatMap((d) =>
    readdirSync(join(srv.home, "cloud", "objects", "blobs", d)),
  );
  assert.ok(!blobs.includes(bigSha));
  assert.ok(blobs.includes(sha256(readme)));
});

test("refusals: a wrong signature, an unknown key, another project's key, anonymous requests: 403", async () => {
  await s3.send(new CreateBucketCommand({ Bucket: "private-a" }));
  await s3.send(new PutObjectCommand({ Bucket: "private-a", Key: "secret.txt", Body: "for team-a only" }));
  const wrong = s3Client(port, { accessKeyId: alice.key.accessKeyId, secretAccessKey: "x".repeat(40) });
  assert.deepEqual(await s3Failure(wrong.send(new GetObjectCommand({ Bucket: "private-a", Key: "secret.txt" }))), {
    status: 403,
    code: "SignatureDoesNotMatch",
  });
  const unknown = s3Client(port, { accessKeyId: "YUNAAAAAAAAAAAAAAAAA", secretAccessKey: alice.key.secretAccessKey });
  assert.deepEqual(await s3Failure(unknown.send(new GetObjectCommand({ Bucket: "private-a", Key: "secret.txt" }))), {
    status: 403,
    code: "InvalidAccessKeyId",
  });
  const b = s3Client(port, bob.key);
  for (const call of [
    () => b.send(new GetObjectCommand({ Bucket: "private-a", Key: "secret.txt" })),
    () => b.send(new ListObjectsV2Command({ Bucket: "private-a" })),
    () => b.send(new PutObjectCommand({ Bucket: "private-a", Key: "x", Body: "x" })),
    () => b.send(new DeleteObjectCommand({ Bucket: "private-a", Key: "secret.txt" })),
  ])
    assert.deepEqual(await s3Failure(call()), { status: 403, code: "AccessDenied" });
  // Bucket names are global: bob cannot take alice's.
  assert.deepEqual(await s3Failure(b.send(new CreateBucketCommand({ Bucket: "private-a" }))), {
    status: 409,
    code: "BucketAlreadyExists",
  });
  const anon = spawnSync("curl", ["-s", "-w", "\n%{http_code}", `http://127.0.0.1:${port}/private-a/secret.txt`], {
    encoding: "utf8",
  });
  assert.match(anon.stdout, /<Code>AccessDenied<\/Code>[\s\S]*\n403$/);

  // public-read: anonymous reads work, by path and by host (virtual-host style), writes do not.
  await s3.send(new PutBucketAclCommand({ Bucket: "private-a", ACL: "public-read" }));
  assert.equal(
    execFileSync("curl", ["-sf", `http://127.0.0.1:${port}/private-a/secret.txt`], { encoding: "utf8" }),
    "for team-a only",
  );
  assert.equal(
    execFileSync("curl", ["-sf", "-H", `Host: private-a.localhost:${port}`, `http://127.0.0.1:${port}/secret.txt`], {
      encoding: "utf8",
    }),
    "for team-a only",
  );
  const anonPut = spawnSync(
    "curl",
    [
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "-X",
      "PUT",
      "--data",
      "x",
      `http://127.0.0.1:${port}/private-a/new`,
    ],
    {
      encoding: "utf8",
    },
  );
  assert.equal(anonPut.stdout, "403");
  // An object of its own public-read in a private bucket.
  await s3.send(new PutBucketAclCommand({ Bucket: "private-a", ACL: "private" }));
  await s3.send(new PutObjectCommand({ Bucket: "private-a", Key: "open.txt", Body: "anyone", ACL: "public-read" }));
  assert.equal(
    execFileSync("curl", ["-sf", `http://127.0.0.1:${port}/private-a/open.txt`], { encoding: "utf8" }),
    "anyone",
  );
  const closed = spawnSync(
    "curl",
    ["-s", "-o", "/dev/null", "-w", "%{http_code}", `http://127.0.0.1:${port}/private-a/secret.txt`],
    { encoding: "utf8" },
  );
  assert.equal(closed.stdout, "403");
  // Virtual-host style with the SDK's signature: the Host names the bucket.
  const vhost = await signedFetch(port, alice.key, "GET", "/secret.txt", {
    "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
    host: `private-a.localhost:${port}`,
  });
  assert.deepEqual(vhost, { status: 200, text: "for team-a only" });
});

test("payload checks: a wrong sha256, a wrong CRC32 trailer, a wrong Content-MD5 store nothing", async () => {
  await s3.send(new CreateBucketCommand({ Bucket: "checks" }));
  const body = Buffer.from("the real bytes");
  const badSha = await signedFetch(
    port,
    alice.key,
    "PUT",
    "/checks/a",
    { "x-amz-content-sha256": sha256(Buffer.from("other")) },
    body,
  );
  assert.equal(badSha.status, 400);
  assert.match(badSha.text, /XAmzContentSHA256Mismatch/);
  const goodSha = await signedFetch(
    port,
    alice.key,
    "PUT",
    "/checks/a",
    { "x-amz-content-sha256": sha256(body) },
    body,
  );
  assert.equal(goodSha.status, 200, goodSha.text);
  // aws-chunked with a CRC32 trailer, as the SDK sends it, by hand: a wrong checksum is refused.
  const chunked = (crc: string): Buffer =>
    Buffer.from(`${body.length.toString(16)}\r\n${body.toString()}\r\n0\r\nx-amz-checksum-crc32:${crc}\r\n\r\n`);
  const crcOf = (b: Buffer): string => {
    const out = Buffer.alloc(4);
    out.writeUInt32BE(crc32(b));
    return out.toString("base64");
  };
  const trailerHeaders = {
    "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": String(body.length),
    "x-amz-trailer": "x-amz-checksum-crc32",
  };
  const badCrc = await signedFetch(port, alice.key, "PUT", "/checks/b", trailerHeaders, chunked("AAAAAA=="));
  assert.equal(badCrc.status, 400);
  assert.match(badCrc.text, /BadDigest/);
  const goodCrc = await signedFetch(port, alice.key, "PUT", "/checks/b", trailerHeaders, chunked(crcOf(body)));
  assert.equal(goodCrc.status, 200, goodCrc.text);
  const badMd5 = await s3Failure(
    s3.send(
      new PutObjectCommand({ Bucket: "checks", Key: "c", Body: body, ContentMD5: Buffer.alloc(16).toString("base64") }),
    ),
  );
  assert.deepEqual(badMd5, { status: 400, code: "BadDigest" });
  const list = await s3.send(new ListObjectsV2Command({ Bucket: "checks" }));
  assert.deepEqual(
    list.Contents?.map((o) => o.Key),
    ["a", "b"],
  );
  // Nothing of the refused bodies is left on disk.
  assert.deepEqual(readdirSync(join(srv.home, "cloud", "objects", "tmp")), []);
});

test("a blob damaged on disk fails the read with an error, never wrong bytes", async () => {
  await s3.send(new CreateBucketCommand({ Bucket: "rot", ACL: "public-read" }));
  const data = randomBytes(3 * MiB);
  await s3.send(new PutObjectCommand({ Bucket: "rot", Key: "f", Body: data }));
  const path = join(srv.home, "cloud", "objects", "blobs", sha256(data).slice(0, 2), sha256(data));
  const fd = openSync(path, "r+");
  const one = Buffer.alloc(1);
  readSync(fd, one, 0, 1, 2 * MiB + 5);
  one[0] ^= 0xff;
  writeSync(fd, one, 0, 1, 2 * MiB + 5);
  closeSync(fd);
  const out = join(work, "rot.out");
  const r = spawnSync("curl", ["-sf", "-o", out, `http://127.0.0.1:${port}/rot/f`]);
  assert.notEqual(r.status, 0, "curl must see the transfer fail");
  assert.ok(readFileSync(out).length < data.length, "the damaged object must not arrive whole");
  rmSync(out);
  const ranged = spawnSync("curl", ["-s", "-o", out, "-r", "0-99", `http://127.0.0.1:${port}/rot/f`]);
  assert.notEqual(ranged.status, 0);
  assert.ok(
    !existsSync(out) || readFileSync(out).length === 0,
    "a range's bytes are held until the whole blob is checked",
  );
});

test("quota and metering: objectBytes refuses a PUT beyond it; usage counts GiB-hours and requests", async () => {
  const admin = new YunClient({ server: srv.url, token: srv.token });
  const b = s3Client(port, bob.key);
  await b.send(new CreateBucketCommand({ Bucket: "bob-data" }));
  await admin.setQuotas("team-b", { objectBytes: 3 * MiB });
  await b.send(new PutObjectCommand({ Bucket: "bob-data", Key: "two", Body: randomBytes(2 * MiB) }));
  const over = await s3Failure(
    b.send(new PutObjectCommand({ Bucket: "bob-data", Key: "more", Body: randomBytes(2 * MiB) })),
  );
  assert.deepEqual(over, { status: 403, code: "QuotaExceeded" });
  // Replacing an object counts only the difference.
  await b.send(new PutObjectCommand({ Bucket: "bob-data", Key: "two", Body: randomBytes(3 * MiB) }));
  const q = await admin.getQuotas("team-b");
  assert.equal(q.used.objectBytes, 3 * MiB);
  assert.equal(q.objectBytes, 3 * MiB);
  const shown = yun(srv, srv.token, "project", "quota", "team-b");
  assert.match(shown.out, /objectBytes\s+3145728\s+3145728/);
  // Requests are counted per project on the metering tick (2 s).
  await new Promise((r) => setTimeout(r, 2500));
  const u = await bob.client.usage();
  assert.ok(u.objectGiBHours > 0, JSON.stringify(u));
  assert.ok(u.objectRequests.writes >= 4 && u.objectRequests.reads >= 0, JSON.stringify(u.objectRequests));
  assert.ok(u.instances.some((i) => i.name === "bob-data" && i.objectGiBHours > 0));
  await b.send(new DeleteObjectCommand({ Bucket: "bob-data", Key: "two" }));
  await b.send(new DeleteBucketCommand({ Bucket: "bob-data" }));
});

test(
  "s3cmd: make a bucket, put 20 MiB by multipart, list with a delimiter, get, delete",
  { skip: S3CMD ? false : "s3cmd is not installed" },
  async () => {
    const cfg = join(work, "s3cfg");
    // Path style (host_bucket without %(bucket)s): *.localhost names need not resolve here.
    const config = (key: AccessKey, hostBucket: string): void =>
      writeFileSync(
        cfg,
        [
          "[default]",
          `access_key = ${key.accessKeyId}`,
          `secret_key = ${key.secretAccessKey}`,
          `host_base = 127.0.0.1:${port}`,
          `host_bucket = ${hostBucket}`,
          "use_https = False",
          "signature_v2 = False",
          "bucket_location = us-east-1",
          "",
        ].join("\n"),
      );
    config(alice.key, `127.0.0.1:${port}`);
    const s3cmd = (...args: string[]) => spawnSync("s3cmd", ["-c", cfg, ...args], { encoding: "utf8" });
    const file = join(work, "s3cmd.bin");
    writeFileSync(file, randomBytes(20 * MiB));
    let r = s3cmd("mb", "s3://via-s3cmd");
    assert.equal(r.status, 0, r.stderr);
    r = s3cmd("put", "--multipart-chunk-size-mb=5", file, "s3://via-s3cmd/dir/file.bin");
    assert.equal(r.status, 0, r.stderr);
    // Sent in 4 parts: the multipart ETag says so.
    const head = await s3.send(new HeadObjectCommand({ Bucket: "via-s3cmd", Key: "dir/file.bin" }));
    assert.match(head.ETag ?? "", /-4"$/);
    r = s3cmd("put", file, "s3://via-s3cmd/top.bin", "--disable-multipart");
    assert.equal(r.status, 0, r.stderr);
    r = s3cmd("ls", "s3://via-s3cmd/");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /DIR\s+s3:\/\/via-s3cmd\/dir\//);
    assert.match(r.stdout, /20971520\s+s3:\/\/via-s3cmd\/top\.bin/);
    assert.doesNotMatch(r.stdout, /file\.bin/);
    const back = join(work, "s3cmd.back");
    r = s3cmd("get", "--force", "s3://via-s3cmd/dir/file.bin", back);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(sha256(readFileSync(back)), sha256(readFileSync(file)));
    r = s3cmd("del", "s3://via-s3cmd/dir/file.bin", "s3://via-s3cmd/top.bin");
    assert.equal(r.status, 0, r.stderr);
    r = s3cmd("rb", "s3://via-s3cmd");
    assert.equal(r.status, 0, r.stderr);
    // Another project's key, and a wrong secret: 403.
    config(bob.key, `127.0.0.1:${port}`);
    r = s3cmd("ls", "s3://photos/");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /403|AccessDenied/);
    config({ accessKeyId: alice.key.accessKeyId, secretAccessKey: "y".repeat(40) }, `127.0.0.1:${port}`);
    r = s3cmd("ls", "s3://photos/");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /403|SignatureDoesNotMatch/);
  },
);

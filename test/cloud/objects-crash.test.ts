/**
 * Crash safety of the object store: `kill -9` of `yun serve` while a multipart upload's part is
 * streaming in, and while the upload is being completed. After a restart no half object is
 * visible, no temporary file is left, and the blobs on disk are exactly those a record names.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, rmSync, statSync } from "node:fs";
import { request, type ClientRequest } from "node:http";
import { join } from "node:path";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { serveProcess } from "./serve-process.js";
import { tempHome } from "./helpers.js";
import {
  createKey,
  s3Client,
  s3Failure,
  s3PortOf,
  sha256,
  sha256Stream,
  signer,
  type AccessKey,
  type Served,
} from "./s3-support.js";
import { YunClient } from "../../src/cloud/client.js";
import { checkCloudInvariants } from "../../src/cloud/invariants.js";

const MiB = 1024 * 1024;

function files(dir: string): string[] {
  try {
    return readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((d) => d.isFile())
      .map((d) => d.name)
      .sort();
  } catch {
    return [];
  }
}

async function killHard(srv: Served): Promise<void> {
  const gone = new Promise((r) => srv.child.once("exit", r));
  srv.child.kill("SIGKILL");
  await gone;
}

/** Polls until fn holds (every 5 ms, at most 20 s). */
async function until(fn: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 20_000;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A signed UploadPart whose body the caller writes (and may leave unfinished). */
async function partRequest(
  port: number,
  key: AccessKey,
  path: string,
  query: Record<string, string>,
  length: number,
): Promise<ClientRequest> {
  const signed = await signer(key).sign({
    method: "PUT",
    protocol: "http:",
    hostname: "127.0.0.1",
    port,
    path,
    query,
    headers: {
      host: `127.0.0.1:${port}`,
      "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
      "content-length": String(length),
    },
  });
  const qs = Object.entries(query)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
    .join("&");
  const req = request({ host: "127.0.0.1", port, method: "PUT", path: `${path}?${qs}`, headers: signed.headers });
  req.on("error", () => {});
  return req;
}

test("kill -9 during a multipart upload and during its completion: no half object, no orphan data", async () => {
  const home = tempHome();
  let srv = await serveProcess([], home);
  try {
    const admin = new YunClient({ server: srv.url, token: srv.token });
    await admin.createProject({ name: "crash" });
    const u = await admin.createUser({ name: "carol", role: "member", project: "crash" });
    const key = createKey(srv, srv.token, u.id);
    let port = s3PortOf(srv);
    let s3 = s3Client(port, key);
    const objectsDir = join(home, "cloud", "objects");
    await s3.send(new CreateBucketCommand({ Bucket: "crashy" }));
    const data = randomBytes(24 * MiB);
    const part = (n: number): Buffer => data.subarray((n - 1) * 8 * MiB, n * 8 * MiB);
    const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: "crashy", Key: "big" }));
    const etags: string[] = [];
    for (const n of [1, 2]) {
      const r = await s3.send(
        new UploadPartCommand({ Bucket: "crashy", Key: "big", UploadId, PartNumber: n, Body: part(n) }),
      );
      etags.push(r.ETag!);
    }

    // Part 3: half of its body is sent, then the server is killed.
    const req = await partRequest(port, key, "/crashy/big", { partNumber: "3", uploadId: UploadId! }, 8 * MiB);
    req.write(part(3).subarray(0, 4 * MiB));
    const tmp = join(objectsDir, "tmp");
    await until(() => files(tmp).some((f) => statSync(join(tmp, f)).size > 0), "part 3's temporary file");
    await killHard(srv);
    req.destroy();
    assert.equal(files(tmp).length, 1, "the cut-off part was a temporary file");

    srv = await serveProcess([], home);
    port = s3PortOf(srv);
    s3 = s3Client(port, key);
    assert.deepEqual(files(tmp), [], "the restart removed the temporary file");
    assert.deepEqual(checkCloudInvariants(home), []);
    assert.equal((await s3.send(new ListObjectsV2Command({ Bucket: "crashy" }))).KeyCount, 0);
    assert.equal((await s3Failure(s3.send(new HeadObjectCommand({ Bucket: "crashy", Key: "big" })))).status, 404);
    const parts = await s3.send(new ListPartsCommand({ Bucket: "crashy", Key: "big", UploadId }));
    assert.deepEqual(
      parts.Parts?.map((p) => p.PartNumber),
      [1, 2],
    );
    assert.deepEqual(files(join(objectsDir, "blobs")), [sha256(part(1)), sha256(part(2))].sort());

    // Complete it, and kill the server while it joins the parts (or just after).
    const whole = sha256(data.subarray(0, 16 * MiB));
    const completing = s3
      .send(
        new CompleteMultipartUploadCommand({
          Bucket: "crashy",
          Key: "big",
          UploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
      )
      .catch(() => undefined);
    await until(() => files(tmp).length > 0 || files(join(objectsDir, "blobs")).includes(whole), "the join to start");
    await killHard(srv);
    await completing;

    srv = await serveProcess([], home);
    port = s3PortOf(srv);
    s3 = s3Client(port, key);
    assert.deepEqual(files(tmp), []);
    assert.deepEqual(checkCloudInvariants(home), []);
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: "crashy" }));
    const uploads = await s3.send(new ListMultipartUploadsCommand({ Bucket: "crashy" }));
    if (listed.KeyCount === 0) {
      // Cut off before its commit: the upload is still there, whole, and completes now.
      assert.equal(uploads.Uploads?.length, 1);
      assert.deepEqual(files(join(objectsDir, "blobs")), [sha256(part(1)), sha256(part(2))].sort());
      await s3.send(
        new CompleteMultipartUploadCommand({
          Bucket: "crashy",
          Key: "big",
          UploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
      );
    } else {
      // Committed before the kill: the whole object, and the upload is gone.
      assert.equal(uploads.Uploads, undefined);
    }
    const got = await s3.send(new GetObjectCommand({ Bucket: "crashy", Key: "big" }));
    assert.equal(await sha256Stream(got.Body as AsyncIterable<Uint8Array>), whole);
    // Only the object's blob remains (the parts' blobs went with the upload).
    await srv.stop(true);
    srv = await serveProcess([], home);
    port = s3PortOf(srv);
    s3 = s3Client(port, key);
    assert.deepEqual(files(join(objectsDir, "blobs")), [whole]);

    // An upload aborted, the object and bucket deleted: no data left at all.
    const second = await s3.send(new CreateMultipartUploadCommand({ Bucket: "crashy", Key: "other" }));
    await s3.send(
      new UploadPartCommand({
        Bucket: "crashy",
        Key: "other",
        UploadId: second.UploadId,
        PartNumber: 1,
        Body: part(3),
      }),
    );
    await s3.send(new AbortMultipartUploadCommand({ Bucket: "crashy", Key: "other", UploadId: second.UploadId }));
    await s3.send(new DeleteObjectCommand({ Bucket: "crashy", Key: "big" }));
    await s3.send(new DeleteBucketCommand({ Bucket: "crashy" }));
    assert.deepEqual(files(join(objectsDir, "blobs")), []);
    assert.deepEqual(checkCloudInvariants(home), []);
  } finally {
    await srv.stop(true);
    rmSync(home, { recursive: true, force: true });
  }
});

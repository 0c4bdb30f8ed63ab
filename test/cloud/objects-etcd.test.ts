/**
 * Object storage over the etcd store: `yun serve --etcd URL` keeps buckets, objects, uploads and
 * access keys as etcd records (the bytes stay blobs on the server's disk), and S3 clients work
 * as they do over SQLite.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Etcd3 } from "etcd3";
import {
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { serveProcess } from "./serve-process.js";
import { ETCD_MISSING, startEtcd } from "./etcd-server.js";
import { member, s3Client, s3PortOf, sha256, sha256Stream } from "./s3-support.js";

const MiB = 1024 * 1024;

test(
  "yun serve --etcd: buckets, objects and multipart uploads are etcd records",
  { skip: ETCD_MISSING ?? false },
  async () => {
    const etcd = await startEtcd();
    const srv = await serveProcess(["--etcd", etcd.url]);
    try {
      const a = await member(srv, "etcd-team", "erin");
      const s3 = s3Client(s3PortOf(srv), a.key);
      await s3.send(new CreateBucketCommand({ Bucket: "in-etcd" }));
      await s3.send(
        new PutObjectCommand({ Bucket: "in-etcd", Key: "docs/one.txt", Body: "one", Metadata: { n: "1" } }),
      );
      const data = randomBytes(6 * MiB);
      const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: "in-etcd", Key: "docs/two.bin" }));
      const p1 = await s3.send(
        new UploadPartCommand({
          Bucket: "in-etcd",
          Key: "docs/two.bin",
          UploadId,
          PartNumber: 1,
          Body: data.subarray(0, 5 * MiB),
        }),
      );
      const p2 = await s3.send(
        new UploadPartCommand({
          Bucket: "in-etcd",
          Key: "docs/two.bin",
          UploadId,
          PartNumber: 2,
          Body: data.subarray(5 * MiB),
        }),
      );
      await s3.send(
        new CompleteMultipartUploadCommand({
          Bucket: "in-etcd",
          Key: "docs/two.bin",
          UploadId,
          MultipartUpload: {
            Parts: [
              { PartNumber: 1, ETag: p1.ETag },
              { PartNumber: 2, ETag: p2.ETag },
            ],
          },
        }),
      );
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: "in-etcd", Prefix: "docs/" }));
      assert.deepEqual(
        listed.Contents?.map((o) => o.Key),
        ["docs/one.txt", "docs/two.bin"],
      );
      const got = await s3.send(new GetObjectCommand({ Bucket: "in-etcd", Key: "docs/two.bin" }));
      assert.equal(await sha256Stream(got.Body as AsyncIterable<Uint8Array>), sha256(data));
      const client = new Etcd3({ hosts: etcd.url });
      try {
        assert.equal((await client.getAll().prefix("/yun/v1/t/buckets/").keys()).length, 1);
        assert.equal((await client.getAll().prefix("/yun/v1/t/objects/").keys()).length, 2);
        assert.equal((await client.getAll().prefix("/yun/v1/t/access_keys/").keys()).length, 1);
        assert.equal((await client.getAll().prefix("/yun/v1/t/uploads/").keys()).length, 0);
      } finally {
        client.close();
      }
      for (const Key of ["docs/one.txt", "docs/two.bin"])
        await s3.send(new DeleteObjectCommand({ Bucket: "in-etcd", Key }));
      await s3.send(new DeleteBucketCommand({ Bucket: "in-etcd" }));
    } finally {
      await srv.stop();
      await etcd.stop();
    }
  },
);

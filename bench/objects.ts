/**
 * Object storage throughput: `yun serve` with a fresh YUN_HOME, an access key, and the AWS SDK
 * putting and getting objects of 1 MiB and 64 MiB with 1 and 16 clients at once; beside them,
 * the raw speed of the same disk (write + fsync, read back) for the same bytes.
 *
 *   npm run build && node dist/bench/objects.js [--json]
 *
 * Every object is sha256-checked on the server both ways (on write, to name its blob; on read,
 * against its name), which the raw disk rows do not do.
 */
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { serveProcess } from "../test/cloud/serve-process.js";
import { createKey, s3Client, s3PortOf } from "../test/cloud/s3-support.js";

const MiB = 1024 * 1024;

interface Row {
  size: string;
  clients: number;
  objects: number;
  putMiBs: number;
  getMiBs: number;
  diskWriteMiBs: number;
  diskReadMiBs: number;
}

async function drain(body: AsyncIterable<Uint8Array>): Promise<number> {
  let n = 0;
  for await (const c of body) n += c.length;
  return n;
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function inParallel(clients: number, count: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < count) await job(next++);
    }),
  );
}

function rawDisk(dir: string, data: Buffer, count: number): { write: number; read: number } {
  const paths = Array.from({ length: count }, (_, i) => join(dir, `raw-${i}`));
  let t = process.hrtime.bigint();
  for (const p of paths) {
    const fd = openSync(p, "w");
    writeSync(fd, data);
    fsyncSync(fd);
    closeSync(fd);
  }
  const write = Number(process.hrtime.bigint() - t) / 1e9;
  t = process.hrtime.bigint();
  for (const p of paths) readFileSync(p);
  const read = Number(process.hrtime.bigint() - t) / 1e9;
  for (const p of paths) rmSync(p);
  const mib = (data.length * count) / MiB;
  return { write: mib / write, read: mib / read };
}

async function main(): Promise<void> {
  const srv = await serveProcess();
  const rows: Row[] = [];
  try {
    const s3: S3Client = s3Client(s3PortOf(srv), createKey(srv, srv.token));
    await s3.send(new CreateBucketCommand({ Bucket: "bench" }));
    const scratch = mkdtempSync(join(srv.home, "raw-"));
    for (const [label, size, count] of [
      ["1 MiB", MiB, 128],
      ["64 MiB", 64 * MiB, 8],
    ] as const) {
      const data = randomBytes(size);
      for (const clients of [1, 16]) {
        const key = (i: number): string => `${label.replace(" ", "")}/${clients}/${i}`;
        const put = await timed(() =>
          inParallel(clients, count, async (i) => {
            await s3.send(new PutObjectCommand({ Bucket: "bench", Key: key(i), Body: data }));
          }),
        );
        const get = await timed(() =>
          inParallel(clients, count, async (i) => {
            const r = await s3.send(new GetObjectCommand({ Bucket: "bench", Key: key(i) }));
            if ((await drain(r.Body as AsyncIterable<Uint8Array>)) !== size) throw new Error("short read");
          }),
        );
        const raw = rawDisk(scratch, data, count);
        const mib = (size * count) / MiB;
        rows.push({
          size: label,
          clients,
          objects: count,
          putMiBs: mib / put,
          getMiBs: mib / get,
          diskWriteMiBs: raw.write,
          diskReadMiBs: raw.read,
        });
      }
    }
  } finally {
    await srv.stop();
  }
  const f = (x: number): string => x.toFixed(0);
  console.log("| object | clients | objects | PUT MiB/s | GET MiB/s | disk write+fsync MiB/s | disk read MiB/s |");
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows)
    console.log(
      `| ${r.size} | ${r.clients} | ${r.objects} | ${f(r.putMiBs)} | ${f(r.getMiBs)} | ${f(r.diskWriteMiBs)} | ${f(r.diskReadMiBs)} |`,
    );
  if (process.argv.includes("--json")) console.log(JSON.stringify(rows, null, 2));
}

await main();

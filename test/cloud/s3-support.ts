/**
 * What the object storage tests share: a real `yun serve` process with its S3 port, access keys
 * made through the CLI, S3 clients nobody here wrote (@aws-sdk/client-s3, and @smithy's SigV4
 * signer for presigned URLs and hand-made requests), and hashing helpers.
 */
import { spawnSync } from "node:child_process";
import { createHash, createHmac } from "node:crypto";
import { createReadStream } from "node:fs";
import { request } from "node:http";
import { S3Client } from "@aws-sdk/client-s3";
import { SignatureV4 } from "@smithy/signature-v4";
import type { SourceData } from "@smithy/types";
import { BIN, serveProcess } from "./serve-process.js";
import { YunClient } from "../../src/cloud/client.js";

export type Served = Awaited<ReturnType<typeof serveProcess>>;

export interface AccessKey {
  accessKeyId: string;
  secretAccessKey: string;
}

/** The S3 port a `yun serve` printed. */
export function s3PortOf(srv: Served): number {
  const m = /object storage \(S3\) on http:\/\/127\.0\.0\.1:(\d+)\//.exec(srv.out());
  if (!m) throw new Error(`yun serve printed no S3 address: ${srv.out()}`);
  return Number(m[1]);
}

/** Runs the yun CLI against a served home. */
export function yun(
  srv: Served,
  token: string,
  ...args: string[]
): { status: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, YUN_HOME: srv.home, YUN_SERVER: srv.url, YUN_TOKEN: token },
    encoding: "utf8",
  });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** `yun user keys create [--user U] --json`, parsed. */
export function createKey(srv: Served, token: string, user?: string): AccessKey {
  const r = yun(srv, token, "user", "keys", "create", ...(user ? ["--user", user] : []), "--json");
  if (r.status !== 0) throw new Error(`yun user keys create failed: ${r.out}${r.err}`);
  return JSON.parse(r.out) as AccessKey;
}

export function s3Client(port: number, key: AccessKey, opts: { pathStyle?: boolean } = {}): S3Client {
  return new S3Client({
    endpoint: `http://127.0.0.1:${port}`,
    region: "us-east-1",
    forcePathStyle: opts.pathStyle ?? true,
    credentials: key,
    // A retry only for what SDKs retry anyway (resets, 5xx); 4xx answers are not retried.
    maxAttempts: 2,
  });
}

/** A project with one member user, their API token and access key. */
export async function member(
  srv: Served,
  project: string,
  user: string,
): Promise<{ client: YunClient; token: string; key: AccessKey }> {
  const admin = new YunClient({ server: srv.url, token: srv.token });
  await admin.createProject({ name: project });
  const u = await admin.createUser({ name: user, role: "member", project, withToken: true });
  const key = createKey(srv, srv.token, u.id);
  return { client: new YunClient({ server: srv.url, token: u.token! }), token: u.token!, key };
}

/** node:crypto behind the hash interface @smithy's signer takes (HMAC when given a secret). */
class NodeSha256 {
  private readonly h;
  constructor(secret?: SourceData) {
    this.h = secret === undefined ? createHash("sha256") : createHmac("sha256", bytes(secret));
  }
  update(data: SourceData): void {
    this.h.update(bytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.h.digest());
  }
}

function bytes(d: SourceData): string | Uint8Array {
  return typeof d === "string" ? d : d instanceof Uint8Array ? d : new Uint8Array(d as ArrayBuffer);
}

export function signer(key: AccessKey): SignatureV4 {
  return new SignatureV4({
    credentials: key,
    region: "us-east-1",
    service: "s3",
    sha256: NodeSha256,
    uriEscapePath: false,
  });
}

/** A presigned GET URL (path style) made by @smithy/signature-v4, valid for `seconds`. */
export async function presignedGet(
  port: number,
  key: AccessKey,
  path: string,
  seconds = 300,
  query: Record<string, string> = {},
): Promise<string> {
  const signed = await signer(key).presign(
    {
      method: "GET",
      protocol: "http:",
      hostname: "127.0.0.1",
      port,
      path,
      query,
      // As @aws-sdk/s3-request-presigner does: S3's presigned URLs leave the payload unsigned.
      headers: { host: `127.0.0.1:${port}`, "x-amz-content-sha256": "UNSIGNED-PAYLOAD" },
    },
    { expiresIn: seconds, unsignableHeaders: new Set(["x-amz-content-sha256"]) },
  );
  const q = Object.entries(signed.query ?? {})
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join("&");
  return `http://127.0.0.1:${port}${path}?${q}`;
}

/**
 * A request signed by @smithy/signature-v4 with the headers given (x-amz-content-sha256 among
 * them decides what the signature says of the body), sent with fetch.
 */
export async function signedFetch(
  port: number,
  key: AccessKey,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer,
): Promise<{ status: number; text: string }> {
  const signed = await signer(key).sign({
    method,
    protocol: "http:",
    hostname: "127.0.0.1",
    port,
    path,
    query: {},
    headers: { host: `127.0.0.1:${port}`, ...headers },
    body,
  });
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers: signed.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

export async function sha256Stream(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of stream) h.update(chunk);
  return h.digest("hex");
}

export function sha256File(path: string, start?: number, end?: number): Promise<string> {
  return sha256Stream(createReadStream(path, { start, end }));
}

/** An error an S3 client call threw: its HTTP status and S3 code. */
export async function s3Failure(p: Promise<unknown>): Promise<{ status: number | undefined; code: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as { name: string; Code?: string; $metadata?: { httpStatusCode?: number } };
    return { status: err.$metadata?.httpStatusCode, code: err.Code ?? err.name };
  }
  throw new Error("the S3 request succeeded, but it should have been refused");
}

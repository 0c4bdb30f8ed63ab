/**
 * The S3-compatible HTTP API of `yun serve` (its own port, --s3-port): buckets by path
 * (`/bucket/key`) or by host (`bucket.localhost`), AWS Signature V4 (header or presigned query;
 * payloads signed, unsigned or aws-chunked), XML answers and S3's error codes. A plain Node HTTP
 * server: object bodies stream from the request into a blob and from a blob into the response.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { pipeline } from "node:stream/promises";
import type { Readable } from "node:stream";
import type { Cloud, Principal } from "../cloud.js";
import type { TlsFiles } from "../security.js";
import { AwsChunkedDecoder } from "./chunked.js";
import type { Expected } from "./blobs.js";
import {
  MAX_OBJECT_BYTES,
  MAX_PARTS,
  type Acl,
  type BucketRow,
  type ObjectRow,
  type ObjectService,
} from "./service.js";
import {
  STREAMING_SIGNED,
  STREAMING_SIGNED_TRAILER,
  STREAMING_UNSIGNED_TRAILER,
  UNSIGNED_PAYLOAD,
  parseSignedRequest,
  queryPairs,
  sha256Hex,
  verifySignature,
  type SigningContext,
} from "./sigv4.js";
import { S3Error, errorDocument, readGroups, readTag, xmlDocument, type XmlNode } from "./xml.js";

/** The object storage's default port (the API's is 8470). */
export const DEFAULT_S3_PORT = 8471;
/** XML request bodies (CompleteMultipartUpload, Delete) are at most this big. */
const MAX_XML_BODY = 2 * 1024 * 1024;
/** Keys in one DeleteObjects request (S3's limit). */
const MAX_DELETE_KEYS = 1000;
/** Virtual-host-style requests name the bucket as the first label of a host under this domain. */
const VHOST_DOMAIN = ".localhost";

/** Bucket settings this store has none of: asked for, S3 answers these 404s. */
const NOT_CONFIGURED: [string, string, string][] = [
  ["policy", "NoSuchBucketPolicy", "bucket policy (access is by canned ACL: private or public-read)"],
  ["cors", "NoSuchCORSConfiguration", "CORS configuration"],
  ["lifecycle", "NoSuchLifecycleConfiguration", "lifecycle configuration"],
  ["tagging", "NoSuchTagSet", "tags"],
  ["website", "NoSuchWebsiteConfiguration", "website configuration"],
];
const UNSUPPORTED_SUBRESOURCES = [
  "logging",
  "encryption",
  "replication",
  "notification",
  "accelerate",
  "ownershipControls",
  "publicAccessBlock",
  "requestPayment",
  "object-lock",
  "inventory",
  "metrics",
  "analytics",
  "intelligent-tiering",
];

/** GET's query parameters that set an answer header (S3's response-*). */
const RESPONSE_OVERRIDES: [string, string][] = [
  ["response-content-type", "content-type"],
  ["response-content-disposition", "content-disposition"],
  ["response-content-language", "content-language"],
  ["response-content-encoding", "content-encoding"],
  ["response-cache-control", "cache-control"],
  ["response-expires", "expires"],
];

interface Call {
  req: IncomingMessage;
  res: ServerResponse;
  method: string;
  rawPath: string;
  query: Map<string, string>;
  pairs: [string, string][];
  bucket: string;
  key: string;
  principal: Principal | undefined;
  signing: SigningContext | undefined;
  payloadHash: string;
  requestId: string;
}

const header = (req: IncomingMessage, name: string): string | undefined => {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(",") : v;
};

const quoted = (etag: string): string => `"${etag}"`;
const httpDate = (iso: string): string => new Date(iso).toUTCString();

/** The x-amz-meta-* headers of a request, names lowercased without the prefix. */
function userMeta(req: IncomingMessage): Record<string, string> {
  const meta: Record<string, string> = {};
  let bytes = 0;
  for (const [k, v] of Object.entries(req.headers)) {
    if (!k.startsWith("x-amz-meta-") || v === undefined) continue;
    const value = Array.isArray(v) ? v.join(",") : v;
    meta[k.slice("x-amz-meta-".length)] = value;
    bytes += k.length + value.length;
  }
  if (bytes > 2048)
    throw new S3Error(
      400,
      "MetadataTooLarge",
      "Your metadata headers exceed the maximum allowed metadata size (2 KB).",
    );
  return meta;
}

function cannedAcl(req: IncomingMessage): Acl {
  const a = header(req, "x-amz-acl") ?? "private";
  if (a !== "private" && a !== "public-read")
    throw new S3Error(400, "NotImplemented", `the canned ACL ${a} is not supported (private or public-read)`);
  return a;
}

export class ObjectApi {
  private readonly objects: ObjectService;

  constructor(private readonly cloud: Cloud) {
    this.objects = cloud.objects;
  }

  /** The Node request listener. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const requestId = randomBytes(8).toString("hex").toUpperCase();
    res.setHeader("x-amz-request-id", requestId);
    res.setHeader("server", "Yun");
    this.serve(req, res, requestId).catch((e: unknown) => this.fail(req, res, e, requestId));
  };

  private fail(req: IncomingMessage, res: ServerResponse, e: unknown, requestId: string): void {
    if (res.headersSent) {
      // Mid-body (a blob failed its check, the client went away): end the connection so the
      // client sees an error, never a short or wrong body.
      res.destroy();
      req.destroy();
      return;
    }
    const err =
      e instanceof S3Error
        ? e
        : new S3Error(500, "InternalError", `We encountered an internal error: ${(e as Error).message}`);
    if (!(e instanceof S3Error)) process.stderr.write(`yun serve (S3): ${(e as Error).stack ?? String(e)}\n`);
    const body = req.method === "HEAD" ? "" : errorDocument(err, (req.url ?? "/").split("?")[0], requestId);
    // An unread body is not waited for: the connection closes after this answer.
    if (!req.readableEnded) res.setHeader("connection", "close");
    res.writeHead(err.status, {
      "content-type": "application/xml",
      "content-length": Buffer.byteLength(body),
      ...err.headers,
    });
    res.end(body);
    req.resume();
  }

  private async serve(req: IncomingMessage, res: ServerResponse, requestId: string): Promise<void> {
    await this.cloud.store.sync();
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const rawPath = q < 0 ? url : url.slice(0, q);
    const pairs = queryPairs(q < 0 ? "" : url.slice(q + 1));
    const query = new Map(pairs);
    let path: string;
    try {
      path = decodeURIComponent(rawPath);
    } catch {
      throw new S3Error(400, "InvalidURI", "Couldn't parse the specified URI.");
    }
    const hostName = (header(req, "host") ?? "").replace(/:\d+$/, "").toLowerCase();
    let bucket = "";
    let key = "";
    if (hostName.endsWith(VHOST_DOMAIN) && hostName.length > VHOST_DOMAIN.length) {
      bucket = hostName.slice(0, -VHOST_DOMAIN.length);
      key = path.slice(1);
    } else {
      const rest = path.slice(1);
      const slash = rest.indexOf("/");
      bucket = slash < 0 ? rest : rest.slice(0, slash);
      key = slash < 0 ? "" : rest.slice(slash + 1);
    }
    if (Buffer.byteLength(key) > 1024)
      throw new S3Error(400, "KeyTooLongError", "Your key is too long (1024 bytes at most).");

    let principal: Principal | undefined;
    let signing: SigningContext | undefined;
    const signed = parseSignedRequest(req.headers, pairs, this.cloud.now());
    let payloadHash = UNSIGNED_PAYLOAD;
    if (signed) {
      const owner = this.objects.keyPrincipal(signed.accessKeyId);
      if (!owner)
        throw new S3Error(
          403,
          "InvalidAccessKeyId",
          "The AWS Access Key Id you provided does not exist in our records.",
        );
      signing = verifySignature(signed, owner.secret, method, rawPath, pairs, req.headers);
      principal = owner.principal;
      payloadHash = signed.payloadHash;
    } else if (header(req, "x-amz-content-sha256")) {
      payloadHash = header(req, "x-amz-content-sha256")!;
    }
    const call: Call = {
      req,
      res,
      method,
      rawPath,
      query,
      pairs,
      bucket,
      key,
      principal,
      signing,
      payloadHash,
      requestId,
    };
    if (bucket === "") return this.service(call);
    if (key === "") return this.bucketOp(call);
    return this.objectOp(call);
  }

  // ---------------------------------------------------------------------------------- bodies

  /** The request's body as its decoded bytes, with what its sender vouched for. */
  private body(c: Call): { stream: Readable; expect: Expected; declared?: number } {
    const expect: Expected = {};
    const md5 = header(c.req, "content-md5");
    if (md5) expect.md5Base64 = md5;
    const crc = header(c.req, "x-amz-checksum-crc32");
    if (crc) expect.crc32Base64 = crc;
    const length = header(c.req, "content-length");
    const declared = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
    const ph = c.payloadHash;
    if (ph === STREAMING_SIGNED || ph === STREAMING_SIGNED_TRAILER || ph === STREAMING_UNSIGNED_TRAILER) {
      if (ph !== STREAMING_UNSIGNED_TRAILER && !c.signing)
        throw new S3Error(403, "AccessDenied", "a signed streaming payload needs a signed request");
      const decodedHeader = header(c.req, "x-amz-decoded-content-length");
      const decodedLength =
        decodedHeader !== undefined && /^\d+$/.test(decodedHeader) ? Number(decodedHeader) : undefined;
      const trailer = header(c.req, "x-amz-trailer");
      if (ph !== STREAMING_SIGNED && !trailer)
        throw new S3Error(400, "InvalidRequest", `${ph} needs an x-amz-trailer header naming the checksum`);
      const decoder = new AwsChunkedDecoder({
        signing: ph === STREAMING_UNSIGNED_TRAILER ? undefined : c.signing,
        trailer: ph === STREAMING_SIGNED ? undefined : trailer,
        decodedLength,
      });
      c.req.on("error", (e) => decoder.destroy(e));
      return { stream: c.req.pipe(decoder), expect, declared: decodedLength };
    }
    if (/^[0-9a-f]{64}$/.test(ph)) expect.sha256 = ph;
    else if (ph !== UNSIGNED_PAYLOAD)
      throw new S3Error(400, "InvalidArgument", `x-amz-content-sha256 "${ph.slice(0, 80)}" is not supported`);
    if (declared !== undefined) expect.size = declared;
    return { stream: c.req, expect, declared };
  }

  /** A small XML body (at most 2 MiB), checked against its declared sha256. */
  private async xmlBody(c: Call): Promise<string> {
    const { stream, expect } = this.body(c);
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > MAX_XML_BODY) throw new S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.");
      chunks.push(chunk);
    }
    const body = Buffer.concat(chunks);
    if (expect.sha256 !== undefined && sha256Hex(body) !== expect.sha256)
      throw new S3Error(
        400,
        "XAmzContentSHA256Mismatch",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
      );
    return body.toString("utf8");
  }

  private xml(c: Call, status: number, root: string, children: XmlNode[]): void {
    const body = xmlDocument(root, children);
    c.res.writeHead(status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
    c.res.end(body);
  }

  private empty(c: Call, status: number, headers: Record<string, string | number> = {}): void {
    c.res.writeHead(status, { "content-length": 0, ...headers });
    c.res.end();
  }

  private needPrincipal(c: Call): Principal {
    if (!c.principal) throw new S3Error(403, "AccessDenied", "Access Denied (this request must be signed)");
    return c.principal;
  }

  /** The bucket a request names, authorized for the caller; counts the request to its project. */
  private bucketFor(c: Call, write: boolean, objectAcl?: Acl): BucketRow {
    const b = this.objects.bucket(c.bucket);
    this.objects.countRequest(b.project_id, write);
    this.objects.authorize(c.principal, b, write, objectAcl);
    return b;
  }

  // --------------------------------------------------------------------------------- service

  private service(c: Call): void {
    if (c.method !== "GET")
      throw new S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.");
    const p = this.needPrincipal(c);
    const buckets = this.objects.listBuckets(p);
    this.xml(c, 200, "ListAllMyBucketsResult", [
      [
        "Owner",
        [
          ["ID", p.projectId],
          ["DisplayName", p.projectName],
        ],
      ],
      [
        "Buckets",
        buckets.map((b): XmlNode => [
          "Bucket",
          [
            ["Name", b.name],
            ["CreationDate", b.created_at],
          ],
        ]),
      ],
    ]);
  }

  // --------------------------------------------------------------------------------- buckets

  private async bucketOp(c: Call): Promise<void> {
    const q = c.query;
    switch (c.method) {
      case "PUT": {
        if (q.has("acl")) {
          const p = this.needPrincipal(c);
          await this.drain(c);
          await this.objects.setBucketAcl(p, c.bucket, cannedAcl(c.req));
          return this.empty(c, 200);
        }
        const p = this.needPrincipal(c);
        const acl = cannedAcl(c.req);
        await this.xmlBody(c); // CreateBucketConfiguration: the region is not a choice here
        await this.objects.createBucket(p, c.bucket, acl);
        this.objects.countRequest(p.projectId, true);
        return this.empty(c, 200, { location: `/${c.bucket}` });
      }
      case "HEAD": {
        this.bucketFor(c, false);
        return this.empty(c, 200, { "x-amz-bucket-region": "us-east-1" });
      }
      case "DELETE": {
        const p = this.needPrincipal(c);
        this.bucketFor(c, true);
        await this.objects.deleteBucket(p, c.bucket);
        return this.empty(c, 204);
      }
      case "POST": {
        if (!q.has("delete")) break;
        return this.deleteObjects(c);
      }
      case "GET": {
        if (q.has("location")) {
          this.bucketFor(c, false);
          const body = `<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></LocationConstraint>`;
          c.res.writeHead(200, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
          return void c.res.end(body);
        }
        if (q.has("acl")) {
          const b = this.bucketFor(c, false);
          return this.acl(c, b.project_id, b.acl);
        }
        if (q.has("versioning")) {
          this.bucketFor(c, false);
          return this.xml(c, 200, "VersioningConfiguration", []);
        }
        if (q.has("uploads")) return this.listUploads(c);
        for (const [sub, code, what] of NOT_CONFIGURED)
          if (q.has(sub)) {
            this.bucketFor(c, false);
            throw new S3Error(404, code, `The bucket has no ${what}`);
          }
        for (const sub of UNSUPPORTED_SUBRESOURCES)
          if (q.has(sub)) throw new S3Error(501, "NotImplemented", `the bucket's ${sub} is not implemented`);
        return this.listObjects(c);
      }
    }
    throw new S3Error(501, "NotImplemented", `${c.method} on a bucket with these parameters is not implemented`);
  }

  private acl(c: Call, owner: string, acl: Acl): void {
    const grant = (grantee: XmlNode[], permission: string): XmlNode => [
      "Grant",
      [
        ["Grantee", grantee],
        ["Permission", permission],
      ],
    ];
    const grants: XmlNode[] = [grant([["ID", owner]], "FULL_CONTROL")];
    if (acl === "public-read") grants.push(grant([["URI", "http://acs.amazonaws.com/groups/global/AllUsers"]], "READ"));
    this.xml(c, 200, "AccessControlPolicy", [
      ["Owner", [["ID", owner]]],
      ["AccessControlList", grants],
    ]);
  }

  private listObjects(c: Call): void {
    const b = this.bucketFor(c, false);
    const q = c.query;
    const v2 = q.get("list-type") === "2";
    const prefix = q.get("prefix") ?? "";
    const delimiter = q.get("delimiter") ?? "";
    const maxText = q.get("max-keys");
    const maxKeys = maxText === undefined ? 1000 : Number(maxText);
    if (!Number.isInteger(maxKeys) || maxKeys < 0)
      throw new S3Error(400, "InvalidArgument", "max-keys must be a whole number of at least 0");
    const urlEncoded = q.get("encoding-type") === "url";
    const enc = (s: string): string => (urlEncoded ? encodeURIComponent(s).replace(/%2F/g, "/") : s);
    let after: string;
    const token = q.get("continuation-token");
    if (v2) {
      if (token !== undefined) {
        after = Buffer.from(token, "base64url").toString("utf8");
        if (token === "" || Buffer.from(after, "utf8").toString("base64url") !== token)
          throw new S3Error(400, "InvalidArgument", "The continuation token provided is incorrect");
      } else after = q.get("start-after") ?? "";
    } else after = q.get("marker") ?? "";
    const page = this.objects.list(b, prefix, delimiter, after, Math.min(maxKeys, 1000));
    const contents = page.objects.map((o): XmlNode => [
      "Contents",
      [
        ["Key", enc(o.key)],
        ["LastModified", o.modified_at],
        ["ETag", quoted(o.etag)],
        ["Size", o.size],
        ["StorageClass", "STANDARD"],
      ],
    ]);
    const prefixes = page.prefixes.map((p): XmlNode => ["CommonPrefixes", [["Prefix", enc(p)]]]);
    const head: XmlNode[] = [
      ["Name", b.name],
      ["Prefix", enc(prefix)],
      ...(delimiter ? ([["Delimiter", enc(delimiter)]] as XmlNode[]) : []),
      ["MaxKeys", maxKeys],
      ...(urlEncoded ? ([["EncodingType", "url"]] as XmlNode[]) : []),
      ["IsTruncated", page.truncated],
    ];
    if (v2) {
      this.xml(c, 200, "ListBucketResult", [
        ...head,
        ["KeyCount", page.objects.length + page.prefixes.length],
        ["ContinuationToken", token],
        ["StartAfter", q.get("start-after")],
        [
          "NextContinuationToken",
          page.truncated && page.next !== undefined ? Buffer.from(page.next, "utf8").toString("base64url") : undefined,
        ],
        ...contents,
        ...prefixes,
      ]);
    } else {
      this.xml(c, 200, "ListBucketResult", [
        ...head,
        ["Marker", q.get("marker") ?? ""],
        ["NextMarker", page.truncated ? page.next : undefined],
        ...contents,
        ...prefixes,
      ]);
    }
  }

  private listUploads(c: Call): void {
    const b = this.bucketFor(c, false);
    const uploads = this.objects.uploads(b, c.query.get("prefix") ?? "");
    this.xml(c, 200, "ListMultipartUploadsResult", [
      ["Bucket", b.name],
      ["KeyMarker", ""],
      ["UploadIdMarker", ""],
      ["MaxUploads", 1000],
      ["IsTruncated", false],
      ...uploads.map((u): XmlNode => [
        "Upload",
        [
          ["Key", u.key],
          ["UploadId", u.id],
          ["Initiated", u.created_at],
          ["StorageClass", "STANDARD"],
        ],
      ]),
    ]);
  }

  private async deleteObjects(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    const xml = await this.xmlBody(c);
    const items = readGroups(xml, "Object", ["Key"]);
    if (items.length > MAX_DELETE_KEYS)
      throw new S3Error(400, "MalformedXML", `a Delete request may name at most ${MAX_DELETE_KEYS} keys`);
    const quiet = readTag(xml, "Quiet") === "true";
    const results: XmlNode[] = [];
    for (const it of items) {
      if (it.Key === undefined) throw new S3Error(400, "MalformedXML", "an Object in Delete has no Key");
      await this.objects.deleteObject(b, it.Key);
      if (!quiet) results.push(["Deleted", [["Key", it.Key]]]);
    }
    this.xml(c, 200, "DeleteResult", results);
  }

  private async drain(c: Call): Promise<void> {
    for await (const _ of c.req) void _;
  }

  // --------------------------------------------------------------------------------- objects

  private async objectOp(c: Call): Promise<void> {
    const q = c.query;
    switch (c.method) {
      case "GET":
      case "HEAD":
        if (q.has("uploadId")) return this.listParts(c);
        if (q.has("acl")) {
          const b = this.bucketFor(c, false);
          const o = this.objects.object(b, c.key);
          return this.acl(c, b.project_id, o.acl);
        }
        return this.getObject(c);
      case "PUT":
        if (q.has("uploadId") || q.has("partNumber")) return this.uploadPart(c);
        if (q.has("acl")) return this.putObjectAcl(c);
        if (header(c.req, "x-amz-copy-source") !== undefined) return this.copyObject(c);
        return this.putObject(c);
      case "DELETE": {
        const b = this.bucketFor(c, true);
        if (q.has("uploadId")) {
          await this.objects.abortUpload(this.objects.upload(b, c.key, q.get("uploadId")!));
          return this.empty(c, 204);
        }
        await this.objects.deleteObject(b, c.key);
        return this.empty(c, 204);
      }
      case "POST":
        if (q.has("uploads")) {
          const b = this.bucketFor(c, true);
          await this.drain(c);
          const id = await this.objects.createUpload(b, c.key, this.fields(c));
          return this.xml(c, 200, "InitiateMultipartUploadResult", [
            ["Bucket", b.name],
            ["Key", c.key],
            ["UploadId", id],
          ]);
        }
        if (q.has("uploadId")) return this.completeUpload(c);
        break;
    }
    throw new S3Error(501, "NotImplemented", `${c.method} on an object with these parameters is not implemented`);
  }

  private fields(c: Call): { contentType: string; meta: Record<string, string>; acl: Acl } {
    return {
      contentType: header(c.req, "content-type") ?? "binary/octet-stream",
      meta: userMeta(c.req),
      acl: cannedAcl(c.req),
    };
  }

  private objectHeaders(o: ObjectRow): Record<string, string | number> {
    const h: Record<string, string | number> = {
      etag: quoted(o.etag),
      "last-modified": httpDate(o.modified_at),
      "content-type": o.content_type,
      "accept-ranges": "bytes",
    };
    for (const [k, v] of Object.entries(JSON.parse(o.meta) as Record<string, string>)) h[`x-amz-meta-${k}`] = v;
    return h;
  }

  private async putObject(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    const fields = this.fields(c);
    const { stream, expect, declared } = this.body(c);
    const room = this.objects.room(b, this.existingSize(b, c.key));
    if (declared !== undefined && declared > MAX_OBJECT_BYTES)
      throw new S3Error(
        400,
        "EntityTooLarge",
        `an object sent in one PUT may have at most ${MAX_OBJECT_BYTES} bytes; use a multipart upload`,
      );
    if (declared !== undefined && declared > room)
      throw new S3Error(
        403,
        "QuotaExceeded",
        `quota objectBytes exceeded: the bucket's project has ${room} bytes left and this object has ${declared}`,
      );
    const written = await this.objects.blobs.write(stream, Math.min(MAX_OBJECT_BYTES, room), expect);
    const o = await this.objects.putObject(b, c.key, written, fields);
    this.empty(c, 200, {
      etag: quoted(o.etag),
      ...(expect.crc32Base64 ? { "x-amz-checksum-crc32": written.crc32 } : {}),
    });
  }

  private existingSize(b: BucketRow, key: string): number {
    try {
      return this.objects.object(b, key).size;
    } catch {
      return 0;
    }
  }

  private async putObjectAcl(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    const o = this.objects.object(b, c.key);
    await this.drain(c);
    await this.objects.putObject(
      b,
      c.key,
      (this.objects.blobs.hold(o.blob), { sha256: o.blob, md5: o.etag, size: o.size, crc32: "" }),
      {
        etag: o.etag,
        contentType: o.content_type,
        meta: JSON.parse(o.meta) as Record<string, string>,
        acl: cannedAcl(c.req),
      },
    );
    this.empty(c, 200);
  }

  private async copyObject(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    let source = header(c.req, "x-amz-copy-source")!;
    try {
      source = decodeURIComponent(source);
    } catch {
      throw new S3Error(400, "InvalidArgument", "x-amz-copy-source is not a valid URL path");
    }
    source = source.replace(/^\//, "").split("?")[0];
    const slash = source.indexOf("/");
    if (slash <= 0) throw new S3Error(400, "InvalidArgument", "x-amz-copy-source must be BUCKET/KEY");
    const sb = this.objects.bucket(source.slice(0, slash));
    this.objects.authorize(c.principal, sb, false);
    const src = this.objects.object(sb, source.slice(slash + 1));
    this.conditions(c, src, "x-amz-copy-source-");
    const replace = header(c.req, "x-amz-metadata-directive") === "REPLACE";
    if (!replace && sb.id === b.id && src.key === c.key)
      throw new S3Error(
        400,
        "InvalidRequest",
        "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata.",
      );
    await this.drain(c);
    const fields = replace
      ? this.fields(c)
      : { contentType: src.content_type, meta: JSON.parse(src.meta) as Record<string, string>, acl: cannedAcl(c.req) };
    const o = await this.objects.copyObject(src, b, c.key, fields);
    this.xml(c, 200, "CopyObjectResult", [
      ["LastModified", o.modified_at],
      ["ETag", quoted(o.etag)],
    ]);
  }

  /**
   * If-Match / If-None-Match / If-Modified-Since / If-Unmodified-Since (prefix "" on reads,
   * "x-amz-copy-source-" on copies): throws 412, or answers 304 and returns false.
   */
  private conditions(c: Call, o: ObjectRow, prefix = ""): boolean {
    const h = (n: string): string | undefined => header(c.req, prefix + n);
    const matches = (list: string): boolean =>
      list
        .split(",")
        .map((s) => s.trim().replace(/^W\//, "").replace(/"/g, ""))
        .some((e) => e === "*" || e === o.etag);
    const modified = Math.floor(Date.parse(o.modified_at) / 1000);
    const since = (n: string): number | undefined => {
      const v = h(n);
      if (v === undefined) return undefined;
      const t = Date.parse(v);
      return Number.isNaN(t) ? undefined : Math.floor(t / 1000);
    };
    const failed = (): S3Error =>
      new S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold");
    const ifMatch = h("if-match");
    if (ifMatch !== undefined && !matches(ifMatch)) throw failed();
    const unmodified = since("if-unmodified-since");
    if (ifMatch === undefined && unmodified !== undefined && modified > unmodified) throw failed();
    const ifNone = h("if-none-match");
    const notModified = (): boolean => {
      if (prefix !== "") throw failed();
      c.res.writeHead(304, { etag: quoted(o.etag), "last-modified": httpDate(o.modified_at) });
      c.res.end();
      return false;
    };
    if (ifNone !== undefined && matches(ifNone)) return notModified();
    const modSince = since("if-modified-since");
    if (ifNone === undefined && modSince !== undefined && modified <= modSince) return notModified();
    return true;
  }

  private async getObject(c: Call): Promise<void> {
    const b = this.objects.bucket(c.bucket);
    this.objects.countRequest(b.project_id, false);
    // An object's own public-read ACL opens it even in a private bucket.
    const found = this.db().prepare("SELECT acl FROM objects WHERE bucket_id = ? AND key = ?").get(b.id, c.key) as
      { acl: Acl } | undefined;
    this.objects.authorize(c.principal, b, false, found?.acl);
    const o = this.objects.object(b, c.key);
    if (!this.conditions(c, o)) return;
    let start = 0;
    let end = o.size - 1;
    let status = 200;
    const range = header(c.req, "range");
    const headers = this.objectHeaders(o);
    const m = range !== undefined ? /^bytes=(\d*)-(\d*)$/.exec(range.trim()) : null;
    if (m && (m[1] !== "" || m[2] !== "")) {
      if (m[1] === "") {
        start = Math.max(0, o.size - Number(m[2]));
      } else {
        start = Number(m[1]);
        if (m[2] !== "") end = Math.min(end, Number(m[2]));
        if (m[2] !== "" && Number(m[2]) < start) start = o.size; // unsatisfiable
      }
      if (start >= o.size || (m[1] === "" && Number(m[2]) === 0))
        throw new S3Error(416, "InvalidRange", "The requested range is not satisfiable", {
          "content-range": `bytes */${o.size}`,
        });
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${o.size}`;
    }
    headers["content-length"] = end - start + 1;
    // A (presigned) GET may ask for other answer headers, e.g. a download's file name.
    for (const [param, name] of RESPONSE_OVERRIDES) {
      const v = c.query.get(param);
      if (v === undefined) continue;
      if (!c.principal) throw new S3Error(400, "InvalidRequest", `${param} needs a signed request`);
      if (!/^[\x20-\x7e\t]*$/.test(v)) throw new S3Error(400, "InvalidArgument", `${param} must be printable ASCII`);
      headers[name] = v;
    }
    if (c.method === "HEAD") {
      c.res.writeHead(status, headers);
      return void c.res.end();
    }
    const data = this.objects.blobs.read(o.blob, start, end);
    c.res.writeHead(status, headers);
    await pipeline(data, c.res);
  }

  private db() {
    return this.cloud.db;
  }

  // ------------------------------------------------------------------------------- multipart

  private async uploadPart(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    const u = this.objects.upload(b, c.key, c.query.get("uploadId") ?? "");
    const part = Number(c.query.get("partNumber"));
    if (!Number.isInteger(part) || part < 1 || part > MAX_PARTS)
      throw new S3Error(400, "InvalidArgument", `partNumber must be a whole number from 1 to ${MAX_PARTS}`);
    if (header(c.req, "x-amz-copy-source") !== undefined)
      throw new S3Error(501, "NotImplemented", "UploadPartCopy is not implemented");
    const { stream, expect, declared } = this.body(c);
    const room = this.objects.room(b);
    if (declared !== undefined && declared > room)
      throw new S3Error(
        403,
        "QuotaExceeded",
        `quota objectBytes exceeded: the bucket's project has ${room} bytes left and this part has ${declared}`,
      );
    const written = await this.objects.blobs.write(stream, Math.min(MAX_OBJECT_BYTES, room), expect);
    const p = await this.objects.putPart(b, u, part, written);
    this.empty(c, 200, {
      etag: quoted(p.etag),
      ...(expect.crc32Base64 ? { "x-amz-checksum-crc32": written.crc32 } : {}),
    });
  }

  private listParts(c: Call): void {
    const b = this.bucketFor(c, false);
    const u = this.objects.upload(b, c.key, c.query.get("uploadId") ?? "");
    const parts = this.objects.parts(u);
    this.xml(c, 200, "ListPartsResult", [
      ["Bucket", b.name],
      ["Key", u.key],
      ["UploadId", u.id],
      ["PartNumberMarker", 0],
      ["MaxParts", MAX_PARTS],
      ["IsTruncated", false],
      ...parts.map((p): XmlNode => [
        "Part",
        [
          ["PartNumber", p.part],
          ["LastModified", p.modified_at],
          ["ETag", quoted(p.etag)],
          ["Size", p.size],
        ],
      ]),
    ]);
  }

  private async completeUpload(c: Call): Promise<void> {
    const b = this.bucketFor(c, true);
    const u = this.objects.upload(b, c.key, c.query.get("uploadId") ?? "");
    const xml = await this.xmlBody(c);
    const chosen = readGroups(xml, "Part", ["PartNumber", "ETag"]).map((p) => {
      const part = Number(p.PartNumber);
      if (!Number.isInteger(part) || p.ETag === undefined)
        throw new S3Error(400, "MalformedXML", "each Part needs a PartNumber and an ETag");
      return { part, etag: p.ETag };
    });
    // A long join: S3 answers 200 at once and keeps the connection busy with spaces; this
    // server answers when done (clients wait for the answer either way).
    const o = await this.objects.completeUpload(b, u, chosen);
    this.xml(c, 200, "CompleteMultipartUploadResult", [
      ["Location", `/${b.name}/${o.key}`],
      ["Bucket", b.name],
      ["Key", o.key],
      ["ETag", quoted(o.etag)],
    ]);
  }
}

export interface RunningObjectServer {
  server: Server;
  port: number;
  close(): Promise<void>;
}

/** Serves the object storage API on host:port (0: a free port); with tls, HTTPS. */
export function listenObjects(cloud: Cloud, host: string, port: number, tls?: TlsFiles): Promise<RunningObjectServer> {
  const api = new ObjectApi(cloud);
  const server: Server = tls
    ? (createHttpsServer({ cert: tls.cert, key: tls.key }, api.handle) as unknown as Server)
    : createServer(api.handle);
  // Large uploads may take long; a stalled client is cut off after 5 minutes of silence.
  server.requestTimeout = 0;
  server.setTimeout(5 * 60 * 1000);
  // Idle keep-alive connections stay open longer than clients' pauses between requests: a
  // server closing one just as a client reuses it costs that client a reset request.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 70_000;
  return new Promise((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const a = server.address();
      resolveListen({
        server,
        port: typeof a === "object" && a ? a.port : port,
        close: () =>
          new Promise<void>((r) => {
            server.closeAllConnections();
            server.close(() => r());
          }),
      });
    });
  });
}

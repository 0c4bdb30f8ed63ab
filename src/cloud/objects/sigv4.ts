/**
 * AWS Signature Version 4 as S3 checks it: the Authorization header form and the presigned query
 * form (X-Amz-*). The request's canonical form is rebuilt from what arrived (path segments and
 * query parameters decoded and encoded again the one way SigV4 defines, so clients that escape
 * differently still agree), signed with the access key's secret and compared in constant time.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { S3Error } from "./xml.js";

export const UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD";
export const STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
export const STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
export const STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
export const EMPTY_SHA256 = createHash("sha256").digest("hex");

/** How far a request's X-Amz-Date may be from the server's clock (S3's own bound). */
const MAX_SKEW_MS = 15 * 60 * 1000;
/** The longest a presigned URL may be valid (S3's bound: 7 days). */
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

/** A SigV4-signed request, parsed: who claims to sign it and what they signed. */
export interface SignedRequest {
  accessKeyId: string;
  /** YYYYMMDD/region/s3/aws4_request */
  scope: string;
  date: string;
  region: string;
  /** X-Amz-Date: YYYYMMDDTHHMMSSZ */
  amzDate: string;
  signedHeaders: string[];
  signature: string;
  presigned: boolean;
  /** The payload hash the signature covers (hex sha256, UNSIGNED-PAYLOAD or a STREAMING-* form). */
  payloadHash: string;
}

/** What a verified signature lets the body decoder check: each chunk's signature chains from it. */
export interface SigningContext {
  key: Buffer;
  amzDate: string;
  scope: string;
  seedSignature: string;
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac("sha256", key).update(data).digest();
export const sha256Hex = (data: string | Buffer): string => createHash("sha256").update(data).digest("hex");

export function signingKey(secret: string, date: string, region: string, service = "s3"): Buffer {
  return hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
}

/** RFC 3986 escaping as SigV4 defines it: everything but A-Z a-z 0-9 - _ . ~ */
export function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function canonicalPath(rawPath: string): string {
  return rawPath
    .split("/")
    .map((seg) => uriEncode(decode(seg)))
    .join("/");
}

/** The query's parameters as sent: [name, value] decoded ('+' is a literal plus, as S3 reads it). */
export function queryPairs(rawQuery: string): [string, string][] {
  if (rawQuery === "") return [];
  return rawQuery.split("&").map((part) => {
    const eq = part.indexOf("=");
    return eq < 0 ? [decode(part), ""] : [decode(part.slice(0, eq)), decode(part.slice(eq + 1))];
  });
}

function canonicalQuery(pairs: [string, string][]): string {
  return pairs
    .map(([k, v]) => [uriEncode(k), uriEncode(v)])
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
}

function headerValue(headers: IncomingHttpHeaders, name: string): string {
  const v = headers[name];
  const s = Array.isArray(v) ? v.join(",") : (v ?? "");
  return s.trim().replace(/\s+/g, " ");
}

function parseAmzDate(amzDate: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!m) throw new S3Error(403, "AccessDenied", `X-Amz-Date "${amzDate}" is not of the form YYYYMMDDTHHMMSSZ`);
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
}

function parseCredential(credential: string): { accessKeyId: string; date: string; region: string; scope: string } {
  const parts = credential.split("/");
  if (parts.length !== 5 || parts[3] !== "s3" || parts[4] !== "aws4_request" || !/^\d{8}$/.test(parts[1]))
    throw new S3Error(
      400,
      "AuthorizationHeaderMalformed",
      `the credential "${credential}" is not ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request`,
    );
  return { accessKeyId: parts[0], date: parts[1], region: parts[2], scope: parts.slice(1).join("/") };
}

/**
 * The request's SigV4 claims: from the Authorization header or the presigned query; undefined
 * when it carries neither (an anonymous request). Malformed claims and expired or skewed dates
 * throw the S3 error a client would get.
 */
export function parseSignedRequest(
  headers: IncomingHttpHeaders,
  pairs: [string, string][],
  nowMs: number,
): SignedRequest | undefined {
  const auth = headerValue(headers, "authorization");
  const q = new Map(pairs);
  if (auth !== "") {
    if (!auth.startsWith("AWS4-HMAC-SHA256 "))
      throw new S3Error(
        400,
        "InvalidRequest",
        auth.startsWith("AWS ")
          ? "Signature Version 2 is not supported: sign requests with AWS Signature Version 4"
          : "the Authorization header is not AWS4-HMAC-SHA256",
      );
    const fields = new Map<string, string>();
    for (const f of auth.slice("AWS4-HMAC-SHA256 ".length).split(",")) {
      const eq = f.indexOf("=");
      if (eq > 0) fields.set(f.slice(0, eq).trim(), f.slice(eq + 1).trim());
    }
    const credential = fields.get("Credential");
    const signed = fields.get("SignedHeaders");
    const signature = fields.get("Signature");
    if (!credential || !signed || !signature)
      throw new S3Error(
        400,
        "AuthorizationHeaderMalformed",
        "the Authorization header needs Credential, SignedHeaders and Signature",
      );
    const c = parseCredential(credential);
    const amzDate = headerValue(headers, "x-amz-date");
    if (amzDate === "") throw new S3Error(403, "AccessDenied", "a signed request needs an X-Amz-Date header");
    const at = parseAmzDate(amzDate);
    if (Math.abs(at - nowMs) > MAX_SKEW_MS)
      throw new S3Error(
        403,
        "RequestTimeTooSkewed",
        "the difference between the request time and the server's time is too large",
      );
    const payloadHash = headerValue(headers, "x-amz-content-sha256") || UNSIGNED_PAYLOAD;
    return {
      ...c,
      amzDate,
      signedHeaders: signed.split(";"),
      signature,
      presigned: false,
      payloadHash,
    };
  }
  if (q.has("X-Amz-Signature")) {
    if (q.get("X-Amz-Algorithm") !== "AWS4-HMAC-SHA256")
      throw new S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256");
    const c = parseCredential(q.get("X-Amz-Credential") ?? "");
    const amzDate = q.get("X-Amz-Date") ?? "";
    const at = parseAmzDate(amzDate);
    const expires = Number(q.get("X-Amz-Expires"));
    if (!Number.isInteger(expires) || expires < 1 || expires > MAX_PRESIGN_SECONDS)
      throw new S3Error(
        400,
        "AuthorizationQueryParametersError",
        `X-Amz-Expires must be 1 to ${MAX_PRESIGN_SECONDS} seconds`,
      );
    if (nowMs > at + expires * 1000) throw new S3Error(403, "AccessDenied", "Request has expired");
    if (at - nowMs > MAX_SKEW_MS)
      throw new S3Error(403, "AccessDenied", "the presigned URL's X-Amz-Date is in the future");
    return {
      ...c,
      amzDate,
      signedHeaders: (q.get("X-Amz-SignedHeaders") ?? "host").split(";"),
      signature: q.get("X-Amz-Signature") ?? "",
      presigned: true,
      payloadHash: q.get("X-Amz-Content-Sha256") ?? UNSIGNED_PAYLOAD,
    };
  }
  return undefined;
}

/**
 * Checks the signature with the access key's secret; throws SignatureDoesNotMatch. Returns what
 * the body decoder needs to check the signatures of a chunked upload.
 */
export function verifySignature(
  req: SignedRequest,
  secret: string,
  method: string,
  rawPath: string,
  pairs: [string, string][],
  headers: IncomingHttpHeaders,
): SigningContext {
  const query = req.presigned ? pairs.filter(([k]) => k !== "X-Amz-Signature") : pairs;
  const canonicalHeaders = req.signedHeaders.map((h) => `${h}:${headerValue(headers, h)}\n`).join("");
  const canonical = [
    method,
    canonicalPath(rawPath),
    canonicalQuery(query),
    canonicalHeaders,
    req.signedHeaders.join(";"),
    req.payloadHash,
  ].join("\n");
  const stringToSign = ["AWS4-HMAC-SHA256", req.amzDate, req.scope, sha256Hex(canonical)].join("\n");
  const key = signingKey(secret, req.date, req.region);
  const expected = createHmac("sha256", key).update(stringToSign).digest();
  const given = Buffer.from(/^[0-9a-f]{64}$/.test(req.signature) ? req.signature : "", "hex");
  if (given.length !== expected.length || !timingSafeEqual(given, expected))
    throw new S3Error(
      403,
      "SignatureDoesNotMatch",
      "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    );
  if (!req.signedHeaders.includes("host"))
    throw new S3Error(403, "AccessDenied", "the signature must cover the Host header");
  return { key, amzDate: req.amzDate, scope: req.scope, seedSignature: req.signature };
}

/** The signature of one chunk of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body. */
export function chunkSignature(ctx: SigningContext, previous: string, chunkSha256: string): string {
  const s = ["AWS4-HMAC-SHA256-PAYLOAD", ctx.amzDate, ctx.scope, previous, EMPTY_SHA256, chunkSha256].join("\n");
  return createHmac("sha256", ctx.key).update(s).digest("hex");
}

/** The signature of the trailer of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER body. */
export function trailerSignature(ctx: SigningContext, previous: string, trailerText: string): string {
  const s = ["AWS4-HMAC-SHA256-TRAILER", ctx.amzDate, ctx.scope, previous, sha256Hex(trailerText)].join("\n");
  return createHmac("sha256", ctx.key).update(s).digest("hex");
}

/**
 * Limits on what a client may send the daemon: the size of a request body, API requests per token,
 * console WebSocket connections per token, and failed logins per client address. Each limit
 * answers before the request costs anything (a body is refused from its Content-Length or after
 * the first bytes past the cap; a throttled request is not authenticated, audited or parsed).
 */
import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Context, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { PassThrough, Readable } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";

export interface LimitSettings {
  /** The largest JSON request body, in bytes (image uploads have their own cap). */
  jsonBodyBytes: number;
  /** API requests a second per token; 0: no limit. */
  apiRate: number;
  /** Requests a token may make at once beyond the rate. */
  apiBurst: number;
  /** Console WebSocket connections a minute per token; 0: no limit (on the rate nor the count). */
  consolePerMinute: number;
  /** Console connections a token may open at once beyond that rate. */
  consoleBurst: number;
  /** Console connections a token may hold open at the same time. */
  consoleOpen: number;
  /** Failed logins (401: no token, an unknown or malformed one) a minute per address; 0: no limit. */
  loginFailuresPerMinute: number;
  /** Failed logins an address may make at once before it has to wait. */
  loginFailureBurst: number;
}

const MiB = 1024 * 1024;

/** Generous: normal use, the dashboard and the test suite never reach them. */
export const DEFAULT_LIMITS: LimitSettings = {
  jsonBodyBytes: MiB,
  apiRate: 50,
  apiBurst: 200,
  consolePerMinute: 60,
  consoleBurst: 20,
  consoleOpen: 16,
  loginFailuresPerMinute: 10,
  loginFailureBurst: 20,
};

/** Every rate limit off (body limits stay): for load and fuzz tests. */
export const NO_RATE_LIMITS: Partial<LimitSettings> = { apiRate: 0, consolePerMinute: 0, loginFailuresPerMinute: 0 };

/**
 * Token buckets by key: each key earns `perSecond` tokens a second up to `burst`; a bucket that
 * has refilled completely carries no information and is dropped when the map grows, so the memory
 * held stays bounded whatever keys clients make up.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    readonly perSecond: number,
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
    private readonly maxKeys = 10_000,
  ) {}

  get enabled(): boolean {
    return this.perSecond > 0;
  }

  /** Seconds until `key` has a token (0: it has one now). */
  wait(key: string): number {
    if (!this.enabled) return 0;
    const tokens = this.tokens(key, this.now());
    return tokens >= 1 ? 0 : (1 - tokens) / this.perSecond;
  }

  /** Takes a token from `key`: 0 if it had one, else the seconds until it will (nothing taken). */
  take(key: string): number {
    if (!this.enabled) return 0;
    const now = this.now();
    const tokens = this.tokens(key, now);
    if (tokens < 1) return (1 - tokens) / this.perSecond;
    // Re-inserted so the map's order is least recently used first.
    this.buckets.delete(key);
    this.buckets.set(key, { tokens: tokens - 1, at: now });
    if (this.buckets.size > this.maxKeys) this.prune(now);
    return 0;
  }

  /** How many keys are held (for tests). */
  get size(): number {
    return this.buckets.size;
  }

  private tokens(key: string, now: number): number {
    const b = this.buckets.get(key);
    if (!b) return this.burst;
    return Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
  }

  private prune(now: number): void {
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(k);
    }
    // Still too many live buckets: the least recently used go (they lose at most their debt).
    for (const k of this.buckets.keys()) {
      if (this.buckets.size <= this.maxKeys) break;
      this.buckets.delete(k);
    }
  }
}

/** A refusal for the client: status 413 or 429, the error body, and Retry-After for 429. */
export interface LimitRefusal {
  status: 413 | 429;
  code: "too_large" | "rate_limited";
  message: string;
  /** Seconds (429 only). */
  retryAfter?: number;
}

/** A short key for a credential, so the buckets hold no tokens. */
function credentialKey(token: string): string {
  return createHash("sha256").update(token).digest("base64url").slice(0, 22);
}

/** The token of an Authorization header ("Bearer <token>"), or the header itself. */
function bearer(header: string): string {
  const m = /^Bearer\s+(\S+)$/i.exec(header.trim());
  return m ? m[1] : header;
}

const seconds = (s: number): number => Math.max(1, Math.ceil(s));

/** The address a request came from (the Node adapter's socket; "local" when called in-process). */
export function clientAddress(c: Context): string {
  return nodeRequest(c)?.socket?.remoteAddress ?? "local";
}

export class RequestLimits {
  readonly settings: LimitSettings;
  private readonly api: TokenBuckets;
  private readonly consoles: TokenBuckets;
  private readonly logins: TokenBuckets;
  private readonly openConsoles = new Map<string, number>();

  constructor(settings: Partial<LimitSettings> = {}, now?: () => number) {
    const s = { ...DEFAULT_LIMITS, ...settings };
    this.settings = s;
    this.api = new TokenBuckets(s.apiRate, s.apiBurst, now);
    this.consoles = new TokenBuckets(s.consolePerMinute / 60, s.consoleBurst, now);
    this.logins = new TokenBuckets(s.loginFailuresPerMinute / 60, s.loginFailureBurst, now);
  }

  /** A refusal if `address` has failed to log in too often lately. */
  private loginBlock(address: string): LimitRefusal | null {
    const wait = this.logins.wait(address);
    if (wait === 0) return null;
    return {
      status: 429,
      code: "rate_limited",
      message: `too many failed logins from ${address}; try again in ${seconds(wait)} s`,
      retryAfter: seconds(wait),
    };
  }

  /** Records a failed login (an unknown or malformed token) from `address`. */
  loginFailed(address: string): void {
    this.logins.take(address);
  }

  /**
   * The API's gate, for /api/v1/*: failed-login block, the token's rate, the body's size; then,
   * after the request, a 401 (no token, or a bad one) counts as a failed login of its address.
   */
  middleware(): MiddlewareHandler {
    const max = this.settings.jsonBodyBytes;
    const tooLarge = (c: Context): Response =>
      refuse(c, {
        status: 413,
        code: "too_large",
        message: `the request body is larger than ${describeBytes(max)}, the most a JSON request may send`,
      });
    // In-process requests (app.request, no socket): Hono's own limit, which buffers up to max.
    const inProcess = bodyLimit({ maxSize: max, onError: tooLarge });
    const limitJson: MiddlewareHandler = async (c, next) => {
      const incoming = nodeRequest(c);
      if (!incoming) return inProcess(c, next);
      const declared = incoming.headers["content-length"];
      if (declared !== undefined && incoming.headers["transfer-encoding"] === undefined) {
        // Refused unread: the Node adapter then discards what still arrives, so the client reads
        // the answer, and a small excess even leaves the connection usable.
        return Number(declared) > max ? tooLarge(c) : next();
      }
      // Neither Content-Length nor Transfer-Encoding: HTTP/1.1 says there is no body.
      if (incoming.headers["transfer-encoding"] === undefined) return next();
      const body = await readUpTo(incoming, max);
      if (body === null) return tooLarge(c);
      c.req.raw = new Request(c.req.raw.url, {
        method: c.req.method,
        headers: c.req.raw.headers,
        // JSON is UTF-8 text; a string is a body every Request takes.
        body: body.toString("utf8"),
      });
      return next();
    };
    return async (c, next) => {
      const address = clientAddress(c);
      const blocked = this.loginBlock(address);
      if (blocked) return refuse(c, blocked);
      const auth = c.req.header("authorization");
      if (auth) {
        const wait = this.api.take(credentialKey(bearer(auth)));
        if (wait > 0)
          return refuse(c, {
            status: 429,
            code: "rate_limited",
            message: `this token sends more than ${this.settings.apiRate} requests a second (bursts of ${this.settings.apiBurst}); slow down`,
            retryAfter: seconds(wait),
          });
      }
      // Image uploads stream to disk with their own cap (the quota and MAX_UPLOAD_BYTES).
      // So do files written into a sandbox (streamed to its guest agent).
      const upload =
        (c.req.method === "POST" && c.req.path === "/api/v1/images") ||
        (c.req.method === "PUT" && /^\/api\/v1\/sandboxes\/[^/]+\/files$/.test(c.req.path));
      const res = upload ? await next() : await limitJson(c, next);
      if (c.res.status === 401) this.loginFailed(address);
      return res;
    };
  }

  /**
   * Admits a console WebSocket of `token` from `address`, or answers why not. An admitted
   * connection must be given back with consoleClosed(token) when it ends.
   */
  admitConsole(address: string, token: string): LimitRefusal | null {
    const blocked = this.loginBlock(address);
    if (blocked) return blocked;
    if (this.settings.consolePerMinute <= 0) return null;
    const key = credentialKey(token);
    const open = this.openConsoles.get(key) ?? 0;
    if (open >= this.settings.consoleOpen)
      return {
        status: 429,
        code: "rate_limited",
        message: `this token has ${open} consoles open, the most it may; close one first`,
        retryAfter: 1,
      };
    const wait = this.consoles.take(key);
    if (wait > 0)
      return {
        status: 429,
        code: "rate_limited",
        message: `this token opens more than ${this.settings.consolePerMinute} consoles a minute; try again in ${seconds(wait)} s`,
        retryAfter: seconds(wait),
      };
    this.openConsoles.set(key, open + 1);
    return null;
  }

  /** A console admitted by admitConsole ended (or never opened). */
  consoleClosed(token: string): void {
    if (this.settings.consolePerMinute <= 0) return;
    const key = credentialKey(token);
    const open = (this.openConsoles.get(key) ?? 1) - 1;
    if (open > 0) this.openConsoles.set(key, open);
    else this.openConsoles.delete(key);
  }
}

/** The Node request under a Hono context (none for in-process app.request calls). */
function nodeRequest(c: Context): IncomingMessage | undefined {
  return (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
}

/**
 * Reads a request body of at most `max` bytes; null once it grows past that. The rest then still
 * flows and is dropped (never destroyed mid-body, which would reset the connection before the
 * client could read the 413).
 */
function readUpTo(incoming: IncomingMessage, max: number): Promise<Buffer | null> {
  return new Promise((resolveBody, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= max) return void chunks.push(chunk);
      incoming.off("data", onData);
      incoming.off("end", onEnd);
      incoming.off("error", reject);
      incoming.on("data", () => {});
      resolveBody(null);
    };
    const onEnd = (): void => resolveBody(Buffer.concat(chunks, size));
    incoming.on("data", onData);
    incoming.once("end", onEnd);
    incoming.once("error", reject);
    // A client gone mid-body (after "end" this is a no-op).
    incoming.once("close", () => reject(new Error("the client closed the connection before the body ended")));
  });
}

/**
 * A request's body as a Node stream, for uploads; destroy it when done. Destroying it (a quota
 * refusal) leaves the request itself flowing to its end, so the client reads the answer.
 */
export function requestBody(c: Context): Readable | null {
  const incoming = nodeRequest(c);
  if (!incoming) return c.req.raw.body ? Readable.fromWeb(c.req.raw.body as WebReadableStream<Uint8Array>) : null;
  if (c.req.method === "GET" || c.req.method === "HEAD") return null;
  const pass = new PassThrough();
  incoming.pipe(pass);
  pass.once("close", () => {
    incoming.unpipe(pass);
    incoming.resume();
  });
  return pass;
}

/** The refusal as an API response. */
export function refuse(c: Context, r: LimitRefusal): Response {
  if (r.retryAfter !== undefined) c.header("retry-after", String(r.retryAfter));
  return c.json({ error: { code: r.code, message: r.message } }, r.status);
}

/** The refusal as the raw HTTP answer to a WebSocket upgrade. */
export function refusalResponse(r: LimitRefusal): string {
  const body = JSON.stringify({ error: { code: r.code, message: r.message } });
  const reason = r.status === 429 ? "Too Many Requests" : "Payload Too Large";
  const retry = r.retryAfter !== undefined ? `Retry-After: ${r.retryAfter}\r\n` : "";
  return (
    `HTTP/1.1 ${r.status} ${reason}\r\nContent-Type: application/json\r\n${retry}` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  );
}

export function describeBytes(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}

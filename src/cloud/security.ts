/**
 * The web-facing defences of `yun serve`, kept in one place and wired into server.ts with a few
 * lines: security headers on every answer, the Origin check of WebSocket upgrades (no cross-site
 * console), and TLS for listening beyond loopback.
 *
 * CSRF is excluded by construction rather than by tokens: the API authenticates only by the
 * Authorization header (never a cookie), which a cross-site form or fetch cannot set, and JSON
 * bodies need Content-Type: application/json, which a form cannot send. A WebSocket handshake is
 * the one request a page may open cross-site with credentials of its choosing, so its Origin is
 * checked.
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import type { IncomingMessage } from "node:http";
import type { MiddlewareHandler } from "hono";

/**
 * The dashboard's policy: scripts and connections only from this origin (no inline script, no
 * eval; the import map lives in the built modules, not in index.html), no framing, no plugins.
 * Styles allow 'unsafe-inline' because xterm.js's DOM renderer writes its theme and cell sizes
 * into <style> elements; a style cannot run code.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

/** Headers every answer carries (API, dashboard, refused WebSocket upgrades). */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  // No other site may open the dashboard in a window it keeps a handle on, or embed its answers.
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
};

/** Sets the security headers on every answer; API answers are also never cached. */
export function securityHeaders(): MiddlewareHandler {
  return async (c, next) => {
    await next();
    const h = c.res.headers;
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) h.set(k, v);
    if (c.req.path.startsWith("/api/")) h.set("cache-control", "no-store");
  };
}

/**
 * Whether a WebSocket upgrade may proceed: requests without Origin (the CLI, scripts) may; a
 * browser's must come from a page of this server (same scheme, host and port).
 */
export function upgradeOriginAllowed(req: IncomingMessage, secure: boolean): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  const scheme = secure ? "https:" : "http:";
  try {
    const from = new URL(origin);
    // Through URL both sides drop the scheme's default port and lower-case the host.
    const self = new URL(`${scheme}//${req.headers.host ?? ""}`);
    return from.protocol === scheme && from.host === self.host;
  } catch {
    return false; // Origin "null" (sandboxed frames, file:), no Host, garbage
  }
}

/** True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost") return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || h.startsWith("::ffff:127.");
  return false;
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

/** Reads the certificate chain and key files of --tls-cert/--tls-key; throws one clear sentence. */
export function readTlsFiles(certPath: string, keyPath: string): TlsFiles {
  const read = (what: string, path: string, marker: RegExp): Buffer => {
    let b: Buffer;
    try {
      b = readFileSync(path);
    } catch (e) {
      throw new Error(`cannot read the ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!marker.test(b.toString("latin1"))) throw new Error(`${path} is not a PEM ${what}`);
    return b;
  };
  return {
    cert: read("certificate", certPath, /-----BEGIN CERTIFICATE-----/),
    key: read("private key", keyPath, /-----BEGIN [A-Z ]*PRIVATE KEY-----/),
  };
}

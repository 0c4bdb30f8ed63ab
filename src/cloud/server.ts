/**
 * `yun serve`'s HTTP side: the versioned REST API (Hono + zod-openapi: one schema both validates
 * and documents each request; /api/openapi.json), the console WebSocket (ws, on the same server),
 * and the dashboard's static files.
 */
import { STATUS_CODES, createServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Duplex } from "node:stream";
import { existsSync, readFileSync, statSync } from "node:fs";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { OpenAPIHono, z } from "@hono/zod-openapi";
import { getRequestListener } from "@hono/node-server";
import { HTTPException } from "hono/http-exception";
import { WebSocketServer, type WebSocket } from "ws";
import { ApiError, notFound, unauthorized } from "./errors.js";
import { withOperation } from "./db.js";
import type { Cloud, Principal } from "./cloud.js";
import { errorBody, type Audit, type Env } from "./api.js";
import { identityRoutes } from "./identity/routes.js";
import { flavorRoutes, instanceRoutes } from "./compute/routes.js";
import { imageRoutes } from "./images/routes.js";
import { volumeRoutes } from "./volumes/routes.js";
import { networkRoutes } from "./networks/routes.js";
import { keyPairRoutes } from "./keypairs/routes.js";
import { meteringRoutes } from "./metering/routes.js";
import { objectRoutes } from "./objects/routes.js";
import { sandboxRoutes } from "./sandboxes/routes.js";
import { shareRoutes } from "./shares/routes.js";
import { SECURITY_HEADERS, securityHeaders, upgradeOriginAllowed, type TlsFiles } from "./security.js";
import { RequestLimits, refusalResponse, type LimitSettings } from "./limits.js";

const REPO = resolve(fileURLToPath(import.meta.url), "../../../..");

export interface ServerOptions {
  /** Directory of the dashboard's built files (default: <repo>/dist/src/web/static). */
  staticDir?: string;
  /** Serve HTTPS (and WSS) with this certificate chain and key. */
  tls?: TlsFiles;
  /** Body size and rate limits (default DEFAULT_LIMITS; NO_RATE_LIMITS turns the rates off). */
  limits?: Partial<LimitSettings>;
}

/** A percent-decoded path segment; a malformed escape ("%", "%ff") stays as it was sent. */
function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** The Hono app: the API under /api/v1, the OpenAPI document, the dashboard. */
export function createApp(
  cloud: Cloud,
  opts: ServerOptions = {},
  limits = new RequestLimits(opts.limits),
): OpenAPIHono<Env> {
  const app = new OpenAPIHono<Env>({
    defaultHook: (result, c) => {
      if (!result.success) {
        const issue = result.error.issues[0];
        const field = issue?.path.length ? issue.path.join(".") : result.target === "json" ? "body" : result.target;
        const msg = issue ? describeIssue(field, issue) : "the request is not valid";
        c.set("errorCode", "invalid_request");
        c.set("errorMessage", msg);
        return c.json(errorBody("invalid_request", msg), 400);
      }
    },
  });

  app.use("*", securityHeaders());

  app.onError((err, c) => {
    let status = 500;
    let code = "internal";
    let message = `internal error: ${err.message}`;
    if (err instanceof ApiError) {
      status = err.status;
      code = err.code;
      message = err.message;
    } else if (err instanceof HTTPException && err.status === 415) {
      // The JSON validator refuses a body sent without Content-Type: application/json.
      status = 415;
      code = "unsupported_media_type";
      const sent = c.req.header("content-type");
      message = `the request body must be JSON sent with Content-Type: application/json${sent ? ` (got ${sent.split(";")[0]})` : " (none was sent)"}`;
    } else if ((err as { code?: unknown }).code === "SQLITE_CONSTRAINT_UNIQUE") {
      // The schema's UNIQUE constraints back the checks made in each create's transaction.
      status = 409;
      code = "conflict";
      message = "a resource with that name already exists";
    } else if (err instanceof HTTPException) {
      status = err.status;
      code = err.status === 400 ? "invalid_request" : "error";
      message = err.status === 400 ? `the request body is not valid JSON (${err.message})` : err.message;
    } else {
      process.stderr.write(`yun serve: ${err.stack ?? err.message}\n`);
    }
    c.set("errorCode", code);
    c.set("errorMessage", message);
    return c.json(errorBody(code, message), status as 400);
  });

  app.notFound((c) => {
    if (CONSOLE_PATH.test(c.req.path))
      return c.json(
        errorBody(
          "invalid_request",
          "the console is a WebSocket: connect with Upgrade: websocket (see /api/openapi.json)",
        ),
        400,
      );
    if (c.req.path.startsWith("/api/"))
      return c.json(errorBody("not_found", `no such API path: ${c.req.method} ${c.req.path}`), 404);
    return serveStatic(c.req.path, opts.staticDir ?? join(REPO, "dist/src/web/static"));
  });

  // Limits first: a refused request costs no authentication, parsing or audit record.
  app.use("/api/v1/*", limits.middleware());
  // Authentication, then the audit record of every change (who, what, which resource, outcome).
  // A change runs as an operation of the journal (Cloud.beginOperation), so that its event is
  // written even if the server dies before it ends: then the next start's reconcile() writes it.
  app.use("/api/v1/*", async (c, next) => {
    // Another API server may have changed the records: read them as they are now.
    await cloud.store.sync();
    const p = cloud.authenticate(c.req.header("authorization"));
    c.set("principal", p);
    if (c.req.method === "GET") return next();
    // The resource's project, looked up before a delete removes it (admins act across projects).
    const before = p.admin ? cloud.projectOf(decodePathSegment(c.req.path.split("/")[4] ?? "")) : undefined;
    // The event belongs to the resource's project (admins act across projects).
    const eventProject = (resource: string): string => {
      let project = p.projectId;
      if (p.admin) {
        const q = c.req.query("project");
        try {
          if (q) project = cloud.actingProject(p, q);
        } catch {}
        project = before ?? cloud.projectOf(resource) ?? project;
      }
      return project;
    };
    const guess = defaultAudit(c.req.method, c.req.path);
    const op = await cloud.beginOperation(p, eventProject(guess.resource), guess.action, guess.resource);
    await withOperation(op, next);
    // As the handler and the cloud named them (a resource named by its name gets its id).
    const a = cloud.operationTarget(op) ?? guess;
    const code = c.get("errorCode");
    await cloud.finishOperation(
      op,
      { id: p.userId, name: p.userName },
      eventProject(a.resource),
      a.action,
      a.resource,
      code ?? "ok",
      c.get("errorMessage") ?? null,
    );
  });
  const audit: Audit = (c, action, resource) => {
    c.set("audit", { action, resource });
    return cloud.describeOperation(action, resource);
  };

  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });
  app.doc31("/api/openapi.json", {
    openapi: "3.1.0",
    info: { title: "Yun cloud API", version: "1.0.0", description: "See docs/cloud-api.md" },
  });

  const routes = { app, cloud, audit };
  // One module per service, composed here (the order is the OpenAPI document's).
  identityRoutes(routes);
  flavorRoutes(routes);
  imageRoutes(routes);
  instanceRoutes(routes);
  volumeRoutes(routes);
  networkRoutes(routes);
  keyPairRoutes(routes);
  meteringRoutes(routes);
  objectRoutes(routes);
  sandboxRoutes(routes);
  shareRoutes(routes);
  return app;
}

/** instance.create, volume.attach, ...: for requests refused before their handler ran. */
function defaultAudit(method: string, path: string): { action: string; resource: string } {
  const parts = path
    .replace(/^\/api\/v1\//, "")
    .split("/")
    .map(decodePathSegment);
  const noun = (parts[0] ?? "").replace(/ies$/, "y").replace(/s$/, "");
  if (parts.length >= 3) return { action: `${noun}.${parts[2]}`, resource: parts[1] };
  const verb = method === "POST" ? "create" : method === "DELETE" ? "delete" : method === "PUT" ? "update" : method;
  return { action: `${noun}.${verb}`, resource: parts[1] ?? "" };
}

function describeIssue(field: string, issue: z.core.$ZodIssue): string {
  if (issue.code === "unrecognized_keys")
    return `${field}: unknown field ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
  if (issue.code === "invalid_type" && issue.message.includes("received undefined")) return `${field} is required`;
  return `${field}: ${issue.message}`;
}

// ------------------------------------------------------------------------------ static files

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
};

/** /vendor/<prefix>/... → files of installed packages the dashboard uses. */
const VENDOR: [string, string][] = [
  ["xterm/lib/", "node_modules/@xterm/xterm/lib"],
  ["xterm/css/", "node_modules/@xterm/xterm/css"],
  ["addon-fit/", "node_modules/@xterm/addon-fit/lib"],
  ["uplot/", "node_modules/uplot/dist"],
  // noVNC's modules import each other and its bundled pako by relative paths.
  ["novnc/core/", "node_modules/@novnc/novnc/core"],
  ["novnc/vendor/", "node_modules/@novnc/novnc/vendor"],
];

function fileResponse(root: string, rel: string): Response | null {
  const base = resolve(root);
  const path = normalize(join(base, rel));
  if (path !== base && !path.startsWith(base + sep)) return null;
  try {
    if (!statSync(path).isFile()) return null;
  } catch {
    return null;
  }
  return new Response(readFileSync(path), {
    headers: { "content-type": TYPES[extname(path)] ?? "application/octet-stream", "cache-control": "no-cache" },
  });
}

function serveStatic(urlPath: string, staticDir: string): Response {
  let rel: string;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    return new Response("bad path\n", { status: 400 });
  }
  if (rel.startsWith("/vendor/")) {
    const v = rel.slice("/vendor/".length);
    for (const [prefix, dir] of VENDOR) {
      if (v.startsWith(prefix)) {
        const r = fileResponse(join(REPO, dir), v.slice(prefix.length));
        if (r) return r;
      }
    }
    return new Response("not found\n", { status: 404 });
  }
  if (!existsSync(staticDir)) {
    return new Response(
      "Yun cloud API: the dashboard is not built (npm run build); the API is under /api/v1, its description at /api/openapi.json\n",
      { status: urlPath === "/" ? 200 : 404, headers: { "content-type": "text/plain; charset=utf-8" } },
    );
  }
  const direct = fileResponse(staticDir, rel.endsWith("/") ? rel + "index.html" : rel);
  if (direct) return direct;
  // Client-side routes fall back to the dashboard's index.html (paths without a file extension).
  if (extname(rel) === "") {
    const index = fileResponse(staticDir, "index.html");
    if (index) return index;
  }
  return new Response("not found\n", { status: 404 });
}

// -------------------------------------------------------------------------------- console

function rejectUpgrade(socket: Duplex, status: number, code: string, message: string): void {
  const bodyText = JSON.stringify(errorBody(code, message));
  const reason = STATUS_CODES[status] ?? "Error";
  const extra = Object.entries(SECURITY_HEADERS)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(bodyText)}\r\n` +
      `Cache-Control: no-store\r\n${extra}Connection: close\r\n\r\n${bodyText}`,
  );
}

/** The serial console and the graphical console (RFB for noVNC) of an instance. */
const CONSOLE_PATH = /^\/api\/v1\/instances\/([^/]+)\/(console|display)$/;
/** The largest console WebSocket message (keystrokes, a paste). */
const CONSOLE_MAX_MESSAGE = 1024 * 1024;

/**
 * Handles console WebSocket upgrades: the Origin (a browser's must be this server's), the token
 * (only in the bearer.<token> subprotocol or the Authorization header: never in the URL, where logs
 * and histories keep it), per-project authorization, then bytes both ways.
 */
function attachConsoleServer(server: Server, cloud: Cloud, secure: boolean, limits: RequestLimits): WebSocketServer {
  const wss = new WebSocketServer({
    noServer: true,
    // Keystrokes and pastes; ws would otherwise take messages of up to 100 MiB.
    maxPayload: CONSOLE_MAX_MESSAGE,
    handleProtocols: (protocols) => {
      for (const p of protocols) if (p.startsWith("bearer.")) return p;
      return false;
    },
  });
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => {});
    // An absolute-form target ("GET http://[ HTTP/1.1") is not a URL: refuse it, do not throw.
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://localhost");
    } catch {
      return rejectUpgrade(socket, 400, "invalid_request", "the request target is not a valid URL");
    }
    const m = CONSOLE_PATH.exec(url.pathname);
    if (!m) return rejectUpgrade(socket, 404, "not_found", `no WebSocket at ${url.pathname}`);
    const graphical = m[2] === "display";
    if (!upgradeOriginAllowed(req, secure))
      return rejectUpgrade(
        socket,
        403,
        "forbidden",
        `a console may only be opened from this server's own pages, not from ${req.headers.origin}`,
      );
    let p: Principal;
    let id: string;
    const address = req.socket.remoteAddress ?? "local";
    let credential = "";
    try {
      if (url.searchParams.has("token"))
        throw unauthorized(
          "a token in the URL is not accepted (URLs end up in logs); send the subprotocol bearer.<token> or an Authorization header",
        );
      const protos = String(req.headers["sec-websocket-protocol"] ?? "")
        .split(",")
        .map((s) => s.trim());
      const bearer = protos.find((s) => s.startsWith("bearer."));
      const token = bearer?.slice("bearer.".length);
      credential = token ?? req.headers.authorization ?? "";
      const refusal = limits.admitConsole(address, credential);
      if (refusal) return socket.end(refusalResponse(refusal));
      // However the connection ends (refused below, upgrade failed, console closed).
      socket.once("close", () => limits.consoleClosed(credential));
      if (token) p = cloud.principalForToken(token);
      else if (req.headers.authorization) p = cloud.authenticate(req.headers.authorization);
      else throw unauthorized("the console needs a token: the subprotocol bearer.<token> or an Authorization header");
      const target = decodeURIComponent(m[1]);
      const project = url.searchParams.get("project") ?? undefined;
      id = graphical ? cloud.displayTarget(p, target, project) : cloud.consoleTarget(p, target, project);
    } catch (e) {
      const err = e instanceof ApiError ? e : notFound("no such instance");
      if (err.status === 401) limits.loginFailed(address);
      return rejectUpgrade(socket, err.status, err.code, err.message);
    }
    (graphical ? cloud.driver.display(id) : cloud.driver.console(id, true, url.searchParams.get("piped") === "1"))
      .then(({ socket: vm, rest }) => {
        wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
          const actor = { id: p.userId, name: p.userName };
          const what = graphical ? "instance.display" : "instance.console";
          void cloud.store.transact(() => cloud.audit(actor, cloud.projectOf(id) ?? p.projectId, what, id, "ok", null));
          bridge(ws, vm, rest);
        });
      })
      .catch((e: Error) =>
        rejectUpgrade(
          socket,
          409,
          "conflict",
          `the ${graphical ? "display" : "console"} is not available: ${e.message}`,
        ),
      );
  });
  return wss;
}

function bridge(ws: WebSocket, vm: Duplex, rest: Buffer): void {
  if (rest.length) ws.send(rest);
  // A client that reads slower than the guest writes holds the VM's stream (whose monitor then
  // drops output for it) instead of growing the daemon's send buffer.
  const resume = (): void => {
    if (vm.isPaused() && ws.bufferedAmount < CONSOLE_MAX_MESSAGE) vm.resume();
  };
  vm.on("data", (chunk: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(chunk, resume);
    if (ws.bufferedAmount >= CONSOLE_MAX_MESSAGE) vm.pause();
  });
  vm.on("close", () => ws.close(1000, "the VM's console closed"));
  vm.on("error", () => {});
  vm.resume();
  ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
    vm.write(buf);
  });
  ws.on("close", () => vm.destroy());
  ws.on("error", () => vm.destroy());
}

export interface RunningServer {
  server: Server;
  port: number;
  address: string;
  close(): Promise<void>;
}

/** Listens on host:port (port 0: any free one); with opts.tls, HTTPS and WSS. */
export function listen(cloud: Cloud, host: string, port: number, opts: ServerOptions = {}): Promise<RunningServer> {
  const limits = new RequestLimits(opts.limits);
  const app = createApp(cloud, opts, limits);
  const handler = getRequestListener(app.fetch);
  const server: Server = opts.tls
    ? (createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handler) as unknown as Server)
    : createServer(handler);
  const wss = attachConsoleServer(server, cloud, opts.tls !== undefined, limits);
  return new Promise((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const a = server.address();
      const actual = typeof a === "object" && a ? a.port : port;
      resolveListen({
        server,
        port: actual,
        address: host,
        close: () =>
          new Promise<void>((r) => {
            for (const c of wss.clients) c.terminate();
            wss.close();
            server.closeAllConnections();
            server.close(() => r());
          }),
      });
    });
  });
}

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
import { OpenAPIHono, createRoute, z, type RouteConfig } from "@hono/zod-openapi";
import { getRequestListener } from "@hono/node-server";
import { HTTPException } from "hono/http-exception";
import { WebSocketServer, type WebSocket } from "ws";
import { ApiError, notFound, unauthorized } from "./errors.js";
import { withOperation } from "./db.js";
import type { Cloud, Principal } from "./cloud.js";
import { usageCsv } from "./metering.js";
import * as S from "./schemas.js";
import { SECURITY_HEADERS, securityHeaders, upgradeOriginAllowed, type TlsFiles } from "./security.js";
import { RequestLimits, refusalResponse, requestBody, type LimitSettings } from "./limits.js";

type Env = {
  Variables: {
    principal: Principal;
    audit: { action: string; resource: string } | undefined;
    errorCode: string | undefined;
    errorMessage: string | undefined;
  };
};

const REPO = resolve(fileURLToPath(import.meta.url), "../../../..");

export interface ServerOptions {
  /** Directory of the dashboard's built files (default: <repo>/dist/src/web/static). */
  staticDir?: string;
  /** Serve HTTPS (and WSS) with this certificate chain and key. */
  tls?: TlsFiles;
  /** Body size and rate limits (default DEFAULT_LIMITS; NO_RATE_LIMITS turns the rates off). */
  limits?: Partial<LimitSettings>;
}

const errorBody = (code: string, message: string) => ({ error: { code, message } });
const json = <T extends z.ZodTypeAny>(schema: T, description: string) => ({
  content: { "application/json": { schema } },
  description,
});
const ERRORS = {
  400: json(S.ErrorSchema, "invalid_request: the message names the field"),
  401: json(S.ErrorSchema, "unauthorized"),
  403: json(S.ErrorSchema, "forbidden, or quota_exceeded (the message names the quota)"),
  404: json(S.ErrorSchema, "not_found (also for other projects' resources)"),
  409: json(S.ErrorSchema, "conflict: the state machine or a name refuses"),
  413: json(S.ErrorSchema, "too_large: a JSON body over 1 MiB, or an upload over its cap"),
  429: json(
    S.ErrorSchema,
    "rate_limited: too many requests for this token, or failed logins from this address; see Retry-After",
  ),
};
/** Routes with a JSON body also refuse other content types. */
const UNSUPPORTED_MEDIA_TYPE = {
  415: json(S.ErrorSchema, "unsupported_media_type: the body must be sent with Content-Type: application/json"),
};
const body = <T extends z.ZodTypeAny>(schema: T) => ({
  body: {
    content: { "application/json": { schema } },
    required: true,
    description: "a JSON object of at most 1 MiB (larger bodies answer 413 too_large)",
  },
});

function def<R extends RouteConfig>(r: R): R {
  const jsonBody = r.request?.body?.content["application/json"] !== undefined;
  return createRoute({
    security: [{ bearer: [] }],
    ...r,
    responses: { ...ERRORS, ...(jsonBody ? UNSUPPORTED_MEDIA_TYPE : {}), ...r.responses },
  }) as R;
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
    const op = cloud.beginOperation(p, eventProject(guess.resource), guess.action, guess.resource);
    await withOperation(op, next);
    // As the handler and the cloud named them (a resource named by its name gets its id).
    const a = cloud.operationTarget(op) ?? guess;
    const code = c.get("errorCode");
    cloud.finishOperation(
      op,
      { id: p.userId, name: p.userName },
      eventProject(a.resource),
      a.action,
      a.resource,
      code ?? "ok",
      c.get("errorMessage") ?? null,
    );
  });
  const audit = (
    c: { set: (k: "audit", v: { action: string; resource: string }) => void },
    action: string,
    resource: string,
  ) => {
    c.set("audit", { action, resource });
    cloud.describeOperation(action, resource);
  };

  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });
  app.doc31("/api/openapi.json", {
    openapi: "3.1.0",
    info: { title: "Yun cloud API", version: "1.0.0", description: "See docs/cloud-api.md" },
  });

  // ------------------------------------------------------------------------- identity, tenants
  app.openapi(def({ method: "get", path: "/api/v1/whoami", responses: { 200: json(S.Whoami, "the caller") } }), (c) =>
    c.json(cloud.whoami(c.get("principal")), 200),
  );
  app.openapi(
    def({ method: "get", path: "/api/v1/projects", responses: { 200: json(S.listOf(S.Project), "projects") } }),
    (c) => c.json({ items: cloud.listProjects(c.get("principal")) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/projects",
      request: body(S.ProjectCreate),
      responses: { 201: json(S.Project, "created") },
    }),
    (c) => {
      audit(c, "project.create", c.req.valid("json").name);
      const p = cloud.createProject(c.get("principal"), c.req.valid("json"));
      audit(c, "project.create", p.id);
      return c.json(p, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/projects/{id}",
      request: { params: S.IdParam },
      responses: { 200: json(S.Project, "the project") },
    }),
    (c) => c.json(cloud.getProject(c.get("principal"), c.req.valid("param").id), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/projects/{id}",
      request: { params: S.IdParam },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "project.delete", c.req.valid("param").id);
      cloud.deleteProject(c.get("principal"), c.req.valid("param").id);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/projects/{id}/quotas",
      request: { params: S.IdParam },
      responses: { 200: json(S.QuotaUsage, "limits and use") },
    }),
    (c) => c.json(cloud.getQuotas(c.get("principal"), c.req.valid("param").id), 200),
  );
  app.openapi(
    def({
      method: "put",
      path: "/api/v1/projects/{id}/quotas",
      request: { params: S.IdParam, ...body(S.QuotasUpdate) },
      responses: { 200: json(S.QuotaUsage, "limits and use") },
    }),
    (c) => {
      audit(c, "project.quotas", c.req.valid("param").id);
      return c.json(cloud.setQuotas(c.get("principal"), c.req.valid("param").id, c.req.valid("json")), 200);
    },
  );

  app.openapi(
    def({
      method: "get",
      path: "/api/v1/users",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.User), "users") },
    }),
    (c) => c.json({ items: cloud.listUsers(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/users",
      request: body(S.UserCreate),
      responses: { 201: json(S.CreatedUser, "created (with withToken, its token, shown once)") },
    }),
    (c) => {
      // A create that also issues a token says so in the audit log.
      const action = c.req.valid("json").withToken === true ? "user.create+token" : "user.create";
      audit(c, action, c.req.valid("json").name);
      const u = cloud.createUser(c.get("principal"), c.req.valid("json"));
      audit(c, action, u.id);
      return c.json(u, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/users/{id}",
      request: { params: S.IdParam },
      responses: { 200: json(S.User, "the user") },
    }),
    (c) => c.json(cloud.getUser(c.get("principal"), c.req.valid("param").id), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/users/{id}",
      request: { params: S.IdParam },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "user.delete", c.req.valid("param").id);
      cloud.deleteUser(c.get("principal"), c.req.valid("param").id);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/users/{id}/tokens",
      request: { params: S.IdParam },
      responses: { 201: json(S.NewToken, "the token, shown once") },
    }),
    (c) => {
      audit(c, "user.token", c.req.valid("param").id);
      return c.json(cloud.createToken(c.get("principal"), c.req.valid("param").id), 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/users/{id}/tokens",
      request: { params: S.IdParam },
      responses: { 200: json(S.listOf(S.TokenInfo), "the user's tokens (ids, not the tokens)") },
    }),
    (c) => c.json({ items: cloud.listTokens(c.get("principal"), c.req.valid("param").id) }, 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/users/{id}/tokens/{tokenId}",
      request: { params: S.TokenParam },
      responses: { 204: { description: "revoked" } },
    }),
    (c) => {
      const { id, tokenId } = c.req.valid("param");
      audit(c, "user.token.revoke", `${id}/${tokenId}`);
      cloud.revokeToken(c.get("principal"), id, tokenId);
      return c.body(null, 204);
    },
  );

  // ------------------------------------------------------------------------- flavors, images
  app.openapi(
    def({ method: "get", path: "/api/v1/flavors", responses: { 200: json(S.listOf(S.Flavor), "flavors") } }),
    (c) => c.json({ items: cloud.listFlavors() }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/flavors",
      request: body(S.FlavorCreate),
      responses: { 201: json(S.Flavor, "created") },
    }),
    (c) => {
      audit(c, "flavor.create", c.req.valid("json").name);
      return c.json(cloud.createFlavor(c.get("principal"), c.req.valid("json")), 201);
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/flavors/{id}",
      request: { params: S.IdParam },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "flavor.delete", c.req.valid("param").id);
      cloud.deleteFlavor(c.get("principal"), c.req.valid("param").id);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/images",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Image), "images") },
    }),
    (c) => c.json({ items: cloud.listImages(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/images",
      request: {
        query: S.ImageUploadQuery,
        body: {
          content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
          required: false,
        },
      },
      responses: { 201: json(S.Image, "uploaded and checked") },
    }),
    async (c) => {
      const q = c.req.valid("query");
      audit(c, "image.upload", q.name);
      const source = requestBody(c);
      // Given back when refused unread too, so the rest of the body is drained, not left hanging.
      const img = await cloud
        .uploadImage(
          c.get("principal"),
          q.project,
          q.name,
          q.format,
          source,
          declaredLength(c.req.header("content-length")),
        )
        .finally(() => source?.destroy());
      audit(c, "image.upload", img.id);
      return c.json(img, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/images/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Image, "the image") },
    }),
    (c) => c.json(cloud.getImage(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/images/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "image.delete", c.req.valid("param").id);
      cloud.deleteImage(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );

  // ------------------------------------------------------------------------------- instances
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/instances",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Instance), "instances") },
    }),
    (c) => c.json({ items: cloud.listInstances(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/instances",
      request: { query: S.ProjectQuery, ...body(S.InstanceCreate) },
      responses: { 201: json(S.Instance, "created (running, unless start: false or its boot failed: then error)") },
    }),
    async (c) => {
      audit(c, "instance.create", c.req.valid("json").name);
      const i = await cloud.createInstance(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      audit(c, "instance.create", i.id);
      return c.json(i, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/instances/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Instance, "the instance") },
    }),
    (c) => c.json(cloud.getInstance(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/instances/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted (its VM stopped, its disk removed, its volumes detached)" } },
    }),
    async (c) => {
      audit(c, "instance.delete", c.req.valid("param").id);
      await cloud.deleteInstance(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/instances/{id}/actions",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.InstanceActionBody) },
      responses: { 200: json(S.Instance, "the instance after the action") },
    }),
    async (c) => {
      const b = c.req.valid("json");
      audit(c, `instance.${b.action}`, c.req.valid("param").id);
      const i = await cloud.instanceAction(
        c.get("principal"),
        c.req.valid("param").id,
        b.action,
        b.flavor,
        c.req.valid("query").project,
      );
      audit(c, `instance.${b.action}`, i.id);
      return c.json(i, 200);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/instances/{id}/metrics",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.InstanceMetrics, "the VM monitor's counters") },
    }),
    async (c) =>
      c.json(
        await cloud.instanceMetrics(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project),
        200,
      ),
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/instances/{id}/console/log",
      request: { params: S.IdParam, query: S.ConsoleLogQuery },
      responses: { 200: { content: { "text/plain": { schema: z.string() } }, description: "recent console output" } },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const text = await cloud.consoleLog(c.get("principal"), c.req.valid("param").id, q.bytes ?? 65536, q.project);
      return c.text(text, 200);
    },
  );
  app.openAPIRegistry.registerPath({
    method: "get",
    path: "/api/v1/instances/{id}/console",
    summary: "The serial console as a WebSocket",
    description:
      "Upgrade to WebSocket; the token goes in the subprotocol bearer.<token> (or an Authorization header), never in the URL. A browser's Origin must be this server. Raw console bytes both ways; the last output is replayed first. With ?piped=1 the client is a script, not a terminal: the VM's monitor answers the guest's terminal queries (cursor position and the like) for it and leaves them out of what it sends, and holds what the client sends until the guest's shell is ready for it.",
    request: { params: S.IdParam },
    responses: { 101: { description: "switching to the console" }, ...ERRORS },
  });

  // -------------------------------------------------------------------------------- forwards
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/instances/{id}/forwards",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Forward), "the instance's port forwards") },
    }),
    (c) =>
      c.json(
        { items: cloud.listForwards(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project) },
        200,
      ),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/instances/{id}/forwards",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.ForwardCreate) },
      responses: {
        201: json(S.Forward, "recorded, and published at once if the instance runs (else when it starts)"),
      },
    }),
    async (c) => {
      audit(c, "forward.create", c.req.valid("param").id);
      const f = await cloud.createForward(
        c.get("principal"),
        c.req.valid("param").id,
        c.req.valid("json"),
        c.req.valid("query").project,
      );
      audit(c, "forward.create", f.id);
      return c.json(f, 201);
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/instances/{id}/forwards/{forwardId}",
      request: { params: S.ForwardParam, query: S.ProjectQuery },
      responses: { 204: { description: "removed (a running VM stops publishing it at once)" } },
    }),
    async (c) => {
      const prm = c.req.valid("param");
      audit(c, "forward.delete", prm.forwardId);
      await cloud.deleteForward(c.get("principal"), prm.id, prm.forwardId, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );

  // --------------------------------------------------------------------------------- volumes
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/volumes",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Volume), "volumes") },
    }),
    (c) => c.json({ items: cloud.listVolumes(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/volumes",
      request: { query: S.ProjectQuery, ...body(S.VolumeCreate) },
      responses: { 201: json(S.Volume, "created") },
    }),
    (c) => {
      audit(c, "volume.create", c.req.valid("json").name);
      const v = cloud.createVolume(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      audit(c, "volume.create", v.id);
      return c.json(v, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/volumes/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Volume, "the volume") },
    }),
    (c) => c.json(cloud.getVolume(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/volumes/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "volume.delete", c.req.valid("param").id);
      cloud.deleteVolume(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/volumes/{id}/attach",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.VolumeAttach) },
      responses: { 200: json(S.Volume, "attached (the instance sees it from its next start)") },
    }),
    (c) => {
      audit(c, "volume.attach", c.req.valid("param").id);
      const v = cloud.attachVolume(
        c.get("principal"),
        c.req.valid("param").id,
        c.req.valid("json").instance,
        c.req.valid("query").project,
      );
      return c.json(v, 200);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/volumes/{id}/detach",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Volume, "detached") },
    }),
    (c) => {
      audit(c, "volume.detach", c.req.valid("param").id);
      return c.json(cloud.detachVolume(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/volumes/{id}/snapshots",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.SnapshotCreate) },
      responses: { 201: json(S.Snapshot, "taken (copy-on-write)") },
    }),
    (c) => {
      audit(c, "volume.snapshot", c.req.valid("param").id);
      const s = cloud.createSnapshot(
        c.get("principal"),
        c.req.valid("param").id,
        c.req.valid("json").name,
        c.req.valid("query").project,
      );
      return c.json(s, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/snapshots",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Snapshot), "snapshots") },
    }),
    (c) => c.json({ items: cloud.listSnapshots(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/snapshots/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "snapshot.delete", c.req.valid("param").id);
      cloud.deleteSnapshot(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );

  // ------------------------------------------------------------------------ networks, keys
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/networks",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Network), "networks") },
    }),
    (c) => c.json({ items: cloud.listNetworks(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/networks",
      request: { query: S.ProjectQuery, ...body(S.NetworkCreate) },
      responses: { 201: json(S.Network, "created") },
    }),
    (c) => {
      audit(c, "network.create", c.req.valid("json").name);
      const n = cloud.createNetwork(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      audit(c, "network.create", n.id);
      return c.json(n, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/networks/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Network, "the network") },
    }),
    (c) => c.json(cloud.getNetwork(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/networks/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "network.delete", c.req.valid("param").id);
      cloud.deleteNetwork(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/keypairs",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.KeyPair), "key pairs") },
    }),
    (c) => c.json({ items: cloud.listKeyPairs(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/keypairs",
      request: { query: S.ProjectQuery, ...body(S.KeyPairCreate) },
      responses: { 201: json(S.KeyPair, "registered") },
    }),
    (c) => {
      audit(c, "keypair.create", c.req.valid("json").name);
      return c.json(cloud.createKeyPair(c.get("principal"), c.req.valid("json"), c.req.valid("query").project), 201);
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/keypairs/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    (c) => {
      audit(c, "keypair.delete", c.req.valid("param").id);
      cloud.deleteKeyPair(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );

  // --------------------------------------------------------------------------- usage, events
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/usage",
      request: { query: S.UsageQuery },
      responses: {
        200: {
          content: { "application/json": { schema: S.Usage }, "text/csv": { schema: z.string() } },
          description: "metering: vCPU-seconds, memory and disk GiB-hours",
        },
      },
    }),
    (c) => {
      const q = c.req.valid("query");
      const u = cloud.usage(c.get("principal"), { from: q.from, to: q.to }, q.project);
      if (q.format === "csv") {
        c.header("content-type", "text/csv; charset=utf-8");
        c.header("content-disposition", `attachment; filename="usage-${u.project}.csv"`);
        return c.body(usageCsv(u), 200);
      }
      return c.json(u, 200);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/events",
      request: { query: S.EventsQuery },
      responses: { 200: json(S.listOf(S.AuditEvent), "the audit log, newest first") },
    }),
    (c) => {
      const q = c.req.valid("query");
      return c.json({ items: cloud.events(c.get("principal"), { limit: q.limit, after: q.after }, q.project) }, 200);
    },
  );
  return app;
}

/** A request's Content-Length, when it gives one. */
function declaredLength(header: string | undefined): number | undefined {
  return header !== undefined && /^\d+$/.test(header) ? Number(header) : undefined;
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

const CONSOLE_PATH = /^\/api\/v1\/instances\/([^/]+)\/console$/;
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
      id = cloud.consoleTarget(p, decodeURIComponent(m[1]), url.searchParams.get("project") ?? undefined);
    } catch (e) {
      const err = e instanceof ApiError ? e : notFound("no such instance");
      if (err.status === 401) limits.loginFailed(address);
      return rejectUpgrade(socket, err.status, err.code, err.message);
    }
    cloud.driver
      .console(id, true, url.searchParams.get("piped") === "1")
      .then(({ socket: vm, rest }) => {
        wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
          const actor = { id: p.userId, name: p.userName };
          cloud.audit(actor, cloud.projectOf(id) ?? p.projectId, "instance.console", id, "ok", null);
          bridge(ws, vm, rest);
        });
      })
      .catch((e: Error) => rejectUpgrade(socket, 409, "conflict", `the console is not available: ${e.message}`));
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

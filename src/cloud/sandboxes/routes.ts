/**
 * The sandbox service's routes (docs/sandboxes.md): sandboxes and templates. A command's output
 * streams as NDJSON (one CommandEvent a line: stdout and stderr chunks in base64, then the exit);
 * files stream as the raw bytes both ways.
 */
import { Readable } from "node:stream";
import { z } from "@hono/zod-openapi";
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";
import { requestBody } from "../limits.js";
import { ApiError } from "../errors.js";
import type { CommandEvent } from "../types.js";

const ndjson = (description: string) => ({
  content: { "application/x-ndjson": { schema: z.string() } },
  description,
});

/** sandboxes: create, list, show, kill, pause, resume, fork, timeout, commands, files; templates */
export function sandboxRoutes({ app, cloud, audit }: Routes): void {
  const sandboxes = cloud.sandboxes;
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/sandboxes",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Sandbox), "sandboxes") },
    }),
    (c) => c.json({ items: sandboxes.list(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/sandboxes",
      request: { query: S.ProjectQuery, ...body(S.SandboxCreate) },
      responses: {
        201: json(S.Sandbox, "running: restored from its template, its agent answering"),
      },
    }),
    async (c) => {
      await audit(c, "sandbox.create", c.req.valid("json").template ?? "base");
      const s = await sandboxes.create(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      await audit(c, "sandbox.create", s.id);
      return c.json(s, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/sandboxes/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Sandbox, "the sandbox") },
    }),
    (c) => c.json(sandboxes.get(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/sandboxes/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "killed: its VM stopped, its files removed" } },
    }),
    async (c) => {
      await audit(c, "sandbox.kill", c.req.valid("param").id);
      await sandboxes.kill(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
  for (const [verb, what] of [
    ["pause", "paused: memory, devices and disk saved, its VM stopped"],
    ["resume", "running again from where it was paused (its timeout starts again)"],
    ["fork", "a new sandbox from a snapshot of this one, which runs on"],
  ] as const) {
    app.openapi(
      def({
        method: "post",
        path: `/api/v1/sandboxes/{id}/${verb}`,
        request: {
          params: S.IdParam,
          query: S.ProjectQuery,
          body: {
            content: { "application/json": { schema: S.SandboxResume } },
            required: false,
            description: "optional: the timeout from now (resume, fork)",
          },
        },
        responses: { [verb === "fork" ? 201 : 200]: json(S.Sandbox, what) },
      }),
      async (c) => {
        const id = c.req.valid("param").id;
        const project = c.req.valid("query").project;
        const p = c.get("principal");
        let timeoutMs: number | undefined;
        if (verb !== "pause" && (c.req.header("content-length") ?? "0") !== "0") {
          const parsed = S.SandboxResume.safeParse(await c.req.json().catch(() => null));
          if (!parsed.success)
            throw new ApiError(
              400,
              "invalid_request",
              `the body is {"timeoutMs": N}: ${parsed.error.issues[0]?.message}`,
            );
          timeoutMs = parsed.data.timeoutMs;
        }
        await audit(c, `sandbox.${verb}`, id);
        if (verb === "pause") return c.json(await sandboxes.pause(p, id, project), 200);
        if (verb === "resume") return c.json(await sandboxes.resume(p, id, timeoutMs, project), 200);
        const child = await sandboxes.fork(p, id, timeoutMs, project);
        await audit(c, "sandbox.fork", child.id);
        return c.json(child, 201);
      },
    );
  }
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/sandboxes/{id}/timeout",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.SandboxTimeout) },
      responses: { 200: json(S.Sandbox, "the sandbox, ending timeoutMs from now") },
    }),
    async (c) => {
      await audit(c, "sandbox.timeout", c.req.valid("param").id);
      return c.json(
        await sandboxes.setTimeout(
          c.get("principal"),
          c.req.valid("param").id,
          c.req.valid("json").timeoutMs,
          c.req.valid("query").project,
        ),
        200,
      );
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/sandboxes/{id}/commands",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.SandboxCommand) },
      responses: {
        200: ndjson(
          'the output as it comes, one JSON object a line: {"type":"stdout"|"stderr","data":BASE64}, then {"type":"exit","exitCode","signal","timedOut"} (or {"type":"error","code","message"})',
        ),
        202: json(z.object({ pid: z.number() }), "background: started, its pid"),
      },
    }),
    async (c) => {
      const p = c.get("principal");
      const id = c.req.valid("param").id;
      const req = c.req.valid("json");
      const project = c.req.valid("query").project;
      await audit(c, "sandbox.exec", id);
      if (req.background) return c.json({ pid: await sandboxes.runBackground(p, id, req, project) }, 202);
      const run = await sandboxes.runner(p, id, req, project);
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          const send = (e: CommandEvent): void => {
            try {
              controller.enqueue(Buffer.from(JSON.stringify(e) + "\n"));
            } catch {
              // The client went away: the command still finishes in the guest.
            }
          };
          void run({
            onStdout: (b) => send({ type: "stdout", data: b.toString("base64") }),
            onStderr: (b) => send({ type: "stderr", data: b.toString("base64") }),
          })
            .then((r) => send({ type: "exit", exitCode: r.exitCode, signal: r.signal, timedOut: r.timedOut }))
            .catch((e: Error) =>
              send({ type: "error", code: e instanceof ApiError ? e.code : "internal", message: e.message }),
            )
            .finally(() => {
              try {
                controller.close();
              } catch {}
            });
        },
      });
      // The typed handler knows JSON answers only; this one is the documented NDJSON stream.
      return c.body(stream, 200, { "content-type": "application/x-ndjson", "cache-control": "no-cache" }) as never;
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/sandboxes/{id}/files",
      request: { params: S.IdParam, query: S.SandboxPathQuery },
      responses: {
        200: {
          content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
          description: "the file's bytes, streamed",
        },
      },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const stream = await sandboxes.readFile(c.get("principal"), c.req.valid("param").id, q.path, q.project);
      return c.body(Readable.toWeb(stream) as unknown as ReadableStream<Uint8Array>, 200, {
        "content-type": "application/octet-stream",
      });
    },
  );
  app.openapi(
    def({
      method: "put",
      path: "/api/v1/sandboxes/{id}/files",
      request: {
        params: S.IdParam,
        query: S.SandboxPathQuery,
        body: {
          content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
          required: false,
        },
      },
      responses: { 200: json(z.object({ bytes: z.number() }), "written (streamed to the guest)") },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const id = c.req.valid("param").id;
      await audit(c, "sandbox.files.write", id);
      const source = requestBody(c);
      try {
        const bytes = await sandboxes.writeFile(c.get("principal"), id, q.path, source ?? Readable.from([]), q.project);
        return c.json({ bytes }, 200);
      } finally {
        source?.destroy();
      }
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/sandboxes/{id}/files/list",
      request: { params: S.IdParam, query: S.SandboxPathQuery },
      responses: { 200: json(S.listOf(S.SandboxFile), "the directory's entries, by name") },
    }),
    async (c) => {
      const q = c.req.valid("query");
      return c.json(
        { items: await sandboxes.listFiles(c.get("principal"), c.req.valid("param").id, q.path, q.project) },
        200,
      );
    },
  );

  // ---------------------------------------------------------------------------- templates
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/templates",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Template), "templates") },
    }),
    (c) => c.json({ items: sandboxes.listTemplates(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/templates",
      request: { query: S.ProjectQuery, ...body(S.TemplateBuild) },
      responses: { 202: json(S.Template, "building: GET it until its state is ready (or error)") },
    }),
    async (c) => {
      await audit(c, "template.build", c.req.valid("json").name);
      const t = await sandboxes.buildTemplate(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      await audit(c, "template.build", t.id);
      return c.json(t, 202);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/templates/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(S.Template, "the template") },
    }),
    (c) =>
      c.json(sandboxes.getTemplate(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/templates/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted (refused while sandboxes use it)" } },
    }),
    async (c) => {
      await audit(c, "template.delete", c.req.valid("param").id);
      await sandboxes.deleteTemplate(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

/** The share service's routes: shares of a project and their attachments to instances. */
import { z } from "@hono/zod-openapi";
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";

const Share = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    tag: z.string().openapi({ description: "the mount tag: mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt" }),
    attachments: z.array(z.object({ instance: z.string(), readOnly: z.boolean() })),
    createdAt: z.string(),
  })
  .openapi("Share");
const ShareCreate = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, "share names use 1-63 letters, digits, '.', '-' or '_'")
      .refine((s) => !/^[a-z]{3}-[a-z2-7]{10}$/.test(s), "a share name may not look like an id"),
  })
  .strict();
const ShareAttach = z.object({ share: z.string().min(1).max(80), readOnly: z.boolean().optional() }).strict();
const InstanceShareParam = z.object({ id: z.string().min(1).max(80), share: z.string().min(1).max(80) });

export function shareRoutes({ app, cloud, audit }: Routes): void {
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/shares",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(Share), "shares") },
    }),
    (c) => c.json({ items: cloud.shares.list(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/shares",
      request: { query: S.ProjectQuery, ...body(ShareCreate) },
      responses: { 201: json(Share, "created (an empty directory)") },
    }),
    async (c) => {
      await audit(c, "share.create", c.req.valid("json").name);
      const s = await cloud.shares.create(c.get("principal"), c.req.valid("json").name, c.req.valid("query").project);
      return c.json(s, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/shares/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 200: json(Share, "the share") },
    }),
    (c) => c.json(cloud.shares.get(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/shares/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted, with its files" } },
    }),
    async (c) => {
      await audit(c, "share.delete", c.req.valid("param").id);
      await cloud.shares.delete(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/instances/{id}/shares",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(ShareAttach) },
      responses: { 200: json(Share, "attached: the instance mounts it from its next start") },
    }),
    async (c) => {
      const { share, readOnly } = c.req.valid("json");
      await audit(c, "share.attach", `${c.req.valid("param").id}/${share}`);
      const s = await cloud.attachShare(
        c.get("principal"),
        c.req.valid("param").id,
        share,
        readOnly ?? false,
        c.req.valid("query").project,
      );
      return c.json(s, 200);
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/instances/{id}/shares/{share}",
      request: { params: InstanceShareParam, query: S.ProjectQuery },
      responses: { 200: json(Share, "detached (from the instance's next start)") },
    }),
    async (c) => {
      const { id, share } = c.req.valid("param");
      await audit(c, "share.detach", `${id}/${share}`);
      return c.json(await cloud.detachShare(c.get("principal"), id, share, c.req.valid("query").project), 200);
    },
  );
}

/** The image service's routes: public images and uploads into a project. */
import { z } from "@hono/zod-openapi";
import * as S from "../schemas.js";
import { declaredLength, def, json, type Routes } from "../api.js";
import { requestBody } from "../limits.js";

/** images: list, upload (streamed, within the disk quota), show, delete */
export function imageRoutes({ app, cloud, audit }: Routes): void {
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/images",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Image), "images") },
    }),
    async (c) => c.json({ items: await cloud.listImages(c.get("principal"), c.req.valid("query").project) }, 200),
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
      await audit(c, "image.upload", q.name);
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
      await audit(c, "image.upload", img.id);
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
    async (c) =>
      c.json(await cloud.getImage(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/images/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    async (c) => {
      await audit(c, "image.delete", c.req.valid("param").id);
      await cloud.deleteImage(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

/** The object storage service's REST routes: users' access keys (S3 clients sign with them). */
import * as S from "../schemas.js";
import { def, json, type Routes } from "../api.js";

export function objectRoutes({ app, cloud, audit }: Routes): void {
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/users/{id}/keys",
      request: { params: S.IdParam },
      responses: { 201: json(S.NewAccessKey, "the access key; its secret is shown only this once") },
    }),
    async (c) => {
      await audit(c, "user.key.create", c.req.valid("param").id);
      const k = await cloud.objects.createKey(c.get("principal"), c.req.valid("param").id);
      await audit(c, "user.key.create", `${k.user}/${k.accessKeyId}`);
      return c.json(k, 201);
    },
  );
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/users/{id}/keys",
      request: { params: S.IdParam },
      responses: { 200: json(S.listOf(S.AccessKeyInfo), "the user's access keys (without their secrets)") },
    }),
    (c) => c.json({ items: cloud.objects.listKeys(c.get("principal"), c.req.valid("param").id) }, 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/users/{id}/keys/{keyId}",
      request: { params: S.AccessKeyParam },
      responses: { 204: { description: "deleted: requests signed with it answer 403 InvalidAccessKeyId" } },
    }),
    async (c) => {
      const { id, keyId } = c.req.valid("param");
      await audit(c, "user.key.delete", `${id}/${keyId}`);
      await cloud.objects.deleteKey(c.get("principal"), keyId, id);
      return c.body(null, 204);
    },
  );
}

/** The key pair service's routes: SSH public keys of a project. */
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";

/** key pairs */
export function keyPairRoutes({ app, cloud, audit }: Routes): void {
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/keypairs",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.KeyPair), "key pairs") },
    }),
    (c) => c.json({ items: cloud.keypairs.list(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/keypairs",
      request: { query: S.ProjectQuery, ...body(S.KeyPairCreate) },
      responses: { 201: json(S.KeyPair, "registered") },
    }),
    async (c) => {
      await audit(c, "keypair.create", c.req.valid("json").name);
      return c.json(
        await cloud.keypairs.create(c.get("principal"), c.req.valid("json"), c.req.valid("query").project),
        201,
      );
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/keypairs/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    async (c) => {
      await audit(c, "keypair.delete", c.req.valid("param").id);
      await cloud.keypairs.delete(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

/** The network service's routes: a project's private networks. */
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";

/** private networks */
export function networkRoutes({ app, cloud, audit }: Routes): void {
  app.openapi(
    def({
      method: "get",
      path: "/api/v1/networks",
      request: { query: S.ProjectQuery },
      responses: { 200: json(S.listOf(S.Network), "networks") },
    }),
    (c) => c.json({ items: cloud.networks.list(c.get("principal"), c.req.valid("query").project) }, 200),
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/networks",
      request: { query: S.ProjectQuery, ...body(S.NetworkCreate) },
      responses: { 201: json(S.Network, "created") },
    }),
    async (c) => {
      await audit(c, "network.create", c.req.valid("json").name);
      const n = await cloud.networks.create(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      await audit(c, "network.create", n.id);
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
    (c) => c.json(cloud.networks.get(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project), 200),
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/networks/{id}",
      request: { params: S.IdParam, query: S.ProjectQuery },
      responses: { 204: { description: "deleted" } },
    }),
    async (c) => {
      await audit(c, "network.delete", c.req.valid("param").id);
      await cloud.networks.delete(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

/** The identity service's routes: the caller, projects (tenants) and their quotas, users, tokens. */
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";

/** whoami, projects, quotas, users and their tokens */
export function identityRoutes({ app, cloud, audit }: Routes): void {
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
    async (c) => {
      await audit(c, "project.create", c.req.valid("json").name);
      const p = await cloud.createProject(c.get("principal"), c.req.valid("json"));
      await audit(c, "project.create", p.id);
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
    async (c) => {
      await audit(c, "project.delete", c.req.valid("param").id);
      await cloud.deleteProject(c.get("principal"), c.req.valid("param").id);
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
    async (c) => {
      await audit(c, "project.quotas", c.req.valid("param").id);
      return c.json(await cloud.setQuotas(c.get("principal"), c.req.valid("param").id, c.req.valid("json")), 200);
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
    async (c) => {
      // A create that also issues a token says so in the audit log.
      const action = c.req.valid("json").withToken === true ? "user.create+token" : "user.create";
      await audit(c, action, c.req.valid("json").name);
      const u = await cloud.createUser(c.get("principal"), c.req.valid("json"));
      await audit(c, action, u.id);
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
    async (c) => {
      await audit(c, "user.delete", c.req.valid("param").id);
      await cloud.deleteUser(c.get("principal"), c.req.valid("param").id);
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
    async (c) => {
      await audit(c, "user.token", c.req.valid("param").id);
      return c.json(await cloud.createToken(c.get("principal"), c.req.valid("param").id), 201);
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
    async (c) => {
      const { id, tokenId } = c.req.valid("param");
      await audit(c, "user.token.revoke", `${id}/${tokenId}`);
      await cloud.revokeToken(c.get("principal"), id, tokenId);
      return c.body(null, 204);
    },
  );
}

/** The compute service's routes: flavors, instances (lifecycle, metrics, console) and their port forwards. */
import { z } from "@hono/zod-openapi";
import * as S from "../schemas.js";
import { ERRORS, body, def, json, type Routes } from "../api.js";

/** flavors: the instance sizes */
export function flavorRoutes({ app, cloud, audit }: Routes): void {
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
    async (c) => {
      await audit(c, "flavor.create", c.req.valid("json").name);
      return c.json(await cloud.createFlavor(c.get("principal"), c.req.valid("json")), 201);
    },
  );
  app.openapi(
    def({
      method: "delete",
      path: "/api/v1/flavors/{id}",
      request: { params: S.IdParam },
      responses: { 204: { description: "deleted" } },
    }),
    async (c) => {
      await audit(c, "flavor.delete", c.req.valid("param").id);
      await cloud.deleteFlavor(c.get("principal"), c.req.valid("param").id);
      return c.body(null, 204);
    },
  );
}

/** instances and their port forwards */
export function instanceRoutes({ app, cloud, audit }: Routes): void {
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
      await audit(c, "instance.create", c.req.valid("json").name);
      const i = await cloud.createInstance(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      await audit(c, "instance.create", i.id);
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
      await audit(c, "instance.delete", c.req.valid("param").id);
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
      await audit(c, `instance.${b.action}`, c.req.valid("param").id);
      const i = await cloud.instanceAction(
        c.get("principal"),
        c.req.valid("param").id,
        b.action,
        b.flavor,
        c.req.valid("query").project,
      );
      await audit(c, `instance.${b.action}`, i.id);
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
  app.openAPIRegistry.registerPath({
    method: "get",
    path: "/api/v1/instances/{id}/display",
    summary: "The graphical console (RFB 3.8, as noVNC speaks it) as a WebSocket",
    description:
      'Upgrade to WebSocket, authenticated as the serial console is (subprotocol bearer.<token>, this server\'s Origin). Binary messages carry the RFB protocol both ways; the security type offered is None, the token having said who the client is. Only for instances created with display "vnc", while they run.',
    request: { params: S.IdParam },
    responses: { 101: { description: "switching to the display" }, ...ERRORS },
  });

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
      await audit(c, "forward.create", c.req.valid("param").id);
      const f = await cloud.createForward(
        c.get("principal"),
        c.req.valid("param").id,
        c.req.valid("json"),
        c.req.valid("query").project,
      );
      await audit(c, "forward.create", f.id);
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
      await audit(c, "forward.delete", prm.forwardId);
      await cloud.deleteForward(c.get("principal"), prm.id, prm.forwardId, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

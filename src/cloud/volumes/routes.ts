/** The volume service's routes: volumes, attachments and snapshots. */
import * as S from "../schemas.js";
import { body, def, json, type Routes } from "../api.js";

/** volumes, attach and detach, snapshots */
export function volumeRoutes({ app, cloud, audit }: Routes): void {
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
    async (c) => {
      await audit(c, "volume.create", c.req.valid("json").name);
      const v = await cloud.createVolume(c.get("principal"), c.req.valid("json"), c.req.valid("query").project);
      await audit(c, "volume.create", v.id);
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
    async (c) => {
      await audit(c, "volume.delete", c.req.valid("param").id);
      await cloud.deleteVolume(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
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
    async (c) => {
      await audit(c, "volume.attach", c.req.valid("param").id);
      const v = await cloud.attachVolume(
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
    async (c) => {
      await audit(c, "volume.detach", c.req.valid("param").id);
      return c.json(
        await cloud.detachVolume(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project),
        200,
      );
    },
  );
  app.openapi(
    def({
      method: "post",
      path: "/api/v1/volumes/{id}/snapshots",
      request: { params: S.IdParam, query: S.ProjectQuery, ...body(S.SnapshotCreate) },
      responses: { 201: json(S.Snapshot, "taken (copy-on-write)") },
    }),
    async (c) => {
      await audit(c, "volume.snapshot", c.req.valid("param").id);
      const s = await cloud.createSnapshot(
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
    async (c) => {
      await audit(c, "snapshot.delete", c.req.valid("param").id);
      await cloud.deleteSnapshot(c.get("principal"), c.req.valid("param").id, c.req.valid("query").project);
      return c.body(null, 204);
    },
  );
}

/** The metering service's routes: usage and the audit log. */
import { z } from "@hono/zod-openapi";
import * as S from "../schemas.js";
import { def, json, type Routes } from "../api.js";
import { usageCsv } from "./meter.js";

/** usage (JSON or CSV) and events */
export function meteringRoutes({ app, cloud }: Routes): void {
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
}

/**
 * The sandbox API's refusals, without VMs (compute is the fuzz campaign's stub driver, whose VMs
 * have no vsock socket): bad input answers 400 naming the field, other projects' templates and
 * sandboxes are 404, a template whose VM has no agent fails its build with the reason, and a
 * sandbox from it is refused with that reason.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, symlinkSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cloud } from "../../src/cloud/cloud.js";
import { listen } from "../../src/cloud/server.js";
import { YunClient } from "../../src/cloud/client.js";
import type { Template } from "../../src/cloud/types.js";
import { StubDriver } from "../../fuzz/campaigns/api.js";
import { HAVE_DEBIAN, REAL_IMAGES, refusal } from "./helpers.js";
import { Sandbox } from "../../src/sdk/index.js";

test(
  "sandbox API: validation, tenancy, a template without an agent",
  { skip: !HAVE_DEBIAN && "no debian-tiny image" },
  async () => {
    const home = mkdtempSync(join(tmpdir(), "yun-sbx-api-"));
    if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
    const before = process.env.YUN_HOME;
    process.env.YUN_HOME = home;
    const cloud = new Cloud({ home, driver: new StubDriver(), tickMs: 0 });
    try {
      const { adminToken } = await cloud.bootstrap();
      const server = await listen(cloud, "127.0.0.1", 0, {});
      const url = `http://127.0.0.1:${server.port}`;
      const admin = new YunClient({ server: url, token: adminToken! });
      try {
        const p1 = await admin.createProject({ name: "one" });
        const p2 = await admin.createProject({ name: "two" });
        const u1 = await admin.createUser({ name: "u1", role: "member", project: p1.id, withToken: true });
        const u2 = await admin.createUser({ name: "u2", role: "member", project: p2.id, withToken: true });
        const c1 = new YunClient({ server: url, token: u1.token! });
        const c2 = new YunClient({ server: url, token: u2.token! });
        const conn1 = { server: url, token: u1.token! };

        // Bad input: one sentence naming what is wrong.
        const e1 = await refusal(() => Sandbox.create({ ...conn1, template: "x", timeoutMs: 5 }));
        assert.equal(e1.status, 400);
        assert.match(e1.message, /timeoutMs/);
        const e2 = await refusal(() => c1.request("POST", "/api/v1/sandboxes", { body: { network: "wifi" } }));
        assert.equal(e2.status, 400);
        assert.match(e2.message, /network/);
        const e3 = await refusal(() => c1.request("POST", "/api/v1/templates", { body: { name: "t", from: "nope" } }));
        assert.equal(e3.status, 400);
        assert.match(e3.message, /image nope is not on this host/);
        assert.equal((await refusal(() => Sandbox.create({ ...conn1, template: "missing" }))).status, 404);

        // A template whose VM has no vsock socket fails its build, saying so.
        await c1.request("POST", "/api/v1/templates", { body: { name: "t", from: "debian-tiny" } });
        let t: Template;
        for (;;) {
          t = await c1.request<Template>("GET", "/api/v1/templates/t");
          if (t.state !== "building") break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(t.state, "error");
        assert.match(t.error ?? "", /no vsock socket/);
        const e4 = await refusal(() => Sandbox.create({ ...conn1, template: "t" }));
        assert.equal(e4.status, 409);
        assert.match(e4.message, /template t failed to build: .*no vsock socket/);
        assert.equal((await c1.getQuotas(p1.id)).used.instances, 0);

        // Another project sees neither the template nor sandboxes by id.
        assert.equal((await refusal(() => c2.request("GET", `/api/v1/templates/${t.id}`))).status, 404);
        assert.equal((await refusal(() => c2.request("DELETE", `/api/v1/templates/${t.id}`))).status, 404);
        assert.equal((await refusal(() => c2.request("GET", "/api/v1/sandboxes/sbx-aaaaaaaaaa"))).status, 404);
        await c1.request("DELETE", `/api/v1/templates/${t.id}`);
        assert.deepEqual((await c1.request<{ items: Template[] }>("GET", "/api/v1/templates")).items, []);

        // The OpenAPI document has the routes.
        const doc = (await (await fetch(`${url}/api/openapi.json`)).json()) as { paths: Record<string, unknown> };
        for (const p of [
          "/api/v1/sandboxes",
          "/api/v1/sandboxes/{id}/commands",
          "/api/v1/sandboxes/{id}/files",
          "/api/v1/templates",
        ])
          assert.ok(p in doc.paths, `${p} is not in the OpenAPI document`);
      } finally {
        await server.close();
      }
    } finally {
      await cloud.close();
      process.env.YUN_HOME = before;
      rmSync(home, { recursive: true, force: true });
    }
  },
);

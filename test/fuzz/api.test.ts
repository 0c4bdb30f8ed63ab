/**
 * The REST API campaign (fuzz/campaigns/api.ts) with a fixed seed, and the regression cases of
 * what it found.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runFixed } from "../../fuzz/campaign.js";
import { apiCampaign } from "../../fuzz/campaigns/api.js";
import net from "node:net";
import { raw, startCloud } from "../cloud/helpers.js";

test(`fuzz api: ${apiCampaign.testRuns} cases from the OpenAPI document, fixed seed`, async () => {
  const r = await runFixed(apiCampaign);
  assert.equal(r.failure, undefined, r.failure);
  assert.ok(r.units >= apiCampaign.testRuns, `${r.units} requests`);
});

test("regression (api): a malformed percent-escape in a path answers 4xx, not 500", async () => {
  const t = await startCloud();
  try {
    for (const [method, path] of [
      ["DELETE", "/api/v1/keypairs/%ed%a0%80"],
      ["DELETE", "/api/v1/users/%/tokens/x"],
      ["POST", "/api/v1/volumes/%ff/attach"],
      ["POST", "/api/v1/volumes/%c3%28/snapshots"],
    ]) {
      const r = await raw(t, method, path, { body: "{}" });
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path}: ${r.status}`);
      assert.equal(typeof r.body.error?.message, "string");
    }
  } finally {
    await t.close();
  }
});

test("regression: a console upgrade whose target is not a URL answers 400 and the daemon lives on", async () => {
  const t = await startCloud();
  try {
    const port = Number(new URL(t.url).port);
    const head = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(port, "127.0.0.1");
      let got = "";
      sock.on("data", (d) => (got += d.toString()));
      sock.on("close", () => resolve(got));
      sock.on("error", reject);
      sock.write(
        "GET http://[ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      );
    });
    assert.match(head, /^HTTP\/1.1 400 Bad Request/);
    assert.match(head, /"code":"invalid_request"/);
    const r = await raw(t, "GET", "/api/v1/whoami");
    assert.equal(r.status, 200, "the server still answers");
  } finally {
    await t.close();
  }
});

/**
 * The REST API campaign (fuzz/campaigns/api.ts) with a fixed seed, and the regression cases of
 * what it found.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runFixed } from "../../fuzz/campaign.js";
import { apiCampaign } from "../../fuzz/campaigns/api.js";
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

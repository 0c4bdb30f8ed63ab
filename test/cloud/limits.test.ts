// Limits on what clients send the daemon: body sizes (a 300 MB JSON body against a real
// `yun serve` process, measured), image uploads in the disk quota and metering, rate limits per
// token on the API and the console, failed logins per address.
import { test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";
import { startCloud, tenant, raw, refusal, type TestCloud } from "./helpers.js";
import { serveProcess } from "./serve-process.js";
import { NO_RATE_LIMITS, RequestLimits, TokenBuckets, type LimitSettings } from "../../src/cloud/limits.js";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { createApp } from "../../src/cloud/server.js";

const MiB = 1024 * 1024;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]) * 1024;
}

/**
 * POSTs up to `total` bytes of one JSON string, as fast as the connection takes them, until the
 * answer comes. Answers the status, the body, the time to the answer and the bytes sent by then.
 */
function hugePost(
  url: string,
  token: string,
  total: number,
  chunked: boolean,
): Promise<{ status: number; body: string; ms: number; sent: number }> {
  const chunk = Buffer.alloc(MiB, 0x61); // "aaaa..."
  return new Promise((res, rej) => {
    const t0 = performance.now();
    let sent = 0;
    let answered = false;
    const headers: Record<string, string | number> = {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
    };
    if (!chunked) headers["content-length"] = total;
    const req = request(`${url}/api/v1/projects`, { method: "POST", headers }, (r) => {
      answered = true;
      const ms = performance.now() - t0;
      let body = "";
      r.on("data", (d: Buffer) => (body += d.toString()));
      r.on("end", () => {
        req.destroy();
        res({ status: r.statusCode ?? 0, body, ms, sent });
      });
    });
    req.on("error", (e) => {
      if (!answered) rej(e);
    });
    const pump = (): void => {
      while (!answered && sent < total) {
        const first = sent === 0;
        const piece = first ? Buffer.concat([Buffer.from('{"name":"'), chunk.subarray(9)]) : chunk;
        const n = Math.min(piece.length, total - sent);
        sent += n;
        if (!req.write(piece.subarray(0, n))) return void req.once("drain", pump);
      }
      if (!answered) req.end();
    };
    pump();
  });
}

test("a 300 MB JSON body answers 413 within milliseconds, streamed or declared, and the daemon's memory does not grow", async () => {
  const s = await serveProcess();
  try {
    // Warm up (the first requests compile the code on their path), then measure.
    assert.equal(
      (await fetch(`${s.url}/api/v1/whoami`, { headers: { authorization: `Bearer ${s.token}` } })).status,
      200,
    );
    for (const chunked of [false, true]) await hugePost(s.url, s.token, 20 * MiB, chunked).catch(() => {});
    const before = rssBytes(s.child.pid!);
    for (const chunked of [false, true]) {
      const r = await hugePost(s.url, s.token, 300_000_000, chunked);
      assert.equal(r.status, 413, r.body);
      assert.equal(JSON.parse(r.body).error.code, "too_large");
      assert.match(JSON.parse(r.body).error.message, /larger than 1 MiB/);
      // Milliseconds when the machine is idle (~3 ms declared); on one at load 20, 40-400 ms. Without
      // the limit the daemon parsed all 300 MB first: seconds, and ~1 GB of memory.
      assert.ok(r.ms < 3000, `413 after ${r.ms.toFixed(0)} ms`);
      assert.ok(r.sent < 300_000_000, `the whole body was sent (${r.sent} bytes) before the answer`);
      console.log(
        `# 300 MB JSON (${chunked ? "chunked" : "Content-Length"}): 413 after ${r.ms.toFixed(1)} ms, ${(r.sent / MiB).toFixed(0)} MiB sent by then`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
    const grew = rssBytes(s.child.pid!) - before;
    console.log(`# daemon RSS ${(before / MiB).toFixed(0)} MiB before, grew ${(grew / MiB).toFixed(1)} MiB`);
    assert.ok(grew < 40 * MiB, `the daemon grew by ${(grew / MiB).toFixed(0)} MiB`);
    // It still serves.
    const ok = await fetch(`${s.url}/api/v1/projects`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "after" }),
    });
    assert.equal(ok.status, 201);
  } finally {
    await s.stop();
  }
});

test("JSON bodies: 1 MiB passes the limit, one byte more answers 413 (declared or chunked)", async () => {
  const t = await startCloud();
  try {
    const padded = (total: number): string => {
      const head = '{"name":"padded"';
      return head + " ".repeat(total - head.length - 1) + "}";
    };
    const at = await raw(t, "POST", "/api/v1/projects", { body: padded(MiB) });
    assert.equal(at.status, 201, JSON.stringify(at.body));
    const over = await raw(t, "POST", "/api/v1/projects", { body: padded(MiB + 1) });
    assert.equal(over.status, 413);
    assert.equal(over.body.error?.code, "too_large");
    // Chunked (no Content-Length): counted while it streams.
    const body = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(padded(2 * MiB)));
        c.close();
      },
    });
    const res = await fetch(`${t.url}/api/v1/projects`, {
      method: "POST",
      headers: { authorization: `Bearer ${t.adminToken}`, "content-type": "application/json" },
      body,
      duplex: "half",
    } as RequestInit);
    assert.equal(res.status, 413);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, "too_large");
    // A chunked body within the limit is read and used as sent.
    const small = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('{"name":'));
        c.enqueue(new TextEncoder().encode('"chunked"}'));
        c.close();
      },
    });
    const made = await fetch(`${t.url}/api/v1/projects`, {
      method: "POST",
      headers: { authorization: `Bearer ${t.adminToken}`, "content-type": "application/json" },
      body: small,
      duplex: "half",
    } as RequestInit);
    assert.equal(made.status, 201, await made.clone().text());
    assert.equal(((await made.json()) as { name: string }).name, "chunked");
    // In-process requests (app.request, as the API fuzzer makes them) have the same limit.
    const app = createApp(t.cloud, { limits: NO_RATE_LIMITS });
    const inProcess = await app.request("/api/v1/projects", {
      method: "POST",
      headers: { authorization: `Bearer ${t.adminToken}`, "content-type": "application/json" },
      body: padded(MiB + 1),
    });
    assert.equal(inProcess.status, 413);
    // Nothing was created by the refused requests, and they are not in the audit log.
    const names = (await t.admin.listProjects()).map((p) => p.name);
    assert.deepEqual(names.filter((n) => n === "padded").length, 1);
    assert.ok(names.includes("chunked"));
  } finally {
    await t.close();
  }
});

test("the OpenAPI document states the body limit and documents 413 and 429", async () => {
  const t = await startCloud();
  try {
    const doc = (await (await fetch(`${t.url}/api/openapi.json`)).json()) as {
      paths: Record<
        string,
        Record<string, { requestBody?: { description?: string }; responses: Record<string, unknown> }>
      >;
    };
    const post = doc.paths["/api/v1/projects"].post;
    assert.match(post.requestBody?.description ?? "", /at most 1 MiB/);
    assert.ok(post.responses["413"] && post.responses["429"]);
    assert.ok(doc.paths["/api/v1/instances"].get.responses["429"]);
  } finally {
    await t.close();
  }
});

function cloudWith(limits: Partial<LimitSettings>): Promise<TestCloud> {
  return startCloud({ limits });
}

test("rate limit per token: a burst passes, then 429 with Retry-After; other tokens are not affected", async () => {
  const t = await cloudWith({ apiRate: 2, apiBurst: 10 });
  try {
    const A = await tenant(t, "busy"); // 5 admin requests
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    let message = "";
    for (let i = 0; i < 14; i++) {
      const r = await fetch(`${t.url}/api/v1/whoami`, { headers: { authorization: `Bearer ${A.memberToken}` } });
      statuses.push(r.status);
      if (r.status === 429) {
        retryAfter = r.headers.get("retry-after");
        message = ((await r.json()) as { error: { message: string } }).error.message;
      } else await r.arrayBuffer();
    }
    // Ten at once, perhaps one more earned meanwhile, then refusals.
    const passed = statuses.filter((s) => s === 200).length;
    assert.ok(passed >= 10 && passed <= 11, statuses.join(","));
    assert.equal(statuses.at(-1), 429);
    assert.equal(retryAfter, "1");
    assert.match(message, /more than 2 requests a second/);
    // The reader's token has its own bucket.
    assert.equal((await A.reader.whoami()).role, "reader");
    // Half a second earns one more request.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal((await A.member.whoami()).role, "member");
  } finally {
    await t.close();
  }
});

test("failed logins per address: repeated bad tokens answer 429 with Retry-After; NO_RATE_LIMITS turns it off", async () => {
  const t = await cloudWith({ loginFailuresPerMinute: 6, loginFailureBurst: 5 });
  try {
    const bad = async (): Promise<Response> =>
      fetch(`${t.url}/api/v1/whoami`, { headers: { authorization: "Bearer yun_guessedguessedguessed" } });
    for (let i = 0; i < 5; i++) assert.equal((await bad()).status, 401);
    const blocked = await bad();
    assert.equal(blocked.status, 429);
    const retry = Number(blocked.headers.get("retry-after"));
    assert.ok(retry >= 1 && retry <= 10, `Retry-After ${retry}`);
    assert.match(((await blocked.json()) as { error: { message: string } }).error.message, /too many failed logins/);
    // While it waits, the address is refused whatever it sends (a right guess would tell itself apart).
    assert.equal((await raw(t, "GET", "/api/v1/whoami")).status, 429);
    // The console WebSocket shares the block.
    const ws = new WebSocket(`${t.url.replace("http", "ws")}/api/v1/instances/x/console`, [`bearer.${t.adminToken}`]);
    const status = await new Promise<number>((r) => ws.on("unexpected-response", (_q, res) => r(res.statusCode ?? 0)));
    assert.equal(status, 429);
  } finally {
    await t.close();
  }
  const open = await cloudWith(NO_RATE_LIMITS);
  try {
    for (let i = 0; i < 40; i++)
      assert.equal((await raw(open, "GET", "/api/v1/whoami", { token: "nope" })).status, 401);
    assert.equal((await raw(open, "GET", "/api/v1/whoami")).status, 200);
  } finally {
    await open.close();
  }
});

test("console WebSockets per token: a burst of connections, then 429; bad tokens there count as failed logins", async () => {
  const t = await cloudWith({ consolePerMinute: 6, consoleBurst: 3, loginFailuresPerMinute: 6, loginFailureBurst: 2 });
  try {
    const attempt = (token: string): Promise<{ status: number; retry: string | undefined }> =>
      new Promise((r) => {
        const ws = new WebSocket(`${t.url.replace("http", "ws")}/api/v1/instances/nosuch/console`, [`bearer.${token}`]);
        ws.on("unexpected-response", (_q, res) => {
          r({ status: res.statusCode ?? 0, retry: res.headers["retry-after"] as string | undefined });
          res.resume();
        });
        ws.on("error", () => {});
      });
    // No such instance: each attempt is answered (404), and each counts.
    for (let i = 0; i < 3; i++) assert.equal((await attempt(t.adminToken)).status, 404);
    const limited = await attempt(t.adminToken);
    assert.equal(limited.status, 429);
    assert.equal(limited.retry, "10");
    // The HTTP API is a different budget.
    assert.equal((await raw(t, "GET", "/api/v1/whoami")).status, 200);
    // Bad tokens: 401, then the address waits.
    for (let i = 0; i < 2; i++) assert.equal((await attempt("bogus")).status, 401);
    assert.equal((await attempt("bogus")).status, 429);
  } finally {
    await t.close();
  }
});

test("token buckets: refill with time, bounded memory whatever keys arrive, open consoles counted", () => {
  let now = 0;
  const b = new TokenBuckets(2, 4, () => now, 100);
  for (let i = 0; i < 4; i++) assert.equal(b.take("k"), 0);
  assert.equal(b.take("k"), 0.5);
  now += 500;
  assert.equal(b.take("k"), 0);
  assert.ok(b.take("k") > 0);
  // Ten thousand made-up keys: the map stays within its bound.
  for (let i = 0; i < 10_000; i++) b.take(`key${i}`);
  assert.ok(b.size <= 101, `${b.size} buckets held`);
  // Off: always 0.
  assert.equal(new TokenBuckets(0, 0).take("x"), 0);

  const limits = new RequestLimits({ consolePerMinute: 600, consoleBurst: 100, consoleOpen: 2 }, () => now);
  assert.equal(limits.admitConsole("a", "tok"), null);
  assert.equal(limits.admitConsole("a", "tok"), null);
  const third = limits.admitConsole("a", "tok");
  assert.equal(third?.status, 429);
  assert.match(third!.message, /2 consoles open/);
  assert.equal(limits.admitConsole("a", "other"), null);
  limits.consoleClosed("tok");
  assert.equal(limits.admitConsole("a", "tok"), null);
});

test("uploaded images count in the disk quota: over-quota uploads answer 403 and leave no file", async () => {
  const t = await startCloud();
  try {
    const A = await tenant(t, "imgq");
    await t.admin.setQuotas(A.project.id, { diskGiB: 2 });
    const vol = await A.member.createVolume({ name: "fill", sizeGiB: 2 });
    const imagesDir = join(t.home, "cloud", "images");
    const leftovers = (): string[] => readdirSync(imagesDir);
    // Declared length: refused before a byte is read.
    const declared = await refusal(() => A.member.uploadImage("big", "raw", new Uint8Array(MiB)));
    assert.equal(declared.status, 403);
    assert.equal(declared.code, "quota_exceeded");
    assert.match(declared.message, /quota diskGiB \(2\) exceeded: project imgq has 0 GiB left/);
    // Streamed (chunked): refused as the bytes arrive.
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < 8; i++) c.enqueue(new Uint8Array(MiB));
        c.close();
      },
    });
    const res = await fetch(`${t.url}/api/v1/images?name=big&format=raw`, {
      method: "POST",
      headers: { authorization: `Bearer ${A.memberToken}`, "content-type": "application/octet-stream" },
      body: stream,
      duplex: "half",
    } as RequestInit);
    assert.equal(res.status, 403);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, "quota_exceeded");
    assert.deepEqual(leftovers(), []);
    // With room, an image counts in whole GiB, as volumes do.
    await A.member.deleteVolume(vol.id);
    const img = await A.member.uploadImage("small", "raw", new Uint8Array(MiB));
    assert.equal((await t.admin.getQuotas(A.project.id)).used.diskGiB, 1);
    assert.deepEqual(leftovers(), [`${img.id}.raw`]);
    // A volume cannot take the image's GiB.
    const full = await refusal(() => A.member.createVolume({ name: "v2", sizeGiB: 2 }));
    assert.equal(full.code, "quota_exceeded");
    await A.member.deleteImage(img.id);
    assert.equal((await t.admin.getQuotas(A.project.id)).used.diskGiB, 0);
    assert.deepEqual(leftovers(), []);
  } finally {
    await t.close();
  }
});

test("uploaded images are metered as disk GiB-hours from upload to delete", async () => {
  let now = Date.parse("2026-03-01T12:00:00Z");
  const t = await startCloud({ now: () => now });
  try {
    const A = await tenant(t, "imgm");
    const img = await A.member.uploadImage("meter", "raw", new Uint8Array(MiB));
    now += 2 * 3600_000;
    await A.member.deleteImage(img.id);
    now += 3600_000;
    const u = await A.member.usage();
    const line = u.instances.find((i) => i.id === img.id);
    assert.ok(line, "the image has a usage line");
    assert.equal(line.name, "meter");
    assert.equal(line.diskGiBHours, 2);
    assert.equal(u.diskGiBHours, 2);
  } finally {
    await t.close();
  }
  assert.ok(!existsSync(t.home));
});

test("at start: a cut-off upload's .part file is removed, and images uploaded before metering are metered", async () => {
  const t = await startCloud();
  const home = t.home;
  let img;
  try {
    const A = await tenant(t, "imgs-old");
    img = await A.member.uploadImage("old", "raw", new Uint8Array(MiB));
  } finally {
    await t.server.close();
    t.cloud.close();
  }
  // An install from before: no interval for the image; a daemon killed mid-upload.
  const { openDatabase } = await import("../../src/cloud/db.js");
  const { writeFileSync } = await import("node:fs");
  const db = openDatabase(join(home, "cloud", "yun.db"));
  db.prepare("DELETE FROM usage_intervals WHERE resource_id = ?").run(img.id);
  db.close();
  writeFileSync(join(home, "cloud", "images", "img-cutoff.raw.part"), "partial");
  const again = new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0 });
  try {
    assert.ok(again.meter.isOpen(img.id, "disk"));
    assert.deepEqual(readdirSync(join(home, "cloud", "images")), [`${img.id}.raw`]);
  } finally {
    again.close();
    rmSync(home, { recursive: true, force: true });
  }
});

test("yun serve's limit flags take whole numbers; a bad one exits 2 before anything starts", async () => {
  const { main } = await import("../../src/cli/main.js");
  const saved = process.stderr.write.bind(process.stderr);
  let err = "";
  process.stderr.write = ((s: string) => ((err += s), true)) as typeof process.stderr.write;
  try {
    assert.equal(await main(["serve", "--rate-limit", "fast"]), 2);
    assert.equal(await main(["serve", "--login-failures", "-1"]), 2);
    assert.equal(await main(["serve", "--rate-limit", "5", "--rate-burst", "0"]), 2);
  } finally {
    process.stderr.write = saved;
  }
  assert.match(err, /--rate-limit takes a whole number, got "fast"/);
  assert.match(err, /--rate-burst must be at least 1/);
});

/**
 * Issue 22's roles and web hardening over real HTTP: who may manage whose tokens, the actor's id in
 * the audit log (and the migration that adds it), names unique per project under concurrency,
 * security headers on every answer, CSRF (a cross-site form, a cross-origin console WebSocket),
 * tokens never in URLs, 415 in the API's error shape, OpenSSH key checks with keys made by
 * ssh-keygen, and a start racing a delete.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "node:http";
import Database from "better-sqlite3";
import WebSocket from "ws";
import { startCloud, tenant, refusal, type TestCloud } from "./helpers.js";
import { YunClient } from "../../src/cloud/client.js";
import { openDatabase } from "../../src/cloud/db.js";
import { parseSshPublicKey } from "../../src/cloud/keypairs/sshkey.js";

let t: TestCloud;
before(async () => {
  t = await startCloud();
});
after(async () => {
  await t?.close();
});

const idOf = async (c: YunClient): Promise<string> => (await c.whoami()).user.id;

test("tokens: members and readers manage only their own, admins everyone's; users are the admins'", async () => {
  const A = await tenant(t, "own-a");
  const B = await tenant(t, "own-b");
  const member2 = await t.admin.createUser({ name: "second", role: "member", project: A.project.id });
  const memberId = await idOf(A.member);
  const readerId = await idOf(A.reader);

  // Their own: create, list, revoke.
  for (const [who, c, id] of [
    ["member", A.member, memberId],
    ["reader", A.reader, readerId],
  ] as const) {
    const tok = await c.createToken(id);
    assert.ok(
      (await c.listTokens(id)).some((x) => x.id === tok.id),
      `${who} lists its own`,
    );
    await c.revokeToken(id, tok.id);
    assert.equal((await refusal(() => new YunClient({ server: t.url, token: tok.token }).whoami())).status, 401);
  }

  // Another user of the same project is visible (GET /users), so the refusal is 403, not 404.
  const readerTokenId = (await t.admin.listTokens(readerId))[0].id;
  const others: [string, () => Promise<unknown>][] = [
    ["member mints for the reader", () => A.member.createToken(readerId)],
    ["member mints for another member", () => A.member.createToken(member2.id)],
    ["member lists the reader's", () => A.member.listTokens(readerId)],
    ["member revokes the reader's", () => A.member.revokeToken(readerId, readerTokenId)],
    ["reader mints for the member", () => A.reader.createToken(memberId)],
    ["reader lists the member's", () => A.reader.listTokens(memberId)],
    ["member creates a user", () => A.member.createUser({ name: "sock", role: "reader" })],
    ["member deletes the reader", () => A.member.deleteUser(readerId)],
    ["reader deletes the member", () => A.reader.deleteUser(memberId)],
  ];
  for (const [what, fn] of others) {
    const e = await refusal(fn);
    assert.equal(e.status, 403, what);
    assert.equal(e.code, "forbidden", what);
    assert.match(e.message, /only an admin may/, what);
  }
  // A user of another project does not exist for them (404), like every other resource.
  for (const [what, fn] of [
    ["mint", () => B.member.createToken(memberId)],
    ["list", () => B.member.listTokens(memberId)],
    ["revoke", () => B.member.revokeToken(memberId, readerTokenId)],
    ["delete", () => B.member.deleteUser(memberId)],
  ] as [string, () => Promise<unknown>][]) {
    assert.equal((await refusal(fn)).status, 404, what);
  }
  // Nothing changed: the reader's token still works, the users are all there.
  assert.equal((await A.reader.whoami()).role, "reader");
  assert.equal((await t.admin.listTokens(readerId)).length, 1);
  // Admins manage everyone's.
  const issued = await t.admin.createToken(member2.id);
  assert.equal((await new YunClient({ server: t.url, token: issued.token }).whoami()).user.name, "second");
  await t.admin.revokeToken(member2.id, issued.id);
  await t.admin.deleteUser(member2.id);
  // The refusals are in the audit log under the actor's id.
  const events = await t.admin.events({ limit: 200 });
  const refused = events.filter((e) => e.userId === memberId && e.action === "user.token" && e.outcome === "forbidden");
  assert.ok(refused.length >= 2, JSON.stringify(events.slice(0, 5)));
});

test("audit events name the actor by id; same-named users of two projects are told apart", async () => {
  const A = await tenant(t, "dup-a");
  const B = await tenant(t, "dup-b");
  const aliceA = await t.admin.createUser({ name: "alice", role: "member", project: A.project.id });
  const aliceB = await t.admin.createUser({ name: "alice", role: "member", project: B.project.id });
  const a = new YunClient({ server: t.url, token: (await t.admin.createToken(aliceA.id)).token });
  const b = new YunClient({ server: t.url, token: (await t.admin.createToken(aliceB.id)).token });
  const va = await a.createVolume({ name: "v", sizeGiB: 1 });
  const vb = await b.createVolume({ name: "v", sizeGiB: 1 });
  const all = await t.admin.events({ limit: 50 });
  const ea = all.find((e) => e.resource === va.id && e.action === "volume.create")!;
  const eb = all.find((e) => e.resource === vb.id && e.action === "volume.create")!;
  assert.equal(ea.user, "alice");
  assert.equal(eb.user, "alice");
  assert.equal(ea.userId, aliceA.id);
  assert.equal(eb.userId, aliceB.id);
  // A second user of the same name in one project is refused (409), as every resource's name.
  const dup = await refusal(() => t.admin.createUser({ name: "alice", role: "reader", project: A.project.id }));
  assert.equal(dup.status, 409);
  // The OpenAPI document describes the new field.
  const doc = (await (await fetch(`${t.url}/api/openapi.json`)).json()) as {
    components: { schemas: { Event: { properties: Record<string, unknown> } } };
  };
  assert.ok(doc.components.schemas.Event.properties.userId);
  await a.deleteVolume(va.id);
  await b.deleteVolume(vb.id);
});

test("migration 2 keeps the events of a version-1 database readable and fills in the ids it can", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-mig-"));
  try {
    const path = join(dir, "yun.db");
    // A database as the first schema left it (the first migration only).
    const db1 = openDatabase(path);
    db1.exec("DELETE FROM schema_migrations WHERE version > 1");
    db1.exec("DROP TABLE operations"); // migration 3
    db1.exec("DROP TABLE forwards"); // migration 4
    db1.exec("DROP TABLE meter_ticks"); // migration 5
    // migration 6 (its usage_intervals copy is kept: the migration copies it again)
    for (const t of [
      "upload_parts",
      "uploads",
      "objects",
      "buckets",
      "access_keys",
      "object_requests",
      "object_quotas",
    ])
      db1.exec(`DROP TABLE ${t}`);
    db1.exec("ALTER TABLE instances DROP COLUMN display"); // migration 7
    for (const t of ["sandboxes", "sandbox_templates"]) db1.exec(`DROP TABLE ${t}`); // migration 8
    for (const t of ["share_attachments", "shares"]) db1.exec(`DROP TABLE ${t}`); // migration 9
    db1.exec("DROP INDEX events_user");
    db1.exec("ALTER TABLE events DROP COLUMN user_id");
    const at = "2026-01-01T00:00:00.000Z";
    db1.exec(`
      INSERT INTO projects VALUES ('prj-admin00000', 'admin', 1, 1, 1, 1, '${at}'), ('prj-aaaaaaaaaa', 'a', 1, 1, 1, 1, '${at}'),
        ('prj-bbbbbbbbbb', 'b', 1, 1, 1, 1, '${at}');
      INSERT INTO users VALUES ('usr-admin00000', 'admin', 'prj-admin00000', 'admin', '${at}'),
        ('usr-alicea0000', 'alice', 'prj-aaaaaaaaaa', 'member', '${at}'),
        ('usr-aliceb0000', 'alice', 'prj-bbbbbbbbbb', 'member', '${at}');
      INSERT INTO events (at, user_name, project_id, action, resource, outcome) VALUES
        ('${at}', 'alice', 'prj-aaaaaaaaaa', 'volume.create', 'vol-1', 'ok'),
        ('${at}', 'admin', 'prj-bbbbbbbbbb', 'volume.delete', 'vol-2', 'ok'),
        ('${at}', 'system', 'prj-aaaaaaaaaa', 'instance.exited', 'ins-1', 'ok'),
        ('${at}', 'ghost', 'prj-aaaaaaaaaa', 'volume.create', 'vol-3', 'ok');
    `);
    db1.close();
    const before = new Database(path);
    assert.deepEqual(before.prepare("SELECT max(version) AS v FROM schema_migrations").get(), { v: 1 });
    before.close();
    const db = openDatabase(path);
    const rows = db.prepare("SELECT user_name, user_id, resource FROM events ORDER BY id").all();
    assert.deepEqual(rows, [
      { user_name: "alice", user_id: "usr-alicea0000", resource: "vol-1" },
      { user_name: "admin", user_id: "usr-admin00000", resource: "vol-2" },
      { user_name: "system", user_id: null, resource: "ins-1" },
      { user_name: "ghost", user_id: null, resource: "vol-3" },
    ]);
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("names are unique per project for every kind: concurrent creates make one, the rest answer 409", async () => {
  const A = await tenant(t, "names");
  const B = await tenant(t, "names-b");
  const img = Buffer.alloc(1 << 20);
  const vol = await A.member.createVolume({ name: "base", sizeGiB: 1 });
  const kinds: [string, (i: number) => Promise<unknown>][] = [
    ["instance", () => A.member.createInstance({ name: "same", image: "debian-tiny", flavor: "tiny", start: false })],
    ["volume", () => A.member.createVolume({ name: "same", sizeGiB: 1 })],
    ["network", (i) => A.member.createNetwork({ name: "same", cidr: `10.${60 + i}.0.0/24` })],
    ["key pair", () => A.member.createKeyPair({ name: "same", publicKey: ED25519 })],
    ["image", () => A.member.uploadImage("same", "raw", img)],
    ["snapshot", () => A.member.createSnapshot(vol.id, "same")],
    ["user", () => t.admin.createUser({ name: "same", role: "reader", project: A.project.id })],
    ["flavor", () => t.admin.createFlavor({ name: "same", vcpus: 1, memoryMiB: 128, diskGiB: 1 })],
    ["project", () => t.admin.createProject({ name: "same" })],
  ];
  for (const [kind, create] of kinds) {
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => create(i)));
    const ok = results.filter((r) => r.status === "fulfilled");
    const codes = results
      .filter((r): r is PromiseRejectedResult => r.status === "rejected")
      .map((r) => (r.reason as { status: number }).status);
    assert.equal(ok.length, 1, `${kind}: ${JSON.stringify(results.map((r) => r.status))}`);
    assert.deepEqual(codes, [409, 409, 409, 409, 409], kind);
  }
  // The same names in another project are fine (flavors and projects are global).
  await B.member.createVolume({ name: "same", sizeGiB: 1 });
  await B.member.createKeyPair({ name: "same", publicKey: ED25519 });
  // A name that looks like an id would make paths ambiguous.
  const idLike = await refusal(() => A.member.createVolume({ name: "vol-abcdefghij", sizeGiB: 1 }));
  assert.equal(idLike.status, 400);
  assert.match(idLike.message, /name: a volume name may not look like an id/);
});

// ----------------------------------------------------------------------------------- headers

const EXPECTED_HEADERS: Record<string, RegExp> = {
  "content-security-policy": /(^|; )script-src 'self'(;|$)/,
  "x-frame-options": /^DENY$/,
  "x-content-type-options": /^nosniff$/,
  "referrer-policy": /^no-referrer$/,
  "cross-origin-opener-policy": /^same-origin$/,
  "cross-origin-resource-policy": /^same-origin$/,
};

test("every answer carries the security headers; API answers are not cached", async () => {
  const cases: [string, RequestInit, number][] = [
    ["/", {}, 200],
    ["/instances", {}, 200],
    ["/vendor/xterm/lib/xterm.mjs", {}, 200],
    ["/nope.js", {}, 404],
    ["/api/openapi.json", {}, 200],
    ["/api/v1/whoami", { headers: { authorization: `Bearer ${t.adminToken}` } }, 200],
    ["/api/v1/whoami", {}, 401],
    ["/api/v1/nothing", { headers: { authorization: `Bearer ${t.adminToken}` } }, 404],
    ["/api/v1/instances/x/console", { headers: { authorization: `Bearer ${t.adminToken}` } }, 400],
  ];
  for (const [path, init, status] of cases) {
    const res = await fetch(t.url + path, init);
    await res.arrayBuffer();
    assert.equal(res.status, status, path);
    for (const [h, re] of Object.entries(EXPECTED_HEADERS)) assert.match(res.headers.get(h) ?? "", re, `${path} ${h}`);
    const csp = res.headers.get("content-security-policy")!;
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /script-src[^;]*'unsafe-(inline|eval)'/, "no inline or eval'd script");
    if (path.startsWith("/api/")) assert.equal(res.headers.get("cache-control"), "no-store", path);
  }
  // The dashboard's page has no inline script for the policy to block.
  const html = await (await fetch(t.url + "/")).text();
  if (html.includes("<html")) {
    for (const m of html.matchAll(/<script\b[^>]*>([\s\S]*?)<\/script>/g))
      assert.equal(m[1].trim(), "", `inline script in index.html: ${m[0].slice(0, 80)}`);
  }
  // A refused WebSocket upgrade carries them too.
  const head = await upgrade("/api/v1/instances/ins-zzzzzzzzzz/console", { "sec-websocket-protocol": "bearer.x" });
  assert.match(head, /^HTTP\/1\.1 401/);
  assert.match(head, /\r\nx-frame-options: DENY\r\n/i);
  assert.match(head, /\r\ncontent-security-policy: [^\r]*frame-ancestors 'none'/i);
});

/** A raw WebSocket handshake; answers the status line and headers of the refusal. */
function upgrade(path: string, headers: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(t.url + path, {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        ...headers,
      },
    });
    req.on("response", (res) => {
      const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage}`];
      for (let i = 0; i < res.rawHeaders.length; i += 2) lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
      res.resume();
      resolve(lines.join("\r\n") + "\r\n");
    });
    req.on("upgrade", () => reject(new Error("the upgrade was accepted")));
    req.on("error", reject);
    req.end();
  });
}

// -------------------------------------------------------------------------------------- CSRF

test("CSRF: a cross-site form POST is refused and changes nothing; a JSON API needs its content type", async () => {
  const before = (await t.admin.listProjects()).length;
  // What a form on another site can send: a urlencoded or text/plain body, the browser's cookies,
  // its Origin. The API reads no cookie, so without an Authorization header it is anonymous.
  for (const [type, body] of [
    ["application/x-www-form-urlencoded", "name=csrf1"],
    ["text/plain", '{"name":"csrf2"}'],
    ["multipart/form-data; boundary=x", '--x\r\ncontent-disposition: form-data; name="name"\r\n\r\ncsrf3\r\n--x--\r\n'],
  ]) {
    const res = await fetch(`${t.url}/api/v1/projects`, {
      method: "POST",
      headers: {
        "content-type": type,
        origin: "http://evil.example",
        cookie: `token=${t.adminToken}; yun.token=${t.adminToken}`,
      },
      body,
    });
    const answer = (await res.json()) as { error: { code: string } };
    assert.equal(res.status, 401, type);
    assert.equal(answer.error.code, "unauthorized");
  }
  assert.equal((await t.admin.listProjects()).length, before, "no project was created");
  // A script on another site could send the header only after a CORS preflight, which no answer allows.
  const preflight = await fetch(`${t.url}/api/v1/projects`, {
    method: "OPTIONS",
    headers: {
      origin: "http://evil.example",
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization, content-type",
    },
  });
  await preflight.arrayBuffer();
  assert.equal(preflight.headers.get("access-control-allow-origin"), null);
  assert.equal(preflight.headers.get("access-control-allow-headers"), null);

  // Even with the token, a body that is not declared JSON is refused in the documented shape.
  for (const type of ["text/plain", "application/x-www-form-urlencoded", undefined]) {
    const r = await rawBody("POST", "/api/v1/projects", '{"name":"csrf4"}', type);
    assert.equal(r.status, 415, String(type));
    assert.equal(r.body.error.code, "unsupported_media_type");
    assert.match(r.body.error.message, /Content-Type: application\/json/);
  }
  assert.equal((await t.admin.listProjects()).length, before);
  const doc = (await (await fetch(`${t.url}/api/openapi.json`)).json()) as {
    paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
  };
  assert.ok(doc.paths["/api/v1/instances"].post.responses["415"], "415 is documented on JSON endpoints");
  assert.ok(doc.paths["/api/v1/volumes/{id}/attach"].post.responses["415"]);
  assert.equal(doc.paths["/api/v1/instances"].get.responses["415"], undefined, "not on GETs");
});

/** A request with exactly these headers (fetch would add text/plain to a string body). */
function rawBody(
  method: string,
  path: string,
  body: string,
  contentType: string | undefined,
): Promise<{ status: number; body: { error: { code: string; message: string } } }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {
      authorization: `Bearer ${t.adminToken}`,
      "content-length": String(Buffer.byteLength(body)),
    };
    if (contentType !== undefined) headers["content-type"] = contentType;
    const req = request(t.url + path, { method, headers }, (res) => {
      let text = "";
      res.on("data", (d: Buffer) => (text += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("the console WebSocket: tokens only in the subprotocol, and only from this server's pages", async () => {
  const A = await tenant(t, "ws");
  const vm = await A.member.createInstance({ name: "c1", image: "debian-tiny", flavor: "tiny", start: false });
  const url = `${t.url.replace("http", "ws")}/api/v1/instances/${vm.id}/console`;
  const attempt = (u: string, protocols: string[], origin?: string) =>
    new Promise<{ status: number; message: string }>((resolve) => {
      const ws = new WebSocket(u, protocols, origin ? { origin } : {});
      ws.on("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (d: Buffer) => (body += d.toString()));
        res.on("end", () => {
          let message = "";
          try {
            message = (JSON.parse(body) as { error: { message: string } }).error.message;
          } catch {}
          resolve({ status: res.statusCode ?? 0, message });
        });
      });
      ws.on("open", () => {
        ws.close();
        resolve({ status: 101, message: "" });
      });
      ws.on("error", () => {});
    });
  // The instance is stopped, so an accepted request gets as far as 409.
  assert.equal((await attempt(url, [`bearer.${A.memberToken}`])).status, 409);
  assert.equal((await attempt(url, [`bearer.${A.memberToken}`], t.url)).status, 409, "from the dashboard's origin");
  const inUrl = await attempt(`${url}?token=${A.memberToken}`, []);
  assert.equal(inUrl.status, 401, "a token in the URL is not a credential");
  assert.match(inUrl.message, /token in the URL is not accepted/);
  assert.equal((await attempt(`${url}?token=${A.memberToken}`, [`bearer.${A.memberToken}`])).status, 401);
  // A page of another site opening the console with a token it got hold of: refused.
  for (const origin of ["http://evil.example", "null", t.url.replace("127.0.0.1", "localhost"), "https://127.0.0.1"]) {
    const r = await attempt(url, [`bearer.${A.memberToken}`], origin);
    assert.equal(r.status, 403, origin);
    assert.match(r.message, /this server's own pages/);
  }
  await A.member.deleteInstance(vm.id);
});

// -------------------------------------------------------------------------------- key pairs

const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host";

/** Public key line and ssh-keygen's SHA256 fingerprint of a new key. */
let keys = 0;
function keygen(dir: string, type: string, bits?: number): { line: string; fingerprint: string } {
  const path = join(dir, `${type}-${bits ?? 0}-${keys++}`);
  execFileSync("ssh-keygen", [
    "-q",
    "-t",
    type,
    ...(bits ? ["-b", String(bits)] : []),
    "-N",
    "",
    "-C",
    "me@t",
    "-f",
    path,
  ]);
  const line = readFileSync(`${path}.pub`, "utf8").trim();
  const fingerprint = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", `${path}.pub`], {
    encoding: "utf8",
  }).split(" ")[1];
  return { line, fingerprint };
}

function wire(...parts: (string | Buffer)[]): string {
  const bufs = parts.map((p) => (typeof p === "string" ? Buffer.from(p, "latin1") : p));
  return Buffer.concat(
    bufs.flatMap((b) => {
      const n = Buffer.alloc(4);
      n.writeUInt32BE(b.length);
      return [n, b];
    }),
  ).toString("base64");
}

test("key pairs: real keys of every type are accepted with ssh-keygen's fingerprint; bad ones are 400", async () => {
  const A = await tenant(t, "keys");
  const dir = mkdtempSync(join(tmpdir(), "yun-keys-"));
  try {
    const good: [string, number | undefined][] = [
      ["ed25519", undefined],
      ["rsa", 2048],
      ["rsa", 3072],
      ["ecdsa", 256],
      ["ecdsa", 384],
      ["ecdsa", 521],
    ];
    for (const [type, bits] of good) {
      const k = keygen(dir, type, bits);
      const kp = await A.member.createKeyPair({ name: `${type}${bits ?? ""}`, publicKey: `  ${k.line}\n` });
      assert.equal(kp.fingerprint, k.fingerprint, `${type} ${bits}`);
      assert.equal(kp.publicKey, k.line);
    }
    // Security-key types (no hardware here: the blob is built by hand).
    const sk = `sk-ssh-ed25519@openssh.com ${wire("sk-ssh-ed25519@openssh.com", Buffer.alloc(32, 7), "ssh:")}`;
    assert.equal(parseSshPublicKey(sk).type, "sk-ssh-ed25519@openssh.com");

    const rsa1024 = keygen(dir, "rsa", 1024).line;
    const ed = keygen(dir, "ed25519").line;
    const [, edBlob] = ed.split(" ");
    const bad: [string, string, RegExp][] = [
      ["a 1024-bit RSA key", rsa1024, /publicKey an RSA key needs at least 2048 bits, this one has 1024/],
      [
        "an ed25519 blob labelled ssh-rsa",
        `ssh-rsa ${edBlob}`,
        /publicKey its key data is a "ssh-ed25519" key, not ssh-rsa/,
      ],
      ["two keys", `${ed}\n${ED25519}`, /publicKey must be a single line/],
      [
        "an options prefix",
        `command="sh" ${ed}`,
        /publicKey must be an OpenSSH public key line, and its type "command=\\"sh\\"" is not one of/,
      ],
      ["an unknown type", `ssh-dss ${wire("ssh-dss", "x")}`, /its type "ssh-dss" is not one of/],
      ["not base64", "ssh-ed25519 AAAA!!!!", /publicKey its key data is not base64/],
      ["a truncated blob", `ssh-ed25519 ${edBlob.slice(0, 40)}`, /publicKey its key data/],
      ["a short ed25519 key", `ssh-ed25519 ${wire("ssh-ed25519", Buffer.alloc(31))}`, /an Ed25519 key is 32 bytes/],
      ["trailing bytes", `ssh-ed25519 ${wire("ssh-ed25519", Buffer.alloc(32), "more")}`, /trailing bytes/],
      [
        "a curve mismatch",
        `ecdsa-sha2-nistp256 ${wire("ecdsa-sha2-nistp256", "nistp384", Buffer.alloc(97, 4))}`,
        /names curve "nistp384", not nistp256/,
      ],
      ["a control character in the comment", `${ed.split(" ").slice(0, 2).join(" ")} a\u0007b`, /control characters/],
    ];
    for (const [what, publicKey, re] of bad) {
      const e = await refusal(() => A.member.createKeyPair({ name: "bad", publicKey }));
      assert.equal(e.status, 400, what);
      assert.equal(e.code, "invalid_request", what);
      assert.match(e.message, re, what);
    }
    assert.equal((await A.member.listKeyPairs()).length, good.length);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ------------------------------------------------------------------------- start vs. delete

test("a start racing a delete answers 409 (or starts first), never 200 with state deleting", async () => {
  // A cloud without the Debian image: a start fails fast (no kernel), so the race is all in the
  // state machine and many rounds take little time.
  const home = mkdtempSync(join(tmpdir(), "yun-race-"));
  const c = await startCloud({ home });
  try {
    await c.admin.uploadImage("blank", "raw", Buffer.alloc(1 << 20));
    const p = c.cloud.principalForToken(c.adminToken);
    const seen = { conflict: 0, startedFirst: 0 };
    for (let round = 0; round < 12; round++) {
      const vm = await c.admin.createInstance({ name: `r${round}`, image: "blank", flavor: "tiny", start: false });
      // Both orders, in the daemon (exact interleaving) and over HTTP.
      const startFirst = round % 2 === 0;
      const viaHttp = round >= 6;
      const start = () =>
        viaHttp ? c.admin.startInstance(vm.id) : c.cloud.instanceAction(p, vm.id, "start", undefined);
      const del = () => (viaHttp ? c.admin.deleteInstance(vm.id) : c.cloud.deleteInstance(p, vm.id));
      const [s, d] = startFirst
        ? await Promise.allSettled([start(), del()])
        : await Promise.allSettled([del(), start()]).then(([a, b]) => [b, a]);
      assert.equal(d.status, "fulfilled", `round ${round}: the delete succeeds`);
      if (s.status === "fulfilled") {
        const state = (s.value as { state: string }).state;
        assert.notEqual(state, "deleting", `round ${round}: a start answered 200 with state deleting`);
        seen.startedFirst++;
      } else {
        const e = s.reason as { status: number; code: string; message: string };
        // Over HTTP a delete may be over before the start is even read: then it is simply 404.
        if (viaHttp && e.status === 404) continue;
        assert.equal(e.status, 409, `round ${round}: ${e.message}`);
        assert.match(e.message, new RegExp(`instance r${round} (is being|was) deleted; it cannot be started`));
        seen.conflict++;
      }
    }
    assert.ok(seen.conflict > 0, "some starts lost the race");
    assert.ok(seen.startedFirst > 0, "some starts won it");
  } finally {
    await c.close();
    rmSync(home, { recursive: true, force: true });
  }
});

/**
 * The cloud API over real HTTP (server on port 0, temporary YUN_HOME and database): validation,
 * authentication and roles, tenant isolation, quotas under concurrency, volumes, the OpenAPI
 * document, the audit log and usage export. Instances here are created with start: false (no VM);
 * test/cloud/vm.test.ts boots real ones.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { startCloud, tenant, refusal, raw, HAVE_DEBIAN, type TestCloud } from "./helpers.js";
import { YunApiError, YunClient } from "../../src/cloud/client.js";
import { diskInfo } from "../../src/storage/image.js";
import { debugfs } from "../../src/images/ext4.js";

let t: TestCloud;
before(async () => {
  t = await startCloud();
});
after(async () => {
  await t?.close();
});

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host";

test("whoami, and requests without or with a bad token answer 401 with a message", async () => {
  const me = await t.admin.whoami();
  assert.equal(me.user.name, "admin");
  assert.equal(me.role, "admin");
  const none = await raw(t, "GET", "/api/v1/instances", { token: null });
  assert.equal(none.status, 401);
  assert.equal(none.body.error?.code, "unauthorized");
  assert.match(none.body.error!.message, /Bearer/);
  const bad = await raw(t, "GET", "/api/v1/instances", { token: "yun_notatoken" });
  assert.equal(bad.status, 401);
  assert.match(bad.body.error!.message, /not valid/);
});

test("every endpoint validates its body and query: 400 invalid_request naming the field", async () => {
  const cases: [string, string, string | undefined, RegExp][] = [
    ["POST", "/api/v1/projects", "{}", /name is required|name/],
    ["POST", "/api/v1/projects", '{"name":"-bad"}', /name: project names use/],
    ["PUT", "/api/v1/projects/admin/quotas", '{"instances":-1}', /instances/],
    ["PUT", "/api/v1/projects/admin/quotas", '{"cpus":4}', /unknown field "cpus"/],
    ["POST", "/api/v1/users", '{"name":"u1","role":"root"}', /role/],
    ["POST", "/api/v1/flavors", '{"name":"huge","vcpus":0,"memoryMiB":128,"diskGiB":1}', /vcpus/],
    ["POST", "/api/v1/flavors", '{"name":"huge","vcpus":1,"memoryMiB":"lots","diskGiB":1}', /memoryMiB/],
    ["POST", "/api/v1/instances", '{"name":"x","flavor":"tiny"}', /image/],
    ["POST", "/api/v1/instances", '{"name":"x","image":"debian-tiny","flavor":"tiny","extra":1}', /unknown field "extra"/],
    ["POST", "/api/v1/instances", '{"name":"x y","image":"debian-tiny","flavor":"tiny"}', /name: instance names use/],
    ["POST", "/api/v1/instances", '{"name":', /not valid JSON/],
    ["POST", "/api/v1/instances/whatever/actions", '{"action":"explode"}', /action/],
    ["POST", "/api/v1/volumes", '{"name":"v","sizeGiB":0}', /sizeGiB/],
    ["POST", "/api/v1/volumes/x/attach", "{}", /instance/],
    ["POST", "/api/v1/volumes/x/snapshots", '{"name":""}', /name/],
    ["POST", "/api/v1/networks", '{"name":"n","cidr":"10.0.0.0"}', /cidr/],
    ["POST", "/api/v1/keypairs", '{"name":"k"}', /publicKey/],
    ["POST", "/api/v1/images?name=up&format=vmdk", undefined, /format/],
    ["GET", "/api/v1/usage?format=xml", undefined, /format/],
    ["GET", "/api/v1/events?limit=0", undefined, /limit/],
  ];
  for (const [method, path, body, re] of cases) {
    const r = await raw(t, method, path, { body });
    assert.equal(r.status, 400, `${method} ${path} ${body}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error?.code, "invalid_request", `${method} ${path}`);
    assert.match(r.body.error!.message, re, `${method} ${path}`);
  }
  // Semantic checks the schema cannot express are 400s too.
  const cidr = await refusal(() => t.admin.createNetwork({ name: "n1", cidr: "10.0.0.0/8" }));
  assert.equal(cidr.status, 400);
  assert.match(cidr.message, /between \/16 and \/29/);
  const key = await refusal(() => t.admin.createKeyPair({ name: "k1", publicKey: "not a key" }));
  assert.equal(key.status, 400);
  assert.match(key.message, /OpenSSH public key/);
});

test("unknown ids answer 404 not_found, unknown API paths too", async () => {
  for (const path of [
    "/api/v1/instances/ins-aaaaaaaaaa",
    "/api/v1/volumes/vol-aaaaaaaaaa",
    "/api/v1/networks/net-aaaaaaaaaa",
    "/api/v1/projects/prj-aaaaaaaaaa",
    "/api/v1/images/img-aaaaaaaaaa",
    "/api/v1/users/usr-aaaaaaaaaa",
    "/api/v1/nothing",
  ]) {
    const r = await raw(t, "GET", path);
    assert.equal(r.status, 404, path);
    assert.equal(r.body.error?.code, "not_found");
  }
  const del = await raw(t, "DELETE", "/api/v1/instances/ins-aaaaaaaaaa");
  assert.equal(del.status, 404);
  const flavor = await refusal(() =>
    t.admin.createInstance({ name: "x", image: "debian-tiny", flavor: "jumbo", start: false }),
  );
  assert.equal(flavor.status, 404);
  assert.match(flavor.message, /no flavor jumbo/);
});

test("roles: a reader reads but may not change; a member may not create projects or admins", async () => {
  const a = await tenant(t, "roles");
  assert.deepEqual(await a.reader.listInstances(), []);
  const e1 = await refusal(() => a.reader.createVolume({ name: "v", sizeGiB: 1 }));
  assert.equal(e1.status, 403);
  assert.equal(e1.code, "forbidden");
  assert.match(e1.message, /reader/);
  const e2 = await refusal(() => a.member.createProject({ name: "mine" }));
  assert.equal(e2.status, 403);
  const e3 = await refusal(() => a.member.createUser({ name: "boss", role: "admin" }));
  assert.equal(e3.status, 403);
  const e4 = await refusal(() => a.member.setQuotas(a.project.id, { instances: 100 }));
  assert.equal(e4.status, 403);
  // A member sees only its own project.
  const projects = await a.member.listProjects();
  assert.deepEqual(
    projects.map((p) => p.name),
    ["roles"],
  );
});

test("tokens: listed by id (never the token), revoked one by one; others' tokens are not reachable", async () => {
  const a = await tenant(t, "tokens-a");
  const b = await tenant(t, "tokens-b");
  const me = (await a.member.whoami()).user;
  const meId = typeof me === "string" ? me : me.id!;
  const second = await a.member.createToken(meId);
  assert.match(second.id, /^tok-[0-9a-f]{16}$/);
  const mine = await a.member.listTokens(meId);
  assert.equal(mine.length, 2, "the admin's and this one");
  assert.ok(mine.some((x) => x.id === second.id));
  assert.ok(!JSON.stringify(mine).includes(second.token), "a listing never shows a token");
  const other = new YunClient({ server: t.url, token: second.token });
  assert.ok((await other.whoami()).role === "member", "the new token works");
  await a.member.revokeToken(meId, second.id);
  const gone = await refusal(() => other.whoami());
  assert.equal(gone.status, 401, "a revoked token answers 401");
  assert.equal((await a.member.listTokens(meId)).length, 1);
  assert.equal((await refusal(() => a.member.revokeToken(meId, second.id))).status, 404, "revoked twice");
  assert.equal((await refusal(() => a.member.revokeToken(meId, "tok-xyz"))).status, 400, "not a token id");
  // A reader manages only its own tokens; project B cannot reach A's users at all.
  const readerId = (await a.reader.whoami()).user;
  const rid = typeof readerId === "string" ? readerId : readerId.id!;
  assert.equal((await a.reader.listTokens(rid)).length, 1);
  assert.equal((await refusal(() => a.reader.listTokens(meId))).status, 403);
  assert.equal((await refusal(() => b.member.listTokens(meId))).status, 404);
  assert.equal((await refusal(() => b.member.revokeToken(meId, mine[0].id))).status, 404);
  await a.member.whoami(); // its own (first) token still works
});

test("project isolation: instances (list, read, stop, delete, console) of project A are invisible to B", async () => {
  const A = await tenant(t, "iso-a-ins");
  const B = await tenant(t, "iso-b-ins");
  const vm = await A.member.createInstance({ name: "web1", image: "debian-tiny", flavor: "tiny", start: false });
  assert.equal(vm.state, "stopped");
  assert.deepEqual(await B.member.listInstances(), []);
  assert.equal((await A.member.listInstances()).length, 1);
  for (const [what, fn] of [
    ["read", () => B.member.getInstance(vm.id)],
    ["read by name", () => B.member.getInstance("web1")],
    ["start", () => B.member.startInstance(vm.id)],
    ["stop", () => B.member.stopInstance(vm.id)],
    ["delete", () => B.member.deleteInstance(vm.id)],
    ["metrics", () => B.member.instanceMetrics(vm.id)],
    ["use as admin in ?project", () => B.member.inProject(A.project.id).listInstances()],
  ] as [string, () => Promise<unknown>][]) {
    const e = await refusal(fn);
    assert.equal(e.status, 404, what);
    assert.equal(e.code, "not_found", what);
    // The message repeats what the caller named, and nothing else about A.
    const rest = e.message.replace(vm.id, "").replace("web1", "").replace(A.project.id, "");
    assert.doesNotMatch(rest, /iso-a|prj-|ins-|web1|stopped/, `${what}: the message reveals nothing`);
  }
  // The same 404 as for an id that never existed.
  const never = await refusal(() => B.member.getInstance("ins-zzzzzzzzzz"));
  const other = await refusal(() => B.member.getInstance(vm.id));
  assert.equal(other.message.replace(vm.id, "X"), never.message.replace("ins-zzzzzzzzzz", "X"));
  // Console: B's token is refused with 404 before any WebSocket opens; A's own gets 409 (stopped).
  const consoleStatus = (token: string) =>
    new Promise<number>((resolve) => {
      const ws = new WebSocket(`${t.url.replace("http", "ws")}/api/v1/instances/${vm.id}/console`, [`bearer.${token}`]);
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => {
        ws.close();
        resolve(101);
      });
      ws.on("error", () => {});
    });
  assert.equal(await consoleStatus(B.memberToken), 404);
  assert.equal(await consoleStatus(A.readerToken), 403, "a reader may not type on a console");
  assert.equal(await consoleStatus(A.memberToken), 409);
  assert.equal((await A.member.getInstance(vm.id)).state, "stopped", "still there, untouched");
  // The admin sees it in every project.
  assert.ok((await t.admin.listInstances()).some((i) => i.id === vm.id));
  await A.member.deleteInstance(vm.id);
});

test("project isolation: volumes of A cannot be listed, read, attached, snapshotted or deleted by B", async () => {
  const A = await tenant(t, "iso-a-vol");
  const B = await tenant(t, "iso-b-vol");
  const vol = await A.member.createVolume({ name: "data", sizeGiB: 1 });
  const bvm = await B.member.createInstance({ name: "b1", image: "debian-tiny", flavor: "tiny", start: false });
  assert.deepEqual(await B.member.listVolumes(), []);
  for (const fn of [
    () => B.member.getVolume(vol.id),
    () => B.member.deleteVolume(vol.id),
    () => B.member.attachVolume(vol.id, bvm.id),
    () => B.member.detachVolume(vol.id),
    () => B.member.createSnapshot(vol.id, "steal"),
  ]) {
    const e = await refusal(fn);
    assert.equal(e.status, 404);
  }
  // Nor can A attach its volume to B's instance.
  const cross = await refusal(() => A.member.attachVolume(vol.id, bvm.id));
  assert.equal(cross.status, 404);
  assert.equal((await A.member.getVolume(vol.id)).state, "available");
  await B.member.deleteInstance(bvm.id);
  await A.member.deleteVolume(vol.id);
});

test("project isolation: networks of A cannot be listed, read, used or deleted by B", async () => {
  const A = await tenant(t, "iso-a-net");
  const B = await tenant(t, "iso-b-net");
  const net = await A.member.createNetwork({ name: "private", cidr: "10.20.0.0/24" });
  assert.equal(net.gateway, "10.20.0.1");
  assert.deepEqual(await B.member.listNetworks(), []);
  assert.equal((await refusal(() => B.member.getNetwork(net.id))).status, 404);
  assert.equal((await refusal(() => B.member.deleteNetwork(net.id))).status, 404);
  const use = await refusal(() =>
    B.member.createInstance({ name: "spy", image: "debian-tiny", flavor: "tiny", network: net.id, start: false }),
  );
  assert.equal(use.status, 404);
  // B may have a network of the same name: names are per project.
  const bnet = await B.member.createNetwork({ name: "private", cidr: "10.20.0.0/24" });
  assert.notEqual(bnet.id, net.id);
  // A's instances on its network get addresses from its CIDR.
  const i1 = await A.member.createInstance({
    name: "n1",
    image: "debian-tiny",
    flavor: "tiny",
    network: "private",
    start: false,
  });
  const i2 = await A.member.createInstance({
    name: "n2",
    image: "debian-tiny",
    flavor: "tiny",
    network: "private",
    start: false,
  });
  assert.deepEqual([i1.addresses, i2.addresses], [["10.20.0.2"], ["10.20.0.3"]]);
  assert.equal(i1.network, "private");
  const busy = await refusal(() => A.member.deleteNetwork(net.id));
  assert.equal(busy.status, 409);
  await A.member.deleteInstance(i1.id);
  await A.member.deleteInstance(i2.id);
  await A.member.deleteNetwork(net.id);
});

test("twenty concurrent creates against a quota of five instances create exactly five", async () => {
  const A = await tenant(t, "quota", { instances: 5 });
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, (_, i) =>
      A.member.createInstance({ name: `q${i}`, image: "debian-tiny", flavor: "tiny", start: false }),
    ),
  );
  const ok = results.filter((r) => r.status === "fulfilled");
  const refused = results
    .filter((r) => r.status === "rejected")
    .map((r) => (r as PromiseRejectedResult).reason as YunApiError);
  assert.equal(ok.length, 5);
  assert.equal(refused.length, 15);
  for (const e of refused) {
    assert.equal(e.status, 403);
    assert.equal(e.code, "quota_exceeded");
    assert.match(e.message, /quota instances \(5\) exceeded/);
  }
  assert.equal((await A.member.listInstances()).length, 5);
  const q = await A.member.getQuotas(A.project.id);
  assert.equal(q.used.instances, 5);
  assert.equal(q.used.diskGiB, 10);
  // Other quotas are named too.
  await t.admin.setQuotas(A.project.id, { instances: 10, memoryMiB: 700 });
  const mem = await refusal(() =>
    A.member.createInstance({ name: "big", image: "debian-tiny", flavor: "small", start: false }),
  );
  assert.equal(mem.code, "quota_exceeded");
  assert.match(mem.message, /quota memoryMiB \(700\) exceeded/);
  const disk = await refusal(async () => {
    await t.admin.setQuotas(A.project.id, { diskGiB: 12 });
    return A.member.createVolume({ name: "v", sizeGiB: 5 });
  });
  assert.match(disk.message, /quota diskGiB \(12\) exceeded/);
  for (const i of await A.member.listInstances()) await A.member.deleteInstance(i.id);
  assert.equal((await A.member.getQuotas(A.project.id)).used.instances, 0);
});

test("the state machine refuses actions that do not fit the state with 409 naming the state", async () => {
  const A = await tenant(t, "states");
  const vm = await A.member.createInstance({ name: "s1", image: "debian-tiny", flavor: "tiny", start: false });
  for (const action of ["stop", "pause", "resume", "reboot"] as const) {
    const e = await refusal(() => A.member.instanceAction(vm.id, action));
    assert.equal(e.status, 409, action);
    assert.match(e.message, /instance s1 is stopped; it cannot be/);
  }
  // Resize while stopped: to a bigger flavor; the disk grows, never shrinks.
  const r = await A.member.resizeInstance(vm.id, "small");
  assert.equal(r.flavor, "small");
  assert.equal(r.memoryMiB, 256);
  assert.equal(diskInfo(join(t.home, "cloud", "instances", vm.id, "root.qcow2")).virtualSize, 4 * 1024 ** 3);
  const shrink = await refusal(() => A.member.resizeInstance(vm.id, "tiny"));
  assert.equal(shrink.status, 409);
  assert.match(shrink.message, /disks only grow/);
  const dup = await refusal(() =>
    A.member.createInstance({ name: "s1", image: "debian-tiny", flavor: "tiny", start: false }),
  );
  assert.equal(dup.status, 409);
  await A.member.deleteInstance("s1");
  assert.equal(existsSync(join(t.home, "cloud", "instances", vm.id)), false, "its directory is gone");
});

test("volumes: qcow2 files, attach to a stopped instance, copy-on-write snapshots and clones", async () => {
  const A = await tenant(t, "vols");
  const vm = await A.member.createInstance({ name: "v1", image: "debian-tiny", flavor: "tiny", start: false });
  const vol = await A.member.createVolume({ name: "data", sizeGiB: 2 });
  assert.equal(vol.state, "available");
  const path = join(t.home, "cloud", "volumes", `${vol.id}.qcow2`);
  assert.equal(diskInfo(path).format, "qcow2");
  const att = await A.member.attachVolume(vol.id, "v1");
  assert.equal(att.state, "in-use");
  assert.deepEqual((await A.member.getInstance(vm.id)).volumes, [vol.id]);
  const busy = await refusal(() => A.member.deleteVolume(vol.id));
  assert.equal(busy.status, 409);
  const snap = await A.member.createSnapshot(vol.id, "snap1");
  assert.equal(snap.volume, vol.id);
  // The volume now continues as an overlay on the snapshot.
  assert.equal(diskInfo(path).backingChain[0].path, join(t.home, "cloud", "snapshots", `${snap.id}.qcow2`));
  const clone = await A.member.createVolume({ name: "clone", snapshot: "snap1" });
  assert.equal(clone.sizeGiB, 2);
  assert.equal(clone.snapshot, snap.id);
  const inUse = await refusal(() => A.member.deleteSnapshot(snap.id));
  assert.equal(inUse.status, 409);
  assert.match(inUse.message, /base of volume/);
  await A.member.detachVolume(vol.id);
  await A.member.deleteVolume(clone.id);
  await A.member.deleteVolume(vol.id);
  await A.member.deleteSnapshot(snap.id);
  assert.deepEqual(await A.member.listSnapshots(), []);
  await A.member.deleteInstance(vm.id);
});

test("images: raw and qcow2 uploads are checked; a qcow2 with a backing file is refused", async () => {
  const A = await tenant(t, "imgs");
  const rawImg = await A.member.uploadImage("blank", "raw", new Uint8Array(1024 * 1024));
  assert.equal(rawImg.source, "upload");
  assert.equal(rawImg.sizeBytes, 1024 * 1024);
  const notQcow = await refusal(() => A.member.uploadImage("bad", "qcow2", new Uint8Array(4096)));
  assert.equal(notQcow.status, 400);
  assert.match(notQcow.message, /not in qcow2 format/);
  const odd = await refusal(() => A.member.uploadImage("odd", "raw", new Uint8Array(1000)));
  assert.match(odd.message, /multiple of 512/);
  // A qcow2 that names a backing file on the server's disk is refused (it could read host files).
  const { createQcow2 } = await import("../../src/storage/image.js");
  const { readFileSync, mkdtempSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(join(tmpdir(), "yun-img-"));
  createQcow2(join(dir, "o.qcow2"), { backing: { path: "/etc/hostname", format: "raw" }, size: 1 << 20 });
  const backed = await refusal(() => A.member.uploadImage("sneaky", "qcow2", readFileSync(join(dir, "o.qcow2"))));
  assert.equal(backed.status, 400);
  assert.match(backed.message, /backing file/);
  createQcow2(join(dir, "ok.qcow2"), { size: 1 << 30 });
  const q = await A.member.uploadImage("empty", "qcow2", readFileSync(join(dir, "ok.qcow2")));
  assert.equal(q.format, "qcow2");
  // Uploaded images are the project's own.
  const B = await tenant(t, "imgs-b");
  assert.ok(!(await B.member.listImages()).some((i) => i.id === q.id));
  assert.equal((await refusal(() => B.member.getImage(q.id))).status, 404);
  // An instance of it boots the Debian kernel with the image as its root disk (copy-on-write).
  const vm = await A.member.createInstance({ name: "fromup", image: "empty", flavor: "tiny", start: false });
  const root = diskInfo(join(t.home, "cloud", "instances", vm.id, "root.qcow2"));
  assert.equal(root.backingChain[0].path, join(t.home, "cloud", "images", `${q.id}.qcow2`));
  const inUse = await refusal(() => A.member.deleteImage(q.id));
  assert.equal(inUse.status, 409);
  await A.member.deleteInstance(vm.id);
  await A.member.deleteImage(q.id);
  await A.member.deleteImage(rawImg.id);
});

test("the debian-tiny image from yun image pull is registered as a public image", { skip: !HAVE_DEBIAN }, async () => {
  const A = await tenant(t, "pub");
  const imgs = await A.member.listImages();
  const deb = imgs.find((i) => i.name === "debian-tiny");
  assert.ok(deb);
  assert.equal(deb.source, "debian");
  assert.equal(deb.project, null);
  const e = await refusal(() => A.member.deleteImage(deb.id));
  assert.equal(e.status, 403);
});

test("the OpenAPI document describes the API from the same schemas", async () => {
  const res = await fetch(`${t.url}/api/openapi.json`);
  assert.equal(res.status, 200);
  const doc = (await res.json()) as { openapi: string; paths: Record<string, Record<string, unknown>> };
  assert.equal(doc.openapi, "3.1.0");
  for (const p of [
    "/api/v1/instances",
    "/api/v1/instances/{id}/actions",
    "/api/v1/volumes/{id}/attach",
    "/api/v1/usage",
  ])
    assert.ok(doc.paths[p], p);
  const create = doc.paths["/api/v1/instances"].post as {
    requestBody: { content: { "application/json": { schema: { required: string[] } } } };
  };
  assert.deepEqual(create.requestBody.content["application/json"].schema.required.sort(), ["flavor", "image", "name"]);
});

test("the audit log records who did what to which resource, refusals included", async () => {
  const A = await tenant(t, "audit");
  const net = await A.member.createNetwork({ name: "n", cidr: "10.9.0.0/24" });
  await refusal(() => A.reader.deleteNetwork(net.id));
  await A.member.deleteNetwork(net.id);
  const events = await A.member.events({ limit: 10 });
  const mine = events.filter((e) => e.resource === net.id);
  const memberId = (await A.member.whoami()).user.id;
  const readerId = (await A.reader.whoami()).user.id;
  assert.deepEqual(
    mine.map((e) => [e.user, e.userId, e.action, e.outcome]),
    [
      ["audit-member", memberId, "network.delete", "ok"],
      ["audit-reader", readerId, "network.delete", "forbidden"],
      ["audit-member", memberId, "network.create", "ok"],
    ],
  );
  assert.ok(
    events.every((e) => e.project === A.project.id),
    "a project sees only its own events",
  );
  const newer = await A.member.events({ after: mine[0].id });
  assert.equal(newer.length, 0);
  // What an admin does to the project's resources shows in the project's log too.
  const vol = await t.admin.inProject(A.project.id).createVolume({ name: "adminvol", sizeGiB: 1 });
  await t.admin.deleteVolume(vol.id);
  const adminEvents = (await A.member.events({ after: mine[0].id })).map((e) => [e.user, e.action, e.resource]);
  assert.deepEqual(adminEvents, [
    ["admin", "volume.delete", vol.id],
    ["admin", "volume.create", vol.id],
  ]);
});

test("key pairs and user data reach the instance on a NoCloud-style seed disk (ext4, label cidata)", async () => {
  const A = await tenant(t, "seed");
  const key = await A.member.createKeyPair({ name: "laptop", publicKey: KEY });
  assert.match(key.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
  const vm = await A.member.createInstance({
    name: "s1",
    image: "debian-tiny",
    flavor: "tiny",
    keyPair: "laptop",
    userData: "#!/bin/sh\necho hello from user-data\n",
    start: false,
  });
  assert.equal(vm.keyPair, "laptop");
  const seed = join(t.home, "cloud", "instances", vm.id, "seed.ext4");
  assert.equal(await debugfs(seed, "cat /user-data"), "#!/bin/sh\necho hello from user-data\n");
  assert.equal((await debugfs(seed, "cat /authorized_keys")).trim(), KEY);
  assert.match(await debugfs(seed, "cat /meta-data"), new RegExp(`instance-id: ${vm.id}`));
  assert.match(await debugfs(seed, "stats"), /Filesystem volume name:\s+cidata/);
  await A.member.deleteInstance(vm.id);
});

test("usage exports as JSON and CSV; the schema is versioned in schema_migrations", async () => {
  const A = await tenant(t, "usage");
  const vm = await A.member.createInstance({ name: "u1", image: "debian-tiny", flavor: "tiny", start: false });
  const u = await A.member.usage();
  assert.equal(u.project, A.project.id);
  assert.equal(u.vcpuSeconds, 0, "a stopped instance uses no vCPU time");
  assert.ok(u.instances.some((i) => i.id === vm.id));
  const csv = await A.member.usageCsv();
  const lines = csv.trim().split("\n");
  assert.equal(lines[0], "project,resource,name,from,to,vcpu_seconds,memory_gib_hours,disk_gib_hours");
  assert.ok(lines.some((l) => l.includes(vm.id) && l.includes(",u1,")));
  assert.match(lines[lines.length - 1], /,total,/);
  const bad = await refusal(() => A.member.usage({ from: "yesterday" }));
  assert.equal(bad.status, 400);
  const { openDatabase, SCHEMA_VERSION } = await import("../../src/cloud/db.js");
  const versions = t.cloud.db.prepare("SELECT version FROM schema_migrations ORDER BY version").all();
  assert.deepEqual(
    versions,
    Array.from({ length: SCHEMA_VERSION }, (_, i) => ({ version: i + 1 })),
  );
  assert.ok(SCHEMA_VERSION >= 3, "the actor ids' and the operation journal's migrations");
  // A database from a newer yun is refused with a clear message, untouched.
  const { mkdtempSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const path = join(mkdtempSync(join(tmpdir(), "yun-db-")), "yun.db");
  const db = openDatabase(path);
  db.prepare("INSERT INTO schema_migrations VALUES (99, 'later')").run();
  db.close();
  assert.throws(() => openDatabase(path), /schema version 99, newer than this yun/);
  await A.member.deleteInstance(vm.id);
});

test("the dashboard's vendor files are served; paths cannot climb out of their directories", async () => {
  const res = await fetch(`${t.url}/vendor/xterm/lib/xterm.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /javascript/);
  assert.equal((await fetch(`${t.url}/vendor/uplot/uPlot.min.css`)).status, 200);
  const { request } = await import("node:http");
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(`${t.url}/vendor/xterm/lib/..%2f..%2f..%2f..%2fpackage.json`, (r) => {
      r.resume();
      resolve(r.statusCode ?? 0);
    });
    req.on("error", reject);
    req.end();
  });
  assert.equal(status, 404);
});

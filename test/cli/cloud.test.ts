// The cloud CLI (`yun instance|volume|network|flavor|keypair|project|user|image|usage|events`):
// formatting and argument units, then the commands against a real API server (in this process,
// state in a temporary YUN_HOME; instances are created stopped, so nothing boots here).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CLOUD_HELP,
  cloudCommand,
  formatRecord,
  formatTable,
  io,
  isCloudImageCommand,
  parseTime,
  resolveServer,
  resolveToken,
} from "../../src/cli/cloud.js";
import { main } from "../../src/cli/main.js";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { listen, type RunningServer } from "../../src/cloud/server.js";
import { YunClient } from "../../src/cloud/client.js";

/** Runs fn with the CLI's output captured (through cloud.ts's io, so the test reporter's own
 *  writes to stdout are not swallowed). */
async function capture(fn: () => Promise<number>): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const saved = { ...io };
  io.out = (s) => void (out += typeof s === "string" ? s : Buffer.from(s).toString("utf8"));
  io.err = (s) => void (err += s);
  try {
    return { code: await fn(), out, err };
  } finally {
    Object.assign(io, saved);
  }
}

// ------------------------------------------------------------------------------------- units

test("tables align columns under their headers; records list fields", () => {
  const t = formatTable(
    ["ID", "NAME", "STATE"],
    [
      ["ins-1", "web1", "running"],
      ["ins-22", "w", null],
    ],
  );
  assert.equal(t, "ID      NAME  STATE\nins-1   web1  running\nins-22  w\n");
  assert.equal(formatTable(["A", "B"], []), "A  B\n");
  const r = formatRecord({ id: "vol-1", sizeGiB: 4, instance: null, volumes: ["a", "b"], quotas: { x: 1 } });
  assert.equal(r, 'id        vol-1\nsizeGiB   4\ninstance  -\nvolumes   a, b\nquotas    {"x":1}\n');
});

test("times: ISO or an age", () => {
  const now = Date.parse("2026-01-02T00:00:00Z");
  assert.equal(parseTime("from", "2h", now), "2026-01-01T22:00:00.000Z");
  assert.equal(parseTime("from", "1d", now), "2026-01-01T00:00:00.000Z");
  assert.equal(parseTime("to", "2026-01-01T10:00:00Z", now), "2026-01-01T10:00:00.000Z");
  assert.equal(parseTime("to", undefined, now), undefined);
  assert.throws(
    () => parseTime("from", "yesterday", now),
    /--from must be an ISO time or an age like 2h, got "yesterday"/,
  );
});

test("server and token defaults; image commands split between local and cloud", () => {
  const saved = { s: process.env.YUN_SERVER, t: process.env.YUN_TOKEN, h: process.env.YUN_HOME };
  const home = mkdtempSync(join(tmpdir(), "yun-cli-"));
  try {
    delete process.env.YUN_SERVER;
    delete process.env.YUN_TOKEN;
    process.env.YUN_HOME = home;
    assert.equal(resolveServer(undefined), "http://127.0.0.1:8470");
    process.env.YUN_SERVER = "http://10.0.0.1:9000";
    assert.equal(resolveServer(undefined), "http://10.0.0.1:9000");
    assert.equal(resolveServer("http://h:1"), "http://h:1");
    assert.throws(() => resolveServer("h:1"), /--server must be an http:\/\/ or https:\/\/ URL/);
    assert.throws(() => resolveToken(undefined), /no API token: pass --token, set YUN_TOKEN, or start yun serve once/);
    process.env.YUN_TOKEN = "yun_env";
    assert.equal(resolveToken(undefined), "yun_env");
    assert.equal(resolveToken("yun_flag"), "yun_flag");
    delete process.env.YUN_TOKEN;
    writeFileSync(join(home, "admin.token"), "x"); // not the right place: ignored
    assert.throws(() => resolveToken(undefined), /no API token/);
  } finally {
    for (const [k, v] of [
      ["YUN_SERVER", saved.s],
      ["YUN_TOKEN", saved.t],
      ["YUN_HOME", saved.h],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(home, { recursive: true, force: true });
  }
  assert.equal(isCloudImageCommand(["upload", "f.qcow2"]), true);
  assert.equal(isCloudImageCommand(["list", "--cloud"]), true);
  assert.equal(isCloudImageCommand(["delete", "x"]), true);
  assert.equal(isCloudImageCommand(["list"]), false);
  assert.equal(isCloudImageCommand(["pull", "debian"]), false);
});

test("bad flags and arguments exit 2 with the command's usage; no server needed", async () => {
  const flag = await capture(() => cloudCommand("instance", ["create", "--bogus"]));
  assert.equal(flag.code, 2);
  assert.match(
    flag.err,
    /^yun instance: Unknown option '--bogus'\nusage: yun instance create \[NAME\] \[--image IMAGE\]/,
  );

  const both = await capture(() => cloudCommand("instance", ["create", "web1", "--key", "k", "--key-pair", "k"]));
  assert.equal(both.code, 2);
  assert.match(both.err, /--key and --key-pair are the same flag/);

  const port = await capture(() => cloudCommand("forward", ["add", "web1", "99999"]));
  assert.equal(port.code, 2);
  assert.match(port.err, /GUESTPORT must be a port number 1-65535/);

  const extra = await capture(() => cloudCommand("instance", ["list", "x"]));
  assert.equal(extra.code, 2);
  assert.match(extra.err, /unexpected argument "x"/);

  const arity = await capture(() => cloudCommand("volume", ["attach", "v1"]));
  assert.equal(arity.code, 2);
  assert.match(arity.err, /missing INSTANCE/);

  const sub = await capture(() => cloudCommand("volume", ["frob"]));
  assert.equal(sub.code, 2);
  assert.match(sub.err, /unknown command "frob"; expected one of create, list/);

  const num = await capture(() => cloudCommand("volume", ["create", "v", "--size", "big"]));
  assert.equal(num.code, 2);
  assert.match(num.err, /--size must be a whole number ≥ 1, got "big"/);

  const role = await capture(() => cloudCommand("user", ["create", "u", "--role", "boss"]));
  assert.equal(role.code, 2);
  assert.match(role.err, /--role must be admin, member or reader, got "boss"/);

  const none = await capture(() => cloudCommand("instance", []));
  assert.equal(none.code, 2);
  assert.match(none.err, /Usage: yun instance <command>/);

  const help = await capture(() => cloudCommand("instance", ["--help"]));
  assert.equal(help.code, 0);
  for (const s of ["create", "list", "show", "start", "stop", "reboot", "pause", "resume", "resize", "delete"]) {
    assert.match(help.out, new RegExp(`^  ${s}\\b`, "m"), `instance help lists ${s}`);
  }

  for (const n of [
    "instance",
    "volume",
    "network",
    "flavor",
    "keypair",
    "project",
    "user",
    "usage",
    "events",
    "console",
  ]) {
    assert.match(CLOUD_HELP, new RegExp(`^  ${n}\\b`, "m"), `yun help lists ${n}`);
  }

  const unreachable = await capture(() =>
    cloudCommand("flavor", ["list", "--server", "http://127.0.0.1:1", "--token", "x"]),
  );
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.err, /^yun: cannot reach the Yun server at http:\/\/127\.0\.0\.1:1.*is yun serve running\?/);
  assert.equal(unreachable.err.trim().split("\n").length, 1);
});

// ------------------------------------------------------------------------- against the API

let home: string;
let cloud: Cloud;
let server: RunningServer;
let base: string;
const saved = process.env.YUN_HOME;

before(async () => {
  home = mkdtempSync(join(tmpdir(), "yun-cli-cloud-"));
  // The cloud registers the pulled Debian image from $YUN_HOME/images.
  const images = join(process.env.YUN_HOME ?? join(process.env.HOME ?? "/root", ".local/share/yun"), "images");
  if (existsSync(images)) symlinkSync(images, join(home, "images"));
  process.env.YUN_HOME = home;
  cloud = new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0 });
  assert.ok(
    (await cloud.bootstrap()).adminToken,
    "a new cloud makes an admin token (the CLI reads it from admin.token)",
  );
  server = await listen(cloud, "127.0.0.1", 0, { staticDir: join(home, "no-dashboard") });
  base = `http://127.0.0.1:${server.port}`;
});

after(async () => {
  await server?.close();
  cloud?.close();
  if (saved === undefined) delete process.env.YUN_HOME;
  else process.env.YUN_HOME = saved;
  rmSync(home, { recursive: true, force: true });
});

function readAdminToken(): string {
  return readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
}

/** `yun ARGS` in this process against the test server (the token defaults to admin.token). */
const yun = (...args: string[]) => capture(() => main([...args, "--server", base]));

test("instances: create (stopped), list, show by name, JSON, refusals as one line", async () => {
  const created = await yun(
    "instance",
    "create",
    "--image",
    "debian-tiny",
    "--flavor",
    "tiny",
    "--name",
    "web0",
    "--stopped",
  );
  assert.equal(created.code, 0, created.err);
  assert.match(created.out, /^name +web0$/m);
  assert.match(created.out, /^state +stopped$/m);

  const listed = await yun("instance", "list");
  assert.equal(listed.code, 0);
  const [header, row] = listed.out.trimEnd().split("\n");
  assert.match(header!, /^ID +NAME +STATE +IMAGE +FLAVOR +VCPUS +MEMORY +ADDRESSES$/);
  assert.match(row!, /^ins-\S+ +web0 +stopped +debian-tiny +tiny +1 +128 MiB/);

  const js = await yun("instance", "list", "--json");
  const parsed = JSON.parse(js.out) as { items: { name: string; state: string; id: string }[] };
  assert.deepEqual(
    parsed.items.map((i) => [i.name, i.state]),
    [["web0", "stopped"]],
  );

  const byId = await yun("instance", "show", parsed.items[0]!.id, "--json");
  assert.equal((JSON.parse(byId.out) as { name: string }).name, "web0");

  const pause = await yun("instance", "pause", "web0");
  assert.equal(pause.code, 1);
  assert.equal(pause.err, "yun: instance web0 is stopped; it cannot be paused\n");

  const dup = await yun("instance", "create", "web0", "--image", "debian-tiny", "--flavor", "tiny", "--stopped");
  assert.equal(dup.code, 1);
  assert.equal(dup.err.split("\n").length, 2, "one line");
  assert.match(dup.err, /web0/);

  const badFlavor = await yun("instance", "create", "w9", "--image", "debian-tiny", "--flavor", "huge", "--stopped");
  assert.equal(badFlavor.code, 1);
  assert.match(badFlavor.err, /^yun: .*huge/);

  const missing = await yun("instance", "show", "nope");
  assert.equal(missing.code, 1);
  assert.match(missing.err, /^yun: .*nope/);

  const console = await yun("console", "web0");
  assert.equal(console.code, 1);
  assert.equal(console.err, "yun: instance web0 is stopped; its console is there while it runs\n");

  const resize = await yun("instance", "resize", "web0", "--flavor", "small");
  assert.equal(resize.code, 0, resize.err);
  assert.match(resize.out, /^flavor +small$/m);
  assert.match(resize.out, /^memoryMiB +256$/m);
});

test("volumes, snapshots, networks, key pairs, flavors, cloud images", async () => {
  let r = await yun("volume", "create", "data", "--size", "1");
  assert.equal(r.code, 0, r.err);
  r = await yun("volume", "attach", "data", "web0");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, "data: attached to web0\n");
  r = await yun("volume", "list");
  assert.match(r.out, /^vol-\S+ +data +1 GiB +in-use +ins-/m);
  r = await yun("volume", "snapshot", "data", "--name", "snap1");
  assert.equal(r.code, 0, r.err);
  r = await yun("volume", "snapshots");
  assert.match(r.out, /^snp-\S+ +snap1 +vol-/m);
  r = await yun("volume", "detach", "data");
  assert.equal(r.out, "data: available\n");
  r = await yun("volume", "create", "clone", "--snapshot", "snap1");
  assert.equal(r.code, 0, r.err);
  r = await yun("volume", "delete", "clone");
  assert.equal(r.out, "clone: deleted\n");

  r = await yun("network", "create", "backend", "--cidr", "10.7.0.0/24");
  assert.equal(r.code, 0, r.err);
  r = await yun("network", "list");
  assert.match(r.out, /^net-\S+ +backend +10\.7\.0\.0\/24 +10\.7\.0\.1$/m);
  r = await yun("network", "create", "bad", "--cidr", "nonsense");
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: .*cidr/i);

  const keyFile = join(home, "id.pub");
  writeFileSync(keyFile, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhJz0NElw3W3x2l8m7kW0E4d7tM2eWc9H8bR6e4Y1pF me@host\n");
  r = await yun("keypair", "add", "me", "--public-key", keyFile);
  assert.equal(r.code, 0, r.err);
  r = await yun("keypair", "list");
  assert.match(r.out, /^key-\S+ +me +\S+/m);
  r = await yun("keypair", "add", "x", "--public-key", join(home, "missing.pub"));
  assert.equal(r.code, 2);
  assert.match(r.err, /cannot read .*missing\.pub: ENOENT/);

  r = await yun("flavor", "create", "big", "--vcpus", "2", "--memory", "1024", "--disk", "16");
  assert.equal(r.code, 0, r.err);
  r = await yun("flavor", "list");
  assert.match(r.out, /^flv-\S+ +big +2 +1024 MiB +16 GiB$/m);
  assert.match(r.out, /^flv-\S+ +small +1 +256 MiB +4 GiB$/m);

  r = await yun("image", "list", "--cloud");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^img-\S+ +debian-tiny +\S+ +[\d.]+ \S+ +debian +available$/m);

  // Upload (streamed; the format is read from the file's header), show, delete.
  const raw = join(home, "disk.img");
  writeFileSync(raw, Buffer.alloc(1 << 20, 0xab));
  r = await yun("image", "upload", raw, "--name", "blob");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, "blob: uploaded 1.0 MiB (raw), available\n");
  r = await yun("image", "show", "blob", "--json");
  assert.equal((JSON.parse(r.out) as { sizeBytes: number }).sizeBytes, 1 << 20);
  r = await yun("image", "upload", join(home, "nothing.img"), "--name", "x");
  assert.equal(r.code, 2);
  assert.match(r.err, /cannot read .*nothing\.img: ENOENT/);
  r = await yun("image", "delete", "blob");
  assert.equal(r.out, "blob: deleted\n");
  r = await yun("image", "list", "--cloud");
  assert.doesNotMatch(r.out, /blob/);
});

test("projects, quotas, users, tokens and tenancy", async () => {
  let r = await yun("project", "create", "team-b", "--instances", "1");
  assert.equal(r.code, 0, r.err);
  r = await yun("project", "quota", "team-b");
  assert.match(r.out, /^instances +0 +1$/m);
  r = await yun("project", "quota", "team-b", "--vcpus", "4");
  assert.match(r.out, /^vcpus +0 +4$/m);
  r = await yun("project", "list");
  assert.match(r.out, /^prj-\S+ +team-b +1 +4 /m);

  r = await yun("user", "create", "bob", "--role", "member", "--in", "team-b");
  assert.equal(r.code, 0, r.err);
  r = await yun("user", "token", "bob");
  assert.equal(r.code, 0, r.err);
  const bob = r.out.trim();
  assert.match(bob, /^yun_[a-z2-7]{40}$/);
  r = await yun("user", "list");
  assert.match(r.out, /^usr-\S+ +bob +team-b +member/m);

  r = await yun("user", "create", "rita", "--role", "reader");
  r = await yun("user", "token", "rita");
  const rita = r.out.trim();

  // bob (project team-b) does not see admin's web0, and his quota allows one instance.
  r = await yun("instance", "list", "--token", bob);
  assert.equal(r.out, "ID  NAME  STATE  IMAGE  FLAVOR  VCPUS  MEMORY  ADDRESSES\n");
  r = await yun("instance", "show", "web0", "--token", bob);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: .*web0/);
  r = await yun("instance", "create", "b1", "--image", "debian-tiny", "--flavor", "tiny", "--stopped", "--token", bob);
  assert.equal(r.code, 0, r.err);
  r = await yun("instance", "create", "b2", "--image", "debian-tiny", "--flavor", "tiny", "--stopped", "--token", bob);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: quota instances \(1\) exceeded[^\n]*\n$/);
  r = await yun("project", "create", "mine", "--token", bob);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: .*admin/);

  // rita reads but may not change.
  r = await yun("instance", "list", "--token", rita);
  assert.match(r.out, /web0/);
  r = await yun("instance", "delete", "web0", "--token", rita);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: .*reader/);

  // The admin acts in team-b with --project.
  r = await yun("instance", "list", "--project", "team-b");
  assert.match(r.out, / b1 /);
  assert.doesNotMatch(r.out, / web0 /);
  r = await yun("instance", "delete", "b1", "--project", "team-b");
  assert.equal(r.out, "b1: deleted\n");

  const c = new YunClient({ server: base, token: bob });
  assert.equal((await c.whoami()).role, "member");

  // Tokens are their owner's (or an admin's): bob may issue his own, not rita's or another's.
  r = await yun("user", "token", "bob", "--token", bob);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^yun_[a-z2-7]{40}\n$/);
  r = await yun("user", "create", "bob2", "--role", "member", "--in", "team-b");
  r = await yun("user", "token", "bob2", "--token", bob);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: only an admin may issue tokens for another user \(bob2\)/);
  r = await yun("user", "create", "carl", "--role", "reader", "--token", bob);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: only an admin may create users/);

  // Two users named alice in two projects: names alone are ambiguous to the admin; --project or
  // the id picks one, and the audit log tells them apart by id.
  await yun("user", "create", "alice", "--role", "member");
  await yun("user", "create", "alice", "--role", "member", "--in", "team-b");
  r = await yun("user", "token", "alice");
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: 2 users are named alice \(in different projects\); give the ID or --project/);
  r = await yun("user", "token", "alice", "--project", "team-b");
  assert.equal(r.code, 0, r.err);
  const aliceB = new YunClient({ server: base, token: r.out.trim() });
  const me = await aliceB.whoami();
  assert.equal(me.project.name, "team-b");
  await aliceB.createNetwork({ name: "alices", cidr: "10.42.0.0/24" });
  r = await yun("events", "--project", "team-b", "--limit", "5");
  assert.match(r.out, new RegExp(` alice +${me.user.id} +team-b +network\\.create +net-\\S+ +ok$`, "m"));
});

test("user create --with-token: the new user's token in the same step, printed once, audited; admins only", async () => {
  let r = await yun("user", "create", "dana", "--role", "member", "--in", "team-b", "--with-token");
  assert.equal(r.code, 0, r.err);
  const token = /^token +(\S+)$/m.exec(r.out)?.[1];
  assert.match(token ?? "", /^yun_[a-z2-7]{40}$/, r.out);
  const tokenId = /^tokenId +(tok-[0-9a-f]{16})$/m.exec(r.out)?.[1];
  assert.ok(tokenId, r.out);
  assert.match(r.out, /^role +member$/m);
  assert.match(r.err, /shown only this once; dana uses it as --token or YUN_TOKEN/);
  // The token works at once, as dana in team-b, and is the one her token list shows.
  const dana = new YunClient({ server: base, token: token! });
  const who = await dana.whoami();
  assert.deepEqual([who.user.name, who.project.name, who.role], ["dana", "team-b", "member"]);
  assert.deepEqual(
    (await dana.listTokens(who.user.id)).map((t) => t.id),
    [tokenId],
  );
  // The audit log says a token was issued with the user.
  r = await yun("events", "--project", "team-b", "--limit", "20");
  assert.match(r.out, new RegExp(` user\\.create\\+token +${who.user.id} +ok$`, "m"));

  // JSON carries the token too; without the flag there is none.
  r = await yun("user", "create", "erin", "--role", "reader", "--with-token", "--json");
  assert.equal(r.code, 0, r.err);
  const erin = JSON.parse(r.out) as { name: string; token?: string; tokenId?: string };
  assert.match(erin.token ?? "", /^yun_/);
  r = await yun("user", "create", "fred", "--role", "reader", "--json");
  assert.equal((JSON.parse(r.out) as { token?: string }).token, undefined);
  assert.equal((await dana.listTokens(who.user.id)).length, 1);

  // Only admins create users, with or without a token; a refused create leaves no user or token.
  r = await yun("user", "create", "gus", "--role", "member", "--with-token", "--token", token!);
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: only an admin may create users/);
  r = await yun("user", "create", "dana", "--role", "member", "--in", "team-b", "--with-token");
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun: a user named dana already exists in this project/);
  assert.equal((await dana.listTokens(who.user.id)).length, 1, "the refused duplicate issued no token");
  assert.equal(
    (await new YunClient({ server: base, token: readAdminToken() }).listUsers()).filter((u) => u.name === "gus").length,
    0,
  );
  // The API refuses a withToken that is not a boolean, naming the field.
  const res = await fetch(`${base}/api/v1/users`, {
    method: "POST",
    headers: { authorization: `Bearer ${readAdminToken()}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "hal", role: "member", withToken: "yes" }),
  });
  assert.equal(res.status, 400);
  assert.match(((await res.json()) as { error: { message: string } }).error.message, /withToken/);
});

test("usage, events and the CSV export", async () => {
  let r = await yun("usage");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^RESOURCE +VCPU-SECONDS +MEMORY-GIB-HOURS +DISK-GIB-HOURS$/m);
  assert.match(r.out, /^web0 +[\d.]+ +[\d.]+ +[\d.]+$/m);
  assert.match(r.out, /^TOTAL +[\d.]+/m);
  assert.match(r.out, /^project admin, \d{4}-/);
  r = await yun("usage", "--csv", "--from", "1h");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out.split("\n")[0]!, /vcpu_seconds/);
  r = await yun("usage", "--from", "later");
  assert.equal(r.code, 2);

  r = await yun("events", "--limit", "50");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^ID +AT +USER +USER-ID +PROJECT +ACTION +RESOURCE +OUTCOME$/m);
  // The actor by name and by id (names are unique only within a project).
  const adminId = cloud.db.prepare("SELECT id FROM users WHERE name = 'admin'").get() as { id: string };
  assert.match(r.out, new RegExp(`admin +${adminId.id} +admin +instance\\.create +\\S+ +ok$`, "m"));
  assert.match(r.out, /instance\.pause +\S+ +conflict$/m);
  r = await yun("events", "--json", "--limit", "1");
  assert.equal((JSON.parse(r.out) as { items: unknown[] }).items.length, 1);
});

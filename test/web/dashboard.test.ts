// The acceptance test of the cloud: `yun serve` (a child process, temporary YUN_HOME), an instance
// created with the CLI that boots Debian, and the dashboard in headless Chromium: log in, see the
// instance running, open its console, type a command and read its output from xterm.js; its
// graphical console (noVNC) shows the framebuffer and types into the guest. Then the roles (a reader has no create/stop/delete), tenancy (project B does not see A's instance),
// usage charts, quotas, and stop/delete from the dashboard. One VM serves every assertion.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, symlinkSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page } from "playwright-core";
import { CHROMIUM, decodePng, launchBrowser } from "./browser.js";
import { ROOT, YUN } from "../e2e/harness.js";
import { YunClient } from "../../src/cloud/client.js";
import { RfbTestClient } from "../support/rfb.js";

const BOOT_MS = 180_000;
const PROMPT = /# $/;

let home: string;
let serve: ChildProcessWithoutNullStreams;
let serveLog = "";
let base: string;
let adminToken: string;
let admin: YunClient;
let context: BrowserContext;
let web1Id: string;
let profile: string | undefined;

/** Runs `yun ARGS` against the test server; answers its exit code and output. */
function yun(args: string[], input?: string): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const env: NodeJS.ProcessEnv = { ...process.env, YUN_HOME: home, YUN_SERVER: base };
    delete env.YUN_TOKEN; // the admin token comes from $YUN_HOME/cloud/admin.token
    const child = spawn(process.execPath, [YUN, ...args], { cwd: ROOT, env });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (err += d.toString("utf8")));
    child.stdin.end(input ?? "");
    child.on("close", (code) => resolve({ code: code ?? -1, out, err }));
  });
}

/** The lines of the open console's xterm.js buffer (what the user sees, scrollback included). */
function terminalLines(page: Page): Promise<string[]> {
  // A string: this runs in the page (DOM types are not part of the tests' compilation).
  return page.evaluate(`(() => {
    const t = window.yunTerminal;
    if (!t) return [];
    const b = t.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines;
  })()`);
}

async function waitFor<T>(what: string, f: () => Promise<T | undefined | false>, ms: number, page?: Page): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) {
      const screen = page ? `\n--- terminal ---\n${(await terminalLines(page)).join("\n").trimEnd().slice(-2000)}` : "";
      throw new Error(
        `timed out after ${ms / 1000} s waiting for ${what}${screen}\n--- yun serve ---\n${serveLog.slice(-2000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A fresh tab (its own sessionStorage) logged in with `token`. */
async function login(token: string): Promise<Page> {
  const page = await context.newPage();
  page.on("pageerror", (e) => assert.fail(`dashboard error: ${e.message}`));
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#whoami");
  return page;
}

before(async () => {
  assert.ok(
    existsSync(join(ROOT, "dist/src/web/static/index.html")),
    "the dashboard is not built: run npm run build (it compiles src/web with scripts/build-web.js)",
  );
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
  home = mkdtempSync(join(tmpdir(), "yun-web-"));
  // The cloud takes the Debian image from $YUN_HOME/images: share the pulled one.
  const images = join(process.env.YUN_HOME ?? join(process.env.HOME ?? "/root", ".local/share/yun"), "images");
  assert.ok(
    existsSync(join(images, "debian-tiny")),
    `no Debian image in ${images}: run yun image pull debian-tiny first`,
  );
  symlinkSync(images, join(home, "images"));

  serve = spawn(process.execPath, [YUN, "serve", "--port", "0"], {
    cwd: ROOT,
    env: { ...process.env, YUN_HOME: home },
  });
  serve.stdout.on("data", (d: Buffer) => (serveLog += d.toString("utf8")));
  serve.stderr.on("data", (d: Buffer) => (serveLog += d.toString("utf8")));
  const port = await waitFor(
    "yun serve to listen",
    async () => {
      if (serve.exitCode !== null) throw new Error(`yun serve exited ${serve.exitCode}:\n${serveLog}`);
      return /listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(serveLog)?.[1];
    },
    20_000,
  );
  base = `http://127.0.0.1:${port}`;
  adminToken = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
  admin = new YunClient({ server: base, token: adminToken });

  ({ context, profile } = await launchBrowser());

  // The instance every test uses, created the way a user would.
  const r = await yun([
    "instance",
    "create",
    "--image",
    "debian-tiny",
    "--flavor",
    "small",
    "--display",
    "vnc",
    "--name",
    "web1",
  ]);
  assert.equal(r.code, 0, `yun instance create failed: ${r.err}\n${serveLog}`);
  assert.match(r.out, /^state +running$/m);
  web1Id = /^id +(ins-\S+)$/m.exec(r.out)![1]!;
});

after(async () => {
  // Stopping yun serve leaves VMs running: delete them first.
  try {
    for (const i of await admin.listInstances()) await admin.deleteInstance(i.id).catch(() => {});
  } catch {}
  await context?.close().catch(() => {});
  if (serve && serve.exitCode === null) {
    serve.kill("SIGTERM");
    await new Promise((r) => serve.once("close", r));
  }
  if (home) rmSync(home, { recursive: true, force: true });
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test(
  "the admin logs in, sees web1 running, types in its console and sees the output",
  { timeout: 240_000 },
  async () => {
    const page = await context.newPage();
    await page.goto(base + "/");
    await page.fill("#token", "yun_notatoken");
    await page.click("#login button[type=submit]");
    await page.waitForSelector("[role=alert]");
    assert.match((await page.textContent("[role=alert]"))!, /That token was not accepted/);

    await page.fill("#token", adminToken);
    await page.click("#login button[type=submit]");
    await page.waitForSelector("#whoami");
    assert.match((await page.textContent("#whoami"))!, /admin · admin · admin/);
    const row = page.locator('#instance-table tr[data-name="web1"]');
    await row.waitFor();
    assert.equal(await row.locator("[data-state]").getAttribute("data-state"), "running");
    assert.match((await row.textContent())!, /debian.*small.*256 MiB/);

    await row.locator("[data-action=console]").click();
    await page.waitForSelector("#console-status:text-is('connected')", { timeout: 15_000 });
    assert.match((await page.textContent("main h2"))!, /Console: web1/);
    await page.click("#terminal");
    // Wait for the shell: press Enter now and then until the last line is a prompt.
    let lastEnter = 0;
    await waitFor(
      "a shell prompt in the dashboard console",
      async () => {
        const lines = (await terminalLines(page)).filter((l) => l.trim() !== "");
        if (PROMPT.test(lines.at(-1) ?? "")) return true;
        if (Date.now() - lastEnter > 3000) {
          lastEnter = Date.now();
          await page.keyboard.press("Enter");
        }
        return false;
      },
      BOOT_MS,
      page,
    );
    await page.keyboard.type("echo $((6*7))");
    await page.keyboard.press("Enter");
    await waitFor(
      "42 in the terminal",
      async () => {
        const lines = await terminalLines(page);
        let cmd = lines.length - 1;
        while (cmd >= 0 && !lines[cmd]!.includes("echo $((6*7))")) cmd--;
        return cmd >= 0 && lines.slice(cmd + 1).some((l) => l.trim() === "42");
      },
      30_000,
      page,
    );

    // A reload keeps the session (sessionStorage) and the server replays the console's recent output.
    await page.reload();
    await page.waitForSelector("#console-status:text-is('connected')", { timeout: 15_000 });
    await waitFor(
      "the replayed 42",
      async () => (await terminalLines(page)).some((l) => l.trim() === "42"),
      10_000,
      page,
    );

    // The instance list updates live: pause from the CLI, see it in the dashboard, resume.
    await page.click("[data-nav=instances]");
    await row.waitFor();
    assert.equal((await yun(["instance", "pause", "web1"])).code, 0);
    await page.locator('#instance-table tr[data-name="web1"] [data-state="paused"]').waitFor({ timeout: 10_000 });
    assert.equal((await yun(["instance", "resume", "web1"])).code, 0);
    await page.locator('#instance-table tr[data-name="web1"] [data-state="running"]').waitFor({ timeout: 10_000 });
    await page.close();
  },
);

test(
  "the graphical console shows the guest's screen, and keys and typed text reach its shell",
  { timeout: 180_000 },
  async () => {
    const page = await login(adminToken);
    page.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) assert.fail(`blocked by the CSP: ${m.text()}`);
    });
    const row = page.locator('#instance-table tr[data-name="web1"]');
    await row.waitFor();
    await row.locator("[data-action=display]").click();
    await page.waitForSelector("#display-status:text-is('connected')", { timeout: 15_000 });
    assert.match((await page.textContent("main h2"))!, /Display: web1/);
    const canvas = page.locator("#display-screen canvas").first();
    await canvas.waitFor();
    // The framebuffer console's text: light pixels on the dark screen, as the browser draws them.
    const lit = async (): Promise<number> => {
      const png = await canvas.screenshot();
      const { rgba } = await decodePng(context, png);
      let n = 0;
      for (let i = 0; i < rgba.length; i += 4) if (rgba[i]! + rgba[i + 1]! + rgba[i + 2]! > 3 * 120) n++;
      return n;
    };
    await waitFor("text on the guest's framebuffer", async () => (await lit()) > 200, 60_000);

    // Keys typed on the canvas reach the shell on tty1; its output goes to the serial console's log.
    const logHas = async (marker: RegExp): Promise<boolean> => {
      const log = await yun(["instance", "log", "web1", "--bytes", "8192"]);
      return marker.test(log.out);
    };
    await canvas.click();
    let typedAt = 0;
    await waitFor(
      "the keys typed on the graphical console ran in the guest",
      async () => {
        if (await logHas(/^vnc-42\r?$/m)) return true;
        if (Date.now() - typedAt > 8000) {
          typedAt = Date.now();
          await page.keyboard.type("echo vnc-$((6*7)) > /dev/ttyS0");
          await page.keyboard.press("Enter");
        }
        return false;
      },
      90_000,
    );
    // "Type text" sends a whole line as keys.
    await page.fill("#display-text", "echo typed-$((5*5)) > /dev/ttyS0\n");
    await page.click("#display-type");
    await waitFor("the typed text ran in the guest", () => logHas(/^typed-25\r?$/m), 30_000);

    // Without a valid token the display's WebSocket is refused.
    const refused = await page.evaluate(`new Promise((done) => {
    const ws = new WebSocket(location.origin.replace("http", "ws") + "/api/v1/instances/web1/display", ["bearer.yun_notatoken"]);
    ws.onopen = () => done("open");
    ws.onerror = () => done("refused");
  })`);
    assert.equal(refused, "refused");
    await page.close();
  },
);

test(
  "yun instance vnc: a VNC client logs in with the session's password and sees the screen",
  { timeout: 60_000 },
  async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, YUN_HOME: home, YUN_SERVER: base };
    delete env.YUN_TOKEN;
    const proxy = spawn(process.execPath, [YUN, "instance", "vnc", "web1"], { cwd: ROOT, env });
    let out = "";
    proxy.stdout.on("data", (d: Buffer) => (out += d.toString("utf8")));
    proxy.stderr.on("data", (d: Buffer) => (out += d.toString("utf8")));
    const exited = new Promise<number | null>((r) => proxy.on("close", (code) => r(code)));
    try {
      const [, port, file] = await waitFor(
        "yun instance vnc to listen",
        async () => /on 127\.0\.0\.1:(\d+); password in (\S+)/.exec(out) ?? undefined,
        15_000,
      );
      assert.equal(statSync(file!).mode & 0o077, 0, "the password file is private");
      const password = readFileSync(file!, "utf8").trim();
      const bad = await RfbTestClient.open(Number(port));
      assert.equal(await bad.handshake("not-it"), 1, "a wrong password is refused");
      const c = await RfbTestClient.open(Number(port));
      assert.equal(await c.handshake(password), 0);
      await c.init();
      assert.deepEqual([c.width, c.height, c.name], [1024, 768, web1Id]);
      c.setEncodings([16, 0]);
      c.requestUpdate(false);
      await c.readUpdate();
      let lit = 0;
      for (let i = 0; i < c.picture.length; i += 4)
        if (c.picture[i]! + c.picture[i + 1]! + c.picture[i + 2]! > 360) lit++;
      assert.ok(lit > 200, `the framebuffer console's text is in the picture (${lit} light pixels)`);
      c.close();
      bad.close();
    } finally {
      proxy.kill("SIGINT");
    }
    assert.equal(await exited, 0, out);
    const missing = await yun(["instance", "vnc", "nope"]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /nope/);
  },
);

test("yun console types into the same VM from a terminal", { timeout: 60_000 }, async () => {
  const r = await yun(["console", "web1", "--idle", "2"], "echo $((7*6+1))\n");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^43\r?$/m);

  // On a terminal (a pseudo-terminal from script(1)): raw mode, and Ctrl-] detaches.
  const tty = spawn("script", ["-qfec", `${process.execPath} ${YUN} console web1`, "/dev/null"], {
    cwd: ROOT,
    env: { ...process.env, YUN_HOME: home, YUN_SERVER: base, YUN_TOKEN: "" },
  });
  let screen = "";
  tty.stdout.on("data", (d: Buffer) => (screen += d.toString("utf8")));
  const closed = new Promise<number | null>((r) => tty.on("close", (code) => r(code)));
  await waitFor("the console banner", async () => screen.includes("Ctrl-] detaches"), 15_000);
  tty.stdin.write("echo $((5*5))\r");
  await waitFor("25 on the terminal", async () => /^25\r?$/m.test(screen), 15_000);
  tty.stdin.write("\x1d");
  assert.equal(await closed, 0, screen);
  assert.match(screen, /\[detached from web1\]/);

  const log = await yun(["instance", "log", "web1", "--bytes", "4096"]);
  assert.equal(log.code, 0, log.err);
  assert.match(log.out, /^25\r?$/m, "the console log has the last output");

  const missing = await yun(["console", "nope"]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /^yun: .*nope/);
});

test("a reader sees the instances but has no create, stop or delete", { timeout: 60_000 }, async () => {
  assert.equal((await yun(["user", "create", "rita", "--role", "reader"])).code, 0);
  const t = await yun(["user", "token", "rita"]);
  assert.equal(t.code, 0, t.err);
  const page = await login(t.out.trim());
  assert.match((await page.textContent("#whoami"))!, /rita · admin · reader/);
  const row = page.locator('#instance-table tr[data-name="web1"]');
  await row.waitFor();
  assert.equal(await page.locator("#create-form").count(), 0);
  assert.match((await page.textContent("#read-only"))!, /role is reader/);
  for (const a of ["stop", "pause", "reboot", "delete", "start", "console"]) {
    assert.equal(await row.locator(`[data-action=${a}]`).count(), 0, `no ${a} button for a reader`);
  }
  assert.equal(await page.locator("[data-nav=admin]").count(), 0, "no admin page for a reader");
  // The API refuses too (the dashboard is not the only guard).
  const res = await page.evaluate<{ status: number; body: string }>(`(async () => {
    const r = await fetch("/api/v1/instances/web1", { method: "DELETE", headers: { authorization: "Bearer ${t.out.trim()}" } });
    return { status: r.status, body: await r.text() };
  })()`);
  assert.equal(res.status, 403);
  assert.match(res.body, /reader/);
  await page.close();
});

test("project B's member does not see project A's instance or its console", { timeout: 60_000 }, async () => {
  assert.equal((await yun(["project", "create", "team-b"])).code, 0);
  assert.equal((await yun(["user", "create", "bob", "--role", "member", "--in", "team-b"])).code, 0);
  const t = await yun(["user", "token", "bob"]);
  assert.equal(t.code, 0, t.err);
  const page = await login(t.out.trim());
  assert.match((await page.textContent("#whoami"))!, /bob · team-b · member/);
  await page.waitForSelector("#instance-table tr.empty");
  assert.match((await page.textContent("#instance-table"))!, /No instances yet/);
  assert.equal(await page.locator('tr[data-name="web1"]').count(), 0);
  assert.equal(await page.locator("#create-form").count(), 1, "a member may create");

  await page.goto(`${base}/#/console/${web1Id}`);
  await page.waitForSelector("#console-status:text-is('not connected')");
  assert.match((await page.textContent("main [role=alert]"))!, /no instance/i);
  // Nor does the WebSocket open with B's token.
  const ws = await page.evaluate<string>(`new Promise((resolve) => {
    const s = new WebSocket("ws://" + location.host + "/api/v1/instances/${web1Id}/console", ["bearer.${t.out.trim()}"]);
    s.onopen = () => resolve("open");
    s.onerror = () => resolve("refused");
  })`);
  assert.equal(ws, "refused");
  await page.close();
});

test("the admin sees usage charts and the activity log, and sets a project's quotas", { timeout: 60_000 }, async () => {
  const page = await login(adminToken);
  await page.click("[data-nav=usage]");
  await page.waitForSelector("#usage-table");
  // A locator, not waitForFunction: that evaluates a string in the page, which the CSP forbids.
  await page.locator("#usage-charts .uplot canvas").nth(2).waitFor({ state: "attached" });
  assert.equal(await page.locator("#usage-charts .uplot canvas").count(), 3);
  // Admins see every project side by side.
  const projects = await page.textContent("#usage-projects");
  assert.match(projects!, /admin/);
  assert.match(projects!, /team-b/);
  const web1 = page.locator("#usage-table tr", { hasText: "web1" });
  assert.equal(await web1.count(), 1);
  const vcpu = Number((await web1.locator("td").nth(2).textContent())!);
  assert.ok(vcpu > 0, `web1 has used CPU time (${vcpu} vCPU-seconds)`);

  // The activity page shows the audit log, refusals included (rita's DELETE above).
  await page.click("[data-nav=events]");
  await page.waitForSelector("#event-table");
  const events = (await page.textContent("#event-table"))!;
  assert.match(events, /admin.*instance\.create/);
  assert.match(events, /rita.*forbidden/);

  await page.click("[data-nav=admin]");
  const teamB = page.locator('#project-table tr[data-name="team-b"]');
  await teamB.waitFor();
  await teamB.locator("[data-action=edit-quotas]").click();
  await page.fill("#quota-instances", "3");
  await page.fill("#quota-vcpus", "2");
  await page.click("#quota-form button[type=submit]");
  await page.waitForSelector("#admin-status .notice.success");
  await page.locator('#project-table tr[data-name="team-b"] [data-quota=instances]:text-is("0 / 3")').waitFor();
  const q = await yun(["project", "quota", "team-b"]);
  assert.match(q.out, /^instances +0 +3$/m);
  assert.match(q.out, /^vcpus +0 +2$/m);

  await page.close();
});

test("the admin creates, stops and deletes instances from the dashboard", { timeout: 120_000 }, async () => {
  const page = await login(adminToken);
  await page.waitForSelector("#create-form #new-image option[value=debian-tiny]", { state: "attached" });
  await page.fill("#new-name", "web2");
  await page.selectOption("#new-image", "debian-tiny"); // the fast image, whichever is the default
  await page.selectOption("#new-flavor", "tiny");
  await page.click("#create-instance");
  const web2 = page.locator('#instance-table tr[data-name="web2"]');
  await web2.waitFor({ timeout: 20_000 });
  // The list may show web2 (building) before the create answers, once its VM runs.
  await page.waitForSelector("#instances-status :text('web2 created')", { timeout: 60_000 });
  assert.match((await web2.textContent())!, /tiny/);
  // A duplicate name gets the server's one-sentence refusal.
  await page.fill("#new-name", "web2");
  await page.click("#create-instance");
  await page.waitForSelector("#instances-status [role=alert]");
  assert.match((await page.textContent("#instances-status"))!, /web2/);

  const del = web2.locator("[data-action=delete]");
  await del.click();
  assert.equal(await del.textContent(), "Really delete?");
  await del.click();
  await web2.waitFor({ state: "detached", timeout: 30_000 });

  const web1 = page.locator('#instance-table tr[data-name="web1"]');
  await web1.locator("[data-action=stop]").click();
  await page.locator('#instance-table tr[data-name="web1"] [data-state="stopped"]').waitFor({ timeout: 60_000 });
  const d1 = page.locator('#instance-table tr[data-name="web1"] [data-action=delete]');
  await d1.click();
  await d1.click();
  await web1.waitFor({ state: "detached", timeout: 30_000 });
  assert.deepEqual(
    (await admin.listInstances()).map((i) => i.name),
    [],
  );
  await page.close();
});

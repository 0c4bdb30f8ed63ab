// The dashboard's pages in headless Chromium against an API server in this process, without
// booting anything (instances are created stopped): assets load, login and logout, refusals shown
// as the server words them, the admin's project and user forms. Fast; dashboard.test.ts boots.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page } from "playwright-core";
import { decodePng, launchBrowser } from "./browser.js";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { listen, type RunningServer } from "../../src/cloud/server.js";
import { YunClient } from "../../src/cloud/client.js";
import { ROOT } from "../e2e/harness.js";

let home: string;
let profile: string;
let cloud: Cloud;
let server: RunningServer;
let base: string;
let token: string;
let api: YunClient;
let context: BrowserContext;

before(async () => {
  assert.ok(existsSync(join(ROOT, "dist/src/web/static/index.html")), "the dashboard is not built: npm run build");
  home = mkdtempSync(join(tmpdir(), "yun-pages-"));
  const images = join(process.env.YUN_HOME ?? join(process.env.HOME ?? "/root", ".local/share/yun"), "images");
  if (existsSync(images)) symlinkSync(images, join(home, "images"));
  cloud = new Cloud({ home, driver: new MonitorDriver(home), tickMs: 0 });
  token = (await cloud.bootstrap()).adminToken!;
  server = await listen(cloud, "127.0.0.1", 0);
  base = `http://127.0.0.1:${server.port}`;
  api = new YunClient({ server: base, token });
  await api.createInstance({ name: "web0", image: "debian-tiny", flavor: "tiny", start: false });
  ({ context, profile } = await launchBrowser());
});

after(async () => {
  await context?.close().catch(() => {});
  await server?.close();
  cloud?.close();
  rmSync(home, { recursive: true, force: true });
  rmSync(profile, { recursive: true, force: true });
});

/** A new tab that fails the test on any script error, failed asset request or blocked resource
 *  (the server's Content-Security-Policy must let the whole dashboard work). */
async function tab(opts: { probesCsp?: boolean } = {}): Promise<Page> {
  const page = await context.newPage();
  page.on("pageerror", (e) => assert.fail(`dashboard error: ${e.message}`));
  page.on("console", (m) => {
    if (!opts.probesCsp && /Content Security Policy/i.test(m.text())) assert.fail(`blocked by the CSP: ${m.text()}`);
  });
  page.on("response", (r) => {
    const u = new URL(r.url());
    if (!u.pathname.startsWith("/api/") && u.pathname !== "/favicon.ico" && r.status() >= 400) {
      assert.fail(`${u.pathname} answered ${r.status()}`);
    }
  });
  return page;
}

async function login(page: Page, t: string): Promise<void> {
  await page.goto(base + "/");
  await page.fill("#token", t);
  await page.click("#login button[type=submit]");
}

test("the dashboard and its vendored libraries load; login, session and logout", async () => {
  const page = await tab();
  const icon = page.waitForResponse((r) => new URL(r.url()).pathname === "/favicon.svg");
  await page.goto(base + "/");
  assert.equal(await page.title(), "Yun — log in");
  assert.equal((await icon).status(), 200, "the tab has its icon");
  await login(page, "yun_wrong");
  await page.waitForSelector("[role=alert]");
  assert.match((await page.textContent("[role=alert]"))!, /That token was not accepted/);

  await login(page, token);
  await page.waitForSelector('#instance-table tr[data-name="web0"]');
  const row = page.locator('#instance-table tr[data-name="web0"]');
  assert.equal(await row.locator("[data-state]").textContent(), "stopped");
  // A stopped instance offers Start and Delete, not Stop or Pause.
  assert.equal(await row.locator("[data-action=start]").count(), 1);
  assert.equal(await row.locator("[data-action=delete]").count(), 1);
  assert.equal(await row.locator("[data-action=stop]").count(), 0);
  assert.equal(await row.locator("[data-action=pause]").count(), 0);

  // The console of a stopped instance says so instead of failing silently.
  await row.locator("[data-action=console]").click();
  await page.waitForSelector("main .notice");
  assert.match((await page.textContent("main .notice"))!, /web0 is stopped; start it/);
  assert.equal(await page.locator(".xterm").count(), 1, "xterm.js loaded and opened");

  // The token survives a reload (sessionStorage), not a logout.
  await page.reload();
  await page.waitForSelector("#whoami");
  await page.click("#logout");
  await page.waitForSelector("#login");
  await page.reload();
  await page.waitForSelector("#login");
  assert.equal(await page.evaluate<string | null>(`sessionStorage.getItem("yun.token")`), null);
  await page.close();
});

test("the dashboard runs under its Content-Security-Policy; the activity log names actors with their ids", async () => {
  const page = await tab({ probesCsp: true });
  const violations: string[] = [];
  await page.exposeFunction("yunCspViolation", (v: string) => violations.push(v));
  await page.addInitScript(
    `document.addEventListener("securitypolicyviolation", (e) => window.yunCspViolation(e.violatedDirective + " " + e.blockedURI));`,
  );
  const res = await page.goto(base + "/");
  const headers = res!.headers();
  assert.match(headers["content-security-policy"], /script-src 'self'/);
  assert.equal(headers["x-frame-options"], "DENY");
  await login(page, token);
  await page.waitForSelector('#instance-table tr[data-name="web0"]');
  // xterm.js (console), uPlot (usage) and the activity page, each under the policy.
  await page.locator('#instance-table tr[data-name="web0"] [data-action=console]').click();
  await page.waitForSelector(".xterm");
  await page.click("[data-nav=usage]");
  // A locator, not waitForFunction: that evaluates a string in the page, which the CSP forbids.
  await page.locator("#usage-charts .uplot canvas").nth(2).waitFor({ state: "attached" });
  assert.equal(await page.locator("#usage-charts .uplot canvas").count(), 3);
  await page.click("[data-nav=events]");
  const actor = page.locator("#event-table .actor", { hasText: "admin" }).first();
  await actor.waitFor();
  const me = await api.whoami();
  assert.equal(await actor.getAttribute("data-user-id"), me.user.id);
  assert.equal(await actor.getAttribute("title"), me.user.id);
  // An inline script injected into the page is refused: the policy is in force.
  await page.evaluate(
    `(() => { const s = document.createElement("script"); s.textContent = "window.yunInline = 1"; document.body.append(s); })()`,
  );
  await page.waitForTimeout(200);
  assert.equal(await page.evaluate(`window.yunInline === undefined`), true);
  assert.ok(
    violations.some((v) => v.startsWith("script-src")),
    violations.join(", "),
  );
  assert.deepEqual(
    violations.filter((v) => !v.startsWith("script-src")),
    [],
    "nothing else was blocked",
  );
  await page.close();
});

test("refusals from the API appear as the server words them", async () => {
  const me = await api.whoami();
  await api.setQuotas(me.project.id, { instances: 1 });
  const page = await tab();
  await login(page, token);
  await page.waitForSelector("#create-form #new-flavor option[value=tiny]", { state: "attached" });
  await page.fill("#new-name", "web9");
  await page.selectOption("#new-flavor", "tiny");
  await page.click("#create-instance");
  await page.waitForSelector("#instances-status [role=alert]");
  assert.match((await page.textContent("#instances-status"))!, /quota instances \(1\) exceeded/);
  assert.equal(await page.locator('tr[data-name="web9"]').count(), 0);
  await api.setQuotas(me.project.id, { instances: 10 });
  await page.close();
});

test("usage shows three charts; admins create projects and users and issue tokens", async () => {
  const page = await tab();
  await login(page, token);
  await page.waitForSelector("#whoami");
  await page.click("[data-nav=usage]");
  // A locator, not waitForFunction: that evaluates a string in the page, which the CSP forbids.
  await page.locator("#usage-charts .uplot canvas").nth(2).waitFor({ state: "attached" });
  assert.equal(await page.locator("#usage-charts .uplot canvas").count(), 3);
  assert.match((await page.textContent("#usage-table"))!, /web0/);

  await page.click("[data-nav=admin]");
  await page.waitForSelector("#project-table");
  await page.fill("#new-project-name", "team-c");
  await page.click("#create-project button[type=submit]");
  await page.waitForSelector('#project-table tr[data-name="team-c"]');
  assert.match((await page.textContent("#admin-status"))!, /Project team-c created/);

  await page.fill("#new-user-name", "carol");
  await page.selectOption("#new-user-role", "member");
  await page.selectOption("#new-user-project", "team-c");
  await page.click("#create-user button[type=submit]");
  const carol = page.locator('#user-table tr[data-name="carol"]');
  await carol.waitFor();
  assert.match((await carol.textContent())!, /team-c.*member/);
  await carol.locator("[data-action=token]").click();
  await page.waitForSelector("#new-token");
  const t = (await page.textContent("#new-token"))!;
  assert.match(t, /^yun_[a-z2-7]{40}$/);
  const who = await new YunClient({ server: base, token: t }).whoami();
  assert.equal(who.user.name, "carol");
  assert.equal(who.project.name, "team-c");

  // The admin picks team-c in the header: its (empty) instance list, not web0.
  await page.click("[data-nav=instances]");
  await page.selectOption("#project-picker", { label: "team-c" });
  await page.waitForSelector("#instance-table tr.empty");
  assert.equal(await page.locator('tr[data-name="web0"]').count(), 0);
  await page.selectOption("#project-picker", { label: "All projects" });
  await page.waitForSelector('#instance-table tr[data-name="web0"]');
  await page.close();
});

test("volumes and networks: create, attach to a stopped instance, detach, delete; readers only look", async () => {
  const page = await tab();
  await login(page, token);
  await page.waitForSelector("#whoami");
  await page.click("[data-nav=volumes]");
  await page.fill("#volume-form [name=name]", "data1");
  await page.fill("#volume-form [name=sizeGiB]", "2");
  await page.click("#volume-form button[type=submit]");
  await page.waitForSelector("#volume-table td:text-is('data1')");
  const vrow = page.locator("#volume-table tr", { hasText: "data1" });
  assert.match((await vrow.textContent())!, /2 GiB.*available/);
  // web0 is stopped, so it is offered; the API agrees the volume is attached.
  await vrow.locator("button", { hasText: "Attach" }).click();
  await page.waitForSelector("#volume-table tr:has-text('data1') >> text=in-use");
  assert.equal((await api.getVolume("data1")).state, "in-use");
  await page.locator("#volume-table tr", { hasText: "data1" }).locator("button", { hasText: "Detach" }).click();
  await page.waitForSelector("#volume-table tr:has-text('data1') >> text=available");

  await page.fill("#network-form [name=name]", "backend");
  await page.fill("#network-form [name=cidr]", "10.77.0.0/24");
  await page.click("#network-form button[type=submit]");
  await page.waitForSelector("#network-table td:text-is('backend')");
  assert.match((await page.locator("#network-table tr", { hasText: "backend" }).textContent())!, /10\.77\.0\.0\/24/);
  // A bad CIDR: the server's words appear.
  await page.fill("#network-form [name=name]", "bad");
  await page.fill("#network-form [name=cidr]", "10.77.0.0/33");
  await page.click("#network-form button[type=submit]");
  await page.waitForSelector("#storage-status [role=alert]");

  const del = page.locator("#volume-table tr", { hasText: "data1" }).locator("button", { hasText: "Delete" });
  await del.click();
  await del.click(); // the second click confirms
  await page.waitForSelector("#volume-table td:text-is('data1')", { state: "detached" });
  assert.equal((await api.listVolumes()).length, 0);

  // A reader sees the lists without forms or buttons.
  await api.createUser({ name: "viewer", role: "reader" });
  const readerToken = (await api.createToken("viewer")).token;
  const rpage = await tab();
  await login(rpage, readerToken);
  await rpage.waitForSelector("#whoami");
  await rpage.click("[data-nav=volumes]");
  await rpage.waitForSelector("#network-table td:text-is('backend')");
  assert.equal(await rpage.locator("#volume-form, #network-form").count(), 0);
  assert.equal(await rpage.locator("#network-table button").count(), 0);
  await rpage.close();
  await page.close();
});

test("the login page shows commands as code; #/volumes and the old #/storage open one page; unknown pages say so", async () => {
  const page = await tab();
  await page.goto(base + "/");
  const intro = (await page.textContent("#login p"))!;
  assert.doesNotMatch(intro, /`/, "no markdown backticks on the login page");
  assert.deepEqual(await page.locator("#login p code").allTextContents(), [
    "yun serve",
    "$YUN_HOME/cloud/admin.token",
    "yun user token NAME",
  ]);

  await login(page, token);
  await page.waitForSelector("#whoami");
  await page.goto(base + "/#/volumes");
  await page.waitForSelector("#volume-form");
  assert.equal(await page.getAttribute("[data-nav=volumes]", "class"), "active");
  assert.equal(await page.title(), "Yun — volumes");
  // The old address shows the same page, under its new address.
  await page.goto(base + "/#/instances");
  await page.waitForSelector("#instance-table");
  await page.goto(base + "/#/storage");
  await page.waitForSelector("#volume-form");
  assert.equal(await page.evaluate<string>("location.hash"), "#/volumes");
  assert.equal(await page.getAttribute("[data-nav=volumes]", "class"), "active");

  // An address the dashboard does not know: a page that says so, with the way back.
  await page.goto(base + "/#/volumez");
  await page.waitForSelector("#not-found");
  assert.match((await page.textContent("#not-found"))!, /Page not found.*There is no page #\/volumez/s);
  assert.equal(await page.locator("#whoami").count(), 1, "the top bar stays");
  await page.click("#not-found a[href='#/instances']");
  await page.waitForSelector("#instance-table");
  await page.close();
});

test("at 420 px the top bar fits: Log out is in the window and works, the page does not scroll sideways", async () => {
  const page = await tab();
  await page.setViewportSize({ width: 420, height: 760 });
  await login(page, token);
  await page.waitForSelector("#whoami");
  for (const view of ["instances", "volumes", "usage", "events", "admin", "console/web0"]) {
    await page.goto(`${base}/#/${view}`);
    await page.waitForSelector("main > *");
    const box = (await page.locator("#logout").boundingBox())!;
    const where = `${view}: Log out at x ${box.x}-${box.x + box.width}, y ${box.y}-${box.y + box.height}`;
    assert.ok(box.x >= 0 && box.x + box.width <= 420 && box.y >= 0 && box.y + box.height <= 760, where);
    // Nothing covers it: the element under its centre is the button.
    const hit = await page.evaluate<string | undefined>(
      `document.elementFromPoint(${box.x + box.width / 2}, ${box.y + box.height / 2})?.id`,
    );
    assert.equal(hit, "logout", where);
    assert.ok(
      (await page.evaluate<number>("document.documentElement.scrollWidth")) <= 420,
      `${view}: the page is wider than the window`,
    );
    // The page's own toolbar (the console's Reconnect, say) wraps rather than leaving the window.
    for (const b of await page.locator("main .toolbar :is(button, .button, select):visible").all()) {
      const r = (await b.boundingBox())!;
      assert.ok(r.x >= 0 && r.x + r.width <= 420, `${view}: ${await b.textContent()} at x ${r.x}-${r.x + r.width}`);
    }
    // The header is one or two lines, not a column of wrapped links.
    assert.ok((await page.locator("header").boundingBox())!.height < 100, `${view}: the top bar is too tall`);
  }
  await page.click("#logout");
  await page.waitForSelector("#login");
  await page.close();
});

test("the console draws underscores (PRETTY_NAME is not PRETTY NAME)", async () => {
  const page = await tab();
  await login(page, token);
  await page.waitForSelector("#whoami");
  await page.goto(`${base}/#/console/web0`);
  await page.waitForSelector(".xterm-rows");
  // What a guest's `cat /etc/os-release` prints, and the same line with a space for comparison.
  await page.evaluate(`new Promise((done) => window.yunTerminal.write('PRETTY_NAME\\r\\nPRETTY NAME\\r\\n', done))`);
  // A locator, not waitForFunction: that evaluates a string in the page, which the CSP forbids
  // (it passes only when the first check already holds, so it failed now and then).
  await page
    .locator(".xterm-rows > div")
    .first()
    .filter({ hasText: /^PRETTY_NAME$/ })
    .waitFor();
  const cols = await page.evaluate<number>("window.yunTerminal.cols");
  // The cell of the 7th character (the underscore, or the space) of each row, as drawn on screen.
  const inkOfCell = async (row: number): Promise<number> => {
    const box = (await page.locator(`.xterm-rows > div:nth-child(${row})`).boundingBox())!;
    const cell = box.width / cols;
    const png = await page.screenshot({ clip: { x: box.x + 6 * cell, y: box.y, width: cell, height: box.height } });
    const { rgba } = await decodePng(context, png);
    let ink = 0; // pixels of the text's light colour on the dark background
    for (let i = 0; i < rgba.length; i += 4) if (rgba[i]! + rgba[i + 1]! + rgba[i + 2]! > 3 * 100) ink++;
    return ink;
  };
  // The terminal stays inside its box (xterm.js's own element also has the class "terminal").
  const inside = await page.evaluate<boolean>(`(() => {
    const box = document.querySelector(".console-box").getBoundingClientRect();
    const term = document.querySelector(".xterm").getBoundingClientRect();
    return term.top >= box.top && term.bottom <= box.bottom + 0.5 && term.right <= box.right + 0.5;
  })()`);
  assert.ok(inside, "the terminal overflows its box");
  const underscore = await inkOfCell(1);
  const space = await inkOfCell(2);
  assert.equal(space, 0, "the measure sees a blank cell as blank");
  assert.ok(underscore >= 4, `the underscore is drawn (${underscore} lit pixels in its cell)`);
  await page.close();
});

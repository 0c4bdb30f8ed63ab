/** A cloud server on port 0 with a temporary YUN_HOME (the Debian image linked in) and database. */
import { mkdtempSync, rmSync, symlinkSync, existsSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join } from "node:path";
import { Cloud } from "../../src/cloud/cloud.js";
import { MonitorDriver } from "../../src/cloud/compute/driver.js";
import { listen, type RunningServer } from "../../src/cloud/server.js";
import type { LimitSettings } from "../../src/cloud/limits.js";
import { YunClient, YunApiError } from "../../src/cloud/client.js";

/** Where the pulled Debian image is (the user's YUN_HOME before tests change it). */
export const REAL_IMAGES = join(
  process.env.YUN_REAL_HOME ?? process.env.YUN_HOME ?? join(homedir(), ".local/share/yun"),
  "images",
);
export const HAVE_DEBIAN = existsSync(join(REAL_IMAGES, "debian-tiny", "manifest.json"));

/** A fresh YUN_HOME whose images/ is the real one (read-only use: instances get overlays). */
export function tempHome(): string {
  const home = mkdtempSync(join(tmpdir(), "yun-cloud-"));
  if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
  return home;
}

export interface TestCloud {
  home: string;
  cloud: Cloud;
  server: RunningServer;
  url: string;
  admin: YunClient;
  adminToken: string;
  close(): Promise<void>;
}

export async function startCloud(
  opts: { now?: () => number; home?: string; limits?: Partial<LimitSettings> } = {},
): Promise<TestCloud> {
  const home = opts.home ?? tempHome();
  process.env.YUN_HOME = home;
  const cloud = new Cloud({ home, driver: new MonitorDriver(home), now: opts.now, tickMs: 500 });
  await cloud.bootstrap();
  await cloud.reconcile();
  const server = await listen(cloud, "127.0.0.1", 0, { limits: opts.limits });
  const url = `http://127.0.0.1:${server.port}`;
  const adminToken = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
  return {
    home,
    cloud,
    server,
    url,
    adminToken,
    admin: new YunClient({ server: url, token: adminToken }),
    close: async () => {
      await server.close();
      cloud.close();
      if (!opts.home) {
        killMonitorsOf(home);
        rmSync(home, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Kills the VM monitors started for a YUN_HOME. They are detached on purpose (a restarted cloud
 * attaches to them again), so a test that ends without deleting its instances would leave them
 * running for the rest of the run.
 */
export function killMonitorsOf(home: string): void {
  const mark = Buffer.from(`YUN_HOME=${home}\0`);
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/environ`).includes(mark)) process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
}

/** A project with a member (and a reader), as clients. */
export async function tenant(t: TestCloud, name: string, quotas?: { instances?: number }) {
  const project = await t.admin.createProject({ name, quotas });
  const member = await t.admin.createUser({ name: `${name}-member`, role: "member", project: project.id });
  const reader = await t.admin.createUser({ name: `${name}-reader`, role: "reader", project: project.id });
  const mt = await t.admin.createToken(member.id);
  const rt = await t.admin.createToken(reader.id);
  return {
    project,
    member: new YunClient({ server: t.url, token: mt.token }),
    reader: new YunClient({ server: t.url, token: rt.token }),
    memberToken: mt.token,
    readerToken: rt.token,
  };
}

/** Runs fn and answers the YunApiError it throws (fails if it does not throw one). */
export async function refusal(fn: () => Promise<unknown>): Promise<YunApiError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof YunApiError) return e;
    throw e;
  }
  throw new Error("expected the API to refuse, but it answered");
}

/** A raw fetch with a token; answers status and parsed body. */
export async function raw(
  t: TestCloud,
  method: string,
  path: string,
  opts: { token?: string | null; body?: string; contentType?: string } = {},
): Promise<{ status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const headers: Record<string, string> = {};
  const token = opts.token === undefined ? t.adminToken : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers["content-type"] = opts.contentType ?? "application/json";
  const res = await fetch(t.url + path, { method, headers, body: opts.body });
  const text = await res.text();
  let body = {};
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: res.status, body: body as never };
}

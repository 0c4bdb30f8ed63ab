/**
 * The REST API, driven from its own OpenAPI document (/api/openapi.json): every operation, with
 * path parameters naming real resources (the caller's, another project's) or anything at all,
 * query parameters and JSON bodies generated from the operation's schema and then pushed to and
 * past its bounds (empty, huge and unicode strings, numbers at and beyond the limits, missing and
 * extra fields, wrong types, broken JSON, no Content-Type), under every kind of caller (admin,
 * member, reader, another project's member, a bad token, none), one after another or at once.
 *
 * Properties per request: no 5xx, a status the document lists for that operation, a JSON body (or
 * the documented media type), and for errors the documented shape {error: {code, message}}; no
 * unhandled exception. Between batches: every list still answers, each project's quota usage
 * equals its instances and volumes, and memory stays bounded.
 *
 * Requests go to createApp() in-process (app.request). Compute is a test double (StubDriver)
 * that "runs" each VM without booting one: booting would make a case take seconds, and the API
 * layer is what is under test; the VM monitors have their own tests and campaigns.
 */
import fc from "fast-check";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cloud } from "../../src/cloud/cloud.js";
import { createApp, type ServerOptions } from "../../src/cloud/server.js";
import { NO_RATE_LIMITS } from "../../src/cloud/limits.js";
import type { ComputeDriver, LaunchSpec, Launched } from "../../src/cloud/compute/driver.js";
import { REAL_IMAGES } from "../../test/cloud/helpers.js";
import { FuzzFailure, leakGuard, must, timedAsync, type Campaign, type Session } from "../campaign.js";

/**
 * The one place to adjust the server for fuzzing: per-token rate limits (or any other limit that
 * would turn a flood of requests into 429s) are switched off here.
 */
export function fuzzServerOptions(): ServerOptions {
  return { limits: NO_RATE_LIMITS };
}

/** Compute without VMs: launches "succeed" at once, the control API answers what the cloud asks. */
export class StubDriver implements ComputeDriver {
  onExit: ((id: string) => void) | null = null;
  private readonly running = new Map<string, number>();
  private nextPid = 4_000_000;
  async launch(spec: LaunchSpec, onSpawn: (pid: number, socket: string) => void): Promise<Launched> {
    const pid = this.nextPid++;
    const socket = join(spec.dir, "stub.sock");
    onSpawn(pid, socket);
    this.running.set(spec.id, pid);
    return { pid, socket };
  }
  async attach(id: string): Promise<boolean> {
    return this.running.has(id);
  }
  async control<T = Record<string, unknown>>(id: string, op: string): Promise<T> {
    if (!this.running.has(id)) throw new Error(`no VM ${id}`);
    if (op === "describe") return { state: "running" } as T;
    if (op === "pause" || op === "resume" || op === "reset") return {} as T;
    throw new Error(`the fuzz driver runs no VM that could answer ${op}`);
  }
  async console(): Promise<never> {
    throw new Error("the fuzz driver runs no VM with a console");
  }
  async display(): Promise<never> {
    throw new Error("the fuzz driver runs no VM with a display");
  }
  async stop(id: string): Promise<void> {
    this.running.delete(id);
  }
  kill(): void {}
  isMonitorOf(pid: number, id: string): boolean {
    return this.running.get(id) === pid;
  }
  runningVms(): { name: string; pid: number; socket: string }[] {
    return [];
  }
  close(): void {
    this.running.clear();
  }
}

// ---- the OpenAPI document as far as the generator needs it ----

interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  items?: Schema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  anyOf?: Schema[];
  oneOf?: Schema[];
  $ref?: string;
  format?: string;
}
interface Parameter {
  in: "path" | "query" | "header";
  name: string;
  required?: boolean;
  schema?: Schema;
}
interface Operation {
  method: string;
  path: string;
  parameters: Parameter[];
  body?: { type: string; schema?: Schema; required: boolean };
  responses: Record<string, { content?: Record<string, unknown> }>;
}

export function operationsOf(doc: { paths: Record<string, Record<string, unknown>> }): Operation[] {
  const ops: Operation[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, raw] of Object.entries(methods)) {
      const op = raw as {
        parameters?: Parameter[];
        requestBody?: { required?: boolean; content: Record<string, { schema?: Schema }> };
        responses: Operation["responses"];
      };
      const content = op.requestBody ? Object.entries(op.requestBody.content)[0] : undefined;
      ops.push({
        method: method.toUpperCase(),
        path,
        parameters: op.parameters ?? [],
        body: content
          ? { type: content[0], schema: content[1].schema, required: op.requestBody?.required ?? false }
          : undefined,
        responses: op.responses,
      });
    }
  }
  return ops;
}

// ---- values ----

const nasty = fc.constantFrom(
  "",
  " ",
  "a",
  "..",
  "../../etc/passwd",
  "%2e%2e%2f",
  "%ff",
  "%c3%28",
  "%ed%a0%80",
  "%",
  "null",
  "undefined",
  "0",
  "-1",
  "1e400",
  "NaN",
  "true",
  "名前",
  "ｗｅｂ",
  "e\u0301",
  "\u0000",
  "a\u0000b",
  "\ud800",
  "😀".repeat(20),
  "'; DROP TABLE instances; --",
  "<script>alert(1)</script>",
  "$(reboot)",
  "a".repeat(63),
  "a".repeat(64),
  "a".repeat(81),
  "x".repeat(70_000),
  "default",
  "debian",
  "debian-tiny",
  "small",
);
const anyString = fc.oneof(
  { weight: 3, arbitrary: nasty },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }) },
);
const anyNumber = fc.oneof(
  fc.constantFrom(0, -1, 1, 0.5, -0.0, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), 1e308, Number.MAX_VALUE),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
);
const anyJson: fc.Arbitrary<unknown> = fc.oneof(
  anyString,
  anyNumber,
  fc.boolean(),
  fc.constant(null),
  fc.constant([]),
  fc.constant({}),
  fc.array(fc.oneof(anyString, anyNumber), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(anyString, anyNumber), { maxKeys: 3 }),
);

/** Values for one schema: mostly valid (with bounds), sometimes anything. */
function valueFor(s: Schema | undefined, pools: Pools, depth = 0): fc.Arbitrary<unknown> {
  if (!s || depth > 4) return anyJson;
  const sometimesWrong = (good: fc.Arbitrary<unknown>) =>
    fc.oneof({ weight: 6, arbitrary: good }, { weight: 1, arbitrary: anyJson });
  if (s.anyOf || s.oneOf) return fc.oneof(...(s.anyOf ?? s.oneOf)!.map((x) => valueFor(x, pools, depth + 1)));
  if (s.enum) return sometimesWrong(fc.constantFrom(...s.enum));
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== "null") : s.type;
  switch (type) {
    case "string": {
      const lo = s.minLength ?? 0;
      const hi = s.maxLength ?? 100;
      const bounded: fc.Arbitrary<unknown>[] = [
        fc.constant("a".repeat(lo)),
        fc.constant("b".repeat(Math.min(hi, 70_000))),
        fc.constant("c".repeat(Math.min(hi + 1, 70_001))),
        pools.name,
      ];
      if (s.pattern) bounded.push(fc.stringMatching(new RegExp(s.pattern)));
      if (s.format === "date-time") bounded.push(fc.date({ noInvalidDate: true }).map((d) => d.toISOString()));
      return sometimesWrong(fc.oneof(...bounded, anyString));
    }
    case "integer":
    case "number": {
      const lo = s.minimum ?? s.exclusiveMinimum ?? -1000;
      const hi = s.maximum ?? s.exclusiveMaximum ?? 1_000_000;
      return sometimesWrong(
        fc.oneof(
          fc.constantFrom(lo, hi, lo - 1, hi + 1, lo + 0.5),
          type === "integer"
            ? fc.integer({ min: Math.max(lo, -(2 ** 31)), max: Math.min(hi, 2 ** 31) })
            : fc.double({ min: lo, max: hi, noNaN: true }),
          anyNumber,
        ),
      );
    }
    case "boolean":
      return sometimesWrong(fc.boolean());
    case "array":
      return sometimesWrong(
        fc.array(valueFor(s.items, pools, depth + 1), { maxLength: Math.min((s.maxItems ?? 4) + 1, 8) }),
      );
    case "object": {
      const props = Object.entries(s.properties ?? {});
      const required = new Set(s.required ?? []);
      const record: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, v] of props) record[k] = valueFor(v, pools, depth + 1);
      return sometimesWrong(
        fc
          .tuple(
            fc.record(record, { requiredKeys: [] }),
            fc.subarray([...required]),
            fc.dictionary(fc.constantFrom("extra", "__proto__", "constructor", "id", "project"), anyJson, {
              maxKeys: 2,
            }),
            fc.nat(9),
          )
          .map(([obj, drop, extra, mode]) => {
            const out: Record<string, unknown> = { ...obj };
            // Required fields are present most of the time; now and then some go missing or extras appear.
            for (const k of required) if (!(k in out)) out[k] = undefined;
            for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
            if (mode === 0) for (const k of drop) delete out[k];
            if (mode === 1) Object.assign(out, extra);
            return out;
          }),
      );
    }
    default:
      return anyJson;
  }
}

// ---- callers and resources ----

interface Pools {
  name: fc.Arbitrary<string>;
}

/** What the case can refer to: tokens and the ids and names of resources seen so far. */
interface World {
  tokens: Record<string, string | null>;
  /** Per path prefix (e.g. "/api/v1/instances"), ids and names from responses. */
  seen: Map<string, string[]>;
  projects: string[];
}

interface Req {
  op: number;
  caller: string;
  pathPick: number[];
  pathRandom: (string | null)[];
  query: Record<string, unknown>;
  body: unknown;
  bodyMode: number;
}

/** A path segment as a client might send it: strings starting with % go raw (invalid escapes included). */
function encodePathPart(s: string): string {
  if (s.startsWith("%")) return s;
  return [...Buffer.from(s, "utf8")]
    .map((b) =>
      /[A-Za-z0-9_.~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, "0")}`,
    )
    .join("");
}

const CALLERS = ["admin", "memberA", "readerA", "memberB", "garbage", "none"];

function remember(world: World, prefix: string, body: unknown): void {
  const items = body && typeof body === "object" && "items" in body ? (body as { items: unknown[] }).items : [body];
  if (!Array.isArray(items)) return;
  let list = world.seen.get(prefix);
  if (!list) world.seen.set(prefix, (list = []));
  for (const it of items) {
    if (!it || typeof it !== "object") continue;
    for (const k of ["id", "name"]) {
      const v = (it as Record<string, unknown>)[k];
      if (typeof v === "string" && !list.includes(v)) list.push(v);
    }
  }
  if (list.length > 64) list.splice(0, list.length - 64);
}

export const apiCampaign: Campaign = {
  name: "api",
  surface: "api",
  testRuns: 250,
  batchRuns: 2000,
  async open(): Promise<Session> {
    // A YUN_HOME in memory when the host has one (the database's commits cost no disk flush),
    // with the real images linked in so instances can be created.
    const home = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "yun-fuzz-api-"));
    if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
    const prevHome = process.env.YUN_HOME;
    process.env.YUN_HOME = home;
    const driver = new StubDriver();
    const cloud = new Cloud({ home, driver, tickMs: 0 });
    await cloud.bootstrap();
    await cloud.reconcile();
    const app = createApp(cloud, fuzzServerOptions());
    let requests = 0;
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);

    const call = async (method: string, path: string, token: string | null, body?: BodyInit, type?: string) => {
      const headers: Record<string, string> = {};
      if (token !== null) headers.authorization = `Bearer ${token}`;
      if (type) headers["content-type"] = type;
      requests++;
      return app.request(path, { method, headers, body });
    };
    const adminToken = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
    const asAdmin = async (method: string, path: string, body?: unknown) => {
      const r = await call(
        method,
        path,
        adminToken,
        body === undefined ? undefined : JSON.stringify(body),
        "application/json",
      );
      const j = (await r.json()) as Record<string, unknown>;
      if (r.status >= 300) throw new Error(`setup ${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
      return j;
    };
    // Two projects, each with a member and a reader; made again when the fuzzing deleted them.
    const world: World = {
      tokens: { admin: adminToken, garbage: "yun_notatoken", none: null },
      seen: new Map(),
      projects: [],
    };
    const ensureTenants = async () => {
      const existing = (await asAdmin("GET", "/api/v1/projects")).items as { id: string; name: string }[];
      for (const [p, suffix] of [
        ["fuzz-a", "A"],
        ["fuzz-b", "B"],
      ] as const) {
        if (existing.some((x) => x.name === p)) continue;
        const proj = await asAdmin("POST", "/api/v1/projects", {
          name: p,
          quotas: { instances: 4, vcpus: 8, memoryMiB: 4096, diskGiB: 100 },
        });
        world.projects = world.projects.filter((x) => existing.some((e) => e.id === x));
        world.projects.push(proj.id as string);
        for (const role of ["member", "reader"]) {
          const u = await asAdmin("POST", "/api/v1/users", {
            name: `${p}-${role}-${proj.id as string}`,
            role,
            project: proj.id,
          });
          const t = await asAdmin("POST", `/api/v1/users/${u.id as string}/tokens`);
          world.tokens[`${role}${suffix}`] = t.token as string;
        }
      }
    };
    await ensureTenants();

    const doc = (await (await app.request("/api/openapi.json")).json()) as {
      paths: Record<string, Record<string, unknown>>;
    };
    // The console is a WebSocket upgrade; plain requests to it are covered by the 400 it documents.
    const ops = operationsOf(doc);
    const pools: Pools = { name: fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/) };
    const reqArb: fc.Arbitrary<Req> = fc.nat(ops.length - 1).chain((op) => {
      const o = ops[op];
      const query: Record<string, fc.Arbitrary<unknown>> = {};
      for (const p of o.parameters.filter((x) => x.in === "query")) {
        query[p.name] =
          p.name === "project"
            ? fc.oneof(fc.constantFrom(...world.projects, "fuzz-a", "fuzz-b", "nope"), anyString)
            : valueFor(p.schema, pools);
      }
      const pathParams = o.parameters.filter((x) => x.in === "path").length;
      return fc.record({
        op: fc.constant(op),
        caller: fc.constantFrom(...CALLERS),
        pathPick: fc.array(fc.nat(200), { minLength: pathParams, maxLength: pathParams }),
        pathRandom: fc.array(fc.oneof(fc.constant(null), fc.constant(null), anyString), {
          minLength: pathParams,
          maxLength: pathParams,
        }),
        query: fc.record(query, { requiredKeys: [] }),
        body: o.body?.type === "application/json" ? valueFor(o.body.schema, pools) : fc.uint8Array({ maxLength: 2048 }),
        bodyMode: fc.nat(19),
      });
    });

    const send = async (r: Req): Promise<void> => {
      const o = ops[r.op];
      const prefix = o.path.split("/").slice(0, 4).join("/");
      let i = 0;
      const path = o.path.replace(/\{[^}]+\}/g, () => {
        const k = i++;
        const random = r.pathRandom[k];
        if (random !== null) return encodePathPart(random);
        const known = world.seen.get(k === 0 ? prefix : `${prefix}/tokens`) ?? world.seen.get(prefix) ?? [];
        return encodePathPart(known.length ? known[r.pathPick[k] % known.length] : "x");
      });
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(r.query))
        if (v !== undefined) qs.set(k, typeof v === "string" ? v : JSON.stringify(v));
      const url = qs.size ? `${path}?${qs}` : path;
      let body: BodyInit | undefined;
      let type: string | undefined;
      if (o.body) {
        if (o.body.type === "application/json") {
          // Mostly JSON as declared; sometimes broken, untyped, of another type, or absent.
          const text = JSON.stringify(r.body) ?? "null";
          if (r.bodyMode === 0)
            [body, type] = [text.slice(0, Math.max(0, text.length - 1)) + "\u0000", "application/json"];
          else if (r.bodyMode === 1) [body, type] = [text, undefined];
          else if (r.bodyMode === 2) [body, type] = [text, "text/plain"];
          else if (r.bodyMode === 3) [body, type] = [undefined, "application/json"];
          else [body, type] = [text, "application/json"];
        } else {
          [body, type] = [new Blob([r.body as Uint8Array<ArrayBuffer>]), r.bodyMode === 1 ? undefined : o.body.type];
        }
      } else if (r.bodyMode === 0 && o.method !== "GET") {
        [body, type] = ['{"unexpected": true}', "application/json"];
      }
      const res = await call(o.method, url, world.tokens[r.caller] ?? null, body, type);
      const what = `${o.method} ${url.slice(0, 200)} as ${r.caller}`;
      if (res.status >= 500)
        throw new FuzzFailure(`${what} answered ${res.status}: ${(await res.text()).slice(0, 500)}`);
      must(String(res.status) in o.responses, `${what} answered ${res.status}, which its operation does not document`);
      if (res.status === 204) return;
      const documented = o.responses[String(res.status)]?.content;
      const ctype = res.headers.get("content-type") ?? "";
      if (documented && !ctype.startsWith("application/json")) {
        must(
          Object.keys(documented).some((t) => ctype.startsWith(t)),
          `${what}: content type ${ctype}`,
        );
        await res.arrayBuffer();
        return;
      }
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new FuzzFailure(`${what} answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`);
      }
      if (res.status >= 400) {
        const e = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
        must(
          e && typeof e.code === "string" && typeof e.message === "string" && e.message.length > 0,
          `${what} answered ${res.status} without the error shape: ${text.slice(0, 200)}`,
        );
      } else if (res.status < 300) {
        remember(world, prefix, parsed);
        if (o.path.endsWith("/tokens") && o.method === "POST") remember(world, `${prefix}/tokens`, parsed);
      }
    };

    const property = fc.asyncProperty(
      fc.tuple(fc.array(reqArb, { minLength: 1, maxLength: 4 }), fc.boolean()),
      timedAsync(async ([reqs, together]: [Req[], boolean]) => {
        if (together) await Promise.all(reqs.map(send));
        else for (const r of reqs) await send(r);
        if (unhandled.length) throw new FuzzFailure(`unhandled rejection: ${String(unhandled.splice(0)[0])}`);
      }),
    );

    const leak = leakGuard("api", 128);
    return {
      property,
      units: () => requests,
      check: async () => {
        // Every list still answers, and each project's quota usage equals its records.
        const projects = (await asAdmin("GET", "/api/v1/projects")).items as { id: string }[];
        for (const { id } of projects) {
          const q = await asAdmin("GET", `/api/v1/projects/${id}/quotas`);
          const inst = (await asAdmin("GET", `/api/v1/instances?project=${id}`)).items as {
            diskGiB: number;
            vcpus: number;
          }[];
          const vols = (await asAdmin("GET", `/api/v1/volumes?project=${id}`)).items as { sizeGiB: number }[];
          const used = q.used as Record<string, number>;
          const disk = inst.reduce((s, x) => s + x.diskGiB, 0) + vols.reduce((s, x) => s + x.sizeGiB, 0);
          must(
            used.instances === inst.length,
            `project ${id}: quota counts ${used.instances} instances, the list ${inst.length}`,
          );
          must(used.diskGiB === disk, `project ${id}: quota counts ${used.diskGiB} GiB of disk, the records ${disk}`);
          must(
            used.vcpus === inst.reduce((s, x) => s + x.vcpus, 0),
            `project ${id}: vCPU usage differs from the records`,
          );
        }
        for (const p of ["projects", "users", "flavors", "images", "snapshots", "networks", "keypairs", "events"]) {
          await asAdmin("GET", `/api/v1/${p}`);
        }
        leak();
        await ensureTenants();
      },
      close: async () => {
        process.off("unhandledRejection", onUnhandled);
        cloud.close();
        if (prevHome === undefined) delete process.env.YUN_HOME;
        else process.env.YUN_HOME = prevHome;
        rmSync(home, { recursive: true, force: true });
      },
    };
  },
};

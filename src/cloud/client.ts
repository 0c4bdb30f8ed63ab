/**
 * The typed SDK of the Yun cloud API (docs/cloud-api.md): one method per endpoint. Uses only
 * `fetch`, so it runs in Node 20 and in the browser.
 *
 *   const yun = new YunClient({ server: "http://127.0.0.1:8470", token });
 *   const vm = await yun.createInstance({ name: "web1", image: "debian", flavor: "tiny" });
 *
 * Every refusal throws YunApiError with the HTTP status, the machine code and the server's message.
 * Path arguments take an id (`ins-…`) or a name.
 */
import type {
  AuditEvent,
  CreatedUser,
  CreateInstanceRequest,
  Flavor,
  Image,
  ImageFormat,
  Instance,
  InstanceAction,
  InstanceMetrics,
  InstanceState,
  KeyPair,
  Forward,
  CreateForwardRequest,
  List,
  NewToken,
  NewAccessKey,
  AccessKeyInfo,
  Network,
  Project,
  QuotaUsage,
  Quotas,
  Role,
  Snapshot,
  TokenInfo,
  Usage,
  User,
  Volume,
  Whoami,
} from "./types.js";
import type { Share } from "./shares/service.js";

export type * from "./types.js";

export const DEFAULT_PORT = 8470;
export const DEFAULT_SERVER = `http://127.0.0.1:${DEFAULT_PORT}`;

export class YunApiError extends Error {
  override name = "YunApiError";
  constructor(
    /** HTTP status (0: the server could not be reached). */
    readonly status: number,
    /** Machine code: invalid_request, unauthorized, forbidden, quota_exceeded, not_found, conflict, ... */
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ClientOptions {
  /** Base URL, default http://127.0.0.1:8470. */
  server?: string;
  token: string;
  /** For admins: the project every call acts in (?project=ID). */
  project?: string;
  fetch?: typeof fetch;
}

type Query = Record<string, string | number | undefined>;

export class YunClient {
  readonly server: string;
  readonly token: string;
  readonly project: string | undefined;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ClientOptions) {
    this.server = (opts.server ?? DEFAULT_SERVER).replace(/\/+$/, "");
    this.token = opts.token;
    this.project = opts.project;
    this.fetchImpl = opts.fetch ?? ((...a) => fetch(...a));
  }

  /** A client for the same server and token acting in `project` (admins). */
  inProject(project: string): YunClient {
    return new YunClient({ server: this.server, token: this.token, project, fetch: this.fetchImpl });
  }

  url(path: string, query: Query = {}): string {
    const q = new URLSearchParams();
    if (this.project !== undefined && query.project === undefined) q.set("project", this.project);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    const s = q.toString();
    return `${this.server}${path}${s ? `?${s}` : ""}`;
  }

  /** Sends one request; answers the parsed JSON (or text for non-JSON answers), throws YunApiError. */
  async request<T>(
    method: string,
    path: string,
    opts: { body?: unknown; query?: Query; raw?: BodyInit; contentType?: string } = {},
  ): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    let body: BodyInit | undefined;
    if (opts.raw !== undefined) {
      body = opts.raw;
      headers["content-type"] = opts.contentType ?? "application/octet-stream";
    } else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers["content-type"] = "application/json";
    }
    let res: Response;
    try {
      const init: RequestInit & { duplex?: string } = { method, headers, body };
      if (opts.raw !== undefined && typeof (opts.raw as ReadableStream).getReader === "function") init.duplex = "half";
      res = await this.fetchImpl(this.url(path, opts.query), init);
    } catch (e) {
      // fetch says only "fetch failed"; the cause says why (refused, unknown host, certificate).
      const cause = (e as Error & { cause?: Error }).cause;
      const why = cause?.message ? `${(e as Error).message}: ${cause.message}` : (e as Error).message;
      const hint = /certificate|self.signed|CERT/i.test(why)
        ? " (for a private CA, set NODE_EXTRA_CA_CERTS to its PEM file)"
        : "";
      throw new YunApiError(0, "unreachable", `cannot reach the Yun server at ${this.server}: ${why}${hint}`);
    }
    const text = await res.text();
    const isJson = (res.headers.get("content-type") ?? "").includes("application/json");
    if (!res.ok) {
      let code = "error";
      let message = `${method} ${path} failed with HTTP ${res.status}`;
      if (isJson) {
        try {
          const e = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
          if (e?.code) code = e.code;
          if (e?.message) message = e.message;
        } catch {}
      }
      throw new YunApiError(res.status, code, message);
    }
    if (res.status === 204 || text === "") return undefined as T;
    return (isJson ? JSON.parse(text) : text) as T;
  }

  private async items<T>(path: string, query?: Query): Promise<T[]> {
    return (await this.request<List<T>>("GET", path, { query })).items;
  }

  // ---------------------------------------------------------------------- identity and tenants

  whoami(): Promise<Whoami> {
    return this.request("GET", "/api/v1/whoami");
  }
  listProjects(): Promise<Project[]> {
    return this.items("/api/v1/projects");
  }
  createProject(req: { name: string; quotas?: Partial<Quotas> }): Promise<Project> {
    return this.request("POST", "/api/v1/projects", { body: req });
  }
  getProject(id: string): Promise<Project> {
    return this.request("GET", `/api/v1/projects/${enc(id)}`);
  }
  deleteProject(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/projects/${enc(id)}`);
  }
  getQuotas(project: string): Promise<QuotaUsage> {
    return this.request("GET", `/api/v1/projects/${enc(project)}/quotas`);
  }
  setQuotas(project: string, quotas: Partial<Quotas>): Promise<QuotaUsage> {
    return this.request("PUT", `/api/v1/projects/${enc(project)}/quotas`, { body: quotas });
  }
  listUsers(): Promise<User[]> {
    return this.items("/api/v1/users");
  }
  /** `project` (admins only): the project the user belongs to; default the caller's.
   *  `withToken`: also issue the user's first token (answered once in `token`). */
  createUser(req: { name: string; role: Role; project?: string; withToken?: boolean }): Promise<CreatedUser> {
    return this.request("POST", "/api/v1/users", { body: req });
  }
  getUser(id: string): Promise<User> {
    return this.request("GET", `/api/v1/users/${enc(id)}`);
  }
  deleteUser(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/users/${enc(id)}`);
  }
  createToken(user: string): Promise<NewToken> {
    return this.request("POST", `/api/v1/users/${enc(user)}/tokens`);
  }
  async listTokens(user: string): Promise<TokenInfo[]> {
    return (await this.request<List<TokenInfo>>("GET", `/api/v1/users/${enc(user)}/tokens`)).items;
  }
  revokeToken(user: string, tokenId: string): Promise<void> {
    return this.request("DELETE", `/api/v1/users/${enc(user)}/tokens/${enc(tokenId)}`);
  }
  /** A new object storage access key of `user` (the secret is answered only this once). */
  createAccessKey(user: string): Promise<NewAccessKey> {
    return this.request("POST", `/api/v1/users/${enc(user)}/keys`);
  }
  async listAccessKeys(user: string): Promise<AccessKeyInfo[]> {
    return (await this.request<List<AccessKeyInfo>>("GET", `/api/v1/users/${enc(user)}/keys`)).items;
  }
  deleteAccessKey(user: string, keyId: string): Promise<void> {
    return this.request("DELETE", `/api/v1/users/${enc(user)}/keys/${enc(keyId)}`);
  }

  // ---------------------------------------------------------------------------- flavors, images

  listFlavors(): Promise<Flavor[]> {
    return this.items("/api/v1/flavors");
  }
  createFlavor(req: { name: string; vcpus: number; memoryMiB: number; diskGiB: number }): Promise<Flavor> {
    return this.request("POST", "/api/v1/flavors", { body: req });
  }
  deleteFlavor(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/flavors/${enc(id)}`);
  }
  listImages(): Promise<Image[]> {
    return this.items("/api/v1/images");
  }
  getImage(id: string): Promise<Image> {
    return this.request("GET", `/api/v1/images/${enc(id)}`);
  }
  /** Uploads a disk image (the bytes, or a stream of them). */
  uploadImage(name: string, format: ImageFormat, data: BodyInit): Promise<Image> {
    return this.request("POST", "/api/v1/images", { query: { name, format }, raw: data });
  }
  deleteImage(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/images/${enc(id)}`);
  }

  // ---------------------------------------------------------------------------------- instances

  listInstances(): Promise<Instance[]> {
    return this.items("/api/v1/instances");
  }
  /** Creates an instance and (unless start: false) boots it; answers once its monitor runs. */
  createInstance(req: CreateInstanceRequest): Promise<Instance> {
    return this.request("POST", "/api/v1/instances", { body: req });
  }
  getInstance(id: string): Promise<Instance> {
    return this.request("GET", `/api/v1/instances/${enc(id)}`);
  }
  deleteInstance(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/instances/${enc(id)}`);
  }
  instanceAction(id: string, action: InstanceAction, flavor?: string): Promise<Instance> {
    return this.request("POST", `/api/v1/instances/${enc(id)}/actions`, { body: { action, flavor } });
  }
  startInstance(id: string): Promise<Instance> {
    return this.instanceAction(id, "start");
  }
  stopInstance(id: string): Promise<Instance> {
    return this.instanceAction(id, "stop");
  }
  rebootInstance(id: string): Promise<Instance> {
    return this.instanceAction(id, "reboot");
  }
  pauseInstance(id: string): Promise<Instance> {
    return this.instanceAction(id, "pause");
  }
  resumeInstance(id: string): Promise<Instance> {
    return this.instanceAction(id, "resume");
  }
  resizeInstance(id: string, flavor: string): Promise<Instance> {
    return this.instanceAction(id, "resize", flavor);
  }
  /** The monitor's counters (running or paused instances; 409 otherwise). */
  instanceMetrics(id: string): Promise<InstanceMetrics> {
    return this.request("GET", `/api/v1/instances/${enc(id)}/metrics`);
  }
  /** The last `bytes` of console output (text), without attaching. */
  consoleLog(id: string, bytes?: number): Promise<string> {
    return this.request("GET", `/api/v1/instances/${enc(id)}/console/log`, { query: { bytes } });
  }
  /**
   * The console WebSocket's URL (ws: or wss:). The token is not in it (the server refuses tokens
   * in URLs): open it with `new WebSocket(client.consoleUrl(id), client.consoleProtocols())`.
   * `piped`: the client is a script, not a terminal (the VM's monitor answers the guest's terminal
   * queries for it and holds its input until the guest's shell is ready). `display`: the graphical
   * console's WebSocket instead (RFB, security None).
   */
  consoleUrl(id: string, options: { piped?: boolean; display?: boolean } = {}): string {
    const u = new URL(this.url(`/api/v1/instances/${enc(id)}/${options.display === true ? "display" : "console"}`));
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    if (options.piped === true) u.searchParams.set("piped", "1");
    return u.toString();
  }
  /** The WebSocket subprotocols that carry the token: ["bearer.<token>"]. */
  consoleProtocols(): string[] {
    return [`bearer.${this.token}`];
  }
  /** Polls until the instance is in one of `states` (default 30 s); answers it. */
  async waitForState(id: string, states: InstanceState[], timeoutMs = 30_000): Promise<Instance> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = await this.getInstance(id);
      if (states.includes(i.state)) return i;
      if (Date.now() > deadline)
        throw new YunApiError(0, "timeout", `instance ${i.name} is still ${i.state} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  // ------------------------------------------------------------------------------------ volumes

  listVolumes(): Promise<Volume[]> {
    return this.items("/api/v1/volumes");
  }
  /** A blank volume of sizeGiB, or (with `snapshot`) a copy-on-write clone of a snapshot. */
  createVolume(req: { name: string; sizeGiB?: number; snapshot?: string }): Promise<Volume> {
    return this.request("POST", "/api/v1/volumes", { body: req });
  }
  getVolume(id: string): Promise<Volume> {
    return this.request("GET", `/api/v1/volumes/${enc(id)}`);
  }
  deleteVolume(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/volumes/${enc(id)}`);
  }
  /** Attaches to a stopped instance (it appears as the next /dev/vdX at its next start). */
  attachVolume(id: string, instance: string): Promise<Volume> {
    return this.request("POST", `/api/v1/volumes/${enc(id)}/attach`, { body: { instance } });
  }
  listShares(): Promise<Share[]> {
    return this.items("/api/v1/shares");
  }
  createShare(name: string): Promise<Share> {
    return this.request("POST", "/api/v1/shares", { body: { name } });
  }
  getShare(id: string): Promise<Share> {
    return this.request("GET", `/api/v1/shares/${enc(id)}`);
  }
  deleteShare(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/shares/${enc(id)}`);
  }
  /** Attaches a share to an instance (mounted from its next start). */
  attachShare(instance: string, share: string, readOnly = false): Promise<Share> {
    return this.request("POST", `/api/v1/instances/${enc(instance)}/shares`, { body: { share, readOnly } });
  }
  detachShare(instance: string, share: string): Promise<Share> {
    return this.request("DELETE", `/api/v1/instances/${enc(instance)}/shares/${enc(share)}`);
  }
  detachVolume(id: string): Promise<Volume> {
    return this.request("POST", `/api/v1/volumes/${enc(id)}/detach`, { body: {} });
  }
  createSnapshot(volume: string, name: string): Promise<Snapshot> {
    return this.request("POST", `/api/v1/volumes/${enc(volume)}/snapshots`, { body: { name } });
  }
  listSnapshots(): Promise<Snapshot[]> {
    return this.items("/api/v1/snapshots");
  }
  deleteSnapshot(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/snapshots/${enc(id)}`);
  }

  // ------------------------------------------------------------------------------- forwards

  listForwards(instance: string): Promise<Forward[]> {
    return this.items(`/api/v1/instances/${enc(instance)}/forwards`);
  }
  createForward(instance: string, req: CreateForwardRequest): Promise<Forward> {
    return this.request("POST", `/api/v1/instances/${enc(instance)}/forwards`, { body: req });
  }
  deleteForward(instance: string, forwardId: string): Promise<void> {
    return this.request("DELETE", `/api/v1/instances/${enc(instance)}/forwards/${enc(forwardId)}`);
  }

  // ------------------------------------------------------------------------- networks, keypairs

  listNetworks(): Promise<Network[]> {
    return this.items("/api/v1/networks");
  }
  createNetwork(req: { name: string; cidr: string }): Promise<Network> {
    return this.request("POST", "/api/v1/networks", { body: req });
  }
  getNetwork(id: string): Promise<Network> {
    return this.request("GET", `/api/v1/networks/${enc(id)}`);
  }
  deleteNetwork(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/networks/${enc(id)}`);
  }
  listKeyPairs(): Promise<KeyPair[]> {
    return this.items("/api/v1/keypairs");
  }
  createKeyPair(req: { name: string; publicKey: string }): Promise<KeyPair> {
    return this.request("POST", "/api/v1/keypairs", { body: req });
  }
  deleteKeyPair(id: string): Promise<void> {
    return this.request("DELETE", `/api/v1/keypairs/${enc(id)}`);
  }

  // ------------------------------------------------------------------------- metering and audit

  /** `from`/`to`: ISO 8601 times (default: the project's whole life until now). */
  usage(q: { from?: string; to?: string } = {}): Promise<Usage> {
    return this.request("GET", "/api/v1/usage", { query: { ...q, format: "json" } });
  }
  /** The same as CSV: one line per instance, header first. */
  usageCsv(q: { from?: string; to?: string } = {}): Promise<string> {
    return this.request("GET", "/api/v1/usage", { query: { ...q, format: "csv" } });
  }
  /** Newest first; `after`: only events with a larger id (for polling). */
  events(q: { limit?: number; after?: number } = {}): Promise<AuditEvent[]> {
    return this.items("/api/v1/events", q);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

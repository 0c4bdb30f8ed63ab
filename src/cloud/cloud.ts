/**
 * The control plane's logic, below HTTP: tenants and tokens, resources, the instance state machine,
 * quotas, metering and the audit log, all in one SQLite database (db.ts), with VMs run by a
 * ComputeDriver (compute.ts).
 *
 * Concurrency: every check-then-write (quota, name, state transition) is one BEGIN IMMEDIATE
 * transaction. Actions on one instance are also serialized in this process (withLock), because an
 * action spans a transaction, a monitor request and a second transaction.
 */
import { createHash } from "node:crypto";
import {
  chmodSync,
  createWriteStream,
  existsSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import net from "node:net";
import { pipeline } from "node:stream/promises";
import { Readable, Transform } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { createQcow2, diskInfo, openDiskImage, resizeDisk } from "../storage/image.js";
import { stableMac } from "../net/ethernet.js";
import { maxDisks } from "../vmm/virt.js";

/** Disks an instance can have, root included: every instance keeps room for a display, so a
 *  volume attached today never stops it from getting one (and the limit is one number). */
const INSTANCE_DISK_SLOTS = maxDisks(true, true, true);
import { AVAILABLE_IMAGES, findImage } from "../images/store.js";
import { DEFAULT_IMAGE } from "../images/pull.js";
import { buildExt4 } from "../images/ext4.js";
import { PRIVATE_FILE_MODE, makePrivateDir } from "../storage/private.js";
import { newId, operationId, randomB32, withoutOperation, type DB } from "./db.js";
import type { Store } from "./store/store.js";
import type { ServiceContext } from "./context.js";
import { SqliteStore } from "./store/sqlite.js";
import { intToIp, parseCidr } from "./networks/addresses.js";
import { NetworkService } from "./networks/service.js";
import { KeyPairService } from "./keypairs/service.js";
import { DEFAULT_OBJECT_QUOTA, ObjectService, objectBytesUsed } from "./objects/service.js";
import { type ComputeDriver, type LaunchSpec } from "./compute/driver.js";
import { SandboxService } from "./sandboxes/service.js";
import { processAlive as alive } from "../vmm/registry.js";
import { Meter } from "./metering/meter.js";
import { NetworkServices } from "./networks/netsvc.js";
import { ShareService, type Share } from "./shares/service.js";
import { ApiError, badRequest, conflict, forbidden, notFound, quotaExceeded, unauthorized } from "./errors.js";
import type {
  AuditEvent,
  CreateForwardRequest,
  CreateInstanceRequest,
  CreatedUser,
  Flavor,
  Forward,
  Image,
  ImageFormat,
  Instance,
  InstanceAction,
  InstanceMetrics,
  InstanceState,
  Project,
  QuotaUsage,
  Quotas,
  Role,
  Snapshot,
  Usage,
  User,
  Volume,
  Whoami,
} from "./types.js";

export const DEFAULT_QUOTAS: Quotas = {
  instances: 10,
  vcpus: 16,
  memoryMiB: 8192,
  diskGiB: 200,
  objectBytes: DEFAULT_OBJECT_QUOTA,
};
export const DEFAULT_FLAVORS = [
  { name: "tiny", vcpus: 1, memoryMiB: 128, diskGiB: 2 },
  { name: "small", vcpus: 1, memoryMiB: 256, diskGiB: 4 },
  { name: "medium", vcpus: 2, memoryMiB: 512, diskGiB: 8 },
];
const GiB = 1024 ** 3;
/** The largest image upload accepted. */
export const MAX_UPLOAD_BYTES = 64 * GiB;
/**
 * The NAT pool: every instance on user-mode networking gets an address of its own here (its VM's
 * DHCP hands it out; the gateway is 10.0.0.2, DNS 10.0.0.3). Each VM has its own NAT, so the pool
 * only keeps the addresses distinct: instances on NAT do not reach each other.
 */
const NAT_NETWORK = "10.0.0.0";
const NAT_PREFIX = 16;
/** The first address handed out (as slirp's .15). */
const NAT_FIRST = 15;
/** Port forwards one instance may have. */
export const MAX_FORWARDS_PER_INSTANCE = 16;
/** The instance metadata file in an instance's directory (yun run --metadata). */
const METADATA_FILE = "metadata.json";
/** The seed disk's file in an instance's directory. */
const SEED_DISK = "seed.ext4";

/** Who is calling. */
export interface Principal {
  userId: string;
  userName: string;
  projectId: string;
  projectName: string;
  role: Role;
  /** An admin of the admin project: may act in every project. */
  admin: boolean;
}

/** Who an audit event names: a user (id and name), or the daemon itself (SYSTEM, no id). */
export interface Actor {
  id: string | null;
  name: string;
}

/** "it cannot be started": the instance actions in refusals. */
const PAST: Record<InstanceAction, string> = {
  start: "started",
  stop: "stopped",
  reboot: "rebooted",
  pause: "paused",
  resume: "resumed",
  resize: "resized",
};

/** The system itself (reconciliation, VM exits) in the audit log. */
const SYSTEM = "system";

export interface CloudOptions {
  /** $YUN_HOME; the cloud keeps its state in HOME/cloud. */
  home: string;
  driver: ComputeDriver;
  /** Milliseconds since the epoch (injectable for metering tests). */
  now?: () => number;
  /** Metering tick (default 2000 ms; 0: none). */
  tickMs?: number;
  /**
   * The API listens beyond loopback: port forwards may then bind other host addresses than
   * 127.0.0.1 (default false: forwards are reachable from this machine only).
   */
  forwardsBeyondLoopback?: boolean;
  /** Where the records live (default: SQLite at HOME/cloud/yun.db). The cloud closes it. */
  store?: Store;
}

interface ForwardRow {
  id: string;
  instance_id: string;
  project_id: string;
  host_addr: string;
  host_port: number;
  guest_port: number;
  created_at: string;
}

/** A project's row with its object storage quota (kept in a table of its own). */
const PROJECT_SELECT =
  "SELECT *, (SELECT bytes FROM object_quotas WHERE project_id = projects.id) AS q_object_bytes FROM projects";

interface ProjectRow {
  id: string;
  name: string;
  q_instances: number;
  q_vcpus: number;
  q_memory_mib: number;
  q_disk_gib: number;
  created_at: string;
  /** From object_quotas (PROJECT_SELECT); NULL: DEFAULT_QUOTAS.objectBytes. */
  q_object_bytes: number | null;
}
interface InstanceRow {
  id: string;
  name: string;
  project_id: string;
  state: InstanceState;
  image_id: string;
  flavor_id: string;
  vcpus: number;
  memory_mib: number;
  disk_gib: number;
  network_id: string | null;
  address: string | null;
  mac: string;
  keypair_id: string | null;
  user_data: string | null;
  /** 1: a graphical display (virtio-gpu, keyboard, tablet). */
  display: number;
  error: string | null;
  pid: number | null;
  socket: string | null;
  dir: string;
  created_at: string;
  updated_at: string;
}
interface ImageRow {
  id: string;
  name: string;
  project_id: string | null;
  format: ImageFormat;
  size_bytes: number;
  source: "debian" | "upload";
  status: "available" | "error";
  path: string;
  kernel: string | null;
  initrd: string | null;
  firmware: string | null;
  created_at: string;
}
interface VolumeRow {
  id: string;
  name: string;
  project_id: string;
  size_gib: number;
  instance_id: string | null;
  attached_at: number | null;
  snapshot_id: string | null;
  path: string;
  created_at: string;
}

export /** A token's id: the first 16 hex digits of its hash (the token itself is never stored). */
function tokenId(hash: string): string {
  return `tok-${hash.slice(0, 16)}`;
}

function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

export function newToken(): string {
  return `yun_${randomB32(40)}`;
}

export class Cloud implements ServiceContext {
  /** The records (SQLite, or etcd shared with other API servers). */
  readonly store: Store;
  readonly dir: string;
  readonly meter: Meter;
  readonly driver: ComputeDriver;
  /** DHCP and the gateway address of the private networks. */
  readonly netsvc: NetworkServices;
  /** The services whose logic lives in their own folder (the others are still methods here). */
  readonly networks: NetworkService;
  readonly keypairs: KeyPairService;
  /** Object storage (buckets, objects, access keys); its S3 API is objects/server.ts. */
  readonly objects: ObjectService;
  /** Sandboxes and their templates (restored from snapshots, driven through the guest agent). */
  readonly sandboxes: SandboxService;
  /** Shares: project directories instances mount over virtio-9p (shares/service.ts). */
  readonly shares: ShareService;
  readonly now: () => number;
  /** The records as SQL tables (read them here; change them in store.transact()). */
  get db(): DB {
    return this.store.db;
  }
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Instances whose VM exited while boot() was still settling them. */
  private readonly exitedDuringBoot = new Set<string>();
  private ticker: NodeJS.Timeout | null = null;
  /** The start's clean-up of image storage (settleImageStorage). */
  private readonly settled: Promise<void>;
  private closed = false;

  constructor(private readonly opts: CloudOptions) {
    this.dir = join(opts.home, "cloud");
    for (const d of ["", "instances", "images", "volumes", "snapshots"]) makePrivateDir(join(this.dir, d));
    this.store = opts.store ?? new SqliteStore(join(this.dir, "yun.db"));
    this.now = opts.now ?? Date.now;
    this.meter = new Meter(this.db, this.now);
    this.driver = opts.driver;
    this.netsvc = new NetworkServices(opts.home);
    this.networks = new NetworkService(this, this.netsvc);
    this.keypairs = new KeyPairService(this);
    this.objects = new ObjectService(this, this.meter, join(this.dir, "objects"));
    this.sandboxes = new SandboxService(this, this.driver, this.meter, opts.home, this.dir, this.now);
    this.driver.onExit = (id) => {
      if (!this.sandboxes.onExit(id)) void this.onVmExit(id);
    };
    this.shares = new ShareService(this, join(this.dir, "shares"));
    // SQLite: done before the constructor returns; etcd: bootstrap() waits for it.
    this.settled = this.settleImageStorage();
    this.settled.catch(() => undefined);

    const tick = opts.tickMs ?? 2000;
    if (tick > 0) {
      this.ticker = setInterval(() => {
        void this.store.transact(() => this.meter.tick()).catch(() => undefined);
        void this.objects.flushRequests().catch(() => undefined);
      }, tick);
      this.ticker.unref();
    }
  }

  /**
   * Uploads cut off by a daemon that died mid-stream leave `.part` files: removed. Images uploaded
   * before images were metered are metered from now on.
   */
  private async settleImageStorage(): Promise<void> {
    const dir = join(this.dir, "images");
    for (const f of readdirSync(dir)) if (f.endsWith(".part")) rmSync(join(dir, f), { force: true });
    await this.store.transact(() => {
      const rows = this.db
        .prepare("SELECT id, name, project_id, size_bytes FROM images WHERE project_id IS NOT NULL")
        .all() as { id: string; name: string; project_id: string; size_bytes: number }[];
      for (const r of rows)
        if (!this.meter.isOpen(r.id, "disk"))
          this.meter.open(r.project_id, r.id, r.name, "disk", Math.ceil(r.size_bytes / GiB));
    });
  }

  /** Now, as the records write times. */
  iso(): string {
    return new Date(this.now()).toISOString();
  }

  // ------------------------------------------------------------------------------- bootstrap

  /**
   * First start: project admin, user admin and its token (answered once, written to
   * cloud/admin.token mode 0600), default flavors. Every start: registers the debian image.
   */
  async bootstrap(): Promise<{ adminToken: string | null }> {
    await this.settled;
    let adminToken: string | null = null;
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM projects WHERE name = 'admin'").get() === undefined) {
        const pid = newId("prj");
        const q = DEFAULT_QUOTAS;
        this.db
          .prepare("INSERT INTO projects VALUES (?, 'admin', ?, ?, ?, ?, ?)")
          .run(pid, q.instances, q.vcpus, q.memoryMiB, q.diskGiB, this.iso());
        const uid = newId("usr");
        this.db.prepare("INSERT INTO users VALUES (?, 'admin', ?, 'admin', ?)").run(uid, pid, this.iso());
        adminToken = newToken();
        this.db.prepare("INSERT INTO tokens VALUES (?, ?, ?)").run(hashToken(adminToken), uid, this.iso());
        for (const f of DEFAULT_FLAVORS) {
          this.db
            .prepare("INSERT OR IGNORE INTO flavors VALUES (?, ?, ?, ?, ?, ?)")
            .run(newId("flv"), f.name, f.vcpus, f.memoryMiB, f.diskGiB, this.iso());
        }
      }
    });
    if (adminToken !== null) {
      const path = join(this.dir, "admin.token");
      writeFileSync(path, adminToken + "\n", { mode: 0o600 });
      chmodSync(path, 0o600);
    }
    await this.syncPublicImages();
    return { adminToken };
  }

  /** Registers (or refreshes) the public images built by `yun image pull` (debian, debian-tiny). */
  async syncPublicImages(): Promise<void> {
    for (const name of AVAILABLE_IMAGES) {
      const info = findImage(name);
      if (!info) continue;
      await this.store.transact(() => {
        const row = this.db.prepare("SELECT * FROM images WHERE project_id IS NULL AND name = ?").get(name) as
          ImageRow | undefined;
        if (row === undefined) {
          this.db
            .prepare("INSERT INTO images VALUES (?, ?, NULL, 'raw', ?, 'debian', 'available', ?, ?, ?, ?, ?)")
            .run(
              newId("img"),
              name,
              statSync(info.rootDisk).size,
              info.rootDisk,
              info.kernel,
              info.initrd,
              info.firmware.dynamic,
              this.iso(),
            );
        } else if (row.path !== info.rootDisk || row.kernel !== info.kernel) {
          this.db
            .prepare("UPDATE images SET path = ?, kernel = ?, initrd = ?, firmware = ?, size_bytes = ? WHERE id = ?")
            .run(info.rootDisk, info.kernel, info.initrd, info.firmware.dynamic, statSync(info.rootDisk).size, row.id);
        }
      });
    }
  }

  // ------------------------------------------------------------------------------------ auth

  authenticate(header: string | undefined | null): Principal {
    if (!header) throw unauthorized("this request needs a token: send Authorization: Bearer <token>");
    const m = /^Bearer\s+(\S+)$/i.exec(header.trim());
    if (!m) throw unauthorized('the Authorization header must be "Bearer <token>"');
    return this.principalForToken(m[1]);
  }

  principalForToken(token: string): Principal {
    const row = this.db
      .prepare(
        `SELECT u.id AS userId, u.name AS userName, u.role AS role, p.id AS projectId, p.name AS projectName
         FROM tokens t JOIN users u ON u.id = t.user_id JOIN projects p ON p.id = u.project_id WHERE t.hash = ?`,
      )
      .get(hashToken(token)) as Omit<Principal, "admin"> | undefined;
    if (!row) throw unauthorized("the token is not valid (revoked, or never issued)");
    return { ...row, admin: row.role === "admin" && row.projectName === "admin" };
  }

  whoami(p: Principal): Whoami {
    return {
      user: { id: p.userId, name: p.userName },
      project: { id: p.projectId, name: p.projectName },
      role: p.role,
    };
  }

  /** The project a request acts in: the caller's, or for admins the one named by ?project= (id or name). */
  actingProject(p: Principal, query: string | undefined): string {
    if (query === undefined || query === "") return p.projectId;
    if (!p.admin) {
      if (query === p.projectId || query === p.projectName) return p.projectId;
      throw notFound(`no project ${query}`);
    }
    return this.projectRow(query).id;
  }

  /** The projects whose resources a list shows: admins without ?project= see every project. */
  listScope(p: Principal, query: string | undefined): string | null {
    if (p.admin && (query === undefined || query === "")) return null;
    return this.actingProject(p, query);
  }

  requireWrite(p: Principal): void {
    if (p.role === "reader") throw forbidden(`user ${p.userName} has role reader, which may only read`);
  }

  private requireAdmin(p: Principal): void {
    if (!p.admin) throw forbidden("only an admin of the admin project may do this");
  }

  // -------------------------------------------------------------------------------- projects

  private projectRow(idOrName: string): ProjectRow {
    const r = this.db.prepare(`${PROJECT_SELECT} WHERE id = ? OR name = ?`).get(idOrName, idOrName) as
      ProjectRow | undefined;
    if (!r) throw notFound(`no project ${idOrName}`);
    return r;
  }

  private projectView(r: ProjectRow): Project {
    return {
      id: r.id,
      name: r.name,
      quotas: {
        instances: r.q_instances,
        vcpus: r.q_vcpus,
        memoryMiB: r.q_memory_mib,
        diskGiB: r.q_disk_gib,
        objectBytes: r.q_object_bytes ?? DEFAULT_QUOTAS.objectBytes,
      },
      createdAt: r.created_at,
    };
  }

  /** A project the caller may see (its own; admins: any); 404 otherwise. */
  private visibleProject(p: Principal, idOrName: string): ProjectRow {
    const r = this.db.prepare(`${PROJECT_SELECT} WHERE id = ? OR name = ?`).get(idOrName, idOrName) as
      ProjectRow | undefined;
    if (!r || (!p.admin && r.id !== p.projectId)) throw notFound(`no project ${idOrName}`);
    return r;
  }

  listProjects(p: Principal): Project[] {
    const rows = p.admin
      ? (this.db.prepare(`${PROJECT_SELECT} ORDER BY created_at, name`).all() as ProjectRow[])
      : [this.projectRow(p.projectId)];
    return rows.map((r) => this.projectView(r));
  }

  getProject(p: Principal, id: string): Project {
    return this.projectView(this.visibleProject(p, id));
  }

  async createProject(p: Principal, req: { name: string; quotas?: Partial<Quotas> }): Promise<Project> {
    this.requireAdmin(p);
    const q = { ...DEFAULT_QUOTAS, ...req.quotas };
    const id = newId("prj");
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM projects WHERE name = ?").get(req.name))
        throw conflict(`a project named ${req.name} already exists`);
      this.db
        .prepare("INSERT INTO projects VALUES (?, ?, ?, ?, ?, ?, ?)")
        .run(id, req.name, q.instances, q.vcpus, q.memoryMiB, q.diskGiB, this.iso());
      if (req.quotas?.objectBytes !== undefined)
        this.db.prepare("INSERT INTO object_quotas VALUES (?, ?)").run(id, req.quotas.objectBytes);
    });
    return this.getProject(p, id);
  }

  async deleteProject(p: Principal, idOrName: string): Promise<void> {
    this.requireAdmin(p);
    await this.store.transact(() => {
      const r = this.projectRow(idOrName);
      if (r.name === "admin") throw conflict("the admin project cannot be deleted");
      for (const t of ["instances", "volumes", "networks", "snapshots", "images", "buckets", "sandboxes"]) {
        const n = (this.db.prepare(`SELECT count(*) AS n FROM ${t} WHERE project_id = ?`).get(r.id) as { n: number }).n;
        if (n > 0)
          throw conflict(`project ${r.name} still has ${n} ${n === 1 ? t.slice(0, -1) : t}; delete them first`);
      }
      this.db.prepare("DELETE FROM keypairs WHERE project_id = ?").run(r.id);
      this.db.prepare("DELETE FROM sandbox_templates WHERE project_id = ?").run(r.id);
      this.db.prepare("DELETE FROM tokens WHERE user_id IN (SELECT id FROM users WHERE project_id = ?)").run(r.id);
      this.db.prepare("DELETE FROM access_keys WHERE user_id IN (SELECT id FROM users WHERE project_id = ?)").run(r.id);
      this.db.prepare("DELETE FROM object_requests WHERE project_id = ?").run(r.id);
      this.db.prepare("DELETE FROM object_quotas WHERE project_id = ?").run(r.id);
      this.db.prepare("DELETE FROM users WHERE project_id = ?").run(r.id);
      this.db.prepare("DELETE FROM projects WHERE id = ?").run(r.id);
    });
  }

  private used(projectId: string): Quotas {
    const i = this.db
      .prepare(
        "SELECT count(*) AS n, ifnull(sum(vcpus), 0) AS c, ifnull(sum(memory_mib), 0) AS m, ifnull(sum(disk_gib), 0) AS d FROM instances WHERE project_id = ?",
      )
      .get(projectId) as { n: number; c: number; m: number; d: number };
    const v = this.db
      .prepare("SELECT ifnull(sum(size_gib), 0) AS d FROM volumes WHERE project_id = ?")
      .get(projectId) as { d: number };
    // Uploaded images count in whole GiB, as volumes do.
    const img = this.db
      .prepare(`SELECT ifnull(sum((size_bytes + ${GiB - 1}) / ${GiB}), 0) AS d FROM images WHERE project_id = ?`)
      .get(projectId) as { d: number };
    // Sandboxes count as instances do (paused ones too: their memory is kept on disk for them).
    const s = this.db
      .prepare(
        "SELECT count(*) AS n, ifnull(sum(vcpus), 0) AS c, ifnull(sum(memory_mib), 0) AS m FROM sandboxes WHERE project_id = ?",
      )
      .get(projectId) as { n: number; c: number; m: number };
    return {
      instances: i.n + s.n,
      vcpus: i.c + s.c,
      memoryMiB: i.m + s.m,
      diskGiB: i.d + v.d + img.d,
      objectBytes: objectBytesUsed(this.db, projectId),
    };
  }

  getQuotas(p: Principal, project: string): QuotaUsage {
    const r = this.visibleProject(p, project);
    return { ...this.projectView(r).quotas, used: this.used(r.id) };
  }

  async setQuotas(p: Principal, project: string, q: Partial<Quotas>): Promise<QuotaUsage> {
    this.requireAdmin(p);
    await this.store.transact(() => {
      const r = this.projectRow(project);
      this.db
        .prepare("UPDATE projects SET q_instances = ?, q_vcpus = ?, q_memory_mib = ?, q_disk_gib = ? WHERE id = ?")
        .run(
          q.instances ?? r.q_instances,
          q.vcpus ?? r.q_vcpus,
          q.memoryMiB ?? r.q_memory_mib,
          q.diskGiB ?? r.q_disk_gib,
          r.id,
        );
      if (q.objectBytes !== undefined)
        this.db
          .prepare(
            "INSERT INTO object_quotas VALUES (?, ?) ON CONFLICT (project_id) DO UPDATE SET bytes = excluded.bytes",
          )
          .run(r.id, q.objectBytes);
    });
    return this.getQuotas(p, project);
  }

  /** Throws quota_exceeded naming the first quota that `add` would overrun. Call inside a transaction. */
  checkQuota(projectId: string, add: Partial<Quotas>): void {
    const r = this.projectRow(projectId);
    const used = this.used(projectId);
    const limits: [keyof Quotas, number, string][] = [
      ["instances", r.q_instances, "instances"],
      ["vcpus", r.q_vcpus, "vcpus"],
      ["memoryMiB", r.q_memory_mib, "memoryMiB"],
      ["diskGiB", r.q_disk_gib, "diskGiB"],
      ["objectBytes", r.q_object_bytes ?? DEFAULT_QUOTAS.objectBytes, "objectBytes"],
    ];
    for (const [k, limit, label] of limits) {
      const a = add[k] ?? 0;
      if (a > 0 && used[k] + a > limit) {
        throw quotaExceeded(
          `quota ${label} (${limit}) exceeded: project ${r.name} uses ${used[k]} and this needs ${a} more`,
        );
      }
    }
  }

  // ----------------------------------------------------------------------------------- users

  private userView(r: { id: string; name: string; project_id: string; role: Role; created_at: string }): User {
    return { id: r.id, name: r.name, project: r.project_id, role: r.role, createdAt: r.created_at };
  }

  listUsers(p: Principal, projectQuery?: string): User[] {
    const scope = this.listScope(p, projectQuery);
    const rows = (
      scope === null
        ? this.db.prepare("SELECT * FROM users ORDER BY created_at").all()
        : this.db.prepare("SELECT * FROM users WHERE project_id = ? ORDER BY created_at").all(scope)
    ) as { id: string; name: string; project_id: string; role: Role; created_at: string }[];
    return rows.map((r) => this.userView(r));
  }

  private userRow(p: Principal, idOrName: string) {
    const r = this.db
      .prepare("SELECT * FROM users WHERE (id = ? OR (name = ? AND project_id = ?))")
      .get(idOrName, idOrName, p.projectId) as
      { id: string; name: string; project_id: string; role: Role; created_at: string } | undefined;
    if (!r || (!p.admin && r.project_id !== p.projectId)) throw notFound(`no user ${idOrName}`);
    return r;
  }

  getUser(p: Principal, id: string): User {
    return this.userView(this.userRow(p, id));
  }

  /**
   * Users and their roles are the admins' to manage: a member who could create users could not
   * give them a token (members manage only their own), and one who could delete users could
   * take other members' access away.
   */
  async createUser(
    p: Principal,
    req: { name: string; role: Role; project?: string; withToken?: boolean },
  ): Promise<CreatedUser> {
    if (!p.admin) throw forbidden("only an admin may create users");
    const projectId = req.project === undefined ? p.projectId : this.actingProject(p, req.project);
    const id = newId("usr");
    // The token (if asked for) is made in the same transaction: no user is left without the
    // token its creator was promised, and no token without its user.
    const token = req.withToken === true ? newToken() : undefined;
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM users WHERE project_id = ? AND name = ?").get(projectId, req.name))
        throw conflict(`a user named ${req.name} already exists in this project`);
      const now = this.iso();
      this.db.prepare("INSERT INTO users VALUES (?, ?, ?, ?, ?)").run(id, req.name, projectId, req.role, now);
      if (token !== undefined) this.db.prepare("INSERT INTO tokens VALUES (?, ?, ?)").run(hashToken(token), id, now);
    });
    const user = this.getUser(p, id);
    return token === undefined ? user : { ...user, token, tokenId: tokenId(hashToken(token)) };
  }

  async deleteUser(p: Principal, id: string): Promise<void> {
    const u = this.userRow(p, id);
    if (!p.admin) throw forbidden("only an admin may delete users");
    if (u.id === p.userId) throw conflict("you cannot delete yourself");
    await this.store.transact(() => {
      this.db.prepare("DELETE FROM tokens WHERE user_id = ?").run(u.id);
      this.db.prepare("DELETE FROM access_keys WHERE user_id = ?").run(u.id);
      this.db.prepare("DELETE FROM users WHERE id = ?").run(u.id);
    });
  }

  async createToken(p: Principal, userId: string): Promise<{ token: string; user: string; id: string }> {
    const u = this.tokenOwner(p, userId, "issue tokens for");
    const token = newToken();
    const hash = hashToken(token);
    await this.store.transact(() => {
      if (!this.db.prepare("SELECT 1 FROM users WHERE id = ?").get(u.id)) throw notFound(`no user ${userId}`);
      this.db.prepare("INSERT INTO tokens VALUES (?, ?, ?)").run(hash, u.id, this.iso());
    });
    return { token, user: u.id, id: tokenId(hash) };
  }

  /**
   * The user whose tokens `p` may see and manage: every user may manage their own, admins
   * everyone's. Another user of the caller's project is visible (GET /users lists them), so
   * touching their tokens is 403; a user of another project is 404 like any other resource.
   */
  private tokenOwner(p: Principal, userId: string, what: string): { id: string; name: string } {
    const u = this.userRow(p, userId);
    if (u.id !== p.userId && !p.admin)
      throw forbidden(`only an admin may ${what} another user (${u.name}); users manage their own tokens`);
    return u;
  }

  listTokens(p: Principal, userId: string): { id: string; createdAt: string }[] {
    const u = this.tokenOwner(p, userId, "list the tokens of");
    const rows = this.db
      .prepare("SELECT hash, created_at FROM tokens WHERE user_id = ? ORDER BY created_at, hash")
      .all(u.id) as { hash: string; created_at: string }[];
    return rows.map((r) => ({ id: tokenId(r.hash), createdAt: r.created_at }));
  }

  /** Revokes one token: from then on it answers 401. */
  async revokeToken(p: Principal, userId: string, id: string): Promise<void> {
    const u = this.tokenOwner(p, userId, "revoke the tokens of");
    const r = await this.store.transact(() =>
      this.db
        .prepare("DELETE FROM tokens WHERE user_id = ? AND substr(hash, 1, 16) = ?")
        .run(u.id, id.replace(/^tok-/, "")),
    );
    if (r.changes === 0) throw notFound(`no token ${id}`);
  }

  // --------------------------------------------------------------------------------- flavors

  private flavorView(r: { id: string; name: string; vcpus: number; memory_mib: number; disk_gib: number }): Flavor {
    return { id: r.id, name: r.name, vcpus: r.vcpus, memoryMiB: r.memory_mib, diskGiB: r.disk_gib };
  }

  listFlavors(): Flavor[] {
    return (this.db.prepare("SELECT * FROM flavors ORDER BY vcpus, memory_mib, name").all() as never[]).map((r) =>
      this.flavorView(r),
    );
  }

  private flavorRow(idOrName: string) {
    const r = this.db.prepare("SELECT * FROM flavors WHERE id = ? OR name = ?").get(idOrName, idOrName) as
      { id: string; name: string; vcpus: number; memory_mib: number; disk_gib: number } | undefined;
    if (!r) throw notFound(`no flavor ${idOrName} (see GET /api/v1/flavors)`);
    return r;
  }

  async createFlavor(
    p: Principal,
    req: { name: string; vcpus: number; memoryMiB: number; diskGiB: number },
  ): Promise<Flavor> {
    this.requireAdmin(p);
    const id = newId("flv");
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM flavors WHERE name = ?").get(req.name))
        throw conflict(`a flavor named ${req.name} already exists`);
      this.db
        .prepare("INSERT INTO flavors VALUES (?, ?, ?, ?, ?, ?)")
        .run(id, req.name, req.vcpus, req.memoryMiB, req.diskGiB, this.iso());
    });
    return this.flavorView(this.flavorRow(id));
  }

  async deleteFlavor(p: Principal, idOrName: string): Promise<void> {
    this.requireAdmin(p);
    await this.store.transact(() => {
      const f = this.flavorRow(idOrName);
      if (this.db.prepare("SELECT 1 FROM instances WHERE flavor_id = ?").get(f.id))
        throw conflict(`flavor ${f.name} is used by instances`);
      this.db.prepare("DELETE FROM flavors WHERE id = ?").run(f.id);
    });
  }

  // ---------------------------------------------------------------------------------- images

  private imageView(r: ImageRow): Image {
    return {
      id: r.id,
      name: r.name,
      format: r.format,
      sizeBytes: r.size_bytes,
      source: r.source,
      status: r.status,
      project: r.project_id,
      createdAt: r.created_at,
    };
  }

  async listImages(p: Principal, projectQuery?: string): Promise<Image[]> {
    await this.syncPublicImages();
    const scope = this.listScope(p, projectQuery);
    const rows = (
      scope === null
        ? this.db.prepare("SELECT * FROM images ORDER BY created_at").all()
        : this.db
            .prepare("SELECT * FROM images WHERE project_id IS NULL OR project_id = ? ORDER BY created_at")
            .all(scope)
    ) as ImageRow[];
    return rows.map((r) => this.imageView(r));
  }

  /** An image visible in `projectId` (public, or the project's own). */
  private imageRow(p: Principal, projectId: string, idOrName: string): ImageRow {
    const rows = this.db
      .prepare("SELECT * FROM images WHERE (id = ? OR name = ?) ORDER BY project_id IS NULL")
      .all(idOrName, idOrName) as ImageRow[];
    const r = rows.find((x) => x.project_id === null || x.project_id === projectId || (p.admin && x.id === idOrName));
    if (!r) {
      throw notFound(
        `no image ${idOrName}: yun image list --cloud (GET /api/v1/images) shows the images there are, and yun image pull ${AVAILABLE_IMAGES.join(" or ")} on the server adds one`,
      );
    }
    return r;
  }

  async getImage(p: Principal, id: string, projectQuery?: string): Promise<Image> {
    await this.syncPublicImages();
    return this.imageView(this.imageRow(p, this.actingProject(p, projectQuery), id));
  }

  /**
   * Stores an uploaded disk image; checks it before registering it. Its bytes count in the
   * project's disk quota (in whole GiB): an upload that cannot fit is refused from its declared
   * length, or as soon as it streams past the room left, and leaves no file behind.
   */
  async uploadImage(
    p: Principal,
    projectQuery: string | undefined,
    name: string,
    format: ImageFormat,
    body: Readable | WebReadableStream<Uint8Array> | null,
    declaredBytes?: number,
  ): Promise<Image> {
    this.requireWrite(p);
    const projectId = this.actingProject(p, projectQuery);
    if (body === null) throw badRequest("the request body must be the image's bytes");
    if (AVAILABLE_IMAGES.includes(name))
      throw conflict(`the name ${name} is reserved for the image from yun image pull ${name}`);
    if (this.db.prepare("SELECT 1 FROM images WHERE project_id = ? AND name = ?").get(projectId, name))
      throw conflict(`an image named ${name} already exists`);
    const project = this.projectRow(projectId);
    const roomGiB = Math.max(0, project.q_disk_gib - this.used(projectId).diskGiB);
    const overQuota = (bytes: number): ApiError =>
      quotaExceeded(
        `quota diskGiB (${project.q_disk_gib}) exceeded: project ${project.name} has ${roomGiB} GiB left and this image needs ${Math.ceil(bytes / GiB)}`,
      );
    const tooLarge = (): ApiError =>
      new ApiError(413, "too_large", `an uploaded image may be at most ${MAX_UPLOAD_BYTES / GiB} GiB`);
    if (declaredBytes !== undefined && declaredBytes > MAX_UPLOAD_BYTES) throw tooLarge();
    if (declaredBytes !== undefined && declaredBytes > roomGiB * GiB) throw overQuota(declaredBytes);
    const id = newId("img");
    const path = join(this.dir, "images", `${id}.${format}`);
    // Streamed under a name of its own until checked, so a cut-off upload is never an image.
    const partial = `${path}.part`;
    try {
      let received = 0;
      const limit = new Transform({
        transform(chunk: Buffer, _enc, done) {
          received += chunk.length;
          if (received > MAX_UPLOAD_BYTES) done(tooLarge());
          else if (received > roomGiB * GiB) done(overQuota(received));
          else done(null, chunk);
        },
      });
      await pipeline(
        body instanceof Readable ? body : Readable.fromWeb(body),
        limit,
        // Opened here, not by the stream: an open still pending when the pipeline fails would
        // create the file after the cleanup below removed it.
        createWriteStream("", { fd: openSync(partial, "wx", 0o600) }),
      );
      renameSync(partial, path);
      const size = statSync(path).size;
      if (size === 0) throw badRequest("the uploaded image is empty");
      if (format === "qcow2") {
        const info = diskInfo(path);
        if (info.format !== "qcow2") throw badRequest("the uploaded image is not in qcow2 format (no qcow2 header)");
        if (info.backingFile !== undefined)
          throw badRequest("an uploaded qcow2 image must not have a backing file; flatten it first");
      } else if (size % 512 !== 0) {
        throw badRequest(`a raw image's size must be a multiple of 512 bytes, got ${size}`);
      }
      openDiskImage(path, { readOnly: true, format, lock: false }).close();
      await this.store.transact(() => {
        if (this.db.prepare("SELECT 1 FROM images WHERE project_id = ? AND name = ?").get(projectId, name))
          throw conflict(`an image named ${name} already exists`);
        // Checked again: other uploads and creates may have used the room meanwhile.
        this.checkQuota(projectId, { diskGiB: Math.ceil(size / GiB) });
        this.db
          .prepare("INSERT INTO images VALUES (?, ?, ?, ?, ?, 'upload', 'available', ?, NULL, NULL, NULL, ?)")
          .run(id, name, projectId, format, size, path, this.iso());
        this.meter.open(projectId, id, name, "disk", Math.ceil(size / GiB));
      });
    } catch (e) {
      rmSync(partial, { force: true });
      rmSync(path, { force: true });
      if (e instanceof ApiError) throw e;
      throw badRequest(`the uploaded image is not a valid ${format} image: ${(e as Error).message}`);
    }
    return await this.getImage(p, id, projectId);
  }

  async deleteImage(p: Principal, id: string, projectQuery?: string): Promise<void> {
    this.requireWrite(p);
    const r = this.imageRow(p, this.actingProject(p, projectQuery), id);
    if (r.project_id === null) throw forbidden("public images cannot be deleted through the API");
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM instances WHERE image_id = ?").get(r.id))
        throw conflict(`image ${r.name} is in use by instances (their disks are copy-on-write over it)`);
      this.db.prepare("DELETE FROM images WHERE id = ?").run(r.id);
      this.meter.close(r.id, ["disk"]);
    });
    rmSync(r.path, { force: true });
  }

  // --------------------------------------------------------------------------------- tenancy

  /** The row of `table` named by id or name that the caller may see (else 404). */
  scoped<T extends { project_id: string }>(
    p: Principal,
    table: string,
    what: string,
    idOrName: string,
    projectQuery?: string,
  ): T {
    // By id: visible if it is in the caller's project (admins: any). By name: within the acting project.
    const byId = this.db.prepare(`SELECT * FROM ${table} WHERE id = ?`).get(idOrName) as T | undefined;
    if (byId && (p.admin || byId.project_id === p.projectId)) return byId;
    const project = this.actingProject(p, projectQuery);
    const byName = this.db
      .prepare(`SELECT * FROM ${table} WHERE name = ? AND project_id = ?`)
      .get(idOrName, project) as T | undefined;
    if (byName) return byName;
    throw notFound(`no ${what} ${idOrName}`);
  }

  /** The rows of `table` the caller may list, oldest first. */
  listScoped<T>(p: Principal, table: string, projectQuery?: string): T[] {
    const scope = this.listScope(p, projectQuery);
    return (
      scope === null
        ? this.db.prepare(`SELECT * FROM ${table} ORDER BY created_at, name`).all()
        : this.db.prepare(`SELECT * FROM ${table} WHERE project_id = ? ORDER BY created_at, name`).all(scope)
    ) as T[];
  }

  // ------------------------------------------------------------------------------- instances

  private instanceView(r: InstanceRow): Instance {
    const img = this.db.prepare("SELECT name FROM images WHERE id = ?").get(r.image_id) as { name: string } | undefined;
    const flv = this.db.prepare("SELECT name FROM flavors WHERE id = ?").get(r.flavor_id) as
      { name: string } | undefined;
    const net = r.network_id
      ? (this.db.prepare("SELECT name FROM networks WHERE id = ?").get(r.network_id) as { name: string } | undefined)
      : undefined;
    const key = r.keypair_id
      ? (this.db.prepare("SELECT name FROM keypairs WHERE id = ?").get(r.keypair_id) as { name: string } | undefined)
      : undefined;
    const vols = this.db.prepare("SELECT id FROM volumes WHERE instance_id = ? ORDER BY attached_at, id").all(r.id) as {
      id: string;
    }[];
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      state: r.state,
      image: img?.name ?? r.image_id,
      imageId: r.image_id,
      flavor: flv?.name ?? r.flavor_id,
      flavorId: r.flavor_id,
      vcpus: r.vcpus,
      memoryMiB: r.memory_mib,
      diskGiB: r.disk_gib,
      network: net?.name ?? null,
      networkId: r.network_id,
      addresses: r.address ? [r.address] : [],
      mac: r.mac,
      keyPair: key?.name ?? null,
      display: r.display === 1 ? "vnc" : "none",
      volumes: vols.map((v) => v.id),
      error: r.error,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }

  private instanceRow(p: Principal, idOrName: string, projectQuery?: string): InstanceRow {
    return this.scoped<InstanceRow>(p, "instances", "instance", idOrName, projectQuery);
  }

  private rowById(id: string): InstanceRow | undefined {
    return this.db.prepare("SELECT * FROM instances WHERE id = ?").get(id) as InstanceRow | undefined;
  }

  listInstances(p: Principal, projectQuery?: string): Instance[] {
    return this.listScoped<InstanceRow>(p, "instances", projectQuery).map((r) => this.instanceView(r));
  }

  getInstance(p: Principal, id: string, projectQuery?: string): Instance {
    return this.instanceView(this.instanceRow(p, id, projectQuery));
  }

  /** Serializes async work on one key (an instance id) in this process. */
  private async withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(key, settled);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === settled) this.locks.delete(key);
    }
  }

  /**
   * One state transition in one transaction: refuses (409) unless the instance is in one of `from`.
   * `also` runs inside the same transaction (metering, pid).
   */
  private async transition(
    id: string,
    from: InstanceState[],
    to: InstanceState,
    verb: string,
    also?: (r: InstanceRow) => void,
  ): Promise<InstanceRow> {
    return await this.store.transact(() => {
      const r = this.rowById(id);
      if (!r) throw notFound(`no instance ${id}`);
      if (!from.includes(r.state)) throw conflict(`instance ${r.name} is ${r.state}; it cannot be ${verb}`);
      this.db.prepare("UPDATE instances SET state = ?, updated_at = ? WHERE id = ?").run(to, this.iso(), id);
      also?.(r);
      return this.rowById(id)!;
    });
  }

  async createInstance(p: Principal, req: CreateInstanceRequest, projectQuery?: string): Promise<Instance> {
    this.requireWrite(p);
    const projectId = this.actingProject(p, projectQuery);
    const image = this.imageRow(p, projectId, req.image);
    if (image.status !== "available") throw conflict(`image ${image.name} is not available`);
    const flavor = this.flavorRow(req.flavor);
    const network =
      req.network === undefined
        ? undefined
        : this.scoped<{ id: string; project_id: string; cidr: string }>(
            p,
            "networks",
            "network",
            req.network,
            projectId,
          );
    if (network && network.project_id !== projectId) throw notFound(`no network ${req.network}`);
    const key =
      req.keyPair === undefined
        ? undefined
        : this.scoped<{ id: string; project_id: string }>(p, "keypairs", "key pair", req.keyPair, projectId);
    if (key && key.project_id !== projectId) throw notFound(`no key pair ${req.keyPair}`);
    const vols = (req.volumes ?? []).map((v) => {
      const r = this.scoped<VolumeRow>(p, "volumes", "volume", v, projectId);
      if (r.project_id !== projectId) throw notFound(`no volume ${v}`);
      return r;
    });
    if (vols.length + 1 > INSTANCE_DISK_SLOTS)
      throw badRequest(`an instance takes at most ${INSTANCE_DISK_SLOTS - 1} volumes`);
    const id = newId("ins");
    const dir = join(this.dir, "instances", id);
    const start = req.start ?? true;
    // Every NAT instance gets an SSH forward (guest port 22 on a free host port of loopback).
    const sshPort = network ? null : await this.freeHostPort("127.0.0.1");
    const now = this.now();
    const row = await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM instances WHERE project_id = ? AND name = ?").get(projectId, req.name))
        throw conflict(`an instance named ${req.name} already exists in this project`);
      this.checkQuota(projectId, {
        instances: 1,
        vcpus: flavor.vcpus,
        memoryMiB: flavor.memory_mib,
        diskGiB: flavor.disk_gib,
      });
      for (const v of vols) {
        const cur = this.db.prepare("SELECT instance_id FROM volumes WHERE id = ?").get(v.id) as
          { instance_id: string | null } | undefined;
        if (!cur) throw notFound(`no volume ${v.name}`);
        if (cur.instance_id !== null) throw conflict(`volume ${v.name} is already attached to an instance`);
      }
      const address = network ? this.allocateAddress(network.id, network.cidr) : this.allocateNatAddress();
      this.db
        .prepare(
          `INSERT INTO instances (id, name, project_id, state, image_id, flavor_id, vcpus, memory_mib, disk_gib,
           network_id, address, mac, keypair_id, user_data, display, error, pid, socket, dir, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)`,
        )
        .run(
          id,
          req.name,
          projectId,
          start ? "building" : "stopped",
          image.id,
          flavor.id,
          flavor.vcpus,
          flavor.memory_mib,
          flavor.disk_gib,
          network?.id ?? null,
          address,
          stableMac(id),
          key?.id ?? null,
          req.userData ?? null,
          req.display === "vnc" ? 1 : 0,
          dir,
          this.iso(),
          this.iso(),
        );
      let order = now;
      for (const v of vols)
        this.db.prepare("UPDATE volumes SET instance_id = ?, attached_at = ? WHERE id = ?").run(id, order++, v.id);
      if (sshPort !== null && !this.hostPortTaken(sshPort))
        this.db
          .prepare("INSERT INTO forwards VALUES (?, ?, ?, '127.0.0.1', ?, 22, ?)")
          .run(newId("fwd"), id, projectId, sshPort, this.iso());
      this.meter.open(projectId, id, req.name, "disk", flavor.disk_gib, now);
      return this.rowById(id)!;
    });
    try {
      await this.createDisks(row, image);
    } catch (e) {
      await this.setError(id, `its disk could not be created: ${(e as Error).message}`);
      return this.getInstance(p, id, projectId);
    }
    // Answered from under the lock, like the actions: a delete (by name) queued behind the boot
    // would otherwise make a successful create answer 404.
    if (start)
      return this.withLock(id, async () => {
        await this.boot(id);
        return this.getInstance(p, id, projectId);
      });
    return this.getInstance(p, id, projectId);
  }

  /** The next free address of a network (gateway .1 is the network's own). Inside a transaction. */
  private allocateAddress(networkId: string, cidr: string): string {
    const c = parseCidr(cidr);
    const used = new Set(
      (
        this.db.prepare("SELECT address FROM instances WHERE network_id = ?").all(networkId) as { address: string }[]
      ).map((r) => r.address),
    );
    const size = 2 ** (32 - c.prefix);
    for (let i = 2; i < size - 1; i++) {
      const a = intToIp(c.base + i);
      if (!used.has(a)) return a;
    }
    throw conflict(`network ${cidr} has no free address left`);
  }

  /** The next free address of the NAT pool. Inside a transaction. */
  private allocateNatAddress(): string {
    const used = new Set(
      (
        this.db.prepare("SELECT address FROM instances WHERE network_id IS NULL AND address IS NOT NULL").all() as {
          address: string;
        }[]
      ).map((r) => r.address),
    );
    const base = parseCidr(`${NAT_NETWORK}/${NAT_PREFIX}`).base;
    const size = 2 ** (32 - NAT_PREFIX);
    for (let i = NAT_FIRST; i < size - 1; i++) {
      const a = intToIp(base + i);
      if (!used.has(a)) return a;
    }
    throw conflict(`the NAT pool ${NAT_NETWORK}/${NAT_PREFIX} has no free address left`);
  }

  private hostPortTaken(port: number): boolean {
    return this.db.prepare("SELECT 1 FROM forwards WHERE host_port = ?").get(port) !== undefined;
  }

  /** A host port that nothing listens on now and no forward has. */
  private async freeHostPort(hostAddr: string): Promise<number> {
    for (let tries = 0; tries < 20; tries++) {
      const port = await new Promise<number>((resolve, reject) => {
        const s = net.createServer();
        s.once("error", reject);
        s.listen({ host: hostAddr, port: 0 }, () => {
          const p = (s.address() as net.AddressInfo).port;
          s.close(() => resolve(p));
        });
      }).catch((e: NodeJS.ErrnoException) => {
        throw badRequest(`hostAddr ${hostAddr} cannot be listened on here (${e.code ?? e.message})`);
      });
      if (!this.hostPortTaken(port)) return port;
    }
    throw conflict("no free host port was found for the forward");
  }

  /**
   * An instance's root disk (a qcow2 overlay on its image) and its seed disk if it has user data or
   * a key. `finishing` (a create cut off by a crash): a root disk that opens is kept. Answers
   * whether it created the root disk.
   */
  private async createDisks(r: InstanceRow, image: ImageRow, finishing = false): Promise<boolean> {
    makePrivateDir(r.dir);
    const root = join(r.dir, "root.qcow2");
    const create = !finishing || !diskOpens(root);
    if (create) {
      rmSync(root, { force: true }); // a half-created one
      createQcow2(root, {
        backing: { path: image.path, format: image.format },
        size: Math.max(statSync(image.path).size, r.disk_gib * GiB),
      });
    }
    // The seed is derived from the record: built again whole, since a cut-off build may look whole.
    if (r.user_data !== null || r.keypair_id !== null) await this.writeSeed(r, r.keypair_id);
    return create;
  }

  /**
   * A NoCloud-style seed disk (ext4 labelled "cidata", the instance's last disk) holding
   * meta-data, user-data and the key pair's public key as authorized_keys: the guest reads them
   * with `mount LABEL=cidata /mnt` (or the last /dev/vdX).
   */
  private async writeSeed(r: InstanceRow, keyId: string | null): Promise<void> {
    const seed = join(r.dir, "seed");
    makePrivateDir(seed);
    const key = keyId
      ? (this.db.prepare("SELECT public_key FROM keypairs WHERE id = ?").get(keyId) as
          { public_key: string } | undefined)
      : undefined;
    const mode = PRIVATE_FILE_MODE;
    // NoCloud's meta-data (YAML): cloud-init takes the keys from public-keys; the tiny image's
    // boot script reads authorized_keys.
    const keys = key ? `public-keys:\n  - ${JSON.stringify(key.public_key)}\n` : "";
    writeFileSync(join(seed, "meta-data"), `instance-id: ${r.id}\nlocal-hostname: ${r.name}\n${keys}`, { mode });
    writeFileSync(join(seed, "user-data"), r.user_data ?? "", { mode });
    if (key) writeFileSync(join(seed, "authorized_keys"), key.public_key + "\n", { mode });
    await buildExt4({ source: seed, dest: join(r.dir, SEED_DISK), sizeBytes: 16 << 20, label: "cidata" });
    chmodSync(join(r.dir, SEED_DISK), mode);
  }

  private async setError(id: string, message: string): Promise<void> {
    await this.store.transact(() => {
      const r = this.rowById(id);
      if (!r) return;
      this.db
        .prepare(
          "UPDATE instances SET state = 'error', error = ?, pid = NULL, socket = NULL, updated_at = ? WHERE id = ?",
        )
        .run(message, this.iso(), id);
      this.meter.close(id, ["cpu", "memory"]);
      this.audit(SYSTEM, r.project_id, "instance.error", id, "error", message);
    });
  }

  /** Launches the monitor of an instance in state building; leaves it running or error. Under the lock. */
  private async boot(id: string): Promise<void> {
    const r = this.rowById(id);
    if (!r || r.state !== "building") return;
    const image = this.db.prepare("SELECT * FROM images WHERE id = ?").get(r.image_id) as ImageRow | undefined;
    const boot = image?.kernel ? image : await this.bootImage();
    if (!boot?.kernel || !boot.initrd || !boot.firmware) {
      await this.setError(id, `no kernel to boot it with: run yun image pull ${DEFAULT_IMAGE} on the server`);
      return;
    }
    const disks = (
      this.db.prepare("SELECT path FROM volumes WHERE instance_id = ? ORDER BY attached_at, id").all(id) as {
        path: string;
      }[]
    ).map((v) => v.path);
    if (existsSync(join(r.dir, SEED_DISK))) disks.push(join(r.dir, SEED_DISK));
    const shares = this.shares.specsFor(id);
    // Every instance keeps room for a display (INSTANCE_DISK_SLOTS); each share takes a slot too.
    const fit = maxDisks(true, true, true, shares.length) - 1;
    if (disks.length > fit) {
      await this.setError(
        id,
        `it has ${disks.length} disks besides its root disk; at most ${fit} fit with its ${shares.length} shares`,
      );
      return;
    }
    if (r.network_id) {
      try {
        await this.serveNetwork(r.network_id);
      } catch (e) {
        await this.setError(id, `its network could not be joined: ${(e as Error).message}`);
        return;
      }
    }
    let netSpec: LaunchSpec["net"];
    try {
      netSpec = r.network_id
        ? { kind: "switch", name: r.network_id, metadata: this.writeMetadata(r, r.address ?? "") }
        : await this.natLaunch(r);
    } catch (e) {
      await this.setError(id, `its metadata could not be written: ${(e as Error).message}`);
      return;
    }
    const spec: LaunchSpec = {
      id,
      vcpus: r.vcpus,
      memoryMiB: r.memory_mib,
      rootDisk: join(r.dir, "root.qcow2"),
      disks,
      net: netSpec,
      mac: r.mac,
      display: r.display === 1,
      kernel: boot.kernel,
      initrd: boot.initrd,
      firmware: boot.firmware,
      image: image && image.project_id === null && image.source === "debian" ? image.name : undefined,
      dir: r.dir,
      shares,
    };
    this.exitedDuringBoot.delete(id);
    try {
      await this.driver.launch(spec, (pid, socket) => {
        this.db.prepare("UPDATE instances SET pid = ?, socket = ? WHERE id = ?").run(pid, socket, id);
      });
    } catch (e) {
      await this.setError(id, (e as Error).message);
      return;
    }
    let stale = false;
    await this.store.transact(() => {
      const cur = this.rowById(id);
      if (!cur || cur.state !== "building") {
        stale = true;
        return;
      }
      this.db
        .prepare("UPDATE instances SET state = 'running', error = NULL, updated_at = ? WHERE id = ?")
        .run(this.iso(), id);
      this.openRunMeters(cur);
    });
    if (stale) await this.driver.stop(id, this.rowById(id)?.pid ?? null);
    else if (this.exitedDuringBoot.delete(id)) await this.markStopped(id, "its VM exited right after it started");
  }

  /**
   * What a NAT instance's VM needs: its address (given one from the pool if it has none), its
   * metadata file (written owner-only from the record) and its forwards.
   */
  private async natLaunch(r: InstanceRow): Promise<LaunchSpec["net"]> {
    const address = await this.store.transact(() => {
      const cur = this.rowById(r.id);
      if (cur?.address) return cur.address;
      const a = this.allocateNatAddress();
      this.db.prepare("UPDATE instances SET address = ? WHERE id = ?").run(a, r.id);
      return a;
    });
    const path = this.writeMetadata(r, address);
    const publish = (
      this.db.prepare("SELECT * FROM forwards WHERE instance_id = ? ORDER BY created_at, id").all(r.id) as ForwardRow[]
    ).map((f) => ({ hostAddr: f.host_addr, hostPort: f.host_port, guestPort: f.guest_port }));
    return { kind: "user", address: `${address}/${NAT_PREFIX}`, metadata: path, publish };
  }

  /** Writes the instance's metadata file (owner-only) from its record; answers its path. */
  private writeMetadata(r: InstanceRow, address: string): string {
    const key = r.keypair_id
      ? (this.db.prepare("SELECT name, public_key FROM keypairs WHERE id = ?").get(r.keypair_id) as
          { name: string; public_key: string } | undefined)
      : undefined;
    const flavor = this.db.prepare("SELECT name FROM flavors WHERE id = ?").get(r.flavor_id) as
      { name: string } | undefined;
    const metadata = {
      instanceId: r.id,
      name: r.name,
      hostname: r.name,
      publicKeys: key ? { [key.name]: key.public_key } : {},
      userData: r.user_data,
      address,
      mac: r.mac,
      projectId: r.project_id,
      flavor: flavor?.name,
      imageId: r.image_id,
    };
    const path = join(r.dir, METADATA_FILE);
    writeFileSync(path, JSON.stringify(metadata) + "\n", { mode: PRIVATE_FILE_MODE });
    chmodSync(path, PRIVATE_FILE_MODE);
    return path;
  }

  // -------------------------------------------------------------------------------- forwards

  private forwardView(f: ForwardRow): Forward {
    return {
      id: f.id,
      instance: f.instance_id,
      project: f.project_id,
      hostAddr: f.host_addr,
      hostPort: f.host_port,
      guestPort: f.guest_port,
      createdAt: f.created_at,
    };
  }

  listForwards(p: Principal, idOrName: string, projectQuery?: string): Forward[] {
    const r = this.instanceRow(p, idOrName, projectQuery);
    return (
      this.db.prepare("SELECT * FROM forwards WHERE instance_id = ? ORDER BY created_at, id").all(r.id) as ForwardRow[]
    ).map((f) => this.forwardView(f));
  }

  /**
   * Adds a port forward to an instance on NAT: recorded, and published at once if its VM runs
   * (otherwise when it starts). A host port taken (by another forward, or by anything listening on
   * this machine) is a 409.
   */
  async createForward(
    p: Principal,
    idOrName: string,
    req: CreateForwardRequest,
    projectQuery?: string,
  ): Promise<Forward> {
    this.requireWrite(p);
    const found = this.instanceRow(p, idOrName, projectQuery);
    const hostAddr = req.hostAddr ?? "127.0.0.1";
    if (hostAddr !== "127.0.0.1") {
      if (!this.opts.forwardsBeyondLoopback)
        throw badRequest(
          `hostAddr ${hostAddr}: this server listens on loopback only, so forwards bind 127.0.0.1 (yun serve --listen to open them wider)`,
        );
      try {
        parseCidr(`${hostAddr}/32`);
      } catch {
        throw badRequest(`hostAddr ${hostAddr} is not an IPv4 address`);
      }
    }
    if (found.network_id) {
      throw conflict(`instance ${found.name} is on a private network; port forwards need user-mode NAT`);
    }
    let hostPort = req.hostPort ?? 0;
    if (hostPort === 0) hostPort = await this.freeHostPort(hostAddr);
    const id = newId("fwd");
    await this.operationOn(found.id);
    return this.withLock(found.id, async () => {
      await this.store.transact(() => {
        const r = this.rowById(found.id);
        if (!r || r.state === "deleting") throw notFound(`no instance ${found.name}`);
        const n = (
          this.db.prepare("SELECT count(*) AS n FROM forwards WHERE instance_id = ?").get(r.id) as { n: number }
        ).n;
        if (n >= MAX_FORWARDS_PER_INSTANCE)
          throw quotaExceeded(`instance ${r.name} has ${n} port forwards; at most ${MAX_FORWARDS_PER_INSTANCE}`);
        if (this.hostPortTaken(hostPort)) throw conflict(`host port ${hostPort} is already forwarded`);
        this.db
          .prepare("INSERT INTO forwards VALUES (?, ?, ?, ?, ?, ?, ?)")
          .run(id, r.id, r.project_id, hostAddr, hostPort, req.guestPort, this.iso());
      });
      const r = this.rowById(found.id)!;
      if (r.state === "running" || r.state === "paused") {
        try {
          await this.driver.control(r.id, "forward-add", { hostAddr, hostPort, guestPort: req.guestPort });
        } catch (e) {
          await this.store.transact(() => this.db.prepare("DELETE FROM forwards WHERE id = ?").run(id));
          throw conflict(`the forward could not be published: ${(e as Error).message}`);
        }
      }
      return this.forwardView(this.db.prepare("SELECT * FROM forwards WHERE id = ?").get(id) as ForwardRow);
    });
  }

  /** Removes a port forward; a running VM stops publishing it at once. */
  async deleteForward(p: Principal, idOrName: string, forwardId: string, projectQuery?: string): Promise<void> {
    this.requireWrite(p);
    const found = this.instanceRow(p, idOrName, projectQuery);
    await this.withLock(found.id, async () => {
      const f = this.db.prepare("SELECT * FROM forwards WHERE id = ? AND instance_id = ?").get(forwardId, found.id) as
        ForwardRow | undefined;
      if (!f) throw notFound(`instance ${found.name} has no forward ${forwardId}`);
      await this.store.transact(() => this.db.prepare("DELETE FROM forwards WHERE id = ?").run(f.id));
      const r = this.rowById(found.id);
      if (r && (r.state === "running" || r.state === "paused")) {
        await this.driver
          .control(r.id, "forward-remove", { hostAddr: f.host_addr, hostPort: f.host_port })
          .catch(() => {}); // not published (any more): nothing to take back
      }
    });
  }

  /** Starts (or refreshes) DHCP on a network: every instance's MAC gets its assigned address. */
  private async serveNetwork(networkId: string): Promise<void> {
    const n = this.db.prepare("SELECT cidr FROM networks WHERE id = ?").get(networkId) as { cidr: string } | undefined;
    if (!n) return;
    const leases = new Map<string, number>();
    for (const r of this.db.prepare("SELECT mac, address FROM instances WHERE network_id = ?").all(networkId) as {
      mac: string;
      address: string;
    }[]) {
      leases.set(r.mac, parseCidr(`${r.address}/32`).base);
    }
    await this.netsvc.serve(networkId, parseCidr(n.cidr), leases);
  }

  private openRunMeters(r: InstanceRow, memory = true): void {
    const at = this.now();
    this.meter.open(r.project_id, r.id, r.name, "cpu", r.vcpus, at);
    if (memory && !this.meter.isOpen(r.id, "memory"))
      this.meter.open(r.project_id, r.id, r.name, "memory", r.memory_mib / 1024, at);
  }

  private async bootImage(): Promise<ImageRow | undefined> {
    await this.syncPublicImages();
    return this.db.prepare("SELECT * FROM images WHERE project_id IS NULL AND name = ?").get(DEFAULT_IMAGE) as
      ImageRow | undefined;
  }

  async instanceAction(
    p: Principal,
    idOrName: string,
    action: InstanceAction,
    flavorName: string | undefined,
    projectQuery?: string,
  ): Promise<Instance> {
    this.requireWrite(p);
    const found = this.instanceRow(p, idOrName, projectQuery);
    const id = found.id;
    await this.operationOn(id);
    // The answer is read under the lock too: read after it, a delete queued behind this action
    // could already have moved the instance to deleting (the action would answer 200 "deleting").
    return this.withLock(id, async () => {
      // A delete that took the lock first leaves the instance deleting or gone: this action lost
      // the race (409), whatever state the instance had when the request arrived.
      const cur = this.rowById(id);
      if (!cur || cur.state === "deleting")
        throw conflict(`instance ${found.name} ${cur ? "is being" : "was"} deleted; it cannot be ${PAST[action]}`);
      switch (action) {
        case "start":
          await this.transition(id, ["stopped", "error"], "building", "started", () =>
            this.db.prepare("UPDATE instances SET error = NULL WHERE id = ?").run(id),
          );
          await this.boot(id);
          break;
        case "stop": {
          const r = await this.transition(id, ["running", "paused"], "stopping", "stopped");
          await this.driver.stop(id, r.pid);
          await this.markStopped(id);
          break;
        }
        case "pause": {
          this.checkState(id, ["running"], "paused");
          await this.monitor(id, "pause");
          await this.transition(id, ["running"], "paused", "paused", () => this.meter.close(id, ["cpu"]));
          break;
        }
        case "resume": {
          this.checkState(id, ["paused"], "resumed");
          await this.monitor(id, "resume");
          await this.transition(id, ["paused"], "running", "resumed", (r) => this.openRunMeters(r, false));
          break;
        }
        case "reboot":
          this.checkState(id, ["running"], "rebooted");
          await this.monitor(id, "reset");
          break;
        case "resize":
          await this.resize(id, flavorName);
          break;
      }
      return this.getInstance(p, id);
    });
  }

  private checkState(id: string, from: InstanceState[], verb: string): InstanceRow {
    const r = this.rowById(id);
    if (!r) throw notFound(`no instance ${id}`);
    if (!from.includes(r.state)) throw conflict(`instance ${r.name} is ${r.state}; it cannot be ${verb}`);
    return r;
  }

  private async monitor<T = Record<string, unknown>>(
    id: string,
    op: string,
    args?: Record<string, unknown>,
  ): Promise<T> {
    try {
      return await this.driver.control<T>(id, op, args);
    } catch (e) {
      throw new ApiError(
        409,
        "conflict",
        `the VM of instance ${this.rowById(id)?.name ?? id} refused ${op}: ${(e as Error).message}`,
      );
    }
  }

  private async resize(id: string, flavorName: string | undefined): Promise<void> {
    if (flavorName === undefined) throw badRequest("flavor: resize needs the new flavor");
    const f = this.flavorRow(flavorName);
    const r = this.checkState(id, ["stopped"], "resized (stop it first)");
    if (f.disk_gib < r.disk_gib)
      throw conflict(
        `flavor ${f.name} has a smaller disk (${f.disk_gib} GiB) than instance ${r.name} (${r.disk_gib} GiB); disks only grow`,
      );
    await this.store.transact(() => {
      const cur = this.checkState(id, ["stopped"], "resized (stop it first)");
      this.checkQuota(cur.project_id, {
        vcpus: f.vcpus - cur.vcpus,
        memoryMiB: f.memory_mib - cur.memory_mib,
        diskGiB: f.disk_gib - cur.disk_gib,
      });
      this.db
        .prepare(
          "UPDATE instances SET flavor_id = ?, vcpus = ?, memory_mib = ?, disk_gib = ?, updated_at = ? WHERE id = ?",
        )
        .run(f.id, f.vcpus, f.memory_mib, f.disk_gib, this.iso(), id);
      if (f.disk_gib !== cur.disk_gib) {
        this.meter.close(id, ["disk"]);
        this.meter.open(cur.project_id, id, cur.name, "disk", f.disk_gib);
      }
    });
    const disk = join(r.dir, "root.qcow2");
    if (statSync(disk).isFile() && f.disk_gib * GiB > diskInfo(disk).virtualSize) resizeDisk(disk, f.disk_gib * GiB);
  }

  /** running/paused/stopping/building → stopped, meters closed, pid cleared; `event`: audited with it. */
  private async markStopped(id: string, why?: string, event?: { action: string; message: string }): Promise<boolean> {
    let changed = false;
    await this.store.transact(() => {
      const r = this.rowById(id);
      if (!r || !["running", "paused", "stopping", "building"].includes(r.state)) return;
      this.db
        .prepare(
          "UPDATE instances SET state = 'stopped', pid = NULL, socket = NULL, error = ?, updated_at = ? WHERE id = ?",
        )
        .run(why ?? null, this.iso(), id);
      this.meter.close(id, ["cpu", "memory"]);
      if (event) this.audit(SYSTEM, r.project_id, event.action, id, "ok", event.message);
      changed = true;
    });
    return changed;
  }

  /** A monitor's watch connection ended: the VM exited (guest power-off, crash or kill). */
  private async onVmExit(id: string): Promise<void> {
    if (this.closed) return;
    const r = this.rowById(id);
    if (!r || r.state === "stopping" || r.state === "deleting") return;
    if (r.state === "building") {
      // Its boot() is still between launch and the running transition: it settles this.
      this.exitedDuringBoot.add(id);
      return;
    }
    await this.markStopped(id, undefined, { action: "instance.exited", message: "the VM exited" });
  }

  async deleteInstance(p: Principal, idOrName: string, projectQuery?: string): Promise<void> {
    this.requireWrite(p);
    const id = this.instanceRow(p, idOrName, projectQuery).id;
    await this.operationOn(id);
    await this.withLock(id, async () => {
      const r = await this.transition(
        id,
        ["building", "running", "paused", "stopping", "stopped", "error", "deleting"],
        "deleting",
        "deleted",
      );
      if (r.pid !== null) await this.driver.stop(id, r.pid);
      await this.store.transact(() => {
        this.db.prepare("UPDATE volumes SET instance_id = NULL, attached_at = NULL WHERE instance_id = ?").run(id);
        this.meter.close(id, ["cpu", "memory", "disk"]);
        this.db.prepare("DELETE FROM forwards WHERE instance_id = ?").run(id);
        this.db.prepare("DELETE FROM instances WHERE id = ?").run(id);
      });
      rmSync(r.dir, { recursive: true, force: true });
    });
  }

  async instanceMetrics(p: Principal, idOrName: string, projectQuery?: string): Promise<InstanceMetrics> {
    const r = this.instanceRow(p, idOrName, projectQuery);
    if (r.state !== "running" && r.state !== "paused")
      throw conflict(`instance ${r.name} is ${r.state}; metrics come from a running VM`);
    const m = await this.monitor<Omit<InstanceMetrics, "at" | "state">>(r.id, "metrics");
    return {
      at: this.iso(),
      state: r.state,
      instret: m.instret,
      cpuSeconds: m.cpuSeconds,
      idleSeconds: m.idleSeconds,
      uptimeSeconds: m.uptimeSeconds,
      blk: m.blk ?? [],
      net: m.net ?? null,
    };
  }

  /** Checks the caller may use the console of an instance; answers its id. */
  consoleTarget(p: Principal, idOrName: string, projectQuery?: string): string {
    const r = this.instanceRow(p, idOrName, projectQuery);
    this.requireWrite(p);
    if (r.state !== "running" && r.state !== "paused")
      throw conflict(`instance ${r.name} is ${r.state}; its console is there while it runs`);
    return r.id;
  }

  /** Checks the caller may use the graphical console of an instance; answers its id. */
  displayTarget(p: Principal, idOrName: string, projectQuery?: string): string {
    const r = this.instanceRow(p, idOrName, projectQuery);
    this.requireWrite(p);
    if (r.display !== 1) throw conflict(`instance ${r.name} has no display (create it with display "vnc")`);
    if (r.state !== "running" && r.state !== "paused")
      throw conflict(`instance ${r.name} is ${r.state}; its display is there while it runs`);
    return r.id;
  }

  /** The last `bytes` of console output. */
  async consoleLog(p: Principal, idOrName: string, bytes: number, projectQuery?: string): Promise<string> {
    const r = this.instanceRow(p, idOrName, projectQuery);
    if (r.state !== "running" && r.state !== "paused")
      throw conflict(`instance ${r.name} is ${r.state}; its console is there while it runs`);
    const { socket, rest } = await this.driver.console(r.id, true).catch((e: Error) => {
      throw conflict(`the console of instance ${r.name} is not available: ${e.message}`);
    });
    const chunks: Buffer[] = [rest];
    await new Promise<void>((resolve) => {
      socket.on("data", (c: Buffer) => chunks.push(c));
      socket.on("close", () => resolve());
      socket.resume();
      setTimeout(() => {
        socket.destroy();
        resolve();
      }, 300);
    });
    const all = Buffer.concat(chunks);
    return all.subarray(Math.max(0, all.length - bytes)).toString("utf8");
  }

  // --------------------------------------------------------------------------------- volumes

  private volumeView(r: VolumeRow): Volume {
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      sizeGiB: r.size_gib,
      state: r.instance_id ? "in-use" : "available",
      instance: r.instance_id,
      snapshot: r.snapshot_id,
      createdAt: r.created_at,
    };
  }

  listVolumes(p: Principal, projectQuery?: string): Volume[] {
    return this.listScoped<VolumeRow>(p, "volumes", projectQuery).map((r) => this.volumeView(r));
  }

  getVolume(p: Principal, id: string, projectQuery?: string): Volume {
    return this.volumeView(this.scoped<VolumeRow>(p, "volumes", "volume", id, projectQuery));
  }

  async createVolume(
    p: Principal,
    req: { name: string; sizeGiB?: number; snapshot?: string },
    projectQuery?: string,
  ): Promise<Volume> {
    this.requireWrite(p);
    const projectId = this.actingProject(p, projectQuery);
    const snap = req.snapshot
      ? this.scoped<{ id: string; project_id: string; size_gib: number; path: string }>(
          p,
          "snapshots",
          "snapshot",
          req.snapshot,
          projectId,
        )
      : undefined;
    if (snap && snap.project_id !== projectId) throw notFound(`no snapshot ${req.snapshot}`);
    const size = req.sizeGiB ?? snap?.size_gib;
    if (size === undefined) throw badRequest("sizeGiB: a volume needs a size (or a snapshot to copy)");
    if (snap && size < snap.size_gib) throw badRequest(`sizeGiB: at least the snapshot's ${snap.size_gib} GiB`);
    const id = newId("vol");
    const path = join(this.dir, "volumes", `${id}.qcow2`);
    await this.store.transact(() => {
      if (this.db.prepare("SELECT 1 FROM volumes WHERE project_id = ? AND name = ?").get(projectId, req.name))
        throw conflict(`a volume named ${req.name} already exists`);
      this.checkQuota(projectId, { diskGiB: size });
      createQcow2(
        path,
        snap ? { backing: { path: snap.path, format: "qcow2" }, size: size * GiB } : { size: size * GiB },
      );
      this.db
        .prepare("INSERT INTO volumes VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?)")
        .run(id, req.name, projectId, size, snap?.id ?? null, path, this.iso());
      this.meter.open(projectId, id, req.name, "disk", size);
    });
    return this.getVolume(p, id, projectId);
  }

  async deleteVolume(p: Principal, id: string, projectQuery?: string): Promise<void> {
    this.requireWrite(p);
    const v = this.scoped<VolumeRow>(p, "volumes", "volume", id, projectQuery);
    await this.operationOn(v.id);
    await this.store.transact(() => {
      const cur = this.db.prepare("SELECT instance_id FROM volumes WHERE id = ?").get(v.id) as {
        instance_id: string | null;
      };
      if (cur.instance_id) throw conflict(`volume ${v.name} is attached to an instance; detach it first`);
      this.db.prepare("DELETE FROM volumes WHERE id = ?").run(v.id);
      this.meter.close(v.id, ["disk"]);
    });
    rmSync(v.path, { force: true });
  }

  async attachVolume(p: Principal, id: string, instance: string, projectQuery?: string): Promise<Volume> {
    this.requireWrite(p);
    const v = this.scoped<VolumeRow>(p, "volumes", "volume", id, projectQuery);
    await this.operationOn(v.id);
    const i = this.instanceRow(p, instance, v.project_id);
    if (i.project_id !== v.project_id) throw notFound(`no instance ${instance}`);
    await this.store.transact(() => {
      const cur = this.db.prepare("SELECT * FROM volumes WHERE id = ?").get(v.id) as VolumeRow;
      if (cur.instance_id === i.id) return;
      if (cur.instance_id) throw conflict(`volume ${v.name} is already attached to another instance`);
      const inst = this.checkState(
        i.id,
        ["stopped", "error"],
        "given a volume while it runs (stop it first; volumes attach at boot)",
      );
      const n = (this.db.prepare("SELECT count(*) AS n FROM volumes WHERE instance_id = ?").get(i.id) as { n: number })
        .n;
      if (n + 2 > INSTANCE_DISK_SLOTS) throw conflict(`instance ${inst.name} has the most volumes it can take (${n})`);
      this.db.prepare("UPDATE volumes SET instance_id = ?, attached_at = ? WHERE id = ?").run(i.id, this.now(), v.id);
    });
    return this.getVolume(p, v.id);
  }

  /** Attaches a share of the instance's project; the VM mounts it from its next start. */
  attachShare(p: Principal, instance: string, share: string, readOnly: boolean, projectQuery?: string): Promise<Share> {
    return this.shares.attach(p, this.instanceRow(p, instance, projectQuery), share, readOnly);
  }

  detachShare(p: Principal, instance: string, share: string, projectQuery?: string): Promise<Share> {
    return this.shares.detach(p, this.instanceRow(p, instance, projectQuery), share);
  }

  async detachVolume(p: Principal, id: string, projectQuery?: string): Promise<Volume> {
    this.requireWrite(p);
    const v = this.scoped<VolumeRow>(p, "volumes", "volume", id, projectQuery);
    await this.operationOn(v.id);
    await this.store.transact(() => {
      const cur = this.db.prepare("SELECT * FROM volumes WHERE id = ?").get(v.id) as VolumeRow;
      if (!cur.instance_id) throw conflict(`volume ${v.name} is not attached`);
      this.checkState(cur.instance_id, ["stopped", "error"], "lose a volume while it runs (stop it first)");
      this.db.prepare("UPDATE volumes SET instance_id = NULL, attached_at = NULL WHERE id = ?").run(v.id);
    });
    return this.getVolume(p, v.id);
  }

  private snapshotView(r: {
    id: string;
    name: string;
    project_id: string;
    volume_id: string;
    size_gib: number;
    created_at: string;
  }): Snapshot {
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      volume: r.volume_id,
      sizeGiB: r.size_gib,
      createdAt: r.created_at,
    };
  }

  listSnapshots(p: Principal, projectQuery?: string): Snapshot[] {
    return this.listScoped<never>(p, "snapshots", projectQuery).map((r) => this.snapshotView(r));
  }

  /**
   * Copy-on-write snapshot: the volume's current file becomes the (read-only) snapshot, and the
   * volume continues as a new qcow2 overlay on it. Refused while the volume's instance runs.
   */
  async createSnapshot(p: Principal, volume: string, name: string, projectQuery?: string): Promise<Snapshot> {
    this.requireWrite(p);
    const v = this.scoped<VolumeRow>(p, "volumes", "volume", volume, projectQuery);
    await this.operationOn(v.id);
    const id = newId("snp");
    const snapPath = join(this.dir, "snapshots", `${id}.qcow2`);
    // Recorded before the files move, so that a crash in between is rolled back (recoverOperations).
    await this.noteIntent({ snapshot: snapPath, volume: v.path });
    await this.store.transact(() => {
      const cur = this.db.prepare("SELECT * FROM volumes WHERE id = ?").get(v.id) as VolumeRow;
      if (cur.instance_id) {
        const i = this.rowById(cur.instance_id);
        if (i && !["stopped", "error"].includes(i.state))
          throw conflict(`volume ${v.name} is in use by running instance ${i.name}; stop it to take a snapshot`);
      }
      if (this.db.prepare("SELECT 1 FROM snapshots WHERE project_id = ? AND name = ?").get(v.project_id, name))
        throw conflict(`a snapshot named ${name} already exists`);
      renameSync(cur.path, snapPath);
      try {
        createQcow2(cur.path, { backing: { path: snapPath, format: "qcow2" } });
      } catch (e) {
        renameSync(snapPath, cur.path);
        throw e;
      }
      this.db
        .prepare("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)")
        .run(id, name, v.project_id, v.id, cur.size_gib, snapPath, this.iso());
    });
    return this.snapshotView(this.scoped(p, "snapshots", "snapshot", id));
  }

  async deleteSnapshot(p: Principal, id: string, projectQuery?: string): Promise<void> {
    this.requireWrite(p);
    const s = this.scoped<{ id: string; name: string; project_id: string; path: string }>(
      p,
      "snapshots",
      "snapshot",
      id,
      projectQuery,
    );
    await this.operationOn(s.id);
    // Refused while any disk's backing chain goes through it.
    const disks = [
      ...(this.db.prepare("SELECT name, path FROM volumes").all() as { name: string; path: string }[]).map((v) => ({
        what: `volume ${v.name}`,
        path: v.path,
      })),
      ...(
        this.db.prepare("SELECT name, path FROM snapshots WHERE id != ?").all(s.id) as { name: string; path: string }[]
      ).map((v) => ({ what: `snapshot ${v.name}`, path: v.path })),
    ];
    for (const d of disks) {
      try {
        if (diskInfo(d.path).backingChain.some((b) => b.path === s.path))
          throw conflict(`snapshot ${s.name} is the base of ${d.what} (copy-on-write); delete that first`);
      } catch (e) {
        if (e instanceof ApiError) throw e;
      }
    }
    await this.store.transact(() => this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(s.id));
    rmSync(s.path, { force: true });
  }

  // ---------------------------------------------------------------------- usage and audit

  usage(p: Principal, q: { from?: string; to?: string }, projectQuery?: string): Usage {
    const projectId = this.actingProject(p, projectQuery);
    const created = Date.parse(this.projectRow(projectId).created_at);
    const from = q.from !== undefined ? Date.parse(q.from) : created;
    const to = q.to !== undefined ? Date.parse(q.to) : this.now();
    if (Number.isNaN(from)) throw badRequest(`from: "${q.from}" is not an ISO 8601 time`);
    if (Number.isNaN(to)) throw badRequest(`to: "${q.to}" is not an ISO 8601 time`);
    if (to < from) throw badRequest("to is before from");
    return this.meter.usage(projectId, from, to);
  }

  /** The project a resource (by id) belongs to, or undefined. */
  projectOf(resourceId: string): string | undefined {
    const table: Record<string, string> = {
      prj: "projects",
      ins: "instances",
      vol: "volumes",
      net: "networks",
      key: "keypairs",
      snp: "snapshots",
      img: "images",
      usr: "users",
    };
    const t = table[resourceId.slice(0, 3)];
    if (!t || resourceId[3] !== "-") return undefined;
    const col = t === "projects" ? "id" : "project_id";
    const r = this.db.prepare(`SELECT ${col} AS p FROM ${t} WHERE id = ?`).get(resourceId) as
      { p: string | null } | undefined;
    return r?.p ?? undefined;
  }

  /** Records one event; `actor` is a user ({ id, name }) or a bare name for the daemon ("system"). */
  audit(
    actor: Actor | string,
    projectId: string,
    action: string,
    resource: string,
    outcome: string,
    message?: string | null,
  ): void {
    const who = typeof actor === "string" ? { id: null, name: actor } : actor;
    this.db
      .prepare(
        "INSERT INTO events (at, user_id, user_name, project_id, action, resource, outcome, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      )
      .run(this.iso(), who.id, who.name, projectId, action, resource, outcome, message ?? null);
  }

  events(p: Principal, q: { limit?: number; after?: number }, projectQuery?: string): AuditEvent[] {
    const scope = this.listScope(p, projectQuery);
    const limit = q.limit ?? 100;
    const after = q.after ?? 0;
    const rows = (
      scope === null
        ? this.db.prepare("SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?").all(after, limit)
        : this.db
            .prepare("SELECT * FROM events WHERE project_id = ? AND id > ? ORDER BY id DESC LIMIT ?")
            .all(scope, after, limit)
    ) as {
      id: number;
      at: string;
      user_id: string | null;
      user_name: string;
      project_id: string;
      action: string;
      resource: string;
      outcome: string;
      message: string | null;
    }[];
    return rows.map((r) => ({
      id: r.id,
      at: r.at,
      user: r.user_name,
      userId: r.user_id,
      project: r.project_id,
      action: r.action,
      resource: r.resource,
      outcome: r.outcome,
      message: r.message,
    }));
  }

  // ---------------------------------------------------------------------- operation journal

  /**
   * Journals a mutating request before it runs (see db.ts, migration 2): its audit event is
   * written when it ends (finishOperation), or by the next start's reconcile() if the server dies
   * first. Answers the journal id, to run the request under (withOperation).
   */
  beginOperation(p: Principal, projectId: string, action: string, resource: string): Promise<number> {
    return withoutOperation(() =>
      this.store.transact(() =>
        Number(
          this.db
            .prepare(
              "INSERT INTO operations (started_at, user_id, user_name, project_id, action, resource) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .run(this.iso(), p.userId, p.userName, projectId, action, resource).lastInsertRowid,
        ),
      ),
    );
  }

  /** Names the current request's action and resource once the handler knows them. */
  async describeOperation(action: string, resource: string): Promise<void> {
    const id = operationId();
    if (id !== undefined)
      await withoutOperation(() =>
        this.store.transact(() =>
          this.db.prepare("UPDATE operations SET action = ?, resource = ? WHERE id = ?").run(action, resource, id),
        ),
      );
  }

  /** The current request acts on the resource with this id (it may have been named by its name). */
  private async operationOn(resource: string): Promise<void> {
    const id = operationId();
    if (id !== undefined)
      await withoutOperation(() =>
        this.store.transact(() => this.db.prepare("UPDATE operations SET resource = ? WHERE id = ?").run(resource, id)),
      );
  }

  /** The action and resource journaled for operation `id`. */
  operationTarget(id: number): { action: string; resource: string } | undefined {
    return this.db.prepare("SELECT action, resource FROM operations WHERE id = ?").get(id) as
      { action: string; resource: string } | undefined;
  }

  /** Records what the current request is about to do to files, so that a crash can be rolled back. */
  private async noteIntent(intent: { snapshot: string; volume: string }): Promise<void> {
    const id = operationId();
    if (id !== undefined)
      await withoutOperation(() =>
        this.store.transact(() =>
          this.db.prepare("UPDATE operations SET intent = ? WHERE id = ?").run(JSON.stringify(intent), id),
        ),
      );
  }

  /** The request ended: its audit event and the end of its journal row, in one transaction. */
  async finishOperation(
    id: number,
    user: Actor | string,
    projectId: string,
    action: string,
    resource: string,
    outcome: string,
    message: string | null,
  ): Promise<void> {
    await this.store.transact(() => {
      this.audit(user, projectId, action, resource, outcome, message);
      this.db.prepare("DELETE FROM operations WHERE id = ?").run(id);
    });
  }

  /**
   * At start, after the instances are settled: every request the last run did not finish is
   * completed or rolled back, and audited under its caller's name. Applied ones (their state
   * change committed) are "ok", with what the restart made of their resource: an instance create
   * gets the disks it may lack (it is left stopped), a delete was finished above. Ones that
   * never applied are "interrupted"; a snapshot whose files had moved is moved back.
   */
  private async recoverOperations(): Promise<void> {
    const ops = this.db.prepare("SELECT * FROM operations ORDER BY id").all() as {
      id: number;
      user_id: string | null;
      user_name: string;
      project_id: string;
      action: string;
      resource: string;
      applied: number;
      intent: string | null;
    }[];
    for (const op of ops) {
      let resource = op.resource;
      let message: string;
      if (op.applied) {
        resource = this.resolveCreated(op.action, op.project_id, op.resource) ?? op.resource;
        let done = "";
        if (op.action === "instance.create") done = await this.finishCreate(resource);
        message = `the server stopped before it answered${done}; after the restart ${this.describe(resource)}`;
      } else {
        message = "the server stopped before it took effect; nothing changed";
        const intent = op.intent ? (JSON.parse(op.intent) as { snapshot?: string; volume?: string }) : {};
        if (intent.snapshot && intent.volume && existsSync(intent.snapshot)) {
          // The volume's file had become the snapshot and maybe got its new overlay: undo both.
          rmSync(intent.volume, { force: true });
          renameSync(intent.snapshot, intent.volume);
          message += " (the volume's file was moved back)";
        }
      }
      await this.finishOperation(
        op.id,
        { id: op.user_id, name: op.user_name },
        op.project_id,
        op.action,
        resource,
        op.applied ? "ok" : "interrupted",
        message,
      );
    }
  }

  /** A create whose id the caller never saw: the id of what it created (names are unique per project). */
  private resolveCreated(action: string, projectId: string, name: string): string | undefined {
    const table = { instance: "instances", volume: "volumes", network: "networks", keypair: "keypairs" }[
      action.replace(/\.create$/, "")
    ];
    if (!action.endsWith(".create") || table === undefined) return undefined;
    const r = this.db.prepare(`SELECT id FROM ${table} WHERE project_id = ? AND name = ?`).get(projectId, name) as
      { id: string } | undefined;
    return r?.id;
  }

  /** Finishes an instance create cut off after its row was written: the disks it lacks. */
  private async finishCreate(id: string): Promise<string> {
    const r = this.rowById(id);
    if (!r || r.state === "running" || r.state === "paused") return "";
    const image = this.db.prepare("SELECT * FROM images WHERE id = ?").get(r.image_id) as ImageRow | undefined;
    if (!image) return "";
    const seedNeeded = r.user_data !== null || r.keypair_id !== null;
    if (diskOpens(join(r.dir, "root.qcow2")) && !seedNeeded) return "";
    try {
      return (await this.createDisks(r, image, true)) ? "; its root disk was created at the restart" : "";
    } catch (e) {
      await this.setError(id, `its disk could not be created: ${(e as Error).message}`);
      return "; its disks could not be created";
    }
  }

  /** What a resource is now, for the audit message of a recovered operation. */
  private describe(resource: string): string {
    if (resource.startsWith("ins-")) {
      const r = this.rowById(resource);
      return r ? `instance ${r.name} is ${r.state}` : `instance ${resource} is gone`;
    }
    if (resource.startsWith("vol-")) {
      const v = this.db.prepare("SELECT * FROM volumes WHERE id = ?").get(resource) as VolumeRow | undefined;
      if (!v) return `volume ${resource} is gone`;
      return `volume ${v.name} is ${v.instance_id ? `attached to ${v.instance_id}` : "available"}`;
    }
    const table = { snp: "snapshots", net: "networks", key: "keypairs", img: "images", usr: "users", prj: "projects" }[
      resource.slice(0, 3)
    ];
    if (table === undefined || resource[3] !== "-") return "it is settled";
    return this.db.prepare(`SELECT 1 FROM ${table} WHERE id = ?`).get(resource)
      ? `${resource} exists`
      : `${resource} is gone`;
  }

  // ------------------------------------------------------------------------- reconciliation

  /**
   * After a (re)start: every instance recorded with a VM is re-attached if its monitor answers,
   * else marked stopped (its meters closed at their last tick) and its process killed; monitors
   * of this YUN_HOME that belong to no instance are stopped. No VM is left orphaned.
   */
  async reconcile(): Promise<{ reattached: string[]; stopped: string[]; orphans: number[] }> {
    const out = { reattached: [] as string[], stopped: [] as string[], orphans: [] as number[] };
    const rows = this.db
      .prepare(
        "SELECT * FROM instances WHERE state IN ('building', 'running', 'paused', 'stopping', 'deleting') OR pid IS NOT NULL",
      )
      .all() as InstanceRow[];
    const kept = new Set<number>();
    for (const r of rows) {
      let ok = false;
      if (r.pid !== null && r.socket !== null && this.driver.isMonitorOf(r.pid, r.id)) {
        // A monitor still starting up gets a few seconds to answer.
        for (let i = 0; i < 50 && !ok; i++) {
          ok = await this.driver.attach(r.id, r.socket, r.pid);
          if (!ok) await new Promise((res) => setTimeout(res, 100));
        }
      }
      if (ok && (r.state === "running" || r.state === "paused" || r.state === "building")) {
        kept.add(r.pid!);
        let state: string = r.state;
        try {
          state = (await this.driver.control<{ state: string }>(r.id, "describe")).state;
        } catch {}
        await this.store.transact(() => {
          const next = state === "paused" ? "paused" : "running";
          this.db.prepare("UPDATE instances SET state = ?, updated_at = ? WHERE id = ?").run(next, this.iso(), r.id);
          if (!this.meter.isOpen(r.id, "memory"))
            this.meter.open(r.project_id, r.id, r.name, "memory", r.memory_mib / 1024);
          if (next === "running" && !this.meter.isOpen(r.id, "cpu"))
            this.meter.open(r.project_id, r.id, r.name, "cpu", r.vcpus);
          if (next === "paused") this.meter.closeAtLastTick(r.id, ["cpu"]);
          this.audit(SYSTEM, r.project_id, "instance.reattached", r.id, "ok", null);
        });
        out.reattached.push(r.id);
        if (r.network_id) await this.serveNetwork(r.network_id).catch(() => undefined);
        continue;
      }
      // A monitor that does not answer (or an instance that should not run) is stopped, then killed.
      if (r.pid !== null && this.driver.isMonitorOf(r.pid, r.id)) await this.driver.stop(r.id, r.pid);
      if (r.state === "deleting") {
        await this.store.transact(() => {
          this.db.prepare("UPDATE volumes SET instance_id = NULL, attached_at = NULL WHERE instance_id = ?").run(r.id);
          this.meter.closeAtLastTick(r.id, ["cpu", "memory", "disk"]);
          this.db.prepare("DELETE FROM forwards WHERE instance_id = ?").run(r.id);
          this.db.prepare("DELETE FROM instances WHERE id = ?").run(r.id);
        });
        rmSync(r.dir, { recursive: true, force: true });
        out.stopped.push(r.id);
        continue;
      }
      await this.store.transact(() => {
        this.meter.closeAtLastTick(r.id, ["cpu", "memory"]);
        const cur = this.rowById(r.id)!;
        const next = cur.state === "error" ? "error" : "stopped";
        const why =
          cur.state === "running" || cur.state === "paused" ? "its VM was gone when the server restarted" : cur.error;
        this.db
          .prepare("UPDATE instances SET state = ?, pid = NULL, socket = NULL, error = ?, updated_at = ? WHERE id = ?")
          .run(next, next === "error" ? cur.error : why, this.iso(), r.id);
        this.audit(SYSTEM, r.project_id, "instance.stopped", r.id, "ok", "not running after a server restart");
      });
      out.stopped.push(r.id);
    }
    await this.recoverOperations();
    await this.sweepFiles();
    await this.sandboxes.reconcile();
    // Monitors named like instances that no instance owns (any more).
    for (const vm of this.driver.runningVms()) {
      if (!/^ins-[a-z2-7]{10}$/.test(vm.name) || kept.has(vm.pid)) continue;
      if (!this.driver.isMonitorOf(vm.pid, vm.name)) continue;
      const owner = this.rowById(vm.name);
      if (owner && owner.pid === vm.pid && out.reattached.includes(owner.id)) continue;
      await this.driver.stop(vm.name, vm.pid);
      if (alive(vm.pid)) this.driver.kill(vm.pid);
      out.orphans.push(vm.pid);
    }
    await this.store.transact(() => this.meter.tick());
    return out;
  }

  /**
   * After a crash: an instance whose disk was never created is marked error; instance
   * directories and volume files that no row owns (a delete interrupted half-way) are removed.
   */
  private async sweepFiles(): Promise<void> {
    const rows = this.db.prepare("SELECT id, dir, state, project_id FROM instances").all() as InstanceRow[];
    const dirs = new Set(rows.map((r) => r.id));
    for (const r of rows) {
      if (r.state !== "error" && !existsSync(join(r.dir, "root.qcow2"))) {
        await this.setError(r.id, "its disk was not created (the server stopped while creating it); delete it");
      }
    }
    for (const d of readdirSync(join(this.dir, "instances"))) {
      if (!dirs.has(d)) rmSync(join(this.dir, "instances", d), { recursive: true, force: true });
    }
    const vols = new Set(
      (this.db.prepare("SELECT path FROM volumes UNION SELECT path FROM snapshots").all() as { path: string }[]).map(
        (r) => r.path,
      ),
    );
    // A recorded file's lock (`.yun-lock`, held by a running VM) stays.
    const recorded = (path: string, set: Set<string>) => set.has(path.replace(/\.yun-lock$/, ""));
    for (const f of readdirSync(join(this.dir, "volumes"))) {
      const path = join(this.dir, "volumes", f);
      if (!recorded(path, vols)) rmSync(path, { force: true });
    }
    // A snapshot file without a row (a delete cut off before its rm) goes too, unless a recorded
    // disk still reads through it (then it is kept: deleting it would lose that disk's data).
    const bases = new Set<string>();
    for (const path of vols) {
      try {
        for (const b of diskInfo(path).backingChain) bases.add(b.path);
      } catch {}
    }
    for (const f of readdirSync(join(this.dir, "snapshots"))) {
      const path = join(this.dir, "snapshots", f);
      if (!recorded(path, vols) && !bases.has(path)) rmSync(path, { force: true });
    }
    // Object storage: blobs written but never committed, or whose last record went.
    this.objects.sweep();
    // Uploads cut off before their row was written, and images deleted before their file was.
    const images = new Set((this.db.prepare("SELECT path FROM images").all() as { path: string }[]).map((r) => r.path));
    for (const f of readdirSync(join(this.dir, "images"))) {
      const path = join(this.dir, "images", f);
      if (!recorded(path, images)) rmSync(path, { force: true });
    }
  }

  /** Stops the ticker, the network services and the driver, and closes the store. */
  close(): Promise<void> {
    this.closed = true;
    if (this.ticker) clearInterval(this.ticker);
    this.sandboxes.close();
    // SQLite: the tick and the close happen before close() returns; etcd: in turn.
    void this.store.transact(() => this.meter.tick()).catch(() => undefined);
    void this.objects.flushRequests().catch(() => undefined);
    this.netsvc.close();
    this.driver.close();
    return this.store.close();
  }
}

/** Whether a disk image exists and its header and tables open. */
function diskOpens(path: string): boolean {
  try {
    openDiskImage(path, { readOnly: true, lock: false }).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * The object storage service's logic: access keys of users, buckets of projects, objects and
 * multipart uploads. Records go through the Store (one transaction per change, so the etcd store
 * works as SQLite does); bytes are blobs (blobs.ts) written before the record that names them is
 * committed and collected after the last record naming them is gone. Quota: a project's
 * objectBytes (objects plus the parts of unfinished uploads), checked in the committing
 * transaction. Metering: an `object` usage interval per bucket at the GiB it holds, and request
 * counts per project and hour.
 */
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { ServiceContext } from "../context.js";
import type { Principal } from "../cloud.js";
import type { DB } from "../db.js";
import { newId, randomB32 } from "../db.js";
import { forbidden, notFound } from "../errors.js";
import type { Meter } from "../metering/meter.js";
import { BlobStore, type WrittenBlob } from "./blobs.js";
import { S3Error } from "./xml.js";

export type Acl = "private" | "public-read";

export interface BucketRow {
  id: string;
  name: string;
  project_id: string;
  acl: Acl;
  created_at: string;
}

export interface ObjectRow {
  id: string;
  bucket_id: string;
  key: string;
  blob: string;
  size: number;
  etag: string;
  content_type: string;
  /** JSON: the x-amz-meta-* headers, names lowercased without the prefix. */
  meta: string;
  acl: Acl;
  modified_at: string;
}

export interface UploadRow {
  id: string;
  bucket_id: string;
  key: string;
  content_type: string;
  meta: string;
  acl: Acl;
  created_at: string;
}

export interface PartRow {
  id: string;
  upload_id: string;
  part: number;
  blob: string;
  size: number;
  etag: string;
  modified_at: string;
}

/** An access key as listed (the secret is shown only when it is created). */
export interface AccessKeyInfo {
  accessKeyId: string;
  user: string;
  createdAt: string;
}

export interface NewAccessKey extends AccessKeyInfo {
  secretAccessKey: string;
}

/** What one page of a bucket listing holds. */
export interface Listing {
  objects: ObjectRow[];
  prefixes: string[];
  truncated: boolean;
  /** Where the next page starts (after this key or common prefix). */
  next?: string;
}

const GiB = 1024 ** 3;
/** A project's objectBytes quota unless set (as DEFAULT_QUOTAS.objectBytes). */
export const DEFAULT_OBJECT_QUOTA = 100 * GiB;
/** The largest single PUT (S3's own limit). */
export const MAX_OBJECT_BYTES = 5 * GiB;
/** Parts of a multipart upload, except the last, are at least this big (S3's rule). */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
/** A bucket's usage interval is re-opened when it changes, unless opened this recently. */
const METER_REOPEN_MS = 10_000;

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function checkBucketName(name: string): void {
  if (!BUCKET_NAME.test(name) || name.includes("..") || /^\d+\.\d+\.\d+\.\d+$/.test(name))
    throw new S3Error(
      400,
      "InvalidBucketName",
      `"${name}" is not a valid bucket name: 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit`,
    );
}

/** The bytes a project's buckets hold: objects and the parts of unfinished uploads. */
export function objectBytesUsed(db: DB, projectId: string): number {
  const r = db
    .prepare(
      `SELECT
         (SELECT ifnull(sum(o.size), 0) FROM objects o JOIN buckets b ON b.id = o.bucket_id WHERE b.project_id = ?) +
         (SELECT ifnull(sum(p.size), 0) FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
            JOIN buckets b ON b.id = u.bucket_id WHERE b.project_id = ?) AS n`,
    )
    .get(projectId, projectId) as { n: number };
  return r.n;
}

export class ObjectService {
  readonly blobs: BlobStore;
  /** Requests counted since the last flush, per project: [reads, writes]. */
  private readonly requests = new Map<string, [number, number]>();

  constructor(
    private readonly cx: ServiceContext,
    private readonly meter: Meter,
    dir: string,
  ) {
    this.blobs = new BlobStore(dir);
  }

  private get db(): DB {
    return this.cx.db;
  }

  // --------------------------------------------------------------------------- access keys

  /** The user whose keys `p` may manage: their own, or (admins) anyone's; another project's: 404. */
  private keyOwner(p: Principal, user: string | undefined): { id: string; name: string } {
    if (user === undefined || user === "" || user === p.userId) return { id: p.userId, name: p.userName };
    const r = this.db
      .prepare("SELECT id, name, project_id FROM users WHERE id = ? OR (name = ? AND project_id = ?)")
      .get(user, user, p.projectId) as { id: string; name: string; project_id: string } | undefined;
    if (!r || (!p.admin && r.project_id !== p.projectId)) throw notFound(`no user ${user}`);
    if (r.id !== p.userId && !p.admin)
      throw forbidden(`only an admin may manage the access keys of another user (${r.name})`);
    return r;
  }

  async createKey(p: Principal, user?: string): Promise<NewAccessKey> {
    const owner = this.keyOwner(p, user);
    const id = `YUN${randomB32(17).toUpperCase()}`;
    // 30 random bytes: 40 base64 characters, as AWS secrets are.
    const secret = randomBytes(30).toString("base64").replace(/\+/g, "A").replace(/\//g, "B");
    const at = this.cx.iso();
    await this.cx.store.transact(() => {
      if (!this.db.prepare("SELECT 1 FROM users WHERE id = ?").get(owner.id)) throw notFound(`no user ${user}`);
      this.db.prepare("INSERT INTO access_keys VALUES (?, ?, ?, ?)").run(id, secret, owner.id, at);
    });
    return { accessKeyId: id, secretAccessKey: secret, user: owner.id, createdAt: at };
  }

  listKeys(p: Principal, user?: string): AccessKeyInfo[] {
    const owner = this.keyOwner(p, user);
    const rows = this.db
      .prepare("SELECT id, user_id, created_at FROM access_keys WHERE user_id = ? ORDER BY created_at, id")
      .all(owner.id) as { id: string; user_id: string; created_at: string }[];
    return rows.map((r) => ({ accessKeyId: r.id, user: r.user_id, createdAt: r.created_at }));
  }

  async deleteKey(p: Principal, keyId: string, user?: string): Promise<void> {
    const owner = this.keyOwner(p, user);
    const r = await this.cx.store.transact(() =>
      this.db.prepare("DELETE FROM access_keys WHERE id = ? AND user_id = ?").run(keyId, owner.id),
    );
    if (r.changes === 0) throw notFound(`no access key ${keyId}`);
  }

  /** The principal an access key signs for, and its secret; undefined for an unknown key. */
  keyPrincipal(accessKeyId: string): { principal: Principal; secret: string } | undefined {
    const row = this.db
      .prepare(
        `SELECT k.secret AS secret, u.id AS userId, u.name AS userName, u.role AS role, p.id AS projectId,
                p.name AS projectName
         FROM access_keys k JOIN users u ON u.id = k.user_id JOIN projects p ON p.id = u.project_id WHERE k.id = ?`,
      )
      .get(accessKeyId) as (Omit<Principal, "admin"> & { secret: string }) | undefined;
    if (!row) return undefined;
    const { secret, ...who } = row;
    return { secret, principal: { ...who, admin: who.role === "admin" && who.projectName === "admin" } };
  }

  // ------------------------------------------------------------------------------ requests

  /** Counts one request of a project (flushed to the records by flushRequests). */
  countRequest(projectId: string, write: boolean): void {
    let c = this.requests.get(projectId);
    if (!c) this.requests.set(projectId, (c = [0, 0]));
    c[write ? 1 : 0]++;
  }

  /** Adds the counted requests to their project's row of the current hour. */
  async flushRequests(): Promise<void> {
    if (this.requests.size === 0) return;
    const batch = [...this.requests];
    this.requests.clear();
    const hour = Math.floor(Date.parse(this.cx.iso()) / 3_600_000) * 3_600_000;
    await this.cx.store.transact(() => {
      for (const [project, [reads, writes]] of batch) {
        if (!this.db.prepare("SELECT 1 FROM projects WHERE id = ?").get(project)) continue;
        const id = `${project}/${hour}`;
        this.db
          .prepare(
            `INSERT INTO object_requests VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET reads = reads + excluded.reads, writes = writes + excluded.writes`,
          )
          .run(id, project, hour, reads, writes);
      }
    });
  }

  // ------------------------------------------------------------------------------- buckets

  bucket(name: string): BucketRow {
    const b = this.db.prepare("SELECT * FROM buckets WHERE name = ?").get(name) as BucketRow | undefined;
    if (!b) throw new S3Error(404, "NoSuchBucket", `The specified bucket does not exist: ${name}`);
    return b;
  }

  /**
   * Whether `p` (undefined: anonymous) may read or write in bucket `b`: members of its project
   * may (readers only read); others only read what a public-read ACL opens.
   */
  authorize(p: Principal | undefined, b: BucketRow, write: boolean, objectAcl?: Acl): void {
    const member = p !== undefined && (p.projectId === b.project_id || p.admin);
    if (member) {
      if (write && p.role === "reader")
        throw new S3Error(403, "AccessDenied", `user ${p.userName} has role reader, which may only read`);
      return;
    }
    if (!write && (b.acl === "public-read" || objectAcl === "public-read")) return;
    throw new S3Error(403, "AccessDenied", "Access Denied");
  }

  listBuckets(p: Principal): BucketRow[] {
    return this.db.prepare("SELECT * FROM buckets WHERE project_id = ? ORDER BY name").all(p.projectId) as BucketRow[];
  }

  async createBucket(p: Principal, name: string, acl: Acl): Promise<BucketRow> {
    checkBucketName(name);
    if (p.role === "reader")
      throw new S3Error(403, "AccessDenied", `user ${p.userName} has role reader, which may only read`);
    const id = newId("bkt");
    await this.cx.store.transact(() => {
      const other = this.db.prepare("SELECT project_id FROM buckets WHERE name = ?").get(name) as
        { project_id: string } | undefined;
      if (other)
        throw other.project_id === p.projectId
          ? new S3Error(409, "BucketAlreadyOwnedByYou", `you already own the bucket ${name}`)
          : new S3Error(409, "BucketAlreadyExists", `the bucket name ${name} is taken; choose another`);
      this.db.prepare("INSERT INTO buckets VALUES (?, ?, ?, ?, ?)").run(id, name, p.projectId, acl, this.cx.iso());
      this.meter.open(p.projectId, id, name, "object", 0);
      this.cx.audit({ id: p.userId, name: p.userName }, p.projectId, "bucket.create", id, "ok", name);
    });
    return this.bucket(name);
  }

  async deleteBucket(p: Principal, name: string): Promise<void> {
    const b = this.bucket(name);
    this.authorize(p, b, true);
    await this.cx.store.transact(() => {
      const n = this.db
        .prepare(
          "SELECT (SELECT count(*) FROM objects WHERE bucket_id = ?) + (SELECT count(*) FROM uploads WHERE bucket_id = ?) AS n",
        )
        .get(b.id, b.id) as { n: number };
      if (n.n > 0)
        throw new S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty (objects or uploads)");
      this.db.prepare("DELETE FROM buckets WHERE id = ?").run(b.id);
      this.meter.close(b.id, ["object"]);
      this.cx.audit({ id: p.userId, name: p.userName }, b.project_id, "bucket.delete", b.id, "ok", b.name);
    });
  }

  async setBucketAcl(p: Principal, name: string, acl: Acl): Promise<void> {
    const b = this.bucket(name);
    this.authorize(p, b, true);
    await this.cx.store.transact(() => this.db.prepare("UPDATE buckets SET acl = ? WHERE id = ?").run(acl, b.id));
  }

  /** Inside a transaction: the bucket's usage interval follows the bytes it holds. */
  private meterBucket(b: BucketRow): void {
    const { n } = this.db.prepare("SELECT ifnull(sum(size), 0) AS n FROM objects WHERE bucket_id = ?").get(b.id) as {
      n: number;
    };
    const amount = n / GiB;
    const open = this.db
      .prepare(
        "SELECT id, amount, start_ms FROM usage_intervals WHERE resource_id = ? AND kind = 'object' AND end_ms IS NULL",
      )
      .get(b.id) as { id: number; amount: number; start_ms: number } | undefined;
    if (open && open.amount === amount) return;
    const now = Date.parse(this.cx.iso());
    if (open && now - open.start_ms < METER_REOPEN_MS) {
      // Many changes in a row: one interval, not one per request (at most 10 s at the old size).
      this.db.prepare("UPDATE usage_intervals SET amount = ? WHERE id = ?").run(amount, open.id);
      return;
    }
    this.meter.close(b.id, ["object"], now);
    this.meter.open(b.project_id, b.id, b.name, "object", amount, now);
  }

  // ------------------------------------------------------------------------------- objects

  object(b: BucketRow, key: string): ObjectRow {
    const o = this.db.prepare("SELECT * FROM objects WHERE bucket_id = ? AND key = ?").get(b.id, key) as
      ObjectRow | undefined;
    if (!o) throw new S3Error(404, "NoSuchKey", "The specified key does not exist.");
    return o;
  }

  /** How many bytes a write into `b` may still store (the project's quota room, plus `freed`). */
  room(b: BucketRow, freed = 0): number {
    const q = this.db.prepare("SELECT bytes FROM object_quotas WHERE project_id = ?").get(b.project_id) as
      { bytes: number } | undefined;
    const limit = q?.bytes ?? DEFAULT_OBJECT_QUOTA;
    return Math.max(0, limit - objectBytesUsed(this.db, b.project_id) + freed);
  }

  private quota(projectId: string, add: number): void {
    try {
      this.cx.checkQuota(projectId, { objectBytes: add });
    } catch (e) {
      throw new S3Error(403, "QuotaExceeded", (e as Error).message);
    }
  }

  /** Streams a body into a blob, then commits the object naming it (replacing any before). */
  async putObject(
    b: BucketRow,
    key: string,
    written: WrittenBlob,
    fields: { etag?: string; contentType: string; meta: Record<string, string>; acl: Acl },
  ): Promise<ObjectRow> {
    const id = newId("obj");
    let old: string | undefined;
    try {
      await this.cx.store.transact(() => {
        this.liveBucket(b);
        const prev = this.db
          .prepare("SELECT blob, size FROM objects WHERE bucket_id = ? AND key = ?")
          .get(b.id, key) as { blob: string; size: number } | undefined;
        this.quota(b.project_id, written.size - (prev?.size ?? 0));
        old = prev?.blob;
        this.db.prepare("DELETE FROM objects WHERE bucket_id = ? AND key = ?").run(b.id, key);
        this.db
          .prepare("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
          .run(
            id,
            b.id,
            key,
            written.sha256,
            written.size,
            fields.etag ?? written.md5,
            fields.contentType,
            JSON.stringify(fields.meta),
            fields.acl,
            this.cx.iso(),
          );
        this.meterBucket(b);
      });
    } finally {
      this.blobs.release(written.sha256);
      this.collect([written.sha256, ...(old ? [old] : [])]);
    }
    return this.object(b, key);
  }

  /** A copy names the same blob: no bytes move. */
  async copyObject(
    src: ObjectRow,
    b: BucketRow,
    key: string,
    fields: { contentType: string; meta: Record<string, string>; acl: Acl },
  ): Promise<ObjectRow> {
    // Held as a fresh write's blob is (putObject releases it after its commit).
    this.blobs.hold(src.blob);
    return this.putObject(
      b,
      key,
      { sha256: src.blob, md5: src.etag, size: src.size, crc32: "" },
      { etag: src.etag, ...fields },
    );
  }

  async deleteObject(b: BucketRow, key: string): Promise<void> {
    const gone = await this.cx.store.transact(() => {
      const o = this.db.prepare("SELECT blob FROM objects WHERE bucket_id = ? AND key = ?").get(b.id, key) as
        { blob: string } | undefined;
      if (!o) return undefined;
      this.db.prepare("DELETE FROM objects WHERE bucket_id = ? AND key = ?").run(b.id, key);
      this.meterBucket(b);
      return o.blob;
    });
    if (gone) this.collect([gone]);
  }

  private liveBucket(b: BucketRow): void {
    if (!this.db.prepare("SELECT 1 FROM buckets WHERE id = ?").get(b.id))
      throw new S3Error(404, "NoSuchBucket", `The specified bucket does not exist: ${b.name}`);
  }

  /** Removes the blobs among `shas` that no record names any more. */
  collect(shas: string[]): void {
    const objects = this.db.prepare("SELECT 1 FROM objects WHERE blob = ? LIMIT 1");
    const parts = this.db.prepare("SELECT 1 FROM upload_parts WHERE blob = ? LIMIT 1");
    this.blobs.collect(shas, (sha) => objects.get(sha) !== undefined || parts.get(sha) !== undefined);
  }

  /** At start: temporary files and unreferenced blobs go. */
  sweep(): number {
    const rows = this.db.prepare("SELECT blob FROM objects UNION SELECT blob FROM upload_parts").all() as {
      blob: string;
    }[];
    return this.blobs.sweep(new Set(rows.map((r) => r.blob)));
  }

  /**
   * One page of keys in key order (UTF-8 binary, as S3), after `after`: keys under `prefix`,
   * those with `delimiter` past the prefix rolled up into common prefixes; maxKeys counts both.
   */
  list(b: BucketRow, prefix: string, delimiter: string, after: string, maxKeys: number): Listing {
    const out: Listing = { objects: [], prefixes: [], truncated: false };
    const page = this.db.prepare(
      "SELECT * FROM objects WHERE bucket_id = ? AND key > ? AND key >= ? ORDER BY key LIMIT 1000",
    );
    let cursor = after;
    let last: string | undefined;
    for (;;) {
      const rows = page.all(b.id, cursor, prefix) as ObjectRow[];
      if (rows.length === 0) return out;
      let skipTo: string | undefined;
      for (const r of rows) {
        if (!r.key.startsWith(prefix)) return out;
        let common: string | undefined;
        if (delimiter !== "") {
          const at = r.key.indexOf(delimiter, prefix.length);
          if (at >= 0) common = r.key.slice(0, at + delimiter.length);
        }
        if (out.objects.length + out.prefixes.length >= maxKeys) {
          out.truncated = true;
          out.next = last;
          return out;
        }
        if (common !== undefined) {
          out.prefixes.push(common);
          last = common;
          // Past every key under this common prefix.
          skipTo = common + "\u{10FFFF}";
          break;
        }
        out.objects.push(r);
        last = r.key;
      }
      cursor = skipTo ?? rows[rows.length - 1].key;
    }
  }

  // ------------------------------------------------------------------------------- uploads

  upload(b: BucketRow, key: string, id: string): UploadRow {
    const u = this.db.prepare("SELECT * FROM uploads WHERE id = ?").get(id) as UploadRow | undefined;
    if (!u || u.bucket_id !== b.id || u.key !== key)
      throw new S3Error(
        404,
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
      );
    return u;
  }

  async createUpload(
    b: BucketRow,
    key: string,
    fields: { contentType: string; meta: Record<string, string>; acl: Acl },
  ): Promise<string> {
    const id = `upl-${randomB32(24)}`;
    await this.cx.store.transact(() => {
      this.liveBucket(b);
      this.db
        .prepare("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)")
        .run(id, b.id, key, fields.contentType, JSON.stringify(fields.meta), fields.acl, this.cx.iso());
    });
    return id;
  }

  async putPart(b: BucketRow, u: UploadRow, part: number, written: WrittenBlob): Promise<PartRow> {
    const id = `${u.id}/${part}`;
    let old: string | undefined;
    try {
      await this.cx.store.transact(() => {
        if (!this.db.prepare("SELECT 1 FROM uploads WHERE id = ?").get(u.id))
          throw new S3Error(
            404,
            "NoSuchUpload",
            "The specified multipart upload does not exist (aborted or completed).",
          );
        const prev = this.db.prepare("SELECT blob, size FROM upload_parts WHERE id = ?").get(id) as
          { blob: string; size: number } | undefined;
        this.quota(b.project_id, written.size - (prev?.size ?? 0));
        old = prev?.blob;
        this.db.prepare("DELETE FROM upload_parts WHERE id = ?").run(id);
        this.db
          .prepare("INSERT INTO upload_parts VALUES (?, ?, ?, ?, ?, ?, ?)")
          .run(id, u.id, part, written.sha256, written.size, written.md5, this.cx.iso());
      });
    } finally {
      this.blobs.release(written.sha256);
      this.collect([written.sha256, ...(old ? [old] : [])]);
    }
    return this.db.prepare("SELECT * FROM upload_parts WHERE id = ?").get(id) as PartRow;
  }

  parts(u: UploadRow): PartRow[] {
    return this.db.prepare("SELECT * FROM upload_parts WHERE upload_id = ? ORDER BY part").all(u.id) as PartRow[];
  }

  uploads(b: BucketRow, prefix: string): UploadRow[] {
    return (
      this.db.prepare("SELECT * FROM uploads WHERE bucket_id = ? ORDER BY key, created_at").all(b.id) as UploadRow[]
    ).filter((u) => u.key.startsWith(prefix));
  }

  /**
   * The parts the client lists, in order, are joined into the object's blob (streamed from the
   * parts' blobs, each checked as it is read); the object and the upload's end are one
   * transaction. ETag: the MD5 of the parts' MD5s, then -N (as S3).
   */
  async completeUpload(b: BucketRow, u: UploadRow, chosen: { part: number; etag: string }[]): Promise<ObjectRow> {
    if (chosen.length === 0)
      throw new S3Error(400, "MalformedXML", "CompleteMultipartUpload must list at least one part");
    const have = new Map(this.parts(u).map((p) => [p.part, p]));
    const use: PartRow[] = [];
    for (let i = 0; i < chosen.length; i++) {
      const c = chosen[i];
      if (i > 0 && c.part <= chosen[i - 1].part)
        throw new S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.");
      const p = have.get(c.part);
      if (!p || p.etag !== c.etag.replace(/"/g, ""))
        throw new S3Error(
          400,
          "InvalidPart",
          `part ${c.part} was not uploaded, or its ETag is not the one given (${c.etag})`,
        );
      if (i < chosen.length - 1 && p.size < MIN_PART_BYTES)
        throw new S3Error(
          400,
          "EntityTooSmall",
          `part ${c.part} has ${p.size} bytes; every part but the last must have at least ${MIN_PART_BYTES}`,
        );
      use.push(p);
    }
    const md5s = createHash("md5");
    for (const p of use) md5s.update(Buffer.from(p.etag, "hex"));
    const etag = `${md5s.digest("hex")}-${use.length}`;
    const total = use.reduce((n, p) => n + p.size, 0);
    const joined = await this.blobs.write(this.concat(use), total, { size: total });
    let old: string | undefined;
    const partBlobs = [...have.values()].map((p) => p.blob);
    const id = newId("obj");
    try {
      await this.cx.store.transact(() => {
        this.liveBucket(b);
        if (!this.db.prepare("SELECT 1 FROM uploads WHERE id = ?").get(u.id))
          throw new S3Error(
            404,
            "NoSuchUpload",
            "The specified multipart upload does not exist (aborted or completed).",
          );
        const prev = this.db
          .prepare("SELECT blob, size FROM objects WHERE bucket_id = ? AND key = ?")
          .get(b.id, u.key) as { blob: string; size: number } | undefined;
        const { n: partBytes } = this.db
          .prepare("SELECT ifnull(sum(size), 0) AS n FROM upload_parts WHERE upload_id = ?")
          .get(u.id) as { n: number };
        this.quota(b.project_id, total - partBytes - (prev?.size ?? 0));
        old = prev?.blob;
        this.db.prepare("DELETE FROM objects WHERE bucket_id = ? AND key = ?").run(b.id, u.key);
        this.db
          .prepare("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
          .run(id, b.id, u.key, joined.sha256, total, etag, u.content_type, u.meta, u.acl, this.cx.iso());
        this.db.prepare("DELETE FROM upload_parts WHERE upload_id = ?").run(u.id);
        this.db.prepare("DELETE FROM uploads WHERE id = ?").run(u.id);
        this.meterBucket(b);
      });
    } finally {
      this.blobs.release(joined.sha256);
      this.collect([joined.sha256, ...partBlobs, ...(old ? [old] : [])]);
    }
    return this.object(b, u.key);
  }

  private concat(parts: PartRow[]): Readable {
    const blobs = this.blobs;
    async function* all(): AsyncGenerator<Buffer> {
      for (const p of parts) for await (const chunk of blobs.read(p.blob, 0, p.size - 1)) yield chunk as Buffer;
    }
    return Readable.from(all(), { objectMode: false });
  }

  async abortUpload(u: UploadRow): Promise<void> {
    const blobs = this.parts(u).map((p) => p.blob);
    await this.cx.store.transact(() => {
      this.db.prepare("DELETE FROM upload_parts WHERE upload_id = ?").run(u.id);
      this.db.prepare("DELETE FROM uploads WHERE id = ?").run(u.id);
    });
    this.collect(blobs);
  }
}

/**
 * Shares ("NAS"): directories of a project under $YUN_HOME/cloud/shares/ID, which instances of the
 * project mount over virtio-9p (src/devices/virtio/9p.ts), several at once, each read-write or
 * read-only. An attachment takes effect at the instance's next start (the device is made when the
 * VM is built; there is no hot-plug of virtio-mmio devices). In the guest:
 * `mount -t 9p -o trans=virtio,version=9p2000.L SHARE-NAME /mnt`.
 */
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { ServiceContext } from "../context.js";
import type { Principal } from "../cloud.js";
import { newId } from "../db.js";
import { conflict, notFound, quotaExceeded } from "../errors.js";
import { checkTag, type ShareSpec } from "../../devices/virtio/9p.js";

/** Most shares one project holds. */
export const MAX_SHARES_PER_PROJECT = 64;
/** Most shares one instance mounts (each takes a virtio slot a volume could use). */
export const MAX_SHARES_PER_INSTANCE = 4;

export interface ShareRow {
  id: string;
  name: string;
  project_id: string;
  created_at: string;
}

export interface Share {
  id: string;
  name: string;
  project: string;
  /** The mount tag in the guest (the share's name). */
  tag: string;
  attachments: { instance: string; readOnly: boolean }[];
  createdAt: string;
}

export class ShareService {
  constructor(
    private readonly cx: ServiceContext,
    /** Where the shares' directories live. */
    readonly dir: string,
  ) {}

  private view(r: ShareRow): Share {
    const att = this.cx.db
      .prepare(
        "SELECT instance_id, read_only FROM share_attachments WHERE share_id = ? ORDER BY attached_at, instance_id",
      )
      .all(r.id) as { instance_id: string; read_only: number }[];
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      tag: r.name,
      attachments: att.map((a) => ({ instance: a.instance_id, readOnly: a.read_only === 1 })),
      createdAt: r.created_at,
    };
  }

  /** The host directory of a share. */
  path(id: string): string {
    return join(this.dir, id);
  }

  list(p: Principal, projectQuery?: string): Share[] {
    return this.cx.listScoped<ShareRow>(p, "shares", projectQuery).map((r) => this.view(r));
  }

  get(p: Principal, idOrName: string, projectQuery?: string): Share {
    return this.view(this.cx.scoped<ShareRow>(p, "shares", "share", idOrName, projectQuery));
  }

  async create(p: Principal, name: string, projectQuery?: string): Promise<Share> {
    this.cx.requireWrite(p);
    const bad = checkTag(name);
    if (bad) throw conflict(bad);
    const project = this.cx.actingProject(p, projectQuery);
    const id = newId("shr");
    mkdirSync(this.path(id), { recursive: true, mode: 0o700 });
    try {
      await this.cx.store.transact(() => {
        if (this.cx.db.prepare("SELECT 1 FROM shares WHERE project_id = ? AND name = ?").get(project, name)) {
          throw conflict(`a share named ${name} exists in the project`);
        }
        const { n } = this.cx.db.prepare("SELECT count(*) AS n FROM shares WHERE project_id = ?").get(project) as {
          n: number;
        };
        if (n >= MAX_SHARES_PER_PROJECT)
          throw quotaExceeded(`a project holds at most ${MAX_SHARES_PER_PROJECT} shares`);
        this.cx.db.prepare("INSERT INTO shares VALUES (?, ?, ?, ?)").run(id, name, project, this.cx.iso());
        this.cx.audit({ id: p.userId, name: p.userName }, project, "share.create", id, "ok", name);
      });
    } catch (e) {
      rmSync(this.path(id), { recursive: true, force: true });
      throw e;
    }
    return this.get(p, id);
  }

  /** Deletes a share and its files; refused while an instance has it attached. */
  async delete(p: Principal, idOrName: string, projectQuery?: string): Promise<void> {
    this.cx.requireWrite(p);
    const s = this.cx.scoped<ShareRow>(p, "shares", "share", idOrName, projectQuery);
    await this.cx.store.transact(() => {
      const used = this.cx.db.prepare("SELECT instance_id FROM share_attachments WHERE share_id = ?").get(s.id) as
        { instance_id: string } | undefined;
      if (used) throw conflict(`share ${s.name} is attached to instance ${used.instance_id}; detach it first`);
      this.cx.db.prepare("DELETE FROM shares WHERE id = ?").run(s.id);
      this.cx.audit({ id: p.userId, name: p.userName }, s.project_id, "share.delete", s.id, "ok", s.name);
    });
    rmSync(this.path(s.id), { recursive: true, force: true });
  }

  /** Attaches (or changes the mode of) a share on an instance of the same project, from its next start. */
  async attach(
    p: Principal,
    instance: { id: string; project_id: string; name: string },
    shareIdOrName: string,
    readOnly: boolean,
  ): Promise<Share> {
    this.cx.requireWrite(p);
    const s = this.cx.scoped<ShareRow>(p, "shares", "share", shareIdOrName, instance.project_id);
    if (s.project_id !== instance.project_id) throw notFound(`no share ${shareIdOrName}`);
    await this.cx.store.transact(() => {
      const { n } = this.cx.db
        .prepare("SELECT count(*) AS n FROM share_attachments WHERE instance_id = ? AND share_id != ?")
        .get(instance.id, s.id) as { n: number };
      if (n >= MAX_SHARES_PER_INSTANCE) {
        throw conflict(`instance ${instance.name} has the most shares it can take (${MAX_SHARES_PER_INSTANCE})`);
      }
      this.cx.db
        .prepare(
          `INSERT INTO share_attachments VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (share_id, instance_id) DO UPDATE SET read_only = excluded.read_only`,
        )
        .run(newId("sha"), s.id, instance.id, readOnly ? 1 : 0, this.cx.iso());
      this.cx.audit({ id: p.userId, name: p.userName }, s.project_id, "share.attach", s.id, "ok", instance.id);
    });
    return this.get(p, s.id);
  }

  async detach(p: Principal, instance: { id: string; name: string; project_id: string }, shareIdOrName: string) {
    this.cx.requireWrite(p);
    const s = this.cx.scoped<ShareRow>(p, "shares", "share", shareIdOrName, instance.project_id);
    const r = await this.cx.store.transact(() =>
      this.cx.db.prepare("DELETE FROM share_attachments WHERE share_id = ? AND instance_id = ?").run(s.id, instance.id),
    );
    if (r.changes === 0) throw conflict(`share ${s.name} is not attached to instance ${instance.name}`);
    return this.get(p, s.id);
  }

  /** What an instance's VM serves: one virtio-9p device per attached share. */
  specsFor(instanceId: string): ShareSpec[] {
    const rows = this.cx.db
      .prepare(
        `SELECT s.id AS id, s.name AS name, a.read_only AS read_only FROM share_attachments a
         JOIN shares s ON s.id = a.share_id WHERE a.instance_id = ? ORDER BY a.attached_at, s.id`,
      )
      .all(instanceId) as { id: string; name: string; read_only: number }[];
    return rows.map((r) => ({ tag: r.name, path: this.path(r.id), readOnly: r.read_only === 1 }));
  }
}

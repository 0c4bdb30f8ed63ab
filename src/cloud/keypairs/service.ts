/** The key pair service: OpenSSH public keys of a project, given to instances at first boot. */
import type { ServiceContext } from "../context.js";
import type { Principal } from "../cloud.js";
import { newId } from "../db.js";
import { badRequest, conflict } from "../errors.js";
import type { KeyPair } from "../types.js";
import { parseSshPublicKey, type SshPublicKey } from "./sshkey.js";

interface KeyPairRow {
  id: string;
  name: string;
  project_id: string;
  public_key: string;
  fingerprint: string;
  created_at: string;
}

export class KeyPairService {
  constructor(private readonly cx: ServiceContext) {}

  private view(r: KeyPairRow): KeyPair {
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      publicKey: r.public_key,
      fingerprint: r.fingerprint,
      createdAt: r.created_at,
    };
  }

  list(p: Principal, projectQuery?: string): KeyPair[] {
    return this.cx.listScoped<KeyPairRow>(p, "keypairs", projectQuery).map((r) => this.view(r));
  }

  async create(p: Principal, req: { name: string; publicKey: string }, projectQuery?: string): Promise<KeyPair> {
    this.cx.requireWrite(p);
    const projectId = this.cx.actingProject(p, projectQuery);
    let key: SshPublicKey;
    try {
      key = parseSshPublicKey(req.publicKey);
    } catch (e) {
      throw badRequest(`publicKey ${(e as Error).message}`);
    }
    const id = newId("key");
    const db = this.cx.db;
    await this.cx.store.transact(() => {
      if (db.prepare("SELECT 1 FROM keypairs WHERE project_id = ? AND name = ?").get(projectId, req.name))
        throw conflict(`a key pair named ${req.name} already exists`);
      db.prepare("INSERT INTO keypairs VALUES (?, ?, ?, ?, ?, ?)").run(
        id,
        req.name,
        projectId,
        key.line,
        key.fingerprint,
        this.cx.iso(),
      );
    });
    return this.view(this.cx.scoped<KeyPairRow>(p, "keypairs", "key pair", id));
  }

  async delete(p: Principal, id: string, projectQuery?: string): Promise<void> {
    this.cx.requireWrite(p);
    const k = this.cx.scoped<KeyPairRow>(p, "keypairs", "key pair", id, projectQuery);
    await this.cx.store.transact(() => this.cx.db.prepare("DELETE FROM keypairs WHERE id = ?").run(k.id));
  }
}

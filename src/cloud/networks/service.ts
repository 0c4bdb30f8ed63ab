/** The network service: a project's private networks (an L2 segment each, DHCP inside). */
import type { ServiceContext } from "../context.js";
import type { Principal } from "../cloud.js";
import { newId } from "../db.js";
import { badRequest, conflict } from "../errors.js";
import type { Network } from "../types.js";
import { intToIp, parseCidr } from "./addresses.js";
import type { NetworkServices } from "./netsvc.js";

interface NetworkRow {
  id: string;
  name: string;
  project_id: string;
  cidr: string;
  created_at: string;
}

export class NetworkService {
  constructor(
    private readonly cx: ServiceContext,
    /** DHCP and the gateway of each network, stopped with it. */
    private readonly netsvc: NetworkServices,
  ) {}

  private view(r: NetworkRow): Network {
    return {
      id: r.id,
      name: r.name,
      project: r.project_id,
      cidr: r.cidr,
      gateway: intToIp(parseCidr(r.cidr).base + 1),
      createdAt: r.created_at,
    };
  }

  list(p: Principal, projectQuery?: string): Network[] {
    return this.cx.listScoped<NetworkRow>(p, "networks", projectQuery).map((r) => this.view(r));
  }

  get(p: Principal, id: string, projectQuery?: string): Network {
    return this.view(this.cx.scoped<NetworkRow>(p, "networks", "network", id, projectQuery));
  }

  async create(p: Principal, req: { name: string; cidr: string }, projectQuery?: string): Promise<Network> {
    this.cx.requireWrite(p);
    const projectId = this.cx.actingProject(p, projectQuery);
    const c = parseCidr(req.cidr);
    if (c.prefix < 16 || c.prefix > 29) throw badRequest(`cidr ${req.cidr}: the prefix must be between /16 and /29`);
    const cidr = `${intToIp(c.base)}/${c.prefix}`;
    const id = newId("net");
    const db = this.cx.db;
    await this.cx.store.transact(() => {
      if (db.prepare("SELECT 1 FROM networks WHERE project_id = ? AND name = ?").get(projectId, req.name))
        throw conflict(`a network named ${req.name} already exists`);
      db.prepare("INSERT INTO networks VALUES (?, ?, ?, ?, ?)").run(id, req.name, projectId, cidr, this.cx.iso());
    });
    return this.get(p, id, projectId);
  }

  async delete(p: Principal, id: string, projectQuery?: string): Promise<void> {
    this.cx.requireWrite(p);
    const n = this.cx.scoped<NetworkRow>(p, "networks", "network", id, projectQuery);
    const db = this.cx.db;
    await this.cx.store.transact(() => {
      const used = db.prepare("SELECT name FROM instances WHERE network_id = ?").get(n.id) as
        { name: string } | undefined;
      if (used) throw conflict(`network ${n.name} is used by instance ${used.name}`);
      db.prepare("DELETE FROM networks WHERE id = ?").run(n.id);
    });
    void this.netsvc.stop(n.id);
  }
}

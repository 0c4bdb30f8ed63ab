/**
 * Instances on user-mode NAT: an address of their own, port forwards as API resources (with their
 * validation), and, with a real debian-tiny VM, the metadata service seen from inside the guest
 * (its own record only; another source address gets 404) and a forward added and removed while
 * the VM runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { existsSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { YunClient } from "../../src/cloud/client.js";
import { HAVE_DEBIAN, REAL_IMAGES, refusal, startCloud, tenant } from "./helpers.js";

/** The busybox image: debian-tiny once the rename landed, else the old name. */
const TINY = existsSync(join(REAL_IMAGES, "debian-tiny", "manifest.json")) ? "debian-tiny" : "debian";

test(
  "NAT instances: addresses of their own, an SSH forward each, forwards validated",
  { skip: !HAVE_DEBIAN },
  async () => {
    const t = await startCloud();
    try {
      const a = await tenant(t, "fwd-a");
      const b = await tenant(t, "fwd-b");
      const web1 = await a.member.createInstance({ name: "web1", image: TINY, flavor: "tiny", start: false });
      const web2 = await a.member.createInstance({ name: "web2", image: TINY, flavor: "tiny", start: false });
      const other = await b.member.createInstance({ name: "web1", image: TINY, flavor: "tiny", start: false });
      // Distinct addresses from the NAT pool (not everyone at 10.0.2.15).
      const addrs = [web1, web2, other].map((i) => i.addresses[0]);
      for (const x of addrs) assert.match(x ?? "", /^10\.0\.\d+\.\d+$/);
      assert.equal(new Set(addrs).size, 3, addrs.join(" "));

      // Every instance got an SSH forward: guest port 22 on a loopback port of its own.
      const f1 = await a.member.listForwards("web1");
      assert.equal(f1.length, 1);
      assert.equal(f1[0].guestPort, 22);
      assert.equal(f1[0].hostAddr, "127.0.0.1");
      assert.ok(f1[0].hostPort >= 1024);
      const f2 = await a.member.listForwards("web2");
      assert.notEqual(f2[0].hostPort, f1[0].hostPort);

      // Add: a free port by default, or the one asked for; conflicts and bad input refused.
      const http = await a.member.createForward("web1", { guestPort: 80 });
      assert.equal(http.guestPort, 80);
      assert.equal(http.instance, web1.id);
      const taken = await refusal(() => a.member.createForward("web2", { guestPort: 80, hostPort: http.hostPort }));
      assert.equal(taken.status, 409);
      assert.match(taken.message, /already forwarded/);
      assert.equal((await refusal(() => a.member.createForward("web1", { guestPort: 0 }))).status, 400);
      assert.equal((await refusal(() => a.member.createForward("web1", { guestPort: 70000 }))).status, 400);
      const low = await refusal(() => a.member.createForward("web1", { guestPort: 80, hostPort: 80 }));
      assert.equal(low.status, 400);
      assert.match(low.message, /privileged/);
      const wide = await refusal(() => a.member.createForward("web1", { guestPort: 80, hostAddr: "0.0.0.0" }));
      assert.equal(wide.status, 400);
      assert.match(wide.message, /loopback only/);
      // Something else listening on the host port: the forward of a stopped instance is only
      // recorded, so take a port no forward has and check the one the server chooses is free.
      const chosen = await a.member.createForward("web2", { guestPort: 8080, hostPort: 0 });
      assert.ok(chosen.hostPort >= 1024 && chosen.hostPort !== http.hostPort);

      // Tenancy: another project's instance is not there; readers may list but not add.
      assert.equal((await refusal(() => b.member.listForwards(web1.id))).status, 404);
      assert.equal((await refusal(() => b.member.createForward(web1.id, { guestPort: 80 }))).status, 404);
      assert.equal((await a.reader.listForwards("web1")).length, 2);
      assert.equal((await refusal(() => a.reader.createForward("web1", { guestPort: 81 }))).status, 403);
      assert.equal((await refusal(() => b.member.deleteForward(web1.id, http.id))).status, 404);

      // At most 16 forwards per instance.
      for (let i = 0; i < 14; i++) await a.member.createForward("web1", { guestPort: 1000 + i });
      const over = await refusal(() => a.member.createForward("web1", { guestPort: 2000 }));
      assert.equal(over.status, 403);
      assert.match(over.message, /at most 16/);

      // Remove; a second remove is a 404; a malformed id a 400.
      await a.member.deleteForward("web1", http.id);
      assert.equal((await refusal(() => a.member.deleteForward("web1", http.id))).status, 404);
      assert.equal((await refusal(() => a.member.deleteForward("web1", "nope"))).status, 400);
      assert.equal((await a.member.listForwards("web1")).length, 15);

      // Audited; and deleting the instance deletes its forwards (their host ports are free again).
      const events = await a.member.events();
      assert.ok(events.some((e) => e.action === "forward.create" && e.outcome === "ok"));
      assert.ok(events.some((e) => e.action === "forward.delete" && e.resource === http.id));
      assert.ok(events.some((e) => e.action === "forward.create" && e.outcome === "conflict"));
      await a.member.deleteInstance("web1");
      const again = await a.member.createForward("web2", { guestPort: 22, hostPort: f1[0].hostPort });
      assert.equal(again.hostPort, f1[0].hostPort);

      // The API document describes the forwards.
      const doc = (await (await fetch(`${t.url}/api/openapi.json`)).json()) as { paths: Record<string, unknown> };
      assert.ok(doc.paths["/api/v1/instances/{id}/forwards"]);
      assert.ok(doc.paths["/api/v1/instances/{id}/forwards/{forwardId}"]);
    } finally {
      await t.close();
    }
  },
);

/** A console session on an instance: `run` types a line and waits for `expect` in the output after it. */
async function openConsole(client: YunClient, id: string) {
  const ws = new WebSocket(client.consoleUrl(id), client.consoleProtocols());
  let out = "";
  ws.on("message", (d: Buffer) => (out += d.toString("utf8")));
  await new Promise<void>((res, rej) => {
    ws.once("open", () => res());
    ws.once("error", rej);
  });
  const waitFor = async (re: RegExp, ms: number, from: number): Promise<string> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(out.slice(from));
      if (m) return m[0];
      if (Date.now() > deadline)
        throw new Error(`console: no ${re} within ${ms} ms; got ${JSON.stringify(out.slice(-400))}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  return {
    ws,
    waitFor: (re: RegExp, ms: number) => waitFor(re, ms, 0),
    async run(cmd: string, expect: RegExp, ms = 30_000): Promise<string> {
      const from = out.length;
      ws.send(cmd + "\n");
      return waitFor(expect, ms, from);
    },
  };
}

function fetchThrough(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = "";
    const s = net.connect(port, "127.0.0.1", () => s.write("GET /page.txt HTTP/1.0\r\n\r\n"));
    s.on("data", (d) => (data += d.toString()));
    s.on("end", () => resolve(data));
    s.on("error", reject);
    s.setTimeout(10_000, () => s.destroy(new Error("timed out")));
  });
}

test(
  "a running instance reads its own metadata at 169.254.169.254; other sources get 404; forwards change at run time",
  { skip: !HAVE_DEBIAN, timeout: 300_000 },
  async () => {
    const t = await startCloud();
    try {
      await t.admin.createKeyPair({
        name: "k",
        publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnV0TVXbHK8sUWXOSNzrLfd0kpyWX2B8rPdQgxd3r6s k@test",
      });
      const vm = await t.admin.createInstance({
        name: "web1",
        image: TINY,
        flavor: "tiny",
        keyPair: "k",
        userData: "#cloud-config\nruncmd:\n  - [touch, /ran]\n",
      });
      assert.equal(vm.state, "running", vm.error ?? "");
      const address = vm.addresses[0];
      const con = await openConsole(t.admin, vm.id);
      await con.waitFor(/~ # /, 180_000);
      // DHCP runs in the background at boot: wait for the assigned address.
      await con.run(
        "for i in $(seq 30); do ip -4 addr show eth0 | grep -q 'inet ' && break; sleep 1; done; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'",
        new RegExp(`inet ${address.replace(/\./g, "\\.")}/16`),
      );
      const md = "http://169.254.169.254";
      await con.run(`wget -qO- ${md}/latest/meta-data/instance-id; echo`, new RegExp(`\\r\\n${vm.id}\\r\\n`));
      await con.run(`wget -qO- ${md}/latest/meta-data/local-ipv4; echo`, new RegExp(`\\r\\n${address}\\r\\n`));
      await con.run(
        `wget -qO- ${md}/latest/meta-data/public-keys/0/openssh-key`,
        /\r\nssh-ed25519 AAAAC3Nz\S+ k@test\r\n/,
      );
      await con.run(`wget -qO- ${md}/openstack/latest/meta_data.json; echo`, /"name":"web1","hostname":"web1"/);
      await con.run(`wget -qO- ${md}/openstack/latest/user_data`, /\r\n#cloud-config\r\nruncmd:/);

      // A forward added while the VM runs reaches busybox httpd in the guest; removed, it is gone.
      await con.run(
        "mkdir -p /srv && echo page-from-guest > /srv/page.txt && httpd -p 8080 -h /srv && echo httpd-up",
        /\r\nhttpd-up\r\n/,
      );
      const f = await t.admin.createForward("web1", { guestPort: 8080 });
      assert.match(await fetchThrough(f.hostPort), /200 OK[\s\S]*page-from-guest/);
      await t.admin.deleteForward("web1", f.id);
      await assert.rejects(fetchThrough(f.hostPort), /ECONNREFUSED/);
      // The SSH forward is published too (nothing listens on the tiny guest's port 22: reset).
      const ssh = (await t.admin.listForwards("web1")).find((x) => x.guestPort === 22)!;
      await assert.rejects(fetchThrough(ssh.hostPort));

      // Another source address (as if spoofing another instance's): 404, none of this instance's data.
      await con.run(
        `ip addr flush dev eth0 && ip addr add 10.0.77.77/16 dev eth0 && ip route add default via 10.0.0.2; wget -O- ${md}/latest/meta-data/instance-id 2>&1 | tail -1`,
        /404 Not Found/,
      );
      await con.run(`wget -qO- ${md}/openstack/latest/meta_data.json; echo "status $?"`, /\r\nstatus 1\r\n/);
      con.ws.close();
    } finally {
      // The instance's monitor outlives the server by design (a restarted daemon re-attaches): end it.
      await t.admin.deleteInstance("web1").catch(() => undefined);
      await t.close();
    }
  },
);

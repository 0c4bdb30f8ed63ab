import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { UserNet } from "../../src/net/usernet.js";
import { GuestStack } from "../../src/net/guest.js";
import { MetadataService, MetadataTap, parseInstanceMetadata, type InstanceMetadata } from "../../src/net/metadata.js";
import { METADATA_IP, userNetAddresses } from "../../src/net/link.js";
import { formatIpv4Address, parseIpv4Address } from "../../src/net/ip.js";

const RECORD: InstanceMetadata = {
  instanceId: "ins-abc123",
  name: "web1",
  hostname: "web1",
  publicKeys: { k: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnV0TVXbHK8sUWXOSNzrLfd0kpyWX2B8rPdQgxd3r6s k@host" },
  userData: "#cloud-config\nruncmd:\n  - touch /ran\n",
  address: "10.0.7.15",
  mac: "52:54:00:aa:bb:cc",
};

/** A UserNet on 10.0.7.15/16 with the record's metadata, and a fake guest that did DHCP. */
async function setup() {
  const usernet = new UserNet({ dnsServers: [], address: "10.0.7.15/16", metadata: new MetadataService(RECORD) });
  await usernet.start();
  const guest = new GuestStack(usernet, { gateway: parseIpv4Address("10.0.0.2") });
  const lease = await guest.dhcp();
  return {
    usernet,
    guest,
    lease,
    done: () => {
      guest.close();
      usernet.close();
    },
  };
}

async function get(guest: GuestStack, path: string): Promise<{ status: number; body: string }> {
  const c = await guest.connect(METADATA_IP, 80);
  await c.established;
  c.write(Buffer.from(`GET ${path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n`));
  await c.finished;
  const text = c.data().toString();
  const status = Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1]);
  return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

test("a guest address and prefix set the network: DHCP hands it out, gateway .2 and DNS .3", async () => {
  const { lease, done } = await setup();
  try {
    assert.equal(formatIpv4Address(lease.address), "10.0.7.15");
    assert.equal(formatIpv4Address(lease.mask!), "255.255.0.0");
    assert.equal(formatIpv4Address(lease.router!), "10.0.0.2");
    assert.equal(formatIpv4Address(lease.dns!), "10.0.0.3");
  } finally {
    done();
  }
});

test("guest addresses that cannot be a guest's are refused in one sentence", () => {
  assert.throws(() => userNetAddresses("10.0.0.2/16"), /network's own/);
  assert.throws(() => userNetAddresses("10.0.2.255/24"), /network's own/);
  assert.throws(() => userNetAddresses("127.0.0.5/8"), /not a unicast address/);
  assert.throws(() => userNetAddresses("169.254.1.1/16"), /not a unicast address/);
  assert.throws(() => userNetAddresses("10.0.2.15"), /expected an IPv4 address with its prefix/);
  assert.throws(() => userNetAddresses("10.0.2.15/31"), /prefix must be 8-29/);
  assert.equal(userNetAddresses("192.168.5.20/24").gateway, parseIpv4Address("192.168.5.2"));
});

test("the guest reads its own metadata in the OpenStack and EC2 layouts", async () => {
  const { guest, done } = await setup();
  try {
    const versions = await get(guest, "/openstack");
    assert.equal(versions.status, 200);
    assert.match(versions.body, /^latest$/m);
    const md = JSON.parse((await get(guest, "/openstack/latest/meta_data.json")).body);
    assert.equal(md.uuid, "ins-abc123");
    assert.equal(md.name, "web1");
    assert.equal(md.hostname, "web1");
    assert.deepEqual(md.public_keys, RECORD.publicKeys);
    assert.equal((await get(guest, "/openstack/2018-08-27/user_data")).body, RECORD.userData);
    const nd = JSON.parse((await get(guest, "/openstack/latest/network_data.json")).body);
    assert.equal(nd.links[0].ethernet_mac_address, RECORD.mac);
    assert.equal(nd.networks[0].type, "ipv4_dhcp");
    assert.equal((await get(guest, "/openstack/latest/vendor_data.json")).body, "{}");

    const listing = await get(guest, "/latest/meta-data/");
    assert.deepEqual(listing.body.split("\n").sort(), [
      "ami-id",
      "hostname",
      "instance-id",
      "instance-type",
      "local-hostname",
      "local-ipv4",
      "mac",
      "placement/",
      "public-keys/",
    ]);
    assert.equal((await get(guest, "/latest/meta-data/instance-id")).body, "ins-abc123");
    assert.equal((await get(guest, "/latest/meta-data/local-hostname")).body, "web1");
    assert.equal((await get(guest, "/latest/meta-data/local-ipv4")).body, "10.0.7.15");
    assert.equal((await get(guest, "/latest/meta-data/public-keys/")).body, "0=k");
    assert.equal((await get(guest, "/latest/meta-data/public-keys/0/openssh-key")).body, RECORD.publicKeys.k + "\n");
    assert.equal((await get(guest, "/latest/user-data")).body, RECORD.userData);
    assert.equal((await get(guest, "/latest/meta-data/nothing")).status, 404);
    assert.equal((await get(guest, "/openstack/latest/nothing")).status, 404);
  } finally {
    done();
  }
});

test("a request from another source address than the instance's is answered 404", async () => {
  const { guest, done } = await setup();
  try {
    assert.equal((await get(guest, "/latest/meta-data/instance-id")).status, 200);
    guest.ip = parseIpv4Address("10.0.9.9"); // spoofs another instance's address
    const spoofed = await get(guest, "/latest/meta-data/instance-id");
    assert.equal(spoofed.status, 404);
    assert.doesNotMatch(spoofed.body, /ins-abc123/);
    assert.equal((await get(guest, "/openstack/latest/meta_data.json")).status, 404);
    assert.equal((await get(guest, "/latest/user-data")).status, 404);
  } finally {
    done();
  }
});

test("without a metadata service, link-local destinations are refused, not sent to the host's", async () => {
  const usernet = new UserNet({ dnsServers: [] });
  await usernet.start();
  const guest = new GuestStack(usernet);
  await guest.dhcp();
  try {
    await assert.rejects(
      guest.connect(METADATA_IP, 80).then((c) => c.established),
      /connection refused/,
    );
  } finally {
    guest.close();
    usernet.close();
  }
});

test("forwards can be added and removed while the network runs", async () => {
  const { usernet, guest, done } = await setup();
  try {
    guest.listen(8080, (c) => {
      c.onData = (chunk) => c.write(Buffer.concat([Buffer.from("echo:"), chunk]));
    });
    const f = await usernet.addForward({ hostAddr: "127.0.0.1", hostPort: 0, guestPort: 8080, proto: "tcp" });
    assert.ok(f.hostPort > 0);
    assert.deepEqual(usernet.published, [f]);
    const reply = await new Promise<string>((resolve, reject) => {
      const s = net.connect(f.hostPort, "127.0.0.1", () => s.write("hi"));
      s.on("data", (d) => {
        resolve(d.toString());
        s.destroy();
      });
      s.on("error", reject);
    });
    assert.equal(reply, "echo:hi");
    await assert.rejects(
      usernet.addForward({ hostAddr: "127.0.0.1", hostPort: f.hostPort, guestPort: 22, proto: "tcp" }),
      /cannot publish 127\.0\.0\.1:\d+: address in use/,
    );
    assert.equal(usernet.removeForward("127.0.0.1", f.hostPort), true);
    assert.equal(usernet.removeForward("127.0.0.1", f.hostPort), false);
    assert.deepEqual(usernet.published, []);
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(f.hostPort, "127.0.0.1", () => reject(new Error("still listening")));
      s.on("error", () => resolve());
    });
  } finally {
    done();
  }
});

test("metadata files are checked field by field", () => {
  assert.throws(() => parseInstanceMetadata([]), /must be a JSON object/);
  assert.throws(() => parseInstanceMetadata({ ...RECORD, name: 3 }), /field name must be a non-empty string/);
  assert.throws(() => parseInstanceMetadata({ ...RECORD, publicKeys: ["x"] }), /publicKeys must be an object/);
  assert.throws(() => parseInstanceMetadata({ ...RECORD, userData: 5 }), /userData must be a string or null/);
  assert.equal(parseInstanceMetadata(JSON.parse(JSON.stringify(RECORD))).name, "web1");
});

test("a NIC on a switch: the tap answers 169.254.169.254 itself and passes every other frame on", async () => {
  const passed: Uint8Array[] = [];
  const inner = { send: (f: Uint8Array) => void passed.push(Uint8Array.from(f)), attach: () => {}, close: () => {} };
  const tap = new MetadataTap(inner, new MetadataService({ ...RECORD, address: "169.254.169.10" }), "169.254.169.10");
  // A guest with an on-link route to the service (it ARPs for 169.254.169.254, as cloud-init's may).
  const guest = new GuestStack(tap, { ip: parseIpv4Address("169.254.169.10") });
  try {
    const md = JSON.parse((await get(guest, "/openstack/latest/meta_data.json")).body);
    assert.equal(md.uuid, "ins-abc123");
    assert.equal(passed.length, 0, "nothing of it reached the switch");
    guest.ip = parseIpv4Address("169.254.169.11");
    assert.equal((await get(guest, "/latest/meta-data/instance-id")).status, 404);
    await guest.arp(parseIpv4Address("169.254.169.99"), 300).catch(() => undefined);
    assert.ok(passed.length >= 1, "other frames go to the switch");
  } finally {
    guest.close();
    tap.close();
  }
});

/**
 * DHCP on a project's private network: the daemon's port on the network's switch answers the
 * instances the database placed there (and nobody else), and the gateway answers ARP and ping.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetworkServices } from "../../src/cloud/networks/netsvc.js";
import { parseCidr } from "../../src/cloud/networks/addresses.js";
import { joinNetwork, type NetworkLink } from "../../src/net/hub.js";
import {
  buildDhcp,
  parseDhcp,
  DHCP_DISCOVER,
  DHCP_OFFER,
  DHCP_CLIENT_PORT,
  DHCP_SERVER_PORT,
} from "../../src/net/dhcp.js";
import {
  buildArp,
  ARP_REQUEST,
  ARP_REPLY,
  BROADCAST_MAC,
  parseArp,
  parseMac,
  ETHERTYPE_ARP,
} from "../../src/net/ethernet.js";
import {
  buildUdpFrame,
  parseIpv4,
  parseUdp,
  buildIcmpEchoFrame,
  ICMP_ECHO_REQUEST,
  parseIcmp,
  PROTO_ICMP,
} from "../../src/net/ip.js";

function collect(link: NetworkLink): Uint8Array[] {
  const got: Uint8Array[] = [];
  link.attach((f) => {
    got.push(Uint8Array.from(f));
    return true;
  });
  return got;
}

async function until<T>(fn: () => T | undefined, ms = 2000): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function discover(mac: Uint8Array, xid: number): Uint8Array {
  return buildUdpFrame(
    { srcMac: mac, dstMac: BROADCAST_MAC, src: 0, dst: 0xffffffff },
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    buildDhcp({ op: "request", xid, chaddr: mac, type: DHCP_DISCOVER }),
  );
}

function offerFor(frames: Uint8Array[], xid: number) {
  for (const f of frames) {
    const ip = parseIpv4(f);
    const udp = ip && parseUdp(f, ip);
    if (!udp || udp.dport !== DHCP_CLIENT_PORT) continue;
    const m = parseDhcp(udp.payload);
    if (m && m.xid === xid) return m;
  }
  return undefined;
}

test("each instance gets its assigned address by DHCP; strangers and other networks get nothing", async () => {
  const home = mkdtempSync(join(tmpdir(), "yun-netsvc-"));
  const svc = new NetworkServices(home);
  const links: NetworkLink[] = [];
  try {
    const macA = parseMac("52:54:00:aa:00:01");
    const stranger = parseMac("52:54:00:aa:00:99");
    await svc.serve(
      "net-aaaa",
      parseCidr("10.30.0.0/24"),
      new Map([["52:54:00:aa:00:01", parseCidr("10.30.0.5/32").base]]),
    );
    await svc.serve(
      "net-bbbb",
      parseCidr("10.30.0.0/24"),
      new Map([["52:54:00:bb:00:01", parseCidr("10.30.0.9/32").base]]),
    );
    const guest = await joinNetwork("net-aaaa", join(home, "net"));
    const other = await joinNetwork("net-bbbb", join(home, "net"));
    links.push(guest, other);
    const got = collect(guest);
    const gotOther = collect(other);

    guest.send(discover(macA, 0x1234));
    const offer = await until(() => offerFor(got, 0x1234));
    assert.ok(offer, "an OFFER arrives");
    assert.equal(offer.type, DHCP_OFFER);
    assert.equal(offer.yiaddr, parseCidr("10.30.0.5/32").base);
    assert.equal(offerFor(gotOther, 0x1234), undefined, "the other project's network never sees it");

    guest.send(discover(stranger, 0x5678));
    assert.equal(await until(() => offerFor(got, 0x5678), 500), undefined, "an unknown MAC gets no lease");

    // The gateway (.1) answers ARP and ping.
    const gw = parseCidr("10.30.0.1/32").base;
    guest.send(buildArp(ARP_REQUEST, macA, parseCidr("10.30.0.5/32").base, null, gw));
    const arp = await until(() =>
      got.map((f) => (((f[12] << 8) | f[13]) === ETHERTYPE_ARP ? parseArp(f) : null)).find((a) => a?.op === ARP_REPLY),
    );
    assert.ok(arp);
    assert.equal(arp.senderIp, gw);
    const gwMac = parseMac(arp.senderMac);
    guest.send(
      buildIcmpEchoFrame(
        { srcMac: macA, dstMac: gwMac, src: parseCidr("10.30.0.5/32").base, dst: gw },
        ICMP_ECHO_REQUEST,
        7,
        1,
        Uint8Array.of(1, 2, 3),
      ),
    );
    const pong = await until(() =>
      got
        .map((f) => {
          const ip = parseIpv4(f);
          return ip && ip.proto === PROTO_ICMP ? parseIcmp(f, ip) : null;
        })
        .find((m) => m?.type === 0 && m.id === 7),
    );
    assert.ok(pong, "ping to the gateway is answered");
  } finally {
    for (const l of links) l.close();
    svc.close();
    await new Promise((r) => setTimeout(r, 100));
    rmSync(home, { recursive: true, force: true });
  }
});

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ARP_REPLY,
  ARP_REQUEST,
  buildArp,
  isBroadcastMac,
  isMulticastMac,
  macKey,
  parseArp,
  parseEthernet,
  parseMac,
  stableMac,
} from "../../src/net/ethernet.js";
import {
  buildIcmpEchoFrame,
  buildTcpFrame,
  buildUdpFrame,
  formatIpv4Address,
  ICMP_ECHO_REQUEST,
  internetChecksum,
  parseIcmp,
  parseIpv4,
  parseIpv4Address,
  parseTcp,
  parseUdp,
  TCP_ACK,
  TCP_SYN,
  writeIpv4Header,
} from "../../src/net/ip.js";
import {
  buildDhcp,
  dhcpServerReply,
  DHCP_ACK,
  DHCP_DISCOVER,
  DHCP_NAK,
  DHCP_OFFER,
  DHCP_REQUEST,
  ipOption,
  OPT_DNS,
  OPT_REQUESTED_IP,
  OPT_ROUTER,
  OPT_SERVER_ID,
  parseDhcp,
  dhcpAddressOption,
} from "../../src/net/dhcp.js";
import { dnsErrorResponse, parseDnsServer, parseResolvConf } from "../../src/net/dns.js";
import { FrameReader, FrameWriter } from "../../src/net/framing.js";

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"));

/** An independent, obviously-correct Internet checksum: sum of 16-bit words with end-around carry. */
function referenceChecksum(bytes: number[]): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += (bytes[i] << 8) + (bytes[i + 1] ?? 0);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return ~sum & 0xffff;
}

function pseudo(src: number, dst: number, proto: number, len: number): number[] {
  return [
    src >>> 24,
    (src >>> 16) & 255,
    (src >>> 8) & 255,
    src & 255,
    dst >>> 24,
    (dst >>> 16) & 255,
    (dst >>> 8) & 255,
    dst & 255,
    0,
    proto,
    len >>> 8,
    len & 255,
  ];
}

const A = {
  srcMac: parseMac("52:54:00:12:34:56"),
  dstMac: parseMac("52:55:0a:00:02:02"),
  src: 0x0a00020f,
  dst: 0x0a000202,
};

test("the RFC 1071 example sums to ddf2 and checksums to 220d", () => {
  const data = hex("0001 f203 f4f5 f6f7");
  assert.equal(internetChecksum(data, 0, data.length), 0x220d);
  assert.equal(referenceChecksum([...data]), 0x220d);
});

test("an IPv4 header is written byte for byte like a captured one (checksum b861)", () => {
  // 192.168.0.1 -> 192.168.0.199, UDP, total length 0x73, DF, TTL 64: the classic example header.
  const want = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");
  const buf = new Uint8Array(20);
  writeIpv4Header(buf, 0, 17, parseIpv4Address("192.168.0.1"), parseIpv4Address("192.168.0.199"), 0x73 - 20, 0);
  assert.deepEqual(buf, want);
  const frame = new Uint8Array(14 + 0x73);
  frame.set(want, 14);
  const ip = parseIpv4(frame)!;
  assert.equal(ip.checksumOk, true);
  assert.equal(formatIpv4Address(ip.src), "192.168.0.1");
  assert.equal(ip.dontFragment, true);
  frame[14 + 8] = 63; // TTL changed without fixing the checksum
  assert.equal(parseIpv4(frame)!.checksumOk, false);
});

test("IPv4 addresses parse and format; bad ones are refused with the address named", () => {
  assert.equal(parseIpv4Address("10.0.2.15"), 0x0a00020f);
  assert.equal(formatIpv4Address(0xffffffff), "255.255.255.255");
  assert.throws(() => parseIpv4Address("10.0.2"), /invalid IPv4 address "10.0.2"/);
  assert.throws(() => parseIpv4Address("10.0.2.256"), /invalid IPv4 address/);
});

test("UDP frames carry a pseudo-header checksum a reference implementation agrees with", () => {
  const payload = new TextEncoder().encode("hello, odd length");
  const f = buildUdpFrame(A, 5000, 53, payload);
  const ip = parseIpv4(f)!;
  const udp = parseUdp(f, ip)!;
  assert.equal(udp.sport, 5000);
  assert.equal(udp.dport, 53);
  assert.deepEqual([...udp.payload], [...payload]);
  assert.equal(udp.checksumOk, true);
  const seg = [...f.subarray(34)];
  const stored = (seg[6] << 8) | seg[7];
  seg[6] = seg[7] = 0;
  assert.equal(stored, referenceChecksum([...pseudo(A.src, A.dst, 17, seg.length), ...seg]));
  f[f.length - 1] ^= 1;
  assert.equal(parseUdp(f, parseIpv4(f)!)!.checksumOk, false);
});

test("TCP segments round-trip with MSS and window-scale options and a correct checksum", () => {
  const payload = Uint8Array.from({ length: 101 }, (_, i) => i);
  const f = buildTcpFrame(A, {
    sport: 40000,
    dport: 80,
    seq: 0xfffffff0,
    ack: 7,
    flags: TCP_SYN | TCP_ACK,
    window: 29200,
    mss: 1460,
    wscale: 7,
    payload,
  });
  const t = parseTcp(f, parseIpv4(f)!)!;
  assert.equal(t.seq, 0xfffffff0);
  assert.equal(t.ack, 7);
  assert.equal(t.flags, TCP_SYN | TCP_ACK);
  assert.equal(t.window, 29200);
  assert.equal(t.mss, 1460);
  assert.equal(t.wscale, 7);
  assert.deepEqual([...t.payload], [...payload]);
  assert.equal(t.checksumOk, true);
  const seg = [...f.subarray(34)];
  const stored = (seg[16] << 8) | seg[17];
  seg[16] = seg[17] = 0;
  assert.equal(stored, referenceChecksum([...pseudo(A.src, A.dst, 6, seg.length), ...seg]));
  const plain = buildTcpFrame(A, { sport: 1, dport: 2, seq: 3, ack: 4, flags: TCP_ACK, window: 5 });
  const p = parseTcp(plain, parseIpv4(plain)!)!;
  assert.equal(p.mss, -1);
  assert.equal(p.wscale, -1);
  assert.equal(p.payload.length, 0);
});

test("ICMP echo requests checksum over the whole message", () => {
  const f = buildIcmpEchoFrame(A, ICMP_ECHO_REQUEST, 0x1234, 9, hex("deadbeef01"));
  const m = parseIcmp(f, parseIpv4(f)!)!;
  assert.equal(m.type, ICMP_ECHO_REQUEST);
  assert.equal(m.id, 0x1234);
  assert.equal(m.seq, 9);
  assert.equal(m.checksumOk, true);
  assert.equal(referenceChecksum([...f.subarray(34)]), 0);
});

test("MAC helpers: parse, format, group bits; stableMac is stable, distinct and locally administered", () => {
  assert.throws(() => parseMac("52:54:00:12:34"), /invalid MAC address "52:54:00:12:34"/);
  assert.equal(isBroadcastMac(parseMac("ff:ff:ff:ff:ff:ff")), true);
  assert.equal(isMulticastMac(parseMac("01:00:5e:00:00:01")), true);
  assert.equal(isMulticastMac(parseMac("52:54:00:00:00:01")), false);
  assert.equal(macKey(parseMac("ff:ff:ff:ff:ff:ff"), 0), 2 ** 48 - 1);
  const a = stableMac("vm-1");
  assert.match(a, /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(stableMac("vm-1"), a);
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) seen.add(stableMac(`vm-${i}`));
  assert.ok(seen.size >= 199, "200 seeds give distinct MACs");
  const first = parseMac(a)[0];
  assert.equal(first & 1, 0, "unicast");
  assert.equal(first & 2, 2, "locally administered");
});

test("ARP requests and replies round-trip", () => {
  const req = buildArp(ARP_REQUEST, A.srcMac, A.src, null, A.dst);
  const eth = parseEthernet(req)!;
  assert.equal(eth.dst, "ff:ff:ff:ff:ff:ff");
  assert.equal(eth.type, 0x0806);
  assert.deepEqual(parseArp(req), {
    op: ARP_REQUEST,
    senderMac: "52:54:00:12:34:56",
    senderIp: A.src,
    targetMac: "00:00:00:00:00:00",
    targetIp: A.dst,
  });
  const rep = buildArp(ARP_REPLY, A.dstMac, A.dst, A.srcMac, A.src);
  assert.equal(parseEthernet(rep)!.dst, "52:54:00:12:34:56");
  assert.equal(parseArp(rep)!.op, ARP_REPLY);
  assert.equal(parseArp(rep.subarray(0, 30)), null);
});

test("DHCP: OFFER for DISCOVER, ACK for the offered address, NAK for another, silence for another server", () => {
  const lease = {
    address: 0x0a00020f,
    mask: 0xffffff00,
    router: 0x0a000202,
    dns: 0x0a000203,
    server: 0x0a000202,
    leaseSeconds: 3600,
  };
  const chaddr = parseMac("52:54:00:aa:bb:cc");
  const discover = parseDhcp(buildDhcp({ op: "request", xid: 42, chaddr, type: DHCP_DISCOVER }))!;
  assert.equal(discover.xid, 42);
  const offer = parseDhcp(dhcpServerReply(discover, lease)!.payload)!;
  assert.equal(offer.op, "reply");
  assert.equal(offer.type, DHCP_OFFER);
  assert.equal(offer.yiaddr, 0x0a00020f);
  assert.deepEqual([...offer.chaddr], [...chaddr]);
  assert.equal(dhcpAddressOption(offer, OPT_ROUTER), 0x0a000202);
  assert.equal(dhcpAddressOption(offer, OPT_DNS), 0x0a000203);
  assert.equal(dhcpAddressOption(offer, OPT_SERVER_ID), 0x0a000202);
  const request = (addr: number, server = 0x0a000202) =>
    parseDhcp(
      buildDhcp({
        op: "request",
        xid: 43,
        chaddr,
        type: DHCP_REQUEST,
        options: [
          [OPT_REQUESTED_IP, ipOption(addr)],
          [OPT_SERVER_ID, ipOption(server)],
        ],
      }),
    )!;
  assert.equal(dhcpServerReply(request(0x0a00020f), lease)!.type, DHCP_ACK);
  const nak = dhcpServerReply(request(0x0a000263), lease)!;
  assert.equal(nak.type, DHCP_NAK);
  assert.equal(parseDhcp(nak.payload)!.yiaddr, 0);
  assert.equal(dhcpServerReply(request(0x0a00020f, 0x0a000299), lease), null);
  assert.ok(buildDhcp({ op: "request", xid: 1, chaddr, type: DHCP_DISCOVER }).length >= 300);
});

test("DNS helpers: server specs, resolv.conf, SERVFAIL answers", () => {
  assert.deepEqual(parseDnsServer("127.0.0.1:5353"), { address: "127.0.0.1", port: 5353, family: 4 });
  assert.deepEqual(parseDnsServer("1.1.1.1"), { address: "1.1.1.1", port: 53, family: 4 });
  assert.deepEqual(parseDnsServer("[::1]:53"), { address: "::1", port: 53, family: 6 });
  assert.deepEqual(parseDnsServer("fd00::1"), { address: "fd00::1", port: 53, family: 6 });
  assert.throws(() => parseDnsServer("dns.example:53"), /invalid DNS server "dns.example:53"/);
  assert.deepEqual(
    parseResolvConf("# x\nnameserver 10.0.0.1\nsearch lan\nnameserver fe80::1%eth0\nnameserver bogus\n"),
    ["10.0.0.1", "fe80::1"],
  );
  // id 0xbeef, RD, one question: example.com A IN
  const q = hex("beef 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001");
  const r = dnsErrorResponse(q, 2)!;
  assert.equal(r.length, q.length);
  assert.equal((r[0] << 8) | r[1], 0xbeef);
  assert.equal(r[2], 0x81, "QR and RD");
  assert.equal(r[3] & 0x0f, 2, "SERVFAIL");
  assert.deepEqual([...r.subarray(4, 12)], [0, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...r.subarray(12)], [...q.subarray(12)]);
});

test("framing: messages split at any byte boundary come out whole; oversized ones are an error", () => {
  const msgs = [hex("01"), new Uint8Array(0), Uint8Array.from({ length: 1600 }, (_, i) => i & 255), hex("aabbcc")];
  const stream = Buffer.concat(
    msgs.map((m) => {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(m.length);
      return Buffer.concat([h, m]);
    }),
  );
  for (let cut = 0; cut <= stream.length; cut += 7) {
    const got: number[][] = [];
    const r = new FrameReader(
      (f) => got.push([...f]),
      (e) => assert.fail(e),
    );
    r.push(stream.subarray(0, cut));
    for (let i = cut; i < stream.length; i += 3) r.push(stream.subarray(i, Math.min(stream.length, i + 3)));
    assert.deepEqual(
      got,
      msgs.map((m) => [...m]),
      `cut at ${cut}`,
    );
  }
  let err = "";
  const bad = new FrameReader(
    () => assert.fail("no frame expected"),
    (e) => (err = e),
  );
  bad.push(Buffer.from([0x7f, 0, 0, 0, 1, 2, 3]));
  assert.match(err, /larger than the limit/);
});

test("framing: a writer gathers one turn's frames into one socket write", async () => {
  const writes: Buffer[] = [];
  const fake = {
    destroyed: false,
    writable: true,
    writableLength: 0,
    write: (b: Buffer) => writes.push(Buffer.from(b)),
  };
  const w = new FrameWriter(fake as never);
  assert.equal(w.write(hex("0102")), true);
  assert.equal(w.write(hex("03")), true);
  assert.equal(writes.length, 0);
  await Promise.resolve();
  assert.deepEqual([...writes[0]], [0, 0, 0, 2, 1, 2, 0, 0, 0, 1, 3]);
  fake.writableLength = 2 * 1024 * 1024;
  assert.equal(w.write(hex("04")), false, "a congested socket drops frames");
});

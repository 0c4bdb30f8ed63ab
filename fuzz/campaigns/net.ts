/**
 * User-mode networking and the virtual switch, fed what a guest can transmit: well-formed frames
 * (DHCP discover/request, ARP, ICMP echo, DNS queries, UDP, TCP SYN/ACK/FIN/RST with options)
 * mutated byte by byte, cut short or padded, and plain random frames; also the codecs alone.
 *
 * Properties: nothing throws; every frame handed back to the guest is a whole Ethernet frame of a
 * sane length; the NAT's connection and flow counts stay bounded; the switch never sends a frame
 * back to its sender and its MAC table stays bounded; after the garbage a DHCP discover still gets
 * its offer.
 *
 * Containment: a mutated frame can name any host, so before a frame reaches UserNet its IPv4
 * destination is moved into 10.0.2.0/24 (10.0.2.2 is the host's loopback) and its TCP/UDP ports
 * into a few closed ones; the DNS forwarder asks a local socket that answers garbage.
 */
import fc from "fast-check";
import dgram from "node:dgram";
import net from "node:net";
import { UserNet } from "../../src/net/usernet.js";
import { LearningSwitch, type SwitchPort } from "../../src/net/switch.js";
import { buildArp, ARP_REQUEST, parseArp, parseMac, ETH_HLEN } from "../../src/net/ethernet.js";
import {
  buildIcmpEchoFrame,
  buildTcpFrame,
  buildUdpFrame,
  parseIcmp,
  parseIpv4,
  parseTcp,
  parseUdp,
  readTcpSynOptions,
  ICMP_ECHO_REQUEST,
  TCP_ACK,
  TCP_FIN,
  TCP_RST,
  TCP_SYN,
  PROTO_TCP,
  PROTO_UDP,
} from "../../src/net/ip.js";
import { buildDhcp, dhcpServerReply, parseDhcp, DHCP_DISCOVER, DHCP_REQUEST, DHCP_OFFER } from "../../src/net/dhcp.js";
import { dnsErrorResponse } from "../../src/net/dns.js";
import { DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP } from "../../src/net/link.js";
import { leakGuard, must, timedAsync, type Campaign, type Session } from "../campaign.js";

const GUEST_MAC = parseMac("52:54:00:12:34:56");
const BROADCAST = 0xffff_ffff;

/** Frames a guest sends, built by the project's own codecs. */
function templates(closedTcp: number, closedUdp: number): Uint8Array[] {
  const a = { srcMac: GUEST_MAC, dstMac: GATEWAY_MAC, src: GUEST_IP, dst: GATEWAY_IP };
  const dns = Uint8Array.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 0x77, 0x77, 0x77, 0, 0, 1, 0, 1]);
  const dhcp = (type: number) =>
    buildUdpFrame(
      { srcMac: GUEST_MAC, dstMac: parseMac("ff:ff:ff:ff:ff:ff"), src: 0, dst: BROADCAST },
      68,
      67,
      buildDhcp({ op: "request", xid: 0x1234, chaddr: GUEST_MAC, type, options: [[50, Uint8Array.of(10, 0, 2, 15)]] }),
    );
  return [
    dhcp(DHCP_DISCOVER),
    dhcp(DHCP_REQUEST),
    buildArp(ARP_REQUEST, GUEST_MAC, GUEST_IP, null, GATEWAY_IP),
    buildIcmpEchoFrame(a, ICMP_ECHO_REQUEST, 7, 1, new Uint8Array(32)),
    buildUdpFrame({ ...a, dst: DNS_IP }, 5353, 53, dns),
    buildUdpFrame(a, 40000, closedUdp, Uint8Array.of(1, 2, 3)),
    buildTcpFrame(a, {
      sport: 40000,
      dport: closedTcp,
      seq: 1000,
      ack: 0,
      flags: TCP_SYN,
      window: 65535,
      mss: 1460,
      wscale: 7,
    }),
    buildTcpFrame(a, {
      sport: 40000,
      dport: closedTcp,
      seq: 1001,
      ack: 1,
      flags: TCP_ACK,
      window: 65535,
      payload: Uint8Array.of(0x41),
    }),
    buildTcpFrame(a, { sport: 40000, dport: closedTcp, seq: 1001, ack: 1, flags: TCP_FIN | TCP_ACK, window: 0 }),
    buildTcpFrame(a, { sport: 40000, dport: closedTcp, seq: 1001, ack: 1, flags: TCP_RST, window: 0 }),
  ];
}

interface FrameCase {
  template: number;
  random: boolean;
  pokes: [number, number][];
  cut: number | null;
  pad: number;
  seed: number;
}

const frameCase: fc.Arbitrary<FrameCase> = fc.record({
  template: fc.nat(9),
  random: fc.boolean(),
  pokes: fc.array(fc.tuple(fc.nat(400), fc.nat(255)), { maxLength: 6 }),
  cut: fc.oneof(fc.constant(null), fc.constant(null), fc.nat(400)),
  pad: fc.oneof(fc.constant(0), fc.constant(0), fc.nat(1600)),
  seed: fc.integer(),
});

function build(c: FrameCase, tpl: Uint8Array[]): Uint8Array {
  let f: Uint8Array;
  if (c.random) {
    f = new Uint8Array(14 + ((c.seed >>> 0) % 600));
    let s = c.seed | 1;
    for (let i = 0; i < f.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) | 0;
      f[i] = s >>> 24;
    }
    // Addressed like the guest's frames half the time, so it gets past the Ethernet checks.
    if (c.seed & 1) {
      f.set(GATEWAY_MAC, 0);
      f.set(GUEST_MAC, 6);
      f[12] = c.seed & 2 ? 0x08 : 0x08;
      f[13] = c.seed & 4 ? 0x00 : 0x06;
    }
  } else {
    const t = tpl[c.template];
    f = new Uint8Array(t.length + c.pad);
    f.set(t);
  }
  for (const [at, v] of c.pokes) if (at < f.length) f[at] = v;
  return c.cut === null ? f : f.subarray(0, Math.min(c.cut, f.length));
}

/** Keeps a frame's consequences on this host: destinations inside 10.0.2.0/24, ports closed ones. */
function contain(f: Uint8Array, closedTcp: number, closedUdp: number): void {
  if (f.length < ETH_HLEN + 20 || f[12] !== 0x08 || f[13] !== 0x00) return;
  const ip = ETH_HLEN;
  const dst = ((f[ip + 16] << 24) | (f[ip + 17] << 16) | (f[ip + 18] << 8) | f[ip + 19]) >>> 0;
  if ((dst & 0xffff_ff00) >>> 0 !== 0x0a00_0200 && dst !== BROADCAST) {
    f[ip + 16] = 10;
    f[ip + 17] = 0;
    f[ip + 18] = 2;
    f[ip + 19] = 2;
  }
  const l4 = ip + (f[ip] & 0x0f) * 4;
  if (l4 + 4 > f.length) return;
  const dport = (f[l4 + 2] << 8) | f[l4 + 3];
  const proto = f[ip + 9];
  const toDns = f[ip + 19] === 3 && dport === 53;
  if (proto === PROTO_TCP || (proto === PROTO_UDP && !toDns && dport !== 67)) {
    const port = proto === PROTO_TCP ? closedTcp : closedUdp;
    f[l4 + 2] = port >> 8;
    f[l4 + 3] = port & 0xff;
  }
}

/** A port on 127.0.0.1 that nothing listens on (bound, then closed). */
async function closedTcpPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export const userNetCampaign: Campaign = {
  name: "usernet",
  surface: "parser",
  testRuns: 1500,
  batchRuns: 20000,
  async open(): Promise<Session> {
    const closedTcp = await closedTcpPort();
    // UDP to a closed port draws ICMP unreachable from the host kernel: harmless and local.
    const closedUdp = closedTcp;
    // The DNS "server": answers every query with its first bytes garbled.
    const dns = dgram.createSocket("udp4");
    await new Promise<void>((r) => dns.bind(0, "127.0.0.1", r));
    dns.on("message", (msg, rinfo) => {
      const reply = Buffer.from(msg);
      if (reply.length > 3) reply[2] ^= 0x80;
      if (reply.length > 6) reply[reply.length - 1] ^= msg[0];
      dns.send(reply.subarray(0, Math.max(2, reply.length - (msg[1] & 3))), rinfo.port, rinfo.address);
    });
    const dnsPort = (dns.address() as net.AddressInfo).port;
    const usernet = new UserNet({ dnsServers: [`127.0.0.1:${dnsPort}`], dnsTimeoutMs: 50, udpIdleMs: 200 });
    await usernet.start();
    let delivered = 0;
    let offers = 0;
    usernet.attach((f) => {
      must(f.length >= ETH_HLEN && f.length <= ETH_HLEN + 65535, `UserNet delivered a ${f.length}-byte frame`);
      delivered++;
      const ip = parseIpv4(f);
      if (ip && ip.proto === PROTO_UDP) {
        const u = parseUdp(f, ip);
        if (u && u.dport === 68) {
          const m = parseDhcp(u.payload);
          if (m?.type === DHCP_OFFER) offers++;
        }
      }
      return true;
    });
    const sw = new LearningSwitch();
    const ports: SwitchPort[] = [];
    const received = [0, 0, 0];
    let sending = -1;
    for (let i = 0; i < 3; i++) {
      const p = sw.addPort();
      p.attach(() => {
        must(sending !== i, "the switch sent a frame back to the port it came from");
        received[i]++;
        return true;
      });
      ports.push(p);
    }
    const tpl = templates(closedTcp, closedUdp);
    let cases = 0;

    const property = fc.asyncProperty(
      fc.array(frameCase, { minLength: 1, maxLength: 4 }),
      timedAsync(async (frames: FrameCase[]) => {
        for (const c of frames) {
          const f = build(c, tpl);
          // The codecs alone on the raw frame.
          const ip = parseIpv4(f);
          if (ip) {
            must(ip.payloadOffset <= ip.end && ip.end <= f.length, "parseIpv4 points outside the frame");
            const t = ip.proto === PROTO_TCP ? parseTcp(f, ip) : null;
            if (t) {
              must(t.payload.byteOffset + t.payload.length <= f.byteOffset + f.length, "TCP payload outside the frame");
              readTcpSynOptions(f, ip.payloadOffset + 20, ip.payloadOffset + Math.min(60, ip.end - ip.payloadOffset));
            }
            const u = ip.proto === PROTO_UDP ? parseUdp(f, ip) : null;
            if (u) {
              const m = parseDhcp(u.payload);
              if (m)
                dhcpServerReply(m, {
                  address: GUEST_IP,
                  mask: 0xffffff00,
                  router: GATEWAY_IP,
                  dns: DNS_IP,
                  server: GATEWAY_IP,
                  leaseSeconds: 60,
                });
              dnsErrorResponse(u.payload, 2);
            }
            if (ip.proto === 1) parseIcmp(f, ip);
          }
          parseArp(f);
          // The switch: from a random port.
          sending = (c.seed >>> 0) % 3;
          ports[sending].send(f);
          sending = -1;
          must(sw.macCount <= 4096, `the switch learned ${sw.macCount} MACs`);
          // UserNet, contained.
          contain(f, closedTcp, closedUdp);
          usernet.send(f);
        }
        const s = usernet.stats();
        must(s.tcpConnections <= 1024 && s.udpFlows <= 1024, `NAT state grew: ${JSON.stringify(s)}`);
        // Let sockets and timers run now and then, as the VM loop would.
        if (++cases % 64 === 0) await new Promise((r) => setImmediate(r));
      }),
    );
    const leak = leakGuard("usernet");
    return {
      property,
      check: async () => {
        // After the garbage, a DHCP discover still gets its offer.
        await new Promise((r) => setTimeout(r, 20));
        const before = offers;
        usernet.send(tpl[0]);
        await new Promise((r) => setTimeout(r, 20));
        must(offers > before, "no DHCP offer after the fuzzing");
        void delivered;
        leak();
      },
      close: async () => {
        usernet.close();
        for (const p of ports) p.close();
        await new Promise<void>((r) => dns.close(() => r()));
      },
    };
  },
};

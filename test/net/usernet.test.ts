import { test } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import net from "node:net";
import { randomBytes } from "node:crypto";
import { UserNet, GATEWAY_IP, DNS_IP, GUEST_IP, type UserNetOptions } from "../../src/net/usernet.js";
import { GuestStack } from "../../src/net/guest.js";
import { buildDhcp, DHCP_NAK, DHCP_REQUEST, ipOption, OPT_REQUESTED_IP, OPT_SERVER_ID } from "../../src/net/dhcp.js";
import { formatMac, parseArp, ARP_REPLY } from "../../src/net/ethernet.js";
import { formatIpv4Address, parseIpv4, PROTO_UDP, readU16 } from "../../src/net/ip.js";

const ECHO = (s: net.Socket) => {
  s.on("error", () => {});
  s.pipe(s);
};

function listen(server: net.Server, host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve) => server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port)));
}

function bindUdp(handler: (msg: Buffer, rinfo: dgram.RemoteInfo, s: dgram.Socket) => void): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  s.on("message", (m, r) => handler(m, r, s));
  return new Promise((resolve) => s.bind(0, "127.0.0.1", () => resolve(s)));
}

/** A UserNet with a frame-level fake guest that has done DHCP. */
async function setup(options: UserNetOptions = {}, guestOptions: ConstructorParameters<typeof GuestStack>[1] = {}) {
  const usernet = new UserNet({ dnsServers: [], ...options });
  await usernet.start();
  const guest = new GuestStack(usernet, guestOptions);
  await guest.dhcp();
  return {
    usernet,
    guest,
    done: () => {
      guest.close();
      usernet.close();
    },
  };
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  const port = await listen(s);
  await new Promise((r) => s.close(r));
  return port;
}

function dnsQuery(id: number, name: string): Buffer {
  const labels = name.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  return Buffer.concat([
    Buffer.from([id >> 8, id & 255, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
    ...labels,
    Buffer.from([0, 0, 1, 0, 1]),
  ]);
}

test("DHCP gives the guest 10.0.2.15 with mask, router, DNS and a lease", async () => {
  const usernet = new UserNet({ dnsServers: [] });
  const guest = new GuestStack(usernet);
  try {
    const lease = await guest.dhcp();
    assert.equal(formatIpv4Address(lease.address), "10.0.2.15");
    assert.equal(formatIpv4Address(lease.mask!), "255.255.255.0");
    assert.equal(formatIpv4Address(lease.router!), "10.0.2.2");
    assert.equal(formatIpv4Address(lease.dns!), "10.0.2.3");
    assert.equal(formatIpv4Address(lease.server!), "10.0.2.2");
    assert.ok(lease.lease! >= 3600);
    assert.equal(usernet.guestMacAddress, "52:54:00:12:34:56");
  } finally {
    guest.close();
    usernet.close();
  }
});

test("a DHCP REQUEST for another address is NAKed by broadcast", async () => {
  const { guest, done } = await setup();
  try {
    const xid = 0x5eed;
    const nak = guest.expectDhcp(xid, DHCP_NAK);
    guest.sendDhcp(
      buildDhcp({
        op: "request",
        xid,
        chaddr: guest.mac,
        type: DHCP_REQUEST,
        options: [
          [OPT_REQUESTED_IP, ipOption(0x0a000263)],
          [OPT_SERVER_ID, ipOption(GATEWAY_IP)],
        ],
      }),
    );
    const m = await nak;
    assert.equal(m.yiaddr, 0);
  } finally {
    done();
  }
});

test("ARP for the gateway and the DNS address is answered; other addresses are not", async () => {
  const { guest, done } = await setup();
  try {
    const gw = await guest.arp(GATEWAY_IP);
    assert.equal(formatMac(gw), "52:55:0a:00:02:02");
    assert.equal(formatMac(await guest.arp(DNS_IP)), "52:55:0a:00:02:02");
    await assert.rejects(
      guest.expect(
        (f) => {
          const a = readU16(f, 12) === 0x0806 ? parseArp(f) : null;
          return a && a.op === ARP_REPLY ? true : undefined;
        },
        200,
        "no ARP reply",
      ),
      /timed out/,
      "nothing else was pending",
    );
    await assert.rejects(guest.arp(0x0a000263, 200), /timed out waiting for an ARP reply/);
  } finally {
    done();
  }
});

test("ping to the gateway is answered with the same payload", async () => {
  const { guest, done } = await setup();
  try {
    const payload = randomBytes(56);
    const reply = await guest.ping(GATEWAY_IP, payload, 0x77, 3);
    assert.deepEqual(Buffer.from(reply), payload);
  } finally {
    done();
  }
});

test("TCP to 10.0.2.2 reaches a host server on 127.0.0.1; 1 MiB echoes back byte-exact with half-close", async () => {
  let remote = "";
  const server = net.createServer((s) => {
    remote = s.remoteAddress ?? "";
    ECHO(s);
  });
  const port = await listen(server);
  const { usernet, guest, done } = await setup();
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    const data = randomBytes(1024 * 1024);
    c.write(data);
    c.end();
    await c.finished;
    assert.equal(c.received, data.length);
    assert.ok(c.data().equals(data), "echo is byte-exact");
    assert.equal(remote, "127.0.0.1");
    await until(() => usernet.stats().tcpConnections === 0, "the connection to be forgotten");
  } finally {
    done();
    server.close();
  }
});

test("TCP data to the guest survives a guest that refuses and loses frames", async () => {
  const server = net.createServer(ECHO);
  const port = await listen(server);
  const { guest, done } = await setup({}, { dropEvery: 5, loseEvery: 37 });
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    const data = randomBytes(512 * 1024);
    c.write(data);
    c.end();
    await c.finished;
    assert.ok(c.data().equals(data), "retransmitted to byte-exact");
  } finally {
    done();
    server.close();
  }
});

test("the host closing first: the guest gets FIN after the data and can still send", async () => {
  let fromGuest = "";
  let hostDone!: () => void;
  const hostFinished = new Promise<void>((r) => (hostDone = r));
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.end("greeting");
    s.on("data", (d) => (fromGuest += d));
    s.on("end", hostDone);
  });
  const port = await listen(server);
  const { guest, done } = await setup();
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    await c.finished;
    assert.equal(c.data().toString(), "greeting");
    c.write(Buffer.from("still here"));
    c.end();
    await hostFinished;
    assert.equal(fromGuest, "still here");
  } finally {
    done();
    server.close();
  }
});

test("a refused connection reaches the guest as RST", async () => {
  const port = await freePort();
  const { guest, done } = await setup({}, { arpTimeoutMs: 200 });
  try {
    await assert.rejects(guest.connect(GATEWAY_IP, port), /connection refused/);
    // Other addresses on the virtual network have no one behind them either.
    await assert.rejects(guest.connect(0x0a000263, 80), /timed out waiting for an ARP reply/);
  } finally {
    done();
  }
});

test("a guest RST resets the host connection", async () => {
  let hostClosed!: (err: string) => void;
  const closed = new Promise<string>((r) => (hostClosed = r));
  const server = net.createServer((s) => {
    s.on("error", (e: NodeJS.ErrnoException) => hostClosed(e.code ?? ""));
    s.on("end", () => hostClosed("end"));
  });
  const port = await listen(server);
  const { guest, done } = await setup();
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    c.abort();
    assert.equal(await closed, "ECONNRESET");
  } finally {
    done();
    server.close();
  }
});

test("port forward: a host client reaches the guest's server through the published port", async () => {
  const { usernet, guest, done } = await setup({
    hostForwards: [{ hostAddr: "127.0.0.1", hostPort: 0, guestPort: 8080, proto: "tcp" }],
  });
  try {
    let peer = "";
    guest.listen(8080, (c) => {
      peer = formatIpv4Address(c.remoteIp);
      c.onData = (d) => c.write(d);
      void c.finished.then(() => c.end());
    });
    const [{ hostPort }] = usernet.published;
    const data = randomBytes(300 * 1024);
    const client = net.connect(hostPort, "127.0.0.1");
    const chunks: Buffer[] = [];
    client.on("data", (d) => chunks.push(d));
    client.end(data);
    await new Promise((r) => client.on("end", r));
    assert.ok(Buffer.concat(chunks).equals(data), "echoed by the guest byte-exact");
    assert.equal(peer, "10.0.2.2", "the guest sees the connection come from the gateway");
  } finally {
    done();
  }
});

test("a host client that connects before the guest is up is let through once the guest appears", async () => {
  const usernet = new UserNet({
    dnsServers: [],
    hostForwards: [{ hostAddr: "127.0.0.1", hostPort: 0, guestPort: 7, proto: "tcp" }],
  });
  await usernet.start();
  const client = net.connect(usernet.published[0].hostPort, "127.0.0.1");
  const reply = new Promise<string>((resolve, reject) => {
    let got = "";
    client.on("data", (d) => (got += d));
    client.on("end", () => resolve(got));
    client.on("error", reject);
  });
  client.end("early bird");
  await new Promise((r) => setTimeout(r, 100));
  const guest = new GuestStack(usernet);
  try {
    guest.listen(7, (c) => {
      c.onData = (d) => c.write(d);
      void c.finished.then(() => c.end());
    });
    const t0 = Date.now();
    await guest.dhcp();
    await guest.ping(GATEWAY_IP, Buffer.from("up")); // the guest's first packet from its address
    assert.equal(await reply, "early bird");
    assert.ok(Date.now() - t0 < 500, "no wait for a retransmission timer");
  } finally {
    guest.close();
    usernet.close();
  }
});

test("a host client is reset when the guest does not listen on the forwarded port", async () => {
  const { usernet, done } = await setup({
    hostForwards: [{ hostAddr: "127.0.0.1", hostPort: 0, guestPort: 9999, proto: "tcp" }],
  });
  try {
    const client = net.connect(usernet.published[0].hostPort, "127.0.0.1");
    const result = await new Promise<string>((resolve) => {
      client.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
      client.on("end", () => resolve("end"));
    });
    assert.equal(result, "ECONNRESET");
    assert.equal(usernet.stats().tcpConnections, 0);
  } finally {
    done();
  }
});

test("publishing a port that is in use fails with a clear error", async () => {
  const busy = net.createServer();
  const port = await listen(busy);
  const usernet = new UserNet({
    dnsServers: [],
    hostForwards: [{ hostAddr: "127.0.0.1", hostPort: port, guestPort: 22, proto: "tcp" }],
  });
  try {
    await assert.rejects(
      usernet.start(),
      new RegExp(`^Error: cannot publish 127\\.0\\.0\\.1:${port}: address in use$`),
    );
  } finally {
    usernet.close();
    busy.close();
  }
  assert.throws(
    () => new UserNet({ hostForwards: [{ hostAddr: "127.0.0.1", hostPort: 70000, guestPort: 22, proto: "tcp" }] }),
    /invalid host port 70000/,
  );
});

test("UDP through NAT: a datagram to 10.0.2.2 reaches 127.0.0.1 and the reply comes back", async () => {
  const echo = await bindUdp((m, r, s) => s.send(Buffer.concat([Buffer.from("echo:"), m]), r.port, r.address));
  const port = (echo.address() as { port: number }).port;
  const { usernet, guest, done } = await setup();
  try {
    const r = await guest.udpExchange(GATEWAY_IP, port, Buffer.from("ping over udp"), 5555);
    assert.equal(Buffer.from(r.payload).toString(), "echo:ping over udp");
    assert.equal(r.from, GATEWAY_IP);
    assert.equal(r.sport, port);
    assert.equal(usernet.stats().udpFlows, 1);
  } finally {
    done();
    echo.close();
  }
});

test("a UDP reply bigger than the MTU reaches the guest as IPv4 fragments", async () => {
  const big = randomBytes(4000);
  const server = await bindUdp((_m, r, s) => s.send(big, r.port, r.address));
  const port = (server.address() as { port: number }).port;
  const { guest, done } = await setup();
  try {
    const frags: { off: number; more: boolean; data: Buffer }[] = [];
    const all = guest.expect(
      (f) => {
        const ip = parseIpv4(f);
        if (!ip || ip.proto !== PROTO_UDP || ip.src !== GATEWAY_IP) return undefined;
        frags.push({
          off: ip.fragmentOffset,
          more: ip.moreFragments,
          data: Buffer.from(f.subarray(ip.payloadOffset, ip.end)),
        });
        return frags.length === 3 ? true : undefined;
      },
      3000,
      "three fragments",
    );
    // The fake guest does not reassemble, so its own wait for a whole datagram times out.
    await guest.udpExchange(GATEWAY_IP, port, Buffer.from("send big"), 6000, 300).catch(() => {});
    await all;
    assert.deepEqual(
      frags.map((f) => [f.off, f.more]),
      [
        [0, true],
        [1480, true],
        [2960, false],
      ],
    );
    const datagram = Buffer.concat(frags.map((f) => f.data));
    assert.equal(datagram.readUInt16BE(4), 8 + big.length, "UDP length");
    assert.ok(datagram.subarray(8).equals(big));
  } finally {
    done();
    server.close();
  }
});

test("DNS to 10.0.2.3 is forwarded to the configured nameserver and answered", async () => {
  let seen = 0;
  const answer = Buffer.from("c00c000100010000003c00045db8d822", "hex"); // example.com A 93.184.216.34
  const fake = await bindUdp((m, r, s) => {
    seen++;
    const reply = Buffer.concat([m, answer]);
    reply[2] = 0x81;
    reply[3] = 0x80;
    reply.writeUInt16BE(1, 6);
    s.send(reply, r.port, r.address);
  });
  const { guest, done } = await setup({ dnsServers: [`127.0.0.1:${(fake.address() as { port: number }).port}`] });
  try {
    const q = dnsQuery(0xabcd, "example.com");
    const r = await guest.udpExchange(DNS_IP, 53, q, 33333);
    const resp = Buffer.from(r.payload);
    assert.equal(r.from, DNS_IP);
    assert.equal(r.sport, 53);
    assert.equal(resp.readUInt16BE(0), 0xabcd, "the guest's query id");
    assert.equal(resp[3] & 0x0f, 0, "NOERROR");
    assert.equal(resp.readUInt16BE(6), 1, "one answer");
    assert.ok(resp.subarray(resp.length - 4).equals(Buffer.from([93, 184, 216, 34])));
    assert.equal(seen, 1);
  } finally {
    done();
    fake.close();
  }
});

test("DNS with no nameserver, or none that answers, gets SERVFAIL instead of silence", async () => {
  {
    const { guest, done } = await setup({ dnsServers: [] });
    try {
      const r = await guest.udpExchange(DNS_IP, 53, dnsQuery(0x1111, "example.com"), 33334);
      assert.equal(Buffer.from(r.payload).readUInt16BE(0), 0x1111);
      assert.equal(r.payload[3] & 0x0f, 2);
    } finally {
      done();
    }
  }
  const silent = await bindUdp(() => {});
  const { guest, done } = await setup({
    dnsServers: [`127.0.0.1:${(silent.address() as { port: number }).port}`, "127.0.0.1:9"],
    dnsTimeoutMs: 150,
  });
  try {
    const t0 = Date.now();
    const r = await guest.udpExchange(DNS_IP, 53, dnsQuery(0x2222, "example.com"), 33335);
    assert.equal(Buffer.from(r.payload).readUInt16BE(0), 0x2222);
    assert.equal(r.payload[3] & 0x0f, 2, "SERVFAIL");
    assert.ok(Date.now() - t0 < 1500, "answered after the servers' timeouts");
  } finally {
    done();
    silent.close();
  }
});

test("DNS over TCP to 10.0.2.3:53 goes to the nameserver's TCP port", async () => {
  let got = "";
  const server = net.createServer((sock) => {
    sock.on("data", (d) => (got += d));
    sock.end("tcp answer");
  });
  const port = await listen(server);
  const { guest, done } = await setup({ dnsServers: [`127.0.0.1:${port}`] });
  try {
    const c = await guest.connect(DNS_IP, 53);
    c.write(Buffer.from("tcp query"));
    await c.finished;
    assert.equal(c.data().toString(), "tcp answer");
    c.end();
    await until(() => got === "tcp query", "the query at the nameserver");
    await assert.rejects(guest.connect(DNS_IP, 80), /connection refused/);
  } finally {
    done();
    server.close();
  }
});

test("idle UDP flows expire and their host sockets close", async () => {
  const echo = await bindUdp((m, r, s) => s.send(m, r.port, r.address));
  const { usernet, guest, done } = await setup({ udpIdleMs: 100 });
  try {
    await guest.udpExchange(GATEWAY_IP, (echo.address() as { port: number }).port, Buffer.from("x"), 7000);
    assert.equal(usernet.stats().udpFlows, 1);
    await until(() => usernet.stats().udpFlows === 0, "the flow to expire", 2000);
  } finally {
    done();
    echo.close();
  }
});

test("a guest that stops reading pauses the host sender; nothing is buffered without bound", async () => {
  const total = 4 * 1024 * 1024;
  const data = randomBytes(total);
  const server = net.createServer((s) => s.end(data));
  const port = await listen(server);
  const { usernet, guest, done } = await setup();
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    c.pauseReading();
    await new Promise((r) => setTimeout(r, 400));
    const buffered = usernet.stats().tcpBufferedBytes;
    assert.ok(buffered <= 512 * 1024, `UserNet holds ${buffered} bytes`);
    assert.ok(buffered > 0);
    c.resumeReading();
    await c.finished;
    assert.ok(c.data().equals(data), "everything arrives after resuming");
  } finally {
    done();
    server.close();
  }
});

test("a host that stops reading closes the window to the guest; the data arrives when it resumes", async () => {
  // More than loopback's socket buffers can absorb, so the host really pushes back.
  const total = 24 * 1024 * 1024;
  const data = randomBytes(total);
  let hostSocket!: net.Socket;
  const chunks: Buffer[] = [];
  let ended!: () => void;
  const hostEnded = new Promise<void>((r) => (ended = r));
  const server = net.createServer((s) => {
    hostSocket = s;
    s.pause();
    s.on("data", (d) => chunks.push(d));
    s.on("end", ended);
  });
  const port = await listen(server);
  const { usernet, guest, done } = await setup();
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    c.write(data);
    c.end();
    await new Promise((r) => setTimeout(r, 400));
    const buffered = usernet.stats().tcpBufferedBytes;
    assert.ok(buffered <= 512 * 1024, `UserNet holds ${buffered} bytes`);
    assert.ok(c.pendingOutput > 0, "the guest is held back by the window");
    hostSocket.resume();
    await hostEnded;
    assert.ok(Buffer.concat(chunks).equals(data));
  } finally {
    done();
    server.close();
  }
});

test("close() releases every host socket and listener", async () => {
  let hostSocketClosed!: () => void;
  const closed = new Promise<void>((r) => (hostSocketClosed = r));
  const server = net.createServer((s) => {
    s.on("error", () => {});
    s.on("close", hostSocketClosed);
  });
  const port = await listen(server);
  const udpPeer = await bindUdp((m, r, s) => s.send(m, r.port, r.address));
  const forwardPort = await freePort();
  const { usernet, guest, done } = await setup({
    hostForwards: [{ hostAddr: "127.0.0.1", hostPort: forwardPort, guestPort: 22, proto: "tcp" }],
  });
  await guest.connect(GATEWAY_IP, port);
  await guest.udpExchange(GATEWAY_IP, (udpPeer.address() as { port: number }).port, Buffer.from("x"));
  assert.deepEqual(usernet.stats(), { tcpConnections: 1, tcpBufferedBytes: 0, udpFlows: 1 });
  done();
  await closed;
  assert.deepEqual(usernet.stats(), { tcpConnections: 0, tcpBufferedBytes: 0, udpFlows: 0 });
  const again = net.createServer();
  await new Promise<void>((resolve, reject) => {
    again.once("error", reject);
    again.listen(forwardPort, "127.0.0.1", resolve);
  });
  again.close();
  server.close();
  udpPeer.close();
});

test("the guest's address is learned, and TCP replies follow it", async () => {
  const server = net.createServer(ECHO);
  const port = await listen(server);
  const usernet = new UserNet({ dnsServers: [] });
  const guest = new GuestStack(usernet, { ip: 0x0a000209 }); // statically configured, no DHCP
  try {
    const c = await guest.connect(GATEWAY_IP, port);
    c.write(Buffer.from("static"));
    c.end();
    await c.finished;
    assert.equal(c.data().toString(), "static");
    assert.notEqual(GUEST_IP, 0x0a000209);
  } finally {
    guest.close();
    usernet.close();
    server.close();
  }
});

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

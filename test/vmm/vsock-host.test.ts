// The vsock device's Unix socket (Firecracker's hybrid vsock protocol) with real sockets, the
// guest played by the test's virtio driver: CONNECT/OK, refusals, and guest connections to PATH_P.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VsockHost } from "../../src/vmm/vsock-host.js";
import {
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_SEND,
} from "../../src/devices/virtio/vsock.js";
import { setup, type Packet } from "../devices/virtio/vsockguest.js";

async function until(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function withHost(fn: (h: { path: string; host: VsockHost; s: ReturnType<typeof setup> }) => Promise<void>) {
  const dir = mkdtempSync(join(tmpdir(), "yun-vsock-"));
  const host = new VsockHost();
  const s = setup();
  host.attach(s.dev);
  const path = join(dir, "vsock.sock");
  await host.listen(path);
  try {
    await fn({ path, host, s });
  } finally {
    await host.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A client socket collecting what it reads. */
function client(path: string): { sock: Socket; text: () => string; ended: () => boolean } {
  const sock = connect(path);
  let got = "";
  let ended = false;
  sock.on("data", (b: Buffer) => (got += b.toString()));
  sock.on("end", () => (ended = true));
  sock.on("error", () => {});
  return { sock, text: () => got, ended: () => ended };
}

test("CONNECT <port>: OK <hostport>, then a byte stream both ways", async () => {
  await withHost(async ({ path, s }) => {
    s.guest.postRx(16);
    const c = client(path);
    c.sock.write("CONNECT 1024\nearly bytes");
    const seen: Packet[] = [];
    await until("the guest's REQUEST", () => (seen.push(...s.guest.received()), seen.length > 0));
    const req = seen[0];
    assert.deepEqual([req.op, req.dstPort], [VSOCK_OP_REQUEST, 1024]);
    s.guest.send({ op: VSOCK_OP_RESPONSE, srcPort: 1024, dstPort: req.srcPort });
    await until("OK", () => c.text().includes("\n"));
    assert.equal(c.text(), `OK ${req.srcPort}\n`);
    const data: Packet[] = [];
    await until("the early bytes", () => (data.push(...s.guest.received()), data.length > 0));
    assert.deepEqual(
      data.map((p) => [p.op, Buffer.from(p.data).toString()]),
      [[VSOCK_OP_RW, "early bytes"]],
    );
    s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: req.srcPort, data: Buffer.from("from the guest") });
    s.guest.send({ op: VSOCK_OP_SHUTDOWN, srcPort: 1024, dstPort: req.srcPort, flags: VSOCK_SHUTDOWN_SEND });
    await until("the guest's bytes and EOF", () => c.ended());
    assert.equal(c.text(), `OK ${req.srcPort}\nfrom the guest`);
    c.sock.end();
    const after: Packet[] = [];
    await until(
      "SHUTDOWN from the host",
      () => (after.push(...s.guest.received()), after.some((p) => p.op === VSOCK_OP_SHUTDOWN)),
    );
  });
});

test("refusals are one ERROR line, then EOF", async () => {
  await withHost(async ({ path, s }) => {
    s.guest.postRx(4);
    const bad = client(path);
    bad.sock.write("HELLO\n");
    await until("EOF", () => bad.ended());
    assert.equal(bad.text(), "ERROR the first line must be CONNECT <port>\n");

    const c = client(path);
    c.sock.write("CONNECT 7\n");
    const seen: Packet[] = [];
    await until("the guest's REQUEST", () => (seen.push(...s.guest.received()), seen.length > 0));
    s.guest.send({ op: VSOCK_OP_RST, srcPort: 7, dstPort: seen[0].srcPort });
    await until("EOF", () => c.ended());
    assert.match(c.text(), /^ERROR nothing listens on guest vsock port 7 /);
  });
});

test("a guest connection to host port P reaches PATH_P, and is refused without a listener", async () => {
  await withHost(async ({ path, s }) => {
    s.guest.postRx(8);
    s.guest.send({ op: VSOCK_OP_REQUEST, srcPort: 40000, dstPort: 5000 });
    const refused: Packet[] = [];
    await until("a reset", () => (refused.push(...s.guest.received()), refused.length > 0));
    assert.equal(refused[0].op, VSOCK_OP_RST);

    let got = "";
    const accepted: Socket[] = [];
    const server = createServer((sock) => {
      accepted.push(sock);
      sock.on("data", (b: Buffer) => (got += b.toString()));
      sock.end("welcome");
    });
    await new Promise<void>((r) => server.listen(`${path}_5000`, r));
    try {
      s.guest.send({ op: VSOCK_OP_REQUEST, srcPort: 40001, dstPort: 5000 });
      const seen: Packet[] = [];
      await until("RESPONSE and data", () => (seen.push(...s.guest.received()), seen.length >= 2));
      assert.equal(seen[0].op, VSOCK_OP_RESPONSE);
      assert.deepEqual([seen[1].op, Buffer.from(seen[1].data).toString()], [VSOCK_OP_RW, "welcome"]);
      s.guest.send({ op: VSOCK_OP_RW, srcPort: 40001, dstPort: 5000, data: Buffer.from("hi host") });
      await until("the bytes at the host", () => got === "hi host");
    } finally {
      for (const a of accepted) a.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { REG } from "../../../src/devices/virtio/mmio.js";
import {
  HOST_BUF_ALLOC,
  HOST_QUEUE_LIMIT,
  VIRTIO_ID_VSOCK,
  VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  type VsockConnection,
  type VsockHandlers,
} from "../../../src/devices/virtio/vsock.js";
import { setup, EVBUF, RXBUF_BASE as RXBUF } from "./vsockguest.js";
const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

/** Handlers that record what happened. */
function recorder() {
  const log = {
    opened: 0,
    data: [] as Uint8Array[],
    ended: 0,
    closed: [] as { reason: string; error: boolean }[],
    drains: 0,
  };
  const handlers: VsockHandlers = {
    open: () => log.opened++,
    data: (b) => log.data.push(b),
    end: () => log.ended++,
    close: (reason, error) => log.closed.push({ reason, error }),
    drain: () => log.drains++,
  };
  return { log, handlers, text: () => str(Buffer.concat(log.data)) };
}

/** A host-initiated connection to guest port 1024, accepted by the guest with `bufAlloc`. */
function openToGuest(s: ReturnType<typeof setup>, bufAlloc = 65536) {
  const r = recorder();
  s.guest.postRx(8);
  const conn = s.dev.connect(1024, r.handlers);
  const [req] = s.guest.received();
  assert.equal(req.op, VSOCK_OP_REQUEST);
  s.guest.send({ op: VSOCK_OP_RESPONSE, srcPort: 1024, dstPort: req.srcPort, bufAlloc });
  assert.equal(r.log.opened, 1);
  return { conn, r, hostPort: req.srcPort };
}

test("the device says who it is: ID 19, the guest CID in its configuration", () => {
  const { d } = setup({ guestCid: 42 });
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_VSOCK);
  assert.equal(d.config64(0), 42);
  assert.equal(setup().d.config64(0), 3);
  assert.throws(() => setup({ guestCid: 2 }), /guest CID/);
});

test("a host connection: request, response, data both ways, end of file", () => {
  const s = setup();
  s.guest.postRx(8);
  const r = recorder();
  const conn = s.dev.connect(1024, r.handlers);
  const [req] = s.guest.received();
  assert.deepEqual(
    [req.srcCid, req.dstCid, req.dstPort, req.op, req.type, req.bufAlloc],
    [2, 3, 1024, VSOCK_OP_REQUEST, 1, HOST_BUF_ALLOC],
  );
  assert.equal(r.log.opened, 0, "not open before the guest answers");
  s.guest.send({ op: VSOCK_OP_RESPONSE, srcPort: 1024, dstPort: req.srcPort });
  assert.equal(r.log.opened, 1);
  assert.equal(s.g.irq.level, true);

  assert.equal(conn.write(text("hello, guest")), true);
  const [rw] = s.guest.received();
  assert.equal(rw.op, VSOCK_OP_RW);
  assert.equal(str(rw.data), "hello, guest");

  s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: req.srcPort, data: text("hello, host") });
  assert.equal(r.text(), "hello, host");

  s.guest.send({ op: VSOCK_OP_SHUTDOWN, srcPort: 1024, dstPort: req.srcPort, flags: VSOCK_SHUTDOWN_SEND });
  assert.equal(r.log.ended, 1);
  conn.end();
  const [shut] = s.guest.received();
  assert.equal(shut.op, VSOCK_OP_SHUTDOWN);
  assert.equal(shut.flags, VSOCK_SHUTDOWN_SEND);
  // Guest closes fully: the device answers with the reset Linux waits for.
  s.guest.send({
    op: VSOCK_OP_SHUTDOWN,
    srcPort: 1024,
    dstPort: req.srcPort,
    flags: VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV,
  });
  assert.deepEqual(r.log.closed, [{ reason: "the guest closed the connection", error: false }]);
  const [rst] = s.guest.received();
  assert.equal(rst.op, VSOCK_OP_RST);
  assert.equal(s.dev.connectionsOpen, 0);
});

test("nothing listening: the guest's reset becomes a clear close", () => {
  const s = setup();
  s.guest.postRx(2);
  const r = recorder();
  s.dev.connect(7777, r.handlers);
  const [req] = s.guest.received();
  s.guest.send({ op: VSOCK_OP_RST, srcPort: 7777, dstPort: req.srcPort });
  assert.equal(r.log.closed.length, 1);
  assert.match(r.log.closed[0].reason, /nothing listens on guest vsock port 7777/);
  assert.equal(r.log.closed[0].error, true);
});

test("host to guest respects the guest's credit and resumes on its credit update", () => {
  const s = setup();
  const { conn, hostPort } = openToGuest(s, 10);
  conn.write(text("0123456789abcdefghij"));
  const first = s.guest.received();
  assert.deepEqual(
    first.map((p) => str(p.data)),
    ["0123456789"],
    "only the guest's 10 bytes of buffer",
  );
  assert.deepEqual(s.guest.received(), [], "nothing more without credit");
  s.guest.send({ op: VSOCK_OP_CREDIT_UPDATE, srcPort: 1024, dstPort: hostPort, bufAlloc: 10, fwdCnt: 10 });
  assert.deepEqual(
    s.guest.received().map((p) => str(p.data)),
    ["abcdefghij"],
  );
});

test("write() asks the writer to wait past the queue limit, and drain follows", async () => {
  const s = setup();
  const { conn, r, hostPort } = openToGuest(s, 0);
  const chunk = new Uint8Array(64 * 1024);
  let accepted = 0;
  while (conn.write(chunk)) accepted++;
  assert.equal(accepted, HOST_QUEUE_LIMIT / chunk.length - 1);
  assert.equal(r.log.drains, 0);
  // The guest grants 1 MiB of buffer; its 7 receive buffers left take 4 KiB each.
  s.guest.send({ op: VSOCK_OP_CREDIT_UPDATE, srcPort: 1024, dstPort: hostPort, bufAlloc: 1 << 20 });
  assert.equal(
    s.guest.received().reduce((n, p) => n + p.len, 0),
    7 * 4096,
  );
  await new Promise((done) => setImmediate(done));
  assert.equal(r.log.drains, 1);
});

test("a guest connection to a host port: accept, data with credit returned as the host consumes", () => {
  const s = setup();
  s.guest.postRx(8);
  let incoming: VsockConnection | null = null;
  s.dev.listen((c) => (incoming = c));
  s.guest.send({ op: VSOCK_OP_REQUEST, srcPort: 50000, dstPort: 9000 });
  assert.ok(incoming);
  const conn = incoming as VsockConnection;
  assert.equal(conn.hostPort, 9000);
  assert.equal(conn.guestPort, 50000);
  assert.deepEqual(s.guest.received(), [], "no answer before the host accepts");
  const r = recorder();
  conn.accept(r.handlers);
  const [resp] = s.guest.received();
  assert.deepEqual([resp.op, resp.srcPort, resp.dstPort], [VSOCK_OP_RESPONSE, 9000, 50000]);

  const big = new Uint8Array(60000).fill(7);
  for (let i = 0; i < 4; i++) s.guest.send({ op: VSOCK_OP_RW, srcPort: 50000, dstPort: 9000, data: big });
  assert.equal(r.log.data.length, 4);
  assert.deepEqual(s.guest.received(), [], "no credit update before the host consumed anything");
  conn.consumed(4 * 60000);
  const [credit] = s.guest.received();
  assert.equal(credit.op, VSOCK_OP_CREDIT_UPDATE);
  assert.equal(credit.fwdCnt, 240000);
});

test("a guest that sends beyond its credit has its connection reset, the device goes on", () => {
  const s = setup();
  s.guest.postRx(8);
  s.dev.listen((c) => c.accept(r.handlers));
  const r = recorder();
  s.guest.send({ op: VSOCK_OP_REQUEST, srcPort: 1, dstPort: 2 });
  s.guest.received();
  const big = new Uint8Array(65536);
  for (let i = 0; i < 5; i++) s.guest.send({ op: VSOCK_OP_RW, srcPort: 1, dstPort: 2, data: big });
  assert.equal(r.log.data.length, HOST_BUF_ALLOC / 65536);
  assert.equal(r.log.closed.length, 1);
  assert.match(r.log.closed[0].reason, /more than the host's buffer/);
  assert.equal(s.guest.received()[0].op, VSOCK_OP_RST);
  assert.equal(s.guest.needsReset, false);
});

test("no listener: a guest's request is reset", () => {
  const s = setup();
  s.guest.postRx(2);
  s.guest.send({ op: VSOCK_OP_REQUEST, srcPort: 1234, dstPort: 80 });
  const [rst] = s.guest.received();
  assert.deepEqual([rst.op, rst.srcPort, rst.dstPort], [VSOCK_OP_RST, 80, 1234]);
});

test("hostile packets never throw: short headers, huge lengths, wrong CIDs, types and ops", () => {
  const s = setup();
  const { r, hostPort } = openToGuest(s);
  s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: hostPort }, 20); // header cut short
  s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: hostPort, srcCid: 99, data: text("x") });
  s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: hostPort, dstCid: 7, data: text("x") });
  s.guest.send({ op: 0xbeef, srcPort: 5, dstPort: 6 });
  assert.equal(r.log.closed.length, 0, "foreign packets do not touch the connection");
  s.guest.send({ op: VSOCK_OP_RW, srcPort: 1024, dstPort: hostPort, len: 0xffff_fff0, data: text("x") });
  assert.equal(r.log.closed.length, 1);
  assert.match(r.log.closed[0].reason, /malformed/);
  for (let i = 0; i < 200; i++) s.guest.send({ op: VSOCK_OP_RW, srcPort: i, dstPort: i }); // resets owed, bounded
  assert.equal(s.guest.needsReset, false);
  assert.ok(s.guest.received().every((p) => p.op === VSOCK_OP_RST));
});

test("a receive buffer too small for a header stops the device until the driver resets it", () => {
  const s = setup();
  s.guest.rx.submit(s.guest.rx.addChain([{ pa: RXBUF, len: 8, write: true }]));
  s.dev.connect(1024, recorder().handlers);
  assert.equal(s.guest.needsReset, true);
  assert.match(s.g.logs.join("\n"), /smaller than the 44-byte header/);
});

test("restore resets live connections and tells the guest with TRANSPORT_RESET", () => {
  const s = setup();
  const { r } = openToGuest(s);
  const saved = s.dev.save();
  assert.deepEqual(JSON.parse(JSON.stringify(saved)), saved, "plain data");
  s.guest.ev.submit(s.guest.ev.addChain([{ pa: EVBUF, len: 4, write: true }]));
  s.g.w32(EVBUF, 0xffff_ffff);
  assert.equal(saved.device.resetEventPending, true, "a connection was open when saved");
  s.dev.restore(saved);
  assert.deepEqual(s.dev.save(), saved, "a restored state saves the same");
  s.dev.deliverPendingEvents();
  assert.equal(r.log.closed.length, 1);
  assert.match(r.log.closed[0].reason, /restored/);
  assert.deepEqual(s.guest.ev.takeUsed(), [{ id: 0, len: 4 }]);
  assert.equal(s.g.r32(EVBUF), 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
  assert.equal(s.dev.connectionsOpen, 0);
});

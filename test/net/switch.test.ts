import { test } from "node:test";
import assert from "node:assert/strict";
import { LearningSwitch, type SwitchPort } from "../../src/net/switch.js";
import { parseMac } from "../../src/net/ethernet.js";
import type { NetBackend } from "../../src/devices/netdev.js";

const MAC = {
  a: "52:54:00:00:00:0a",
  b: "52:54:00:00:00:0b",
  c: "52:54:00:00:00:0c",
  bcast: "ff:ff:ff:ff:ff:ff",
  mcast: "01:00:5e:00:00:fb",
};

function frame(dst: string, src: string, tag: number): Uint8Array {
  const f = new Uint8Array(60);
  f.set(parseMac(dst), 0);
  f.set(parseMac(src), 6);
  f[12] = 0x08;
  f[14] = tag;
  return f;
}

/** A port plus what it received (frame tags, copied as a device would). */
function plug(sw: LearningSwitch, accept = true): { port: SwitchPort; got: number[] } {
  const port = sw.addPort();
  const got: number[] = [];
  port.attach((f) => {
    got.push(f[14]);
    return accept;
  });
  return { port, got };
}

test("unknown unicast floods to every other port; replies then go only where the MAC was learned", () => {
  const sw = new LearningSwitch();
  const A = plug(sw);
  const B = plug(sw);
  const C = plug(sw);
  A.port.send(frame(MAC.b, MAC.a, 1));
  assert.deepEqual([A.got, B.got, C.got], [[], [1], [1]], "flooded, never back to the sender");
  B.port.send(frame(MAC.a, MAC.b, 2));
  assert.deepEqual([A.got, B.got, C.got], [[2], [1], [1]], "a was learned on A");
  A.port.send(frame(MAC.b, MAC.a, 3));
  assert.deepEqual([A.got, B.got, C.got], [[2], [1, 3], [1]], "b was learned on B");
  assert.equal(sw.lookup(MAC.a), A.port);
  assert.equal(sw.macCount, 2);
});

test("broadcast and multicast flood; a frame for a MAC on the ingress port is not sent back", () => {
  const sw = new LearningSwitch();
  const A = plug(sw);
  const B = plug(sw);
  const C = plug(sw);
  C.port.send(frame(MAC.bcast, MAC.c, 1));
  C.port.send(frame(MAC.mcast, MAC.c, 2));
  assert.deepEqual([A.got, B.got, C.got], [[1, 2], [1, 2], []]);
  A.port.send(frame(MAC.bcast, MAC.a, 3));
  A.port.send(frame(MAC.a, MAC.b, 4)); // b is behind A too, talking to a on the same segment
  assert.deepEqual(A.got, [1, 2]);
  assert.deepEqual(B.got, [1, 2, 3]);
  assert.equal(sw.lookup(MAC.b), A.port, "a multicast source is never learned, a unicast one moves");
  A.port.send(frame(MAC.b, MAC.mcast, 5));
  assert.equal(sw.lookup(MAC.mcast), undefined);
});

test("entries age out, after which frames to that MAC flood again", () => {
  let now = 1000;
  const sw = new LearningSwitch({ ageMs: 5000, now: () => now });
  const A = plug(sw);
  const B = plug(sw);
  const C = plug(sw);
  B.port.send(frame(MAC.bcast, MAC.b, 1));
  A.port.send(frame(MAC.b, MAC.a, 2));
  assert.deepEqual(C.got, [1], "b known: not flooded");
  now += 5000;
  assert.equal(sw.lookup(MAC.b), undefined);
  A.port.send(frame(MAC.b, MAC.a, 3));
  assert.deepEqual(C.got, [1, 3], "b aged out: flooded");
  assert.deepEqual(B.got, [2, 3]);
});

test("the MAC table is bounded: a flood of made-up sources keeps at most maxMacs entries", () => {
  const sw = new LearningSwitch({ maxMacs: 8 });
  const A = plug(sw);
  const B = plug(sw);
  for (let i = 0; i < 1000; i++) {
    const src = `52:54:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}`;
    A.port.send(frame(MAC.bcast, src, 0));
  }
  assert.equal(sw.macCount, 8);
  assert.equal(B.got.length, 1000);
  assert.equal(sw.lookup("52:54:00:00:03:e7"), A.port, "the newest entry is kept");
});

test("a closed port is forgotten; refused frames are counted as dropped", () => {
  const sw = new LearningSwitch();
  const A = plug(sw);
  const B = plug(sw, false);
  const C = plug(sw);
  B.port.send(frame(MAC.bcast, MAC.b, 1));
  A.port.send(frame(MAC.b, MAC.a, 2));
  assert.equal(sw.stats().dropped, 1, "B had no room");
  B.port.close();
  assert.equal(sw.portCount, 2);
  assert.equal(sw.lookup(MAC.b), undefined);
  A.port.send(frame(MAC.b, MAC.a, 3));
  assert.deepEqual(C.got, [1, 3], "b unknown again: flooded to C");
  B.port.send(frame(MAC.bcast, MAC.b, 4));
  assert.deepEqual(C.got, [1, 3], "a closed port sends nothing");
});

test("separate switches are separate networks; short frames are ignored", () => {
  const one = new LearningSwitch();
  const two = new LearningSwitch();
  const A = plug(one);
  const B = plug(one);
  const X = plug(two);
  A.port.send(frame(MAC.bcast, MAC.a, 1));
  A.port.send(new Uint8Array(10));
  assert.deepEqual(B.got, [1]);
  assert.deepEqual(X.got, []);
});

test("connect() plugs an existing backend into a port both ways", () => {
  const sw = new LearningSwitch();
  const A = plug(sw);
  const sent: number[] = [];
  let deliver: ((f: Uint8Array) => boolean) | null = null;
  const backend: NetBackend = {
    send: (f) => sent.push(f[14]),
    attach: (d) => (deliver = d),
    close: () => {},
  };
  sw.connect(backend);
  A.port.send(frame(MAC.bcast, MAC.a, 7));
  assert.deepEqual(sent, [7]);
  deliver!(frame(MAC.a, MAC.c, 8));
  assert.deepEqual(A.got, [8]);
});

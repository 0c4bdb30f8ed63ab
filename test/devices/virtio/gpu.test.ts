import { test } from "node:test";
import assert from "node:assert/strict";
import { GPU_CMD, GPU_FLAG_FENCE, GPU_RESP, VirtioGpu } from "../../../src/devices/virtio/gpu.js";
import { Driver, Guest, RAM_BASE, RAM_SIZE } from "./driver.js";

const REQ = RAM_BASE + 0x10000;
const RESP = RAM_BASE + 0x11000;
const BACKING = RAM_BASE + 0x40000;
const B8G8R8X8 = 2;

function setup(opts: { maxHostBytes?: number } = {}) {
  const g = new Guest();
  const gpu = new VirtioGpu(g.bus, g.irqLine, { log: g.log, width: 800, height: 600, ...opts });
  const d = new Driver(gpu, g);
  d.negotiate();
  const ctrl = d.setupQueue(0, 64, RAM_BASE + 0x1000);
  const cursor = d.setupQueue(1, 64, RAM_BASE + 0x3000);
  d.driverOk();
  const damage: number[][] = [];
  const sizes: number[][] = [];
  gpu.listen({ damage: (...r) => damage.push(r), resize: (w, h) => sizes.push([w, h]) });
  /** Sends one command (header + little-endian u32 fields) and returns the response type. */
  const cmd = (type: number, fields: number[], extra: { flags?: number; fence?: number; tail?: number[] } = {}) => {
    const words = [type, extra.flags ?? 0, extra.fence ?? 0, 0, 0, 0, ...fields, ...(extra.tail ?? [])];
    words.forEach((w, i) => g.w32(REQ + 4 * i, w));
    g.fill(RESP, 512, 0xee);
    const head = ctrl.addChain([
      { pa: REQ, len: words.length * 4 },
      { pa: RESP, len: 512, write: true },
    ]);
    ctrl.submit(head);
    const used = ctrl.takeUsed();
    assert.equal(used.length, 1);
    return { type: g.r32(RESP), flags: g.r32(RESP + 4), fence: g.r32(RESP + 8), len: used[0].len };
  };
  return { g, gpu, d, ctrl, cursor, cmd, damage, sizes };
}

/** Creates resource 1 (w x h) backed by RAM at BACKING in two entries and scans it out. */
function showResource(t: ReturnType<typeof setup>, w: number, h: number) {
  assert.equal(t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [1, B8G8R8X8, w, h]).type, GPU_RESP.OK_NODATA);
  const bytes = w * h * 4;
  // Split mid-row: backing entries need not follow rows or pages.
  const half = Math.floor(bytes / 2 / 12) * 12;
  // nr_entries, then {addr lo, addr hi, length, padding} each.
  const tail = [BACKING, 0, half, 0, BACKING + half, 0, bytes - half, 0];
  assert.equal(t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 2], { tail }).type, GPU_RESP.OK_NODATA);
  assert.equal(t.cmd(GPU_CMD.SET_SCANOUT, [0, 0, w, h, 0, 1]).type, GPU_RESP.OK_NODATA);
}

test("display info offers the configured mode on scanout 0", () => {
  const t = setup();
  const r = t.cmd(GPU_CMD.GET_DISPLAY_INFO, []);
  assert.equal(r.type, GPU_RESP.OK_DISPLAY_INFO);
  assert.equal(r.len, 24 + 16 * 24);
  assert.deepEqual([t.g.r32(RESP + 24 + 8), t.g.r32(RESP + 24 + 12), t.g.r32(RESP + 24 + 16)], [800, 600, 1]);
  assert.equal(t.d.config32(8), 1, "num_scanouts");
});

test("a transferred and flushed rectangle reaches the surface and is reported as damage", () => {
  const t = setup();
  showResource(t, 64, 32);
  assert.deepEqual(t.sizes, [[64, 32]]);
  // The guest draws a red pixel at (5, 3) and a green one at (50, 25) in its backing (BGRX).
  t.g.put(BACKING + (3 * 64 + 5) * 4, [0, 0, 255, 0]);
  t.g.put(BACKING + (25 * 64 + 50) * 4, [0, 255, 0, 0]);
  assert.equal(t.gpu.surface()!.pixels[(3 * 64 + 5) * 4 + 2], 0, "nothing before the transfer");
  // Transfer the 40x20 rectangle at (4, 2): offset = y * stride + x * 4.
  const r = t.cmd(GPU_CMD.TRANSFER_TO_HOST_2D, [4, 2, 40, 20, 2 * 256 + 16, 0, 1, 0]);
  assert.equal(r.type, GPU_RESP.OK_NODATA);
  const s = t.gpu.surface()!;
  assert.equal(s.pixels[(3 * 64 + 5) * 4 + s.r], 255, "inside the rectangle: copied");
  assert.equal(s.pixels[(25 * 64 + 50) * 4 + s.g], 0, "outside the rectangle: not copied");
  t.damage.length = 0;
  t.cmd(GPU_CMD.RESOURCE_FLUSH, [4, 2, 40, 20, 1, 0]);
  assert.deepEqual(t.damage, [[4, 2, 40, 20]]);
});

test("fenced commands come back with the fence flag and id", () => {
  const t = setup();
  const r = t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [7, B8G8R8X8, 16, 16], { flags: GPU_FLAG_FENCE, fence: 1234 });
  assert.equal(r.type, GPU_RESP.OK_NODATA);
  assert.equal(r.flags & GPU_FLAG_FENCE, GPU_FLAG_FENCE);
  assert.equal(r.fence, 1234);
  assert.equal(t.g.irq.level, true);
});

test("absurd resources are refused without allocating anything", () => {
  const t = setup({ maxHostBytes: 4 * 1024 * 1024 });
  const before = t.gpu.hostMemory;
  assert.equal(
    t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [1, B8G8R8X8, 0xffff_ffff, 0xffff_ffff]).type,
    GPU_RESP.ERR_OUT_OF_MEMORY,
  );
  assert.equal(
    t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [2, B8G8R8X8, 8192, 8192]).type,
    GPU_RESP.ERR_OUT_OF_MEMORY,
    "over the budget",
  );
  assert.equal(t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [3, B8G8R8X8, 0, 10]).type, GPU_RESP.ERR_OUT_OF_MEMORY);
  assert.equal(
    t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [4, 999, 16, 16]).type,
    GPU_RESP.ERR_INVALID_PARAMETER,
    "unknown format",
  );
  assert.equal(t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [0, B8G8R8X8, 16, 16]).type, GPU_RESP.ERR_INVALID_RESOURCE_ID);
  assert.equal(t.gpu.hostMemory, before);
  assert.ok(t.gpu.errors >= 5);
  // The device still works.
  assert.equal(t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [5, B8G8R8X8, 16, 16]).type, GPU_RESP.OK_NODATA);
  assert.equal(t.gpu.hostMemory, before + 16 * 16 * 4);
});

test("backing outside RAM, rectangles outside resources and unknown ids get errors, not crashes", () => {
  const t = setup();
  t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [1, B8G8R8X8, 16, 16]);
  const outside = [RAM_BASE + RAM_SIZE - 100, 0, 4096, 0];
  assert.equal(t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 1], { tail: outside }).type, GPU_RESP.ERR_UNSPEC);
  const high = [0, 0x7fff_ffff, 4096, 0];
  assert.equal(t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 1], { tail: high }).type, GPU_RESP.ERR_UNSPEC);
  assert.equal(
    t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 1_000_000]).type,
    GPU_RESP.ERR_INVALID_PARAMETER,
    "more entries than allowed",
  );
  assert.equal(
    t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 3], { tail: [BACKING, 0, 4096, 0] }).type,
    GPU_RESP.ERR_INVALID_PARAMETER,
    "entries missing",
  );
  assert.equal(
    t.cmd(GPU_CMD.TRANSFER_TO_HOST_2D, [0, 0, 16, 16, 0, 0, 1, 0]).type,
    GPU_RESP.ERR_UNSPEC,
    "no backing yet",
  );
  // Backing too small for the transfer's reach.
  assert.equal(t.cmd(GPU_CMD.RESOURCE_ATTACH_BACKING, [1, 1], { tail: [BACKING, 0, 512, 0] }).type, GPU_RESP.OK_NODATA);
  assert.equal(t.cmd(GPU_CMD.TRANSFER_TO_HOST_2D, [0, 0, 16, 16, 0, 0, 1, 0]).type, GPU_RESP.ERR_INVALID_PARAMETER);
  // x + width wrapping around 32 bits.
  assert.equal(
    t.cmd(GPU_CMD.TRANSFER_TO_HOST_2D, [0xffff_fff0, 0, 0x20, 1, 0, 0, 1, 0]).type,
    GPU_RESP.ERR_INVALID_PARAMETER,
  );
  assert.equal(t.cmd(GPU_CMD.SET_SCANOUT, [0, 0, 17, 16, 0, 1]).type, GPU_RESP.ERR_INVALID_PARAMETER);
  assert.equal(t.cmd(GPU_CMD.SET_SCANOUT, [0, 0, 16, 16, 5, 1]).type, GPU_RESP.ERR_INVALID_SCANOUT_ID);
  assert.equal(t.cmd(GPU_CMD.RESOURCE_FLUSH, [0, 0, 16, 16, 42, 0]).type, GPU_RESP.ERR_INVALID_RESOURCE_ID);
  assert.equal(t.cmd(GPU_CMD.RESOURCE_UNREF, [42, 0]).type, GPU_RESP.ERR_INVALID_RESOURCE_ID);
  assert.equal(t.cmd(0x0200, [0, 0]).type, GPU_RESP.ERR_UNSPEC, "3D was not offered");
  assert.equal(t.cmd(GPU_CMD.RESOURCE_CREATE_2D, []).type, GPU_RESP.ERR_UNSPEC, "short request");
  assert.equal(t.cmd(GPU_CMD.RESOURCE_DETACH_BACKING, [1, 0]).type, GPU_RESP.OK_NODATA);
  assert.equal(t.cmd(GPU_CMD.RESOURCE_DETACH_BACKING, [1, 0]).type, GPU_RESP.ERR_UNSPEC, "nothing left to detach");
  assert.equal(t.d.status() & 64, 0, "the device did not need a reset");
  assert.ok(t.g.logs.length <= 11, "errors are logged a few times, not without end");
});

test("unreferencing the scanned-out resource darkens the display", () => {
  const t = setup();
  showResource(t, 32, 16);
  assert.notEqual(t.gpu.surface(), null);
  t.cmd(GPU_CMD.RESOURCE_UNREF, [1, 0]);
  assert.equal(t.gpu.surface(), null);
  assert.deepEqual(t.sizes.at(-1), [800, 600], "back to the offered mode");
  assert.equal(t.gpu.hostMemory, 0);
});

test("the cursor queue records the cursor and answers every buffer", () => {
  const t = setup();
  t.cmd(GPU_CMD.RESOURCE_CREATE_2D, [9, B8G8R8X8, 64, 64]);
  const put = (words: number[]) => {
    words.forEach((w, i) => t.g.w32(REQ + 4 * i, w));
    t.cursor.submit(t.cursor.addChain([{ pa: REQ, len: 56 }]));
  };
  put([GPU_CMD.UPDATE_CURSOR, 0, 0, 0, 0, 0, 0, 100, 200, 0, 9, 3, 4, 0]);
  assert.deepEqual(t.gpu.cursorState, { resourceId: 9, x: 100, y: 200, hotX: 3, hotY: 4 });
  put([GPU_CMD.MOVE_CURSOR, 0, 0, 0, 0, 0, 0, 300, 400, 0, 0, 0, 0, 0]);
  assert.equal(t.gpu.cursorState.x, 300);
  assert.deepEqual(
    t.cursor.takeUsed().map((u) => u.len),
    [0, 0],
  );
});

test("snapshots carry resources and scanout; the host copy is rebuilt from guest memory", () => {
  const t = setup();
  showResource(t, 64, 32);
  t.g.put(BACKING + (10 * 64 + 10) * 4, [1, 2, 3, 0]);
  t.cmd(GPU_CMD.TRANSFER_TO_HOST_2D, [0, 0, 64, 32, 0, 0, 1, 0]);
  const saved = JSON.parse(JSON.stringify(t.gpu.save()));
  const g2 = new Guest();
  g2.put(BACKING, t.g.get(BACKING, 64 * 32 * 4));
  const gpu2 = new VirtioGpu(g2.bus, g2.irqLine, { log: g2.log, width: 800, height: 600 });
  gpu2.restore(saved);
  const s = gpu2.surface()!;
  assert.equal(s.width, 64);
  assert.deepEqual([...s.pixels.subarray((10 * 64 + 10) * 4, (10 * 64 + 10) * 4 + 3)], [1, 2, 3]);
  // A state naming backing outside RAM is refused with a sentence.
  saved.device.resources[0].backing = [[RAM_BASE + RAM_SIZE, 4096]];
  assert.throws(() => new VirtioGpu(g2.bus, g2.irqLine, { log: g2.log }).restore(saved), /not in RAM/);
});

test("a reset drops every resource", () => {
  const t = setup();
  showResource(t, 32, 16);
  t.d.set(0x070, 0);
  assert.equal(t.gpu.surface(), null);
  assert.equal(t.gpu.hostMemory, 0);
});

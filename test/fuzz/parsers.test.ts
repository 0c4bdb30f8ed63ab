/**
 * The parser fuzz campaigns (qcow2 images, user-mode networking and the switch, snapshot
 * directories) with a fixed seed, and the regression cases of what they found.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runFixed, type Campaign } from "../../fuzz/campaign.js";
import { campaigns } from "../../fuzz/campaigns/index.js";
import { HypervisorSbi } from "../../src/machine/sbi.js";
import { Bus } from "../../src/cpu/bus.js";
import { Hart } from "../../src/cpu/hart.js";
import { loadSnapshot, SnapshotError } from "../../src/vmm/snapshot.js";
import { loopKernel } from "../../fuzz/campaigns/snapshot.js";
import { VirtMachine } from "../../src/vmm/virt.js";

for (const c of campaigns.filter((x: Campaign) => x.surface === "parser")) {
  test(`fuzz ${c.name}: ${c.testRuns} cases, fixed seed`, async () => {
    const r = await runFixed(c);
    assert.equal(r.failure, undefined, r.failure);
    assert.equal(r.cases, c.testRuns);
  });
}

test("regression (snapshot): an SBI timer list longer than the harts is not kept", () => {
  const bus = new Bus(0x8000_0000, 1 << 16);
  const sbi = new HypervisorSbi([new Hart(bus, 0, { now: () => 0 })], {
    putByte() {},
    getByte: () => -1,
    reset() {},
    readPhysical: () => undefined,
  });
  sbi.restore({ timerDeadline: [-1, 2, 3] });
  assert.deepEqual(sbi.save(), { timerDeadline: [-1] });
  sbi.restore({ timerDeadline: ["x" as unknown as number] });
  assert.deepEqual(sbi.save(), { timerDeadline: [-1] });
});

test("regression (snapshot): a body whose memory file or disk copies are malformed is refused with a sentence", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-snapfuzz-"));
  try {
    const spec = {
      name: "x",
      memoryMiB: 16,
      cpus: 1,
      engine: "interp",
      append: "",
      kernel: "k",
      initrd: null,
      firmware: null,
      disks: [],
      net: { kind: "none" },
      mac: "52:54:00:12:34:56",
      cpuCap: null,
    };
    const memory = { file: "memory.bin", bytes: 32, pages: 0, totalPages: 4096, sha256: "0" };
    const write = (body: Record<string, unknown>) => {
      const checksum = createHash("sha256").update(JSON.stringify(body)).digest("hex");
      writeFileSync(join(dir, "snapshot.json"), JSON.stringify({ format: "yun-snapshot", version: 1, checksum, body }));
    };
    const base = { id: "a", createdAt: "", spec, state: {}, parent: null, memory, diskCopies: [] };
    for (const [body, why] of [
      [{ ...base, memory: { ...memory, file: {} } }, /memory file description is malformed/],
      [{ ...base, memory: { ...memory, file: "../../etc/passwd" } }, /memory file description is malformed/],
      [{ ...base, diskCopies: ["../x"] }, /disk copies is malformed/],
      [{ ...base, parent: { dir: 5 } }, /parent reference is malformed/],
    ] as const) {
      write(body as unknown as Record<string, unknown>);
      assert.throws(
        () => loadSnapshot(dir),
        (e: unknown) => e instanceof SnapshotError && why.test((e as Error).message),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("regression (snapshot): device states of the wrong shape are refused naming the device", () => {
  const m = new VirtMachine({
    kernel: loopKernel(),
    firmware: null,
    firmwareKind: "none",
    append: "",
    memoryMiB: 16,
    engine: "interp",
    output: () => {},
    log: () => {},
  });
  try {
    const good = m.saveState();
    for (const [part, bad, why] of [
      ["plic", 0, /the PLIC state is malformed/],
      ["clint", {}, /the CLINT state is malformed/],
      ["uart", null, /the UART state is malformed/],
      ["disks", {}, /disks/],
      ["input", 5, /input queue is not a list/],
      ["clock", [1, 2, 3], /clock is not a number/],
    ] as const) {
      const s = { ...JSON.parse(JSON.stringify(good)), [part]: bad };
      assert.throws(
        () => m.restoreState(s),
        (e: unknown) => (e as Error).constructor === Error && why.test((e as Error).message),
        part,
      );
    }
  } finally {
    m.close();
  }
});

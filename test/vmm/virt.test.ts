/**
 * The board's virtio devices: slots, interrupts and device tree in probe order, disks opened and
 * closed by the machine, errors before anything runs. A tiny "kernel" powers the machine off
 * through the syscon, so run() is exercised without Linux.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VirtMachine, virtioSlot, maxDisks, type VirtConfig } from "../../src/vmm/virt.js";
import { REG } from "../../src/devices/virtio/mmio.js";
import type { NetBackend } from "../../src/devices/netdev.js";
import { DiskImageError, createQcow2 } from "../../src/storage/image.js";
import { MemDisk } from "../devices/virtio/blkhelp.js";
import { dtcMissing, decompile } from "../support/dtc.js";
import * as A from "../support/rv-asm.js";

const T0 = 5;
const T1 = 6;

/** A RISC-V Linux Image header followed by code that writes SYSCON_PASS to the syscon. */
function powerOffKernel(): Uint8Array {
  const image = new Uint8Array(4096);
  const dv = new DataView(image.buffer);
  dv.setUint32(0, A.jal(0, 64), true); // code0: jump past the header
  image.set(new TextEncoder().encode("RISCV"), 0x30);
  dv.setUint32(0x38, 0x05435352, true);
  const code = [A.lui(T0, 0x100), A.lui(T1, 0x5), A.addi(T1, T1, 0x555), A.sw(T1, 0, T0), A.jal(0, 0)];
  code.forEach((w, i) => dv.setUint32(64 + 4 * i, w, true));
  return image;
}

class FakeNet implements NetBackend {
  closed = 0;
  deliver: ((frame: Uint8Array) => boolean) | null = null;
  send(): void {}
  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
  }
  close(): void {
    this.closed++;
  }
}

class TrackedDisk extends MemDisk {
  closed = 0;
  override close(): void {
    this.closed++;
  }
}

function config(extra: Partial<VirtConfig> = {}): VirtConfig {
  return {
    kernel: powerOffKernel(),
    firmware: null,
    firmwareKind: "none",
    append: "console=ttyS0",
    memoryMiB: 64,
    output: () => {},
    log: () => {},
    ...extra,
  };
}

const deviceId = (m: VirtMachine, slot: number) => m.bus.mmioRead(virtioSlot(slot).base + REG.DEVICE_ID, 4);

test("virtio slots: disks first (vda, vdb), then the network card, the console and the RNG", () => {
  const disks = [new TrackedDisk(1 << 20), new TrackedDisk(2 << 20)];
  const net = new FakeNet();
  const m = new VirtMachine(config({ disks, net, mac: "52:54:00:aa:bb:cc" }));
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((s) => deviceId(m, s)),
    [2, 2, 1, 3, 4, undefined],
    "device IDs per slot (blk, blk, net, console, rng, nothing mapped)",
  );
  // Capacity (sectors) of each disk, and the MAC, from the config spaces.
  assert.equal(m.bus.mmioRead(virtioSlot(0).base + REG.CONFIG, 4), 2048);
  assert.equal(m.bus.mmioRead(virtioSlot(1).base + REG.CONFIG, 4), 4096);
  const mac = [0, 1, 2, 3, 4, 5].map((i) => m.bus.mmioRead(virtioSlot(2).base + REG.CONFIG + i, 1));
  assert.deepEqual(mac, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
  assert.ok(net.deliver !== null, "the network card attached to its backend");
  m.close();
  m.close();
  assert.deepEqual(
    disks.map((d) => [d.flushes, d.closed]),
    [
      [1, 1],
      [1, 1],
    ],
    "each disk flushed and closed once",
  );
  assert.equal(net.closed, 1);
});

test("the device tree lists the virtio nodes in slot order with their interrupts", { skip: dtcMissing }, () => {
  const m = new VirtMachine(config({ disks: [new MemDisk(1 << 20)], net: new FakeNet() }));
  const dv = new DataView(m.bus.ramBuffer);
  const at = m.layout.dtbAddr - m.bus.ramBase;
  const size = dv.getUint32(at + 4); // totalsize, big-endian
  const { dts, stderr } = decompile(m.bus.ram.slice(at, at + size));
  assert.equal(stderr, "");
  const nodes = [...dts.matchAll(/virtio_mmio@([0-9a-f]+) \{[^}]*?interrupts = <(0x[0-9a-f]+)>/g)].map((x) => [
    x[1],
    Number(x[2]),
  ]);
  assert.deepEqual(nodes, [
    ["10001000", 1],
    ["10002000", 2],
    ["10003000", 3],
    ["10004000", 4],
  ]);
  m.close();
});

test("too many disks, or a disk that cannot be opened, fail the machine and close what it opened", () => {
  assert.equal(maxDisks(true), 13);
  assert.equal(maxDisks(false), 14);
  assert.equal(maxDisks(true, true, true), 9);
  const fourteen = Array.from({ length: 14 }, () => new MemDisk(1 << 20));
  assert.throws(() => new VirtMachine(config({ disks: fourteen, net: new FakeNet() })), /at most 13 disks/);
  // Past QEMU's eight slots, windows go on and PLIC sources skip the UART's (10) and the RTC's (11).
  const m = new VirtMachine(config({ disks: fourteen }));
  assert.deepEqual(
    [7, 8, 15].map((n) => virtioSlot(n)),
    [
      { base: 0x1000_8000, size: 0x1000, irq: 8 },
      { base: 0x1000_9000, size: 0x1000, irq: 12 },
      { base: 0x1001_0000, size: 0x1000, irq: 19 },
    ],
  );
  m.close();

  const dir = mkdtempSync(join(tmpdir(), "yun-virt-"));
  try {
    const good = join(dir, "good.qcow2");
    createQcow2(good, { size: 1 << 20 });
    const bad = join(dir, "bad.qcow2");
    writeFileSync(bad, Uint8Array.of(0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3)); // qcow2 magic, then nothing
    const given = new TrackedDisk(1 << 20);
    assert.throws(
      () => new VirtMachine(config({ disks: [given, { path: good }, { path: bad }] })),
      (e: Error) => e instanceof DiskImageError && e.message.includes(bad),
    );
    assert.equal(existsSync(`${good}.yun-lock`), false, "the good disk it had opened was closed (lock released)");
    assert.equal(given.closed, 0, "a backend the caller passed in stays the caller's");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("run() ends when the guest powers off, and closes the disks and the network", async () => {
  const disk = new TrackedDisk(1 << 20);
  const net = new FakeNet();
  for (const engine of ["interp", "jit"] as const) {
    const m = new VirtMachine(config({ disks: [disk], net, engine }));
    const power = await m.run();
    assert.deepEqual(power, { kind: "poweroff", code: 0 });
  }
  assert.equal(disk.closed, 2);
  assert.equal(net.closed, 2);
});

test("an SMP machine runs to power-off when nothing else holds the process open", () => {
  // A firmware in which hart 0 counts to 50 million and powers off, and the other hart parks in WFI.
  const A0 = 10;
  const T2 = 7;
  const code = [
    A.bne(A0, 0, 32), // 0: not hart 0: park
    A.lui(T2, 0x2faf), // 4: t2 = 50 000 000 (0x2faf080)
    A.addi(T2, T2, 0x080), // 8
    A.addi(T2, T2, -1), // 12: count down
    A.bne(T2, 0, -4), // 16
    A.lui(T0, 0x100), // 20: syscon
    A.lui(T1, 0x5), // 24
    A.jal(0, 12), // 28: to the store at 40
    0x10500073, // 32: park: wfi
    A.jal(0, -4), // 36
    A.addi(T1, T1, 0x555), // 40
    A.sw(T1, 0, T0), // 44: power off
    A.jal(0, 0), // 48
  ];
  const firmware = new Uint8Array(4 * code.length);
  code.forEach((w, i) => new DataView(firmware.buffer).setUint32(4 * i, w >>> 0, true));
  const dir = mkdtempSync(join(tmpdir(), "yun-smp-"));
  try {
    writeFileSync(join(dir, "kernel"), powerOffKernel());
    writeFileSync(join(dir, "firmware"), firmware);
    // A script of its own: a test runner keeps its own handles open, which would hide the fault.
    const virt = new URL("../../src/vmm/virt.js", import.meta.url).href;
    const script = `
      import { readFileSync } from "node:fs";
      const { VirtMachine } = await import(${JSON.stringify(virt)});
      const m = new VirtMachine({ kernel: readFileSync(${JSON.stringify(join(dir, "kernel"))}),
        firmware: readFileSync(${JSON.stringify(join(dir, "firmware"))}), firmwareKind: "dynamic",
        append: "", memoryMiB: 64, cpus: 2, output: () => {}, log: (l) => console.error(l) });
      const power = await m.run();
      console.log(JSON.stringify(power));`;
    writeFileSync(join(dir, "run.mjs"), script);
    const r = spawnSync(process.execPath, [join(dir, "run.mjs")], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
    assert.deepEqual(JSON.parse(r.stdout.trim()), { kind: "poweroff", code: 0 }, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a display takes the three slots after the RNG and travels in the machine's state", () => {
  const net = new FakeNet();
  const m = new VirtMachine(config({ disks: [new MemDisk(1 << 20)], net, display: { width: 640, height: 480 } }));
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((s) => deviceId(m, s)),
    [2, 1, 3, 4, 16, 18, 18, undefined],
    "blk, net, console, rng, gpu, keyboard, tablet",
  );
  assert.equal(maxDisks(true, false, true), 10);
  assert.throws(
    () =>
      new VirtMachine(
        config({
          disks: Array.from({ length: 11 }, () => new MemDisk(1 << 20)),
          net: new FakeNet(),
          display: { width: 640, height: 480 },
        }),
      ),
    /at most 10 disks besides its network card and a display/,
  );
  m.display!.keyboard.key(30, true); // waits in the device until the driver posts buffers
  const state = JSON.parse(JSON.stringify(m.saveState()));
  assert.equal(state.display.keyboard.device.pending.length, 6);
  const twin = new VirtMachine(
    config({ disks: [new MemDisk(1 << 20)], net: new FakeNet(), display: { width: 640, height: 480 } }),
  );
  twin.restoreState(state);
  assert.equal(twin.display!.keyboard.pendingEvents, 2);
  const headless = new VirtMachine(config({ disks: [new MemDisk(1 << 20)], net: new FakeNet() }));
  assert.equal(headless.display, null);
  assert.throws(() => headless.restoreState(state), /had a display, this one has none/);
  assert.throws(() => twin.restoreState(headless.saveState()), /had no display/);
  for (const x of [m, twin, headless]) x.close();
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { dtcMissing, decompile } from "../support/dtc.js";
import { buildVirtDeviceTree, isaExtensions, type VirtDtConfig } from "../../src/vmm/devicetree.js";

const cfg: VirtDtConfig = {
  harts: 2,
  isa: "rv64imafdc_zicntr_zicsr_zifencei",
  mmu: "sv39",
  ramBase: 0x8000_0000,
  ramSize: 0x1_0000_0000,
  timebaseHz: 10_000_000,
  bootargs: "console=ttyS0 root=/dev/vda1",
  rngSeed: Uint8Array.from({ length: 32 }, (_, i) => i + 1),
  initrd: { start: 0x8800_0000, end: 0x8900_0000 },
  virtio: [
    { base: 0x1000_1000, size: 0x1000, irq: 1 },
    { base: 0x1000_2000, size: 0x1000, irq: 2 },
  ],
};

/** The body of the first node whose header matches `header` (nodes here contain no braces in strings). */
function node(dts: string, header: string): string {
  const start = dts.indexOf(`${header} {`);
  assert.notEqual(start, -1, `node ${header} missing`);
  let depth = 0;
  for (let i = dts.indexOf("{", start); i < dts.length; i++) {
    if (dts[i] === "{") depth++;
    else if (dts[i] === "}" && --depth === 0) return dts.slice(start, i + 1);
  }
  throw new Error("unbalanced");
}

/** phandle value of a node body. */
function phandle(body: string): string {
  const m = /phandle = <(0x[0-9a-f]+)>;/.exec(body);
  assert.ok(m, "phandle missing");
  return m[1];
}

test("ISA extension list", () => {
  assert.deepEqual(isaExtensions(cfg.isa), ["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei"]);
  assert.deepEqual(isaExtensions("rv64gc"), ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei"]);
});

test("the virt tree decompiles cleanly with the expected layout", { skip: dtcMissing }, () => {
  const { dts, stderr } = decompile(buildVirtDeviceTree(cfg));
  assert.equal(stderr, "", "dtc warnings");
  const root = dts;
  assert.match(root, /^\t#address-cells = <0x02>;$/m);
  assert.match(root, /^\t#size-cells = <0x02>;$/m);

  const mem = node(dts, "memory@80000000");
  assert.match(mem, /device_type = "memory";/);
  assert.match(mem, /reg = <0x00 0x80000000 0x01 0x00>;/);

  const cpus = node(dts, "cpus");
  assert.match(cpus, /timebase-frequency = <0x989680>;/);
  assert.match(cpus, /#address-cells = <0x01>;/);
  assert.match(cpus, /#size-cells = <0x00>;/);
  const intcs: string[] = [];
  const cpuPh: string[] = [];
  for (const h of [0, 1]) {
    const cpu = node(dts, `cpu@${h}`);
    assert.match(cpu, /device_type = "cpu";/);
    assert.match(cpu, new RegExp(`reg = <0x0${h}>;`));
    assert.match(cpu, /status = "okay";/);
    assert.match(cpu, /compatible = "riscv";/);
    assert.match(cpu, /riscv,isa = "rv64imafdc_zicntr_zicsr_zifencei";/);
    assert.match(cpu, /riscv,isa-base = "rv64i";/);
    assert.match(cpu, /riscv,isa-extensions = "i\\0m\\0a\\0f\\0d\\0c\\0zicntr\\0zicsr\\0zifencei";/);
    assert.match(cpu, /mmu-type = "riscv,sv39";/);
    cpuPh.push(phandle(cpu.slice(0, cpu.indexOf("interrupt-controller {"))));
    const intc = node(cpu, "interrupt-controller");
    assert.match(intc, /compatible = "riscv,cpu-intc";/);
    assert.match(intc, /#interrupt-cells = <0x01>;/);
    assert.match(intc, /interrupt-controller;/);
    intcs.push(phandle(intc));
  }
  assert.notEqual(intcs[0], intcs[1]);
  const map = node(dts, "cpu-map");
  assert.match(node(map, "core0"), new RegExp(`cpu = <${cpuPh[0]}>;`));
  assert.match(node(map, "core1"), new RegExp(`cpu = <${cpuPh[1]}>;`));

  const chosen = node(dts, "chosen");
  assert.match(chosen, /bootargs = "console=ttyS0 root=\/dev\/vda1";/);
  assert.match(chosen, /stdout-path = "\/soc\/serial@10000000";/);
  assert.match(chosen, /linux,initrd-start = <0x00 0x88000000>;/);
  assert.match(chosen, /linux,initrd-end = <0x00 0x89000000>;/);
  // 32 bytes, as QEMU's virt gives, so that the kernel's CRNG is ready at once.
  assert.match(
    chosen,
    /rng-seed = <0x1020304 0x5060708 0x90a0b0c 0xd0e0f10 0x11121314 0x15161718 0x191a1b1c 0x1d1e1f20>;/,
  );

  const soc = node(dts, "soc");
  assert.match(soc, /compatible = "simple-bus";/);
  assert.match(soc, /ranges;/);
  assert.match(soc, /#address-cells = <0x02>;/);

  const clint = node(soc, "clint@2000000");
  assert.match(clint, /compatible = "sifive,clint0\\0riscv,clint0";/);
  assert.match(clint, /reg = <0x00 0x2000000 0x00 0x10000>;/);
  assert.match(
    clint,
    new RegExp(`interrupts-extended = <${intcs[0]} 0x03 ${intcs[0]} 0x07 ${intcs[1]} 0x03 ${intcs[1]} 0x07>;`),
  );

  const plic = node(soc, "plic@c000000");
  const plicPh = phandle(plic);
  assert.match(plic, /compatible = "sifive,plic-1.0.0\\0riscv,plic0";/);
  assert.match(plic, /riscv,ndev = <0x5f>;/);
  assert.match(plic, /reg = <0x00 0xc000000 0x00 0x600000>;/);
  assert.match(
    plic,
    new RegExp(`interrupts-extended = <${intcs[0]} 0x0b ${intcs[0]} 0x09 ${intcs[1]} 0x0b ${intcs[1]} 0x09>;`),
  );
  assert.match(plic, /#interrupt-cells = <0x01>;/);
  assert.match(plic, /#address-cells = <0x00>;/);
  assert.match(plic, /\binterrupt-controller;/);

  const serial = node(soc, "serial@10000000");
  assert.match(serial, /compatible = "ns16550a";/);
  // dtc prints the cell 0x00384000 as the string "\08@" (as it does for QEMU's tree).
  assert.match(serial, /clock-frequency = (<0x384000>|"\\08@");/);
  assert.match(serial, /interrupts = <0x0a>;/);
  assert.match(serial, new RegExp(`interrupt-parent = <${plicPh}>;`));
  assert.match(serial, /reg = <0x00 0x10000000 0x00 0x100>;/);

  const testDev = node(soc, "test@100000");
  assert.match(testDev, /compatible = "sifive,test1\\0sifive,test0\\0syscon";/);
  assert.match(testDev, /reg = <0x00 0x100000 0x00 0x1000>;/);
  const testPh = phandle(testDev);
  const poweroff = node(dts, "poweroff");
  assert.match(poweroff, /compatible = "syscon-poweroff";/);
  assert.match(poweroff, /value = <0x5555>;/);
  assert.match(poweroff, /offset = <0x00>;/);
  assert.match(poweroff, new RegExp(`regmap = <${testPh}>;`));
  const reboot = node(dts, "reboot");
  assert.match(reboot, /compatible = "syscon-reboot";/);
  assert.match(reboot, /value = <0x7777>;/);
  assert.match(reboot, new RegExp(`regmap = <${testPh}>;`));

  const rtc = node(soc, "rtc@101000");
  assert.match(rtc, /compatible = "google,goldfish-rtc";/);
  assert.match(rtc, /interrupts = <0x0b>;/);
  assert.match(rtc, /reg = <0x00 0x101000 0x00 0x1000>;/);

  const v1 = node(soc, "virtio_mmio@10001000");
  const v2 = node(soc, "virtio_mmio@10002000");
  assert.ok(soc.indexOf(v1) < soc.indexOf(v2), "config order kept");
  assert.match(v1, /compatible = "virtio,mmio";/);
  assert.match(v1, /interrupts = <0x01>;/);
  assert.match(v2, /interrupts = <0x02>;/);
  assert.match(v2, /reg = <0x00 0x10002000 0x00 0x1000>;/);
  assert.match(v2, new RegExp(`interrupt-parent = <${plicPh}>;`));
});

test("sv48, one hart, no initrd, no virtio", { skip: dtcMissing }, () => {
  const { dts, stderr } = decompile(
    buildVirtDeviceTree({ ...cfg, harts: 1, mmu: "sv48", initrd: undefined, virtio: [] }),
  );
  assert.equal(stderr, "");
  assert.match(dts, /mmu-type = "riscv,sv48";/);
  assert.doesNotMatch(dts, /cpu@1/);
  assert.doesNotMatch(dts, /initrd/);
  assert.doesNotMatch(dts, /virtio_mmio/);
});

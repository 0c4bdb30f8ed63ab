import { test } from "node:test";
import assert from "node:assert/strict";
import { dtcMissing, decompile } from "../support/dtc.js";
import { FdtWriter } from "../../src/machine/fdt.js";


function sample(): Uint8Array {
  const w = new FdtWriter();
  w.addReservation(0x8000_0000, 0x1000);
  w.beginNode("");
  w.propU32("#address-cells", 2);
  w.propU32("#size-cells", 2);
  w.propString("model", "x");
  w.beginNode("node@100000000");
  w.propU64("reg", 0x1_0000_0000n, 5);
  w.propStrings("compatible", "a,b", "c");
  w.propEmpty("flag");
  w.prop("bytes", new Uint8Array([1, 2, 3]));
  w.endNode();
  w.endNode();
  return w.finish();
}

test("header, alignment and deduplicated strings", () => {
  const dtb = sample();
  const dv = new DataView(dtb.buffer, dtb.byteOffset, dtb.byteLength);
  assert.equal(dv.getUint32(0), 0xd00dfeed);
  assert.equal(dv.getUint32(4), dtb.length);
  const structOff = dv.getUint32(8);
  const stringsOff = dv.getUint32(12);
  const rsvOff = dv.getUint32(16);
  assert.equal(dv.getUint32(20), 17);
  assert.equal(dv.getUint32(24), 16);
  assert.equal(rsvOff % 8, 0);
  assert.equal(structOff % 8, 0);
  assert.equal(dv.getBigUint64(rsvOff), 0x8000_0000n);
  assert.equal(dv.getBigUint64(rsvOff + 8), 0x1000n);
  assert.equal(dv.getBigUint64(rsvOff + 16), 0n);
  assert.equal(dv.getBigUint64(rsvOff + 24), 0n);
  assert.equal(dv.getUint32(structOff), 1, "FDT_BEGIN_NODE");
  assert.equal(dv.getUint32(structOff + dv.getUint32(36) - 4), 9, "FDT_END");
  const strings = new TextDecoder().decode(dtb.subarray(stringsOff, stringsOff + dv.getUint32(32)));
  assert.equal(strings.split("#address-cells").length - 1, 1, "names are stored once");
});

test("misuse is reported", () => {
  const w = new FdtWriter();
  assert.throws(() => w.propU32("x", 1));
  w.beginNode("");
  assert.throws(() => w.finish());
  w.endNode();
  assert.throws(() => w.endNode());
});

test("dtc decompiles it", { skip: dtcMissing }, () => {
  const { dts, stderr } = decompile(sample());
  assert.equal(stderr, "");
  assert.match(dts, /\/memreserve\/\s+0x0*80000000 0x0*1000;/);
  assert.match(dts, /model = "x";/);
  assert.match(dts, /node@100000000 \{/);
  assert.match(dts, /reg = <0x01 0x00 0x00 0x05>;/);
  assert.match(dts, /compatible = "a,b\\0c";/);
  assert.match(dts, /flag;/);
  assert.match(dts, /bytes = \[01 02 03\];/);
});

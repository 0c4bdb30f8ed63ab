/**
 * `yun disk` through diskCommand(): what the user sees on stdout/stderr and the exit status,
 * with qemu-img as the judge of the files it makes.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { diskCommand } from "../../src/cli/disk.js";
import { assertClean, fingerprint, pattern, qemuImg, qemuSame, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;

async function yun(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await diskCommand(args, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

function qemuInfo(file: string): Record<string, unknown> {
  return JSON.parse(qemuImg("info", "--output=json", file)) as Record<string, unknown>;
}

test("create: qcow2 by default, raw with -f raw, overlays with -b/-F", async () => {
  let r = await yun("create", p("a.qcow2"), "10G");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, `Created qcow2 image ${p("a.qcow2")} (10 GiB)\n`);
  assert.equal(qemuInfo(p("a.qcow2"))["virtual-size"], 10 * 2 ** 30);
  assertClean(p("a.qcow2"));

  r = await yun("create", "-f", "raw", p("b.raw"), "512M");
  assert.equal(r.code, 0, r.err);
  assert.equal(statSync(p("b.raw")).size, 512 << 20);

  r = await yun("create", "--cluster-size", "4k", p("c.qcow2"), "1000"); // rounded up to 1024
  assert.equal(r.code, 0, r.err);
  assert.equal(qemuInfo(p("c.qcow2"))["cluster-size"], 4096);
  assert.equal(qemuInfo(p("c.qcow2"))["virtual-size"], 1024);

  r = await yun("create", "-b", "b.raw", "-F", "raw", p("ov.qcow2"));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /Created qcow2 image .*ov\.qcow2 \(512 MiB, backed by b\.raw\)/);
  const info = qemuInfo(p("ov.qcow2"));
  assert.equal(info["backing-filename"], "b.raw");
  assert.equal(info["backing-filename-format"], "raw");
});

test("create: refusals", async () => {
  const before = fingerprint([p("a.qcow2")]);
  let r = await yun("create", p("a.qcow2"), "1G");
  assert.equal(r.code, 1);
  assert.equal(r.err, `yun disk: ${p("a.qcow2")} already exists; Yun will not overwrite it\n`);
  assert.deepEqual(fingerprint([p("a.qcow2")]), before);

  r = await yun("create", p("x.qcow2"), "ten");
  assert.equal(r.code, 2);
  assert.match(r.err, /SIZE must be a size like 10G/);
  r = await yun("create", p("x.qcow2"));
  assert.equal(r.code, 2);
  assert.match(r.err, /needs a SIZE/);
  r = await yun("create", "-f", "vmdk", p("x.vmdk"), "1G");
  assert.equal(r.code, 2);
  assert.match(r.err, /-f takes raw or qcow2, not "vmdk"/);
  r = await yun("create", "--bogus", p("x.qcow2"), "1G");
  assert.equal(r.code, 2);
  assert.match(r.err, /^yun disk: Unknown option '--bogus'.*see yun disk create --help/);
  r = await yun("create", "-f", "raw", "-b", "b.raw", p("x.raw"), "1G");
  assert.equal(r.code, 2);
  assert.match(r.err, /only qcow2 images can have a backing file/);
  r = await yun("create", "-b", "missing.raw", p("x.qcow2"));
  assert.equal(r.code, 1);
  assert.match(r.err, /^yun disk: the backing file .*missing\.raw does not exist\n$/);
  assert.equal(existsSync(p("x.qcow2")), false);
});

test("info: text and JSON", async () => {
  let r = await yun("info", p("ov.qcow2"));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^image: .*ov\.qcow2\nformat: qcow2\nvirtual size: 512 MiB \(536870912 bytes\)\n/);
  assert.match(r.out, /cluster size: 65536\n/);
  assert.match(r.out, /backing file: b\.raw \(format: raw\)\n {2}.*b\.raw: raw, 512 MiB\n/);
  assert.match(r.out, /dirty: no\ncorrupt: no\n$/);
  r = await yun("info", "--json", p("ov.qcow2"));
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as { format: string; virtualSize: number; backingChain: unknown[] };
  assert.equal(j.format, "qcow2");
  assert.equal(j.virtualSize, 512 << 20);
  assert.equal(j.backingChain.length, 1);

  r = await yun("info", p("nope.qcow2"));
  assert.equal(r.code, 1);
  assert.equal(r.err, `yun disk: ${p("nope.qcow2")} does not exist\n`);
  r = await yun("info");
  assert.equal(r.code, 2);
  assert.match(r.err, /info takes one FILE/);
});

test("convert and resize", async () => {
  writeFileSync(p("src.raw"), pattern(2 << 20, 1));
  let r = await yun("convert", p("src.raw"), p("dst.qcow2"));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /Converted .*src\.raw to qcow2 image .*dst\.qcow2 \(2 MiB of data\)/);
  assertClean(p("dst.qcow2"));
  assert.ok(qemuSame(p("dst.qcow2"), p("src.raw")));
  r = await yun("convert", "-O", "raw", p("dst.qcow2"), p("dst.raw"));
  assert.equal(r.code, 0, r.err);
  assert.ok(qemuSame(p("dst.raw"), p("src.raw")));
  r = await yun("convert", "-O", "vdi", p("dst.qcow2"), p("dst.vdi"));
  assert.equal(r.code, 2);

  r = await yun("resize", p("dst.qcow2"), "+1G");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, `Resized ${p("dst.qcow2")} from 2 MiB to 1 GiB (1075838976 bytes)\n`);
  assert.equal(qemuInfo(p("dst.qcow2"))["virtual-size"], (1 << 30) + (2 << 20));
  r = await yun("resize", p("dst.qcow2"), "4G");
  assert.equal(r.code, 0, r.err);
  assert.equal(qemuInfo(p("dst.qcow2"))["virtual-size"], 4 * 2 ** 30);
  assertClean(p("dst.qcow2"));
  r = await yun("resize", p("dst.qcow2"), "-1G");
  assert.equal(r.code, 2);
  assert.match(r.err, /shrinking a disk is not supported/);
  r = await yun("resize", p("dst.qcow2"), "1G");
  assert.equal(r.code, 1);
  assert.match(r.err, /shrinking from 4294967296 to 1073741824 bytes is not supported/);
});

test("help and unknown commands", async () => {
  for (const sub of ["create", "info", "convert", "resize"]) {
    const r = await yun(sub, "--help");
    assert.equal(r.code, 0);
    assert.match(r.out, new RegExp(`^Usage: yun disk ${sub} `));
  }
  let r = await yun("--help");
  assert.equal(r.code, 0);
  assert.match(r.out, /^Usage: yun disk <command>/);
  r = await yun();
  assert.equal(r.code, 2);
  assert.match(r.err, /^Usage: yun disk <command>/);
  r = await yun("frobnicate");
  assert.equal(r.code, 2);
  assert.equal(r.err, 'yun disk: unknown command "frobnicate" (see yun disk --help)\n');
});

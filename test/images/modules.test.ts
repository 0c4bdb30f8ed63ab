import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { modulesAlias, modulesDep, normalizeModuleName, resolveModules } from "../../src/images/modules.js";
import { fakeModule } from "./elf-fixture.js";

const haveXz = spawnSync("xz", ["--version"]).status === 0;

/** A miniature lib/modules/<version> tree shaped like Debian's (compressed modules, no modules.dep). */
function tree(): string {
  const root = mkdtempSync(join(tmpdir(), "yun-mods-"));
  const put = (rel: string, info: string[]): void => {
    const path = join(root, rel);
    mkdirSync(dirname(path), { recursive: true });
    let data = fakeModule(info);
    if (rel.endsWith(".xz")) data = spawnSync("xz", ["-c"], { input: data, maxBuffer: 1 << 24 }).stdout;
    if (rel.endsWith(".gz")) data = gzipSync(data);
    writeFileSync(path, data);
  };
  const xz = haveXz ? ".ko.xz" : ".ko.gz";
  put(`kernel/drivers/virtio/virtio_mmio${xz}`, ["depends=", "name=virtio_mmio"]);
  put(`kernel/drivers/block/virtio_blk${xz}`, ["alias=virtio:d00000002v*", "depends=", "name=virtio_blk"]);
  put(`kernel/drivers/char/hw_random/virtio-rng${xz}`, ["depends=", "name=virtio_rng"]);
  put(`kernel/net/core/failover${xz}`, ["depends=", "name=failover"]);
  put(`kernel/drivers/net/net_failover.ko.gz`, ["depends=failover", "name=net_failover"]);
  put(`kernel/drivers/net/virtio_net.ko`, ["depends=net_failover", "name=virtio_net"]);
  put(`kernel/crypto/crc32c_generic${xz}`, ["alias=crypto-crc32c", "alias=crc32c", "depends=", "name=crc32c_generic"]);
  put(`kernel/fs/jbd2/jbd2${xz}`, ["softdep=pre: crypto-crc32c", "depends=", "name=jbd2"]);
  put(`kernel/fs/mbcache${xz}`, ["depends=", "name=mbcache"]);
  put(`kernel/lib/crc16${xz}`, ["depends=", "name=crc16"]);
  put(`kernel/fs/ext4/ext4${xz}`, ["softdep=pre: crypto-crc32c post: no-such-thing", "depends=jbd2,mbcache,crc16", "name=ext4"]);
  put(`kernel/fs/broken${xz}`, ["depends=missing_mod", "name=broken"]);
  writeFileSync(join(root, "modules.builtin"), "kernel/drivers/virtio/virtio.ko\nkernel/lib/crc32.ko\n");
  writeFileSync(join(root, "modules.builtin.modinfo"), "virtio_ring.license=GPL\0crc32.alias=crypto-crc32\0");
  return root;
}

test("module names: - and _ are the same", () => {
  assert.equal(normalizeModuleName("virtio-rng"), "virtio_rng");
});

test("resolves dependencies from .modinfo, dependencies first", () => {
  const root = tree();
  try {
    const r = resolveModules(root, ["virtio_mmio", "virtio_blk", "virtio_net", "virtio-rng", "ext4", "virtio", "crypto-crc32"]);
    const names = r.order.map((m) => m.name);
    assert.deepEqual(names, [
      "virtio_mmio",
      "virtio_blk",
      "failover",
      "net_failover",
      "virtio_net",
      "virtio_rng",
      "crc32c_generic",
      "jbd2",
      "mbcache",
      "crc16",
      "ext4",
    ]);
    assert.deepEqual(r.builtin.sort(), ["crypto-crc32", "virtio"]);
    assert.deepEqual(r.unresolvedSoft, ["no-such-thing"]);
    // Decompressed, with the compression suffix dropped from the path.
    const rng = r.order.find((m) => m.name === "virtio_rng")!;
    assert.equal(rng.path, "kernel/drivers/char/hw_random/virtio-rng.ko");
    assert.equal(rng.data.readUInt32BE(0), 0x7f454c46);
    for (const m of r.order) {
      for (const d of m.deps) assert.ok(names.indexOf(d) < names.indexOf(m.name), `${d} before ${m.name}`);
    }
    const dep = modulesDep(r.order);
    assert.match(dep, /^kernel\/drivers\/net\/virtio_net\.ko: kernel\/drivers\/net\/net_failover\.ko kernel\/net\/core\/failover\.ko$/m);
    assert.match(dep, /^kernel\/drivers\/virtio\/virtio_mmio\.ko:$/m);
    assert.match(modulesAlias(r.order), /^alias virtio:d00000002v\* virtio_blk$/m);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("a missing module or hard dependency is a clear error", () => {
  const root = tree();
  try {
    assert.throws(() => resolveModules(root, ["nope"]), /kernel module nope is neither/);
    assert.throws(() => resolveModules(root, ["broken"]), /broken needs missing_mod/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

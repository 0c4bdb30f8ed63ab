import { test } from "node:test";
import assert from "node:assert/strict";
import { dependencyClosure, PackageIndex, parseRelations } from "../../src/images/depends.js";

/** A small Packages index in the archive's format (the same stanzas `apt-cache dumpavail` prints). */
const INDEX = `Package: app
Version: 1.0-1
Installed-Size: 10
Architecture: riscv64
Pre-Depends: libc6 (>= 2.34)
Depends: liba | libb, dpkg (>= 1.15.4) | install-info, awk, virt-x,
 perl (>= 5), libz:any (>= 1:1.2)
Size: 1234
SHA256: ABCDEF0123

Package: libc6
Version: 2.41-12
Installed-Size: 8811
Architecture: riscv64
Depends: libgcc-s1
Size: 2474016
SHA256: 00aa

Package: libgcc-s1
Version: 14.2.0-19
Architecture: riscv64
Provides: libgcc1 (= 1:14.2.0-19)
Depends: gcc-14-base (= 14.2.0-19), libc6 (>= 2.35)

Package: gcc-14-base
Version: 14.2.0-19
Architecture: riscv64

Package: liba
Version: 1
Architecture: riscv64

Package: libb
Version: 1
Architecture: riscv64

Package: dpkg
Version: 1.22
Essential: yes
Architecture: riscv64
Depends: tar

Package: gzip
Version: 1.13-1
Essential: yes
Architecture: riscv64
Pre-Depends: libc6 (>= 2.38)

Package: mawk
Version: 1.3.4
Architecture: riscv64
Provides: awk

Package: prov-b
Version: 1
Architecture: all
Provides: virt-x

Package: prov-a
Version: 1
Architecture: all
Provides: virt-y,
 virt-x

Package: perl
Version: 5.40
Architecture: riscv64

Package: libz
Version: 1:1.3
Architecture: riscv64

Package: libz
Version: 0:0.9
Architecture: riscv64

Package: broken
Version: 1
Architecture: riscv64
Depends: libc6, nowhere (>= 2) | gone
`;

const OPTIONS = {
  exclude: new Map([["perl", "too large"]]),
  satisfied: new Map([["awk", "provided by busybox awk"]]),
  archive: "Debian test for riscv64",
};

test("relations: alternatives, versions, architecture qualifiers", () => {
  assert.deepEqual(parseRelations("libc6 (>= 2.34), foo:any | bar (<< 2) [riscv64], baz <!nocheck>"), [
    [{ name: "libc6", constraint: "(>= 2.34)" }],
    [
      { name: "foo", constraint: "" },
      { name: "bar", constraint: "(<< 2)" },
    ],
    [{ name: "baz", constraint: "" }],
  ]);
  assert.deepEqual(parseRelations(""), []);
});

test("the index finds packages, their fields and the providers of virtual names", () => {
  const index = new PackageIndex(INDEX);
  assert.equal(index.size, 14);
  const app = index.get("app")!;
  assert.equal(app.version, "1.0-1");
  assert.equal(app.size, 1234);
  assert.equal(app.sha256, "abcdef0123");
  assert.equal(app.installedBytes, 10 * 1024);
  assert.equal(app.essential, false);
  assert.match(app.depends, /^libc6 \(>= 2\.34\), liba \| libb, .*perl \(>= 5\), libz:any/);
  assert.equal(index.get("dpkg")!.essential, true);
  assert.deepEqual(index.get("libgcc-s1")!.provides, ["libgcc1"]);
  assert.equal(index.get("libz")!.version, "1:1.3", "the first stanza of a name wins");
  assert.equal(index.get("virt-x"), undefined);
  assert.deepEqual(index.providersOf("virt-x"), ["prov-a", "prov-b"]);
  assert.deepEqual(index.providersOf("virt-y"), ["prov-a"]);
  assert.deepEqual(index.providersOf("nothing"), []);
});

test("closure: Pre-Depends and Depends, recursively; Essential, excluded and busybox-met names are left out", () => {
  const index = new PackageIndex(INDEX);
  const c = dependencyClosure(index, ["app", "gzip"], OPTIONS);
  assert.deepEqual(
    c.packages.map((p) => p.name),
    ["app", "gcc-14-base", "gzip", "liba", "libc6", "libgcc-s1", "libz", "prov-a"],
  );
  assert.deepEqual(c.omitted, [
    { name: "awk", neededBy: "app", reason: "provided by busybox awk" },
    { name: "dpkg", neededBy: "app", reason: "Essential package, not installed (busybox stands in)" },
    { name: "perl", neededBy: "app", reason: "too large" },
  ]);
  // Essential packages asked for by name are installed; nothing pulls in libb, mawk or tar.
  assert.ok(c.packages.some((p) => p.name === "gzip" && p.essential));
});

test("closure: a provider already chosen satisfies a virtual dependency", () => {
  const index = new PackageIndex(INDEX);
  const c = dependencyClosure(index, ["prov-b", "app"], OPTIONS);
  const names = c.packages.map((p) => p.name);
  assert.ok(names.includes("prov-b"));
  assert.ok(!names.includes("prov-a"));
});

test("closure: without the exclusion and busybox lists, perl and mawk come in", () => {
  const c = dependencyClosure(new PackageIndex(INDEX), ["app"]);
  const names = c.packages.map((p) => p.name);
  assert.ok(names.includes("perl") && names.includes("mawk"));
  assert.deepEqual(
    c.omitted.map((o) => o.name),
    ["dpkg"],
  );
});

test("closure errors name the package and the archive", () => {
  const index = new PackageIndex(INDEX);
  assert.throws(
    () => dependencyClosure(index, ["nope"], OPTIONS),
    (e: Error) => e.name === "ImageError" && e.message === "unknown package nope: it is not in Debian test for riscv64",
  );
  assert.throws(
    () => dependencyClosure(index, ["virt-x"], OPTIONS),
    /virt-x is a virtual package in Debian test for riscv64; name one of its providers instead: prov-a, prov-b/,
  );
  assert.throws(
    () => dependencyClosure(index, ["broken"], OPTIONS),
    /^ImageError: broken depends on nowhere \(>= 2\) \| gone, which is not in Debian test for riscv64$/,
  );
});

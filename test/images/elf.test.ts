import { test } from "node:test";
import assert from "node:assert/strict";
import { elfSection, elfSections, parseModinfo, readModuleInfo } from "../../src/images/elf.js";
import { buildElf, fakeModule } from "./elf-fixture.js";

const MODINFO = [
  "license=GPL",
  "softdep=pre: crypto-crc32c post: extra_mod",
  "alias=fs-ext4",
  "alias=ext3",
  "depends=jbd2,mbcache,crc16",
  "intree=Y",
  "name=ext4",
  "vermagic=6.12.0 SMP mod_unload riscv",
];

for (const variant of [
  { is64: true, little: true },
  { is64: true, little: false },
  { is64: false, little: true },
  { is64: false, little: false },
  { is64: true, little: true, extended: true },
]) {
  test(`reads .modinfo from ELF${variant.is64 ? 64 : 32} ${variant.little ? "LE" : "BE"}${variant.extended === true ? " (extended numbering)" : ""}`, () => {
    const ko = fakeModule(MODINFO, variant);
    const names = elfSections(ko).map((s) => s.name);
    assert.deepEqual(names, ["", ".text", ".modinfo", ".bss", ".shstrtab"]);
    const info = readModuleInfo(ko);
    assert.equal(info.name, "ext4");
    assert.deepEqual(info.depends, ["jbd2", "mbcache", "crc16"]);
    assert.deepEqual(info.softPre, ["crypto-crc32c"]);
    assert.deepEqual(info.softPost, ["extra_mod"]);
    assert.deepEqual(info.aliases, ["fs-ext4", "ext3"]);
    assert.equal(info.vermagic, "6.12.0 SMP mod_unload riscv");
  });
}

test("empty depends= means no dependencies", () => {
  const info = readModuleInfo(fakeModule(["depends=", "name=virtio_blk"]));
  assert.deepEqual(info.depends, []);
  assert.deepEqual(info.softPre, []);
});

test("a module without .modinfo has no dependencies", () => {
  const ko = buildElf([{ name: ".text", data: Buffer.alloc(8) }]);
  assert.equal(elfSection(ko, ".modinfo"), undefined);
  assert.deepEqual(readModuleInfo(ko).depends, []);
});

test("NOBITS sections read as empty", () => {
  assert.equal(elfSection(fakeModule(["name=x"]), ".bss")?.length, 0);
});

test("parseModinfo keeps repeated keys and skips padding", () => {
  const m = parseModinfo(Buffer.from("alias=a\0\0\0alias=b\0parm=x:int\0=bad\0novalue\0", "utf8"));
  assert.deepEqual(m.get("alias"), ["a", "b"]);
  assert.deepEqual(m.get("parm"), ["x:int"]);
  assert.equal(m.size, 2);
});

test("non-ELF and truncated input give clear errors", () => {
  assert.throws(() => readModuleInfo(Buffer.from("not an elf file at all, just some text here....................")), /not an ELF/);
  const ko = fakeModule(["name=x"]);
  assert.throws(() => elfSections(ko.subarray(0, ko.length - 10)), /beyond end of file/);
});

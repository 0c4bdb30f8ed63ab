/**
 * Just enough ELF to read a section by name, and the `.modinfo` section of a Linux kernel module.
 *
 * Handles ELF32 and ELF64, either byte order, and the extended section numbering used when a file
 * has 0xff00 or more sections (e_shnum == 0 / e_shstrndx == SHN_XINDEX, real values in section 0).
 */

const SHN_XINDEX = 0xffff;
const SHT_NOBITS = 8;

export interface ElfSection {
  name: string;
  type: number;
  offset: number;
  size: number;
}

interface Reader {
  u16(off: number): number;
  u32(off: number): number;
  addr(off: number): number;
}

function reader(buf: Buffer, is64: boolean, little: boolean): Reader {
  const u16 = (off: number): number => (little ? buf.readUInt16LE(off) : buf.readUInt16BE(off));
  const u32 = (off: number): number => (little ? buf.readUInt32LE(off) : buf.readUInt32BE(off));
  const u64 = (off: number): number => {
    const v = little ? buf.readBigUInt64LE(off) : buf.readBigUInt64BE(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error("ELF: 64-bit offset too large");
    return Number(v);
  };
  return { u16, u32, addr: is64 ? u64 : u32 };
}

/** Lists the sections of an ELF file. Throws a clear error if `data` is not a well-formed ELF file. */
export function elfSections(data: Uint8Array): ElfSection[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length < 52 || buf.readUInt32BE(0) !== 0x7f454c46) throw new Error("not an ELF file");
  const cls = buf[4];
  const enc = buf[5];
  if (cls !== 1 && cls !== 2) throw new Error(`ELF: unknown class ${cls}`);
  if (enc !== 1 && enc !== 2) throw new Error(`ELF: unknown data encoding ${enc}`);
  const is64 = cls === 2;
  if (is64 && buf.length < 64) throw new Error("ELF: truncated header");
  const r = reader(buf, is64, enc === 1);

  const shoff = r.addr(is64 ? 0x28 : 0x20);
  const shentsize = r.u16(is64 ? 0x3a : 0x2e);
  let shnum = r.u16(is64 ? 0x3c : 0x30);
  let shstrndx = r.u16(is64 ? 0x3e : 0x32);
  if (shoff === 0) return [];
  const minEnt = is64 ? 64 : 40;
  if (shentsize < minEnt) throw new Error(`ELF: section header size ${shentsize} too small`);

  const headerAt = (i: number): number => {
    const off = shoff + i * shentsize;
    if (off + minEnt > buf.length) throw new Error("ELF: section header table beyond end of file");
    return off;
  };
  // Extended numbering: the real counts live in section header 0.
  if (shnum === 0) shnum = is64 ? r.addr(headerAt(0) + 0x20) : r.u32(headerAt(0) + 0x14);
  if (shstrndx === SHN_XINDEX) shstrndx = r.u32(headerAt(0) + (is64 ? 0x28 : 0x18));

  const raw: { nameOff: number; type: number; offset: number; size: number }[] = [];
  for (let i = 0; i < shnum; i++) {
    const h = headerAt(i);
    raw.push({
      nameOff: r.u32(h),
      type: r.u32(h + 4),
      offset: r.addr(h + (is64 ? 0x18 : 0x10)),
      size: r.addr(h + (is64 ? 0x20 : 0x14)),
    });
  }
  const strtab = raw[shstrndx];
  if (strtab === undefined) throw new Error("ELF: section name table index out of range");
  if (strtab.offset + strtab.size > buf.length) throw new Error("ELF: section name table beyond end of file");
  const nameAt = (off: number): string => {
    if (off >= strtab.size) return "";
    const start = strtab.offset + off;
    let end = buf.indexOf(0, start);
    if (end < 0 || end > strtab.offset + strtab.size) end = strtab.offset + strtab.size;
    return buf.toString("latin1", start, end);
  };
  return raw.map((s) => ({ name: nameAt(s.nameOff), type: s.type, offset: s.offset, size: s.size }));
}

/** The bytes of the first section called `name`, or undefined if there is none. */
export function elfSection(data: Uint8Array, name: string): Buffer | undefined {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const s = elfSections(buf).find((x) => x.name === name);
  if (s === undefined) return undefined;
  if (s.type === SHT_NOBITS) return Buffer.alloc(0);
  if (s.offset + s.size > buf.length) throw new Error(`ELF: section ${name} beyond end of file`);
  return buf.subarray(s.offset, s.offset + s.size);
}

/**
 * Parses a `.modinfo` section: NUL-separated `key=value` strings (padding NULs in between are
 * skipped). Keys can repeat (alias, firmware, parm...), so every key maps to a list.
 */
export function parseModinfo(section: Uint8Array): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const text = Buffer.from(section.buffer, section.byteOffset, section.byteLength).toString("utf8");
  for (const item of text.split("\0")) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    if (eq <= 0) continue;
    const key = item.slice(0, eq);
    const list = out.get(key);
    if (list === undefined) out.set(key, [item.slice(eq + 1)]);
    else list.push(item.slice(eq + 1));
  }
  return out;
}

/** What module loading needs from a module's `.modinfo`. */
export interface ModuleInfo {
  /** The module's own name (`name=`), if recorded. */
  name?: string;
  /** Hard dependencies (`depends=`, comma-separated module names). */
  depends: string[];
  /** Soft dependencies to load before / after (`softdep=pre: a b post: c`); these may be aliases. */
  softPre: string[];
  softPost: string[];
  aliases: string[];
  vermagic?: string;
}

/** Reads the `.modinfo` of a (decompressed) kernel module. Throws if it is not an ELF file. */
export function readModuleInfo(ko: Uint8Array): ModuleInfo {
  const section = elfSection(ko, ".modinfo");
  const info = section === undefined ? new Map<string, string[]>() : parseModinfo(section);
  const depends = (info.get("depends") ?? [])
    .flatMap((d) => d.split(","))
    .map((d) => d.trim())
    .filter((d) => d !== "");
  const softPre: string[] = [];
  const softPost: string[] = [];
  for (const sd of info.get("softdep") ?? []) {
    let target: string[] | undefined;
    for (const word of sd.split(/\s+/)) {
      if (word === "") continue;
      if (word === "pre:") target = softPre;
      else if (word === "post:") target = softPost;
      else target?.push(word);
    }
  }
  return {
    name: info.get("name")?.[0],
    depends,
    softPre,
    softPost,
    aliases: info.get("alias") ?? [],
    vermagic: info.get("vermagic")?.[0],
  };
}

/** Builds small synthetic ELF relocatable files for the tests (no toolchain needed). */

export interface FixtureSection {
  name: string;
  data: Buffer;
  /** Section type; default SHT_PROGBITS (1). */
  type?: number;
}

export interface FixtureOptions {
  is64?: boolean;
  little?: boolean;
  /** Use extended numbering: e_shnum = 0 and e_shstrndx = SHN_XINDEX, real values in section 0. */
  extended?: boolean;
}

export function buildElf(sections: FixtureSection[], options: FixtureOptions = {}): Buffer {
  const is64 = options.is64 ?? true;
  const little = options.little ?? true;
  const ehsize = is64 ? 64 : 52;
  const shentsize = is64 ? 64 : 40;

  // Section name table.
  const names = ["", ...sections.map((s) => s.name), ".shstrtab"];
  const nameOff: number[] = [];
  let strtab = Buffer.alloc(0);
  for (const n of names) {
    nameOff.push(strtab.length);
    strtab = Buffer.concat([strtab, Buffer.from(n + "\0", "latin1")]);
  }
  const all = [...sections.map((s) => ({ ...s, type: s.type ?? 1 })), { name: ".shstrtab", data: strtab, type: 3 }];

  const chunks: Buffer[] = [];
  let off = ehsize;
  const placed: { offset: number; size: number; type: number }[] = [];
  for (const s of all) {
    placed.push({ offset: off, size: s.data.length, type: s.type });
    chunks.push(s.data);
    off += s.data.length;
  }
  const pad = (8 - (off % 8)) % 8;
  chunks.push(Buffer.alloc(pad));
  off += pad;
  const shoff = off;
  const shnum = all.length + 1;
  const shstrndx = all.length; // index of .shstrtab (section 0 is the null section)

  const w16 = (b: Buffer, v: number, o: number): void => void (little ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o));
  const w32 = (b: Buffer, v: number, o: number): void => void (little ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o));
  const wAddr = (b: Buffer, v: number, o: number): void => {
    if (is64) void (little ? b.writeBigUInt64LE(BigInt(v), o) : b.writeBigUInt64BE(BigInt(v), o));
    else w32(b, v, o);
  };

  const eh = Buffer.alloc(ehsize);
  eh.writeUInt32BE(0x7f454c46, 0);
  eh[4] = is64 ? 2 : 1;
  eh[5] = little ? 1 : 2;
  eh[6] = 1;
  w16(eh, 1, 0x10); // ET_REL
  w16(eh, 243, 0x12); // EM_RISCV
  w32(eh, 1, 0x14);
  wAddr(eh, shoff, is64 ? 0x28 : 0x20);
  w16(eh, ehsize, is64 ? 0x34 : 0x28);
  w16(eh, shentsize, is64 ? 0x3a : 0x2e);
  w16(eh, options.extended === true ? 0 : shnum, is64 ? 0x3c : 0x30);
  w16(eh, options.extended === true ? 0xffff : shstrndx, is64 ? 0x3e : 0x32);

  const sh = Buffer.alloc(shentsize * shnum);
  if (options.extended === true) {
    wAddr(sh, shnum, is64 ? 0x20 : 0x14); // sh_size of section 0
    w32(sh, shstrndx, is64 ? 0x28 : 0x18); // sh_link of section 0
  }
  placed.forEach((p, i) => {
    const h = (i + 1) * shentsize;
    w32(sh, nameOff[i + 1]!, h);
    w32(sh, p.type, h + 4);
    wAddr(sh, p.offset, h + (is64 ? 0x18 : 0x10));
    wAddr(sh, p.size, h + (is64 ? 0x20 : 0x14));
  });
  return Buffer.concat([eh, ...chunks, sh]);
}

/** A fake kernel module: an ELF file whose .modinfo holds the given key=value strings. */
export function fakeModule(modinfo: string[], options: FixtureOptions = {}): Buffer {
  // Real .modinfo sections are NUL-separated and may contain padding NULs between entries.
  const info = Buffer.from(modinfo.map((s) => s + "\0").join("\0"), "utf8");
  return buildElf(
    [
      { name: ".text", data: Buffer.from([0x13, 0, 0, 0]) },
      { name: ".modinfo", data: info },
      { name: ".bss", data: Buffer.alloc(0), type: 8 },
    ],
    options,
  );
}

/** Writes a minimal static ELF64 RISC-V executable: one RWX PT_LOAD segment, no sections. */

export const EM_RISCV = 243;
const PAGE = 0x1000;

/**
 * `segment` is loaded at `vaddr` (page-aligned); execution starts at `entry` (default: vaddr).
 * The segment sits at file offset 0x1000 so offset and address agree modulo the page size.
 */
export function buildElf(segment: Uint8Array, vaddr: number, entry = vaddr): Uint8Array {
  if (vaddr % PAGE !== 0) throw new Error("elf: vaddr must be page-aligned");
  const out = new Uint8Array(PAGE + segment.length);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* little-endian */, 1 /* EV_CURRENT */, 0 /* SYSV */]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, EM_RISCV, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(entry), true);
  v.setBigUint64(32, 64n, true); // e_phoff
  v.setBigUint64(40, 0n, true); // e_shoff
  v.setUint32(48, 0x5, true); // EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE
  v.setUint16(52, 64, true); // e_ehsize
  v.setUint16(54, 56, true); // e_phentsize
  v.setUint16(56, 1, true); // e_phnum
  v.setUint16(58, 64, true); // e_shentsize
  v.setUint16(60, 0, true); // e_shnum
  v.setUint16(62, 0, true); // e_shstrndx
  const ph = 64;
  v.setUint32(ph + 0, 1, true); // PT_LOAD
  v.setUint32(ph + 4, 7, true); // PF_R | PF_W | PF_X
  v.setBigUint64(ph + 8, BigInt(PAGE), true); // p_offset
  v.setBigUint64(ph + 16, BigInt(vaddr), true); // p_vaddr
  v.setBigUint64(ph + 24, BigInt(vaddr), true); // p_paddr
  v.setBigUint64(ph + 32, BigInt(segment.length), true); // p_filesz
  v.setBigUint64(ph + 40, BigInt(segment.length), true); // p_memsz
  v.setBigUint64(ph + 48, BigInt(PAGE), true); // p_align
  out.set(segment, PAGE);
  return out;
}

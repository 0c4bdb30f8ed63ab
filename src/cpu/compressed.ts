/**
 * The C extension, expanded once: every 16-bit parcel maps to the 32-bit instruction it stands
 * for, so the executor has a single decode path. Illegal or reserved encodings map to 0, which
 * is itself an illegal 32-bit instruction.
 */

const iType = (imm: number, rs1: number, f3: number, rd: number, op: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const sType = (imm: number, rs2: number, rs1: number, f3: number, op: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | op) >>> 0;
const bType = (imm: number, rs2: number, rs1: number, f3: number) =>
  ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) |
    (((imm >> 1) & 0xf) << 8) | (((imm >> 11) & 1) << 7) | 0x63) >>> 0;
const jType = (imm: number, rd: number) =>
  ((((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3ff) << 21) | (((imm >> 11) & 1) << 20) |
    (((imm >> 12) & 0xff) << 12) | (rd << 7) | 0x6f) >>> 0;
const rType = (f7: number, rs2: number, rs1: number, f3: number, rd: number, op: number) =>
  ((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;

const bit = (v: number, n: number) => (v >> n) & 1;
const bits = (v: number, hi: number, lo: number) => (v >> lo) & ((1 << (hi - lo + 1)) - 1);
const sext = (v: number, width: number) => (v << (32 - width)) >> (32 - width);

export function expandCompressed(c: number): number {
  const op = c & 3;
  const f3 = c >> 13;
  const rdFull = bits(c, 11, 7);
  const rs2Full = bits(c, 6, 2);
  const rdP = bits(c, 4, 2) + 8; // rd'/rs2' in the low field
  const rs1P = bits(c, 9, 7) + 8;
  if (op === 0) {
    switch (f3) {
      case 0: {
        const imm = (bits(c, 12, 11) << 4) | (bits(c, 10, 7) << 6) | (bit(c, 6) << 2) | (bit(c, 5) << 3);
        return imm === 0 ? 0 : iType(imm, 2, 0, rdP, 0x13);
      }
      case 1: return iType((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6), rs1P, 3, rdP, 0x07);
      case 2: return iType((bits(c, 12, 10) << 3) | (bit(c, 6) << 2) | (bit(c, 5) << 6), rs1P, 2, rdP, 0x03);
      case 3: return iType((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6), rs1P, 3, rdP, 0x03);
      case 5: return sType((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6), rdP, rs1P, 3, 0x27);
      case 6: return sType((bits(c, 12, 10) << 3) | (bit(c, 6) << 2) | (bit(c, 5) << 6), rdP, rs1P, 2, 0x23);
      case 7: return sType((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6), rdP, rs1P, 3, 0x23);
      default: return 0;
    }
  }
  if (op === 1) {
    const imm6 = sext((bit(c, 12) << 5) | rs2Full, 6);
    switch (f3) {
      case 0: return iType(imm6, rdFull, 0, rdFull, 0x13);
      case 1: return rdFull === 0 ? 0 : iType(imm6, rdFull, 0, rdFull, 0x1b);
      case 2: return iType(imm6, 0, 0, rdFull, 0x13);
      case 3: {
        if (rdFull === 2) {
          const imm = sext((bit(c, 12) << 9) | (bit(c, 6) << 4) | (bit(c, 5) << 6) | (bits(c, 4, 3) << 7) | (bit(c, 2) << 5), 10);
          return imm === 0 ? 0 : iType(imm, 2, 0, 2, 0x13);
        }
        if (imm6 === 0) return 0;
        return (((imm6 << 12) & 0xfffff000) | (rdFull << 7) | 0x37) >>> 0;
      }
      case 4: {
        const f2 = bits(c, 11, 10);
        const shamt = (bit(c, 12) << 5) | rs2Full;
        if (f2 === 0) return iType(shamt, rs1P, 5, rs1P, 0x13);
        if (f2 === 1) return iType(0x400 | shamt, rs1P, 5, rs1P, 0x13);
        if (f2 === 2) return iType(imm6, rs1P, 7, rs1P, 0x13);
        const sub = bits(c, 6, 5);
        if (bit(c, 12) === 0) {
          if (sub === 0) return rType(0x20, rdP, rs1P, 0, rs1P, 0x33);
          if (sub === 1) return rType(0, rdP, rs1P, 4, rs1P, 0x33);
          if (sub === 2) return rType(0, rdP, rs1P, 6, rs1P, 0x33);
          return rType(0, rdP, rs1P, 7, rs1P, 0x33);
        }
        if (sub === 0) return rType(0x20, rdP, rs1P, 0, rs1P, 0x3b);
        if (sub === 1) return rType(0, rdP, rs1P, 0, rs1P, 0x3b);
        return 0;
      }
      case 5: {
        const imm = sext((bit(c, 12) << 11) | (bit(c, 11) << 4) | (bits(c, 10, 9) << 8) | (bit(c, 8) << 10) |
          (bit(c, 7) << 6) | (bit(c, 6) << 7) | (bits(c, 5, 3) << 1) | (bit(c, 2) << 5), 12);
        return jType(imm, 0);
      }
      default: {
        const imm = sext((bit(c, 12) << 8) | (bits(c, 11, 10) << 3) | (bits(c, 6, 5) << 6) | (bits(c, 4, 3) << 1) | (bit(c, 2) << 5), 9);
        return bType(imm, 0, rs1P, f3 === 6 ? 0 : 1);
      }
    }
  }
  if (op === 2) {
    switch (f3) {
      case 0: return iType((bit(c, 12) << 5) | rs2Full, rdFull, 1, rdFull, 0x13);
      case 1: return iType((bit(c, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6), 2, 3, rdFull, 0x07);
      case 2: return rdFull === 0 ? 0 : iType((bit(c, 12) << 5) | (bits(c, 6, 4) << 2) | (bits(c, 3, 2) << 6), 2, 2, rdFull, 0x03);
      case 3: return rdFull === 0 ? 0 : iType((bit(c, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6), 2, 3, rdFull, 0x03);
      case 4:
        if (bit(c, 12) === 0) {
          if (rs2Full === 0) return rdFull === 0 ? 0 : iType(0, rdFull, 0, 0, 0x67);
          return rType(0, rs2Full, 0, 0, rdFull, 0x33);
        }
        if (rs2Full === 0) return rdFull === 0 ? 0x00100073 : iType(0, rdFull, 0, 1, 0x67);
        return rType(0, rs2Full, rdFull, 0, rdFull, 0x33);
      case 5: return sType((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6), rs2Full, 2, 3, 0x27);
      case 6: return sType((bits(c, 12, 9) << 2) | (bits(c, 8, 7) << 6), rs2Full, 2, 2, 0x23);
      default: return sType((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6), rs2Full, 2, 3, 0x23);
    }
  }
  return 0;
}

/** expanded[c] for every 16-bit parcel c (0 where illegal or not compressed). Built once. */
export const COMPRESSED_TABLE: Int32Array = (() => {
  const t = new Int32Array(65536);
  for (let c = 0; c < 65536; c++) if ((c & 3) !== 3 && c !== 0) t[c] = expandCompressed(c) | 0;
  return t;
})();

/** CSR numbers, status bits and trap causes used by the hart (RISC-V privileged spec 1.12). */

export const CSR = {
  fflags: 0x001,
  frm: 0x002,
  fcsr: 0x003,
  cycle: 0xc00,
  time: 0xc01,
  instret: 0xc02,
  sstatus: 0x100,
  sie: 0x104,
  stvec: 0x105,
  scounteren: 0x106,
  senvcfg: 0x10a,
  sscratch: 0x140,
  sepc: 0x141,
  scause: 0x142,
  stval: 0x143,
  sip: 0x144,
  satp: 0x180,
  mvendorid: 0xf11,
  marchid: 0xf12,
  mimpid: 0xf13,
  mhartid: 0xf14,
  mconfigptr: 0xf15,
  mstatus: 0x300,
  misa: 0x301,
  medeleg: 0x302,
  mideleg: 0x303,
  mie: 0x304,
  mtvec: 0x305,
  mcounteren: 0x306,
  menvcfg: 0x30a,
  mcountinhibit: 0x320,
  mscratch: 0x340,
  mepc: 0x341,
  mcause: 0x342,
  mtval: 0x343,
  mip: 0x344,
  mtinst: 0x34a,
  mtval2: 0x34b,
  mcycle: 0xb00,
  minstret: 0xb02,
} as const;

// mstatus bits (all in the low word)
export const MSTATUS_SIE = 1 << 1;
export const MSTATUS_MIE = 1 << 3;
export const MSTATUS_SPIE = 1 << 5;
export const MSTATUS_MPIE = 1 << 7;
export const MSTATUS_SPP = 1 << 8;
export const MSTATUS_MPP_SHIFT = 11;
export const MSTATUS_MPP = 3 << 11;
export const MSTATUS_FS_SHIFT = 13;
export const MSTATUS_FS = 3 << 13;
export const MSTATUS_MPRV = 1 << 17;
export const MSTATUS_SUM = 1 << 18;
export const MSTATUS_MXR = 1 << 19;
export const MSTATUS_TVM = 1 << 20;
export const MSTATUS_TW = 1 << 21;
export const MSTATUS_TSR = 1 << 22;
/** UXL = SXL = 2 (64-bit), fixed: the high word of mstatus without SD. */
export const MSTATUS_HI_FIXED = 0xa;

export const MSTATUS_WRITABLE =
  MSTATUS_SIE | MSTATUS_MIE | MSTATUS_SPIE | MSTATUS_MPIE | MSTATUS_SPP | MSTATUS_MPP | MSTATUS_FS |
  MSTATUS_MPRV | MSTATUS_SUM | MSTATUS_MXR | MSTATUS_TVM | MSTATUS_TW | MSTATUS_TSR;
export const SSTATUS_MASK = MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | MSTATUS_MXR;

// interrupt bits of mip/mie
export const IRQ_SSI = 1;
export const IRQ_MSI = 3;
export const IRQ_STI = 5;
export const IRQ_MTI = 7;
export const IRQ_SEI = 9;
export const IRQ_MEI = 11;
export const MIP_SSIP = 1 << IRQ_SSI;
export const MIP_MSIP = 1 << IRQ_MSI;
export const MIP_STIP = 1 << IRQ_STI;
export const MIP_MTIP = 1 << IRQ_MTI;
export const MIP_SEIP = 1 << IRQ_SEI;
export const MIP_MEIP = 1 << IRQ_MEI;
export const S_INTERRUPTS = MIP_SSIP | MIP_STIP | MIP_SEIP;
export const ALL_INTERRUPTS = S_INTERRUPTS | MIP_MSIP | MIP_MTIP | MIP_MEIP;

// exception causes
export const CAUSE_MISALIGNED_FETCH = 0;
export const CAUSE_FETCH_ACCESS = 1;
export const CAUSE_ILLEGAL_INSTRUCTION = 2;
export const CAUSE_BREAKPOINT = 3;
export const CAUSE_MISALIGNED_LOAD = 4;
export const CAUSE_LOAD_ACCESS = 5;
export const CAUSE_MISALIGNED_STORE = 6;
export const CAUSE_STORE_ACCESS = 7;
export const CAUSE_ECALL_U = 8;
export const CAUSE_ECALL_S = 9;
export const CAUSE_ECALL_M = 11;
export const CAUSE_FETCH_PAGE_FAULT = 12;
export const CAUSE_LOAD_PAGE_FAULT = 13;
export const CAUSE_STORE_PAGE_FAULT = 15;

/** misa: MXL=2 (RV64) with I M A F D C S U. */
export const MISA_LO = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);
export const MISA_HI = 2 << 30;

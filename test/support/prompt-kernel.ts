/**
 * A tiny "kernel" for console tests without Linux (boot it with --firmware none: it talks to Yun's
 * SBI): it writes `text` to the console (a prompt, a terminal query...), works a moment, then reads
 * console input byte by byte, echoing each byte back, until a newline; then it powers off. What it echoes shows
 * exactly what reached the guest, and in which order.
 */
import * as A from "./rv-asm.js";

const S0 = 8;
const A0 = 10;
const A7 = 17;
const T0 = 5;
const T1 = 6;

const SBI_PUTCHAR = 1;
const SBI_GETCHAR = 2;
const SBI_SHUTDOWN = 8;

export function promptKernel(text: string): Uint8Array {
  const code = [
    /* 0 */ A.auipc(S0, 0),
    /* 1 */ A.addi(S0, S0, 22 * 4), // the text, after the 22 instructions
    /* 2 print: */ A.lbu(A0, 0, S0),
    /* 3 */ A.beq(A0, 0, (8 - 3) * 4),
    /* 4 */ A.addi(A7, 0, SBI_PUTCHAR),
    /* 5 */ A.ecall(),
    /* 6 */ A.addi(S0, S0, 1),
    /* 7 */ A.jal(0, (2 - 7) * 4),
    // A few million instructions of other work before reading, as a program does between writing
    // and reading: the monitor sees the output meanwhile.
    /* 8 */ A.lui(T0, 0x200),
    /* 9 */ A.addi(T0, T0, -1),
    /* 10 */ A.bne(T0, 0, -4),
    /* 11 read: */ A.addi(A7, 0, SBI_GETCHAR),
    /* 12 */ A.ecall(),
    /* 13 */ A.blt(A0, 0, -8), // -1: nothing yet
    /* 14 */ A.addi(T0, A0, 0),
    /* 15 */ A.addi(A7, 0, SBI_PUTCHAR),
    /* 16 */ A.ecall(),
    /* 17 */ A.addi(T1, 0, 10),
    /* 18 */ A.bne(T0, T1, (11 - 18) * 4),
    /* 19 */ A.addi(A7, 0, SBI_SHUTDOWN),
    /* 20 */ A.ecall(),
    /* 21 */ A.jal(0, 0),
  ];
  const bytes = new TextEncoder().encode(text);
  const image = new Uint8Array(64 + code.length * 4 + bytes.length + 1 + 4096);
  const dv = new DataView(image.buffer);
  dv.setUint32(0, A.jal(0, 64), true);
  image.set(new TextEncoder().encode("RISCV"), 0x30);
  dv.setUint32(0x38, 0x05435352, true);
  code.forEach((w, i) => dv.setUint32(64 + 4 * i, w, true));
  image.set(bytes, 64 + code.length * 4);
  return image;
}

import { test } from "node:test";
import assert from "node:assert/strict";
import { Uart16550 } from "../../src/devices/uart.js";

const RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

function setup() {
  const out: number[] = [];
  const irq = { level: false, changes: 0 };
  const uart = new Uart16550(
    (l) => {
      irq.level = l;
      irq.changes++;
    },
    (b) => out.push(b),
  );
  return { uart, out, irq };
}

test("reset state: transmitter empty, no interrupt, modem lines idle", () => {
  const { uart, irq } = setup();
  assert.equal(uart.read(LSR, 1), 0x60);
  assert.equal(uart.read(IIR, 1), 0x01);
  assert.equal(uart.read(MSR, 1), 0xb0);
  assert.equal(irq.level, false);
});

test("polled transmit as OpenSBI/earlycon does", () => {
  const { uart, out } = setup();
  for (const ch of "hi\n") {
    while (!(uart.read(LSR, 1) & 0x20));
    uart.write(THR, ch.charCodeAt(0), 1);
  }
  assert.deepEqual(out, [0x68, 0x69, 0x0a]);
});

test("divisor latch, LCR and scratch registers", () => {
  const { uart, out } = setup();
  uart.write(LCR, 0x80, 1);
  uart.write(DLL, 0x01, 1);
  uart.write(DLM, 0x02, 1);
  assert.equal(uart.read(DLL, 1), 0x01);
  assert.equal(uart.read(DLM, 1), 0x02);
  uart.write(LCR, 0x03, 1);
  assert.equal(uart.read(LCR, 1), 0x03);
  assert.equal(uart.read(IER, 1), 0, "DLM write did not reach IER");
  assert.deepEqual(out, [], "DLL write did not transmit");
  uart.write(SCR, 0xa5, 1);
  assert.equal(uart.read(SCR, 1), 0xa5);
});

test("Linux 8250 startup THRE probe sees a working UART", () => {
  const { uart, irq } = setup();
  // serial8250_do_startup: clear FIFOs, read LSR/RX/IIR/MSR.
  uart.write(FCR, 0x01, 1);
  uart.write(FCR, 0x07, 1);
  uart.write(FCR, 0x00, 1);
  uart.read(LSR, 1);
  uart.read(RBR, 1);
  uart.read(IIR, 1);
  uart.read(MSR, 1);
  assert.notEqual(uart.read(LSR, 1), 0xff);
  uart.write(IER, 0x02, 1);
  assert.equal(irq.level, true);
  const iir1 = uart.read(IIR, 1);
  assert.equal(iir1 & 0x0f, 0x02, "THRE reported");
  assert.equal(irq.level, false, "reading IIR acknowledged THRE");
  assert.equal(uart.read(IIR, 1) & 0x01, 0x01);
  uart.write(IER, 0x00, 1);
  uart.write(IER, 0x02, 1);
  const iir = uart.read(IIR, 1);
  uart.write(IER, 0x00, 1);
  const bug = !(iir1 & 0x01) && (iir & 0x01) !== 0;
  assert.equal(bug, false, "THRE re-asserted: no UART_BUG_THRE");
});

test("interrupt-driven transmit: each THR write re-raises THRE until ETBEI is cleared", () => {
  const { uart, irq, out } = setup();
  uart.write(FCR, 0xc1, 1);
  uart.write(IER, 0x02, 1); // start_tx
  assert.equal(irq.level, true);
  assert.equal(uart.read(IIR, 1), 0xc2, "FIFO bits and THRE");
  assert.equal(irq.level, false);
  assert.ok(uart.read(LSR, 1) & 0x20);
  uart.write(THR, 0x41, 1);
  assert.equal(irq.level, true, "instant transmit re-raises THRE");
  uart.write(THR, 0x42, 1);
  assert.equal(uart.read(IIR, 1), 0xc2);
  uart.write(IER, 0x00, 1); // stop_tx
  assert.equal(irq.level, false);
  assert.deepEqual(out, [0x41, 0x42]);
});

test("receive: data-available outranks THRE, LSR.DR tracks the FIFO", () => {
  const { uart, irq } = setup();
  uart.write(FCR, 0xc1, 1);
  uart.pushInput([0x61, 0x62]);
  assert.equal(irq.level, false, "receive interrupt not enabled");
  assert.equal(uart.read(LSR, 1), 0x61);
  uart.write(IER, 0x03, 1);
  assert.equal(irq.level, true);
  assert.equal(uart.read(IIR, 1), 0xc4, "RDA first");
  assert.equal(uart.read(RBR, 1), 0x61);
  assert.equal(uart.read(RBR, 1), 0x62);
  assert.equal(uart.read(LSR, 1), 0x60);
  assert.equal(uart.read(IIR, 1), 0xc2, "then THRE");
  assert.equal(uart.read(IIR, 1), 0xc1);
  assert.equal(irq.level, false);
  uart.pushInput(new Uint8Array([0x0d]));
  assert.equal(irq.level, true);
  assert.equal(uart.read(RBR, 1), 0x0d);
  assert.equal(irq.level, false);
  assert.equal(uart.read(RBR, 1), 0, "empty RBR reads 0");
});

test("inputWanted paces piped input to the guest's reading", () => {
  const { uart } = setup();
  assert.equal(uart.inputWanted(), false, "no reader yet");
  uart.write(FCR, 0xc1, 1);
  uart.write(IER, 0x01, 1);
  assert.equal(uart.inputWanted(), true);
  uart.pushInput(new Array(15).fill(0x30));
  assert.equal(uart.inputWanted(), true);
  uart.pushInput([0x31]);
  assert.equal(uart.inputWanted(), false, "16-byte FIFO full");
  uart.pushInput(new Array(100).fill(0x32)); // the host may still push more
  assert.equal(uart.pendingInput, 116);
  for (let i = 0; i < 100; i++) uart.read(RBR, 1);
  assert.equal(uart.inputWanted(), false);
  uart.read(RBR, 1);
  assert.equal(uart.inputWanted(), true);
  uart.write(FCR, 0x00, 1); // toggling FE clears the FIFO
  assert.equal(uart.pendingInput, 0);
  assert.equal(uart.inputWanted(), true);
  uart.pushInput([0x33]);
  assert.equal(uart.inputWanted(), false, "without FIFO there is one holding register");
  uart.write(IER, 0x00, 1);
  assert.equal(uart.inputWanted(), false);
});

test("FCR receive clear drops the FIFO but not the host-side queue", () => {
  const { uart } = setup();
  uart.write(FCR, 0x01, 1);
  uart.pushInput(new Array(20).fill(0).map((_, i) => i));
  uart.write(FCR, 0x03, 1);
  assert.equal(uart.pendingInput, 4);
  assert.equal(uart.read(RBR, 1), 16);
});

test("loopback: MSR mirrors MCR and THR feeds RBR (8250 autoconfig test)", () => {
  const { uart, out } = setup();
  uart.write(MCR, 0x10 | 0x0a, 1);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0x90);
  uart.write(MCR, 0x1f, 1);
  assert.equal(uart.read(MSR, 1) & 0xf0, 0xf0);
  uart.write(THR, 0x55, 1);
  assert.deepEqual(out, []);
  assert.equal(uart.read(LSR, 1) & 1, 1);
  assert.equal(uart.read(RBR, 1), 0x55);
  uart.write(MCR, 0x0b, 1);
  assert.equal(uart.read(MSR, 1), 0xb0 | 0x04, "TERI on RI trailing edge");
  assert.equal(uart.read(MSR, 1), 0xb0, "reading MSR clears deltas");
});

test("modem status interrupt", () => {
  const { uart, irq } = setup();
  uart.write(IER, 0x08, 1);
  uart.write(MCR, 0x10, 1); // loopback with all outputs off: CTS/DSR/DCD drop
  assert.equal(irq.level, true);
  assert.equal(uart.read(IIR, 1), 0x00);
  uart.read(MSR, 1);
  assert.equal(irq.level, false);
});

test("save/restore round-trips through JSON", () => {
  const { uart } = setup();
  uart.write(FCR, 0xc1, 1);
  uart.write(IER, 0x01, 1);
  uart.write(SCR, 7, 1);
  uart.pushInput([1, 2, 3]);
  uart.read(RBR, 1);
  const state = JSON.parse(JSON.stringify(uart.save()));
  const other = setup();
  other.uart.restore(state);
  assert.equal(other.irq.level, true);
  assert.equal(other.uart.read(SCR, 1), 7);
  assert.equal(other.uart.read(IIR, 1), 0xc4);
  assert.equal(other.uart.read(RBR, 1), 2);
  assert.equal(other.uart.read(RBR, 1), 3);
  assert.equal(other.irq.level, false);
});

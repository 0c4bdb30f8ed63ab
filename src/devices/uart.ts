import type { IrqLine, MmioDevice, Persistent } from "./device.js";

export const UART_BASE = 0x1000_0000;
export const UART_SIZE = 0x100;
export const UART_IRQ = 10;
/** clock-frequency advertised in the device tree (QEMU's 3.6864 MHz). */
export const UART_CLOCK_HZ = 0x38_4000;

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_MSI = 0x08;

const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO_ENABLED = 0xc0;

const FCR_FE = 0x01;
const FCR_CLEAR_RX = 0x02;

const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;

const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

/** Modem lines seen when not in loopback: CTS, DSR and DCD asserted (as QEMU). */
const MSR_IDLE = 0xb0;
const MSR_DELTAS = 0x0f;
const FIFO_DEPTH = 16;

export interface UartState {
  ier: number;
  lcr: number;
  mcr: number;
  fcr: number;
  scr: number;
  dll: number;
  dlm: number;
  msr: number;
  thrIpending: boolean;
  rx: number[];
}

/**
 * NS16550A with an instant transmitter. Received bytes wait in an unbounded host-side queue whose
 * head plays the role of the 16-byte receive FIFO.
 */
export class Uart16550 implements MmioDevice, Persistent<UartState> {
  readonly name = "uart";
  private readonly irq: IrqLine;
  private readonly output: (byte: number) => void;

  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private fcr = 0;
  private scr = 0;
  private dll = 0;
  private dlm = 0;
  private msr = MSR_IDLE;
  /** The THRE interrupt condition: set when THR empties (or ETBEI rises while it is empty), cleared by reading it from IIR. */
  private thrIpending = false;
  private irqLevel = false;

  // Receive queue: a ring buffer that grows on demand.
  private rxBuf = new Uint8Array(64);
  private rxHead = 0;
  private rxCount = 0;

  constructor(irq: IrqLine, output: (byte: number) => void) {
    this.irq = irq;
    this.output = output;
  }

  /** Queue bytes for the guest to read. */
  pushInput(bytes: Uint8Array | number[]): void {
    for (let i = 0; i < bytes.length; i++) this.rxPush(bytes[i] & 0xff);
    this.updateIrq();
  }

  /**
   * True when the host should feed more input: the receive FIFO has room and the guest has enabled
   * receive interrupts. Linux clears the FIFO when it opens the port, so input fed before that is lost
   * on real hardware; gating on IER.ERBFI keeps piped stdin intact until a reader exists.
   */
  inputWanted(): boolean {
    return (this.ier & IER_RDI) !== 0 && this.rxCount < this.fifoDepth();
  }

  /** True when the receive FIFO has room, whether or not the guest takes interrupts (a polling
   *  reader, such as U-Boot, which never enables them). */
  inputRoom(): boolean {
    return this.rxCount < this.fifoDepth();
  }

  /** Bytes waiting for the guest (FIFO plus host-side queue). */
  get pendingInput(): number {
    return this.rxCount;
  }

  private fifoDepth(): number {
    return this.fcr & FCR_FE ? FIFO_DEPTH : 1;
  }

  private rxPush(b: number): void {
    if (this.rxCount === this.rxBuf.length) {
      const bigger = new Uint8Array(this.rxBuf.length * 2);
      for (let i = 0; i < this.rxCount; i++) bigger[i] = this.rxBuf[(this.rxHead + i) % this.rxBuf.length];
      this.rxBuf = bigger;
      this.rxHead = 0;
    }
    this.rxBuf[(this.rxHead + this.rxCount) % this.rxBuf.length] = b;
    this.rxCount++;
  }

  private rxPop(): number {
    if (this.rxCount === 0) return 0;
    const b = this.rxBuf[this.rxHead];
    this.rxHead = (this.rxHead + 1) % this.rxBuf.length;
    this.rxCount--;
    return b;
  }

  private lsr(): number {
    return (this.rxCount > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
  }

  /** Highest-priority pending interrupt, in IIR encoding (without the FIFO bits). */
  private iir(): number {
    // No line-status errors can occur (no overrun, parity or break), so RLSI never fires.
    if (this.ier & IER_RDI && this.rxCount > 0) return IIR_RDI;
    if (this.ier & IER_THRI && this.thrIpending) return IIR_THRI;
    if (this.ier & IER_MSI && this.msr & MSR_DELTAS) return IIR_MSI;
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    const level = this.iir() !== IIR_NO_INT;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.irq(level);
    }
  }

  read(offset: number, _size: 1 | 2 | 4): number {
    let v = 0;
    switch (offset & 7) {
      case 0:
        v = this.lcr & LCR_DLAB ? this.dll : this.rxPop();
        break;
      case 1:
        v = this.lcr & LCR_DLAB ? this.dlm : this.ier;
        break;
      case 2: {
        const id = this.iir();
        if (id === IIR_THRI) this.thrIpending = false;
        v = id | (this.fcr & FCR_FE ? IIR_FIFO_ENABLED : 0);
        break;
      }
      case 3:
        v = this.lcr;
        break;
      case 4:
        v = this.mcr;
        break;
      case 5:
        v = this.lsr();
        break;
      case 6:
        v = this.msr;
        this.msr &= ~MSR_DELTAS;
        break;
      case 7:
        v = this.scr;
        break;
    }
    this.updateIrq();
    return v;
  }

  write(offset: number, value: number, _size: 1 | 2 | 4): void {
    value &= 0xff;
    switch (offset & 7) {
      case 0:
        if (this.lcr & LCR_DLAB) {
          this.dll = value;
        } else {
          if (this.mcr & MCR_LOOP) this.rxPush(value);
          else this.output(value);
          // Transmission is instant: THR is empty again at once, which re-raises THRE.
          this.thrIpending = true;
        }
        break;
      case 1:
        if (this.lcr & LCR_DLAB) {
          this.dlm = value;
        } else {
          const changed = (this.ier ^ value) & 0x0f;
          this.ier = value & 0x0f;
          // Enabling ETBEI while THR is empty raises THRE even if it was acknowledged before; Linux's
          // startup probe (toggling IER.THRI and reading IIR) depends on it.
          if (changed & IER_THRI) this.thrIpending = (this.ier & IER_THRI) !== 0;
        }
        break;
      case 2: {
        // Toggling FIFO enable clears both FIFOs.
        const clearRx = value & FCR_CLEAR_RX || (value ^ this.fcr) & FCR_FE;
        if (clearRx) {
          const n = Math.min(this.rxCount, this.fifoDepth());
          for (let i = 0; i < n; i++) this.rxPop();
        }
        this.fcr = value & 0xc9; // FE, DMA mode and trigger level are the stored bits
        break;
      }
      case 3:
        this.lcr = value;
        break;
      case 4:
        this.mcr = value & 0x1f;
        this.updateModemStatus();
        break;
      case 5:
      case 6:
        break; // LSR and MSR are read-only here
      case 7:
        this.scr = value;
        break;
    }
    this.updateIrq();
  }

  /** In loopback the modem inputs follow MCR's outputs (RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD). */
  private updateModemStatus(): void {
    const lines =
      this.mcr & MCR_LOOP
        ? ((this.mcr & 0x02) << 3) | ((this.mcr & 0x01) << 5) | ((this.mcr & 0x04) << 4) | ((this.mcr & 0x08) << 4)
        : MSR_IDLE;
    const old = this.msr;
    const changed = (old ^ lines) & 0xf0;
    let deltas = old & MSR_DELTAS;
    if (changed & 0x10) deltas |= 0x01; // DCTS
    if (changed & 0x20) deltas |= 0x02; // DDSR
    if (old & 0x40 && !(lines & 0x40)) deltas |= 0x04; // TERI: RI trailing edge
    if (changed & 0x80) deltas |= 0x08; // DDCD
    this.msr = lines | deltas;
  }

  save(): UartState {
    const rx: number[] = [];
    for (let i = 0; i < this.rxCount; i++) rx.push(this.rxBuf[(this.rxHead + i) % this.rxBuf.length]);
    return {
      ier: this.ier,
      lcr: this.lcr,
      mcr: this.mcr,
      fcr: this.fcr,
      scr: this.scr,
      dll: this.dll,
      dlm: this.dlm,
      msr: this.msr,
      thrIpending: this.thrIpending,
      rx,
    };
  }

  restore(state: UartState): void {
    this.ier = state.ier & 0x0f;
    this.lcr = state.lcr & 0xff;
    this.mcr = state.mcr & 0x1f;
    this.fcr = state.fcr & 0xc9;
    this.scr = state.scr & 0xff;
    this.dll = state.dll & 0xff;
    this.dlm = state.dlm & 0xff;
    this.msr = state.msr & 0xff;
    this.thrIpending = state.thrIpending;
    this.rxBuf = new Uint8Array(Math.max(64, state.rx.length));
    this.rxHead = 0;
    this.rxCount = 0;
    for (const b of state.rx) this.rxPush(b & 0xff);
    this.irqLevel = this.iir() !== IIR_NO_INT;
    this.irq(this.irqLevel);
  }
}

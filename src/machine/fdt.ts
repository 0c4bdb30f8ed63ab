/** Flattened devicetree (DTB version 17) writer. */

const FDT_MAGIC = 0xd00dfeed;
const FDT_BEGIN_NODE = 1;
const FDT_END_NODE = 2;
const FDT_PROP = 3;
const FDT_END = 9;
const HEADER_SIZE = 40;

const encoder = new TextEncoder();

/** Growable big-endian byte buffer. */
class ByteSink {
  buf = new Uint8Array(1024);
  len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.len));
    this.buf = bigger;
  }

  u32(v: number): void {
    this.reserve(4);
    new DataView(this.buf.buffer).setUint32(this.len, v >>> 0);
    this.len += 4;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  align(n: number): void {
    const pad = (n - (this.len % n)) % n;
    this.reserve(pad);
    this.buf.fill(0, this.len, this.len + pad);
    this.len += pad;
  }
}

export class FdtWriter {
  private readonly struct = new ByteSink();
  private readonly strings = new ByteSink();
  private readonly stringOffsets = new Map<string, number>();
  private readonly reservations: { address: bigint; size: bigint }[] = [];
  private depth = 0;
  private finished = false;
  bootCpuId = 0;

  /** Adds a /memreserve/ entry. */
  addReservation(address: number | bigint, size: number | bigint): void {
    this.reservations.push({ address: BigInt(address), size: BigInt(size) });
  }

  /** The root node is named "". */
  beginNode(name: string): void {
    this.check();
    this.struct.u32(FDT_BEGIN_NODE);
    this.struct.bytes(encoder.encode(name));
    this.struct.bytes(new Uint8Array(1));
    this.struct.align(4);
    this.depth++;
  }

  endNode(): void {
    this.check();
    if (this.depth === 0) throw new Error("fdt: endNode without beginNode");
    this.struct.u32(FDT_END_NODE);
    this.depth--;
  }

  prop(name: string, value: Uint8Array): void {
    this.check();
    if (this.depth === 0) throw new Error("fdt: property outside a node");
    this.struct.u32(FDT_PROP);
    this.struct.u32(value.length);
    this.struct.u32(this.stringOffset(name));
    this.struct.bytes(value);
    this.struct.align(4);
  }

  propU32(name: string, ...values: number[]): void {
    const b = new Uint8Array(values.length * 4);
    const dv = new DataView(b.buffer);
    values.forEach((v, i) => dv.setUint32(i * 4, v >>> 0));
    this.prop(name, b);
  }

  propU64(name: string, ...values: (number | bigint)[]): void {
    const b = new Uint8Array(values.length * 8);
    const dv = new DataView(b.buffer);
    values.forEach((v, i) => dv.setBigUint64(i * 8, BigInt(v)));
    this.prop(name, b);
  }

  propString(name: string, s: string): void {
    this.propStrings(name, s);
  }

  propStrings(name: string, ...s: string[]): void {
    this.prop(name, encoder.encode(s.map((x) => x + "\0").join("")));
  }

  propEmpty(name: string): void {
    this.prop(name, new Uint8Array(0));
  }

  finish(): Uint8Array {
    this.check();
    if (this.depth !== 0) throw new Error(`fdt: ${this.depth} node(s) left open`);
    this.finished = true;
    this.struct.u32(FDT_END);

    const rsvOff = HEADER_SIZE; // already 8-byte aligned
    const rsvSize = (this.reservations.length + 1) * 16;
    const structOff = align(rsvOff + rsvSize, 8);
    const structSize = this.struct.len;
    const stringsOff = structOff + structSize;
    const stringsSize = this.strings.len;
    const total = align(stringsOff + stringsSize, 8);

    const out = new Uint8Array(total);
    const dv = new DataView(out.buffer);
    const header = [
      FDT_MAGIC,
      total,
      structOff,
      stringsOff,
      rsvOff,
      17, // version
      16, // last compatible version
      this.bootCpuId,
      stringsSize,
      structSize,
    ];
    header.forEach((v, i) => dv.setUint32(i * 4, v >>> 0));
    this.reservations.forEach((r, i) => {
      dv.setBigUint64(rsvOff + i * 16, r.address);
      dv.setBigUint64(rsvOff + i * 16 + 8, r.size);
    });
    out.set(this.struct.buf.subarray(0, structSize), structOff);
    out.set(this.strings.buf.subarray(0, stringsSize), stringsOff);
    return out;
  }

  private stringOffset(name: string): number {
    let off = this.stringOffsets.get(name);
    if (off === undefined) {
      off = this.strings.len;
      this.strings.bytes(encoder.encode(name + "\0"));
      this.stringOffsets.set(name, off);
    }
    return off;
  }

  private check(): void {
    if (this.finished) throw new Error("fdt: writer already finished");
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

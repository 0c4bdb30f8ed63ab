/**
 * virtio-gpu, 2D only (virtio 1.2 §5.7): what Linux's virtio-gpu DRM driver (drivers/gpu/drm/virtio)
 * sends for a framebuffer console or a modesetting X server. Control queue 0, cursor queue 1; one
 * scanout.
 *
 * Every 2D resource has a host copy (4 bytes a pixel, the guest's own format) that
 * TRANSFER_TO_HOST_2D fills from the resource's backing pages in guest RAM; RESOURCE_FLUSH marks a
 * rectangle of the scanout dirty and tells the display listeners (the VNC server). Host memory is
 * bounded: a resource wider or higher than {@link GPU_MAX_DIMENSION}, or one that would take the
 * device's resources past its byte budget, is refused with ERR_OUT_OF_MEMORY and never allocated.
 * Backing entries are checked against RAM when attached, so a transfer only ever reads RAM.
 *
 * Commands complete synchronously, so a fenced command's fence has signalled by the time its
 * response (which carries FLAG_FENCE and the fence id back) is in the used ring.
 *
 * State for snapshots is the resources' shapes and backing lists, the scanout and the cursor: the
 * host copies are rebuilt on restore from the backing pages (which are in the snapshot's RAM).
 */
import type { IrqLine } from "../device.js";
import { VIRTIO_ID_GPU, VirtioMmioDevice, type VirtioOptions } from "./mmio.js";
import { copyBytes, type DescriptorChain, type GuestRam } from "./queue.js";

const QUEUE_SIZE = 256;
const CONTROLQ = 0;
/** Queue 1 is the cursor queue. */

export const GPU_CMD = {
  GET_DISPLAY_INFO: 0x0100,
  RESOURCE_CREATE_2D: 0x0101,
  RESOURCE_UNREF: 0x0102,
  SET_SCANOUT: 0x0103,
  RESOURCE_FLUSH: 0x0104,
  TRANSFER_TO_HOST_2D: 0x0105,
  RESOURCE_ATTACH_BACKING: 0x0106,
  RESOURCE_DETACH_BACKING: 0x0107,
  GET_CAPSET_INFO: 0x0108,
  GET_CAPSET: 0x0109,
  GET_EDID: 0x010a,
  UPDATE_CURSOR: 0x0300,
  MOVE_CURSOR: 0x0301,
} as const;

export const GPU_RESP = {
  OK_NODATA: 0x1100,
  OK_DISPLAY_INFO: 0x1101,
  ERR_UNSPEC: 0x1200,
  ERR_OUT_OF_MEMORY: 0x1201,
  ERR_INVALID_SCANOUT_ID: 0x1202,
  ERR_INVALID_RESOURCE_ID: 0x1203,
  ERR_INVALID_PARAMETER: 0x1205,
} as const;

export const GPU_FLAG_FENCE = 1;
/** virtio_gpu_ctrl_hdr: type, flags, fence_id (u64), ctx_id, ring_idx + padding. */
export const GPU_HDR_SIZE = 24;
const MAX_SCANOUTS = 16;
const DISPLAY_INFO_SIZE = GPU_HDR_SIZE + MAX_SCANOUTS * 24;
/** The most backing entries one ATTACH_BACKING may carry (QEMU's limit). */
export const GPU_MAX_BACKING_ENTRIES = 16384;
/** Widest and highest resource accepted. */
export const GPU_MAX_DIMENSION = 8192;
/** Default budget for all resources' host copies together. */
export const GPU_DEFAULT_MAX_HOST_BYTES = 128 * 1024 * 1024;
const MAX_LOGGED_ERRORS = 10;
/** The most resources alive at once. */
export const GPU_MAX_RESOURCES = 4096;

/**
 * The 2D formats (enum virtio_gpu_formats), all 4 bytes a pixel, with where red, green and blue sit
 * in each pixel's bytes.
 */
export const GPU_FORMATS: ReadonlyMap<number, { r: number; g: number; b: number }> = new Map([
  [1, { r: 2, g: 1, b: 0 }], // B8G8R8A8_UNORM
  [2, { r: 2, g: 1, b: 0 }], // B8G8R8X8_UNORM: Linux's XRGB8888 on a little-endian guest
  [3, { r: 1, g: 2, b: 3 }], // A8R8G8B8_UNORM
  [4, { r: 1, g: 2, b: 3 }], // X8R8G8B8_UNORM
  [67, { r: 0, g: 1, b: 2 }], // R8G8B8A8_UNORM
  [68, { r: 3, g: 2, b: 1 }], // X8B8G8R8_UNORM
  [121, { r: 3, g: 2, b: 1 }], // A8B8G8R8_UNORM
  [134, { r: 0, g: 1, b: 2 }], // R8G8B8X8_UNORM
]);

/** Where the alpha byte sits in the formats that have one (cursors are B8G8R8A8 from Linux). */
const CURSOR_ALPHA: ReadonlyMap<number, number> = new Map([
  [1, 3],
  [3, 0],
  [67, 3],
  [121, 0],
]);

/** What a display (the VNC server) reads: the scanned-out pixels, 4 bytes each. */
export interface GpuSurface {
  width: number;
  height: number;
  pixels: Uint8Array;
  /** Byte offset of pixel (0, 0) in `pixels`, and bytes per row. */
  offset: number;
  stride: number;
  /** Byte positions of red, green and blue within a pixel. */
  r: number;
  g: number;
  b: number;
}

/** The hardware cursor's picture: 4 bytes a pixel, rows of `width` pixels. */
export interface GpuCursorImage {
  width: number;
  height: number;
  hotX: number;
  hotY: number;
  pixels: Uint8Array;
  offset: 0;
  stride: number;
  r: number;
  g: number;
  b: number;
  /** Byte position of alpha in a pixel; null for the X formats (every pixel opaque). */
  a: number | null;
}

/** Told about what the guest shows: a changed rectangle, or a new size (everything changed). */
export interface DisplayListener {
  damage(x: number, y: number, width: number, height: number): void;
  resize(width: number, height: number): void;
  /** The guest gave its hardware cursor another picture, hotspot, or hid it. */
  cursor?(): void;
}

interface Resource {
  id: number;
  format: number;
  width: number;
  height: number;
  host: Uint8Array;
  /** Backing entries: guest-physical addresses and lengths as the driver gave them. */
  addrs: number[];
  lengths: number[];
  /** The same entries as RAM offsets, and each entry's start within the backing. */
  ramOffsets: Float64Array;
  starts: Float64Array;
  backingBytes: number;
}

export interface GpuResourceState {
  id: number;
  format: number;
  width: number;
  height: number;
  /** Backing entries as [address, length] pairs (none: no backing attached). */
  backing: [number, number][] | null;
}

export interface VirtioGpuState {
  resources: GpuResourceState[];
  scanout: { resourceId: number; x: number; y: number; width: number; height: number };
  cursor: { resourceId: number; x: number; y: number; hotX: number; hotY: number };
  eventsRead: number;
}

export interface VirtioGpuOptions extends VirtioOptions {
  /** The display mode offered in GET_DISPLAY_INFO (default 1024x768). */
  width?: number;
  height?: number;
  /** Budget for all resources' host copies together (default 128 MiB). */
  maxHostBytes?: number;
}

class GpuError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class VirtioGpu extends VirtioMmioDevice<VirtioGpuState> {
  private readonly chain: DescriptorChain;
  private readonly req = new Uint8Array(64);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly resp = new Uint8Array(DISPLAY_INFO_SIZE);
  private readonly respView = new DataView(this.resp.buffer);
  private readonly entry = new Uint8Array(16);
  private readonly entryView = new DataView(this.entry.buffer);
  private readonly resources = new Map<number, Resource>();
  private hostBytes = 0;
  private readonly maxHostBytes: number;
  private readonly modeWidth: number;
  private readonly modeHeight: number;
  private scanout = { resourceId: 0, x: 0, y: 0, width: 0, height: 0 };
  private cursor = { resourceId: 0, x: 0, y: 0, hotX: 0, hotY: 0 };
  private readonly listeners = new Set<DisplayListener>();
  /** Commands answered with an error (tests and metrics). */
  errors = 0;

  constructor(mem: GuestRam, irq: IrqLine, options: VirtioGpuOptions = {}) {
    super(
      mem,
      irq,
      {
        deviceId: VIRTIO_ID_GPU,
        defaultName: "virtio-gpu",
        features: 0,
        queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE }],
        configSize: 16,
      },
      options,
    );
    this.chain = this.newChain();
    this.modeWidth = options.width ?? 1024;
    this.modeHeight = options.height ?? 768;
    this.maxHostBytes = options.maxHostBytes ?? GPU_DEFAULT_MAX_HOST_BYTES;
    this.configView.setUint32(8, 1, true); // num_scanouts
  }

  // ---- the display side ----

  /** Listens for damage and size changes until the returned function is called. */
  listen(listener: DisplayListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The size the display shows: the scanout's, or the offered mode while nothing is scanned out. */
  get displayWidth(): number {
    return this.scanout.resourceId !== 0 ? this.scanout.width : this.modeWidth;
  }

  get displayHeight(): number {
    return this.scanout.resourceId !== 0 ? this.scanout.height : this.modeHeight;
  }

  /** The scanned-out pixels, or null while the display is dark. */
  surface(): GpuSurface | null {
    const res = this.resources.get(this.scanout.resourceId);
    if (!res) return null;
    const fmt = GPU_FORMATS.get(res.format)!;
    const stride = res.width * 4;
    return {
      width: this.scanout.width,
      height: this.scanout.height,
      pixels: res.host,
      offset: this.scanout.y * stride + this.scanout.x * 4,
      stride,
      r: fmt.r,
      g: fmt.g,
      b: fmt.b,
    };
  }

  /** The hardware cursor's picture, or null while it is hidden. */
  cursorImage(): GpuCursorImage | null {
    const res = this.resources.get(this.cursor.resourceId);
    if (!res) return null;
    const fmt = GPU_FORMATS.get(res.format)!;
    return {
      width: res.width,
      height: res.height,
      hotX: Math.min(this.cursor.hotX, res.width - 1),
      hotY: Math.min(this.cursor.hotY, res.height - 1),
      pixels: res.host,
      offset: 0,
      stride: res.width * 4,
      r: fmt.r,
      g: fmt.g,
      b: fmt.b,
      a: CURSOR_ALPHA.get(res.format) ?? null,
    };
  }

  /** Where the guest put its hardware cursor (the resource is 0 when hidden). */
  get cursorState(): Readonly<VirtioGpuState["cursor"]> {
    return this.cursor;
  }

  /** Bytes of host memory held by the resources' copies. */
  get hostMemory(): number {
    return this.hostBytes;
  }

  // ---- queues ----

  protected queueNotified(index: number): void {
    const q = this.queues[index];
    const c = this.chain;
    while (this.live && q.pop(c)) {
      if (index !== CONTROLQ) {
        this.cursorCommand(c);
        q.push(c.head, 0);
        continue;
      }
      const respLen = this.controlCommand(c);
      q.push(c.head, c.write(0, this.resp, 0, respLen));
    }
    this.complete(q);
  }

  /** Serves one control command; returns the response's length in `resp`. */
  private controlCommand(c: DescriptorChain): number {
    const req = this.reqView;
    this.req.fill(0);
    const got = c.read(0, this.req, 0, this.req.length);
    const type = got >= GPU_HDR_SIZE ? req.getUint32(0, true) : 0;
    let respType: number = GPU_RESP.OK_NODATA;
    let respLen = GPU_HDR_SIZE;
    this.resp.fill(0, 0, GPU_HDR_SIZE);
    try {
      if (got < GPU_HDR_SIZE) throw new GpuError(GPU_RESP.ERR_UNSPEC, `a ${got}-byte request has no header`);
      switch (type) {
        case GPU_CMD.GET_DISPLAY_INFO:
          respLen = this.displayInfo();
          respType = GPU_RESP.OK_DISPLAY_INFO;
          break;
        case GPU_CMD.RESOURCE_CREATE_2D:
          this.need(got, 40);
          this.create(
            req.getUint32(24, true),
            req.getUint32(28, true),
            req.getUint32(32, true),
            req.getUint32(36, true),
          );
          break;
        case GPU_CMD.RESOURCE_UNREF:
          this.need(got, 32);
          this.unref(req.getUint32(24, true));
          break;
        case GPU_CMD.SET_SCANOUT:
          this.need(got, 48);
          this.setScanout(
            req.getUint32(40, true),
            req.getUint32(44, true),
            req.getUint32(24, true),
            req.getUint32(28, true),
            req.getUint32(32, true),
            req.getUint32(36, true),
          );
          break;
        case GPU_CMD.RESOURCE_FLUSH:
          this.need(got, 48);
          this.flush(
            req.getUint32(40, true),
            req.getUint32(24, true),
            req.getUint32(28, true),
            req.getUint32(32, true),
            req.getUint32(36, true),
          );
          break;
        case GPU_CMD.TRANSFER_TO_HOST_2D:
          this.need(got, 56);
          this.transfer(
            req.getUint32(48, true),
            req.getUint32(24, true),
            req.getUint32(28, true),
            req.getUint32(32, true),
            req.getUint32(36, true),
            req.getUint32(40, true) + req.getUint32(44, true) * 4294967296,
          );
          break;
        case GPU_CMD.RESOURCE_ATTACH_BACKING:
          this.need(got, 32);
          this.attachBacking(c, req.getUint32(24, true), req.getUint32(28, true));
          break;
        case GPU_CMD.RESOURCE_DETACH_BACKING:
          this.need(got, 32);
          this.detachBacking(this.resource(req.getUint32(24, true)));
          break;
        default:
          // 3D, blobs, capsets and EDID were not offered.
          throw new GpuError(GPU_RESP.ERR_UNSPEC, `command 0x${type.toString(16)} is not supported`);
      }
    } catch (e) {
      if (!(e instanceof GpuError)) throw e;
      // Errors are answers, not rule breaks: a driver may send many, so only the first few are logged.
      if (++this.errors <= MAX_LOGGED_ERRORS) {
        this.log(
          `${e.message}; answered with an error${this.errors === MAX_LOGGED_ERRORS ? " (further errors are not logged)" : ""}`,
        );
      }
      respType = e.code;
      respLen = GPU_HDR_SIZE;
    }
    const resp = this.respView;
    resp.setUint32(0, respType, true);
    const flags = req.getUint32(4, true);
    if (flags & GPU_FLAG_FENCE) {
      // Everything is done already: the fence has signalled.
      resp.setUint32(4, GPU_FLAG_FENCE, true);
      resp.setUint32(8, req.getUint32(8, true), true);
      resp.setUint32(12, req.getUint32(12, true), true);
      resp.setUint32(16, req.getUint32(16, true), true);
      resp.setUint8(20, req.getUint8(20));
    }
    return respLen;
  }

  private need(got: number, size: number): void {
    if (got < size) throw new GpuError(GPU_RESP.ERR_UNSPEC, `a ${got}-byte request is shorter than its ${size} bytes`);
  }

  private resource(id: number): Resource {
    const res = this.resources.get(id);
    if (!res) throw new GpuError(GPU_RESP.ERR_INVALID_RESOURCE_ID, `no resource ${id}`);
    return res;
  }

  private displayInfo(): number {
    this.resp.fill(0, GPU_HDR_SIZE, DISPLAY_INFO_SIZE);
    const v = this.respView;
    v.setUint32(GPU_HDR_SIZE + 8, this.modeWidth, true);
    v.setUint32(GPU_HDR_SIZE + 12, this.modeHeight, true);
    v.setUint32(GPU_HDR_SIZE + 16, 1, true); // enabled
    return DISPLAY_INFO_SIZE;
  }

  private create(id: number, format: number, width: number, height: number): void {
    if (id === 0 || this.resources.has(id)) {
      throw new GpuError(GPU_RESP.ERR_INVALID_RESOURCE_ID, `resource id ${id} is ${id === 0 ? "reserved" : "in use"}`);
    }
    if (!GPU_FORMATS.has(format))
      throw new GpuError(GPU_RESP.ERR_INVALID_PARAMETER, `format ${format} is not supported`);
    if (width === 0 || height === 0 || width > GPU_MAX_DIMENSION || height > GPU_MAX_DIMENSION) {
      throw new GpuError(
        GPU_RESP.ERR_OUT_OF_MEMORY,
        `a ${width}x${height} resource is refused (at most ${GPU_MAX_DIMENSION}x${GPU_MAX_DIMENSION})`,
      );
    }
    const bytes = width * height * 4;
    if (this.hostBytes + bytes > this.maxHostBytes || this.resources.size >= GPU_MAX_RESOURCES) {
      throw new GpuError(
        GPU_RESP.ERR_OUT_OF_MEMORY,
        `a ${width}x${height} resource would pass the device's ${this.maxHostBytes >> 20} MiB or ${GPU_MAX_RESOURCES} resources`,
      );
    }
    this.resources.set(id, {
      id,
      format,
      width,
      height,
      host: new Uint8Array(bytes),
      addrs: [],
      lengths: [],
      ramOffsets: new Float64Array(0),
      starts: new Float64Array(0),
      backingBytes: 0,
    });
    this.hostBytes += bytes;
  }

  private unref(id: number): void {
    const res = this.resource(id);
    this.resources.delete(id);
    this.hostBytes -= res.host.length;
    if (this.scanout.resourceId === id) this.disableScanout();
    if (this.cursor.resourceId === id) {
      this.cursor.resourceId = 0;
      for (const l of this.listeners) l.cursor?.();
    }
  }

  private disableScanout(): void {
    this.scanout = { resourceId: 0, x: 0, y: 0, width: 0, height: 0 };
    this.announceResize();
  }

  private setScanout(scanoutId: number, id: number, x: number, y: number, width: number, height: number): void {
    if (scanoutId !== 0) throw new GpuError(GPU_RESP.ERR_INVALID_SCANOUT_ID, `no scanout ${scanoutId}`);
    if (id === 0 || width === 0 || height === 0) {
      this.disableScanout();
      return;
    }
    const res = this.resource(id);
    if (!within(x, y, width, height, res.width, res.height)) {
      throw new GpuError(
        GPU_RESP.ERR_INVALID_PARAMETER,
        `scanout rectangle ${width}x${height}+${x}+${y} is outside the ${res.width}x${res.height} resource ${id}`,
      );
    }
    const s = this.scanout;
    const resized = s.width !== width || s.height !== height || s.resourceId === 0;
    this.scanout = { resourceId: id, x, y, width, height };
    if (resized) this.announceResize();
    else for (const l of this.listeners) l.damage(0, 0, width, height);
  }

  private announceResize(): void {
    const w = this.displayWidth;
    const h = this.displayHeight;
    for (const l of this.listeners) l.resize(w, h);
  }

  private flush(id: number, x: number, y: number, width: number, height: number): void {
    const res = this.resource(id);
    if (!within(x, y, width, height, res.width, res.height)) {
      throw new GpuError(
        GPU_RESP.ERR_INVALID_PARAMETER,
        `flush rectangle ${width}x${height}+${x}+${y} is outside resource ${id}`,
      );
    }
    const s = this.scanout;
    if (s.resourceId !== id) return;
    // The part of the rectangle the scanout shows, in display coordinates.
    const x0 = Math.max(x, s.x);
    const y0 = Math.max(y, s.y);
    const x1 = Math.min(x + width, s.x + s.width);
    const y1 = Math.min(y + height, s.y + s.height);
    if (x1 <= x0 || y1 <= y0) return;
    for (const l of this.listeners) l.damage(x0 - s.x, y0 - s.y, x1 - x0, y1 - y0);
  }

  private transfer(id: number, x: number, y: number, width: number, height: number, offset: number): void {
    const res = this.resource(id);
    if (!within(x, y, width, height, res.width, res.height)) {
      throw new GpuError(
        GPU_RESP.ERR_INVALID_PARAMETER,
        `transfer rectangle ${width}x${height}+${x}+${y} is outside the ${res.width}x${res.height} resource ${id}`,
      );
    }
    if (res.addrs.length === 0) throw new GpuError(GPU_RESP.ERR_UNSPEC, `resource ${id} has no backing`);
    if (width === 0 || height === 0) return;
    const stride = res.width * 4;
    const rowBytes = width * 4;
    if (offset + stride * (height - 1) + rowBytes > res.backingBytes) {
      throw new GpuError(
        GPU_RESP.ERR_INVALID_PARAMETER,
        `transfer reaches past the ${res.backingBytes}-byte backing of resource ${id}`,
      );
    }
    for (let row = 0; row < height; row++) {
      this.gather(res, offset + stride * row, res.host, (y + row) * stride + x * 4, rowBytes);
    }
  }

  /** Copies `len` bytes from `pos` in the resource's backing (already checked to hold them). */
  private gather(res: Resource, pos: number, dst: Uint8Array, dstOff: number, len: number): void {
    const starts = res.starts;
    // Binary search for the entry holding `pos`.
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= pos) lo = mid;
      else hi = mid - 1;
    }
    const ram = this.mem.ram;
    for (let i = lo; len > 0 && i < starts.length; i++) {
      const inEntry = pos - starts[i];
      const n = Math.min(res.lengths[i] - inEntry, len);
      if (n > 0) {
        copyBytes(dst, dstOff, ram, res.ramOffsets[i] + inEntry, n);
        dstOff += n;
        len -= n;
        pos += n;
      }
    }
  }

  private attachBacking(c: DescriptorChain, id: number, count: number): void {
    const res = this.resource(id);
    if (res.addrs.length > 0) throw new GpuError(GPU_RESP.ERR_UNSPEC, `resource ${id} already has backing`);
    if (count === 0 || count > GPU_MAX_BACKING_ENTRIES) {
      throw new GpuError(
        GPU_RESP.ERR_INVALID_PARAMETER,
        `${count} backing entries (1 to ${GPU_MAX_BACKING_ENTRIES} allowed)`,
      );
    }
    if (c.readBytes < 32 + count * 16) {
      throw new GpuError(GPU_RESP.ERR_INVALID_PARAMETER, `the request holds fewer than its ${count} backing entries`);
    }
    const addrs: number[] = [];
    const lengths: number[] = [];
    for (let i = 0; i < count; i++) {
      c.read(32 + i * 16, this.entry, 0, 16);
      const lo = this.entryView.getUint32(0, true);
      const hi = this.entryView.getUint32(4, true);
      const len = this.entryView.getUint32(8, true);
      const addr = hi * 4294967296 + lo;
      const off = hi < 0x20_0000 ? this.mem.ramOffset(addr) : -1;
      if (off < 0 || off + len > this.mem.ramSize) {
        throw new GpuError(
          GPU_RESP.ERR_UNSPEC,
          `backing entry ${i} (0x${addr.toString(16)}, ${len} bytes) is not in RAM`,
        );
      }
      addrs.push(addr);
      lengths.push(len);
    }
    this.setBacking(res, addrs, lengths);
  }

  private setBacking(res: Resource, addrs: number[], lengths: number[]): void {
    res.addrs = addrs;
    res.lengths = lengths;
    res.ramOffsets = new Float64Array(addrs.length);
    res.starts = new Float64Array(addrs.length);
    let total = 0;
    for (let i = 0; i < addrs.length; i++) {
      res.ramOffsets[i] = this.mem.ramOffset(addrs[i]);
      res.starts[i] = total;
      total += lengths[i];
    }
    res.backingBytes = total;
  }

  private detachBacking(res: Resource): void {
    if (res.addrs.length === 0) throw new GpuError(GPU_RESP.ERR_UNSPEC, `resource ${res.id} has no backing`);
    this.setBacking(res, [], []);
  }

  private cursorCommand(c: DescriptorChain): void {
    this.req.fill(0);
    const got = c.read(0, this.req, 0, 56);
    if (got < 40) return;
    const type = this.reqView.getUint32(0, true);
    if (this.reqView.getUint32(24, true) !== 0) return; // scanout_id: only scanout 0 exists
    const x = this.reqView.getUint32(28, true);
    const y = this.reqView.getUint32(32, true);
    if (type === GPU_CMD.MOVE_CURSOR) {
      this.cursor.x = x;
      this.cursor.y = y;
    } else if (type === GPU_CMD.UPDATE_CURSOR && got >= 56) {
      const id = this.reqView.getUint32(40, true);
      this.cursor = {
        resourceId: this.resources.has(id) ? id : 0,
        x,
        y,
        hotX: this.reqView.getUint32(44, true),
        hotY: this.reqView.getUint32(48, true),
      };
      for (const l of this.listeners) l.cursor?.();
    }
  }

  protected override configWrite(offset: number, value: number, size: 1 | 2 | 4): void {
    // events_clear (offset 4) clears bits of events_read.
    if (offset === 4 && size === 4) {
      this.configView.setUint32(0, this.configView.getUint32(0, true) & ~value, true);
    }
  }

  protected override resetDevice(): void {
    this.resources.clear();
    this.hostBytes = 0;
    this.cursor = { resourceId: 0, x: 0, y: 0, hotX: 0, hotY: 0 };
    if (this.scanout.resourceId !== 0) this.disableScanout();
  }

  // ---- snapshots ----

  protected saveDevice(): VirtioGpuState {
    return {
      resources: [...this.resources.values()].map((r) => ({
        id: r.id,
        format: r.format,
        width: r.width,
        height: r.height,
        backing: r.addrs.length > 0 ? r.addrs.map((a, i): [number, number] => [a, r.lengths[i]]) : null,
      })),
      scanout: { ...this.scanout },
      cursor: { ...this.cursor },
      eventsRead: this.configView.getUint32(0, true),
    };
  }

  protected restoreDevice(state: VirtioGpuState): void {
    this.resources.clear();
    this.hostBytes = 0;
    if (!Array.isArray(state.resources)) throw new Error("the resources are not a list");
    for (const r of state.resources) {
      try {
        this.create(r.id >>> 0, r.format >>> 0, r.width >>> 0, r.height >>> 0);
        const res = this.resource(r.id >>> 0);
        if (r.backing) {
          for (const [addr, len] of r.backing) {
            const off = this.mem.ramOffset(Number(addr));
            if (off < 0 || off + (len >>> 0) > this.mem.ramSize)
              throw new Error(`backing 0x${Number(addr).toString(16)} is not in RAM`);
          }
          this.setBacking(
            res,
            r.backing.map(([a]) => Number(a)),
            r.backing.map(([, l]) => l >>> 0),
          );
          // The host copy is rebuilt from the backing, which the guest last drew into.
          if (res.backingBytes >= res.host.length) this.transfer(res.id, 0, 0, res.width, res.height, 0);
        }
      } catch (e) {
        throw new Error(`resource ${r.id}: ${(e as Error).message}`);
      }
    }
    const s = state.scanout;
    this.scanout = { resourceId: 0, x: 0, y: 0, width: 0, height: 0 };
    if (s && s.resourceId) this.setScanout(0, s.resourceId >>> 0, s.x >>> 0, s.y >>> 0, s.width >>> 0, s.height >>> 0);
    else this.announceResize();
    const cur = state.cursor;
    this.cursor = {
      resourceId: this.resources.has(cur?.resourceId) ? cur.resourceId : 0,
      x: cur?.x >>> 0,
      y: cur?.y >>> 0,
      hotX: cur?.hotX >>> 0,
      hotY: cur?.hotY >>> 0,
    };
    this.configView.setUint32(0, state.eventsRead >>> 0, true);
  }
}

/** True when the rectangle lies inside a width x height area (no 32-bit wrap-around). */
function within(x: number, y: number, w: number, h: number, width: number, height: number): boolean {
  return x <= width && y <= height && w <= width - x && h <= height - y;
}

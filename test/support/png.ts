/**
 * Decodes the PNG files a VNC client saves (8-bit greyscale, RGB or RGBA, not interlaced) into RGB
 * pixels, so tests can look at a screenshot.
 */
import { inflateSync } from "node:zlib";

export interface RgbImage {
  width: number;
  height: number;
  /** width x height x 3 bytes. */
  rgb: Uint8Array;
}

export function decodePng(file: Buffer): RgbImage {
  if (file.readUInt32BE(0) !== 0x89504e47) throw new Error("not a PNG file");
  let at = 8;
  let width = 0;
  let height = 0;
  let colourType = 0;
  const idat: Buffer[] = [];
  while (at < file.length) {
    const len = file.readUInt32BE(at);
    const type = file.toString("latin1", at + 4, at + 8);
    const data = file.subarray(at + 8, at + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      colourType = data[9];
      if (data[8] !== 8 || data[12] !== 0) throw new Error("only 8-bit, non-interlaced PNGs are decoded");
    } else if (type === "IDAT") idat.push(data);
    at += 12 + len;
  }
  const channels = colourType === 0 ? 1 : colourType === 2 ? 3 : colourType === 6 ? 4 : 0;
  if (channels === 0) throw new Error(`PNG colour type ${colourType} is not decoded`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const cur = new Uint8Array(stride);
  const prev = new Uint8Array(stride);
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? cur[i - channels] : 0;
      const b = prev[i];
      const c = i >= channels ? prev[i - channels] : 0;
      let p = line[i];
      if (filter === 1) p += a;
      else if (filter === 2) p += b;
      else if (filter === 3) p += (a + b) >> 1;
      else if (filter === 4) {
        const pa = Math.abs(b - c);
        const pb = Math.abs(a - c);
        const pc = Math.abs(a + b - 2 * c);
        p += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      cur[i] = p & 0xff;
    }
    for (let x = 0; x < width; x++) {
      for (let k = 0; k < 3; k++) rgb[(y * width + x) * 3 + k] = cur[x * channels + (channels === 1 ? 0 : k)];
    }
    prev.set(cur);
  }
  return { width, height, rgb };
}

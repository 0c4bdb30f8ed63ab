/**
 * Child process for crash.test.ts: opens an image read-write and does random I/O forever (writes,
 * zero writes, discards, an occasional flush) until it is killed. Prints "ready" once it has
 * done some work. Usage: node crash-writer.js IMAGE SEED
 */
import { openDiskImage } from "../../src/storage/image.js";
import { Rng } from "../support/rng.js";

const [image, seedText] = process.argv.slice(2);
const rng = new Rng(Number(seedText));
const disk = openDiskImage(image);
const sectors = disk.size / 512;
const data = new Uint8Array(256 * 512);
for (let n = 1; ; n++) {
  const start = rng.int(0, sectors - 1);
  const len = Math.min(sectors - start, rng.int(1, rng.bool(0.2) ? 256 : 16)) * 512;
  const r = rng.int(0, 99);
  if (r < 80) {
    data.fill(n & 0xff, 0, len);
    disk.write(start * 512, data.subarray(0, len));
  } else if (r < 88) disk.writeZeroes(start * 512, len, rng.bool());
  else if (r < 94) disk.discard(start * 512, len);
  else disk.flush();
  if (n === 200) process.stdout.write("ready\n");
}

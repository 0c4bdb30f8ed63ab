/**
 * Host-side storage throughput: sequential 1 MiB writes then reads through the raw and qcow2
 * backends (no guest, no QEMU). The qcow2 write pass allocates every cluster, so it measures the
 * allocation path (data, refcounts, L2 updates) as a guest filling a new disk would.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createQcow2, createRaw, openDiskImage } from "./image.js";

export interface StorageBenchRow {
  format: string;
  seqWriteMBps: number;
  seqReadMBps: number;
}

export function benchStorage(dir: string, opts: { sizeMiB?: number } = {}): StorageBenchRow[] {
  const sizeMiB = opts.sizeMiB ?? 256;
  const size = sizeMiB << 20;
  const work = mkdtempSync(join(dir, "yun-storage-bench-"));
  const rows: StorageBenchRow[] = [];
  try {
    const request = new Uint8Array(1 << 20);
    for (let i = 0; i < request.length; i++) request[i] = (i * 131 + 7) & 0xff;
    for (const format of ["raw", "qcow2"] as const) {
      const path = join(work, `disk.${format}`);
      if (format === "raw") createRaw(path, size);
      else createQcow2(path, { size });
      const disk = openDiskImage(path, { format, lock: false });
      let t = process.hrtime.bigint();
      for (let off = 0; off < size; off += request.length) {
        request[0] = off >>> 20; // every request differs a little
        disk.write(off, request);
      }
      disk.flush();
      const writeS = Number(process.hrtime.bigint() - t) / 1e9;
      t = process.hrtime.bigint();
      for (let off = 0; off < size; off += request.length) disk.read(off, request);
      const readS = Number(process.hrtime.bigint() - t) / 1e9;
      disk.close();
      rows.push({ format, seqWriteMBps: round(sizeMiB / writeS), seqReadMBps: round(sizeMiB / readS) });
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

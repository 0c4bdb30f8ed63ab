/**
 * The snapshot reader: a real snapshot directory (a small machine's state, its memory file) is
 * mutated, then read as `yun run --restore` does: loadSnapshot() checks the files, and the state
 * is loaded into a machine of the same shape with restoreState(). Mutations: bytes of snapshot.json
 * or memory.bin changed, files cut short or removed, and values anywhere in the body replaced
 * (wrong types, huge or negative numbers, missing keys, short arrays) with the checksum made to
 * match, as a writer with a bug (or anyone who can write the directory) would leave it.
 *
 * Properties: a refusal is a SnapshotError or a plain Error with a sentence, never a TypeError or
 * RangeError from deep inside a device; a machine whose restore failed takes the original state
 * again and then saves exactly it (nothing half-restored sticks); a restore that succeeded leaves
 * a machine whose state saves and runs.
 */
import fc from "fast-check";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VirtMachine, type MachineState } from "../../src/vmm/virt.js";
import {
  loadSnapshot,
  selectPages,
  snapshotId,
  SnapshotError,
  SNAPSHOT_FORMAT,
  SNAPSHOT_VERSION,
  writeMemoryFile,
  writeSnapshotJson,
  type SnapshotBody,
} from "../../src/vmm/snapshot.js";
import type { VmSpec } from "../../src/vmm/spec.js";
import type { NetBackend } from "../../src/devices/netdev.js";
import { MemDisk } from "../../test/devices/virtio/blkhelp.js";
import * as A from "../../test/support/rv-asm.js";
import { FuzzFailure, leakGuard, must, timed, type Campaign, type Session } from "../campaign.js";

/** A RISC-V Image header and a loop: enough kernel for a machine that is only saved and restored. */
export function loopKernel(): Uint8Array {
  const image = new Uint8Array(4096);
  const dv = new DataView(image.buffer);
  dv.setUint32(0, A.jal(0, 64), true);
  image.set(new TextEncoder().encode("RISCV"), 0x30);
  dv.setUint32(0x38, 0x05435352, true);
  dv.setUint32(64, A.addi(5, 5, 1), true);
  dv.setUint32(68, A.jal(0, -4), true);
  return image;
}

const quietNet = (): NetBackend => ({ send() {}, attach() {}, close() {} });

type Step = number | string;
interface SnapCase {
  kind: number;
  path: Step[];
  value: unknown;
  at: number;
  byte: number;
  cut: number;
}

const weird = fc.oneof(
  fc.constantFrom(null, "", "x", -1, 0, 1, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 1e308, -1e308, 0.5, true, false),
  fc.constant([]),
  fc.constant({}),
  fc.constant([1, 2, 3]),
  fc.constant("AAAA"),
  fc.constant(undefined),
  fc.string({ maxLength: 8 }),
  fc.integer(),
);

function checksum(body: unknown): string {
  return createHash("sha256").update(JSON.stringify(body)).digest("hex");
}

/** Replaces (or deletes, for undefined) the value at a path chosen by `path`'s steps. */
function mutate(root: Record<string, unknown>, path: Step[], value: unknown): void {
  let cur: unknown = root;
  for (let i = 0; i < path.length; i++) {
    if (typeof cur !== "object" || cur === null) return;
    const keys = Object.keys(cur);
    if (keys.length === 0) return;
    const key = keys[(path[i] as number) % keys.length];
    const next = (cur as Record<string, unknown>)[key];
    const last = i === path.length - 1 || typeof next !== "object" || next === null;
    if (last) {
      if (value === undefined) delete (cur as Record<string, unknown>)[key];
      else if (Array.isArray(next) && Number.isInteger(value) && (value as number) >= 0 && (value as number) < 4)
        next.length = value as number;
      else (cur as Record<string, unknown>)[key] = value;
      return;
    }
    cur = next;
  }
}

export const snapshotCampaign: Campaign = {
  name: "snapshot",
  surface: "parser",
  testRuns: 40,
  batchRuns: 1000,
  open(): Session {
    const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "yun-fuzz-snap-"));
    const snap = join(dir, "snap");
    const spec: VmSpec = {
      name: "fuzz",
      memoryMiB: 16,
      cpus: 1,
      engine: "interp",
      append: "",
      kernel: join(dir, "kernel"),
      initrd: null,
      firmware: null,
      disks: [{ path: join(dir, "disk"), format: "raw", readOnly: false }],
      net: { kind: "user", publish: [] },
      mac: "52:54:00:12:34:56",
      cpuCap: null,
    };
    const config = {
      kernel: loopKernel(),
      firmware: null,
      firmwareKind: "none" as const,
      append: "",
      memoryMiB: 16,
      engine: "interp" as const,
      output: () => {},
      log: () => {},
      disks: [new MemDisk(64 * 1024)],
      net: quietNet(),
    };
    const source = new VirtMachine(config);
    const pristine: MachineState = source.saveState();
    const pristineJson = JSON.stringify(pristine);
    // The clock reads the host's time while the machine exists, so it is left out of comparisons.
    const withoutClock = (s: MachineState) => JSON.stringify({ ...s, clock: 0 });
    const pristineNoClock = withoutClock(pristine);
    // The snapshot as Yun writes it.
    const fresh = () => {
      rmSync(snap, { recursive: true, force: true });
      mkdirSync(snap, { recursive: true });
      const memory = writeMemoryFile(join(snap, "memory.bin"), source.bus.ram, selectPages(source.bus.ram, null));
      const body: SnapshotBody = {
        id: snapshotId(),
        createdAt: new Date(0).toISOString(),
        spec,
        state: JSON.parse(pristineJson) as MachineState,
        parent: null,
        memory,
        diskCopies: [null],
      };
      writeSnapshotJson(snap, body);
      return body;
    };
    fresh();
    const jsonBytes = readFileSync(join(snap, "snapshot.json"));
    const memBytes = readFileSync(join(snap, "memory.bin"));
    const target = new VirtMachine({ ...config, disks: [new MemDisk(64 * 1024)], net: quietNet() });

    const property = fc.property(
      fc.record({
        kind: fc.nat(9),
        path: fc.array(fc.nat(64), { minLength: 1, maxLength: 6 }),
        value: weird,
        at: fc.nat(0x7fff_ffff),
        byte: fc.nat(255),
        cut: fc.nat(0x7fff_ffff),
      }),
      timed((c: SnapCase) => {
        writeFileSync(join(snap, "snapshot.json"), jsonBytes);
        writeFileSync(join(snap, "memory.bin"), memBytes);
        if (c.kind <= 5) {
          // A value in the body replaced, the checksum made to match.
          const doc = JSON.parse(jsonBytes.toString("utf8")) as { body: Record<string, unknown> };
          const root = c.kind <= 3 ? (doc.body.state as Record<string, unknown>) : doc.body;
          mutate(root, c.path, c.value);
          writeFileSync(
            join(snap, "snapshot.json"),
            JSON.stringify({
              format: SNAPSHOT_FORMAT,
              version: SNAPSHOT_VERSION,
              checksum: checksum(doc.body),
              body: doc.body,
            }),
          );
        } else if (c.kind === 6) {
          const b = Buffer.from(jsonBytes);
          b[c.at % b.length] = c.byte;
          writeFileSync(join(snap, "snapshot.json"), b);
        } else if (c.kind === 7) {
          const b = Buffer.from(memBytes);
          b[c.at % Math.min(b.length, 4096)] = c.byte;
          writeFileSync(join(snap, "memory.bin"), b);
        } else if (c.kind === 8) {
          const which = c.at & 1 ? "memory.bin" : "snapshot.json";
          const full = which === "memory.bin" ? memBytes : jsonBytes;
          writeFileSync(join(snap, which), full.subarray(0, c.cut % full.length));
        } else {
          unlinkSync(join(snap, c.at & 1 ? "memory.bin" : "snapshot.json"));
        }

        let body: SnapshotBody;
        try {
          body = loadSnapshot(snap).body;
        } catch (e) {
          must(e instanceof SnapshotError && e.message.length > 0, `loadSnapshot threw ${String(e)}`);
          return;
        }
        let restored = true;
        try {
          target.restoreState(body.state);
        } catch (e) {
          restored = false;
          const ok =
            e instanceof Error && (e.constructor === Error || e instanceof SnapshotError) && e.message.length > 0;
          if (!ok)
            throw new FuzzFailure(`restoreState threw ${(e as Error).constructor?.name}: ${(e as Error).message}`);
        }
        if (restored) {
          JSON.stringify(target.saveState());
        }
        // Whatever happened, the original state loads again and saves exactly.
        target.restoreState(JSON.parse(pristineJson) as MachineState);
        const after = withoutClock(target.saveState());
        if (after !== pristineNoClock) {
          let i = 0;
          while (after[i] === pristineNoClock[i]) i++;
          throw new FuzzFailure(
            `the machine kept part of a bad snapshot: ...${after.slice(Math.max(0, i - 80), i + 40)} instead of ...${pristineNoClock.slice(Math.max(0, i - 80), i + 40)}`,
          );
        }
      }),
    );
    return {
      property,
      check: leakGuard("snapshot"),
      close: () => {
        target.close();
        source.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

/**
 * Live migration between two Yun processes over TCP, by pre-copy:
 *   1. the source sends the VM's spec; the destination checks it can build that machine;
 *   2. the source turns on the software MMU's dirty-page log and sends every page in use while the
 *      guest runs on, then, round after round, the pages written during the previous round, until
 *      a round is small (or rounds stop shrinking);
 *   3. stop-and-copy: the source pauses the guest, sends the last dirty pages and the machine state,
 *      and lets go of its disks and network; the destination opens them, loads the machine and
 *      resumes it, and answers. The downtime is the time from the pause to that answer.
 * If anything fails before the answer, the source takes its machine back and goes on running; the
 * destination exits. Disks are shared (same host, or a shared filesystem); a throwaway overlay
 * changes owner with the VM.
 *
 * Frames: type (u8), payload length (u32 LE), payload. JSON frames for control, PAGES frames as
 * count (u32), page numbers (u32 each), then the pages.
 */
import { allocateRam, ramView } from "../cpu/bus.js";
import { connect, createServer, type Server, type Socket } from "node:net";
import { renameSync } from "node:fs";
import { existsSync } from "node:fs";
import type { MachineState } from "./virt.js";
import { checkSpec, type VmSpec } from "./spec.js";
import { selectPages } from "./snapshot.js";
import { adoptOwnedDir } from "./overlay.js";
import { VmMonitor, StateError, type MonitorOptions } from "./monitor.js";

const PAGE = 4096;
const MIGRATION_VERSION = 1;
const T_HELLO = 1;
const T_ACCEPT = 2;
const T_PAGES = 3;
const T_STATE = 4;
const T_DONE = 5;
/** After each pre-copy round: the destination answers SYNCED once it has stored every page sent. */
const T_SYNC = 6;
const T_SYNCED = 7;
/** Pages per PAGES frame (1 MiB of data). */
const PAGES_PER_FRAME = 256;
/** Stop and copy once a round has at most this many dirty pages... */
const SMALL_ROUND_PAGES = 512;
/** ...or after this many rounds, or when a round did not shrink the dirty set for 4 rounds. */
const MAX_ROUNDS = 30;
const CONNECT_TIMEOUT_MS = 5000;
/** How long the source waits for the destination's final answer. */
const DONE_TIMEOUT_MS = 30_000;
/** The largest frame either side accepts (a PAGES frame and its index, with room to spare). */
const MAX_FRAME = 8 * 1024 * 1024;

export class MigrationError extends Error {}

export interface MigrationResult {
  totalMs: number;
  downtimeMs: number;
  rounds: number;
  bytes: number;
  pages: number;
}

/** Reads frames from a socket. */
class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiting: (() => void) | null = null;
  private ended: Error | null = null;

  constructor(socket: Socket) {
    socket.on("data", (b: Buffer) => {
      this.chunks.push(b);
      this.have += b.length;
      this.waiting?.();
    });
    const end = (e?: Error): void => {
      this.ended ??= e ?? new MigrationError("the other side closed the connection");
      this.waiting?.();
    };
    socket.on("end", () => end());
    socket.on("close", () => end());
    socket.on("error", (e) => end(new MigrationError(`connection failed: ${e.message}`)));
  }

  /** Removes and returns the first n buffered bytes (n <= have), copying only what spans chunks. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) {
      this.chunks[0] = first.subarray(n);
      if (this.chunks[0].length === 0) this.chunks.shift();
      this.have -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - got);
      c.copy(out, got, 0, k);
      got += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.have -= n;
    return out;
  }

  /** The next frame's payload length, once its 5-byte header is buffered. */
  private peekLength(): number {
    if (this.chunks[0].length >= 5) return this.chunks[0].readUInt32LE(1);
    const head = Buffer.alloc(5);
    let got = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, 5 - got);
      c.copy(head, got, 0, k);
      got += k;
      if (got === 5) break;
    }
    return head.readUInt32LE(1);
  }

  async next(timeoutMs = 0): Promise<{ type: number; payload: Buffer }> {
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : Infinity;
    for (;;) {
      if (this.have >= 5) {
        const len = this.peekLength();
        if (len > MAX_FRAME) throw new MigrationError(`the other side sent a frame of ${len} bytes`);
        if (this.have >= 5 + len) {
          const frame = this.take(5 + len);
          return { type: frame[0], payload: frame.subarray(5) };
        }
      }
      if (this.ended) throw this.ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new MigrationError("the other side did not answer in time");
      await new Promise<void>((resolve) => {
        const timer = Number.isFinite(left) ? setTimeout(resolve, left) : null;
        this.waiting = () => {
          if (timer) clearTimeout(timer);
          this.waiting = null;
          resolve();
        };
      });
    }
  }

  async json<T>(type: number, timeoutMs = 0): Promise<T> {
    const f = await this.next(timeoutMs);
    if (f.type !== type) throw new MigrationError(`protocol error: frame ${f.type} where ${type} was expected`);
    try {
      return JSON.parse(f.payload.toString("utf8")) as T;
    } catch {
      throw new MigrationError("protocol error: a control frame is not JSON");
    }
  }
}

function frameHeader(type: number, len: number): Buffer {
  const h = Buffer.alloc(5);
  h[0] = type;
  h.writeUInt32LE(len, 1);
  return h;
}

/** Writes a frame, waiting for the socket to drain when its buffer is full (the guest runs meanwhile). */
async function send(socket: Socket, type: number, ...parts: Uint8Array[]): Promise<void> {
  const len = parts.reduce((n, p) => n + p.length, 0);
  let ok = socket.write(frameHeader(type, len));
  for (const p of parts) ok = socket.write(p);
  if (!ok) {
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        socket.off("close", onClose);
        resolve();
      };
      const onClose = (): void => {
        socket.off("drain", onDrain);
        reject(new MigrationError("the destination closed the connection"));
      };
      socket.once("drain", onDrain);
      socket.once("close", onClose);
    });
  }
}

const sendJson = (socket: Socket, type: number, value: unknown): Promise<void> =>
  send(socket, type, Buffer.from(JSON.stringify(value)));

/** Sends `pages` of `ram` in PAGES frames; returns the bytes sent. */
async function sendPages(socket: Socket, ram: Uint8Array, pages: Uint32Array): Promise<number> {
  let bytes = 0;
  for (let i = 0; i < pages.length; i += PAGES_PER_FRAME) {
    const batch = pages.subarray(i, Math.min(pages.length, i + PAGES_PER_FRAME));
    const head = Buffer.alloc(4 + 4 * batch.length);
    head.writeUInt32LE(batch.length, 0);
    for (let j = 0; j < batch.length; j++) head.writeUInt32LE(batch[j], 4 + 4 * j);
    // Copies: the guest may write these pages before the socket sends them; the next round resends.
    const data = Buffer.alloc(batch.length * PAGE);
    for (let j = 0; j < batch.length; j++) data.set(ram.subarray(batch[j] * PAGE, (batch[j] + 1) * PAGE), j * PAGE);
    await send(socket, T_PAGES, head, data);
    bytes += head.length + data.length + 5;
  }
  return bytes;
}

function connectTo(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new MigrationError(`no answer from ${host}:${port} within ${CONNECT_TIMEOUT_MS / 1000} s`));
    }, CONNECT_TIMEOUT_MS);
    s.once("connect", () => {
      clearTimeout(timer);
      s.setNoDelay(true);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      reject(new MigrationError(`cannot reach ${host}:${port}: ${e.message}`));
    });
  });
}

/**
 * Migrates the monitor's VM to the Yun process waiting at host:port (`yun run --incoming`). On
 * success the source has handed the VM off (its run() ends); on failure it runs on here and the
 * error says why.
 */
export async function migrateTo(
  monitor: VmMonitor,
  host: string,
  port: number,
  cancel?: AbortSignal,
): Promise<MigrationResult> {
  const t0 = performance.now();
  monitor.setMigrating(true);
  let socket: Socket | null = null;
  let machine = monitor.machine;
  let released = false;
  let saved: MachineState | null = null;
  // Cancelling cuts the connection, which fails whatever the migration waits for. Once the state is
  // on its way the destination's answer decides, and a cancel comes too late.
  const onCancel = (): void => {
    if (!released) socket?.destroy();
  };
  cancel?.addEventListener("abort", onCancel);
  try {
    socket = await connectTo(host, port);
    if (cancel?.aborted) throw new MigrationError("cancelled");
    const reader = new FrameReader(socket);
    await sendJson(socket, T_HELLO, { version: MIGRATION_VERSION, spec: monitor.spec, sourcePid: process.pid });
    const accept = await reader.json<{ ok: boolean; error?: string }>(T_ACCEPT, CONNECT_TIMEOUT_MS);
    if (!accept.ok) throw new MigrationError(`the destination refused: ${accept.error ?? "no reason given"}`);

    machine = monitor.machine;
    const ram = machine.bus.ram;
    machine.takeDirtyLog();
    let bytes = await sendPages(socket, ram, selectPages(ram, null));
    let pagesSent = 0;
    const sync = async (): Promise<void> => {
      await sendJson(socket!, T_SYNC, {});
      await reader.json(T_SYNCED, DONE_TIMEOUT_MS);
    };
    await sync();
    let rounds = 1;
    let best = Infinity;
    let stale = 0;
    let pending: Uint8Array;
    for (;;) {
      pending = machine.takeDirtyLog()!;
      const pages = selectPages(ram, pending);
      if (pages.length <= SMALL_ROUND_PAGES || rounds >= MAX_ROUNDS || stale >= 4) break;
      if (pages.length < best) {
        best = pages.length;
        stale = 0;
      } else {
        stale++;
      }
      bytes += await sendPages(socket, ram, pages);
      await sync();
      pagesSent += pages.length;
      rounds++;
    }

    // Stop and copy: the pages dirtied since the last round, those of the round not sent, the state.
    const tPause = performance.now();
    machine.pause();
    machine.flushDisks();
    const last = machine.takeDirtyLog()!;
    machine.stopDirtyLog();
    for (let i = 0; i < last.length; i++) last[i] |= pending[i];
    const finalPages = selectPages(ram, last);
    bytes += await sendPages(socket, ram, finalPages);
    pagesSent += finalPages.length;
    saved = machine.saveState();
    const ownedDir = monitor.ownedDir;
    machine.close();
    released = true;
    await sendJson(socket, T_STATE, { state: saved, ownedDir });
    const done = await reader.json<{ ok: boolean; error?: string }>(T_DONE, DONE_TIMEOUT_MS);
    if (!done.ok) throw new MigrationError(`the destination failed: ${done.error ?? "no reason given"}`);
    const downtimeMs = performance.now() - tPause;
    monitor.releaseOwnedDir();
    monitor.handOff();
    socket.end();
    return {
      totalMs: Math.round(performance.now() - t0),
      downtimeMs: Math.round(downtimeMs * 10) / 10,
      rounds,
      bytes,
      pages: pagesSent,
    };
  } catch (e) {
    socket?.destroy();
    if (cancel?.aborted && !released) e = new MigrationError("migration cancelled; the VM runs on here");
    if (released && saved) {
      // The old machine is closed and stopped; its RAM buffer moves to the new one.
      await monitor.takeBack(machine.bus.ramStorage, saved);
    } else {
      machine.stopDirtyLog();
      if (machine.isPaused) machine.resume();
    }
    monitor.setMigrating(false);
    if (e instanceof MigrationError || e instanceof StateError) throw e;
    throw new MigrationError((e as Error).message);
  } finally {
    cancel?.removeEventListener("abort", onCancel);
  }
}

/** What the destination needs to become the VM. */
export interface IncomingOptions extends MonitorOptions {
  /** A name other than the source's, or undefined. */
  name?: string;
  /** Told when the connection from the source arrives and when the VM is about to start. */
  onStage?: (stage: "connected" | "received", detail: string) => void;
}

/** Listens on host:port; resolves once listening, with the server and the address. */
export function listenForMigration(host: string, port: number): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", (e) => reject(new MigrationError(`cannot listen on ${host}:${port}: ${e.message}`)));
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({ server, port: typeof addr === "object" && addr ? addr.port : port });
    });
  });
}

/**
 * Receives one VM on `server` (the first connection) and builds it here. Resolves with the
 * running-ready monitor; rejects if the migration failed (the source then runs on).
 */
export async function receiveMigration(
  server: Server,
  opts: IncomingOptions,
): Promise<{ monitor: VmMonitor; notes: string[]; sourcePid: number }> {
  const socket = await new Promise<Socket>((resolve) => server.once("connection", resolve));
  server.close();
  socket.setNoDelay(true);
  const reader = new FrameReader(socket);
  const hello = await reader.json<{ version: number; spec: VmSpec; sourcePid: number }>(T_HELLO, CONNECT_TIMEOUT_MS);
  const refuse = async (why: string): Promise<never> => {
    await sendJson(socket, T_ACCEPT, { ok: false, error: why }).catch(() => {});
    socket.end();
    throw new MigrationError(`refused the incoming VM: ${why}`);
  };
  if (hello.version !== MIGRATION_VERSION) {
    await refuse(`protocol version ${hello.version}, this Yun speaks ${MIGRATION_VERSION}`);
  }
  const bad = checkSpec(hello.spec);
  if (bad) await refuse(bad);
  const spec: VmSpec = { ...hello.spec, name: opts.name ?? hello.spec.name };
  for (const f of [spec.kernel, spec.initrd, spec.firmware]) {
    if (f !== null && !existsSync(f)) await refuse(`${f} does not exist here`);
  }
  opts.onStage?.("connected", `from ${socket.remoteAddress}:${socket.remotePort}`);
  // The machine is built now, over the RAM the pages arrive in; only its disks and network wait.
  // Pages land straight in the machine's RAM, which an SMP machine's hart threads share.
  const ramBytes = spec.memoryMiB * 1024 * 1024;
  const ramStorage = allocateRam(ramBytes, spec.cpus);
  const ram = ramView(ramStorage, ramBytes);
  const totalPages = ram.length / PAGE;
  let incoming: ReturnType<typeof VmMonitor.prepareIncoming>;
  try {
    incoming = VmMonitor.prepareIncoming(spec, { ...opts }, ramStorage);
  } catch (e) {
    return await refuse((e as Error).message);
  }
  await sendJson(socket, T_ACCEPT, { ok: true });

  let state: MachineState | null = null;
  let ownedDir: string | null = null;
  try {
    for (;;) {
      const f = await reader.next();
      if (f.type === T_PAGES) {
        const count = f.payload.readUInt32LE(0);
        if (f.payload.length !== 4 + count * 4 + count * PAGE)
          throw new MigrationError("protocol error: bad PAGES frame");
        const data = 4 + count * 4;
        for (let i = 0; i < count; i++) {
          const p = f.payload.readUInt32LE(4 + 4 * i);
          if (p >= totalPages) throw new MigrationError(`protocol error: page ${p} beyond RAM`);
          ram.set(f.payload.subarray(data + i * PAGE, data + (i + 1) * PAGE), p * PAGE);
        }
      } else if (f.type === T_SYNC) {
        await sendJson(socket, T_SYNCED, {});
      } else if (f.type === T_STATE) {
        const msg = JSON.parse(f.payload.toString("utf8")) as { state: MachineState; ownedDir: string | null };
        state = msg.state;
        ownedDir = msg.ownedDir;
        break;
      } else {
        throw new MigrationError(`protocol error: unexpected frame ${f.type}`);
      }
    }
  } catch (e) {
    incoming.abandon();
    throw e;
  }

  // The throwaway disks become this process's: renamed into its own directory, paths rewritten.
  let mine: string | null = opts.ownedDir;
  try {
    let final = spec;
    if (ownedDir !== null) {
      const adopted = adoptOwnedDir(opts.runDir, ownedDir);
      mine = adopted;
      final = {
        ...spec,
        disks: spec.disks.map((d) =>
          d.path.startsWith(ownedDir + "/") ? { ...d, path: adopted + d.path.slice(ownedDir.length) } : d,
        ),
      };
      incoming.monitor.adoptOwnedDir(adopted);
    }
    opts.onStage?.("received", spec.name);
    const notes = await incoming.complete(final, state);
    await sendJson(socket, T_DONE, { ok: true });
    socket.end();
    return { monitor: incoming.monitor, notes, sourcePid: hello.sourcePid };
  } catch (e) {
    incoming.abandon();
    if (ownedDir !== null && mine !== null && mine !== opts.ownedDir) {
      try {
        renameSync(mine, ownedDir);
      } catch {
        // left where it is; the source reports its disks missing
      }
    }
    await sendJson(socket, T_DONE, { ok: false, error: (e as Error).message }).catch(() => {});
    socket.end();
    throw e;
  }
}

/**
 * Live migration between two Yun processes over TCP (optionally TLS), by pre-copy:
 *   0. handshake: the destination sends a fresh nonce; the source answers with its HELLO (what the
 *      guest needs: memory, vCPUs, disks' geometry, devices) under an HMAC keyed by the
 *      destination's one-time token; the destination checks the proof, then checks that the VM fits
 *      the machine its own command line describes, and accepts with a proof of its own;
 *   1. the source turns on the software MMU's dirty-page log and sends every page in use while the
 *      guest runs on, then, round after round, the pages written during the previous round, until
 *      a round is small (or rounds stop shrinking);
 *   2. stop-and-copy: the source pauses the guest, sends the last dirty pages and the machine state,
 *      and lets go of its disks and network; the destination opens its own, loads the machine and
 *      resumes it, and answers. The downtime is the time from the pause to that answer.
 * If anything fails before the answer, the source takes its machine back and goes on running; the
 * destination exits. The destination never opens a path the source names: its boot files, disks and
 * network come from its own command line; only a throwaway overlay moves with the VM, and only from
 * a directory of the source's that this process's user owns in this process's own run directory.
 *
 * A connection that fails the handshake (no proof, a wrong one, silence past the timeout, garbage)
 * gets an ERROR frame and is closed; the destination goes on waiting for the real source. Once one
 * has proved itself, every other connection is refused at once.
 *
 * Frames: type (u8), payload length (u32 LE), payload. JSON frames for control; HELLO is the 32-byte
 * HMAC, then JSON; PAGES frames are count (u32), page numbers (u32 each), then the pages.
 */
import { allocateRam, ramView } from "../cpu/bus.js";
import { connect, createServer, type Server, type Socket } from "node:net";
import * as tls from "node:tls";
import { createHash, createHmac, randomBytes, timingSafeEqual, X509Certificate } from "node:crypto";
import { lstatSync, readFileSync, renameSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, resolve as resolvePath } from "node:path";
import type { MachineState } from "./virt.js";
import { checkSpec, type DiskGeometry, type DiskRef, type VmSpec } from "./spec.js";
import { adoptOwnedDir } from "./overlay.js";
import { selectPages } from "./snapshot.js";
import { VmMonitor, StateError, type MonitorOptions } from "./monitor.js";
import { parseMac } from "../net/ethernet.js";
import { openDiskImage, type DiskFormat } from "../storage/image.js";

const PAGE = 4096;
const MIGRATION_VERSION = 2;
const T_HELLO = 1;
const T_ACCEPT = 2;
const T_PAGES = 3;
const T_STATE = 4;
const T_DONE = 5;
/** After each pre-copy round: the destination answers SYNCED once it has stored every page sent. */
const T_SYNC = 6;
const T_SYNCED = 7;
/** The destination's first frame: the protocol version and a nonce the HELLO's proof covers. */
const T_CHALLENGE = 8;
/** The destination's refusal, in place of CHALLENGE or ACCEPT: `{ error }`. */
const T_ERROR = 9;
/** Pages per PAGES frame (1 MiB of data). */
const PAGES_PER_FRAME = 256;
/** Stop and copy once a round has at most this many dirty pages... */
const SMALL_ROUND_PAGES = 512;
/** ...or after this many rounds, or when a round did not shrink the dirty set for 4 rounds. */
const MAX_ROUNDS = 30;
const CONNECT_TIMEOUT_MS = 5000;
/** How long a connection may take to prove itself before the destination closes it. */
const HANDSHAKE_TIMEOUT_MS = 5000;
/** How long the source waits for the destination's final answer. */
const DONE_TIMEOUT_MS = 30_000;
/** The destination's patience with an authenticated source that goes silent mid-migration. */
const IDLE_TIMEOUT_MS = 60_000;
/** The largest frame either side accepts (a PAGES frame and its index, with room to spare). */
const MAX_FRAME = 8 * 1024 * 1024;
/** The largest frame before the handshake is done (a HELLO is a few hundred bytes). */
const MAX_HANDSHAKE_FRAME = 64 * 1024;
/** Connections allowed to be in their handshake at once; more are refused at once. */
const MAX_PENDING_HANDSHAKES = 16;
const NONCE_BYTES = 32;
const MAC_BYTES = 32;
/** Tokens are at least 128 bits: 22 base64url characters (newMigrationToken makes 256). */
const TOKEN_RE = /^[\x21-\x7e]{22,512}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export class MigrationError extends Error {}

export interface MigrationResult {
  totalMs: number;
  downtimeMs: number;
  rounds: number;
  bytes: number;
  pages: number;
}

/** A fresh one-time migration token (256 random bits, base64url). */
export function newMigrationToken(): string {
  return randomBytes(32).toString("base64url");
}

/** Why `token` cannot be a migration token, or null. */
export function checkMigrationToken(token: string): string | null {
  return TOKEN_RE.test(token)
    ? null
    : "a migration token is 22 to 512 printable characters without spaces (at least 128 random bits)";
}

/** The source's proof: the HMAC of the destination's nonce and the HELLO's exact bytes. */
function helloProof(token: string, nonce: Uint8Array, body: Uint8Array): Buffer {
  return createHmac("sha256", token).update("yun migration hello\0").update(nonce).update(body).digest();
}

/** The destination's proof that it holds the token too, over both nonces and the HELLO. */
function acceptProof(token: string, nonce: Uint8Array, body: Uint8Array): string {
  const hello = createHash("sha256").update(body).digest();
  return createHmac("sha256", token).update("yun migration accept\0").update(nonce).update(hello).digest("hex");
}

/** A message from the other side, made safe to print (one line, printable, bounded). */
function peerText(v: unknown): string {
  const text = typeof v === "string" && v !== "" ? v : "no reason given";
  return text.replace(/[^\x20-\x7e]/g, "?").slice(0, 300);
}

/** The other side said no, with its reason. */
class RefusedError extends MigrationError {}

function parseObject<T>(payload: Buffer): T | null {
  try {
    const v: unknown = JSON.parse(payload.toString("utf8"));
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as T) : null;
  } catch {
    return null;
  }
}

/** Reads frames from a socket. */
class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiting: (() => void) | null = null;
  private ended: Error | null = null;

  /**
   * Reading stops while this much is buffered, so a peer cannot grow the process: twice the largest
   * frame taken (small until the peer has proved itself).
   */
  constructor(
    private readonly socket: Socket,
    private highWater = 2 * (MAX_FRAME + 5),
  ) {
    socket.on("data", (b: Buffer) => {
      this.chunks.push(b);
      this.have += b.length;
      if (this.have >= this.highWater) socket.pause();
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

  /** Raises the buffer limit (the peer proved itself) and reads on. */
  raiseHighWater(bytes: number): void {
    this.highWater = bytes;
    this.readOnIfRoom();
  }

  private readOnIfRoom(): void {
    if (this.have < this.highWater && this.socket.isPaused()) this.socket.resume();
  }

  /** Removes and returns the first n buffered bytes (n <= have), copying only what spans chunks. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) {
      this.chunks[0] = first.subarray(n);
      if (this.chunks[0].length === 0) this.chunks.shift();
      this.have -= n;
      this.readOnIfRoom();
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
    this.readOnIfRoom();
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

  /** The next frame; fails past `timeoutMs` (0: no limit) or on a frame longer than `maxLength`. */
  async next(timeoutMs = 0, maxLength = MAX_FRAME): Promise<{ type: number; payload: Buffer }> {
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : Infinity;
    for (;;) {
      if (this.have >= 5) {
        const len = this.peekLength();
        if (len > maxLength) throw new MigrationError(`protocol error: the other side sent a frame of ${len} bytes`);
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

  /** The next frame, a JSON object of type `type`; an ERROR frame becomes a RefusedError. */
  async json<T>(type: number, timeoutMs = 0, maxLength = MAX_FRAME): Promise<T> {
    const f = await this.next(timeoutMs, maxLength);
    if (f.type === T_ERROR && type !== T_ERROR) {
      throw new RefusedError(peerText(parseObject<{ error?: unknown }>(f.payload)?.error));
    }
    if (f.type !== type) throw new MigrationError(`protocol error: frame ${f.type} where ${type} was expected`);
    const v = parseObject<T>(f.payload);
    if (v === null) throw new MigrationError("protocol error: a control frame is not a JSON object");
    return v;
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

/** Where and how the source reaches its destination. */
export interface MigrationTarget {
  host: string;
  port: number;
  /** The destination's one-time token (printed by yun run --incoming, or its token file). */
  token: string;
  /** TLS: trust this CA (PEM) and check the host name, or pin the certificate's SHA-256 fingerprint. */
  tls?: { ca?: string; fingerprint?: string };
}

/** "AB:CD:..." or "abcd..." → 64 lowercase hex digits, or null. */
export function normalizeFingerprint(text: string): string | null {
  const hex = text.replace(/:/g, "").toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : null;
}

function connectTo(target: MigrationTarget): Promise<Socket> {
  const { host, port } = target;
  return new Promise((resolve, reject) => {
    const pin = target.tls?.fingerprint !== undefined ? normalizeFingerprint(target.tls.fingerprint) : null;
    if (target.tls?.fingerprint !== undefined && pin === null) {
      reject(new MigrationError("a TLS fingerprint is the certificate's SHA-256: 64 hex digits, colons allowed"));
      return;
    }
    const s: Socket = target.tls
      ? tls.connect({
          host,
          port,
          ca: target.tls.ca,
          rejectUnauthorized: pin === null,
          minVersion: "TLSv1.2",
        })
      : connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new MigrationError(`no answer from ${host}:${port} within ${CONNECT_TIMEOUT_MS / 1000} s`));
    }, CONNECT_TIMEOUT_MS);
    s.once(target.tls ? "secureConnect" : "connect", () => {
      clearTimeout(timer);
      if (pin !== null) {
        const raw = (s as tls.TLSSocket).getPeerCertificate().raw;
        const got = raw ? new X509Certificate(raw).fingerprint256.replace(/:/g, "").toLowerCase() : "none";
        if (got !== pin) {
          s.destroy();
          reject(new MigrationError(`the TLS certificate of ${host}:${port} (SHA-256 ${got}) is not the pinned one`));
          return;
        }
      }
      s.setNoDelay(true);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      reject(new MigrationError(`cannot reach ${host}:${port}${target.tls ? " over TLS" : ""}: ${e.message}`));
    });
  });
}

/**
 * The handshake, source side: answers the destination's challenge with the HELLO and its proof,
 * and checks the destination's proof in the ACCEPT before a page leaves.
 */
async function offer(socket: Socket, reader: FrameReader, monitor: VmMonitor, target: MigrationTarget): Promise<void> {
  let challenge: { version?: unknown; nonce?: unknown };
  try {
    challenge = await reader.json(T_CHALLENGE, CONNECT_TIMEOUT_MS, MAX_HANDSHAKE_FRAME);
  } catch (e) {
    if (e instanceof RefusedError || target.tls) throw e;
    throw new MigrationError(
      `${(e as Error).message} before the handshake (if the destination uses TLS, give --tls-ca or --tls-fingerprint)`,
    );
  }
  if (challenge.version !== MIGRATION_VERSION) {
    throw new MigrationError(
      `the destination speaks migration protocol ${peerText(String(challenge.version))}, this Yun ${MIGRATION_VERSION}`,
    );
  }
  const nonce = typeof challenge.nonce === "string" ? Buffer.from(challenge.nonce, "base64") : Buffer.alloc(0);
  if (nonce.length !== NONCE_BYTES)
    throw new MigrationError("protocol error: the destination's challenge has no nonce");
  const hello: Hello = {
    version: MIGRATION_VERSION,
    spec: monitor.spec,
    disks: monitor.machine.diskGeometry(),
    ownedDir: monitor.ownedDir,
    sourcePid: process.pid,
    nonce: randomBytes(NONCE_BYTES).toString("base64"),
  };
  const body = Buffer.from(JSON.stringify(hello));
  await send(socket, T_HELLO, helloProof(target.token, nonce, body), body);
  const accept = await reader.json<{ ok?: unknown; error?: unknown; proof?: unknown }>(
    T_ACCEPT,
    DONE_TIMEOUT_MS,
    MAX_HANDSHAKE_FRAME,
  );
  if (accept.ok !== true) throw new RefusedError(peerText(accept.error));
  const want = Buffer.from(acceptProof(target.token, nonce, body));
  const got = Buffer.from(typeof accept.proof === "string" ? accept.proof : "");
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new MigrationError(
      `the destination at ${target.host}:${target.port} did not prove it holds the token (is another program listening there?)`,
    );
  }
}

/**
 * Migrates the monitor's VM to the Yun process waiting at the target (`yun run --incoming`). On
 * success the source has handed the VM off (its run() ends); on failure it runs on here and the
 * error says why.
 */
export async function migrateTo(
  monitor: VmMonitor,
  target: MigrationTarget,
  cancel?: AbortSignal,
): Promise<MigrationResult> {
  const t0 = performance.now();
  const tokenProblem = checkMigrationToken(target.token);
  if (tokenProblem) throw new MigrationError(tokenProblem);
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
    socket = await connectTo(target);
    if (cancel?.aborted) throw new MigrationError("cancelled");
    const reader = new FrameReader(socket);
    await offer(socket, reader, monitor, target);

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
    machine.close();
    released = true;
    await sendJson(socket, T_STATE, { state: saved });
    const done = await reader.json<{ ok?: unknown; error?: unknown }>(T_DONE, DONE_TIMEOUT_MS);
    if (done.ok !== true) throw new MigrationError(`the destination failed: ${peerText(done.error)}`);
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
    else if (e instanceof RefusedError) e = new MigrationError(`the destination refused: ${e.message}`);
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

// ------------------------------------------------------------------------------- the destination

/** What the source offers: the guest's shape, its disks' geometry, its throwaway directory. */
interface Hello {
  version: number;
  spec: VmSpec;
  disks: DiskGeometry[];
  /** The source's directory of throwaway disks, or null. */
  ownedDir: string | null;
  sourcePid: number;
  /** The source's own nonce: the destination's proof covers it, so it is fresh. */
  nonce: string;
}

/**
 * The machine this destination is willing to become, from its own command line: the VM arriving
 * must fit it (memory, vCPUs, firmware, disks, network card); its boot files, disks and network
 * are the ones used, never paths the source names. Its `disks` (--root, --disk) are matched in
 * order to the VM's disks that are not throwaway overlays; a throwaway overlay moves with the VM.
 */
export type IncomingMachine = Omit<VmSpec, "name" | "mac"> & {
  /** The VM's name here; default: the source's. */
  name?: string;
  /** The network card's MAC address; default: the source's (the guest knows it). */
  mac?: string;
};

/** What the destination needs to become the VM. */
export interface IncomingOptions extends MonitorOptions {
  /** The one-time token the source must prove it holds. */
  token: string;
  machine: IncomingMachine;
  /** Told when the source has proved itself, when a connection is refused, and when the VM is about to start. */
  onStage?: (stage: "connected" | "refused" | "received", detail: string) => void;
}

/** A destination's listening socket, as receiveMigration takes it. */
export interface MigrationListener {
  server: Server;
  /** The port listened on (the one picked, when 0 was asked for). */
  port: number;
  /** Connections are TLS (the handshake starts once TLS is up). */
  tls: boolean;
  /** How long a connection may take to prove it holds the token. */
  handshakeTimeoutMs: number;
}

/** Listens on host:port (over TLS with `tls`); resolves once listening. */
export function listenForMigration(
  host: string,
  port: number,
  opts: { tls?: { cert: string | Buffer; key: string | Buffer }; handshakeTimeoutMs?: number } = {},
): Promise<MigrationListener> {
  const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    let server: Server;
    try {
      server = opts.tls
        ? tls.createServer({
            cert: opts.tls.cert,
            key: opts.tls.key,
            handshakeTimeout: handshakeTimeoutMs,
            minVersion: "TLSv1.2",
          })
        : createServer();
    } catch (e) {
      reject(new MigrationError(`cannot use the TLS certificate and key: ${(e as Error).message}`));
      return;
    }
    server.once("error", (e) => reject(new MigrationError(`cannot listen on ${host}:${port}: ${e.message}`)));
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({
        server,
        port: typeof addr === "object" && addr ? addr.port : port,
        tls: opts.tls !== undefined,
        handshakeTimeoutMs,
      });
    });
  });
}

/** The HELLO's body checked as data; throws MigrationError. */
function parseHello(body: Buffer): Hello {
  const h = parseObject<Partial<Hello>>(body);
  if (h === null) throw new MigrationError("protocol error: the HELLO is not a JSON object");
  if (h.version !== MIGRATION_VERSION) {
    throw new MigrationError(
      `the source speaks migration protocol ${peerText(String(h.version))}, this Yun ${MIGRATION_VERSION}`,
    );
  }
  const bad = checkSpec(h.spec);
  if (bad) throw new MigrationError(`the VM's description: ${bad}`);
  const spec = h.spec!;
  if (
    !Array.isArray(h.disks) ||
    h.disks.length !== spec.disks.length ||
    !h.disks.every(
      (g: Partial<DiskGeometry> | null) =>
        typeof g === "object" &&
        g !== null &&
        Number.isSafeInteger(g.size) &&
        g.size! > 0 &&
        g.size! % 512 === 0 &&
        typeof g.readOnly === "boolean" &&
        typeof g.serial === "string" &&
        Buffer.byteLength(g.serial) <= 20,
    ) ||
    !spec.disks.every((d) => d.format === "raw" || d.format === "qcow2")
  ) {
    throw new MigrationError("protocol error: the VM's disks are badly described");
  }
  if (h.ownedDir !== null && typeof h.ownedDir !== "string") throw new MigrationError("protocol error: bad ownedDir");
  if (!Number.isSafeInteger(h.sourcePid) || h.sourcePid! <= 0)
    throw new MigrationError("protocol error: bad sourcePid");
  return h as Hello;
}

/**
 * Checks that `file` is a throwaway disk this destination may take over: in a directory `dir` of
 * the source's, directly in this process's own run directory, both owned by this process's user,
 * neither a symbolic link, the file with no other hard link. Throws MigrationError.
 */
function checkThrowaway(runDir: string, dir: string, file: string): void {
  const home = resolvePath(runDir);
  const bad = (why: string): MigrationError => new MigrationError(`the VM's throwaway disk ${peerText(file)} ${why}`);
  if (
    !isAbsolute(dir) ||
    resolvePath(dir) !== dir ||
    dirname(dir) !== home ||
    !/^\d+-[A-Za-z0-9_-]{1,64}$/.test(basename(dir))
  ) {
    throw bad(
      `is not in this destination's run directory ${home}: throwaway disks move only between processes of one user ` +
        "on one host; name the VM's disks on the destination's command line (--root, --disk)",
    );
  }
  if (dirname(file) !== dir || !/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/.test(basename(file))) throw bad("has a bad name");
  const uid = process.getuid?.() ?? -1;
  for (const [path, isDir] of [
    [dir, true],
    [file, false],
  ] as const) {
    let st;
    try {
      st = lstatSync(path);
    } catch {
      throw bad("does not exist here");
    }
    if (isDir ? !st.isDirectory() : !st.isFile()) throw bad(`is not in a plain ${isDir ? "directory" : "file"}`);
    if (st.uid !== uid) throw bad(`belongs to another user (uid ${st.uid})`);
    if (!isDir && st.nlink !== 1) throw bad("has other hard links");
  }
}

/** The virtual size of the disk image at `path`, opened read-only and unlocked. */
function diskSize(path: string, format: DiskFormat): number {
  const img = openDiskImage(path, { readOnly: true, lock: false, format });
  try {
    return img.size;
  } finally {
    img.close();
  }
}

/**
 * The spec this destination builds for the VM the source describes: its own boot files, disks and
 * network, the guest's shape checked against its own. Throws MigrationError with one sentence.
 */
function planIncoming(hello: Hello, opts: IncomingOptions): { spec: VmSpec; adopt: string | null } {
  const src = hello.spec;
  const mine = opts.machine;
  const refuse = (why: string): never => {
    throw new MigrationError(why);
  };
  const name = mine.name ?? src.name;
  if (!NAME_RE.test(name))
    refuse(`the VM's name "${peerText(name)}" is not a valid name here (give the destination --name)`);
  if (src.memoryMiB !== mine.memoryMiB) {
    refuse(
      `the VM has ${src.memoryMiB} MiB of memory and this destination ${mine.memoryMiB} MiB (start it with --memory ${src.memoryMiB})`,
    );
  }
  if (src.cpus !== mine.cpus) {
    refuse(`the VM has ${src.cpus} vCPUs and this destination ${mine.cpus} (start it with --cpus ${src.cpus})`);
  }
  if ((src.firmware === null) !== (mine.firmware === null)) {
    refuse(
      src.firmware === null
        ? "the VM runs without firmware and this destination with OpenSBI (start it with --firmware none)"
        : "the VM runs on OpenSBI and this destination without firmware (start it without --firmware none)",
    );
  }
  if ((src.display == null) !== (mine.display == null)) {
    refuse(
      src.display == null
        ? "the VM has no display and this destination has one (start it with --display none)"
        : "the VM has a display and this destination has none (start it with --display vnc)",
    );
  }
  if ((src.net.kind === "none") !== (mine.net.kind === "none")) {
    refuse(
      src.net.kind === "none"
        ? "the VM has no network card and this destination has one (start it with --no-net)"
        : "the VM has a network card and this destination was started with --no-net",
    );
  }
  let mac = mine.mac;
  if (mac === undefined && mine.net.kind !== "none") {
    let bytes: Uint8Array | null = null;
    try {
      bytes = parseMac(src.mac);
    } catch {
      // refused below
    }
    if (bytes === null || bytes[0] & 1)
      refuse("the VM's MAC address is not a unicast address (give the destination --mac)");
    mac = src.mac;
  }
  const disks: DiskRef[] = [];
  let named = 0;
  let adopt: string | null = null;
  src.disks.forEach((d, i) => {
    const g = hello.disks[i];
    const dev = `/dev/vd${String.fromCharCode(97 + i)}`;
    if (hello.ownedDir !== null && d.path.startsWith(hello.ownedDir + "/")) {
      checkThrowaway(opts.runDir, hello.ownedDir, d.path);
      if (diskSize(d.path, d.format) !== g.size)
        refuse(`the VM's throwaway disk ${dev} is not the size the source says`);
      adopt = hello.ownedDir;
      disks.push({ path: d.path, format: d.format, readOnly: g.readOnly });
      return;
    }
    const here = mine.disks[named++];
    if (here === undefined) {
      refuse(
        `the VM's disk ${dev} does not move with it: name it on this destination's command line ` +
          `(${i === 0 ? "--root" : "--disk"} FILE, a disk both hosts share)`,
      );
    }
    if (here.format !== d.format) refuse(`the VM's disk ${dev} is ${d.format} and ${here.path} is ${here.format}`);
    if (here.readOnly !== g.readOnly)
      refuse(
        `the VM's disk ${dev} is ${g.readOnly ? "" : "not "}read-only and ${here.path} is ${here.readOnly ? "" : "not "}`,
      );
    const size = diskSize(here.path, here.format);
    if (size !== g.size) refuse(`the VM's disk ${dev} is ${g.size} bytes and ${here.path} is ${size} bytes`);
    disks.push(here);
  });
  if (named < mine.disks.length) {
    refuse(`this destination names ${mine.disks.length} disks but the VM has ${named} that do not move with it`);
  }
  const spec: VmSpec = {
    name,
    memoryMiB: mine.memoryMiB,
    cpus: mine.cpus,
    engine: mine.engine,
    append: mine.append,
    kernel: mine.kernel,
    initrd: mine.initrd,
    firmware: mine.firmware,
    disks,
    net: mine.net,
    mac: mac ?? src.mac,
    cpuCap: mine.cpuCap,
    // The vsock device is part of the guest's machine: it comes along as the source has it.
    vsock: src.vsock ?? null,
    // The guest keeps the display mode it booted with.
    display: src.display ?? null,
    // Shares too: the destination serves the same host directories (the hosts share them, or it is the same host).
    ...(src.shares?.length ? { shares: src.shares } : {}),
  };
  return { spec, adopt };
}

/** Sends an ERROR frame and closes the connection (destroyed soon after if the peer does not read). */
function refuseConnection(socket: Socket, why: string): void {
  if (socket.destroyed) return;
  socket.pause(); // nothing more is read from it
  void sendJson(socket, T_ERROR, { error: why }).catch(() => {});
  socket.end();
  setTimeout(() => socket.destroy(), 1000).unref();
}

/**
 * The handshake, destination side: a fresh nonce out, a HELLO whose proof holds in, within
 * `timeoutMs`. Throws MigrationError.
 */
async function challenge(
  socket: Socket,
  token: string,
  timeoutMs: number,
): Promise<{ reader: FrameReader; body: Buffer; nonce: Buffer }> {
  const reader = new FrameReader(socket, 2 * (MAX_HANDSHAKE_FRAME + 5));
  const nonce = randomBytes(NONCE_BYTES);
  await sendJson(socket, T_CHALLENGE, { version: MIGRATION_VERSION, nonce: nonce.toString("base64") });
  let f;
  try {
    f = await reader.next(timeoutMs, MAX_HANDSHAKE_FRAME);
  } catch (e) {
    if ((e as Error).message === "the other side did not answer in time") {
      throw new MigrationError(`no proof of the token within ${timeoutMs / 1000} s`);
    }
    throw e;
  }
  if (f.type !== T_HELLO) throw new MigrationError(`protocol error: frame ${f.type} where a HELLO was expected`);
  if (f.payload.length <= MAC_BYTES) throw new MigrationError("protocol error: the HELLO is too short");
  const body = f.payload.subarray(MAC_BYTES);
  if (!timingSafeEqual(f.payload.subarray(0, MAC_BYTES), helloProof(token, nonce, body))) {
    throw new MigrationError("the migration token is wrong");
  }
  return { reader, body, nonce };
}

/**
 * Receives one VM on the listener and builds it here. Connections that fail the handshake are
 * refused and the wait goes on; the first that proves it holds the token is the migration, and
 * every later one is refused until it ends. Resolves with the running-ready monitor; rejects if the
 * migration failed (the source then runs on). The listener is closed either way.
 */
export async function receiveMigration(
  listener: MigrationListener,
  opts: IncomingOptions,
): Promise<{ monitor: VmMonitor; notes: string[]; sourcePid: number }> {
  const tokenProblem = checkMigrationToken(opts.token);
  if (tokenProblem) throw new MigrationError(tokenProblem);
  const { server } = listener;
  const event = listener.tls ? "secureConnection" : "connection";
  const from = (s: Socket): string => `${s.remoteAddress}:${s.remotePort}`;
  let chosen = false;
  const pending = new Set<Socket>();
  const refused = (s: Socket, why: string): void => {
    refuseConnection(s, why);
    opts.onStage?.("refused", `${from(s)}: ${why}`);
  };
  const onTlsError = (e: Error, s: Socket): void => opts.onStage?.("refused", `${from(s)}: TLS: ${e.message}`);
  let onConnection: (s: Socket) => void = () => {};
  const first = new Promise<{ socket: Socket; reader: FrameReader; body: Buffer; nonce: Buffer }>((resolve) => {
    onConnection = (socket: Socket): void => {
      socket.on("error", () => {});
      socket.setNoDelay(true);
      if (chosen) return refused(socket, "a migration is already in progress");
      if (pending.size >= MAX_PENDING_HANDSHAKES) return refused(socket, "too many connections are in their handshake");
      pending.add(socket);
      challenge(socket, opts.token, listener.handshakeTimeoutMs).then(
        (h) => {
          pending.delete(socket);
          if (chosen) return refused(socket, "a migration is already in progress");
          chosen = true;
          for (const p of pending) refuseConnection(p, "a migration is already in progress");
          pending.clear();
          resolve({ socket, ...h });
        },
        (e: unknown) => {
          if (!pending.delete(socket)) return; // refused already
          refused(socket, e instanceof MigrationError ? e.message : `protocol error: ${(e as Error).message}`);
        },
      );
    };
    server.on(event, onConnection);
    if (listener.tls) server.on("tlsClientError", onTlsError);
  });
  const { socket, reader, body, nonce } = await first;
  try {
    return await receive(socket, reader, body, acceptProof(opts.token, nonce, body), opts);
  } finally {
    server.off(event, onConnection);
    server.off("tlsClientError", onTlsError);
    server.close();
  }
}

/** The migration after the handshake: check, accept, pages, state, start. */
async function receive(
  socket: Socket,
  reader: FrameReader,
  body: Buffer,
  proof: string,
  opts: IncomingOptions,
): Promise<{ monitor: VmMonitor; notes: string[]; sourcePid: number }> {
  opts.onStage?.("connected", `from ${socket.remoteAddress}:${socket.remotePort}`);
  reader.raiseHighWater(2 * (MAX_FRAME + 5));
  const refuse = async (why: string): Promise<never> => {
    await sendJson(socket, T_ACCEPT, { ok: false, error: why }).catch(() => {});
    socket.end();
    throw new MigrationError(`refused the incoming VM: ${why}`);
  };
  // The source proved it holds the token, which it has now spent: whatever it sends decides.
  let hello: Hello;
  let plan: { spec: VmSpec; adopt: string | null };
  try {
    hello = parseHello(body);
    plan = planIncoming(hello, opts);
  } catch (e) {
    return await refuse((e as Error).message);
  }
  const spec = plan.spec;
  // The machine is built now, over the RAM the pages arrive in; only its disks and network wait.
  // Pages land straight in the machine's RAM, which an SMP machine's hart threads share.
  const ramBytes = spec.memoryMiB * 1024 * 1024;
  let incoming: ReturnType<typeof VmMonitor.prepareIncoming>;
  let ram: Uint8Array;
  try {
    const ramStorage = allocateRam(ramBytes, spec.cpus);
    ram = ramView(ramStorage, ramBytes);
    incoming = VmMonitor.prepareIncoming(spec, hello.disks, { ...opts }, ramStorage);
  } catch (e) {
    return await refuse((e as Error).message);
  }
  const totalPages = ram.length / PAGE;
  await sendJson(socket, T_ACCEPT, { ok: true, proof });

  let state: MachineState;
  try {
    for (;;) {
      const f = await reader.next(IDLE_TIMEOUT_MS);
      if (f.type === T_PAGES) {
        const count = f.payload.length >= 4 ? f.payload.readUInt32LE(0) : -1;
        if (count < 0 || f.payload.length !== 4 + count * 4 + count * PAGE)
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
        const msg = parseObject<{ state?: unknown }>(f.payload);
        if (msg === null || typeof msg.state !== "object" || msg.state === null)
          throw new MigrationError("protocol error: bad STATE frame");
        state = msg.state as MachineState;
        break;
      } else {
        throw new MigrationError(`protocol error: unexpected frame ${f.type}`);
      }
    }
  } catch (e) {
    incoming.abandon();
    socket.destroy();
    throw e instanceof MigrationError ? e : new MigrationError(`protocol error: ${(e as Error).message}`);
  }

  // The throwaway disks become this process's: renamed into its own directory, paths rewritten.
  let adopted: string | null = null;
  try {
    let final = spec;
    if (plan.adopt !== null) {
      const from = plan.adopt;
      adopted = adoptOwnedDir(opts.runDir, from);
      final = {
        ...spec,
        disks: spec.disks.map((d) =>
          d.path.startsWith(from + "/") ? { ...d, path: adopted + d.path.slice(from.length) } : d,
        ),
      };
      for (const d of final.disks) if (d.path.startsWith(adopted + "/")) checkThrowaway(opts.runDir, adopted, d.path);
      incoming.monitor.adoptOwnedDir(adopted);
    }
    opts.onStage?.("received", spec.name);
    let notes: string[];
    try {
      notes = await incoming.complete(final, state);
    } catch (e) {
      throw e instanceof MigrationError ? e : new MigrationError(`the VM does not start here: ${(e as Error).message}`);
    }
    await sendJson(socket, T_DONE, { ok: true });
    socket.end();
    return { monitor: incoming.monitor, notes, sourcePid: hello.sourcePid };
  } catch (e) {
    incoming.abandon();
    if (adopted !== null && plan.adopt !== null) {
      try {
        renameSync(adopted, plan.adopt);
      } catch {
        // left where it is; the source reports its disks missing
      }
    }
    await sendJson(socket, T_DONE, { ok: false, error: (e as Error).message }).catch(() => {});
    socket.end();
    throw e instanceof MigrationError ? e : new MigrationError((e as Error).message);
  }
}

/**
 * The token in file `path` (surrounding white space dropped). The file must be readable by its
 * owner only, as a private key's: a token other users can read proves nothing. Throws MigrationError.
 */
export function readMigrationTokenFile(path: string): string {
  let text: string;
  try {
    if ((statSync(path).mode & 0o077) !== 0) {
      throw new MigrationError(`token file ${path} is open to other users (chmod 600 ${path})`);
    }
    text = readFileSync(path, "utf8");
  } catch (e) {
    if (e instanceof MigrationError) throw e;
    throw new MigrationError(
      `cannot read token file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const token = text.trim();
  const problem = checkMigrationToken(token);
  if (problem) throw new MigrationError(`token file ${path}: ${problem}`);
  return token;
}

/**
 * The VM monitor: one per VM process, as Firecracker runs one process per microVM. It owns the
 * machine (rebuilt on guest reset, on a failed migration, on restore), keeps the console output
 * that nobody watched (the last 1 MiB), and carries out what the control API asks: pause, resume,
 * stop, reset, metrics, snapshot, migrate. Everything runs on the event loop between slices of
 * guest code, so an operation always sees the machine between two instructions.
 */
import type { RamStorage } from "../cpu/bus.js";
import { chmodSync, closeSync, copyFileSync, fsyncSync, openSync, rmSync } from "node:fs";
import { PRIVATE_FILE_MODE } from "../storage/private.js";
import { join } from "node:path";
import type { PowerOff, VirtMachine, MachineState } from "./virt.js";
import { buildMachine, buildDeferred, type DiskGeometry, type VmSpec } from "./spec.js";
import {
  snapshotRam,
  loadSnapshot,
  prepareSnapshotDir,
  selectPages,
  snapshotId,
  writeMemoryFile,
  writeSnapshotJson,
  SnapshotError,
  type SnapshotBody,
  type LoadedSnapshot,
} from "./snapshot.js";
import { createOverlay, makeOwnedDir } from "./overlay.js";
import { DeferredNet } from "./deferred.js";
import { UserNet, type HostForward, type PublishedForward } from "../net/usernet.js";
import { BootLoaderWatch } from "./bootwatch.js";
import type { VsockHost } from "./vsock-host.js";
import { ConsoleTerminal, TypeAhead, PROMPT_QUIET_MS, type QueryHandler, type TypeAheadRule } from "./terminal.js";

/** fsync of a file, so that what snapshot.json promises is on disk before it is written. */
function syncFile(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The VM a loaded snapshot describes, under `name` and `cpuCap`, with a fresh throwaway overlay
 * (in the directory `ownedDir()` gives) on each disk the snapshot copied, so that the snapshot
 * itself is never written. Overlays made before a failure are removed again.
 */
function snapshotSpec(
  loaded: LoadedSnapshot,
  name: string,
  cpuCap: number | null,
  ownedDir: () => string,
  identity: RestoreIdentity = {},
): { spec: VmSpec; made: string[] } {
  const body = loaded.body;
  const spec: VmSpec = { ...body.spec, disks: body.spec.disks.map((d) => ({ ...d })), name, cpuCap };
  if (identity.mac !== undefined) spec.mac = identity.mac;
  if (identity.unplugNet && spec.net.kind !== "none") spec.net = { kind: "unplugged" };
  const made: string[] = [];
  try {
    for (const [i, file] of body.diskCopies.entries()) {
      if (file === null) continue;
      const path = createOverlay(
        ownedDir(),
        `disk${i}-${body.id}-${Date.now()}.qcow2`,
        join(loaded.dir, file),
        "qcow2",
      );
      made.push(path);
      spec.disks[i] = { path, format: "qcow2", readOnly: false };
    }
  } catch (e) {
    for (const p of made) rmSync(p, { force: true });
    throw e;
  }
  return { spec, made };
}

/**
 * What a restored copy changes of its snapshot's machine: the network card's MAC, and its cable
 * (unplugged: the card stays, as the guest knows it, but reaches nothing). Sandboxes from one
 * template differ this way.
 */
export interface RestoreIdentity {
  mac?: string;
  unplugNet?: boolean;
}

export type VmState = "running" | "paused" | "migrating" | "stopped";

/** Console bytes kept for consoles that attach later. */
export const CONSOLE_HISTORY_BYTES = 1024 * 1024;

/** The console output history: a ring of the last CONSOLE_HISTORY_BYTES bytes. */
export class ConsoleHistory {
  private readonly ring = new Uint8Array(CONSOLE_HISTORY_BYTES);
  private written = 0;
  append(bytes: Uint8Array): void {
    const ring = this.ring;
    let src = bytes.length > ring.length ? bytes.subarray(bytes.length - ring.length) : bytes;
    this.written += bytes.length - src.length;
    while (src.length > 0) {
      const at = this.written % ring.length;
      const n = Math.min(src.length, ring.length - at);
      ring.set(src.subarray(0, n), at);
      this.written += n;
      src = src.subarray(n);
    }
  }
  /** The kept bytes, oldest first. */
  contents(): Uint8Array {
    const ring = this.ring;
    if (this.written <= ring.length) return ring.slice(0, this.written);
    const at = this.written % ring.length;
    const out = new Uint8Array(ring.length);
    out.set(ring.subarray(at), 0);
    out.set(ring.subarray(0, at), ring.length - at);
    return out;
  }
}

export interface MonitorOptions {
  /** Where named networks' switch daemons live. */
  netDir: string;
  /** Where throwaway overlays live (one directory per process). */
  runDir: string;
  /** This process's own directory of throwaway disks (deleted at exit), or null. */
  ownedDir: string | null;
  /** Lines for the user (standard error). */
  log: (line: string) => void;
  /** Console output to the terminal too (an interactive or piped `yun run`), or null (headless). */
  echo: ((bytes: Uint8Array) => void) | null;
  /**
   * Whether console input is typed by a person (a terminal, an attached console) rather than piped
   * for the guest's shell: then a boot loader (U-Boot, GRUB) gets it too. Default false.
   */
  typedInput?: boolean;
  /**
   * The echo is a real terminal, which answers the guest's queries itself (stdin and stdout on one
   * terminal); otherwise the echo gets the output with the queries the monitor answered removed.
   */
  echoIsTerminal?: boolean;
  /** When typed-ahead input (typeIn) reaches the guest; default "prompt". */
  typeAhead?: TypeAheadRule;
  /** The Unix socket side of the VM's vsock device: each machine built is attached to it. */
  vsockHost?: VsockHost;
}

/** How a console attaches: a real terminal (answers the guest's queries itself), or a script. */
export interface ConsoleAttachment {
  /** Not a real terminal: the monitor answers the guest's terminal queries and removes them. */
  piped?: boolean;
}

export interface MonitorMetrics {
  instret: number;
  cpuSeconds: number;
  idleSeconds: number;
  uptimeSeconds: number;
  exits: { mmio: number; wfi: number };
  blk: { reads: number; writes: number; readBytes: number; writeBytes: number }[];
  net: { rxFrames: number; txFrames: number; rxBytes: number; txBytes: number } | null;
}

export interface SnapshotResult {
  dir: string;
  bytes: number;
  pages: number;
  ms: number;
}

/** An operation that does not fit the VM's state (the API answers 409). */
export class StateError extends Error {}

export class VmMonitor {
  spec: VmSpec;
  state: VmState = "running";
  readonly startedAt = Date.now();
  readonly history = new ConsoleHistory();
  /** The terminal the monitor plays on the console when no real one is attached (terminal.ts). */
  readonly terminal = new ConsoleTerminal();
  /** Consoles on real terminals (raw output) and consoles of scripts (queries removed). */
  private readonly consoles = new Set<(bytes: Uint8Array) => void>();
  private readonly pipedConsoles = new Set<(bytes: Uint8Array) => void>();
  private readonly typeAhead: TypeAhead;
  private typeAheadTimer: NodeJS.Timeout | null = null;
  private lastOutputAt = performance.now();
  private readonly stateWatchers = new Set<(state: VmState) => void>();
  private current: VirtMachine | null = null;
  /** Told about every machine this monitor builds (a reset, restore or migration builds a new one). */
  private readonly machineWatchers = new Set<(machine: VirtMachine) => void>();
  /** The last snapshot taken, which an incremental one adds to. */
  private lastSnapshot: { dir: string; id: string } | null = null;
  /** Set when the machine left this process (migrated): run() ends without powering off. */
  private handedOff = false;
  private stopRequested = false;
  /** Metrics of machines that came before the current one (resets). */
  private pastInstret = 0;
  private pastBusyMs = 0;
  private pastIdleMs = 0;
  private readonly opts: MonitorOptions;
  /** While a disk boots through U-Boot: notices U-Boot giving up (see bootwatch.ts). */
  private bootWatch: BootLoaderWatch | null = null;

  private constructor(spec: VmSpec, opts: MonitorOptions) {
    this.spec = spec;
    this.opts = opts;
    this.typeAhead = new TypeAhead(opts.typeAhead ?? "prompt");
  }

  /**
   * Calls `watch` with the current machine and every later one (a VNC server follows the display
   * devices across resets, restores and migrations); returns the function that stops it.
   */
  watchMachine(watch: (machine: VirtMachine) => void): () => void {
    this.machineWatchers.add(watch);
    if (this.current) watch(this.current);
    return () => this.machineWatchers.delete(watch);
  }

  private setMachine(machine: VirtMachine): void {
    this.current = machine;
    this.opts.vsockHost?.attach(machine.vsock);
    for (const w of this.machineWatchers) w(machine);
  }

  /** The running machine. */
  get machine(): VirtMachine {
    if (!this.current) throw new StateError(`VM ${this.spec.name} has no machine`);
    return this.current;
  }

  /** Builds the machine and boots it from its firmware or kernel. */
  static async boot(spec: VmSpec, opts: MonitorOptions): Promise<{ monitor: VmMonitor; notes: string[] }> {
    const m = new VmMonitor(spec, opts);
    const notes = await m.build();
    return { monitor: m, notes };
  }

  /**
   * Builds the machine a snapshot describes and loads it: RAM, harts, devices. Disks the snapshot
   * copied get a fresh throwaway overlay each, so the snapshot itself stays as it was and can be
   * restored again. Throws SnapshotError (or a disk/network error) with nothing started.
   */
  static async restore(
    dir: string,
    opts: MonitorOptions,
    override: { name?: string; cpuCap?: number | null } & RestoreIdentity,
  ): Promise<{ monitor: VmMonitor; notes: string[]; ownedDir: string | null }> {
    const loaded = loadSnapshot(dir);
    const body = loaded.body;
    let ownedDir = opts.ownedDir;
    let madeDir = false;
    try {
      const { spec } = snapshotSpec(
        loaded,
        override.name ?? body.spec.name,
        override.cpuCap ?? body.spec.cpuCap,
        () => {
          if (ownedDir === null) {
            ownedDir = makeOwnedDir(opts.runDir);
            madeDir = true;
          }
          return ownedDir;
        },
        override,
      );
      const m = new VmMonitor(spec, { ...opts, ownedDir });
      const notes = await m.build(snapshotRam(loaded));
      try {
        m.machine.restoreState(body.state);
      } catch (e) {
        m.machine.close();
        throw e instanceof SnapshotError ? e : new SnapshotError(`snapshot ${loaded.dir}: ${(e as Error).message}`);
      }
      m.lastSnapshot = null;
      m.typeAhead.follow(opts.typeAhead ?? body.typeAhead ?? "immediate");
      return { monitor: m, notes, ownedDir };
    } catch (e) {
      if (madeDir && ownedDir) rmSync(ownedDir, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * The destination of a live migration: the machine is built at once over `ram` (where the pages
   * land as they arrive) with stand-ins for its disks (of the source's `geometry`) and network;
   * `complete` plugs in the real
   * ones (at `final`'s paths) and loads the state, `abandon` closes everything.
   */
  static prepareIncoming(
    spec: VmSpec,
    geometry: DiskGeometry[],
    opts: MonitorOptions,
    ram: RamStorage,
  ): {
    monitor: VmMonitor;
    complete: (final: VmSpec, state: MachineState) => Promise<string[]>;
    abandon: () => void;
  } {
    const m = new VmMonitor(spec, opts);
    const { machine, plug } = buildDeferred(spec, geometry, {
      ram,
      netDir: opts.netDir,
      output: (bytes) => m.output(bytes),
      log: (line) => opts.log(line),
    });
    m.setMachine(machine);
    const complete = async (final: VmSpec, state: MachineState): Promise<string[]> => {
      const notes = await plug(final);
      m.spec = final;
      machine.restoreState(state);
      return notes;
    };
    return { monitor: m, complete, abandon: () => machine.close() };
  }

  private async build(ram?: RamStorage): Promise<string[]> {
    const { machine, notes } = await buildMachine(this.spec, {
      ram,
      netDir: this.opts.netDir,
      output: (bytes) => this.output(bytes),
      log: (line) => this.opts.log(line),
    });
    this.setMachine(machine);
    this.bootWatch = this.spec.payload === "raw" && ram === undefined ? new BootLoaderWatch() : null;
    if (this.bootWatch && this.opts.typedInput === true) machine.setBootLoaderInput(true);
    return notes;
  }

  private output(bytes: Uint8Array): void {
    this.lastOutputAt = performance.now();
    this.watchBoot(bytes);
    const shown = this.terminal.scan(bytes, this.onQuery);
    if (shown.length > 0) this.history.append(shown);
    if (this.opts.echo) {
      if (this.opts.echoIsTerminal === true) this.opts.echo(bytes);
      else if (shown.length > 0) this.opts.echo(shown);
    }
    for (const c of this.consoles) c(bytes);
    if (shown.length > 0) for (const c of this.pipedConsoles) c(shown);
  }

  /**
   * A query the guest wrote to its terminal: the monitor answers it unless a real terminal sees
   * the console (which answers itself). A line editor asking at its prompt is ready for input.
   */
  private readonly onQuery: QueryHandler = (answer, query, atPrompt) => {
    const m = this.current;
    if (m === null) return;
    if (this.consoles.size === 0 && this.opts.echoIsTerminal !== true) m.answer(answer);
    if (query === "cursor" && atPrompt) this.releaseTypeAhead();
  };

  private releaseTypeAhead(): void {
    if (this.typeAhead.isOpen) return;
    const held = this.typeAhead.release();
    if (held.length > 0) this.current?.input(held);
    if (this.typeAheadTimer !== null) clearTimeout(this.typeAheadTimer);
    this.typeAheadTimer = null;
  }

  /** While input is held: looks every PROMPT_QUIET_MS / 3 whether the guest is ready for it. */
  private watchTypeAhead(): void {
    if (this.typeAheadTimer !== null || this.typeAhead.isOpen || this.typeAhead.pending === 0) return;
    const look = (): void => {
      this.typeAheadTimer = null;
      if (this.typeAhead.due(performance.now() - this.lastOutputAt, this.terminal.atPrompt)) this.releaseTypeAhead();
      else if (this.state !== "stopped") this.watchTypeAhead();
    };
    this.typeAheadTimer = setTimeout(look, PROMPT_QUIET_MS / 3);
    this.typeAheadTimer.unref();
  }

  /** A disk boot that U-Boot gave up on ends the VM with the reason, rather than idling at a prompt. */
  private watchBoot(bytes: Uint8Array): void {
    const watch = this.bootWatch;
    const machine = this.current;
    if (watch === null || machine === null) return;
    const verdict = watch.feed(bytes, machine.inputTaken > 0);
    if (watch.finished) {
      // The kernel runs: its own driver decides when it reads the UART.
      this.bootWatch = null;
      machine.setBootLoaderInput(false);
    }
    if (verdict === null) return;
    // After the console line that led to it, so the reason comes last.
    queueMicrotask(() => this.opts.log(`the disk did not boot: ${verdict}`));
    machine.stop("fail", 1);
  }

  private setState(state: VmState): void {
    if (this.state === state) return;
    this.state = state;
    for (const w of this.stateWatchers) w(state);
  }

  /**
   * Subscribes to console output; returns the unsubscribe function. A `piped` console gets the
   * output without the terminal queries, which the monitor answers while no real terminal is
   * attached.
   */
  attachConsole(sink: (bytes: Uint8Array) => void, how: ConsoleAttachment = {}): () => void {
    const set = how.piped === true ? this.pipedConsoles : this.consoles;
    set.add(sink);
    return () => set.delete(sink);
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  watchState(fn: (state: VmState) => void): () => void {
    this.stateWatchers.add(fn);
    return () => this.stateWatchers.delete(fn);
  }

  /** Console input (keys typed on an attached console). */
  input(bytes: Uint8Array): void {
    this.current?.input(bytes);
  }

  /**
   * Console input typed ahead by a script (piped stdin, a piped console): held until the guest is
   * ready to read it (MonitorOptions.typeAhead, see terminal.ts), then handed over in order.
   */
  typeIn(bytes: Uint8Array): void {
    const now = this.typeAhead.push(bytes);
    if (now !== null) {
      this.current?.input(now);
      return;
    }
    if (this.typeAhead.due(performance.now() - this.lastOutputAt, this.terminal.atPrompt)) this.releaseTypeAhead();
    else this.watchTypeAhead();
  }

  /**
   * Runs the VM until it powers off, fails, is stopped or leaves by migration. A guest reset
   * rebuilds the machine (disks and network reopened) and boots again.
   */
  async run(): Promise<PowerOff> {
    for (;;) {
      const machine = this.machine;
      const result = await machine.run();
      if (this.handedOff) {
        this.setState("stopped");
        return { kind: "poweroff", code: 0 };
      }
      if (this.current !== machine) continue; // replaced while it stopped (failed migration)
      if (result.kind === "reset" && !this.stopRequested) {
        this.keepMetrics(machine);
        this.opts.log("guest rebooted");
        // Input the old boot did not read waits for the new boot's shell.
        this.typeAhead.restart(machine.takeInput());
        await this.build();
        this.watchTypeAhead();
        continue;
      }
      this.setState("stopped");
      if (this.typeAheadTimer !== null) clearTimeout(this.typeAheadTimer);
      this.typeAheadTimer = null;
      return result;
    }
  }

  private keepMetrics(m: VirtMachine): void {
    this.pastInstret += m.metrics().instret;
    this.pastBusyMs += m.busyMs;
    this.pastIdleMs += m.idleMs;
  }

  /** The VM's user-mode network, or a StateError saying why there is none. */
  private userNet(): UserNet {
    let backend = this.current?.netBackend ?? null;
    if (backend instanceof DeferredNet) backend = backend.plugged;
    if (this.spec.net.kind !== "user" || !(backend instanceof UserNet)) {
      throw new StateError(`VM ${this.spec.name} has no user-mode network (port forwards need one)`);
    }
    return backend;
  }

  /** The published port forwards (host address and port bound, guest port). */
  forwards(): PublishedForward[] {
    return this.spec.net.kind === "user" && this.current ? this.userNet().published : [];
  }

  /**
   * Publishes a host port to a guest port while the VM runs. The spec keeps what is published
   * (with the ports bound), so a guest reboot publishes the same ports again.
   */
  async addForward(f: HostForward): Promise<PublishedForward> {
    this.requireLive("given a port forward");
    const net = this.userNet();
    let added: PublishedForward;
    try {
      added = await net.addForward(f);
    } catch (e) {
      throw new StateError((e as Error).message);
    }
    this.keepForwards(net);
    return added;
  }

  /** Stops publishing hostAddr:hostPort; false if nothing is published there. */
  removeForward(hostAddr: string, hostPort: number): boolean {
    this.requireLive("changed");
    const net = this.userNet();
    const removed = net.removeForward(hostAddr, hostPort);
    if (removed) this.keepForwards(net);
    return removed;
  }

  private keepForwards(net: UserNet): void {
    if (this.spec.net.kind !== "user") return;
    const publish = net.published.map((p) => ({ ...p, proto: "tcp" as const }));
    this.spec = { ...this.spec, net: { ...this.spec.net, publish } };
  }

  describe(): Record<string, unknown> {
    const s = this.spec;
    return {
      name: s.name,
      pid: process.pid,
      state: this.state,
      cpus: s.cpus,
      memoryMiB: s.memoryMiB,
      engine: s.engine,
      cpuCap: s.cpuCap,
      uptimeMs: Date.now() - this.startedAt,
      disks: s.disks.map((d) => ({ path: d.path, format: d.format, readOnly: d.readOnly })),
      net: {
        kind: s.net.kind,
        ...(s.net.kind === "switch" ? { name: s.net.name } : {}),
        ...(s.net.kind === "user" ? { address: s.net.address ?? "10.0.2.15/24", forwards: this.forwards() } : {}),
        mac: s.mac,
      },
      vsock: s.vsock ? { guestCid: s.vsock.guestCid, socket: this.opts.vsockHost?.path ?? null } : null,
      shares: (s.shares ?? []).map((sh) => ({ tag: sh.tag, path: sh.path, readOnly: sh.readOnly ?? false })),
    };
  }

  pause(): void {
    this.requireLive("paused");
    if (this.state === "migrating") throw new StateError("the VM is migrating");
    this.machine.pause();
    this.setState("paused");
  }

  resume(): void {
    this.requireLive("resumed");
    if (this.state === "migrating") throw new StateError("the VM is migrating");
    this.machine.resume();
    this.setState("running");
  }

  /** Powers the VM off (disks flushed and closed); run() then returns. */
  stop(): void {
    if (this.state === "stopped") return;
    this.stopRequested = true;
    this.current?.stop("poweroff", 0);
  }

  /** A hardware reset: the guest boots again on the same disks. */
  reset(): void {
    this.requireLive("reset");
    if (this.state === "migrating") throw new StateError("the VM is migrating");
    if (this.machine.isPaused) {
      this.machine.resume();
      this.setState("running");
    }
    this.machine.stop("reset", 0);
  }

  private requireLive(what: string): void {
    if (this.state === "stopped") throw new StateError(`VM ${this.spec.name} is stopped; it cannot be ${what}`);
  }

  metrics(): MonitorMetrics {
    const m = this.machine.metrics();
    const now = Date.now();
    const stats = this.current?.net?.stats() ?? null;
    return {
      instret: this.pastInstret + m.instret,
      cpuSeconds: (this.pastBusyMs + m.busyMs) / 1000,
      idleSeconds: (this.pastIdleMs + m.idleMs) / 1000,
      uptimeSeconds: (now - this.startedAt) / 1000,
      exits: { mmio: m.mmioExits, wfi: m.wfiExits },
      blk: this.machine.disks.map((d) => {
        const c = d.stats();
        return { reads: c.readRequests, writes: c.writeRequests, readBytes: c.readBytes, writeBytes: c.writeBytes };
      }),
      net: stats
        ? { rxFrames: stats.rxPackets, txFrames: stats.txPackets, rxBytes: stats.rxBytes, txBytes: stats.txBytes }
        : null,
    };
  }

  /**
   * Saves the VM to `dir` (created, or empty). The guest is stopped for the copy (its clock too)
   * and runs on afterwards. Incremental: only the pages written since the previous snapshot of this
   * process, which becomes the parent.
   */
  snapshot(dir: string, incremental: boolean): SnapshotResult {
    this.requireLive("snapshotted");
    if (this.state === "migrating") throw new StateError("the VM is migrating");
    const parent = incremental ? this.lastSnapshot : null;
    if (incremental && parent === null) {
      throw new StateError("an incremental snapshot needs a full snapshot taken before it by this VM process");
    }
    const t0 = performance.now();
    const abs = prepareSnapshotDir(dir);
    const machine = this.machine;
    const wasPaused = machine.isPaused;
    machine.pause();
    try {
      machine.flushDisks();
      // From here on the log collects what the next incremental snapshot stores.
      const dirty = machine.takeDirtyLog();
      const pages = selectPages(machine.bus.ram, incremental ? dirty : null);
      const memory = writeMemoryFile(join(abs, "memory.bin"), machine.bus.ram, pages);
      const diskCopies = this.spec.disks.map((d, i) => {
        if (this.opts.ownedDir === null || !d.path.startsWith(this.opts.ownedDir + "/")) return null;
        const file = `disk${i}.qcow2`;
        copyFileSync(d.path, join(abs, file));
        chmodSync(join(abs, file), PRIVATE_FILE_MODE);
        syncFile(join(abs, file));
        return file;
      });
      const body: SnapshotBody = {
        id: snapshotId(),
        createdAt: new Date().toISOString(),
        spec: this.spec,
        state: machine.saveState(),
        parent,
        memory,
        diskCopies,
        typeAhead: this.typeAhead.current,
      };
      writeSnapshotJson(abs, body);
      this.lastSnapshot = { dir: abs, id: body.id };
      return { dir: abs, bytes: memory.bytes, pages: memory.pages, ms: Math.round(performance.now() - t0) };
    } catch (e) {
      rmSync(join(abs, "snapshot.json"), { force: true });
      throw e instanceof SnapshotError ? e : new SnapshotError(`snapshot to ${abs} failed: ${(e as Error).message}`);
    } finally {
      if (!wasPaused) machine.resume();
    }
  }

  /**
   * Replaces the running VM with the one in snapshot `dir` (this process keeps its name, control
   * socket and CPU cap). The whole snapshot is checked first; if building its machine fails, the
   * VM that ran before goes on as it was.
   */
  async restoreInPlace(dir: string): Promise<{ dir: string; ms: number }> {
    this.requireLive("restored");
    if (this.state === "migrating") throw new StateError("the VM is migrating");
    const t0 = performance.now();
    const loaded = loadSnapshot(dir);
    const body = loaded.body;
    const old = this.machine;
    const oldSpec = this.spec;
    const wasPaused = old.isPaused;
    old.pause();
    const saved = old.saveState();
    // The old machine lets go of its disks first: the snapshot may name the same files.
    old.close();
    let made: string[] = [];
    try {
      const next = snapshotSpec(
        loaded,
        oldSpec.name,
        oldSpec.cpuCap,
        () => (this.opts.ownedDir ??= makeOwnedDir(this.opts.runDir)),
      );
      made = next.made;
      const spec = next.spec;
      this.spec = spec;
      await this.build(snapshotRam(loaded));
      this.machine.restoreState(body.state);
    } catch (e) {
      this.current?.close();
      for (const p of made) rmSync(p, { force: true });
      this.spec = oldSpec;
      await this.build(old.bus.ramStorage);
      this.machine.restoreState(saved);
      if (wasPaused) this.machine.pause();
      old.stop("poweroff", 0);
      old.resume();
      throw e instanceof SnapshotError ? e : new SnapshotError(`snapshot ${loaded.dir}: ${(e as Error).message}`);
    }
    // The replaced VM's throwaway disks are of no further use.
    for (const d of oldSpec.disks) {
      if (
        this.opts.ownedDir !== null &&
        d.path.startsWith(this.opts.ownedDir + "/") &&
        !this.spec.disks.some((n) => n.path === d.path)
      ) {
        rmSync(d.path, { force: true });
      }
    }
    this.lastSnapshot = null;
    this.typeAhead.follow(body.typeAhead ?? "immediate");
    this.watchTypeAhead();
    if (wasPaused) this.machine.pause();
    this.setState(wasPaused ? "paused" : "running");
    old.stop("poweroff", 0);
    old.resume();
    return { dir: loaded.dir, ms: Math.round(performance.now() - t0) };
  }

  // ------------------------------------------------------------------ live migration (migrate.ts)

  /** Marks the VM as migrating (the source side) or back to running. */
  setMigrating(on: boolean): void {
    if (on) {
      if (this.state !== "running")
        throw new StateError(`VM ${this.spec.name} is ${this.state}; only a running VM migrates`);
      this.setState("migrating");
    } else if (this.state === "migrating") {
      this.setState("running");
    }
  }

  /**
   * The machine has gone to another process: this one powers off without touching the guest's
   * disks again (the destination has them now).
   */
  handOff(): void {
    this.handedOff = true;
    this.lastSnapshot = null;
    this.current?.stop("poweroff", 0);
  }

  /**
   * The destination failed after this side let go of its disks and network: build the machine
   * again here and load what it was (RAM and state), then let it run on.
   */
  async takeBack(ram: RamStorage, state: MachineState): Promise<void> {
    const old = this.current;
    await this.build(ram);
    this.machine.restoreState(state);
    this.lastSnapshot = null;
    // The old machine's run() returns now; run() sees that it was replaced and runs the new one.
    old?.stop("poweroff", 0);
    old?.resume();
  }

  /** Whether the VM left this process by migration. */
  get migratedAway(): boolean {
    return this.handedOff;
  }

  /** The directory of throwaway disks this process owns (handed on by a migration). */
  get ownedDir(): string | null {
    return this.opts.ownedDir;
  }

  /** Takes on a directory of throwaway disks (it came with a migration). */
  adoptOwnedDir(dir: string): void {
    this.opts.ownedDir = dir;
  }

  /** Forgets the owned directory (it went to the migration's destination). */
  releaseOwnedDir(): void {
    this.opts.ownedDir = null;
  }
}

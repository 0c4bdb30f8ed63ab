/**
 * Compute: every running instance is a VM monitor process (`yun run --headless`, docs/vm-api.md),
 * spawned detached in its own process group so the daemon can die without taking VMs with it.
 * The driver keeps one control connection and one `watch` connection per monitor; the watch
 * connection closing is how the daemon learns that a VM exited (guest power-off, crash, kill).
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync } from "node:fs";
import type net from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { MonitorConnection, MonitorError, openStream } from "../../vmm/client.js";
import { processAlive as alive } from "../../vmm/registry.js";
import { PRIVATE_FILE_MODE } from "../../storage/private.js";

export interface LaunchSpec {
  /** The instance id: also the VM's --name (unique among running VMs). */
  id: string;
  vcpus: number;
  memoryMiB: number;
  /** The instance's root disk (a qcow2 overlay); "": the image's own, under a throwaway overlay. */
  rootDisk: string;
  /** Further disks, /dev/vdb onwards. */
  disks: string[];
  net:
    | {
        kind: "user";
        /** The guest's address and prefix (yun run --net-address). */
        address?: string;
        /** The instance metadata file (yun run --metadata). */
        metadata?: string;
        /** Port forwards (yun run --publish). */
        publish?: { hostAddr: string; hostPort: number; guestPort: number }[];
      }
    | { kind: "switch"; name: string; metadata?: string }
    | { kind: "none" };
  mac: string;
  /** A graphical display (yun run --display vnc --vnc none): reached through the control socket. */
  display?: boolean;
  kernel: string;
  initrd: string;
  firmware: string;
  /**
   * A public image from `yun image pull` (debian, debian-tiny): booted as `yun run --image NAME`,
   * which takes its kernel, initrd, firmware and root device from the image's manifest (the full
   * image's root is /dev/vda1). Absent: kernel, initrd and firmware above with root /dev/vda.
   */
  image?: string;
  /** Directory for the socket and the log. */
  dir: string;
  /**
   * Start from this snapshot instead of booting (a sandbox): `yun run --restore DIR` with the
   * copy's own MAC, and its network card unplugged when it has no network. The snapshot brings
   * the machine: vcpus, memory, disks, kernel and image above are not used.
   */
  restore?: { dir: string; unplugNet: boolean };
  /** Host directories served over virtio-9p (yun run --share). */
  shares?: { tag: string; path: string; readOnly?: boolean }[];
}

export interface Launched {
  pid: number;
  socket: string;
}

export interface MonitorDescribe {
  name: string;
  pid: number;
  state: string;
  cpus: number;
  memoryMiB: number;
}

/** What the cloud needs from compute; MonitorDriver is the implementation. */
export interface ComputeDriver {
  /** Starts a VM; resolves once its monitor answers, rejects (with the log's last lines) if it died. */
  launch(spec: LaunchSpec, onSpawn: (pid: number, socket: string) => void): Promise<Launched>;
  /** Re-attaches to a monitor found running (after a daemon restart); false if none answers. */
  attach(id: string, socket: string, pid: number): Promise<boolean>;
  /** One control-API request to a VM this driver is attached to. */
  control<T = Record<string, unknown>>(id: string, op: string, args?: Record<string, unknown>): Promise<T>;
  /**
   * A raw console stream (after the monitor's ok line; `rest`: bytes already read); `piped`: for a
   * client that is not a terminal (see openConsole in src/vmm/client.ts).
   */
  console(id: string, replay: boolean, piped?: boolean): Promise<{ socket: net.Socket; rest: Buffer }>;
  /** A raw RFB (VNC) stream to the VM's display, already past the VNC security handshake's choice. */
  display(id: string): Promise<{ socket: net.Socket; rest: Buffer }>;
  /** Stops the VM: the stop op, then SIGKILL to its process group if it does not exit in time. */
  stop(id: string, pid: number | null): Promise<void>;
  /** Kills a monitor process (group) without asking. */
  kill(pid: number): void;
  /** Whether `pid` is alive and is the monitor of `id`. */
  isMonitorOf(pid: number, id: string): boolean;
  /** VMs running under this YUN_HOME (from $YUN_HOME/vms/<name>/vm.json) with live pids. */
  runningVms(): { name: string; pid: number; socket: string }[];
  /** Called when an attached monitor's watch connection ends (the VM exited). */
  onExit: ((id: string) => void) | null;
  close(): void;
}

const BIN = resolve(fileURLToPath(import.meta.url), "../../../../../bin/yun.js");

interface Attached {
  conn: MonitorConnection;
  watch: net.Socket | null;
  socket: string;
  pid: number;
}

export class MonitorDriver implements ComputeDriver {
  onExit: ((id: string) => void) | null = null;
  private readonly attached = new Map<string, Attached>();

  constructor(
    private readonly yunHome: string,
    /** The yun entry point to run (default: this checkout's bin/yun.js). */
    private readonly bin = BIN,
    private readonly bootTimeoutMs = 60_000,
  ) {}

  async launch(spec: LaunchSpec, onSpawn: (pid: number, socket: string) => void): Promise<Launched> {
    const socket = join(spec.dir, "api.sock");
    const logPath = join(spec.dir, "monitor.log");
    const args = spec.restore ? this.restoreArgs(spec, socket, logPath) : this.bootArgs(spec, socket, logPath);
    const log = openSync(logPath, "a", PRIVATE_FILE_MODE);
    let child;
    try {
      child = spawn(process.execPath, args, {
        detached: true,
        stdio: ["ignore", log, log],
        env: { ...process.env, YUN_HOME: this.yunHome },
      });
    } finally {
      closeSync(log);
    }
    const pid = child.pid;
    if (pid === undefined) throw new MonitorError("the VM monitor process could not be started");
    let exited: number | null = null;
    child.once("exit", (code, signal) => (exited = code ?? (signal ? 128 : 1)));
    child.unref();
    onSpawn(pid, socket);
    const deadline = Date.now() + this.bootTimeoutMs;
    for (;;) {
      if (exited !== null) {
        throw new MonitorError(`the VM monitor exited (status ${exited}) before it answered: ${tail(logPath)}`);
      }
      if (existsSync(socket) && (await this.attach(spec.id, socket, pid))) return { pid, socket };
      if (Date.now() > deadline) {
        this.kill(pid);
        throw new MonitorError(`the VM monitor did not answer within ${this.bootTimeoutMs / 1000} s: ${tail(logPath)}`);
      }
      await sleep(100);
    }
  }

  private restoreArgs(spec: LaunchSpec, socket: string, logPath: string): string[] {
    const r = spec.restore!;
    const args = [this.bin, "run", "--headless", "--name", spec.id, "--api-socket", socket, "--log", logPath];
    args.push("--restore", r.dir, "--mac", spec.mac);
    if (r.unplugNet) args.push("--no-net");
    return args;
  }

  private bootArgs(spec: LaunchSpec, socket: string, logPath: string): string[] {
    const args = [
      this.bin,
      "run",
      "--headless",
      "--name",
      spec.id,
      "--api-socket",
      socket,
      "--memory",
      String(spec.memoryMiB),
      "--cpus",
      String(spec.vcpus),
      ...(spec.image
        ? ["--image", spec.image]
        : ["--kernel", spec.kernel, "--initrd", spec.initrd, "--firmware", spec.firmware]),
      // No root disk of its own: the image's, under a throwaway overlay (a template's build VM).
      ...(spec.rootDisk === "" ? [] : ["--root", spec.rootDisk]),
      "--mac",
      spec.mac,
      // The monitor caps its own log; stdout and stderr below still catch what Node prints itself.
      "--log",
      logPath,
    ];
    for (const d of spec.disks) args.push("--disk", d);
    for (const s of spec.shares ?? []) args.push("--share", `${s.tag}=${s.path}${s.readOnly ? ":ro" : ""}`);
    // No TCP listener: the display is reached through the monitor's control socket (mode 0600),
    // which only the daemon opens, for a token-checked WebSocket.
    if (spec.display === true) args.push("--display", "vnc", "--vnc", "none");
    if (spec.net.kind === "switch") {
      args.push("--net", spec.net.name);
      if (spec.net.metadata) args.push("--metadata", spec.net.metadata);
    } else if (spec.net.kind === "none") args.push("--no-net");
    else {
      if (spec.net.address) args.push("--net-address", spec.net.address);
      if (spec.net.metadata) args.push("--metadata", spec.net.metadata);
      for (const f of spec.net.publish ?? []) args.push("--publish", `${f.hostAddr}:${f.hostPort}:${f.guestPort}`);
    }
    return args;
  }

  async attach(id: string, socket: string, pid: number): Promise<boolean> {
    const old = this.attached.get(id);
    if (old && !old.conn.isClosed) return true;
    let conn: MonitorConnection;
    try {
      conn = await MonitorConnection.connect(socket);
      await conn.request("describe", {}, 5000);
    } catch {
      return false;
    }
    const a: Attached = { conn, watch: null, socket, pid };
    this.attached.set(id, a);
    let gone = false;
    const exitOnce = (): void => {
      if (gone) return;
      gone = true;
      if (this.attached.get(id) === a) this.attached.delete(id);
      a.conn.close();
      a.watch?.destroy();
      this.onExit?.(id);
    };
    conn.onClose = exitOnce;
    try {
      const w = await openStream(socket, "watch");
      a.watch = w.socket;
      w.socket.on("error", () => {});
      w.socket.on("close", exitOnce);
      w.socket.resume();
    } catch {
      // An older monitor without watch: the control connection closing tells the same.
    }
    return true;
  }

  async control<T = Record<string, unknown>>(id: string, op: string, args: Record<string, unknown> = {}): Promise<T> {
    const a = this.attached.get(id);
    if (!a) throw new MonitorError(`instance ${id} has no running VM monitor`);
    return a.conn.request<T>(op, args);
  }

  async console(id: string, replay: boolean, piped = false): Promise<{ socket: net.Socket; rest: Buffer }> {
    const a = this.attached.get(id);
    if (!a) throw new MonitorError(`instance ${id} has no running VM monitor`);
    return openStream(a.socket, "console", piped ? { replay, piped } : { replay });
  }

  async display(id: string): Promise<{ socket: net.Socket; rest: Buffer }> {
    const a = this.attached.get(id);
    if (!a) throw new MonitorError(`instance ${id} has no running VM monitor`);
    return openStream(a.socket, "display");
  }

  async stop(id: string, pid: number | null): Promise<void> {
    const a = this.attached.get(id);
    const p = a?.pid ?? pid;
    if (a) {
      try {
        await a.conn.request("stop", {}, 10_000);
      } catch {}
    }
    if (p === null) return;
    const deadline = Date.now() + 10_000;
    while (alive(p) && Date.now() < deadline) await sleep(50);
    if (alive(p)) {
      this.kill(p);
      const d2 = Date.now() + 3000;
      while (alive(p) && Date.now() < d2) await sleep(50);
    }
  }

  kill(pid: number): void {
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, "SIGKILL");
      } catch {}
    }
  }

  isMonitorOf(pid: number, id: string): boolean {
    if (!alive(pid)) return false;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      const i = cmd.indexOf("--name");
      return i >= 0 && cmd[i + 1] === id;
    } catch {
      return false;
    }
  }

  runningVms(): { name: string; pid: number; socket: string }[] {
    const dir = join(this.yunHome, "vms");
    const out: { name: string; pid: number; socket: string }[] = [];
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {}
    for (const name of names) {
      try {
        const j = JSON.parse(readFileSync(join(dir, name, "vm.json"), "utf8")) as { pid?: number; apiSocket?: string };
        if (typeof j.pid === "number" && alive(j.pid))
          out.push({ name, pid: j.pid, socket: j.apiSocket ?? join(dir, name, "api.sock") });
      } catch {}
    }
    // Monitors not registered (yet): a daemon killed right after spawning one never recorded it,
    // and the monitor registers only once it has started.
    for (const m of cloudMonitorProcesses(this.yunHome)) if (!out.some((v) => v.pid === m.pid)) out.push(m);
    return out;
  }

  close(): void {
    for (const a of this.attached.values()) {
      a.conn.onClose = null;
      a.watch?.removeAllListeners("close");
      a.conn.close();
      a.watch?.destroy();
    }
    this.attached.clear();
  }
}

/**
 * Live `yun run` processes whose control socket is in an instance directory of this YUN_HOME's
 * cloud (how MonitorDriver.launch starts them), found through /proc.
 */
export function cloudMonitorProcesses(yunHome: string): { name: string; pid: number; socket: string }[] {
  const prefix = join(yunHome, "cloud", "instances") + "/";
  const out: { name: string; pid: number; socket: string }[] = [];
  let pids: string[];
  try {
    pids = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const p of pids) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
      const s = cmd.indexOf("--api-socket");
      const n = cmd.indexOf("--name");
      if (cmd.includes("run") && s >= 0 && n >= 0 && cmd[s + 1]?.startsWith(prefix))
        out.push({ name: cmd[n + 1], pid: Number(p), socket: cmd[s + 1] });
    } catch {}
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The last few lines of a log file, on one line. */
function tail(path: string): string {
  try {
    if (!statSync(path).isFile()) return "";
    const text = readFileSync(path, "utf8").trim().split("\n").slice(-3).join(" / ");
    return text || "(no output)";
  } catch {
    return "(no log)";
  }
}

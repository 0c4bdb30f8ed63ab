/**
 * Where the running `yun serve` of a $YUN_HOME listens: it writes `$YUN_HOME/cloud/serve.json`
 * (owner-only) as it starts ("starting": opening the state, re-attaching to VMs) and again once
 * it listens ("listening", with its URL), and removes it when it stops, so that the CLI finds a
 * daemon started with `--port` (or `--port 0`, or TLS) without being told, and waits for one
 * still starting (`yun serve & yun instance create ...`). A record left by a daemon
 * that died without removing it (kill -9, a crash) is stale: its process is gone, or the pid now
 * belongs to something other than `yun serve`. Whoever finds a stale record removes it.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { processAlive } from "../vmm/registry.js";
import { PRIVATE_FILE_MODE, makePrivateDir } from "../storage/private.js";

export interface ServeRecord {
  /** The daemon's process. */
  pid: number;
  state: "starting" | "listening";
  /** Where clients reach it: `http://127.0.0.1:8471`, `https://[::1]:8470` (no trailing slash);
   *  "" while starting. */
  url: string;
  tls: boolean;
  /** The address it listens on (as given to --listen) and its port; the port is 0 while starting. */
  listen: string;
  port: number;
  startedAt: string;
}

export function serveRecordPath(home: string): string {
  return join(home, "cloud", "serve.json");
}

/** The URL a client on this machine uses for a daemon listening on `host:port`: a wildcard
 *  address is reached through loopback. */
export function localUrl(host: string, port: number, tls: boolean): string {
  const reach = host === "0.0.0.0" ? "127.0.0.1" : host === "::" || host === "[::]" ? "::1" : host;
  const shown = reach.includes(":") && !reach.startsWith("[") ? `[${reach}]` : reach;
  return `${tls ? "https" : "http"}://${shown}:${port}`;
}

/** Records this process as the daemon of `home` (written whole: a reader never sees half). */
export function writeServeRecord(home: string, r: Omit<ServeRecord, "pid" | "startedAt">): ServeRecord {
  const record: ServeRecord = { pid: process.pid, ...r, startedAt: new Date().toISOString() };
  if (record.state === "listening" && !/^https?:\/\/[^/]+$/.test(record.url))
    throw new Error(`not a server URL: ${record.url}`);
  const path = serveRecordPath(home);
  makePrivateDir(join(home, "cloud"));
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record, null, 2) + "\n", { mode: PRIVATE_FILE_MODE });
  renameSync(tmp, path);
  return record;
}

/** Removes the record if it is still this process's (a newer daemon's stays). */
export function removeServeRecord(home: string, pid = process.pid): void {
  const path = serveRecordPath(home);
  if (readRecordFile(path)?.pid === pid) rmSync(path, { force: true });
}

function readRecordFile(path: string): ServeRecord | null {
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as Partial<ServeRecord>;
    if (typeof r.pid !== "number" || !Number.isInteger(r.pid) || r.pid <= 0) return null;
    if (r.state === "starting") return { ...(r as ServeRecord), url: "" };
    if (typeof r.url !== "string" || !/^https?:\/\/[^/]+$/.test(r.url)) return null;
    return { ...(r as ServeRecord), state: "listening" };
  } catch {
    return null;
  }
}

/** Whether `pid` is a running `yun serve` (where /proc tells; elsewhere: whether it runs). */
function isServeProcess(pid: number): boolean {
  if (!processAlive(pid)) return false;
  let cmd: string[];
  try {
    cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  } catch {
    return true;
  }
  return cmd.includes("serve");
}

/** The running daemon of `home`, or null (none recorded, or a stale record, which is removed). */
export function readServeRecord(home: string): ServeRecord | null {
  const path = serveRecordPath(home);
  const r = readRecordFile(path);
  if (r === null) return null;
  if (r.pid === process.pid || isServeProcess(r.pid)) return r;
  try {
    // Only if it is still the stale one (a daemon starting now may have replaced it).
    if (readRecordFile(path)?.pid === r.pid) rmSync(path, { force: true });
  } catch {}
  return null;
}

/**
 * The address of the running daemon of `home`, waiting up to `timeoutMs` for one that is still
 * starting; null when none runs. Blocks the thread while it waits (for the CLI, which has
 * nothing else to do; never call it in the daemon).
 */
export function serveUrlWhenListening(
  home: string,
  timeoutMs: number,
): { url: string } | { startingPid: number } | null {
  const deadline = Date.now() + timeoutMs;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    const r = readServeRecord(home);
    if (r === null) return null;
    if (r.state === "listening") return { url: r.url };
    if (Date.now() >= deadline) return { startingPid: r.pid };
    Atomics.wait(nap, 0, 0, 100);
  }
}

/**
 * Where running VMs are found: each monitor registers as `<vmsDir>/<name>/vm.json` (with its
 * control socket beside it by default) and removes the entry when it exits. An entry whose
 * process is gone is stale and is removed by whoever finds it.
 */
import { readFileSync, readdirSync, rmSync, writeFileSync, renameSync } from "node:fs";
import { makePrivateDir } from "../storage/private.js";
import { join } from "node:path";

export interface VmEntry {
  name: string;
  pid: number;
  apiSocket: string;
  apiPort?: number;
  /** The bearer token of the HTTP API (with apiPort). */
  apiToken?: string;
  /** The Unix socket of the VM's vsock device (the guest agent's channel), if it has one. */
  vsockSocket?: string;
  startedAt: string;
}

/** Unix socket paths longer than this do not fit sockaddr_un. */
const MAX_SOCKET_PATH = 107;

export class RegistryError extends Error {}

/** Whether process `pid` runs: it exists and is not a zombie (exited, not yet reaped). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true; // no /proc: take kill()'s word
  }
}

function readEntry(dir: string): VmEntry | null {
  try {
    const e = JSON.parse(readFileSync(join(dir, "vm.json"), "utf8")) as VmEntry;
    return typeof e.pid === "number" && typeof e.apiSocket === "string" ? e : null;
  } catch {
    return null;
  }
}

/** The default control socket of VM `name`. */
export function defaultSocketPath(vmsDir: string, name: string): string {
  return join(vmsDir, name, "api.sock");
}

/** Checks a socket path fits a Unix socket address. */
export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new RegistryError(`control socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes; choose --api-socket`);
  }
}

/**
 * Claims the name: refused while another live process has it (unless that process is `successor`'s
 * migration source, whose entry this one replaces). Creates the VM's directory.
 */
export function claimName(vmsDir: string, name: string, successorOf?: number): string {
  const dir = join(vmsDir, name);
  const existing = readEntry(dir);
  if (existing && existing.pid !== process.pid && existing.pid !== successorOf && processAlive(existing.pid)) {
    throw new RegistryError(`a VM named ${name} is already running (pid ${existing.pid})`);
  }
  // Owner-only: it holds the control socket and the HTTP API's token.
  makePrivateDir(vmsDir);
  return makePrivateDir(dir);
}

/** Publishes the entry (once the control socket listens). */
export function register(vmsDir: string, entry: VmEntry): void {
  const dir = join(vmsDir, entry.name);
  makePrivateDir(dir);
  const tmp = join(dir, `vm.json.${process.pid}`);
  writeFileSync(tmp, JSON.stringify(entry, null, 2) + "\n", { mode: 0o600 });
  renameSync(tmp, join(dir, "vm.json"));
}

/** Removes this process's entry (not a successor's that replaced it). */
export function unregister(vmsDir: string, name: string): void {
  const dir = join(vmsDir, name);
  const e = readEntry(dir);
  if (e === null || e.pid === process.pid) rmSync(dir, { recursive: true, force: true });
}

/** The running VMs; stale entries are removed on the way. */
export function listVms(vmsDir: string): VmEntry[] {
  let names: string[];
  try {
    names = readdirSync(vmsDir);
  } catch {
    return [];
  }
  const out: VmEntry[] = [];
  for (const name of names.sort()) {
    const dir = join(vmsDir, name);
    const e = readEntry(dir);
    if (e && processAlive(e.pid)) out.push(e);
    else if (e) rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

/** The entry of VM `name`, or null. */
export function findVm(vmsDir: string, name: string): VmEntry | null {
  const e = readEntry(join(vmsDir, name));
  return e && processAlive(e.pid) ? e : null;
}

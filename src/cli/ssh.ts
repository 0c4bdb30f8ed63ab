/**
 * SSH into guests with the host's OpenSSH client (Debian's openssh-client): `yun instance ssh NAME`
 * through the instance's SSH forward, and `yun ssh VM` for a local `yun run --name VM --publish
 * 0:22` VM. Key pairs made by `yun keypair create` keep their private half here, owner-only:
 * $YUN_HOME/keys/NAME (and NAME.pub). Host keys are remembered per machine (accept-new: the first
 * connection records it, a changed one is refused) in $YUN_HOME/known_hosts/ID.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { yunHome } from "../images/paths.js";
import { makePrivateDir } from "../storage/private.js";
import { findVm } from "../vmm/registry.js";
import { MonitorConnection, MonitorError } from "../vmm/client.js";

/** Where key pairs made by `yun keypair create` keep their private keys. */
export function keysDir(): string {
  return join(yunHome(), "keys");
}

/** The private key file of key pair `name` if this machine has it. */
export function privateKeyOf(name: string): string | undefined {
  const path = join(keysDir(), name);
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name) && existsSync(path) ? path : undefined;
}

/**
 * Makes an ed25519 key pair with ssh-keygen at $YUN_HOME/keys/NAME (private, 0600) and NAME.pub;
 * answers the public key line. Refuses to overwrite a key that is there.
 */
export function generateKeyPair(name: string): { privateKey: string; publicKey: string } {
  const dir = keysDir();
  makePrivateDir(dir);
  const path = join(dir, name);
  if (existsSync(path) || existsSync(path + ".pub")) {
    throw new Error(`a private key named ${name} is already in ${dir}; delete it or choose another name`);
  }
  const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `yun-${name}`, "-f", path], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.error)
    throw new Error(`ssh-keygen could not run (${(r.error as NodeJS.ErrnoException).code}): install openssh-client`);
  if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr.toString().trim()}`);
  return { privateKey: path, publicKey: readFileSync(path + ".pub", "utf8").trim() };
}

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  /** Names the machine in its known_hosts file (an instance or VM id, not the port: ports are reused). */
  alias: string;
  identity?: string;
}

/** The ssh(1) arguments for a target and an optional remote command. */
export function sshArgs(t: SshTarget, command: string[]): string[] {
  const known = join(yunHome(), "known_hosts");
  makePrivateDir(known);
  const args = [
    "-p",
    String(t.port),
    "-o",
    "StrictHostKeyChecking=accept-new",
    "-o",
    `UserKnownHostsFile=${join(known, t.alias)}`,
    "-o",
    `HostKeyAlias=${t.alias}`,
    "-o",
    "ConnectTimeout=20",
    "-o",
    "LogLevel=ERROR",
  ];
  if (t.identity) args.push("-i", t.identity, "-o", "IdentitiesOnly=yes");
  args.push(`${t.user}@${t.host}`);
  if (command.length) args.push("--", ...command);
  return args;
}

/** Runs ssh with the terminal; answers its exit status (255: ssh's own failure). */
export function runSsh(t: SshTarget, command: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn("ssh", sshArgs(t, command), { stdio: "inherit" });
    child.once("error", (e: NodeJS.ErrnoException) =>
      reject(new Error(e.code === "ENOENT" ? "ssh is not installed here: install openssh-client" : e.message)),
    );
    child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

const SSH_HELP = `Usage: yun ssh VM [--user USER] [-i KEY] [-- COMMAND...]

SSH into a local VM (yun run --name VM --publish 0:22 ...) through its published guest port 22,
with the host's ssh. USER defaults to root; -i picks the private key (default: ssh's own).
`;

/** `yun ssh VM [-- CMD]`. */
export async function sshCommand(args: string[]): Promise<number> {
  let user = "root";
  let identity: string | undefined;
  let name: string | undefined;
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      i++;
      break;
    }
    if (a === "-h" || a === "--help") {
      process.stdout.write(SSH_HELP);
      return 0;
    }
    if (a === "--user" || a === "-l") user = args[++i] ?? "";
    else if (a === "-i" || a === "--identity") identity = args[++i];
    else if (a.startsWith("-")) {
      process.stderr.write(`yun ssh: unknown option ${a}\n${SSH_HELP}`);
      return 2;
    } else if (name === undefined) name = a;
    else break;
  }
  const command = args.slice(i);
  if (name === undefined || user === "" || (identity !== undefined && identity === "")) {
    process.stderr.write(SSH_HELP);
    return 2;
  }
  const vm = findVm(join(yunHome(), "vms"), name);
  if (!vm) {
    process.stderr.write(`yun ssh: no running VM named ${name} (see yun vm list)\n`);
    return 1;
  }
  let forwards: { hostAddr: string; hostPort: number; guestPort: number }[] = [];
  try {
    const conn = await MonitorConnection.connect(vm.apiSocket);
    try {
      forwards = (await conn.request<{ forwards: typeof forwards }>("forwards", {})).forwards;
    } finally {
      conn.close();
    }
  } catch (e) {
    process.stderr.write(`yun ssh: VM ${name}: ${(e as MonitorError).message}\n`);
    return 1;
  }
  const f = forwards.find((x) => x.guestPort === 22);
  if (!f) {
    process.stderr.write(`yun ssh: VM ${name} publishes no guest port 22 (start it with --publish 0:22)\n`);
    return 1;
  }
  const host = f.hostAddr === "0.0.0.0" || f.hostAddr === "::" ? "127.0.0.1" : f.hostAddr;
  try {
    return await runSsh({ host, port: f.hostPort, user, alias: `vm-${name}`, identity }, command);
  } catch (e) {
    process.stderr.write(`yun ssh: ${(e as Error).message}\n`);
    return 1;
  }
}

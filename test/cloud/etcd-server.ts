/** A real etcd (Debian's etcd-server) on free loopback ports in a temporary directory, for tests. */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Etcd3 } from "etcd3";

/** Why etcd tests cannot run here, or null when the etcd binary is installed. */
export const ETCD_MISSING: string | null =
  spawnSync("etcd", ["--version"], { stdio: "ignore" }).status === 0
    ? null
    : "the etcd binary is not installed (apt-get install etcd-server)";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface EtcdServer {
  url: string;
  stop(): Promise<void>;
}

export async function startEtcd(): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), "yun-etcd-"));
  const client = await freePort();
  const peer = await freePort();
  const url = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const child: ChildProcess = spawn(
    "etcd",
    [
      "--name=yun-test",
      `--data-dir=${join(dir, "data")}`,
      `--listen-client-urls=${url}`,
      `--advertise-client-urls=${url}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=yun-test=${peerUrl}`,
      // A transaction writes every record it changed in one etcd transaction.
      "--max-txn-ops=10000",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  child.stderr!.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const probe = new Etcd3({ hosts: url, dialTimeout: 1000 });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await probe.get("/yun-probe").string();
        break;
      } catch {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`etcd did not start: ${log}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  } catch (e) {
    await stop();
    throw e;
  } finally {
    probe.close();
  }
  return { url, stop };
}

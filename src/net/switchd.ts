/**
 * The switch daemon of one virtual network: `node switchd.js DIR NAME [IDLE_MS]`.
 *
 * It takes the network's lock (see hub.ts), listens on DIR/NAME.sock, greets each client with
 * its pid and switches frames between clients with a LearningSwitch. IDLE_MS after the last
 * client left (or after starting, if none came) it closes and exits. Started by joinNetwork.
 */
import { chmodSync, unlinkSync } from "node:fs";
import net from "node:net";
import { pathToFileURL } from "node:url";
import { FrameReader, FrameWriter } from "./framing.js";
import { DEFAULT_IDLE_MS, networkLockName, networkSocketPath, validateNetworkName } from "./hub.js";
import { LearningSwitch } from "./switch.js";

export interface SwitchDaemon {
  readonly clients: number;
  /** Resolves once the daemon has shut down. */
  readonly done: Promise<void>;
  close(): void;
}

function listen(server: net.Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** Serves network `name` in `dir`; resolves to null when another daemon already serves it. */
export async function runSwitchDaemon(
  dir: string,
  name: string,
  idleMs = DEFAULT_IDLE_MS,
): Promise<SwitchDaemon | null> {
  validateNetworkName(name);
  const lock = net.createServer((s) => s.destroy());
  try {
    await listen(lock, networkLockName(dir, name));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EADDRINUSE") return null;
    throw e;
  }
  // Holding the lock, any socket file left here is from a daemon that died: replace it.
  const path = networkSocketPath(dir, name);
  try {
    unlinkSync(path);
  } catch {}
  const sw = new LearningSwitch();
  const sockets = new Set<net.Socket>();
  let idleTimer: NodeJS.Timeout | null = null;
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const hello = Buffer.alloc(8);
  hello.writeUInt32BE(4, 0);
  hello.writeUInt32BE(process.pid, 4);

  const server = net.createServer((socket) => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = null;
    sockets.add(socket);
    const port = sw.addPort();
    const writer = new FrameWriter(socket);
    port.attach((frame) => writer.write(frame));
    const reader = new FrameReader(
      (frame) => port.send(frame),
      () => socket.destroy(),
    );
    socket.write(hello);
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.on("error", () => {});
    socket.on("close", () => {
      port.close();
      sockets.delete(socket);
      if (sockets.size === 0) armIdle();
    });
  });

  const close = () => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = null;
    // Order matters: closing the server unlinks the socket file, and only then may the lock go,
    // or a successor could bind the path and have it unlinked under it.
    server.close();
    for (const s of sockets) s.destroy();
    lock.close();
    finish();
  };
  const armIdle = () => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = setTimeout(close, idleMs);
  };

  try {
    await listen(server, path);
    chmodSync(path, 0o600);
  } catch (e) {
    lock.close();
    throw e;
  }
  armIdle();
  return {
    get clients() {
      return sockets.size;
    },
    done,
    close,
  };
}

async function main(argv: string[]): Promise<void> {
  const [dir, name, idle] = argv;
  if (!dir || !name) {
    process.stderr.write("usage: switchd DIR NAME [IDLE_MS]\n");
    process.exit(2);
  }
  const daemon = await runSwitchDaemon(dir, name, idle ? Number(idle) : DEFAULT_IDLE_MS);
  if (!daemon) return; // another daemon serves this network
  process.on("SIGTERM", () => daemon.close());
  process.on("SIGINT", () => daemon.close());
  await daemon.done;
  process.exit(0);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`switchd: ${(e as Error).message}\n`);
    process.exit(1);
  });
}

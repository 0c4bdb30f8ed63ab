/**
 * The host side of a VM's virtio-vsock, as Firecracker's hybrid vsock: one Unix socket per VM.
 *
 *   host to guest  a program connects to PATH and writes `CONNECT <port>\n`; once the guest's
 *                  listener on that port accepts, it reads `OK <hostport>\n` and then has a byte
 *                  stream to it. A refusal (or no vsock driver) gives `ERROR <reason>\n` and EOF.
 *   guest to host  a guest connecting to host port P reaches the program listening on the Unix
 *                  socket `PATH_P`; without one, the guest's connect is refused.
 *
 * Bytes move with backpressure both ways: a socket's reads pause while the guest has not taken
 * what it sent, and the guest gets credit back only as the bytes reach the host socket.
 */
import { createServer, connect as connectUnix, type Server, type Socket } from "node:net";
import { chmodSync, lstatSync, rmSync } from "node:fs";
import type { VirtioVsock, VsockConnection, VsockHandlers } from "../devices/virtio/vsock.js";

/** Longest CONNECT line accepted. */
const MAX_REQUEST_LINE = 64;

export class VsockHost {
  /** The Unix socket, once listening. */
  path: string | null = null;
  private device: VirtioVsock | null = null;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private inode = -1;

  /** The device of the machine now running (a reset or restore brings a new one), or null. */
  attach(device: VirtioVsock | null): void {
    this.device = device;
    device?.listen((conn) => this.guestConnects(conn));
  }

  /** Listens on the Unix socket `path` (a stale socket file there is replaced). */
  async listen(path: string): Promise<void> {
    try {
      if (lstatSync(path).isSocket()) rmSync(path, { force: true });
    } catch {
      // nothing there
    }
    const server = createServer({ allowHalfOpen: true }, (s) => this.hostConnects(s));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    this.inode = lstatSync(path).ino;
    this.server = server;
    this.path = path;
  }

  /** Stops listening and drops every connection; removes the socket file if it is still ours. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    const path = this.path;
    if (path === null) return;
    try {
      // A migration's destination may have put its own socket here meanwhile: leave that one.
      if (lstatSync(path).ino === this.inode) rmSync(path, { force: true });
    } catch {
      // already gone
    }
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    s.on("close", () => this.sockets.delete(s));
    s.on("error", () => {});
  }

  private hostConnects(s: Socket): void {
    this.track(s);
    let line = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_REQUEST_LINE) refuse("the first line must be CONNECT <port>");
        return;
      }
      s.off("data", onData);
      s.pause();
      const m = /^CONNECT (\d{1,10})\r?$/.exec(line.subarray(0, nl).toString("latin1"));
      const port = m ? Number(m[1]) : NaN;
      if (!m || port > 0xffff_ffff) {
        refuse("the first line must be CONNECT <port>");
        return;
      }
      const device = this.device;
      if (device === null) {
        refuse("the VM has no vsock device");
        return;
      }
      const rest = line.subarray(nl + 1);
      let conn: VsockConnection | undefined;
      try {
        conn = device.connect(
          port,
          this.bridge(
            s,
            () => conn,
            () => s.write(`OK ${conn!.hostPort}\n`),
          ),
        );
      } catch (e) {
        refuse((e as Error).message);
        return;
      }
      this.pipe(s, conn);
      if (rest.length > 0 && !conn.write(rest)) s.pause();
    };
    const refuse = (why: string): void => {
      s.off("data", onData);
      s.end(`ERROR ${why}\n`);
    };
    s.on("data", onData);
  }

  private guestConnects(conn: VsockConnection): void {
    if (this.path === null) {
      conn.destroy();
      return;
    }
    // Half-open: the host program's end of output must not end the guest's bytes to it.
    const s = connectUnix({ path: `${this.path}_${conn.hostPort}`, allowHalfOpen: true });
    let connected = false;
    s.once("connect", () => {
      connected = true;
      if (conn.closed) {
        s.destroy();
        return;
      }
      this.track(s);
      conn.accept(this.bridge(s, () => conn));
      this.pipe(s, conn);
    });
    s.once("error", () => {
      if (!connected) conn.destroy();
    });
  }

  /** The handlers that carry guest events to socket `s`. */
  private bridge(s: Socket, connection: () => VsockConnection | undefined, open?: () => void): VsockHandlers {
    let opened = open === undefined;
    return {
      open: () => {
        opened = true;
        open?.();
        s.resume();
      },
      data: (bytes) => {
        s.write(bytes, () => connection()?.consumed(bytes.length));
      },
      end: () => s.end(),
      close: (reason, error) => {
        if (!opened) s.end(`ERROR ${reason}\n`);
        else if (error) s.destroy();
        else s.end();
      },
      drain: () => s.resume(),
    };
  }

  /** Socket to guest: reads pause while the connection's queue is full. */
  private pipe(s: Socket, conn: VsockConnection): void {
    const onData = (chunk: Buffer): void => {
      if (!conn.write(chunk)) s.pause();
    };
    s.on("data", onData);
    s.on("end", () => conn.end());
    s.on("close", () => conn.close());
    if (!conn.closed) s.resume();
  }
}

/**
 * The monitor's control API (docs/vm-api.md): newline-delimited JSON over a Unix socket, and the
 * same operations as HTTP on loopback when asked. A malformed request gets an error answer and the
 * connection stays usable; a request that does not fit the VM's state gets a 409-class error.
 */
import type { VncServer } from "./display/vnc.js";
import { createServer as createNetServer, type Server, type Socket } from "node:net";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { chmodSync, existsSync, rmSync } from "node:fs";
import { timingSafeEqual } from "node:crypto";
import { VmMonitor, StateError, CONSOLE_HISTORY_BYTES } from "./monitor.js";
import { SnapshotError } from "./snapshot.js";
import {
  checkMigrationToken,
  migrateTo,
  MigrationError,
  normalizeFingerprint,
  type MigrationTarget,
} from "./migrate.js";

/** The operations, by name; each takes the request's arguments and answers a result or throws. */
type Op = (args: Record<string, unknown>) => Promise<unknown> | unknown;

class BadRequest extends Error {}
class NotFound extends Error {}

function portArg(args: Record<string, unknown>, name: string, allowZero: boolean): number {
  const v = args[name];
  if (typeof v !== "number" || !Number.isInteger(v) || v < (allowZero ? 0 : 1) || v > 65535) {
    throw new BadRequest(`"${name}" must be a port number ${allowZero ? 0 : 1}-65535`);
  }
  return v;
}

function stringArg(args: Record<string, unknown>, name: string): string {
  const v = args[name];
  if (typeof v !== "string" || v === "") throw new BadRequest(`"${name}" must be a non-empty string`);
  return v;
}

export class ControlServer {
  private readonly ops: Record<string, Op>;
  private socketServer: Server | null = null;
  private httpServer: ReturnType<typeof createHttpServer> | null = null;
  private readonly sockets = new Set<Socket>();
  private socketPath: string | null = null;
  /** The bearer token HTTP requests must present. */
  private httpToken = "";
  /** Requests being answered. */
  private inFlight = 0;
  /** The running migration's cancel switch: one migration at a time. */
  private migration: AbortController | null = null;
  /** The VM's VNC server, when it has a display: the "display" op hands a connection to it. */
  display: VncServer | null = null;

  constructor(private readonly monitor: VmMonitor) {
    const m = monitor;
    this.ops = {
      describe: () => m.describe(),
      pause: () => (m.pause(), { state: m.state }),
      resume: () => (m.resume(), { state: m.state }),
      stop: () => {
        m.stop();
        return { state: "stopped" };
      },
      reset: () => (m.reset(), { state: m.state }),
      metrics: () => m.metrics(),
      snapshot: (a) => m.snapshot(stringArg(a, "dir"), a.incremental === true),
      restore: (a) => m.restoreInPlace(stringArg(a, "dir")),
      migrate: async (a) => {
        const host = stringArg(a, "host");
        const port = a.port;
        if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
          throw new BadRequest(`"port" must be a port number 1-65535`);
        }
        const token = stringArg(a, "token");
        const problem = checkMigrationToken(token);
        if (problem) throw new BadRequest(`"token": ${problem}`);
        const target: MigrationTarget = { host, port, token };
        if (a.tls !== undefined) {
          const t = a.tls as Record<string, unknown> | null;
          if (typeof t !== "object" || t === null || Array.isArray(t)) throw new BadRequest(`"tls" must be an object`);
          const ca = t.ca === undefined ? undefined : stringArg(t, "ca");
          const fingerprint = t.fingerprint === undefined ? undefined : stringArg(t, "fingerprint");
          if (ca === undefined && fingerprint === undefined) {
            throw new BadRequest(`"tls" needs "ca" (a PEM certificate) or "fingerprint" (SHA-256 of the certificate)`);
          }
          if (fingerprint !== undefined && normalizeFingerprint(fingerprint) === null) {
            throw new BadRequest(`"tls.fingerprint" must be 64 hex digits (colons allowed)`);
          }
          target.tls = { ca, fingerprint };
        }
        if (this.migration) throw new StateError("a migration is already running");
        this.migration = new AbortController();
        try {
          return await migrateTo(m, target, this.migration.signal);
        } finally {
          this.migration = null;
        }
      },
      forwards: () => ({ forwards: m.forwards() }),
      "forward-add": async (a) => {
        const hostAddr = a.hostAddr === undefined ? "127.0.0.1" : stringArg(a, "hostAddr");
        const hostPort = portArg(a, "hostPort", true);
        const guestPort = portArg(a, "guestPort", false);
        return m.addForward({ hostAddr, hostPort, guestPort, proto: "tcp" });
      },
      "forward-remove": (a) => {
        const hostAddr = a.hostAddr === undefined ? "127.0.0.1" : stringArg(a, "hostAddr");
        const hostPort = portArg(a, "hostPort", false);
        if (!m.removeForward(hostAddr, hostPort)) throw new NotFound(`nothing is published at ${hostAddr}:${hostPort}`);
        return { removed: true };
      },
      cancel: () => {
        if (!this.migration) throw new StateError("no migration is running");
        this.migration.abort();
        return { cancelled: true };
      },
    };
  }

  /** Answers one request; the error kinds map to HTTP statuses. */
  async call(op: unknown, args: Record<string, unknown>): Promise<{ status: number; body: unknown }> {
    if (typeof op !== "string" || !Object.hasOwn(this.ops, op)) {
      return { status: 404, body: { error: `unknown operation ${JSON.stringify(op)}` } };
    }
    this.inFlight++;
    try {
      return { status: 200, body: await this.ops[op](args) };
    } catch (e) {
      const status =
        e instanceof BadRequest || e instanceof SnapshotError
          ? 400
          : e instanceof NotFound
            ? 404
            : e instanceof StateError || e instanceof MigrationError
              ? 409
              : 500;
      return { status, body: { error: (e as Error).message } };
    } finally {
      // Answered on the next turn, after the caller wrote the answer.
      setImmediate(() => this.inFlight--);
    }
  }

  /** Listens on a Unix socket at `path` (mode 0600: the API is the VM's owner's only). */
  async listenSocket(path: string): Promise<void> {
    if (existsSync(path)) rmSync(path, { force: true });
    const server = createNetServer((socket) => this.serveConnection(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
    this.socketServer = server;
    this.socketPath = path;
  }

  /**
   * Serves HTTP on 127.0.0.1:port (0: any free port); returns the port. Every request must carry
   * `Authorization: Bearer <token>`: loopback is open to every local user, the Unix socket is not.
   */
  async listenHttp(port: number, token: string): Promise<number> {
    this.httpToken = token;
    const server = createHttpServer((req, res) => void this.serveHttp(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    this.httpServer = server;
    const addr = server.address();
    return typeof addr === "object" && addr ? addr.port : port;
  }

  /** Stops listening; requests in flight (a migration's answer) are answered first, for up to 5 s. */
  async close(): Promise<void> {
    this.socketServer?.close();
    this.httpServer?.close();
    if (this.socketPath) rmSync(this.socketPath, { force: true });
    const deadline = Date.now() + 5000;
    while (this.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const s of this.sockets) s.end();
    this.httpServer?.closeAllConnections();
  }

  private serveConnection(socket: Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => {});
    let buffered = "";
    let raw = false;
    let piped = false;
    const answer = (id: unknown, ok: boolean, payload: unknown): void => {
      if (socket.writable)
        socket.write(JSON.stringify(ok ? { id, ok, result: payload } : { id, ok, error: payload }) + "\n");
    };
    const onLine = async (line: string): Promise<void> => {
      if (line.trim() === "") return;
      let req: Record<string, unknown>;
      try {
        const parsed: unknown = JSON.parse(line);
        if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
        req = parsed as Record<string, unknown>;
      } catch {
        answer(null, false, "a request is one JSON object per line");
        return;
      }
      const id = req.id ?? null;
      if (req.op === "console") {
        answer(id, true, { attached: true });
        raw = true;
        piped = req.piped === true;
        this.attachRaw(socket, req.replay === true, piped);
        return;
      }
      if (req.op === "display") {
        const display = this.display;
        if (display === null) {
          answer(id, false, "this VM has no display (it was started without --display vnc)");
          return;
        }
        answer(id, true, { attached: true });
        // The connection is the VNC client's from here on: the control socket (mode 0600) or the
        // cloud's token-checked WebSocket already said who it is, so no VNC password is asked.
        raw = true;
        socket.removeAllListeners("data");
        const rest = Buffer.from(buffered, "utf8");
        buffered = "";
        display.serve(socket);
        if (rest.length > 0) socket.unshift(rest);
        return;
      }
      if (req.op === "watch") {
        answer(id, true, { state: this.monitor.state });
        const unwatch = this.monitor.watchState((state) => {
          if (socket.writable) socket.write(JSON.stringify({ event: "state", state }) + "\n");
        });
        socket.on("close", unwatch);
        return;
      }
      const { status, body } = await this.call(req.op, req);
      if (status === 200) answer(id, true, body);
      else answer(id, false, (body as { error: string }).error);
    };
    socket.on("data", (chunk: Buffer) => {
      if (raw) return; // the console took the connection over
      buffered += chunk.toString("utf8");
      if (buffered.length > 1024 * 1024) {
        answer(null, false, "request line too long");
        socket.destroy();
        return;
      }
      let nl: number;
      while (!raw && (nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        void onLine(line);
      }
      if (raw && buffered.length > 0) {
        const keys = Buffer.from(buffered, "utf8");
        if (piped) this.monitor.typeIn(keys);
        else this.monitor.input(keys);
        buffered = "";
      }
    });
  }

  /**
   * Turns the connection into the console: output (history first if asked) out, keys in. A piped
   * client is a script, not a terminal: the monitor answers the guest's terminal queries for it
   * and holds its keys until the guest's shell is ready (VmMonitor.typeIn).
   */
  private attachRaw(socket: Socket, replay: boolean, piped: boolean): void {
    if (replay) socket.write(this.monitor.history.contents());
    // A client that does not keep up loses output rather than growing this process's buffers
    // (the history keeps the newest CONSOLE_HISTORY_BYTES for a later replay).
    const detach = this.monitor.attachConsole(
      (bytes) => {
        if (socket.writable && socket.writableLength < CONSOLE_HISTORY_BYTES) socket.write(bytes);
      },
      { piped },
    );
    socket.on("data", (chunk: Buffer) => (piped ? this.monitor.typeIn(chunk) : this.monitor.input(chunk)));
    socket.on("close", detach);
  }

  private async serveHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body) + "\n");
    };
    const auth = req.headers.authorization ?? "";
    const given = Buffer.from(auth.startsWith("Bearer ") ? auth.slice(7) : "");
    const wanted = Buffer.from(this.httpToken);
    if (wanted.length === 0 || given.length !== wanted.length || !timingSafeEqual(given, wanted)) {
      return send(401, { error: "this API needs Authorization: Bearer <token> (the apiToken in the VM's vm.json)" });
    }
    const url = new URL(req.url ?? "/", "http://localhost");
    const routes: Record<string, [string, string]> = {
      "/vm": ["GET", "describe"],
      "/vm/metrics": ["GET", "metrics"],
      "/vm/pause": ["POST", "pause"],
      "/vm/resume": ["POST", "resume"],
      "/vm/stop": ["POST", "stop"],
      "/vm/reset": ["POST", "reset"],
      "/vm/snapshot": ["POST", "snapshot"],
      "/vm/restore": ["POST", "restore"],
      "/vm/migrate": ["POST", "migrate"],
      "/vm/cancel": ["POST", "cancel"],
      "/vm/forwards": ["GET", "forwards"],
      "/vm/forwards/add": ["POST", "forward-add"],
      "/vm/forwards/remove": ["POST", "forward-remove"],
    };
    const route = routes[url.pathname];
    if (!route) return send(404, { error: `no such path: ${url.pathname}` });
    if (req.method !== route[0]) return send(405, { error: `${url.pathname} takes ${route[0]}` });
    let args: Record<string, unknown> = {};
    if (req.method === "POST") {
      let text = "";
      for await (const chunk of req) {
        text += (chunk as Buffer).toString("utf8");
        if (text.length > 65536) return send(400, { error: "request body too large" });
      }
      if (text.trim() !== "") {
        try {
          const parsed: unknown = JSON.parse(text);
          if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
          args = parsed as Record<string, unknown>;
        } catch {
          return send(400, { error: "the request body must be a JSON object" });
        }
      }
    }
    const { status, body } = await this.call(route[1], args);
    send(status, body);
  }
}

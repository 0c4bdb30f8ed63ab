/**
 * A stand-alone migration peer for the attacker tests, run as another local user (nobody): it
 * speaks the wire format by hand, as an attacker would, and prints one JSON line with the frames
 * the destination sent and when it closed the connection.
 *
 *   node migration-peer.js PORT MODE [TOKEN] [DISK...]
 *
 * MODE: silent (connect, say nothing), garbage (random bytes after the challenge), no-proof (a
 * HELLO with a zero proof), proof (a HELLO proved with TOKEN: a wrong one, or the real one when
 * the test plays a lying source), probe-on-stdin (connect once a line arrives on stdin, say nothing).
 * The HELLO's spec names DISK... as the VM's disks and "/etc" as its throwaway directory.
 */
import { connect } from "node:net";
import { createHmac, randomBytes } from "node:crypto";

const [portText, mode, token = "", ...disks] = process.argv.slice(2);

function frame(type: number, ...parts: Buffer[]): Buffer {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeUInt32LE(len, 1);
  return Buffer.concat([head, ...parts]);
}

function hello(nonce: Buffer): Buffer {
  const body = Buffer.from(
    JSON.stringify({
      version: 2,
      spec: {
        name: "evil",
        memoryMiB: 64,
        cpus: 1,
        engine: "jit",
        append: "",
        kernel: "/etc/passwd",
        initrd: "/etc/shadow",
        firmware: null,
        disks: disks.map((path) => ({ path, format: "raw", readOnly: false })),
        net: { kind: "user", publish: [{ hostAddr: "0.0.0.0", hostPort: 2222, guestPort: 22, proto: "tcp" }] },
        mac: "52:54:00:00:00:66",
        cpuCap: null,
      },
      disks: disks.map(() => ({ size: 4096, readOnly: false, serial: "evil" })),
      ownedDir: "/etc",
      sourcePid: 1,
      nonce: randomBytes(32).toString("base64"),
    }),
  );
  const proof =
    mode === "no-proof"
      ? Buffer.alloc(32)
      : createHmac("sha256", token).update("yun migration hello\0").update(nonce).update(body).digest();
  return frame(1, proof, body);
}

function run(): void {
  const t0 = Date.now();
  const frames: { type: number; json: unknown }[] = [];
  let buf = Buffer.alloc(0);
  const s = connect({ host: "127.0.0.1", port: Number(portText) });
  s.on("data", (b: Buffer) => {
    buf = Buffer.concat([buf, b]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32LE(1)) {
      const len = buf.readUInt32LE(1);
      const f = { type: buf[0], json: JSON.parse(buf.subarray(5, 5 + len).toString("utf8")) as unknown };
      buf = buf.subarray(5 + len);
      frames.push(f);
      if (f.type !== 8) continue; // the challenge: answer it
      const nonce = Buffer.from((f.json as { nonce: string }).nonce, "base64");
      if (mode === "garbage") s.write(randomBytes(200));
      else if (mode === "no-proof" || mode === "proof") s.write(hello(nonce));
    }
  });
  const done = (error?: string): void => {
    process.stdout.write(JSON.stringify({ frames, closedMs: Date.now() - t0, error }) + "\n");
    process.exit(0);
  };
  s.on("error", (e) => done(e.message));
  s.on("close", () => done());
}

if (mode === "probe-on-stdin") process.stdin.once("data", run);
else run();

/**
 * Host-side throughput of user-mode TCP NAT: a frame-level guest (guest.ts) in this process moves
 * data through UserNet to and from a host socket on 127.0.0.1. The guest stack's own cost is
 * included, so a real guest is the limit long before UserNet is.
 */
import net from "node:net";
import { GuestStack } from "./guest.js";
import { GATEWAY_IP } from "./link.js";
import { UserNet } from "./usernet.js";

export interface UserNetBenchResult {
  /** MB/s (10^6 bytes per second) from the guest to a host socket. */
  guestToHost: number;
  /** MB/s from a host socket to the guest. */
  hostToGuest: number;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)),
  );
}

export async function benchUserNet(bytes = 32 * 1024 * 1024): Promise<UserNetBenchResult> {
  const payload = Buffer.alloc(bytes, 0x5a);
  let sinkDone: (n: number) => void = () => {};
  const sink = net.createServer((s) => {
    let n = 0;
    s.on("data", (d) => (n += d.length));
    s.on("end", () => {
      s.end();
      sinkDone(n);
    });
  });
  const source = net.createServer((s) => {
    s.on("error", () => {});
    s.end(payload);
  });
  const usernet = new UserNet({ dnsServers: [] });
  const guest = new GuestStack(usernet);
  try {
    const sinkPort = await listen(sink);
    const sourcePort = await listen(source);
    await usernet.start();
    await guest.dhcp();

    const up = await guest.connect(GATEWAY_IP, sinkPort);
    const received = new Promise<number>((r) => (sinkDone = r));
    let t0 = performance.now();
    up.write(payload);
    up.end();
    const n = await received;
    const upSeconds = (performance.now() - t0) / 1000;
    if (n !== bytes) throw new Error(`bench: host received ${n} of ${bytes} bytes`);

    t0 = performance.now();
    const down = await guest.connect(GATEWAY_IP, sourcePort);
    await down.finished;
    const downSeconds = (performance.now() - t0) / 1000;
    if (down.received !== bytes) throw new Error(`bench: guest received ${down.received} of ${bytes} bytes`);
    down.end();
    return { guestToHost: bytes / 1e6 / upSeconds, hostToGuest: bytes / 1e6 / downSeconds };
  } finally {
    guest.close();
    usernet.close();
    sink.close();
    source.close();
  }
}

/** MB/s through user-mode TCP NAT, both directions together (total bytes over total time). */
export async function benchUserNetLoopback(bytes = 32 * 1024 * 1024): Promise<number> {
  const r = await benchUserNet(bytes);
  return 2 / (1 / r.guestToHost + 1 / r.hostToGuest);
}

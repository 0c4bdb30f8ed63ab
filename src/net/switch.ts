/**
 * A learning Ethernet switch between in-process ports.
 *
 * Each frame's source MAC is learned on the port it came in on; a unicast frame to a learned MAC
 * goes out of that port only, anything else (broadcast, multicast, unknown destination) floods
 * to every port but the one it came from. Entries age out and the table is bounded, so a guest
 * that makes up source addresses cannot grow it without limit.
 *
 * A port is a NetBackend: plug a VM's network device into `addPort()`, or connect another backend
 * (user-mode NAT, a link to a switch daemon) with `connect()`.
 */
import type { NetBackend } from "../devices/netdev.js";
import { ETH_HLEN, macKey, parseMac } from "./ethernet.js";

export interface SwitchOptions {
  /** Most MAC addresses remembered (default 4096); when full the oldest entry is forgotten. */
  maxMacs?: number;
  /** A MAC not seen for this long is forgotten (default 300 s, as Linux bridges). */
  ageMs?: number;
  /** Clock in ms (tests substitute one). */
  now?: () => number;
}

export interface SwitchStats {
  framesIn: number;
  framesOut: number;
  /** Frames a port's receiver refused (no room). */
  dropped: number;
}

interface MacEntry {
  port: SwitchPort;
  seen: number;
}

export class SwitchPort implements NetBackend {
  /** @internal the receiver; null until attach() */
  deliver: ((frame: Uint8Array) => boolean) | null = null;
  framesIn = 0;
  framesOut = 0;
  dropped = 0;
  closed = false;

  constructor(
    private readonly sw: LearningSwitch,
    readonly id: number,
  ) {}

  /** A frame entering the switch from this port. */
  send(frame: Uint8Array): void {
    if (!this.closed) this.sw.input(this, frame);
  }

  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.deliver = null;
    this.sw.removePort(this);
  }
}

export class LearningSwitch {
  private readonly ports: SwitchPort[] = [];
  private readonly table = new Map<number, MacEntry>();
  private readonly maxMacs: number;
  private readonly ageMs: number;
  private readonly now: () => number;
  private nextId = 1;
  private lastSweep = 0;

  constructor(options: SwitchOptions = {}) {
    this.maxMacs = options.maxMacs ?? 4096;
    this.ageMs = options.ageMs ?? 300_000;
    this.now = options.now ?? Date.now;
  }

  get portCount(): number {
    return this.ports.length;
  }

  get macCount(): number {
    return this.table.size;
  }

  /** A new port; frames for it go to the callback given to the port's attach(). */
  addPort(): SwitchPort {
    const port = new SwitchPort(this, this.nextId++);
    this.ports.push(port);
    return port;
  }

  /** Plugs `backend` into a new port: its frames enter the switch, the switch's frames go to its send(). */
  connect(backend: NetBackend): SwitchPort {
    const port = this.addPort();
    port.attach((frame) => {
      backend.send(frame);
      return true;
    });
    backend.attach((frame) => {
      port.send(frame);
      return true;
    });
    return port;
  }

  /** The port a MAC was learned on, if it is still in the table. */
  lookup(mac: string): SwitchPort | undefined {
    const e = this.table.get(macKey(parseMac(mac), 0));
    return e && this.now() - e.seen < this.ageMs ? e.port : undefined;
  }

  removePort(port: SwitchPort): void {
    const i = this.ports.indexOf(port);
    if (i < 0) return;
    this.ports.splice(i, 1);
    for (const [k, e] of this.table) if (e.port === port) this.table.delete(k);
  }

  stats(): SwitchStats {
    let framesIn = 0;
    let framesOut = 0;
    let dropped = 0;
    for (const p of this.ports) {
      framesIn += p.framesIn;
      framesOut += p.framesOut;
      dropped += p.dropped;
    }
    return { framesIn, framesOut, dropped };
  }

  /** Forwards one frame that arrived on `from`. */
  input(from: SwitchPort, frame: Uint8Array): void {
    if (frame.length < ETH_HLEN) return;
    from.framesIn++;
    const now = this.now();
    if ((frame[6] & 1) === 0) this.learn(frame, from, now);
    if ((frame[0] & 1) === 0) {
      const e = this.table.get(macKey(frame, 0));
      if (e && now - e.seen < this.ageMs) {
        if (e.port !== from) this.output(e.port, frame);
        return;
      }
    }
    const ports = this.ports;
    for (let i = 0; i < ports.length; i++) if (ports[i] !== from) this.output(ports[i], frame);
  }

  private output(port: SwitchPort, frame: Uint8Array): void {
    const deliver = port.deliver;
    if (!deliver) return;
    if (deliver(frame)) port.framesOut++;
    else port.dropped++;
  }

  private learn(frame: Uint8Array, port: SwitchPort, now: number): void {
    const key = macKey(frame, 6);
    const e = this.table.get(key);
    if (e) {
      e.port = port;
      e.seen = now;
      return;
    }
    if (this.table.size >= this.maxMacs) this.evict(now);
    this.table.set(key, { port, seen: now });
  }

  /** Makes room: forget expired entries (at most one sweep a second), else the one learned longest ago. */
  private evict(now: number): void {
    if (now - this.lastSweep >= 1000) {
      this.lastSweep = now;
      for (const [k, e] of this.table) if (now - e.seen >= this.ageMs) this.table.delete(k);
    }
    if (this.table.size >= this.maxMacs) this.table.delete(this.table.keys().next().value!);
  }
}

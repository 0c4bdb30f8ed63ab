/**
 * The instance metadata service a guest reaches at http://169.254.169.254/, served in-process by
 * the VM's own network path: user-mode NAT hands TCP connections to 169.254.169.254:80 to
 * `connect()` instead of a host socket (intercept and redirect). A VM's service holds only that
 * VM's record, so a guest can only ever read its own metadata, whatever address or MAC it claims;
 * a request from a source address other than the instance's assigned one is answered 404.
 *
 * Two layouts, as real cloud-init reads them:
 * - OpenStack: /openstack (versions), /openstack/latest/meta_data.json, user_data,
 *   network_data.json, vendor_data.json, vendor_data2.json (any version name serves latest's data).
 * - EC2: /latest/meta-data/ (a listing; directories end in "/"), instance-id, local-hostname,
 *   hostname, local-ipv4, mac, public-keys/0/openssh-key, ..., and /latest/user-data.
 */
import http from "node:http";
import { Duplex } from "node:stream";
import type { NetBackend } from "../devices/netdev.js";
import {
  ARP_LEN,
  ARP_REPLY,
  ARP_REQUEST,
  copyBytes,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  macEquals,
  writeArp,
  writeEthernet,
} from "./ethernet.js";
import {
  internetChecksum,
  IP_OFF,
  IPV4_HLEN,
  L4_OFF,
  parseIpv4Address,
  PROTO_TCP,
  readU16,
  readU32,
  writeIpv4Header,
} from "./ip.js";
import { DEFAULT_ADDRESSES, METADATA_IP, type GuestLink } from "./link.js";
import { TcpNat, type HostSocket } from "./tcp.js";

/** One instance's metadata: what `yun run --metadata FILE` reads (the cloud writes it, owner-only). */
export interface InstanceMetadata {
  /** The instance's id: cloud-init's instance-id (a new id is a new instance: first-boot work runs again). */
  instanceId: string;
  /** The instance's name, which is also its host name. */
  name: string;
  hostname: string;
  /** Key pair name → OpenSSH public key line. */
  publicKeys: Record<string, string>;
  /** User data as given (a #cloud-config document, a #! script, ...), or null. */
  userData: string | null;
  /** The instance's assigned IPv4 address; requests from any other source get 404. */
  address: string;
  mac: string;
  /** The project's id, as OpenStack's project_id. */
  projectId?: string;
  /** The flavor's name, as EC2's instance-type. */
  flavor?: string;
  /** The image's id, as EC2's ami-id. */
  imageId?: string;
}

/** Checks a parsed metadata file, one sentence per problem. */
export function parseInstanceMetadata(value: unknown): InstanceMetadata {
  const o = value as Record<string, unknown>;
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new Error("metadata must be a JSON object");
  const str = (k: string, optional = false): void => {
    if (optional && o[k] === undefined) return;
    if (typeof o[k] !== "string" || o[k] === "") throw new Error(`metadata field ${k} must be a non-empty string`);
  };
  for (const k of ["instanceId", "name", "hostname", "address", "mac"]) str(k);
  for (const k of ["projectId", "flavor", "imageId"]) str(k, true);
  if (o.userData !== null && typeof o.userData !== "string")
    throw new Error("metadata field userData must be a string or null");
  const keys = o.publicKeys;
  if (typeof keys !== "object" || keys === null || Array.isArray(keys)) {
    throw new Error("metadata field publicKeys must be an object of key name to public key");
  }
  for (const [k, v] of Object.entries(keys)) {
    if (typeof v !== "string") throw new Error(`metadata public key ${k} must be a string`);
  }
  return o as unknown as InstanceMetadata;
}

/** One end of an in-process stream pair: what one end writes, the other reads. */
class PipeEnd extends Duplex implements HostSocket {
  peer: PipeEnd | null = null;
  /** A write the peer had no room for, completed when the peer reads again. */
  private blocked: (() => void) | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {
    const peer = this.peer;
    const cb = peer?.blocked;
    if (peer && cb) {
      peer.blocked = null;
      cb();
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const peer = this.peer;
    if (!peer || peer.destroyed) return cb(new Error("the other end is closed"));
    if (peer.push(chunk)) cb();
    else this.blocked = () => cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.peer?.push(null);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    const peer = this.peer;
    this.peer = null;
    if (peer && !peer.destroyed) peer.destroy();
    cb(err);
  }

  setNoDelay(): this {
    return this;
  }

  resetAndDestroy(): this {
    return this.destroy();
  }

  /** As net.Socket's (the HTTP server arms it for idle connections): 'timeout' after `ms` of nothing. */
  setTimeout(ms: number, cb?: () => void): this {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (cb) this.once("timeout", cb);
    if (ms > 0) this.timer = setTimeout(() => this.emit("timeout"), ms).unref();
    return this;
  }
}

function pipePair(): [PipeEnd, PipeEnd] {
  const a = new PipeEnd();
  const b = new PipeEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/** Versions the OpenStack layout lists; any of them, and "latest", serve the same data. */
const OPENSTACK_VERSIONS = [
  "2012-08-10",
  "2013-04-04",
  "2013-10-17",
  "2015-10-15",
  "2016-06-30",
  "2016-10-06",
  "2017-02-22",
  "2018-08-27",
  "latest",
];
/** Request bodies the service reads at most (it needs none). */
const MAX_REQUEST_BYTES = 16 * 1024;

type Answer = { status: number; type: string; body: string };

function text(body: string): Answer {
  return { status: 200, type: "text/plain; charset=utf-8", body };
}
function json(value: unknown): Answer {
  return { status: 200, type: "application/json", body: JSON.stringify(value) };
}
const NOT_FOUND: Answer = { status: 404, type: "text/plain; charset=utf-8", body: "404 Not Found\n" };

export class MetadataService {
  private readonly server: http.Server;
  /** Server ends of connections whose source is the instance's own address. */
  private readonly fromInstance = new WeakSet<object>();

  constructor(private readonly md: InstanceMetadata) {
    this.server = http.createServer({ maxHeaderSize: MAX_REQUEST_BYTES }, (req, res) => {
      const allowed = this.fromInstance.has(req.socket);
      const a = allowed ? this.answer(req.method ?? "GET", req.url ?? "/") : NOT_FOUND;
      res.shouldKeepAlive = false;
      res.writeHead(a.status, { "Content-Type": a.type, "Content-Length": Buffer.byteLength(a.body) });
      res.end(req.method === "HEAD" ? undefined : a.body);
      req.resume();
    });
    this.server.keepAliveTimeout = 5000;
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 10_000;
  }

  /**
   * A new connection from the guest: the stream to splice it to. `fromInstanceAddress`: the
   * connection's source address is the instance's assigned one (otherwise every answer is 404).
   */
  connect(fromInstanceAddress: boolean): HostSocket {
    const [guestSide, serverSide] = pipePair();
    if (fromInstanceAddress) this.fromInstance.add(serverSide);
    serverSide.on("error", () => {});
    this.server.emit("connection", serverSide);
    return guestSide;
  }

  /** The answer to a request from the instance itself. */
  answer(method: string, url: string): Answer {
    if (method !== "GET" && method !== "HEAD") return { ...NOT_FOUND, status: 405, body: "405 Method Not Allowed\n" };
    let path = url.split("?")[0];
    try {
      path = decodeURIComponent(path);
    } catch {
      return NOT_FOUND;
    }
    const parts = path.split("/").filter((p) => p !== "");
    if (parts.length === 0) return text(["latest", "openstack"].join("\n") + "\n");
    if (parts[0] === "openstack") return this.openstack(parts.slice(1), path.endsWith("/"));
    if (parts[0] === "latest" || /^\d{4}-\d{2}-\d{2}$/.test(parts[0])) return this.ec2(parts.slice(1));
    return NOT_FOUND;
  }

  private openstack(parts: string[], dir: boolean): Answer {
    const md = this.md;
    if (parts.length === 0) return text(OPENSTACK_VERSIONS.join("\n") + "\n");
    if (!OPENSTACK_VERSIONS.includes(parts[0])) return NOT_FOUND;
    if (parts.length === 1) {
      const files = ["meta_data.json", "network_data.json", "vendor_data.json", "vendor_data2.json"];
      if (md.userData !== null) files.push("user_data");
      return text(files.join("\n") + "\n");
    }
    if (parts.length !== 2 || dir) return NOT_FOUND;
    switch (parts[1]) {
      case "meta_data.json": {
        const keys = Object.entries(md.publicKeys);
        return json({
          uuid: md.instanceId,
          name: md.name,
          hostname: md.hostname,
          availability_zone: "yun",
          launch_index: 0,
          project_id: md.projectId ?? null,
          public_keys: md.publicKeys,
          keys: keys.map(([name, data]) => ({ name, type: "ssh", data })),
          meta: {},
          devices: [],
        });
      }
      case "user_data":
        return md.userData === null ? NOT_FOUND : text(md.userData);
      case "network_data.json":
        // One NIC, addressed by DHCP (which hands out the same assigned address).
        return json({
          links: [{ id: "tap0", type: "phy", ethernet_mac_address: md.mac, mtu: 1500 }],
          networks: [{ id: "network0", link: "tap0", type: "ipv4_dhcp", network_id: "yun" }],
          services: [],
        });
      case "vendor_data.json":
      case "vendor_data2.json":
        return json({});
    }
    return NOT_FOUND;
  }

  private ec2(parts: string[]): Answer {
    const md = this.md;
    if (parts.length === 0) return text(md.userData === null ? "meta-data\n" : "meta-data\nuser-data\n");
    if (parts[0] === "user-data") return parts.length === 1 && md.userData !== null ? text(md.userData) : NOT_FOUND;
    if (parts[0] !== "meta-data") return NOT_FOUND;
    const keys = Object.entries(md.publicKeys);
    const leaves: Record<string, string> = {
      "ami-id": md.imageId ?? "yun-image",
      hostname: md.hostname,
      "instance-id": md.instanceId,
      "instance-type": md.flavor ?? "yun",
      "local-hostname": md.hostname,
      "local-ipv4": md.address,
      mac: md.mac,
      "placement/availability-zone": "yun",
    };
    const rest = parts.slice(1).join("/");
    if (rest === "") {
      const top = [
        "ami-id",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "mac",
        "placement/",
      ];
      if (keys.length) top.push("public-keys/");
      return text(top.join("\n"));
    }
    if (rest === "placement") return text("availability-zone");
    if (rest in leaves) return text(leaves[rest]);
    if (parts[1] === "public-keys" && keys.length) {
      if (parts.length === 2) return text(keys.map(([name], i) => `${i}=${name}`).join("\n"));
      const i = Number(parts[2]);
      if (!/^\d+$/.test(parts[2]) || i >= keys.length) return NOT_FOUND;
      if (parts.length === 3) return text("openssh-key");
      if (parts.length === 4 && parts[3] === "openssh-key") return text(keys[i][1] + "\n");
    }
    return NOT_FOUND;
  }

  close(): void {
    this.server.close();
  }
}

/** The MAC the tap answers ARP for 169.254.169.254 with (locally administered, like slirp's 52:55). */
const METADATA_MAC = Uint8Array.of(0x52, 0x55, 0xa9, 0xfe, 0xa9, 0xfe);

/**
 * The metadata service for a NIC on a switch (`yun run --net NAME --metadata FILE`): wraps the
 * NIC's backend and answers the guest's TCP to 169.254.169.254:80 itself, before frames reach the
 * switch (and ARP for that address, for guests with an on-link route to it); every other frame
 * passes through untouched. `address` is the instance's assigned IPv4 address.
 */
export class MetadataTap implements NetBackend {
  private deliver: ((frame: Uint8Array) => boolean) | null = null;
  private readonly tx = Buffer.alloc(ETH_HLEN + 65535);
  private readonly arpBuf = new Uint8Array(ETH_HLEN + ARP_LEN);
  private guestMac: Uint8Array | null = null;
  /** The MAC the guest sent its metadata traffic to (its gateway's, or ours after ARP). */
  private routerMac: Uint8Array = METADATA_MAC;
  private guestIp = 0;
  private ipId = 1;
  private readonly tcp: TcpNat;

  constructor(
    private readonly inner: NetBackend,
    private readonly service: MetadataService,
    address: string,
  ) {
    const assigned = parseIpv4Address(address);
    const guestIp = (): number => this.guestIp;
    const ready = (): boolean => this.deliver !== null && this.guestMac !== null;
    const link: GuestLink = {
      tx: this.tx,
      emitIpv4: (proto, src, dst, len) => this.emitIpv4(proto, src, dst, len),
      emitUdp: () => {},
      get guestIp() {
        return guestIp();
      },
      addresses: { ...DEFAULT_ADDRESSES, guest: assigned },
      get ready() {
        return ready();
      },
    };
    this.tcp = new TcpNat(
      link,
      () => undefined,
      (src, dst, dport) => (dst === METADATA_IP && dport === 80 ? service.connect(src === assigned) : null),
    );
  }

  attach(deliver: (frame: Uint8Array) => boolean): void {
    this.deliver = deliver;
    this.inner.attach(deliver);
  }

  send(frame: Uint8Array): void {
    if (frame.length >= ETH_HLEN + IPV4_HLEN && readU16(frame, 12) === ETHERTYPE_IPV4) {
      const o = IP_OFF;
      const ihl = (frame[o] & 0x0f) << 2;
      if (frame[o] >>> 4 === 4 && frame[o + 9] === PROTO_TCP && readU32(frame, o + 16) === METADATA_IP) {
        const end = o + readU16(frame, o + 2);
        if (ihl < IPV4_HLEN || end > frame.length || end < o + ihl) return;
        if ((readU16(frame, o + 6) & 0x3fff) !== 0 || internetChecksum(frame, o, o + ihl) !== 0) return;
        if (!this.guestMac || !macEquals(frame, 6, this.guestMac, 0)) this.guestMac = copyBytes(frame, 6, 12);
        if (!macEquals(frame, 0, this.routerMac, 0)) this.routerMac = copyBytes(frame, 0, 6);
        this.guestIp = readU32(frame, o + 12);
        this.tcp.input(frame, o + ihl, end, METADATA_IP, this.guestIp);
        return; // never onto the switch
      }
    } else if (frame.length >= ETH_HLEN + ARP_LEN && readU16(frame, 12) === ETHERTYPE_ARP) {
      const o = ETH_HLEN;
      if (readU16(frame, o + 6) === ARP_REQUEST && readU32(frame, o + 24) === METADATA_IP) {
        const b = this.arpBuf;
        const requester = frame.subarray(o + 8, o + 14);
        writeEthernet(b, requester, METADATA_MAC, ETHERTYPE_ARP);
        writeArp(b, ETH_HLEN, ARP_REPLY, METADATA_MAC, METADATA_IP, requester, readU32(frame, o + 14));
        this.deliver?.(b);
        return;
      }
    }
    this.inner.send(frame);
  }

  private emitIpv4(proto: number, src: number, dst: number, len: number): boolean {
    const mac = this.guestMac;
    const deliver = this.deliver;
    if (!mac || !deliver) return false;
    writeEthernet(this.tx, mac, this.routerMac, ETHERTYPE_IPV4);
    writeIpv4Header(this.tx, IP_OFF, proto, src, dst, len, this.ipId, 64, 0x4000);
    this.ipId = (this.ipId + 1) & 0xffff;
    return deliver(this.tx.subarray(0, L4_OFF + len));
  }

  close(): void {
    this.tcp.close();
    this.service.close();
    this.inner.close();
  }
}

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { P9, VIRTIO_ID_9P, Virtio9p } from "../../../src/devices/virtio/9p.js";
import { ERRNO, ShareDir, checkName } from "../../../src/devices/virtio/9p-host.js";
import { REG } from "../../../src/devices/virtio/mmio.js";
import { Driver, Guest, RAM_BASE } from "./driver.js";

const REQ = RAM_BASE + 0x10000;
const REPLY = RAM_BASE + 0x30000;
const ROOM = 0x20000;
const MSIZE = 0x10000;

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;
const AT_REMOVEDIR = 0x200;
const ENOTEMPTY = 39;

/** A host directory holding the share and, beside it, a "secret" the guest must never reach. */
function hostTree(): { base: string; share: string; secret: string } {
  const base = mkdtempSync(join(tmpdir(), "yun-9p-"));
  const share = join(base, "share");
  mkdirSync(share);
  const secret = join(base, "secret.txt");
  writeFileSync(secret, "host secret\n");
  return { base, share, secret };
}

/** A 9P2000.L client on the test driver: builds T-messages, parses R-messages. */
class Client {
  private tag = 1;
  constructor(
    readonly g: Guest,
    readonly q: ReturnType<Driver["setupQueue"]>,
  ) {}

  rpc(type: number, body: Buffer): { type: number; body: Buffer } {
    const msg = Buffer.alloc(7 + body.length);
    msg.writeUInt32LE(msg.length, 0);
    msg[4] = type;
    msg.writeUInt16LE(this.tag, 5);
    body.copy(msg, 7);
    this.g.put(REQ, msg);
    this.q.submit(
      this.q.addChain([
        { pa: REQ, len: msg.length, write: false },
        { pa: REPLY, len: ROOM, write: true },
      ]),
    );
    const [used] = this.q.takeUsed();
    const r = Buffer.from(this.g.get(REPLY, used.len));
    assert.equal(r.readUInt32LE(0), used.len, "the reply's size is the used length");
    assert.equal(r.readUInt16LE(5), this.tag++);
    return { type: r[4], body: r.subarray(7) };
  }

  /** Sends and expects the R-message (returns its body) or, with `errno`, Rlerror of that errno. */
  call(type: number, parts: (number | bigint | string | [number, number])[], errno?: number): Buffer {
    const r = this.rpc(type, encode(parts));
    if (errno !== undefined) {
      assert.equal(r.type, P9.Rlerror, `expected errno ${errno}, got message ${r.type}`);
      assert.equal(r.body.readUInt32LE(0), errno);
      return r.body;
    }
    if (r.type === P9.Rlerror) assert.fail(`message ${type} failed with errno ${r.body.readUInt32LE(0)}`);
    assert.equal(r.type, type + 1);
    return r.body;
  }

  errno(type: number, parts: (number | bigint | string | [number, number])[]): number {
    const r = this.rpc(type, encode(parts));
    return r.type === P9.Rlerror ? r.body.readUInt32LE(0) : 0;
  }

  walk(fid: number, newFid: number, ...names: string[]): Buffer {
    return this.call(P9.Twalk, [fid, newFid, [2, names.length], ...names]);
  }
  walkErr(fid: number, newFid: number, ...names: string[]): number {
    return this.errno(P9.Twalk, [fid, newFid, [2, names.length], ...names]);
  }
  /** A walk that stops part way: how many names resolved (and newFid must not exist). */
  walkStops(fid: number, newFid: number, ...names: string[]): number {
    const n = this.walk(fid, newFid, ...names).readUInt16LE(0);
    assert.ok(n < names.length, `the walk of ${names.join("/")} went all the way`);
    assert.equal(this.errno(P9.Tclunk, [newFid]), ERRNO.EBADF, "a partial walk makes no fid");
    return n;
  }
  readAll(fid: number): Buffer {
    const out: Buffer[] = [];
    for (let off = 0; ;) {
      const b = this.call(P9.Tread, [fid, BigInt(off), 8192]);
      const n = b.readUInt32LE(0);
      if (n === 0) return Buffer.concat(out);
      out.push(Buffer.from(b.subarray(4, 4 + n)));
      off += n;
    }
  }
  readdir(fid: number): string[] {
    const names: string[] = [];
    for (let off = 0n; ;) {
      const b = this.call(P9.Treaddir, [fid, off, 4096]);
      const n = b.readUInt32LE(0);
      if (n === 0) return names;
      for (let p = 4; p < 4 + n;) {
        off = b.readBigUInt64LE(p + 13);
        const len = b.readUInt16LE(p + 22);
        names.push(b.toString("utf8", p + 24, p + 24 + len));
        p += 24 + len;
      }
    }
  }
}

/** u32 numbers, u64 bigints, strings, [bytes, value] for u8/u16. */
function encode(parts: (number | bigint | string | [number, number])[]): Buffer {
  const bufs: Buffer[] = [];
  for (const p of parts) {
    if (typeof p === "number") {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(p >>> 0);
      bufs.push(b);
    } else if (typeof p === "bigint") {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(p);
      bufs.push(b);
    } else if (typeof p === "string") {
      const s = Buffer.from(p);
      const b = Buffer.alloc(2);
      b.writeUInt16LE(s.length);
      bufs.push(b, s);
    } else {
      const b = Buffer.alloc(p[0]);
      if (p[0] === 1) b[0] = p[1];
      else b.writeUInt16LE(p[1]);
      bufs.push(b);
    }
  }
  return Buffer.concat(bufs);
}

function mount(dir: string, readOnly = false) {
  const g = new Guest();
  const dev = new Virtio9p(g.bus, g.irqLine, { tag: "data", path: dir, readOnly }, { log: g.log });
  const d = new Driver(dev, g);
  d.negotiate();
  const q = d.setupQueue(0, 64, RAM_BASE + 0x1000);
  d.driverOk();
  const c = new Client(g, q);
  const v = c.call(P9.Tversion, [MSIZE, "9P2000.L"]);
  assert.equal(v.readUInt32LE(0), MSIZE);
  assert.equal(v.toString("utf8", 6), "9P2000.L");
  c.call(P9.Tattach, [0, 0xffff_ffff, "root", "", 0]);
  return { g, dev, d, c };
}

/** Rwalk's qid types, one per name walked. */
function qidTypes(walk: Buffer): number[] {
  const n = walk.readUInt16LE(0);
  return Array.from({ length: n }, (_, i) => walk[2 + 13 * i]);
}

test("the device is virtio-9p with its mount tag in the configuration space", () => {
  const { share, base } = hostTree();
  const { d, dev } = mount(share);
  assert.equal(d.reg(REG.DEVICE_ID), VIRTIO_ID_9P);
  assert.equal(dev.read(REG.CONFIG, 2), 4);
  assert.equal(String.fromCharCode(...[0, 1, 2, 3].map((i) => dev.read(REG.CONFIG + 2 + i, 1))), "data");
  dev.close();
  rmSync(base, { recursive: true });
  assert.throws(() => new Virtio9p(new Guest().bus, () => {}, { tag: "bad tag", path: share }), /letters, digits/);
});

test("create, write, read back, getattr, readdir, rename, link, chmod, unlink", () => {
  const { share, base } = hostTree();
  const { c, dev } = mount(share);
  const umask = process.umask(0o077); // as the yun command runs: the guest's modes must still hold
  // lcreate a file and write to it
  c.walk(0, 1);
  c.call(P9.Tlcreate, [1, "hello.txt", O_RDWR, 0o644, 0]);
  const data = Buffer.from("hello from the guest\n".repeat(1000));
  // Twrite's data follows its count directly.
  for (let off = 0; off < data.length; off += 4000) {
    const part = data.subarray(off, off + 4000);
    const r = c.rpc(P9.Twrite, Buffer.concat([encode([1, BigInt(off), part.length]), part]));
    assert.equal(r.type, P9.Twrite + 1);
    assert.equal(r.body.readUInt32LE(0), part.length);
  }
  c.call(P9.Tfsync, [1, 0]);
  c.call(P9.Tclunk, [1]);
  assert.deepEqual(readFileSync(join(share, "hello.txt")), data, "the host file holds what the guest wrote");
  // read it back
  c.walk(0, 3, "hello.txt");
  c.call(P9.Tlopen, [3, O_RDONLY]);
  assert.deepEqual(c.readAll(3), data);
  const attr = c.call(P9.Tgetattr, [3, 0x7ffn]);
  assert.equal(attr.readUInt32LE(8 + 13) & 0o777, 0o644, "mode");
  assert.equal(Number(attr.readBigUInt64LE(8 + 13 + 4 + 4 + 4 + 8 + 8)), data.length, "size");
  c.call(P9.Tclunk, [3]);
  // mkdir, rename, hard link, chmod
  c.call(P9.Tmkdir, [0, "sub", 0o755, 0]);
  assert.equal(statSync(join(share, "sub")).mode & 0o777, 0o755, "the guest's mode, not the host's umask");
  c.call(P9.Trenameat, [0, "hello.txt", 0, "renamed.txt"]);
  c.walk(0, 4, "renamed.txt");
  c.walk(0, 5, "sub");
  c.call(P9.Tlink, [5, 4, "hard.txt"]);
  assert.equal(statSync(join(share, "sub", "hard.txt")).nlink, 2);
  c.call(P9.Tsetattr, [4, 1, 0o600, 0, 0, 0n, 0n, 0n, 0n, 0n]);
  assert.equal(statSync(join(share, "sub", "hard.txt")).mode & 0o777, 0o600, "chmod seen through the hard link");
  c.call(P9.Trename, [4, 5, "moved.txt"]); // Trename: the fid's file goes into sub
  assert.ok(existsSync(join(share, "sub", "moved.txt")) && !existsSync(join(share, "renamed.txt")));
  c.call(P9.Tlopen, [5, O_RDONLY]);
  assert.deepEqual(c.readdir(5).sort(), [".", "..", "hard.txt", "moved.txt"]);
  c.call(P9.Tunlinkat, [0, "sub", AT_REMOVEDIR], ENOTEMPTY);
  c.call(P9.Tunlinkat, [5, "hard.txt", 0]);
  c.call(P9.Tclunk, [5]);
  c.walk(0, 6, "sub");
  c.call(P9.Tunlinkat, [6, "moved.txt", 0]);
  c.call(P9.Tunlinkat, [0, "sub", AT_REMOVEDIR]);
  assert.deepEqual(c.errno(P9.Tlopen, [4, O_RDONLY]), 0, "an open fid keeps its unlinked file");
  assert.ok(!existsSync(join(share, "sub")));
  const st = c.call(P9.Tstatfs, [0]);
  assert.ok(st.readBigUInt64LE(8) > 0n, "statfs gives blocks");
  process.umask(umask);
  dev.close();
  rmSync(base, { recursive: true });
});

test("hostile names, .. and symbolic links never reach outside the share", () => {
  const { share, base, secret } = hostTree();
  mkdirSync(join(share, "d"));
  writeFileSync(join(share, "d", "inside.txt"), "inside\n");
  // Links the host (or another guest) left in the share, pointing out of it.
  symlinkSync(base, join(share, "up"));
  symlinkSync(secret, join(share, "secret-link"));
  const { c, dev } = mount(share);
  // ".." at the root stays at the root; ".." from d is the root, never the share's parent.
  const rootQid = c.walk(0, 1).readUInt16LE(0);
  assert.equal(rootQid, 0);
  c.walk(0, 2, "..", "..", "..");
  assert.deepEqual(c.readdir(2).sort(), [".", "..", "d", "secret-link", "up"]);
  c.walk(0, 3, "d", "..", "..", "d", "inside.txt");
  c.call(P9.Tlopen, [3, O_RDONLY]);
  assert.equal(c.readAll(3).toString(), "inside\n");
  // A name with "/" or an absolute name is never a path.
  for (const name of ["../secret.txt", "/etc/passwd", "d/../../secret.txt", "", ".", "a\0b"]) {
    assert.equal(c.walkErr(0, 9, name), ERRNO.EINVAL, `walk ${JSON.stringify(name)}`);
    assert.equal(c.errno(P9.Tlcreate, [2, name, O_RDWR, 0o644, 0]), ERRNO.EINVAL, `lcreate ${JSON.stringify(name)}`);
    assert.equal(c.errno(P9.Tmkdir, [0, name, 0o755, 0]), ERRNO.EINVAL, `mkdir ${JSON.stringify(name)}`);
  }
  assert.equal(c.errno(P9.Trenameat, [0, "d", 0, "../escaped"]), ERRNO.EINVAL);
  assert.ok(!existsSync(join(base, "escaped")));
  // Links are links: walked to, they are symlinks; walked through, nothing; never opened.
  const w = c.walk(0, 4, "up");
  assert.deepEqual(qidTypes(w), [0x02], "the link walks as a symlink");
  assert.equal(c.walkStops(0, 5, "up", "secret.txt"), 1, "a link is no directory to the host");
  assert.equal(c.walkErr(4, 5, "secret.txt"), ERRNO.ENOTDIR);
  assert.equal(c.errno(P9.Tlopen, [4, O_RDONLY]), ERRNO.ELOOP);
  c.walk(0, 6, "secret-link");
  assert.equal(c.errno(P9.Tlopen, [6, O_RDONLY]), ERRNO.ELOOP);
  const target = c.call(P9.Treadlink, [6]);
  assert.equal(target.toString("utf8", 2), secret, "readlink gives the target as stored");
  // A guest-made link to the host's /etc/passwd is stored as a link and read back as one.
  c.call(P9.Tsymlink, [0, "passwd", "/etc/passwd", 0]);
  assert.equal(readlinkSync(join(share, "passwd")), "/etc/passwd");
  assert.ok(lstatSync(join(share, "passwd")).isSymbolicLink());
  c.walk(0, 7, "passwd");
  assert.equal(c.errno(P9.Tlopen, [7, O_RDONLY]), ERRNO.ELOOP);
  assert.equal(c.errno(P9.Tlcreate, [0, "passwd", O_WRONLY, 0o644, 0]), ERRNO.ELOOP, "create through a link");
  assert.equal(c.errno(P9.Tsetattr, [7, 8, 0, 0, 0, 0n, 0n, 0n, 0n, 0n]), ERRNO.EINVAL, "truncate through a link");
  assert.equal(readFileSync(secret, "utf8"), "host secret\n");
  dev.close();
  rmSync(base, { recursive: true });
});

test("a directory swapped for a link during use leads nowhere outside (rename race)", () => {
  const { share, base, secret } = hostTree();
  mkdirSync(join(share, "d"));
  writeFileSync(join(share, "d", "f"), "f\n");
  const { c, dev } = mount(share);
  c.walk(0, 1, "d");
  // Another VM (or the host) moves d away and puts a link to the outside in its place.
  renameSync(join(share, "d"), join(share, "d-moved"));
  symlinkSync(base, join(share, "d"));
  assert.equal(c.walkStops(0, 2, "d", "secret.txt"), 1, "the new 'd' is a link: not walked through");
  // The fid still names the directory it was walked to, wherever it went.
  c.walk(1, 3, "f");
  c.call(P9.Tlopen, [3, O_RDONLY]);
  assert.equal(c.readAll(3).toString(), "f\n");
  c.walk(1, 4, "..", "d-moved", "f");
  assert.equal(c.walkStops(1, 5, "..", "..", "secret.txt"), 2, ".. of the moved directory is the share's root");
  assert.equal(readFileSync(secret, "utf8"), "host secret\n");
  dev.close();
  rmSync(base, { recursive: true });
});

test("a read-only share refuses every change with EROFS and still reads", () => {
  const { share, base } = hostTree();
  writeFileSync(join(share, "f"), "ro\n");
  const { c, dev } = mount(share, true);
  assert.equal(c.errno(P9.Tlcreate, [0, "new", O_RDWR, 0o644, 0]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tmkdir, [0, "dir", 0o755, 0]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tsymlink, [0, "l", "f", 0]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tunlinkat, [0, "f", 0]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Trenameat, [0, "f", 0, "g"]), ERRNO.EROFS);
  c.walk(0, 1, "f");
  assert.equal(c.errno(P9.Tlopen, [1, O_WRONLY]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tlopen, [1, O_RDONLY | O_TRUNC]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tsetattr, [1, 1, 0o777, 0, 0, 0n, 0n, 0n, 0n, 0n]), ERRNO.EROFS);
  assert.equal(c.errno(P9.Tlink, [0, 1, "h"]), ERRNO.EROFS);
  c.call(P9.Tlopen, [1, O_RDONLY]);
  assert.equal(c.readAll(1).toString(), "ro\n");
  assert.equal(readFileSync(join(share, "f"), "utf8"), "ro\n");
  assert.deepEqual(
    c.readdir(0).filter((n) => n !== "." && n !== ".."),
    ["f"],
  );
  dev.close();
  rmSync(base, { recursive: true });
});

test("fids survive a snapshot: reopened by path on a new device, open files too", () => {
  const { share, base } = hostTree();
  mkdirSync(join(share, "d"));
  writeFileSync(join(share, "d", "f"), "0123456789");
  const a = mount(share);
  a.c.walk(0, 1, "d", "f");
  a.c.call(P9.Tlopen, [1, O_RDWR]);
  a.c.walk(0, 2, "d");
  const state = JSON.parse(JSON.stringify(a.dev.save()));
  a.dev.close();
  // The restored machine: same RAM (the rings), a new device.
  const b = new Virtio9p(a.g.bus, a.g.irqLine, { tag: "data", path: share }, { log: a.g.log });
  b.restore(state);
  const c = new Client(a.g, a.c.q);
  // the driver's queue lives in the same RAM: point the client at the restored device
  (a.c.q.d as { dev: unknown }).dev = b;
  assert.equal(c.readAll(1).toString(), "0123456789", "the open fid reads after the restore");
  c.walk(2, 3, "f");
  const r = c.rpc(P9.Twrite, Buffer.concat([encode([1, 10n, 2]), Buffer.from("ab")]));
  assert.equal(r.type, P9.Twrite + 1);
  assert.equal(readFileSync(join(share, "d", "f"), "utf8"), "0123456789ab");
  b.close();
  rmSync(base, { recursive: true });
});

test("the path resolver refuses hostile names and never leaves its root", () => {
  for (const bad of ["", ".", "..", "../x", "/etc", "a/b", "x\0y", "a".repeat(256)]) {
    assert.notEqual(checkName(bad), 0, JSON.stringify(bad));
  }
  for (const good of ["a", "...", "..a", "a..", " ", "名前", ".hidden", "a".repeat(255)]) {
    assert.equal(checkName(good), 0, JSON.stringify(good));
  }
  const { share, base } = hostTree();
  mkdirSync(join(share, "a", "b"), { recursive: true });
  symlinkSync("/", join(share, "a", "root"));
  const dir = new ShareDir(share);
  const fd = dir.open(["a", "b"]);
  assert.deepEqual(dir.componentsOf(fd), ["a", "b"]);
  const parent = dir.parent(dir.parent(dir.parent(fd)));
  assert.deepEqual(dir.componentsOf(parent), [], "three levels up from a/b is the root, not beyond");
  assert.throws(() => dir.open(["a", "root", "etc"]), /ENOTDIR/);
  assert.throws(
    () => dir.open(["..", "secret.txt"]),
    (e: { errno?: number }) => e.errno === ERRNO.EINVAL,
  );
  assert.throws(
    () => dir.open(["a/../../secret.txt"]),
    (e: { errno?: number }) => e.errno === ERRNO.EINVAL,
  );
  const link = dir.open(["a", "root"]);
  assert.ok(dir.componentsOf(link)?.join("/") === "a/root", "the link itself, not /");
  for (const f of [fd, parent, link]) closeSync(f);
  dir.close();
  rmSync(base, { recursive: true });
});

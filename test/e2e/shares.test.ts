// End-to-end test of shares (issue 19 item 2): one host directory mounted over virtio-9p by two
// debian-tiny VMs at once, as a user does with `yun run --share`. What one VM writes the other
// reads; renames, hard links and modes are seen by both and by the host; nothing outside the share
// is reachable by "..", by a link the guest makes or by one the host left; a read-only attachment
// refuses writes. Two concurrent boots in all (each costs ~20-60 s of this host).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findImage, readManifest } from "../../src/images/store.js";
import { yunHome } from "../../src/images/paths.js";
import { ROOTFS_REVISION } from "../../src/images/rootfs.js";
import { Yun, runYun, tail } from "./harness.js";

const TEST_TIMEOUT = 420_000;
const MOUNT = "mount -t 9p -o trans=virtio,version=9p2000.L";

function skipReason(): string | false {
  const image = findImage("debian-tiny");
  if (!image) return `no debian-tiny image in ${yunHome()} (yun image pull debian-tiny; boot.test.ts pulls it)`;
  // The 9p modules came with ROOTFS_REVISION 5 (loaded when a virtio-9p device exists).
  if ((readManifest(image.dir)?.rootfs.revision ?? 1) < ROOTFS_REVISION) {
    return `the debian-tiny image in ${yunHome()} predates the 9p modules; pull it again`;
  }
  return false;
}

test(
  "a share mounted read-write by two VMs: data, renames, links and modes cross; escapes find nothing; :ro refuses writes",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const skip = skipReason();
    if (skip) return t.skip(skip);
    const base = mkdtempSync(join(tmpdir(), "yun-shares-"));
    const share = join(base, "share");
    const readOnly = join(base, "ro");
    mkdirSync(share);
    mkdirSync(readOnly);
    // A secret beside the share, and a link the host left in the share pointing at it.
    const SECRET = "host-secret-" + process.pid;
    writeFileSync(join(base, "secret.txt"), SECRET + "\n");
    symlinkSync(base, join(share, "hostlink"));
    writeFileSync(join(readOnly, "kept.txt"), "kept\n");
    const a = new Yun(["run", "--share", `data=${share}`, "--vsock", "none", "--name", `share-a-${process.pid}`]);
    const b = new Yun([
      "run",
      "--share",
      `data=${share}`,
      "--share",
      `ro=${readOnly}:ro`,
      "--vsock",
      "none",
      "--name",
      `share-b-${process.pid}`,
    ]);
    try {
      await Promise.all([a.prompt(), b.prompt()]);
      assert.match(await a.sh(`${MOUNT} data /mnt && echo mounted`), /^mounted$/m, tail(a.console));
      assert.match(await b.sh(`${MOUNT} data /mnt && echo mounted`), /^mounted$/m, tail(b.console));

      // A writes 1 MiB of random data; B reads the same bytes.
      const wrote = await a.sh(
        "dd if=/dev/urandom of=/mnt/data.bin bs=64k count=16 conv=fsync 2>/dev/null; sha256sum /mnt/data.bin",
      );
      const sumA = /^([0-9a-f]{64}) /m.exec(wrote)?.[1];
      assert.ok(sumA, `no sha256 from A: ${wrote}`);
      assert.match(await b.sh("sha256sum /mnt/data.bin"), new RegExp(`^${sumA} `, "m"), "B reads what A wrote");
      assert.equal(
        createHash("sha256")
          .update(readFileSync(join(share, "data.bin")))
          .digest("hex"),
        sumA,
        "the host holds it",
      );

      // Rename, hard link and chmod in A, seen by B.
      await a.sh("mv /mnt/data.bin /mnt/moved.bin && ln /mnt/moved.bin /mnt/hard.bin && chmod 640 /mnt/moved.bin");
      const listing = await b.sh("ls -li /mnt/moved.bin /mnt/hard.bin; ls /mnt/data.bin 2>&1");
      const rows = listing.split("\n").filter((l) => /bin$/.test(l) && !/No such/.test(l));
      assert.equal(rows.length, 2, listing);
      const [inoA, modeA, linksA] = rows[0].trim().split(/\s+/);
      const [inoB, , linksB] = rows[1].trim().split(/\s+/);
      assert.equal(inoA, inoB, `one inode for both names: ${listing}`);
      assert.equal(modeA, "-rw-r-----", listing);
      assert.equal(linksA, "2", listing);
      assert.equal(linksB, "2", listing);
      assert.match(listing, /data\.bin: No such file/, "the old name is gone for B too");
      assert.equal(statSync(join(share, "moved.bin")).mode & 0o777, 0o640);

      // Escapes: "..", a guest-made link to the host's /etc/passwd and to ../secret.txt, the host's link.
      await a.sh("ln -s /etc/passwd /mnt/passwd-link; ln -s ../secret.txt /mnt/up-link");
      const escapes = await b.sh(
        "cat /mnt/../secret.txt /mnt/../../secret.txt /mnt/up-link /mnt/hostlink/secret.txt 2>&1; " +
          "readlink /mnt/passwd-link; head -1 /mnt/passwd-link; cat /mnt/../../etc/hostname",
      );
      assert.ok(!escapes.includes(SECRET), `the host's secret leaked: ${escapes}`);
      assert.match(escapes, /^\/etc\/passwd$/m, "the guest's link reads back as a link");
      assert.match(
        escapes,
        /^root:x:0:0:root:\/root:\/bin\/sh$/m,
        "followed in the guest, it is the guest's own passwd",
      );
      const hostPasswd = readFileSync("/etc/passwd", "utf8").split("\n")[0];
      if (hostPasswd !== "root:x:0:0:root:/root:/bin/sh") assert.ok(!escapes.includes(hostPasswd));
      assert.ok(lstatSync(join(share, "passwd-link")).isSymbolicLink());
      assert.equal(
        readlinkSync(join(share, "up-link")),
        "../secret.txt",
        "stored as given, never followed by the host",
      );

      // Read-only attachment.
      assert.match(await b.sh(`mkdir -p /ro && ${MOUNT} ro /ro && cat /ro/kept.txt`), /^kept$/m);
      const refused = await b.sh("echo x > /ro/new.txt; rm /ro/kept.txt; mkdir /ro/d; echo rc=$?");
      assert.match(refused, /Read-only file system/, refused);
      assert.ok(!existsSync(join(readOnly, "new.txt")) && existsSync(join(readOnly, "kept.txt")));

      // Both unmount cleanly.
      assert.match(await a.sh("umount /mnt && echo unmounted"), /^unmounted$/m);
      assert.match(await b.sh("umount /mnt /ro && echo unmounted"), /^unmounted$/m);
    } finally {
      a.kill();
      b.kill();
      await Promise.all([a.exited, b.exited]);
      rmSync(base, { recursive: true, force: true });
    }
  },
);

test("yun run --share refuses a bad share in one sentence, exit 2, before booting", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-shares-flags-"));
  try {
    writeFileSync(join(dir, "file"), "");
    for (const [args, message] of [
      [["--share", "data"], /--share data: expected TAG=DIR\[:ro\]/],
      [["--share", `bad tag=${dir}`], /share tag "bad tag" must be letters/],
      [["--share", `data=${join(dir, "missing")}`], /is not a directory/],
      [["--share", `data=${join(dir, "file")}`], /is not a directory/],
      [["--share", `a=${dir}`, "--share", `a=${dir}:ro`], /the tag a is given twice/],
    ] as const) {
      const r = await runYun(["run", ...args], "", 30_000);
      assert.equal(r.code, 2, `yun run ${args.join(" ")} exited ${r.code ?? r.signal}, expected 2${tail(r.console)}`);
      assert.match(r.stderr, message, `yun run ${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

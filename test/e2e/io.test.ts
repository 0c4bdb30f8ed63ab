// End-to-end tests of the VM's para-virtual I/O (issue 3): virtio disks (qcow2 and raw, made by
// qemu-img and checked with it afterwards), virtual networks between `yun run` processes, user-mode
// networking with --publish, hvc0 and the hardware RNG. They drive the real CLI as a user would and
// check what the user sees: guest console output, host files, host sockets.
//
// Boots are grouped (each costs ~20-35 s of this 2-core host): two boots for the disk checks, one
// for user-mode networking, three concurrent ones for the virtual switch. Bad images are checked
// without booting. The image comes from $YUN_HOME as in boot.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findImage } from "../../src/images/store.js";
import { findInPath } from "../../src/images/util.js";
import { yunHome } from "../../src/images/paths.js";
import { BOOT_DEADLINE, Yun, runYun, tail } from "./harness.js";

const TEST_TIMEOUT = 360_000;

/** Why the boot tests cannot run here, or false. */
function skipReason(...tools: string[]): string | false {
  const image = findImage("debian-tiny");
  if (!image) return `no debian image in ${yunHome()} (yun image pull debian-tiny; boot.test.ts pulls it)`;
  if (!existsSync(image.rootDisk)) return `the debian image in ${yunHome()} has no root disk; pull it again`;
  for (const t of tools) if (findInPath(t) === undefined) return `${t} is not installed`;
  return false;
}

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
}

const tmp = (): string => mkdtempSync(join(tmpdir(), "yun-io-"));
const sha256 = (data: Uint8Array): string => createHash("sha256").update(data).digest("hex");

/** Waits until the guest has its DHCP address (udhcpc runs in the background from rcS). */
const WAIT_DHCP =
  "i=0; while [ $i -lt 30 ] && ! ip -4 addr show eth0 | grep -q 'inet '; do sleep 1; i=$((i+1)); done; ip -4 addr show eth0 | grep 'inet '";

/** Stops a VM through init (rcK syncs and makes / read-only) and checks it exits 0. */
async function powerOff(vm: Yun): Promise<void> {
  vm.child.stdin.write("poweroff\n");
  const r = await vm.exited;
  if (vm.timedOut) assert.fail(`yun did not exit within ${BOOT_DEADLINE / 1000} s${tail(vm.console)}`);
  assert.equal(r.code, 0, `yun exited with ${r.code ?? r.signal} after poweroff${tail(vm.console)}`);
}

// ---------------------------------------------------------------------------------------------
// Disks: a qcow2 root disk across two boots; qemu-img overlays on a raw base as extra disks.

/** The bytes the guest writes to /dev/vdc and the host writes to its expected image, by offset. */
const PATTERN_LINE = "yun-pattern-0123456789abcdef\n";
const PATTERN_WRITES = [
  { offset: 0, length: 4096 },
  { offset: 5 * 1024 * 1024 + 3 * 4096, length: 300_000 }, // spans 64 KiB clusters, partial at both ends
  { offset: 15 * 1024 * 1024 - 4096, length: 4096 + 65536 }, // across the 15 MiB boundary, into the last MiB
];
const ZERO_WRITE = { offset: 8 * 1024 * 1024, length: 128 * 1024 }; // zeroes over base data

function patternBytes(length: number): Buffer {
  return Buffer.from(PATTERN_LINE.repeat(Math.ceil(length / PATTERN_LINE.length)).slice(0, length));
}

/** The guest commands that write PATTERN_WRITES and ZERO_WRITE to `dev` (4 KiB-aligned offsets). */
function guestPatternScript(dev: string): string {
  const lines = PATTERN_WRITES.map(
    (w) =>
      `yes ${PATTERN_LINE.trim()} | head -c ${w.length} | dd of=${dev} bs=4096 seek=${w.offset / 4096} conv=notrunc 2>/dev/null`,
  );
  lines.push(
    `dd if=/dev/zero of=${dev} bs=4096 seek=${ZERO_WRITE.offset / 4096} count=${ZERO_WRITE.length / 4096} conv=notrunc 2>/dev/null`,
  );
  lines.push(`sync`, `blockdev --flushbufs ${dev}`, `sha256sum ${dev}`);
  return lines.join("; ");
}

test(
  "a qcow2 root disk keeps what the guest wrote across power-off; qemu-img overlays take its writes; hvc0 and hwrng work",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const skip = skipReason("qemu-img", "mke2fs", "debugfs", "e2fsck");
    if (skip) return t.skip(skip);
    const image = findImage("debian-tiny")!;
    const dir = tmp();
    try {
      const baseStat = statSync(image.rootDisk);
      // The root disk: a qemu-img overlay on the image's root disk (which must stay untouched).
      const root = join(dir, "root.qcow2");
      sh("qemu-img", ["create", "-q", "-f", "qcow2", "-b", image.rootDisk, "-F", "raw", root]);

      // A small ext4 base made with mke2fs -d (12 MiB of file system in a 16 MiB raw file) and two
      // qemu-img overlays on it: vdb is mounted and written through the file system, vdc written raw.
      const content = join(dir, "content");
      mkdirSync(content);
      const hello = `hello from the base ${randomBytes(6).toString("hex")}\n`;
      writeFileSync(join(content, "hello.txt"), hello);
      writeFileSync(join(content, "filler.bin"), randomBytes(6 * 1024 * 1024));
      const base = join(dir, "base.raw");
      sh("mke2fs", ["-q", "-F", "-t", "ext4", "-L", "yunbase", "-d", content, base, "12M"]);
      truncateSync(base, 16 * 1024 * 1024);
      const baseSum = sha256(readFileSync(base));
      sh("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "over.qcow2"], { cwd: dir });
      sh("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "over2.qcow2"], { cwd: dir });

      // Boot 1.
      const vm = new Yun([
        "run",
        "--root",
        root,
        "--disk",
        join(dir, "over.qcow2"),
        "--disk",
        join(dir, "over2.qcow2"),
      ]);
      let mac1: string;
      let sums1: string;
      let vdcSum: string;
      try {
        t.diagnostic(`boot 1: prompt after ${(await vm.prompt()).toFixed(1)} s`);
        const disks = await vm.sh(
          "cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdc/size; mount | grep ' / '",
        );
        assert.match(
          disks,
          /^2097152\n32768\n32768\n\/dev\/vda on \/ type ext4 \(rw/,
          `disks as the guest sees them:\n${disks}`,
        );
        mac1 = (await vm.sh("cat /sys/class/net/eth0/address")).trim();
        assert.match(mac1, /^52:54:00(:[0-9a-f]{2}){3}$/, `MAC "${mac1}"`);

        // A file on the root disk.
        sums1 = await vm.sh(
          "head -c 1048576 /dev/urandom > /root/blob; echo persist-$((6*7)) > /root/note; sync; sha256sum /root/blob /root/note",
        );
        assert.match(
          sums1,
          /^[0-9a-f]{64} {2}\/root\/blob\n[0-9a-f]{64} {2}\/root\/note\n$/,
          `sha256sum output:\n${sums1}`,
        );

        // vdb: mount the qemu-img overlay, read the base's file, write one.
        const mounted = await vm.sh(
          "mkdir -p /mnt/b && mount -t ext4 /dev/vdb /mnt/b && cat /mnt/b/hello.txt && echo guest-wrote-this > /mnt/b/new.txt && umount /mnt/b && echo MOUNT-OK",
        );
        assert.equal(mounted, `${hello}MOUNT-OK\n`, "mounting the overlay and reading the base's file");

        // vdc: raw writes, then the guest's checksum of the whole disk.
        const written = await vm.sh(guestPatternScript("/dev/vdc"), 120_000);
        const m = /^([0-9a-f]{64}) {2}\/dev\/vdc$/m.exec(written);
        assert.ok(m, `no checksum of /dev/vdc in:\n${written}`);
        vdcSum = m[1];

        // hvc0 output reaches the console; /dev/hwrng gives bytes from virtio-rng.
        const before = vm.console.length;
        await vm.sh("echo HVC-$((40+2)) > /dev/hvc0");
        await vm.waitFor("HVC-42 from hvc0", (c) => c.indexOf("HVC-42", before) >= 0, 10_000);
        const rng = await vm.sh(
          "cat /sys/class/misc/hw_random/rng_current; for i in 1 2; do head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n'; echo; done",
        );
        const [current, r1, r2] = rng.trim().split("\n");
        assert.match(current, /^virtio_rng/, `rng_current is "${current}"`);
        assert.match(r1, /^[0-9a-f]{64}$/, `32 bytes from /dev/hwrng: "${r1}"`);
        assert.notEqual(r1, r2, "two reads of /dev/hwrng gave the same bytes");
        assert.notEqual(r1, "0".repeat(64));
        await powerOff(vm);
      } finally {
        vm.kill();
      }

      // The host's view after boot 1.
      assert.match(sh("qemu-img", ["check", root]), /No errors were found/);
      for (const f of ["over.qcow2", "over2.qcow2"]) assert.match(sh("qemu-img", ["check", join(dir, f)]), /No errors/);
      // vdc: the host applies the same writes to a copy of the base; qemu-img compare must agree.
      const expected = join(dir, "expected.raw");
      copyFileSync(base, expected);
      const fd = openSync(expected, "r+");
      for (const w of PATTERN_WRITES) writeSync(fd, patternBytes(w.length), 0, w.length, w.offset);
      writeSync(fd, new Uint8Array(ZERO_WRITE.length), 0, ZERO_WRITE.length, ZERO_WRITE.offset);
      closeSync(fd);
      assert.equal(
        sha256(readFileSync(expected)),
        vdcSum,
        "the guest's checksum of /dev/vdc differs from the expected image",
      );
      assert.match(sh("qemu-img", ["compare", join(dir, "over2.qcow2"), expected]), /Images are identical/);
      // vdb: the file the guest wrote is in the overlay, and the file system is clean.
      const flat = join(dir, "over.raw");
      sh("qemu-img", ["convert", "-O", "raw", join(dir, "over.qcow2"), flat]);
      assert.equal(sh("debugfs", ["-R", "cat /new.txt", flat]).replace(/^debugfs.*\n/, ""), "guest-wrote-this\n");
      sh("e2fsck", ["-fn", flat]);
      assert.equal(sha256(readFileSync(base)), baseSum, "base.raw changed");

      // Boot 2 from the same root disk: the file is back, the MAC is the same.
      const vm2 = new Yun(["run", "--root", root]);
      try {
        t.diagnostic(`boot 2: prompt after ${(await vm2.prompt()).toFixed(1)} s`);
        assert.equal((await vm2.sh("cat /sys/class/net/eth0/address")).trim(), mac1, "the MAC changed across boots");
        assert.equal(await vm2.sh("sha256sum /root/blob /root/note"), sums1, "the files read back differ");
        assert.equal(await vm2.sh("cat /root/note"), "persist-42\n");
        await powerOff(vm2);
      } finally {
        vm2.kill();
      }
      assert.match(sh("qemu-img", ["check", root]), /No errors were found/);
      const after = statSync(image.rootDisk);
      assert.equal(after.mtimeMs, baseStat.mtimeMs, "the image's root disk was modified");
      assert.equal(after.size, baseStat.size);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

// ---------------------------------------------------------------------------------------------
// User-mode networking: guest -> host's 127.0.0.1 through 10.0.2.2, host -> guest through --publish.

test(
  "user-mode network: the guest fetches a page from the host's 127.0.0.1, the host reaches the guest's httpd via --publish",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const skip = skipReason();
    if (skip) return t.skip(skip);
    const image = findImage("debian-tiny")!;
    const baseStat = statSync(image.rootDisk);
    const hostPage = `host-page-${randomBytes(8).toString("hex")}`;
    const server = http.createServer((req, res) => {
      res.writeHead(req.url === "/page" ? 200 : 404, { "content-type": "text/plain" });
      res.end(req.url === "/page" ? `${hostPage}\n` : "not here\n");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const hostPort = (server.address() as AddressInfo).port;
    const runDir = join(yunHome(), "run");
    const vm = new Yun(["run", "--publish", "127.0.0.1:0:8080"]);
    try {
      t.diagnostic(`prompt after ${(await vm.prompt()).toFixed(1)} s`);
      const pub = /published 127\.0\.0\.1:(\d+) -> guest port 8080/.exec(vm.stderr);
      assert.ok(pub, `yun did not say which host port it published${tail(vm.stderr)}`);
      const publishedPort = Number(pub[1]);
      // The throwaway root overlay exists while the VM runs, in a directory named after yun's pid.
      assert.ok(
        readdirSync(runDir).some((e) => e.startsWith(`${vm.child.pid}-`)),
        `no overlay directory of pid ${vm.child.pid} in ${runDir}`,
      );

      assert.match(await vm.sh(WAIT_DHCP, 60_000), /inet 10\.0\.2\.15\//, "no DHCP lease");
      const got = await vm.sh(`wget -q -O - http://10.0.2.2:${hostPort}/page`, 60_000);
      assert.equal(got, `${hostPage}\n`, "wget in the guest of the host's page");

      const guestPage = `guest-page-${randomBytes(8).toString("hex")}`;
      await vm.sh(`mkdir -p /tmp/www && echo ${guestPage} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www`);
      const url = `http://127.0.0.1:${publishedPort}/index.html`;
      const body = findInPath("curl")
        ? await new Promise<string>((resolve, reject) => {
            // curl as a separate process, asynchronously: the VM must keep running meanwhile.
            execFile("curl", ["-sS", "--max-time", "60", url], (err, stdout, stderr) =>
              err ? reject(new Error(`curl ${url}: ${stderr || err.message}`)) : resolve(stdout),
            );
          })
        : await (await fetch(url)).text();
      assert.equal(body, `${guestPage}\n`, "the host's HTTP GET of the guest's httpd through --publish");
      await powerOff(vm);
    } finally {
      vm.kill();
      server.close();
    }
    assert.ok(
      !readdirSync(runDir).some((e) => e.startsWith(`${vm.child.pid}-`)),
      `yun left its overlay directory in ${runDir}`,
    );
    assert.equal(statSync(image.rootDisk).mtimeMs, baseStat.mtimeMs, "the image's root disk was modified");
  },
);

// ---------------------------------------------------------------------------------------------
// Virtual networks: two VMs on one switch exchange a file; a third, on another network, cannot.

test(
  "two VMs on one virtual network exchange a file with nc; a VM on another network cannot reach them",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const skip = skipReason();
    if (skip) return t.skip(skip);
    const lan = `t${process.pid}lan`;
    const other = `t${process.pid}other`;
    const a = new Yun(["run", "--net", lan, "--name", "io-a"]);
    const b = new Yun(["run", "--net", lan, "--name", "io-b"]);
    const c = new Yun(["run", "--net", other, "--name", "io-c"]);
    try {
      const [pa, pb, pc] = await Promise.all([a.prompt(), b.prompt(), c.prompt()]);
      t.diagnostic(`three concurrent boots: prompts after ${pa.toFixed(1)}, ${pb.toFixed(1)}, ${pc.toFixed(1)} s`);
      const macs: string[] = [];
      for (const [vm, ip] of [
        [a, "10.9.0.1"],
        [b, "10.9.0.2"],
        [c, "10.9.0.3"],
      ] as const) {
        const out = await vm.sh(
          `ip addr add ${ip}/24 dev eth0 && ip link set eth0 up && cat /sys/class/net/eth0/address`,
        );
        macs.push(out.trim());
      }
      assert.equal(new Set(macs).size, 3, `MAC addresses are not unique: ${macs.join(" ")}`);

      // A serves 2 MiB of random bytes, once.
      const served = await a.sh(
        "dd if=/dev/urandom of=/tmp/f bs=64k count=32 2>/dev/null; sha256sum /tmp/f; (nc -l -p 5000 < /tmp/f; echo SERVED-$((1+1))) &",
      );
      const sumA = /^([0-9a-f]{64}) {2}\/tmp\/f$/m.exec(served)?.[1];
      assert.ok(sumA, `no checksum from A:\n${served}`);

      // C, on the other network, cannot connect (no ARP answer: "No route to host", or the timeout).
      const fromC = await c.sh("timeout 10 nc 10.9.0.1 5000 > /tmp/g; echo rc=$?; wc -c < /tmp/g", 30_000);
      assert.match(fromC, /rc=[1-9]\d*\n0\n$/, `C reached A across networks:\n${fromC}`);
      const toB = await c.sh("echo x | timeout 10 nc 10.9.0.2 5000; echo rc=$?", 30_000);
      assert.match(toB, /rc=[1-9]\d*\n$/, `C reached B across networks:\n${toB}`);

      // B fetches the file; the sums match.
      const t0 = Date.now();
      const fetched = await b.sh("nc 10.9.0.1 5000 > /tmp/g; sha256sum /tmp/g", 120_000);
      const seconds = (Date.now() - t0) / 1000;
      const sumB = /^([0-9a-f]{64}) {2}\/tmp\/g$/m.exec(fetched)?.[1];
      assert.equal(sumB, sumA, `B's copy differs from A's file:\n${fetched}`);
      t.diagnostic(`2 MiB from A to B in ${seconds.toFixed(1)} s`);
      await a.waitFor("A's nc to finish", (s) => /SERVED-2\r?$/m.test(s), 30_000);

      await Promise.all([powerOff(a), powerOff(b), powerOff(c)]);
    } finally {
      a.kill();
      b.kill();
      c.kill();
    }
  },
);

// ---------------------------------------------------------------------------------------------
// Bad images and bad flags: one clear error before boot, nothing written.

/** Size, mtime and sha256 of every file under `dir` (not recursing). */
function snapshot(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of readdirSync(dir)) {
    const st = statSync(join(dir, e));
    if (st.isFile()) m.set(e, `${st.size} ${st.mtimeMs} ${sha256(readFileSync(join(dir, e)))}`);
  }
  return m;
}

test(
  "a corrupt, truncated or looping image is refused before boot and no file changes",
  { timeout: 120_000 },
  async (t) => {
    const skip = skipReason("qemu-img");
    if (skip) return t.skip(skip);
    const dir = tmp();
    try {
      const q = (...args: string[]) => sh("qemu-img", args, { cwd: dir });
      q("create", "-q", "-f", "qcow2", "good.qcow2", "64M");
      // Corrupt header: cluster_bits 40.
      q("create", "-q", "-f", "qcow2", "corrupt.qcow2", "64M");
      let fd = openSync(join(dir, "corrupt.qcow2"), "r+");
      writeSync(fd, Uint8Array.of(0, 0, 0, 40), 0, 4, 20);
      closeSync(fd);
      // Truncated: cut in the middle of the L1 table.
      q("create", "-q", "-f", "qcow2", "truncated.qcow2", "64M");
      fd = openSync(join(dir, "truncated.qcow2"), "r");
      const l1 = Buffer.alloc(8);
      readSync(fd, l1, 0, 8, 40);
      closeSync(fd);
      truncateSync(join(dir, "truncated.qcow2"), Number(l1.readBigUInt64BE(0)) + 4);
      // A backing loop: loop-a -> loop-b -> loop-a.
      q("create", "-q", "-f", "qcow2", "loop-a.qcow2", "1M");
      q("create", "-q", "-f", "qcow2", "-b", "loop-a.qcow2", "-F", "qcow2", "loop-b.qcow2");
      q("rebase", "-u", "-b", "loop-b.qcow2", "-F", "qcow2", "loop-a.qcow2");

      const runDir = join(yunHome(), "run");
      mkdirSync(runDir, { recursive: true });
      const before = snapshot(dir);
      const runBefore = readdirSync(runDir).sort().join(",");
      const cases: { file: string; message: RegExp }[] = [
        { file: "corrupt.qcow2", message: /corrupt\.qcow2.*cluster_bits is 40/ },
        { file: "truncated.qcow2", message: /truncated\.qcow2.*truncated/ },
        { file: "loop-b.qcow2", message: /loop-b\.qcow2.*loops back/ },
      ];
      for (const { file, message } of cases) {
        const path = join(dir, file);
        for (const args of [
          ["run", "--root", path],
          ["run", "--disk", path],
          ["run", "--root", join(dir, "good.qcow2"), "--disk", path, "--no-net"],
        ]) {
          const r = await runYun(args, "", 60_000);
          const what = `yun ${args.join(" ")}`;
          assert.equal(r.code, 1, `${what} exited ${r.code ?? r.signal}, expected 1${tail(r.console)}`);
          assert.match(r.stderr, message, `${what}: the message does not explain the problem: ${r.stderr}`);
          assert.equal(r.stderr.trim().split("\n").length, 1, `${what}: more than one line of error: ${r.stderr}`);
          assert.doesNotMatch(r.console, /OpenSBI|Linux version/, `${what} started the guest`);
        }
      }
      assert.deepEqual(snapshot(dir), before, "a file in the test directory changed");
      assert.equal(readdirSync(runDir).sort().join(","), runBefore, `yun left something in ${runDir}`);

      // Usage errors: exit 2, naming the flag.
      for (const [args, message] of [
        [["--publish", "99999:80"], /--publish 99999:80/],
        [["--publish", "80"], /--publish 80/],
        [["--net", "a/b"], /--net/],
        [["--net", "lan", "--publish", "8080:80"], /--publish/],
        [["--no-net", "--net", "lan"], /--no-net/],
        [["--engine", "fast"], /--engine/],
        [["--mac", "01:00:5e:00:00:01"], /multicast/],
        [["--mac", "52:54:00"], /--mac/],
      ] as const) {
        const r = await runYun(["run", ...args], "", 30_000);
        assert.equal(r.code, 2, `yun run ${args.join(" ")} exited ${r.code ?? r.signal}, expected 2${tail(r.console)}`);
        assert.match(r.stderr, message, `yun run ${args.join(" ")}: ${r.stderr}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

// Private files: another local user reads nothing under a populated $YUN_HOME (a cloud with an
// instance, a volume and an uploaded image, and a `yun run` VM), and an install from before,
// with 0644 files in 0755 directories, is tightened when `yun serve` starts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HAVE_DEBIAN, REAL_IMAGES } from "./helpers.js";
import { BIN, serveProcess } from "./serve-process.js";
import { YunClient } from "../../src/cloud/client.js";

const ROOT = process.getuid?.() === 0;
const HAVE_SETPRIV = spawnSync("setpriv", ["--version"]).status === 0;

/** A YUN_HOME others may enter, as ~/.local/share/yun usually is (0755): only modes protect it. */
function openHome(): string {
  const home = mkdtempSync(join(tmpdir(), "yun-private-"));
  chmodSync(home, 0o755);
  if (existsSync(REAL_IMAGES)) symlinkSync(REAL_IMAGES, join(home, "images"));
  return home;
}

/** Every file and directory under `root` (symbolic links not followed; images/ is the shared image). */
function walk(root: string): { files: string[]; dirs: string[]; all: string[] } {
  const files: string[] = [];
  const dirs: string[] = [];
  const visit = (p: string): void => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) return;
    if (st.isDirectory()) {
      dirs.push(p);
      for (const n of readdirSync(p)) visit(join(p, n));
    } else files.push(p);
  };
  for (const n of readdirSync(root)) visit(join(root, n));
  return { files, dirs, all: [...files, ...dirs] };
}

/** What user nobody can read of `files` and list of `dirs`. */
function readableByNobody(files: string[], dirs: string[]): { read: string[]; listed: string[] } {
  const script = `
    const fs = require("node:fs");
    const { files, dirs } = JSON.parse(fs.readFileSync(0, "utf8"));
    const read = [], listed = [];
    for (const f of files) {
      try { const fd = fs.openSync(f, "r"); fs.readSync(fd, Buffer.alloc(1), 0, 1, 0); fs.closeSync(fd); read.push(f); } catch {}
    }
    for (const d of dirs) { try { fs.readdirSync(d); listed.push(d); } catch {} }
    process.stdout.write(JSON.stringify({ uid: process.getuid(), read, listed }));
  `;
  const r = spawnSync(
    "setpriv",
    ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, "-e", script],
    { input: JSON.stringify({ files, dirs }), encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { uid: number; read: string[]; listed: string[] };
  assert.equal(out.uid, 65534);
  return out;
}

function loose(paths: string[]): string[] {
  return paths
    .filter((p) => {
      const st = lstatSync(p);
      return !st.isSymbolicLink() && (st.mode & 0o077) !== 0;
    })
    .map((p) => `${p} ${(lstatSync(p).mode & 0o777).toString(8)}`);
}

test(
  "another local user reads no file of a populated YUN_HOME: cloud state, disks, images, logs, a yun run VM",
  { skip: !ROOT || !HAVE_SETPRIV || !HAVE_DEBIAN ? "needs root, setpriv and the Debian image" : false },
  async () => {
    const home = openHome();
    const s = await serveProcess([], home);
    let vm: ReturnType<typeof spawn> | null = null;
    try {
      const admin = new YunClient({ server: s.url, token: s.token });
      const project = await admin.createProject({ name: "secretive" });
      const user = await admin.createUser({ name: "keeper", role: "member", project: project.id });
      const member = new YunClient({ server: s.url, token: (await admin.createToken(user.id)).token });
      const vol = await member.createVolume({ name: "data", sizeGiB: 1 });
      const img = await member.uploadImage("mine", "raw", new Uint8Array(1 << 20));
      const inst = await member.createInstance({
        name: "vm1",
        image: "debian-tiny",
        flavor: "tiny",
        userData: "#!/bin/sh\necho the-secret\n",
      });
      assert.equal(inst.state, "running", inst.error ?? "");
      // A VM of `yun run` beside the cloud's: its registry entry, control socket and overlay.
      vm = spawn(process.execPath, [BIN, "run", "--headless", "--name", "solo", "--memory", "128"], {
        env: { ...process.env, YUN_HOME: home },
        stdio: "ignore",
      });
      const entry = join(home, "vms", "solo", "vm.json");
      for (let i = 0; i < 300 && !existsSync(entry); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(existsSync(entry), "yun run registered its VM");
      // A file the test makes readable: the check itself can see a readable file.
      writeFileSync(join(home, "control.txt"), "public\n", { mode: 0o644 });

      const { files, dirs, all } = walk(home);
      const instDir = join(home, "cloud", "instances", inst.id);
      for (const f of [
        join(home, "cloud", "yun.db"),
        join(home, "cloud", "yun.db-wal"),
        join(home, "cloud", "admin.token"),
        join(home, "cloud", "volumes", `${vol.id}.qcow2`),
        join(home, "cloud", "images", `${img.id}.raw`),
        join(instDir, "root.qcow2"),
        join(instDir, "seed.ext4"),
        join(instDir, "seed", "user-data"),
        join(instDir, "monitor.log"),
        entry,
      ])
        assert.ok(files.includes(f), `${f} exists`);
      const overlays = files.filter((f) => f.startsWith(join(home, "run") + "/") && f.endsWith(".qcow2"));
      assert.ok(overlays.length > 0, "yun run's throwaway overlay exists");

      assert.deepEqual(loose(all), [`${join(home, "control.txt")} 644`]);
      const seen = readableByNobody(files, dirs);
      assert.deepEqual(seen.read, [join(home, "control.txt")]);
      assert.deepEqual(seen.listed, []);
      await member.deleteInstance(inst.id);
    } finally {
      if (vm && vm.exitCode === null) {
        const gone = new Promise((r) => vm!.once("exit", r));
        vm.kill("SIGTERM");
        await gone;
      }
      await s.stop();
    }
  },
);

test("an install from before private files is tightened when yun serve starts", async () => {
  const home = openHome();
  // The state of an older yun under umask 022: 0755 directories, 0644 files.
  const old = (path: string, content = "x"): void => {
    mkdirSync(join(path, ".."), { recursive: true, mode: 0o755 });
    writeFileSync(path, content, { mode: 0o644 });
    chmodSync(path, 0o644);
  };
  old(join(home, "cloud", "volumes", "vol-old.qcow2"));
  old(join(home, "cloud", "instances", "ins-old", "root.qcow2"));
  old(join(home, "cloud", "instances", "ins-old", "monitor.log"));
  old(join(home, "vms", "old", "vm.json"), "{}");
  old(join(home, "run", "1-abc", "root.qcow2"));
  for (const d of [
    "cloud",
    "cloud/volumes",
    "cloud/instances",
    "cloud/instances/ins-old",
    "vms",
    "vms/old",
    "run",
    "run/1-abc",
  ])
    chmodSync(join(home, d), 0o755);
  const before = loose(walk(home).all);
  assert.ok(before.length >= 12, before.join("\n"));
  const s = await serveProcess([], home);
  try {
    assert.match(s.out(), /made \d+ files and directories under .* owner-only/);
    const { all } = walk(home);
    assert.deepEqual(loose(all), []);
    for (const f of ["cloud/yun.db", "cloud/admin.token"]) {
      assert.equal(lstatSync(join(home, f)).mode & 0o777, 0o600, f);
    }
    assert.equal(lstatSync(join(home, "cloud")).mode & 0o777, 0o700);
  } finally {
    await s.stop();
  }
  assert.ok(!existsSync(home));
  rmSync(home, { recursive: true, force: true });
});

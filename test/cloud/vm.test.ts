/**
 * The cloud with real VMs (boots Debian once): `yun serve` as a child process, an instance created
 * through the API, its console over WebSocket, pause/resume, metrics, metering against the wall
 * clock, then kill -9 of the daemon in the middle of operations and a restart that re-attaches to
 * the running VM, settles the interrupted one and leaves no VM monitor orphaned.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import Database from "better-sqlite3";
import { YunClient } from "../../src/cloud/client.js";
import { tempHome, HAVE_DEBIAN } from "./helpers.js";

const BIN = resolve(fileURLToPath(import.meta.url), "../../../../bin/yun.js");

interface Serve {
  child: ChildProcess;
  url: string;
  out: () => string;
}

function serve(home: string): Promise<Serve> {
  const child = spawn(process.execPath, [BIN, "serve", "--port", "0"], {
    env: { ...process.env, YUN_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return new Promise((resolvePromise, reject) => {
    const timer = setInterval(() => {
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(out);
      if (m) {
        clearInterval(timer);
        resolvePromise({ child, url: m[1], out: () => out });
      }
    }, 50);
    child.once("exit", (code) => {
      clearInterval(timer);
      reject(new Error(`yun serve exited with ${code}: ${out}`));
    });
  });
}

/** Pids of VM monitors (yun run --name ins-...) running under `home`. */
function monitorPids(home: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
      const env = readFileSync(`/proc/${p}/environ`, "utf8");
      const i = cmd.indexOf("--name");
      if (cmd.includes("run") && i >= 0 && cmd[i + 1].startsWith("ins-") && env.includes(`YUN_HOME=${home}\0`))
        out.set(Number(p), cmd[i + 1]);
    } catch {}
  }
  return out;
}

/** A console session: collects output; `run` types a command and waits for a marker. */
async function openConsole(client: YunClient, id: string) {
  const ws = new WebSocket(client.consoleUrl(id), client.consoleProtocols());
  let out = "";
  ws.on("message", (d: Buffer) => (out += d.toString("utf8")));
  await new Promise<void>((res, rej) => {
    ws.once("open", () => res());
    ws.once("unexpected-response", (_q, r) => rej(new Error(`console refused: HTTP ${r.statusCode}`)));
    ws.once("error", rej);
  });
  /** Waits until the output from offset `from` on matches `re`. */
  const waitFor = async (re: RegExp, ms: number, from = 0): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!re.test(out.slice(from))) {
      if (Date.now() > deadline)
        throw new Error(`console: no ${re} within ${ms} ms; got ${JSON.stringify(out.slice(-300))}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  return {
    ws,
    output: () => out,
    waitFor,
    async run(cmd: string, expect: RegExp, ms = 20_000) {
      ws.send(cmd + "\n");
      await waitFor(expect, ms);
    },
  };
}

test(
  "real VMs: boot, console, pause/resume, metering, kill -9 of the daemon and restart",
  { skip: !HAVE_DEBIAN, timeout: 240_000 },
  async () => {
    const home = tempHome();
    let s = await serve(home);
    const token = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
    let yun = new YunClient({ server: s.url, token });
    try {
      // Boot: the create answers once the monitor runs; the console shows the guest's shell.
      // web1 is on a private network (DHCP from the daemon) and has user data on its seed disk.
      await yun.createNetwork({ name: "private", cidr: "10.40.0.0/24" });
      const tCreate = Date.now();
      const vm = await yun.createInstance({
        name: "web1",
        image: "debian-tiny",
        flavor: "tiny",
        network: "private",
        userData: "#!/bin/sh\necho user-data-$((20+22))\n",
      });
      const tCreated = Date.now();
      assert.equal(vm.state, "running", vm.error ?? "");
      assert.deepEqual(vm.addresses, ["10.40.0.2"]);
      const con = await openConsole(yun, vm.id);
      await con.waitFor(/~ # /, 150_000);
      await con.run("echo $((6*7))", /\r\n42\r\n/);
      await con.run("mount -t ext4 -o ro /dev/vdb /mnt && sh /mnt/user-data", /\r\nuser-data-42\r\n/);
      // The image's boot script found the seed: the user data ran once at boot, the host name is set.
      await con.run(
        "for i in 1 2 3 4 5 6 7 8 9 10; do grep -q exited /run/user-data.log 2>/dev/null && break; sleep 1; done; cat /run/user-data.log; hostname",
        /\r\nuser-data-42\r\nuser-data exited with status 0\r\nweb1\r\n/,
      );
      await con.run("sleep 2; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'", /inet 10\.40\.0\.2\/24/);
      await con.run("ping -c 1 -W 3 10.40.0.1 | grep -o '1 packets received'", /\r\n1 packets received/);
      // The log endpoint replays recent output without attaching.
      assert.match(await yun.consoleLog(vm.id), /42/);
      const m = await yun.instanceMetrics(vm.id);
      assert.ok(m.uptimeSeconds > 1 && m.instret > 1e6, JSON.stringify(m));
      assert.equal(m.blk.length, 2, "the root disk and the seed disk");

      // Pause stops the vCPU meter; resume restarts it; the guest still answers.
      // Bounds of the paused time: [pause answered, resume sent] ⊆ paused ⊆ [pause sent, resume answered].
      let pausedMin = 0;
      let pausedMax = 0;
      const t1 = Date.now();
      assert.equal((await yun.pauseInstance(vm.id)).state, "paused");
      const t2 = Date.now();
      const paused = (await yun.usage()).vcpuSeconds;
      await new Promise((r) => setTimeout(r, 1500));
      assert.ok(Math.abs((await yun.usage()).vcpuSeconds - paused) < 0.01, "no vCPU time accrues while paused");
      const t3 = Date.now();
      assert.equal((await yun.resumeInstance(vm.id)).state, "running");
      pausedMin += t3 - t2;
      pausedMax += Date.now() - t1;
      await con.run("echo resumed-$((40+2))", /resumed-42/);
      const conflict = await yun.resumeInstance(vm.id).catch((e: { status: number }) => e.status);
      assert.equal(conflict, 409);
      // Concurrent requests cannot corrupt the state machine: of four pauses exactly one succeeds.
      const t4 = Date.now();
      const pauses = await Promise.allSettled([1, 2, 3, 4].map(() => yun.pauseInstance(vm.id)));
      const t5 = Date.now();
      assert.equal(pauses.filter((r) => r.status === "fulfilled").length, 1);
      for (const r of pauses.filter((r) => r.status === "rejected"))
        assert.match(String((r as PromiseRejectedResult).reason.message), /is paused; it cannot be paused/);
      const t6 = Date.now();
      assert.equal((await yun.resumeInstance(vm.id)).state, "running");
      pausedMin += t6 - t5;
      pausedMax += Date.now() - t4;

      // Metering against the wall clock: the running time lies between these bounds (1 vCPU).
      const tUsage = Date.now();
      const used = (await yun.usage()).vcpuSeconds;
      const tUsed = Date.now();
      const low = (tUsage - tCreated - pausedMax) / 1000;
      const high = (tUsed - tCreate - pausedMin) / 1000;
      assert.ok(
        used >= low - 0.5 && used <= high + 0.5,
        `metered ${used} vCPU-s; the VM ran between ${low} and ${high} s`,
      );

      // Mid-operation: a second instance is being started when the daemon is killed with SIGKILL.
      // Around it, a burst of creates and deletes of instances and volumes.
      const vm2 = await yun.createInstance({ name: "web2", image: "debian-tiny", flavor: "tiny", start: false });
      const old = await Promise.all(
        [0, 1, 2].map((i) => yun.createInstance({ name: `old${i}`, image: "debian-tiny", flavor: "tiny", start: false })),
      );
      const oldVol = await yun.createVolume({ name: "oldvol", sizeGiB: 1 });
      const burst: Promise<unknown>[] = [yun.startInstance(vm2.id)];
      await new Promise((r) => setTimeout(r, 150)); // web2's monitor is spawned, not yet answering
      for (let i = 0; i < 8; i++)
        burst.push(yun.createInstance({ name: `b${i}`, image: "debian-tiny", flavor: "tiny", start: false }));
      for (let i = 0; i < 4; i++) burst.push(yun.createVolume({ name: `bv${i}`, sizeGiB: 1 }));
      for (const o of old) burst.push(yun.deleteInstance(o.id));
      burst.push(yun.deleteVolume(oldVol.id));
      await new Promise((r) => setTimeout(r, 120)); // the burst is in flight
      s.child.kill("SIGKILL");
      const outcomes = await Promise.allSettled(burst);
      const done = outcomes.filter((o) => o.status === "fulfilled").length;
      process.stderr.write(`kill -9 with ${outcomes.length - done} of ${outcomes.length} requests unanswered\n`);
      if (s.child.exitCode === null && s.child.signalCode === null) await once(s.child, "exit");
      con.ws.terminate();
      assert.ok(monitorPids(home).size >= 1, "the VMs outlive the daemon (own process groups)");

      // Restart: web1 is re-attached, web2 is running or stopped (never stuck in building).
      s = await serve(home);
      yun = new YunClient({ server: s.url, token });
      const after1 = await yun.getInstance(vm.id);
      assert.equal(after1.state, "running");
      const after2 = await yun.getInstance(vm2.id);
      assert.ok(["running", "stopped", "error"].includes(after2.state), after2.state);
      // The state is consistent: every instance is settled and has its disk (or says it has none),
      // no directory or volume file is left without its row, and the quota counts what exists.
      const instances = await yun.listInstances();
      const cloudDir = join(home, "cloud");
      for (const i of instances) {
        assert.ok(["running", "stopped", "error"].includes(i.state), `${i.name} is ${i.state}`);
        if (i.state !== "error")
          assert.ok(existsSync(join(cloudDir, "instances", i.id, "root.qcow2")), `${i.name} has its disk`);
      }
      assert.deepEqual(readdirSync(join(cloudDir, "instances")).sort(), instances.map((i) => i.id).sort());
      const volumes = await yun.listVolumes();
      assert.deepEqual(readdirSync(join(cloudDir, "volumes")).sort(), volumes.map((v) => `${v.id}.qcow2`).sort());
      const me = await yun.whoami();
      const quota = await yun.getQuotas(me.project.id);
      assert.equal(quota.used.instances, instances.length);
      assert.equal(quota.used.diskGiB, instances.reduce((n, i) => n + i.diskGiB, 0) + volumes.length);
      for (const i of instances) if (/^(old|b)\d$/.test(i.name)) await yun.deleteInstance(i.id);
      if (after2.state === "running") {
        // Stop: the monitor exits and the vCPU meter stops.
        const stopped = await yun.stopInstance(vm2.id);
        assert.equal(stopped.state, "stopped");
        assert.ok(![...monitorPids(home).values()].includes(vm2.id), "web2's monitor is gone");
      }
      await yun.deleteInstance(vm2.id);
      const con2 = await openConsole(yun, vm.id);
      await con2.run("echo again-$((6*7))", /again-42/);
      // Reboot: the guest boots again and comes back to its shell on the same console.
      const mark = con2.output().length;
      assert.equal((await yun.rebootInstance(vm.id)).state, "running");
      await con2.waitFor(/Linux version[\s\S]*~ # /, 150_000, mark);
      await con2.run("echo rebooted-$((6*7))", /rebooted-42/);
      con2.ws.close();
      // Every monitor process belongs to a running instance of the database.
      const db = new Database(join(home, "cloud", "yun.db"), { readonly: true });
      const running = new Set(
        (db.prepare("SELECT id FROM instances WHERE state IN ('running','paused')").all() as { id: string }[]).map(
          (r) => r.id,
        ),
      );
      db.close();
      for (const [, name] of monitorPids(home))
        assert.ok(running.has(name), `monitor of ${name} has a running instance`);

      // An orphan: a monitor whose instance vanished from the database is stopped at the next start.
      s.child.kill("SIGKILL");
      await new Promise((r) => setTimeout(r, 200));
      const rw = new Database(join(home, "cloud", "yun.db"));
      rw.prepare("DELETE FROM instances WHERE id = ?").run(vm.id);
      rw.close();
      const orphanPids = [...monitorPids(home).keys()];
      assert.equal(orphanPids.length, 1);
      s = await serve(home);
      yun = new YunClient({ server: s.url, token });
      assert.match(s.out(), /stopped 1 VM\(s\) that no instance owned/);
      assert.equal(monitorPids(home).size, 0, "no VM monitor is left orphaned");
      assert.deepEqual(await yun.listInstances(), []);
      const events = await yun.events({ limit: 50 });
      assert.ok(events.some((e) => e.action === "instance.reattached" && e.resource === vm.id));
    } finally {
      for (const [pid] of monitorPids(home)) {
        try {
          process.kill(-pid, "SIGKILL");
        } catch {}
      }
      s.child.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 300));
      rmSync(home, { recursive: true, force: true });
    }
  },
);

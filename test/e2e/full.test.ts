// The full Debian image (`yun image pull debian`, src/images/full.ts), booted as a user would with
// `yun run --image debian`: one VM on a qcow2 overlay of the image's disk, two boots of it (the
// second after `reboot` in the guest). Each boot of real Debian takes minutes on Yun, so every
// check a user cares about is made in these two boots. Skipped, with the reason, only when the
// full image is not in $YUN_HOME (.ci/run pulls it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findImage, readManifest } from "../../src/images/store.js";
import { fullImageTestsOff } from "../support/full-image.js";
import { yunHome } from "../../src/images/paths.js";
import { Yun, yunSync } from "./harness.js";

/** Debian's bash prompt of the root autologin on the serial console. */
const ROOT_PROMPT = /root@debian:~# $/m;
const BOOT_TIMEOUT = 480_000;
const TOTAL = 1_500_000;

function fullImageSkip(): string | false {
  const off = fullImageTestsOff();
  if (off) return off;
  const image = findImage("debian");
  if (image === undefined) return `no debian image in ${yunHome()} (build it with: sudo npx yun image pull debian)`;
  if (readManifest(image.dir)?.build === undefined) {
    return `the debian image in ${yunHome()} is an older busybox build, not the full image (run yun image pull debian)`;
  }
  return false;
}

/** Count of root prompts seen in `text` (each boot's autologin shell shows one before any command). */
function prompts(text: string): number {
  return text.split("root@debian:~# ").length - 1;
}

test(
  "the full Debian image: root shell without login, systemd running, apt-get install through NAT, a file survives reboot",
  { timeout: TOTAL },
  async (t) => {
    const skip = fullImageSkip();
    if (skip) return t.skip(skip);
    const image = findImage("debian")!;
    const dir = mkdtempSync(join(tmpdir(), "yun-full-"));
    const disk = join(dir, "root.qcow2");
    const made = yunSync("disk", "create", "-b", image.rootDisk, "-F", "raw", disk);
    assert.equal(made.code, 0, `yun disk create failed: ${made.err}`);
    const yun = new Yun(["run", "--image", "debian", "--root", disk, "--memory", "1024"], TOTAL - 30_000);
    try {
      // ---- first boot
      await yun.waitFor("the root prompt of the autologin shell", (c) => ROOT_PROMPT.test(c), BOOT_TIMEOUT);
      const shell = (Date.now() - yun.started) / 1000;
      const state = await yun.sh("systemctl is-system-running --wait", BOOT_TIMEOUT);
      const running = (Date.now() - yun.started) / 1000;
      t.diagnostic(
        `root shell after ${shell.toFixed(0)} s, systemctl is-system-running answered after ${running.toFixed(0)} s`,
      );
      const failed = await yun.sh("systemctl --failed --no-legend --plain");
      assert.equal(failed.trim(), "", `systemctl --failed lists units:\n${failed}`);
      assert.equal(state.trim(), "running", `systemctl is-system-running printed ${JSON.stringify(state.trim())}`);
      const audit = await yun.sh("dpkg --audit");
      assert.equal(audit.trim(), "", `dpkg --audit reports:\n${audit}`);
      assert.match(await yun.sh("ps -p 1 -o comm="), /^systemd\s*$/m, "PID 1 is not systemd");
      // DHCP through systemd-networkd on the NIC, and apt through user-mode NAT from the host's mirror.
      assert.match(
        await yun.sh("ip -4 -o addr show scope global"),
        /inet 10\.0\.2\.\d+\//,
        "no DHCP address on the NIC",
      );
      const apt = await yun.sh(
        "apt-get install -y -q hello >/tmp/apt.log 2>&1; echo apt=$?; tail -n 3 /tmp/apt.log",
        300_000,
      );
      assert.match(apt, /^apt=0$/m, `apt-get install -y hello failed:\n${apt}`);
      assert.equal((await yun.sh("hello")).trim(), "Hello, world!");
      // Written before the reboot, read after it.
      const token = `persist-${process.pid}-${Date.now()}`;
      await yun.sh(`echo ${token} > /root/persist && sync`);
      const before = prompts(yun.console);
      yun.child.stdin.write("reboot\n");

      // ---- second boot, same disk
      await yun.waitFor(
        "the root prompt after the reboot",
        (c) => prompts(c) > before && ROOT_PROMPT.test(c),
        BOOT_TIMEOUT,
      );
      t.diagnostic(
        `rebooted to a root shell ${((Date.now() - yun.started) / 1000 - running).toFixed(0)} s after the first boot settled`,
      );
      assert.equal((await yun.sh("cat /root/persist")).trim(), token, "the file written before the reboot is gone");
      assert.equal((await yun.sh("hello")).trim(), "Hello, world!", "the package installed before the reboot is gone");
      assert.equal((await yun.sh("systemctl is-system-running --wait", BOOT_TIMEOUT)).trim(), "running");
    } finally {
      yun.kill();
      await yun.exited;
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

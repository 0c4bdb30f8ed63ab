// Debian's installer on Yun (issue 13): the netboot kernel and gzip-compressed initrd of
// debian-installer-13-netboot-riscv64, fetched through the private apt, boot to the installer's
// first screen on the serial console (the language menu, drawn by the newt frontend inside GNU
// screen), and a key press (Enter, taking the default language) moves it on to the next screen.
// Its input is piped: Yun is the terminal, and the Enter waits until the console is quiet.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Yun, tail } from "./harness.js";
import { findImage } from "../../src/images/store.js";
import { packageFetchImpossible, unpackedPackage } from "../support/debian-package.js";

const PACKAGE = "debian-installer-13-netboot-riscv64";
const FILES = "usr/lib/debian-installer/images/13/riscv64/text/debian-installer/riscv64";

/** The screen's text without escape sequences and the character-set shifts newt draws with. */
function screenText(console: string): string {
  return console
    .replace(/\x1b\[[0-9;?>=]*[ -/]*[@-~]/g, " ")
    .replace(/\x1b[()*+][0-9A-Za-z]/g, "")
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, "")
    .replace(/\x1b./g, "")
    .replace(/[\x0e\x0f]/g, "")
    .replace(/ +/g, " ");
}

const skip =
  packageFetchImpossible() ??
  (findImage("debian-tiny") ? false : "no debian-tiny image (its OpenSBI boots the installer)");

test(
  "Debian's installer boots to its language menu; Enter moves it to the next screen",
  { skip, timeout: 900_000 },
  async (t) => {
    const { dir, version } = await unpackedPackage(PACKAGE);
    t.diagnostic(`${PACKAGE} ${version}`);
    const yun = new Yun(
      [
        "run",
        "--image",
        "debian-tiny", // its OpenSBI
        "--kernel",
        join(dir, FILES, "linux"),
        "--initrd",
        join(dir, FILES, "initrd.gz"),
        "--append",
        "console=ttyS0 cryptomgr.notests",
        "--memory",
        "1024",
        "--no-net",
      ],
      860_000,
    );
    try {
      await yun.waitFor(
        "the language menu",
        (c) => /Select a language/.test(screenText(c)) && /English/.test(screenText(c)),
        800_000,
      );
      const menuAt = yun.console.length;
      t.diagnostic(`the language menu after ${((Date.now() - yun.started) / 1000).toFixed(0)} s`);
      yun.child.stdin.write("\r");
      await yun.waitFor(
        "the next screen (location)",
        (c) => /Select your location/.test(screenText(c.slice(menuAt))),
        120_000,
      );
      assert.ok(!yun.console.includes("Kernel panic"), tail(yun.console));
    } finally {
      yun.kill();
      await yun.exited;
    }
  },
);

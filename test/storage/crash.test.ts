/**
 * Crash safety: a child process writing at random is killed with SIGKILL at a random moment;
 * `qemu-img check` may then report leaked clusters but never corruption, and Yun reopens the
 * image (taking over the dead writer's lock). Repeated on the same images, so damage would
 * accumulate.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createQcow2, openDiskImage } from "../../src/storage/image.js";
import { Rng } from "../support/rng.js";
import { pattern, qemuCheck, qemuImg, scratch } from "./helpers.js";

const tmp = scratch();
after(() => tmp.cleanup());
const p = tmp.path;
const WRITER = fileURLToPath(new URL("./crash-writer.js", import.meta.url));

/** Runs the writer until it is ready, lets it go on for `ms`, then SIGKILLs it. */
function killMidWrite(image: string, seed: number, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, image, String(seed)], { stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      if (d.toString().includes("ready")) setTimeout(() => child.kill("SIGKILL"), ms);
    });
    child.on("exit", (code, signal) => {
      if (signal === "SIGKILL") resolve();
      else reject(new Error(`the writer exited (${code}) before it was killed: ${err}`));
    });
  });
}

async function crashRounds(image: string, seed: number, rounds: number): Promise<void> {
  const rng = new Rng(seed);
  for (let round = 0; round < rounds; round++) {
    await killMidWrite(image, seed * 100 + round, rng.int(20, 250));
    const c = qemuCheck(image);
    assert.equal(c.corruptions, 0, `round ${round}: corruption after SIGKILL:\n${c.text}`);
    assert.equal(c.checkErrors, 0, `round ${round}: check errors:\n${c.text}`);
    assert.ok(c.exit === 0 || c.exit === 3, `round ${round}: qemu-img check exit ${c.exit}:\n${c.text}`);
    const disk = openDiskImage(image); // the dead writer's lock is stale
    disk.close();
  }
}

test("SIGKILL while writing a 512-byte-cluster image leaves at most leaked clusters", async () => {
  createQcow2(p("small.qcow2"), { size: 16 << 20, clusterSize: 512 });
  await crashRounds(p("small.qcow2"), 1, 4);
});

test("SIGKILL while writing an overlay with an internal snapshot leaves at most leaked clusters", async () => {
  writeFileSync(p("base.raw"), pattern(4 << 20, 2));
  createQcow2(p("ov.qcow2"), { size: 8 << 20, clusterSize: 4096, backing: { path: "base.raw", format: "raw" } });
  await crashRounds(p("ov.qcow2"), 2, 1);
  qemuImg("check", "-q", "-r", "leaks", p("ov.qcow2"));
  qemuImg("snapshot", "-c", "s", p("ov.qcow2"));
  await crashRounds(p("ov.qcow2"), 3, 3);
});

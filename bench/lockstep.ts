/**
 * `npm run lockstep`: boots the Debian image to its shell prompt with the translator and the
 * interpreter in lockstep (src/vmm/lockstep.ts) and reports the first divergence, if any.
 *
 *   npm run lockstep -- [--max N (million instructions, default 4000)] [--threshold N] [--firmware none]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { findImage } from "../src/images/store.js";
import { DEFAULT_APPEND } from "../src/cli/run.js";
import { runLockstep } from "../src/vmm/lockstep.js";

const { values } = parseArgs({
  options: {
    max: { type: "string", default: "4000" },
    threshold: { type: "string", default: "50" },
    firmware: { type: "string" },
  },
});
const image = findImage("debian-tiny");
if (!image) {
  process.stderr.write("lockstep: no Debian image; run: npx yun image pull debian-tiny\n");
  process.exit(1);
}
const noFirmware = values.firmware === "none";
const t0 = performance.now();
const r = runLockstep(
  {
    kernel: readFileSync(image.kernel),
    initrd: readFileSync(image.initrd),
    firmware: noFirmware ? null : readFileSync(image.firmware.dynamic),
    firmwareKind: noFirmware ? "none" : "dynamic",
    append: DEFAULT_APPEND,
    memoryMiB: 256,
  },
  { maxInstructions: Number(values.max) * 1e6, until: "~ # ", threshold: Number(values.threshold) },
);
const s = ((performance.now() - t0) / 1000).toFixed(1);
process.stdout.write(
  `lockstep: ${(r.instructions / 1e6).toFixed(1)} M instructions in ${r.steps} steps (${r.translatedBlocks} blocks translated), ${s} s; ended by ${r.end}\n`,
);
if (r.divergence) {
  const d = r.divergence;
  process.stdout.write(
    `DIVERGENCE at instret ${d.instret} (step from pc 0x${BigInt.asUintN(64, BigInt(d.stepPc)).toString(16)}): ${d.what}: translated ${d.translated}, interpreted ${d.interpreted}\n`,
  );
  process.exit(1);
}
process.stdout.write(r.end === "marker" ? "no divergence up to the shell prompt\n" : "no divergence\n");

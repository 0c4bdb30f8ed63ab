/**
 * The translator against the interpreter on a real boot: OpenSBI and the first instructions of
 * Debian's kernel in lockstep (the full boot to the shell is `npm run lockstep`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { findImage } from "../../src/images/store.js";
import { runLockstep } from "../../src/vmm/lockstep.js";
import { DEFAULT_APPEND } from "../../src/cli/run.js";

const image = findImage("debian-tiny");

test(
  "lockstep: 60 M instructions of OpenSBI and Linux boot, no divergence",
  { skip: image ? false : "no Debian image (yun image pull debian-tiny)" },
  () => {
    const r = runLockstep(
      {
        kernel: readFileSync(image!.kernel),
        initrd: readFileSync(image!.initrd),
        firmware: readFileSync(image!.firmware.dynamic),
        firmwareKind: "dynamic",
        append: DEFAULT_APPEND,
        memoryMiB: 256,
      },
      { maxInstructions: 60e6, threshold: 20 },
    );
    assert.equal(r.divergence, null, JSON.stringify(r.divergence));
    assert.equal(r.end, "budget");
    assert.ok(r.translatedBlocks > 500, `${r.translatedBlocks} blocks translated`);
    assert.match(r.output, /OpenSBI/);
  },
);

// Monitor logs are capped: whatever a guest makes its monitor write, PATH and PATH.1 stay within
// the cap each, the newest output is kept, and nothing between them is lost at a rotation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { CappedLog, LOG_MAX_BYTES } from "../../src/vmm/logfile.js";

const LOGFILE_JS = resolve(fileURLToPath(import.meta.url), "../../../src/vmm/logfile.js");

function lineNumbers(text: string): number[] {
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => Number(/^line (\d+) /.exec(l)![1]));
}

test("a capped log keeps the newest bytes in PATH and the ones before in PATH.1, owner-only", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-log-"));
  try {
    const path = join(dir, "monitor.log");
    const log = new CappedLog(path, 1000);
    for (let i = 0; i < 5000; i++) log.write(`line ${i} ${"x".repeat(i % 17)}\n`);
    log.close();
    assert.ok(statSync(path).size <= 1000, `${statSync(path).size} bytes`);
    assert.ok(statSync(`${path}.1`).size <= 1000);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(statSync(`${path}.1`).mode & 0o777, 0o600);
    const older = lineNumbers(readFileSync(`${path}.1`, "utf8"));
    const newer = lineNumbers(readFileSync(path, "utf8"));
    assert.equal(newer.at(-1), 4999);
    // Contiguous: the rotation lost no line between the two files.
    const kept = [...older, ...newer];
    assert.deepEqual(
      kept,
      kept.map((_, i) => kept[0] + i),
    );
    // A single write larger than the cap keeps its end.
    const big = new CappedLog(join(dir, "big.log"), 100);
    big.write("a".repeat(500) + "THE END\n");
    big.close();
    const text = readFileSync(join(dir, "big.log"), "utf8");
    assert.equal(text.length, 100);
    assert.ok(text.endsWith("THE END\n"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a process whose stderr goes to a capped log writes 12 MiB and leaves at most twice the cap, newest last", () => {
  const dir = mkdtempSync(join(tmpdir(), "yun-log-"));
  try {
    const path = join(dir, "monitor.log");
    // As `yun run --log` does: stderr (console.error, Node's warnings) into the capped log.
    const script = `
      const { CappedLog, redirectStderr } = await import(${JSON.stringify(LOGFILE_JS)});
      redirectStderr(new CappedLog(${JSON.stringify(path)}));
      const pad = "y".repeat(200);
      for (let i = 0; i < 60000; i++) console.error("line " + i + " " + pad);
      process.stderr.write("line 60000 last\\n");
    `;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "", "nothing reached the real stderr");
    assert.ok(statSync(path).size <= LOG_MAX_BYTES);
    assert.ok(statSync(`${path}.1`).size <= LOG_MAX_BYTES);
    assert.ok(!existsSync(`${path}.2`));
    const newer = lineNumbers(readFileSync(path, "utf8"));
    assert.equal(newer.at(-1), 60000);
    const older = lineNumbers(readFileSync(`${path}.1`, "utf8"));
    assert.equal(older.at(-1)! + 1, newer[0]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

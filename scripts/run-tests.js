#!/usr/bin/env node
// Runs every compiled test file under dist/test with Node's test runner.
// Node 20's runner takes no globs, so the files are listed here.
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

function find(dir, out) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) find(path, out);
    else if (name.endsWith(".test.js")) out.push(path);
  }
  return out;
}
const filter = process.argv.slice(2);
const files = find("dist/test", []).filter((f) => filter.length === 0 || filter.some((s) => f.includes(s))).sort();
// VMs the tests boot with `yun run` use the small busybox image unless a test names another.
const testEnv = { YUN_IMAGE: "debian-tiny", ...process.env };
const run = (list, env) =>
  spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...list], { stdio: "inherit", env: { ...testEnv, ...env } })
    .status ?? 1;
let status = run(files, {});
// The CPU-level tests run a second time on the translator (see test/support/engine.ts).
const cpuFiles = files.filter((f) => /[/\\](cpu|diff)[/\\]|sbi\.test/.test(f) && !f.includes("fpu"));
if (cpuFiles.length > 0) {
  console.log(`\n# again on the translator: ${cpuFiles.length} files`);
  status = run(cpuFiles, { YUN_TEST_ENGINE: "jit" }) || status;
}
process.exit(status);

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
const result = spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...files], { stdio: "inherit" });
process.exit(result.status ?? 1);

#!/usr/bin/env node
// Builds the dashboard: compiles the browser TypeScript in src/web/static (its own tsconfig: DOM, ES
// modules) and copies the other static files (HTML, CSS, icons) next to the JavaScript, so that
// dist/src/web/static is the whole site `yun serve` serves at /.
import { cpSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const status = spawnSync(process.execPath, [tsc, "-p", "src/web/tsconfig.json"], {
  cwd: root,
  stdio: "inherit",
}).status;
if (status !== 0) process.exit(status ?? 1);
mkdirSync(`${root}dist/src/web/static`, { recursive: true });
cpSync(`${root}src/web/static`, `${root}dist/src/web/static`, {
  recursive: true,
  filter: (src) => !src.endsWith(".ts"),
});

#!/usr/bin/env node
// Builds the dashboard: compiles the browser TypeScript in src/web/static (its own tsconfig: DOM, ES
// modules), points the packages it imports at the server's /vendor/ paths, and copies the other
// static files (HTML, CSS, icons) next to the JavaScript, so that dist/src/web/static is the whole
// site `yun serve` serves at /.
import { cpSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
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

// The packages' browser modules, as server.ts serves them under /vendor/. Rewritten here rather
// than mapped by an inline <script type="importmap">, which the Content-Security-Policy
// (script-src 'self', no inline scripts) would block.
const VENDOR = {
  "@xterm/xterm": "/vendor/xterm/lib/xterm.mjs",
  "@xterm/addon-fit": "/vendor/addon-fit/addon-fit.mjs",
  uplot: "/vendor/uplot/uPlot.esm.js",
};
const out = `${root}dist/src/web/static`;
for (const name of readdirSync(out)) {
  if (!name.endsWith(".js")) continue;
  const path = `${out}/${name}`;
  const code = readFileSync(path, "utf8");
  // tsc writes each static import or re-export on a line of its own.
  const next = code.replace(/^((?:import|export)\b[^;\n]*?\bfrom\s*|import\s*)"([^"]+)"/gm, (all, head, spec) => {
    if (spec.startsWith(".") || spec.startsWith("/")) return all;
    const to = VENDOR[spec];
    if (to === undefined) {
      console.error(`build-web: ${name} imports "${spec}", which is not served under /vendor/ (add it to VENDOR)`);
      process.exit(1);
    }
    return `${head}"${to}"`;
  });
  if (next !== code) writeFileSync(path, next);
}

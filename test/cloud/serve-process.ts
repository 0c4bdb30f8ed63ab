/** `yun serve` as its own process (bin/yun.js, so with the entry point's umask), for tests that
 *  measure the daemon itself or check what it leaves on disk. */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { tempHome } from "./helpers.js";

export const BIN = resolve(fileURLToPath(import.meta.url), "../../../../bin/yun.js");

/** A `yun serve` process on a free port with a fresh YUN_HOME (removed by stop() unless keep). */
export async function serveProcess(
  extra: string[] = [],
  home = tempHome(),
): Promise<{
  child: ChildProcess;
  url: string;
  token: string;
  home: string;
  out: () => string;
  stop(keepHome?: boolean): Promise<void>;
}> {
  const child = spawn(process.execPath, [BIN, "serve", "--port", "0", ...extra], {
    env: { ...process.env, YUN_HOME: home },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`yun serve did not start: ${out}`)), 30_000);
    const check = (): void => {
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      if (m) {
        clearTimeout(timer);
        res(Number(m[1]));
      }
    };
    child.stdout!.on("data", check);
    child.once("exit", () => rej(new Error(`yun serve exited: ${out}`)));
  });
  const token = readFileSync(join(home, "cloud", "admin.token"), "utf8").trim();
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    token,
    home,
    out: () => out,
    stop: async (keepHome = false) => {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await gone;
      }
      if (!keepHome) rmSync(home, { recursive: true, force: true });
    },
  };
}

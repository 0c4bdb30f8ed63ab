/**
 * The guest agent (guest/agent/agent.c, protocol in docs/guest-agent.md), compiled for the image:
 * a static riscv64 binary built with Debian's cross compiler when the image is built. Without the
 * compiler the image is built without an agent, and the pull says so in one line.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findInPath, ImageError, run, sha256 } from "./util.js";

/** The cross compiler (Debian package gcc-riscv64-linux-gnu). */
export const AGENT_COMPILER = "riscv64-linux-gnu-gcc";
/** Where the agent lives in the guest, and the vsock port it listens on. */
export const AGENT_GUEST_PATH = "/usr/sbin/yun-agent";
export const AGENT_VSOCK_PORT = 1024;

/** guest/agent/agent.c in the source tree (this file runs from dist/src/images/). */
export function agentSourcePath(): string {
  return fileURLToPath(new URL("../../../guest/agent/agent.c", import.meta.url));
}

/** SHA-256 of the agent's source: an image built from another source gets rebuilt. */
export function agentSourceHash(): string {
  return sha256(readFileSync(agentSourcePath()));
}

/** Whether the cross compiler is installed. */
export function agentCompilerAvailable(): boolean {
  return findInPath(AGENT_COMPILER) !== undefined;
}

/**
 * Compiles the agent; returns the static binary, or null (with `why`) when the compiler is missing.
 * A compile error is an ImageError: the source in the tree is broken.
 */
export async function buildAgent(): Promise<{ binary: Buffer; sourceHash: string } | { binary: null; why: string }> {
  if (!agentCompilerAvailable()) {
    return {
      binary: null,
      why: `${AGENT_COMPILER} is not installed (apt-get install gcc-riscv64-linux-gnu): the image has no guest agent`,
    };
  }
  const dir = mkdtempSync(join(tmpdir(), "yun-agent-"));
  try {
    const out = join(dir, "yun-agent");
    const r = await run(AGENT_COMPILER, ["-static", "-O2", "-s", "-Wall", "-o", out, agentSourcePath()]);
    if (r.code !== 0) {
      throw new ImageError(`the guest agent does not compile: ${r.stderr.trim().split("\n").slice(0, 5).join(" / ")}`);
    }
    return { binary: readFileSync(out), sourceHash: agentSourceHash() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `yun run`: boot a VM with its console on this terminal.
 *
 * On a terminal the console is interactive (raw mode; Ctrl-A X quits, Ctrl-A Ctrl-A sends Ctrl-A).
 * With stdin not a terminal, input is queued and handed to the guest as its UART reads it, so
 * `printf 'echo hi\npoweroff -f\n' | yun run` works as a script.
 */
import { parseArgs } from "node:util";
import { readFileSync, existsSync, statSync } from "node:fs";
import { VirtMachine, type PowerOff } from "../vmm/virt.js";
import { findImage } from "../images/store.js";
import { pullDebianImage } from "../images/debian.js";

const HELP = `Usage: yun run [options]

Boots a RISC-V virtual machine with its serial console on this terminal.

Options:
  --image NAME        boot image (default: debian; pulled on first use)
  --kernel FILE       kernel Image to boot instead of the image's
  --initrd FILE       initramfs to boot instead of the image's
  --append TEXT       kernel command line (default: "console=ttyS0 cryptomgr.notests")
  --memory MIB        guest memory in MiB (default: 256)
  --firmware FILE|none
                      M-mode firmware (default: the image's OpenSBI fw_dynamic); "none" boots the
                      kernel in S-mode with Yun answering its SBI calls itself
  -h, --help          show this help

In a terminal, Ctrl-A X quits. The exit status is 0 when the guest powers off.
`;

/** The default kernel command line: serial console; the crypto self-tests (half a billion guest
 *  instructions at boot) are skipped, as a cloud image would. */
export const DEFAULT_APPEND = "console=ttyS0 cryptomgr.notests";

export class UsageError extends Error {}

export interface RunOptions {
  kernel: string;
  initrd?: string;
  firmware: string | null;
  append: string;
  memoryMiB: number;
}

function readInput(path: string, what: string): Uint8Array {
  if (!existsSync(path)) throw new UsageError(`${what} file not found: ${path}`);
  if (!statSync(path).isFile()) throw new UsageError(`${what} is not a regular file: ${path}`);
  return readFileSync(path);
}

export async function resolveRunOptions(args: string[]): Promise<RunOptions | "help"> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: false,
      strict: true,
      options: {
        image: { type: "string" },
        kernel: { type: "string" },
        initrd: { type: "string" },
        append: { type: "string" },
        memory: { type: "string" },
        firmware: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(((e as Error).message.split(". ")[0] ?? "bad arguments") + " (see yun run --help)");
  }
  const v = parsed.values;
  if (v.help) return "help";
  let memoryMiB = 256;
  if (v.memory !== undefined) {
    if (!/^\d+$/.test(v.memory)) throw new UsageError(`--memory takes a size in MiB, got "${v.memory}"`);
    memoryMiB = Number(v.memory);
    if (memoryMiB < 64 || memoryMiB > 2048) throw new UsageError(`--memory must be between 64 and 2048 MiB, got ${memoryMiB}`);
  }
  let kernel = v.kernel;
  let initrd = v.initrd;
  let firmware: string | null | undefined = v.firmware === "none" ? null : v.firmware;
  if (kernel === undefined || (initrd === undefined && v.kernel === undefined) || firmware === undefined) {
    const name = v.image ?? "debian";
    let image = findImage(name);
    if (!image) {
      if (name !== "debian") throw new UsageError(`no image named "${name}" (see yun image list)`);
      process.stderr.write(`yun: image ${name} is not here yet; pulling it first\n`);
      image = await pullDebianImage({ progress: process.stderr.isTTY, log: (l) => process.stderr.write(l + "\n") });
    }
    kernel ??= image.kernel;
    if (v.kernel === undefined) initrd ??= image.initrd;
    if (firmware === undefined) firmware = image.firmware.dynamic;
  }
  return { kernel, initrd, firmware, append: v.append ?? DEFAULT_APPEND, memoryMiB };
}

export async function runCommand(args: string[]): Promise<number> {
  let opts: RunOptions | "help";
  try {
    opts = await resolveRunOptions(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`yun run: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (opts === "help") {
    process.stdout.write(HELP);
    return 0;
  }
  let machine: VirtMachine;
  let result: PowerOff;
  const stdin = process.stdin;
  const interactive = stdin.isTTY === true;
  for (;;) {
    try {
      machine = new VirtMachine({
        kernel: readInput(opts.kernel, "kernel"),
        initrd: opts.initrd ? readInput(opts.initrd, "initrd") : undefined,
        firmware: opts.firmware ? readInput(opts.firmware, "firmware") : null,
        firmwareKind: opts.firmware ? "dynamic" : "none",
        append: opts.append,
        memoryMiB: opts.memoryMiB,
        output: (bytes) => process.stdout.write(bytes),
      });
    } catch (e) {
      process.stderr.write(`yun run: ${(e as Error).message}\n`);
      return e instanceof UsageError ? 2 : 1;
    }
    const detach = attachConsole(machine, interactive);
    try {
      result = await machine.run();
    } finally {
      detach();
    }
    if (result.kind !== "reset") break;
    process.stderr.write("\r\nyun: guest rebooted\r\n");
  }
  if (result.kind === "fail") return result.code || 1;
  return 0;
}

/** Connects stdin to the guest console; returns a function that disconnects it. */
function attachConsole(machine: VirtMachine, interactive: boolean): () => void {
  const stdin = process.stdin;
  let escape = false;
  const onData = (chunk: Buffer): void => {
    if (!interactive) {
      machine.input(chunk);
      return;
    }
    const out: number[] = [];
    for (const b of chunk) {
      if (escape) {
        escape = false;
        if (b === 0x78 || b === 0x58) {
          machine.stop("poweroff", 0);
          process.stderr.write("\r\nyun: terminated by Ctrl-A X\r\n");
          return;
        }
        if (b === 0x01) out.push(1);
        continue;
      }
      if (b === 0x01) escape = true;
      else out.push(b);
    }
    if (out.length) machine.input(Uint8Array.from(out));
  };
  if (interactive) stdin.setRawMode(true);
  stdin.on("data", onData);
  stdin.resume();
  return () => {
    stdin.off("data", onData);
    if (interactive) stdin.setRawMode(false);
    stdin.pause();
  };
}

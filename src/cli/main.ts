/** The `yun` command: dispatches to subcommands. */
import { runCommand } from "./run.js";
import { imageCommand } from "./image.js";
import { diskCommand } from "./disk.js";
import { vmCommand } from "./vm.js";
import { sshCommand } from "./ssh.js";
import { PRIVATE_UMASK } from "../storage/private.js";
import { CLOUD_HELP, CLOUD_NOUNS, cloudCommand, isCloudImageCommand } from "./cloud.js";

const HELP = `Usage: yun <command> [options]

Commands:
  run        boot a virtual machine with its console on this terminal
  image      pull and list boot images (yun image pull debian)
  disk       create, inspect, convert and grow disk images (raw, qcow2)
  vm         drive running VMs: list, pause, resume, stop, snapshot, migrate, console
  exec       run a riscv64 Linux program on this host, without a VM (yun exec --root DIR PROG)
  ssh        SSH into a local VM through its published port 22 (yun ssh VM [-- CMD])
  serve      run the cloud: API, dashboard and consoles (yun serve --port N)
  cloud      export the cloud's records to a file, or import them (yun cloud export FILE)
  sandbox    sandboxes from templates: create, exec, files, pause, resume, fork, kill, list
  template   sandbox templates: build (boot, run commands, snapshot), list, delete
  help       show this help

${CLOUD_HELP}
Run "yun <command> --help" for a command's options.
`;

export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  // What yun writes (disks, the cloud's state, snapshots, logs) is its user's alone; the image
  // that `yun image pull` builds is public and its guest files keep their packages' modes.
  // A program `yun exec` runs keeps the user's umask, as it would run natively.
  if ((command !== "image" || isCloudImageCommand(rest)) && command !== "exec") process.umask(PRIVATE_UMASK);
  switch (command) {
    case "run":
      return runCommand(rest);
    case "image":
      return isCloudImageCommand(rest) ? cloudCommand("image", rest) : imageCommand(rest);
    case "disk":
      return diskCommand(rest);
    case "vm":
      return vmCommand(rest);
    case "ssh":
      return sshCommand(rest);
    case "cloud":
      return (await import("./records.js")).cloudRecordsCommand(rest);
    case "exec":
      // Loaded only here, as serve: the user-mode emulator is no other command's business.
      return (await import("./exec.js")).execCommand(rest);
    case "sandbox":
    case "template":
      return (await import("./sandbox.js")).sandboxCli(command, rest);
    case "serve":
      // Loaded only here: the API server's libraries would slow every other command's start.
      return (await import("./serve.js")).serveCommand(rest);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(HELP);
      return command === undefined ? 2 : 0;
    case "--version":
      process.stdout.write("yun 0.1.0\n");
      return 0;
    default:
      if (CLOUD_NOUNS.includes(command)) return cloudCommand(command, rest);
      process.stderr.write(`yun: unknown command "${command}" (see yun help)\n`);
      return 2;
  }
}

/**
 * `yun image`: build and list boot images.
 *
 *   yun image pull [NAME] [--force]   build image NAME (default: the default image of yun run)
 *   yun image list                    table of installed images
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_IMAGE, pullImage } from "../images/pull.js";
import { AVAILABLE_IMAGES, listImages, type ImageInfo } from "../images/store.js";
import { formatSize, ImageError } from "../images/util.js";

const HELP = `Usage: yun image <command> [options]

Commands:
  pull [NAME] [--force]   Build image NAME (default: ${DEFAULT_IMAGE}) from Debian trixie riscv64 packages
                          into $YUN_HOME/images/NAME. An intact image is left as it is unless
                          --force is given. Needs apt-get and dpkg-deb (a Debian/Ubuntu host).
  list                    List installed images.

Cloud images (on the yun serve server; see yun instance --help for --server/--token):
  upload FILE --name NAME [--format qcow2|raw]   upload a disk image
  list --cloud                                   list the cloud's images
  show IMAGE | delete IMAGE...                   show or delete one of them

Options:
  -f, --force             (pull) rebuild even if the image is up to date
  -h, --help              show this help

Environment:
  YUN_HOME                where images and caches live (default ~/.local/share/yun)
  YUN_APT_MIRROR          Debian archive URI to use instead of the one in the host's apt sources

Images: ${AVAILABLE_IMAGES.join(", ")}
`;

class UsageError extends Error {}

function fail(message: string, code: number): number {
  process.stderr.write(`yun image: ${message}\n`);
  return code;
}

function parse<O extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    // parseArgs messages are long ("Unknown option '--x'. To specify a positional argument starting with a '-' ...").
    const msg = (e as Error).message.split(". ")[0] ?? (e as Error).message;
    throw new UsageError(msg.replace(/\.$/, ""));
  }
}

function formatCreated(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** Renders images as an aligned table with the columns NAME, KERNEL, CREATED, SIZE. */
export function formatImageTable(images: ImageInfo[]): string {
  const rows = [["NAME", "KERNEL", "CREATED", "SIZE"]];
  for (const i of images) rows.push([i.name, i.kernelVersion, formatCreated(i.created), formatSize(i.sizeBytes)]);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return (
    rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join("  ")).join("\n") +
    "\n"
  );
}

async function pull(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    force: { type: "boolean", short: "f" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`pull takes one image name, got ${positionals.length}`);
  const name = positionals[0] ?? DEFAULT_IMAGE;
  if (!AVAILABLE_IMAGES.includes(name)) {
    return fail(`unknown image "${name}"; available: ${AVAILABLE_IMAGES.join(", ")}`, 1);
  }
  await pullImage(name, { force: values.force === true });
  return 0;
}

function list(args: string[]): number {
  const { values, positionals } = parse(args, { help: { type: "boolean", short: "h" } });
  if (values.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`list takes no arguments, got "${positionals[0]}"`);
  const images = listImages();
  process.stdout.write(formatImageTable(images));
  if (images.length === 0) process.stderr.write(`no images yet; build one with: yun image pull ${DEFAULT_IMAGE}\n`);
  return 0;
}

/** Entry point for `yun image ...`; returns the process exit code. */
export async function imageCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case undefined:
        process.stderr.write(HELP);
        return 2;
      case "-h":
      case "--help":
      case "help":
        process.stdout.write(HELP);
        return 0;
      case "pull":
        return await pull(rest);
      case "list":
      case "ls":
        return list(rest);
      default:
        if (sub.startsWith("-")) throw new UsageError(`unknown option ${sub}`);
        throw new UsageError(`unknown command "${sub}"; expected pull or list`);
    }
  } catch (e) {
    if (e instanceof UsageError) return fail(`${e.message} (see yun image --help)`, 2);
    if (e instanceof ImageError) return fail(e.message, 1);
    throw e;
  }
}

/**
 * `yun disk`: create, inspect, convert and grow disk images (raw and qcow2).
 */
import { parseArgs } from "node:util";
import { BlockIoError } from "../devices/block.js";
import {
  DiskImageError,
  convertDisk,
  createQcow2,
  createRaw,
  diskInfo,
  formatSize,
  parseSize,
  resizeDisk,
  type DiskFormat,
  type DiskInfo,
} from "../storage/image.js";

const HELP = `Usage: yun disk <command> [options]

Commands:
  create    create a new disk image
  info      describe an image and its backing chain
  convert   copy an image into a new raw or qcow2 image
  resize    grow an image

Run "yun disk <command> --help" for a command's options.
`;

const CREATE_HELP = `Usage: yun disk create [-f raw|qcow2] [-b BACKING [-F raw|qcow2]] FILE [SIZE]

Creates a new disk image FILE of SIZE bytes (10G, 512M, 1T, 64K or a byte count; binary units).
An existing file is never overwritten.

Options:
  -f, --format raw|qcow2    image format (default: qcow2)
  -b, --backing FILE        a qcow2 overlay on FILE: reads of clusters never written come from FILE,
                            which stays unchanged; a relative FILE is relative to the new image's
                            directory. SIZE defaults to FILE's size
  -F, --backing-format raw|qcow2
                            the backing file's format (default: detected from its contents)
      --cluster-size SIZE   qcow2 cluster size, a power of two from 512 to 2M (default: 64K)
  -h, --help                show this help
`;

const INFO_HELP = `Usage: yun disk info [--json] FILE

Shows an image's format, virtual size, space used on disk, cluster size, flags and backing chain.

Options:
      --json    print the information as JSON
  -h, --help    show this help
`;

const CONVERT_HELP = `Usage: yun disk convert [-O raw|qcow2] SRC DST

Copies the disk SRC (with its backing chain flattened into one image) into a new image DST.
Clusters that are all zero are not written: a qcow2 DST allocates nothing for them and a raw DST
stays sparse. DST must not exist.

Options:
  -O, --output-format raw|qcow2   DST's format (default: qcow2)
      --cluster-size SIZE         qcow2 cluster size (default: 64K)
  -h, --help                      show this help
`;

const RESIZE_HELP = `Usage: yun disk resize FILE SIZE|+SIZE

Grows the disk FILE to SIZE bytes, or by SIZE bytes with "+". The new space reads as zeroes; the
guest still has to grow its partition and filesystem. Shrinking is refused (it would drop data).

Options:
  -h, --help    show this help
`;

/** Where the command writes; tests pass their own. */
export interface DiskIo {
  out(text: string): void;
  err(text: string): void;
}

const processIo: DiskIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
};

class UsageError extends Error {}

type Options = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>["options"]>;

function parse(args: string[], options: Options, sub: string) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(((e as Error).message.split(". ")[0] ?? "bad arguments") + ` (see yun disk ${sub} --help)`);
  }
}

function format(value: string | undefined, flag: string, fallback: DiskFormat): DiskFormat {
  if (value === undefined) return fallback;
  if (value !== "raw" && value !== "qcow2") throw new UsageError(`${flag} takes raw or qcow2, not "${value}"`);
  return value;
}

function size(text: string, what: string): number {
  const n = parseSize(text);
  if (n === null) throw new UsageError(`${what} must be a size like 10G, 512M or 1048576, not "${text}"`);
  return n;
}

export async function diskCommand(args: string[], io: DiskIo = processIo): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case "create":
        return create(rest, io);
      case "info":
        return info(rest, io);
      case "convert":
        return convert(rest, io);
      case "resize":
        return resize(rest, io);
      case undefined:
      case "help":
      case "--help":
      case "-h":
        (sub === undefined ? io.err : io.out)(HELP);
        return sub === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${sub}" (see yun disk --help)`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`yun disk: ${e.message}\n`);
      return 2;
    }
    if (e instanceof DiskImageError || e instanceof BlockIoError) {
      io.err(`yun disk: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

function create(args: string[], io: DiskIo): number {
  const { values: v, positionals: p } = parse(
    args,
    {
      format: { type: "string", short: "f" },
      backing: { type: "string", short: "b" },
      "backing-format": { type: "string", short: "F" },
      "cluster-size": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    "create",
  );
  if (v.help) return help(io, CREATE_HELP);
  const fmt = format(v.format as string | undefined, "-f", "qcow2");
  const backing = v.backing as string | undefined;
  const backingFormat = v["backing-format"] as string | undefined;
  if (p.length < 1 || p.length > 2) throw new UsageError("create takes FILE and SIZE (see yun disk create --help)");
  if (backingFormat !== undefined && backing === undefined) throw new UsageError("-F needs -b BACKING");
  if (backing !== undefined && fmt !== "qcow2") throw new UsageError("only qcow2 images can have a backing file");
  if (p.length < 2 && backing === undefined)
    throw new UsageError("create needs a SIZE (or -b BACKING to take its size)");
  const [file, sizeText] = p;
  const bytes = sizeText === undefined ? undefined : size(sizeText, "SIZE");
  const clusterSize = v["cluster-size"] === undefined ? undefined : size(v["cluster-size"] as string, "--cluster-size");
  if (clusterSize !== undefined && fmt !== "qcow2") throw new UsageError("--cluster-size applies to qcow2 images only");
  if (fmt === "raw") createRaw(file, bytes!);
  else {
    createQcow2(file, {
      size: bytes,
      clusterSize,
      backing:
        backing === undefined
          ? undefined
          : { path: backing, format: backingFormat === undefined ? undefined : format(backingFormat, "-F", "qcow2") },
    });
  }
  const made = diskInfo(file);
  const on = made.backingFile ? `, backed by ${made.backingFile}` : "";
  io.out(`Created ${made.format} image ${file} (${formatSize(made.virtualSize)}${on})\n`);
  return 0;
}

function info(args: string[], io: DiskIo): number {
  const { values: v, positionals: p } = parse(
    args,
    { json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    "info",
  );
  if (v.help) return help(io, INFO_HELP);
  if (p.length !== 1) throw new UsageError("info takes one FILE (see yun disk info --help)");
  const d = diskInfo(p[0]);
  io.out(v.json ? JSON.stringify(d, null, 2) + "\n" : describe(d));
  return 0;
}

function describe(d: DiskInfo): string {
  const lines = [
    `image: ${d.path}`,
    `format: ${d.format}`,
    `virtual size: ${formatSize(d.virtualSize)} (${d.virtualSize} bytes)`,
    `disk size: ${formatSize(d.actualSize)}`,
  ];
  if (d.clusterSize !== undefined) lines.push(`cluster size: ${d.clusterSize}`);
  if (d.compat !== undefined) lines.push(`compat: ${d.compat}`);
  if (d.backingFile !== undefined) {
    lines.push(`backing file: ${d.backingFile}${d.backingFormat ? ` (format: ${d.backingFormat})` : ""}`);
    for (const b of d.backingChain) lines.push(`  ${b.path}: ${b.format}, ${formatSize(b.virtualSize)}`);
  }
  if (d.snapshots.length > 0) {
    lines.push(`snapshots: ${d.snapshots.map((s) => (s.name ? `${s.id} (${s.name})` : s.id)).join(", ")}`);
  }
  if (d.format === "qcow2") {
    lines.push(`dirty: ${d.dirty ? "yes (not closed cleanly)" : "no"}`);
    lines.push(`corrupt: ${d.corrupt ? "yes" : "no"}`);
    const other = d.features.filter((f) => f !== "dirty bit" && f !== "corrupt bit");
    if (other.length > 0) lines.push(`features: ${other.join(", ")}`);
  }
  return lines.join("\n") + "\n";
}

function convert(args: string[], io: DiskIo): number {
  const { values: v, positionals: p } = parse(
    args,
    {
      "output-format": { type: "string", short: "O" },
      "cluster-size": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    "convert",
  );
  if (v.help) return help(io, CONVERT_HELP);
  if (p.length !== 2) throw new UsageError("convert takes SRC and DST (see yun disk convert --help)");
  const fmt = format(v["output-format"] as string | undefined, "-O", "qcow2");
  const clusterSize = v["cluster-size"] === undefined ? undefined : size(v["cluster-size"] as string, "--cluster-size");
  if (clusterSize !== undefined && fmt !== "qcow2") throw new UsageError("--cluster-size applies to qcow2 images only");
  const r = convertDisk(p[0], p[1], fmt, { clusterSize });
  io.out(`Converted ${p[0]} to ${fmt} image ${p[1]} (${formatSize(r.dataBytes)} of data)\n`);
  return 0;
}

function resize(args: string[], io: DiskIo): number {
  // "-1G" would read as a flag: say what is wrong with it instead.
  if (args.some((a) => /^-\d/.test(a))) throw new UsageError("shrinking a disk is not supported (it would drop data)");
  const { values: v, positionals: p } = parse(args, { help: { type: "boolean", short: "h" } }, "resize");
  if (v.help) return help(io, RESIZE_HELP);
  if (p.length !== 2) throw new UsageError("resize takes FILE and SIZE (see yun disk resize --help)");
  const [file, text] = p;
  const current = diskInfo(file).virtualSize;
  const target = text.startsWith("+") ? current + size(text.slice(1), "SIZE") : size(text, "SIZE");
  resizeDisk(file, target);
  const now = diskInfo(file).virtualSize;
  io.out(`Resized ${file} from ${formatSize(current)} to ${formatSize(now)} (${now} bytes)\n`);
  return 0;
}

function help(io: DiskIo, text: string): number {
  io.out(text);
  return 0;
}

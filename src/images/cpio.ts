/**
 * A writer (and a small reader) for cpio archives in the SVR4 "newc" format, the format the Linux
 * kernel unpacks an initramfs from.
 *
 * Every entry is a 110-byte ASCII header ("070701" then thirteen 8-digit hex fields), the NUL-terminated
 * path, padding to a 4-byte boundary, the data, and padding to a 4-byte boundary again. The archive
 * ends with an entry named "TRAILER!!!".
 *
 * Paths are stored relative ("bin/busybox", the root itself as "."), which is what the kernel and GNU
 * cpio both expect; a leading "/" given by the caller is dropped. Missing parent directories are
 * added automatically (mode 0755), because the kernel's unpacker does not create them. The output is
 * deterministic: inode numbers count up from 1 and every entry gets the same mtime unless told otherwise.
 */

const MAGIC = "070701";
const HEADER_SIZE = 110;
const TRAILER = "TRAILER!!!";

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

export interface CpioEntryOptions {
  /** Permission bits (the file type bits are added by the writer). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; defaults to the writer's mtime. */
  mtime?: number;
}

export interface CpioWriterOptions {
  /** Default mtime for every entry, seconds since the epoch (default 0, for reproducible archives). */
  mtime?: number;
}

/** One entry as read back by {@link readCpio}. */
export interface CpioEntry {
  name: string;
  ino: number;
  /** Full st_mode, type bits included. */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  /** For device nodes: the device's major/minor numbers (rdevmajor/rdevminor in the header). */
  rdevMajor: number;
  rdevMinor: number;
  /** File contents, or the target of a symlink. Empty for directories and devices. */
  data: Buffer;
}

function hex8(value: number, field: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`cpio: ${field} ${value} does not fit the newc header`);
  }
  return value.toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Normalizes a path to the relative form stored in the archive; "" and "/" become ".". */
export function normalizeCpioPath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  for (const p of parts) {
    if (p === "..") throw new Error(`cpio: path ${JSON.stringify(path)} must not contain ".."`);
    if (p.includes("\0")) throw new Error(`cpio: path ${JSON.stringify(path)} contains a NUL byte`);
  }
  return parts.length === 0 ? "." : parts.join("/");
}

function parentOf(path: string): string | undefined {
  if (path === ".") return undefined;
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : path.slice(0, i);
}

export class CpioWriter {
  private readonly chunks: Buffer[] = [];
  private readonly types = new Map<string, number>();
  private nextIno = 1;
  private finished = false;
  private readonly mtime: number;
  private byteLength = 0;

  constructor(options: CpioWriterOptions = {}) {
    this.mtime = options.mtime ?? 0;
  }

  /** Adds a directory (default mode 0755). Adding an existing directory again is a no-op. */
  dir(path: string, options: CpioEntryOptions = {}): this {
    const name = normalizeCpioPath(path);
    const existing = this.types.get(name);
    if (existing !== undefined) {
      if (existing === S_IFDIR) return this;
      throw new Error(`cpio: ${name} already exists and is not a directory`);
    }
    this.ensureParent(name);
    this.entry(name, S_IFDIR | (options.mode ?? 0o755), 2, Buffer.alloc(0), 0, 0, options);
    return this;
  }

  /** Adds a regular file (default mode 0644). */
  file(path: string, data: Uint8Array | string, options: CpioEntryOptions = {}): this {
    const name = this.fresh(path);
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.entry(name, S_IFREG | (options.mode ?? 0o644), 1, bytes, 0, 0, options);
    return this;
  }

  /** Adds a symbolic link at `path` pointing to `target` (stored verbatim). */
  symlink(path: string, target: string, options: CpioEntryOptions = {}): this {
    if (target === "") throw new Error("cpio: symlink target must not be empty");
    const name = this.fresh(path);
    this.entry(name, S_IFLNK | (options.mode ?? 0o777), 1, Buffer.from(target, "utf8"), 0, 0, options);
    return this;
  }

  /** Adds a character device node, e.g. `charDevice("dev/console", 5, 1)` (default mode 0600). */
  charDevice(path: string, major: number, minor: number, options: CpioEntryOptions = {}): this {
    const name = this.fresh(path);
    this.entry(name, S_IFCHR | (options.mode ?? 0o600), 1, Buffer.alloc(0), major, minor, options);
    return this;
  }

  /** Adds a block device node (default mode 0600). */
  blockDevice(path: string, major: number, minor: number, options: CpioEntryOptions = {}): this {
    const name = this.fresh(path);
    this.entry(name, S_IFBLK | (options.mode ?? 0o600), 1, Buffer.alloc(0), major, minor, options);
    return this;
  }

  /** True if an entry with this path was added. */
  has(path: string): boolean {
    return this.types.has(normalizeCpioPath(path));
  }

  /** Number of entries added so far (the trailer not counted). */
  get size(): number {
    return this.types.size;
  }

  /** Appends the TRAILER!!! entry and returns the whole archive. The writer cannot be used afterwards. */
  finish(): Buffer {
    if (this.finished) throw new Error("cpio: archive already finished");
    this.header(TRAILER, 0, 0, 1, 0, 0, 0, 0, 0);
    this.finished = true;
    return Buffer.concat(this.chunks, this.byteLength);
  }

  private fresh(path: string): string {
    const name = normalizeCpioPath(path);
    if (name === ".") throw new Error("cpio: the root can only be a directory");
    if (this.types.has(name)) throw new Error(`cpio: duplicate entry ${name}`);
    this.ensureParent(name);
    return name;
  }

  private ensureParent(name: string): void {
    const parent = parentOf(name);
    if (parent === undefined) return;
    const t = this.types.get(parent);
    if (t === undefined) this.dir(parent);
    else if (t !== S_IFDIR) throw new Error(`cpio: parent ${parent} of ${name} is not a directory`);
  }

  private entry(
    name: string,
    mode: number,
    nlink: number,
    data: Buffer,
    rdevMajor: number,
    rdevMinor: number,
    options: CpioEntryOptions,
  ): void {
    if (this.finished) throw new Error("cpio: archive already finished");
    this.types.set(name, mode & S_IFMT);
    this.header(name, this.nextIno++, mode, nlink, options.mtime ?? this.mtime, data.length, rdevMajor, rdevMinor, 0, options);
    this.push(data);
    this.push(Buffer.alloc(pad4(data.length)));
  }

  private header(
    name: string,
    ino: number,
    mode: number,
    nlink: number,
    mtime: number,
    fileSize: number,
    rdevMajor: number,
    rdevMinor: number,
    check: number,
    options: CpioEntryOptions = {},
  ): void {
    const nameBytes = Buffer.from(name + "\0", "utf8");
    const fields = [
      hex8(ino, "inode"),
      hex8(mode, "mode"),
      hex8(options.uid ?? 0, "uid"),
      hex8(options.gid ?? 0, "gid"),
      hex8(nlink, "nlink"),
      hex8(Math.floor(mtime), "mtime"),
      hex8(fileSize, "file size"),
      hex8(0, "devmajor"),
      hex8(0, "devminor"),
      hex8(rdevMajor, "rdevmajor"),
      hex8(rdevMinor, "rdevminor"),
      hex8(nameBytes.length, "name size"),
      hex8(check, "check"),
    ];
    this.push(Buffer.from(MAGIC + fields.join(""), "ascii"));
    this.push(nameBytes);
    this.push(Buffer.alloc(pad4(HEADER_SIZE + nameBytes.length)));
  }

  private push(buf: Buffer): void {
    if (buf.length === 0) return;
    this.chunks.push(buf);
    this.byteLength += buf.length;
  }
}

/**
 * Parses a newc archive (as written by {@link CpioWriter}, GNU cpio -H newc, or the kernel's
 * gen_init_cpio) up to its trailer. Throws on a malformed header.
 */
export function readCpio(archive: Uint8Array): CpioEntry[] {
  const buf = Buffer.from(archive.buffer, archive.byteOffset, archive.byteLength);
  const entries: CpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_SIZE > buf.length) throw new Error(`cpio: truncated header at offset ${off}`);
    const magic = buf.toString("ascii", off, off + 6);
    if (magic !== MAGIC && magic !== "070702") throw new Error(`cpio: bad magic ${JSON.stringify(magic)} at offset ${off}`);
    const field = (i: number): number => {
      const text = buf.toString("ascii", off + 6 + i * 8, off + 14 + i * 8);
      if (!/^[0-9a-fA-F]{8}$/.test(text)) throw new Error(`cpio: bad header field at offset ${off}`);
      return parseInt(text, 16);
    };
    const nameSize = field(11);
    const fileSize = field(6);
    const nameStart = off + HEADER_SIZE;
    const name = buf.toString("utf8", nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(HEADER_SIZE + nameSize);
    if (dataStart + fileSize > buf.length) throw new Error(`cpio: truncated data for ${name}`);
    if (name === TRAILER) return entries;
    entries.push({
      name,
      ino: field(0),
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: buf.subarray(dataStart, dataStart + fileSize),
    });
    off = dataStart + fileSize + pad4(fileSize);
  }
}

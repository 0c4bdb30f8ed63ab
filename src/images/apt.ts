/**
 * A private apt for fetching riscv64 Debian packages on any Debian/Ubuntu host, without touching the
 * host's own package state.
 *
 * The archive URI is taken from `$YUN_APT_MIRROR`, or else from the host's own apt sources
 * (deb822 `*.sources` files and one-line `sources.list` / `*.list` files): the first enabled binary
 * source for a Debian suite that is not the security archive. No archive host is built in.
 *
 * The private configuration keeps its lists, caches, status file and sources under one state
 * directory, sets `APT::Architecture "riscv64"`, and is handed to apt both as `APT_CONFIG=<file>`
 * and as `-o` options (command-line options win over any configuration file). The host's
 * apt.conf.d is replaced by a private one holding only the host's `Acquire::` settings (proxies,
 * validity checks, timeouts), so host hooks and foreign-architecture settings stay out.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { findInPath, ImageError, run, type RunResult } from "./util.js";

export const DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg";

/** One source as read from an apt sources file. */
export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  enabled: boolean;
  /** File it came from (for messages). */
  origin: string;
}

/** Debian release names and aliases; a source for any of these (plus suffixes like -updates) is Debian. */
const DEBIAN_SUITES = new Set([
  "jessie",
  "stretch",
  "buster",
  "bullseye",
  "bookworm",
  "trixie",
  "forky",
  "duke",
  "sid",
  "experimental",
  "stable",
  "testing",
  "unstable",
  "oldstable",
  "oldoldstable",
]);

/** Parses deb822-style sources (`*.sources`): stanzas of `Field: value` separated by blank lines. */
export function parseDeb822Sources(text: string, origin = "<deb822>"): AptSource[] {
  const out: AptSource[] = [];
  let fields = new Map<string, string>();
  let last: string | undefined;
  const flush = (): void => {
    if (fields.size > 0) {
      const list = (k: string): string[] => (fields.get(k) ?? "").split(/\s+/).filter((x) => x !== "");
      const enabled = (fields.get("enabled") ?? "yes").trim().toLowerCase();
      out.push({
        types: list("types"),
        uris: list("uris"),
        suites: list("suites"),
        components: list("components"),
        enabled: !["no", "false", "0"].includes(enabled),
        origin,
      });
    }
    fields = new Map();
    last = undefined;
  };
  for (const raw of text.split(/\r?\n/)) {
    if (raw.trim() === "") {
      flush();
      continue;
    }
    if (raw.startsWith("#")) continue;
    if (/^[ \t]/.test(raw)) {
      // Continuation of the previous field (multi-line values such as an inline Signed-By key).
      if (last !== undefined) fields.set(last, `${fields.get(last) ?? ""}\n${raw.trim()}`);
      continue;
    }
    const m = /^([A-Za-z0-9-]+)\s*:(.*)$/.exec(raw);
    if (m === null || m[1] === undefined || m[2] === undefined) continue;
    last = m[1].toLowerCase();
    fields.set(last, m[2].trim());
  }
  flush();
  return out;
}

/** Parses one-line sources (`sources.list`, `*.list`): `deb [options] URI suite [component...]`. */
export function parseOneLineSources(text: string, origin = "<sources.list>"): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") continue;
    const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s*)?(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(line);
    if (m === null || m[1] === undefined || m[2] === undefined || m[3] === undefined) continue;
    out.push({
      types: [m[1]],
      uris: [m[2]],
      suites: [m[3]],
      components: (m[4] ?? "").split(/\s+/).filter((x) => x !== ""),
      enabled: true,
      origin,
    });
  }
  return out;
}

function isDebianSuite(suite: string): boolean {
  return DEBIAN_SUITES.has(suite.split(/[-/]/)[0] ?? "");
}

function isSecurity(uri: string, suite: string): boolean {
  return /security/i.test(suite) || /[-/]security\/?$/i.test(uri);
}

/** The URI of the main Debian archive among `sources`, or undefined if there is none. */
export function pickDebianArchive(sources: AptSource[]): string | undefined {
  let fallback: string | undefined;
  for (const s of sources) {
    if (!s.enabled || !s.types.includes("deb")) continue;
    const suites = s.suites.filter((x) => isDebianSuite(x));
    if (suites.length === 0) continue;
    for (const uri of s.uris) {
      if (!/^[a-z][a-z0-9+.-]*:/i.test(uri) || /^cdrom:/i.test(uri)) continue;
      const main = suites.filter((x) => !isSecurity(uri, x));
      if (main.length === 0) continue;
      const clean = uri.replace(/\/+$/, "");
      // Prefer a source that carries a plain release ("trixie", "bookworm") over -updates/-backports only.
      if (main.some((x) => DEBIAN_SUITES.has(x))) return clean;
      fallback ??= clean;
    }
  }
  return fallback;
}

export interface SourceFile {
  path: string;
  text: string;
}

/** Reads the host's apt source files (sources.list, then sources.list.d/*.list and *.sources, sorted). */
export function readHostSourceFiles(etcApt = "/etc/apt"): SourceFile[] {
  const files: SourceFile[] = [];
  const add = (path: string): void => {
    try {
      files.push({ path, text: readFileSync(path, "utf8") });
    } catch {
      // unreadable or vanished: ignore
    }
  };
  add(join(etcApt, "sources.list"));
  const dir = join(etcApt, "sources.list.d");
  let names: string[] = [];
  try {
    names = readdirSync(dir).sort();
  } catch {
    // no directory
  }
  for (const n of names) if (n.endsWith(".list") || n.endsWith(".sources")) add(join(dir, n));
  return files;
}

export interface MirrorChoice {
  uri: string;
  /** Where it came from: "YUN_APT_MIRROR" or a file path. */
  from: string;
}

/**
 * Finds the Debian archive URI to use: `env.YUN_APT_MIRROR` if set, else the main Debian archive
 * among `files` (default: the host's apt sources). Returns undefined if there is none.
 */
export function discoverDebianMirror(
  options: { env?: NodeJS.ProcessEnv; files?: SourceFile[] } = {},
): MirrorChoice | undefined {
  const env = options.env ?? process.env;
  const override = env.YUN_APT_MIRROR?.trim();
  if (override !== undefined && override !== "") {
    if (!/^[a-z][a-z0-9+.-]*:/i.test(override)) {
      throw new ImageError(`YUN_APT_MIRROR must be a URI such as http://<host>/debian, not ${JSON.stringify(override)}`);
    }
    return { uri: override.replace(/\/+$/, ""), from: "YUN_APT_MIRROR" };
  }
  for (const f of options.files ?? readHostSourceFiles()) {
    const sources = f.path.endsWith(".sources") ? parseDeb822Sources(f.text, f.path) : parseOneLineSources(f.text, f.path);
    const uri = pickDebianArchive(sources);
    if (uri !== undefined) return { uri, from: f.path };
  }
  return undefined;
}

/** A package version as the private apt sees it (`apt-cache show`). */
export interface AptPackage {
  name: string;
  version: string;
  architecture: string;
  size: number;
  sha256: string;
  depends: string;
  /** File name `apt-get download` gives it. */
  debName: string;
}

/** Parses RFC 822-style control stanzas (Packages entries, `dpkg-deb -f` output). */
export function parseControl(text: string): Map<string, string>[] {
  const out: Map<string, string>[] = [];
  let cur = new Map<string, string>();
  let last: string | undefined;
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "") {
      if (cur.size > 0) out.push(cur);
      cur = new Map();
      last = undefined;
    } else if (/^[ \t]/.test(line)) {
      if (last !== undefined) cur.set(last, `${cur.get(last) ?? ""}\n${line.trim()}`);
    } else {
      const i = line.indexOf(":");
      if (i <= 0) continue;
      last = line.slice(0, i).trim();
      cur.set(last, line.slice(i + 1).trim());
    }
  }
  if (cur.size > 0) out.push(cur);
  return out;
}

/** The name `apt-get download` saves a package under: name_version_arch.deb with ":" escaped. */
export function debFileName(name: string, version: string, arch: string): string {
  return `${name}_${version.replace(/:/g, "%3a")}_${arch}.deb`;
}

/** Picks the line of apt's output that best explains a failure. */
export function aptErrorLine(output: string): string | undefined {
  const lines = output.split(/\r?\n/);
  const generic = /Some index files failed to download|Unable to locate package|No packages found/;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i] ?? "";
    if (/^Err:/.test(l)) {
      const reason = (lines[i + 1] ?? "").trim();
      if (reason !== "" && /^\s/.test(lines[i + 1] ?? "")) return reason;
    }
  }
  const e = lines.find((l) => /^E: /.test(l) && !generic.test(l));
  if (e !== undefined) return e.slice(3).trim();
  const w = lines.find((l) => /^W: /.test(l) && /fail|error|sign|key|not/i.test(l));
  if (w !== undefined) return w.slice(3).trim();
  const any = lines.find((l) => /^[EW]: /.test(l));
  return any?.slice(3).trim();
}

export interface PrivateAptOptions {
  stateDir: string;
  mirror: string;
  suite?: string;
  arch?: string;
  /** Keyring to verify the archive with; if it does not exist the source is marked trusted=yes. */
  keyring?: string;
}

export class PrivateApt {
  readonly stateDir: string;
  readonly mirror: string;
  readonly suite: string;
  readonly arch: string;
  readonly configFile: string;
  private readonly keyring: string;
  private readonly settings: [string, string][];

  constructor(options: PrivateAptOptions) {
    this.stateDir = options.stateDir;
    this.mirror = options.mirror;
    this.suite = options.suite ?? "trixie";
    this.arch = options.arch ?? "riscv64";
    this.keyring = options.keyring ?? DEBIAN_KEYRING;
    this.configFile = join(this.stateDir, "apt.conf");
    const d = this.stateDir;
    this.settings = [
      ["APT::Architecture", this.arch],
      ["APT::Architectures", this.arch],
      ["Dir::State", d],
      ["Dir::State::Lists", join(d, "lists")],
      ["Dir::State::status", join(d, "status")],
      ["Dir::Cache", join(d, "cache")],
      ["Dir::Cache::archives", join(d, "cache", "archives")],
      ["Dir::Cache::pkgcache", join(d, "cache", "pkgcache.bin")],
      ["Dir::Cache::srcpkgcache", join(d, "cache", "srcpkgcache.bin")],
      ["Dir::Etc::SourceList", join(d, "sources.list")],
      ["Dir::Etc::SourceParts", join(d, "sources.list.d")],
      ["Dir::Etc::Preferences", join(d, "preferences")],
      ["Dir::Etc::PreferencesParts", join(d, "preferences.d")],
      ["Dir::Etc::Parts", join(d, "apt.conf.d")],
      ["Dir::Etc::Main", join(d, "apt.conf.main")],
      ["Acquire::Languages", "none"],
      ["APT::Get::List-Cleanup", "true"],
      ["quiet", "1"],
    ];
    // As root apt drops to the "_apt" user for downloads and warns when that user cannot write the
    // private directories; downloading as the invoking user is what is wanted here.
    if (typeof process.getuid === "function" && process.getuid() === 0) this.settings.push(["APT::Sandbox::User", "root"]);
  }

  /** True if the source is checked against the Debian archive keyring (else trusted=yes). */
  get signed(): boolean {
    return existsSync(this.keyring);
  }

  /** The one source line the private apt uses. */
  get sourceLine(): string {
    const opts = this.signed ? `arch=${this.arch} signed-by=${this.keyring}` : `arch=${this.arch} trusted=yes`;
    return `deb [${opts}] ${this.mirror} ${this.suite} main`;
  }

  /** Creates the state directory, configuration file and sources list. */
  async configure(): Promise<void> {
    for (const sub of ["lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d", "apt.conf.d"]) {
      mkdirSync(join(this.stateDir, sub), { recursive: true });
    }
    const status = join(this.stateDir, "status");
    if (!existsSync(status)) writeFileSync(status, "");
    writeFileSync(join(this.stateDir, "sources.list"), this.sourceLine + "\n");
    const conf = this.settings.map(([k, v]) => `${k} "${v.replace(/["\\]/g, "")}";`).join("\n") + "\n";
    writeFileSync(this.configFile, `// Private apt configuration written by yun image pull.\n${conf}`);
    writeFileSync(join(this.stateDir, "apt.conf.d", "50host-acquire.conf"), await this.hostAcquireSettings());
  }

  /**
   * The host's `Acquire::` settings (proxies, Check-Valid-Until, timeouts...) as apt configuration
   * text, minus index-target and language settings, which the private apt decides for itself.
   */
  private async hostAcquireSettings(): Promise<string> {
    const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: "C" };
    delete env.APT_CONFIG;
    let r: RunResult;
    try {
      r = await run("apt-config", ["dump"], { env });
    } catch {
      return "";
    }
    if (r.code !== 0) return "";
    const keep = r.stdout
      .split("\n")
      .filter((l) => /^Acquire::/.test(l) && !/^Acquire::(IndexTargets|Languages)/.test(l));
    return `// The host's Acquire settings, copied by yun image pull.\n${keep.join("\n")}\n`;
  }

  private args(): string[] {
    const out: string[] = [];
    for (const [k, v] of this.settings) out.push("-o", `${k}=${v}`);
    return out;
  }

  private env(): NodeJS.ProcessEnv {
    return { ...process.env, APT_CONFIG: this.configFile, LC_ALL: "C", DEBIAN_FRONTEND: "noninteractive" };
  }

  /** Runs apt-get / apt-cache with the private configuration. */
  async apt(tool: "apt-get" | "apt-cache", args: string[], options: { cwd?: string; onLine?: (l: string) => void } = {}): Promise<RunResult> {
    try {
      return await run(tool, [...this.args(), ...args], { cwd: options.cwd, env: this.env(), onLine: options.onLine });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === "ENOENT") throw new ImageError(`yun image pull needs ${tool} (Debian/Ubuntu host), which was not found in PATH`);
      throw e;
    }
  }

  /** `apt-get update`; throws an ImageError with apt's own explanation if the package list cannot be fetched. */
  async update(): Promise<void> {
    const r = await this.apt("apt-get", ["update"]);
    const output = `${r.stdout}\n${r.stderr}`;
    const listsDir = join(this.stateDir, "lists");
    const hasPackages = readdirSync(listsDir).some((n) => n.includes(`_dists_${this.suite}_`) && n.includes(`binary-${this.arch}_Packages`));
    const failed = r.code !== 0 || !hasPackages || /^(Err:|E: |W: Failed to fetch)/m.test(output);
    if (failed) {
      const why = aptErrorLine(output) ?? `apt-get exited with status ${r.code}`;
      throw new ImageError(
        `apt-get update failed for ${this.mirror} ${this.suite} (${this.arch}): ${why} (check the network, or set YUN_APT_MIRROR to a reachable Debian mirror)`,
      );
    }
  }

  /** The candidate version of a package; throws an ImageError if the archive has no such package. */
  async show(name: string): Promise<AptPackage> {
    const r = await this.apt("apt-cache", ["show", "--no-all-versions", name]);
    const stanza = parseControl(r.stdout).find((s) => s.get("Package") === name);
    if (r.code !== 0 || stanza === undefined) {
      throw new ImageError(`unknown package ${name}: it is not in Debian ${this.suite} for ${this.arch}`);
    }
    const version = stanza.get("Version") ?? "";
    const architecture = stanza.get("Architecture") ?? this.arch;
    return {
      name,
      version,
      architecture,
      size: Number(stanza.get("Size") ?? 0),
      sha256: (stanza.get("SHA256") ?? "").toLowerCase(),
      depends: stanza.get("Depends") ?? "",
      debName: debFileName(name, version, architecture),
    };
  }

  /**
   * Every package of the archive as one Packages-style text (`apt-cache dumpavail`: apt's candidate
   * version of each package), for working out dependency closures without asking apt per package.
   */
  async dumpAvailable(): Promise<string> {
    const r = await this.apt("apt-cache", ["dumpavail"]);
    if (r.code !== 0 || !r.stdout.includes("Package:")) {
      const why = aptErrorLine(`${r.stdout}\n${r.stderr}`) ?? `apt-cache exited with status ${r.code}`;
      throw new ImageError(`reading the package index of ${this.mirror} ${this.suite} failed: ${why}`);
    }
    return r.stdout;
  }

  /** `apt-get download` into `dir`; throws an ImageError with apt's explanation on failure. */
  async download(names: string[], dir: string, onLine?: (line: string) => void): Promise<void> {
    if (names.length === 0) return;
    const r = await this.apt("apt-get", ["download", ...names], { cwd: dir, onLine });
    if (r.code !== 0) {
      const why = aptErrorLine(`${r.stdout}\n${r.stderr}`) ?? `apt-get exited with status ${r.code}`;
      throw new ImageError(`downloading ${names.join(", ")} failed: ${why}`);
    }
  }
}

/** Throws a clear ImageError if a host tool the image builder needs is missing. */
export function requireHostTools(): void {
  if (findInPath("apt-get") === undefined || findInPath("apt-cache") === undefined) {
    throw new ImageError("yun image pull needs apt-get (Debian/Ubuntu host), which was not found in PATH");
  }
  if (findInPath("dpkg-deb") === undefined) {
    throw new ImageError("yun image pull needs dpkg-deb (Debian/Ubuntu host), which was not found in PATH");
  }
  if (findInPath("xz") === undefined) {
    throw new ImageError("yun image pull needs xz to decompress kernel modules; install xz-utils");
  }
}

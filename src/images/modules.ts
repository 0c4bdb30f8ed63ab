/**
 * Picks kernel modules out of an unpacked Debian kernel package and works out their load order.
 *
 * Debian ships no modules.dep (depmod runs at install time), so dependencies are read straight from
 * each module's ELF `.modinfo` section: `depends=` (hard dependencies, module names) and `softdep=`
 * ("pre: a b post: c", which may name aliases such as "crypto-crc32c"). Modules compiled into the
 * kernel (modules.builtin) are skipped. Compressed modules (.ko.xz, .ko.zst, .ko.gz) are decompressed,
 * because busybox insmod loads plain ELF files.
 */
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { readModuleInfo, type ModuleInfo } from "./elf.js";
import { ImageError, runBytes } from "./util.js";

/** Module names treat "-" and "_" as the same character. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, "_");
}

const MODULE_FILE = /^(.*)\.ko(\.xz|\.zst|\.gz)?$/;

export interface ResolvedModule {
  /** Normalized module name, e.g. "virtio_blk". */
  name: string;
  /** Path of the decompressed module relative to lib/modules/<version>, e.g. "kernel/drivers/block/virtio_blk.ko". */
  path: string;
  /** The decompressed module. */
  data: Buffer;
  info: ModuleInfo;
  /** Normalized names of the modules it needs loaded first (hard and resolved soft pre-dependencies). */
  deps: string[];
}

export interface ModuleResolution {
  /** Modules in load order: every module after all of its dependencies. */
  order: ResolvedModule[];
  /** Requested or depended-on names that are built into the kernel, so need no loading. */
  builtin: string[];
  /** Soft dependencies that could not be matched to any module (they are optional). */
  unresolvedSoft: string[];
}

/** Reads a module file, decompressing it if needed. */
export function readModuleFile(path: string): Buffer {
  if (path.endsWith(".ko")) return readFileSync(path);
  if (path.endsWith(".ko.gz")) return gunzipSync(readFileSync(path));
  if (path.endsWith(".ko.xz")) return runBytes("xz", ["-dc", "--", path], `decompressing ${path}`);
  if (path.endsWith(".ko.zst")) return runBytes("zstd", ["-dcq", "--", path], `decompressing ${path}`);
  throw new ImageError(`${path} is not a kernel module`);
}

/** Index of the module files below lib/modules/<version>: normalized name -> relative path (as shipped). */
export function indexModules(moduleRoot: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (rel: string): void => {
    const entries = readdirSync(join(moduleRoot, rel), { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
    for (const e of entries) {
      const childRel = rel === "" ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) walk(childRel);
      else {
        const m = MODULE_FILE.exec(e.name);
        if (m !== null && m[1] !== undefined) {
          const name = normalizeModuleName(m[1]);
          if (!index.has(name)) index.set(name, childRel);
        }
      }
    }
  };
  // updates/ and extra/ take precedence over kernel/, as with depmod's default search order.
  for (const top of ["updates", "extra", "kernel"]) {
    if (existsSync(join(moduleRoot, top))) walk(top);
  }
  return index;
}

/** Names (normalized) and aliases of the modules built into the kernel. */
export function readBuiltins(moduleRoot: string): { names: Set<string>; aliases: Set<string> } {
  const names = new Set<string>();
  const aliases = new Set<string>();
  const listPath = join(moduleRoot, "modules.builtin");
  if (existsSync(listPath)) {
    for (const line of readFileSync(listPath, "utf8").split("\n")) {
      const base = line.trim().split("/").pop() ?? "";
      const m = MODULE_FILE.exec(base);
      if (m?.[1] !== undefined) names.add(normalizeModuleName(m[1]));
    }
  }
  const infoPath = join(moduleRoot, "modules.builtin.modinfo");
  if (existsSync(infoPath)) {
    for (const item of readFileSync(infoPath, "latin1").split("\0")) {
      const m = /^([^.=]+)\.alias=(.*)$/.exec(item);
      if (m?.[1] !== undefined && m[2] !== undefined) {
        names.add(normalizeModuleName(m[1]));
        aliases.add(m[2]);
      }
    }
  }
  return { names, aliases };
}

/**
 * Resolves `wanted` module names (and everything they depend on) under `moduleRoot`
 * (an unpacked lib/modules/<version> directory). Throws an ImageError if a wanted module or a hard
 * dependency does not exist.
 */
export function resolveModules(moduleRoot: string, wanted: string[]): ModuleResolution {
  const index = indexModules(moduleRoot);
  const builtins = readBuiltins(moduleRoot);
  const loaded = new Map<string, { path: string; data: Buffer; info: ModuleInfo }>();
  const load = (name: string): { path: string; data: Buffer; info: ModuleInfo } => {
    let m = loaded.get(name);
    if (m === undefined) {
      const rel = index.get(name);
      if (rel === undefined) throw new Error(`internal: ${name} not indexed`);
      const data = readModuleFile(join(moduleRoot, rel));
      let info: ModuleInfo;
      try {
        info = readModuleInfo(data);
      } catch (e) {
        throw new ImageError(`kernel module ${rel} is unreadable: ${(e as Error).message}`);
      }
      m = { path: rel.replace(/\.(xz|zst|gz)$/, ""), data, info };
      loaded.set(name, m);
    }
    return m;
  };

  /** Maps a name or alias to a module to load, "builtin", or undefined if nothing provides it. */
  const lookup = (nameOrAlias: string): string | "builtin" | undefined => {
    const n = normalizeModuleName(nameOrAlias);
    if (index.has(n)) return n;
    if (builtins.names.has(n) || builtins.aliases.has(nameOrAlias)) return "builtin";
    // Aliases such as "crypto-crc32c" or "crc32c": try the obvious providers and confirm by their alias list.
    const base = n.replace(/^crypto_/, "");
    for (const candidate of [base, `${base}_generic`]) {
      if (!index.has(candidate)) continue;
      const aliases = load(candidate).info.aliases;
      if (aliases.includes(nameOrAlias) || candidate === base) return candidate;
    }
    return undefined;
  };

  const order: ResolvedModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const builtin = new Set<string>();
  const unresolvedSoft = new Set<string>();

  const visit = (name: string, chain: string[]): void => {
    if (done.has(name) || visiting.has(name)) return; // visiting: a dependency cycle; break it here
    visiting.add(name);
    const m = load(name);
    const deps: string[] = [];
    const after: string[] = [];
    const soft = (list: string[], into: string[]): void => {
      for (const s of list) {
        const r = lookup(s);
        if (r === "builtin") builtin.add(s);
        else if (r === undefined) unresolvedSoft.add(s);
        else into.push(r);
      }
    };
    soft(m.info.softPre, deps);
    for (const d of m.info.depends) {
      const r = lookup(d);
      if (r === "builtin") builtin.add(d);
      else if (r === undefined) {
        throw new ImageError(`kernel module ${[...chain, name].join(" -> ")} needs ${d}, which the kernel package does not ship`);
      } else deps.push(r);
    }
    for (const d of deps) visit(d, [...chain, name]);
    order.push({ name, path: m.path, data: m.data, info: m.info, deps: [...new Set(deps)] });
    done.add(name);
    visiting.delete(name);
    soft(m.info.softPost, after);
    for (const d of after) visit(d, [...chain, name]);
  };

  for (const w of wanted) {
    const r = lookup(w);
    if (r === "builtin") builtin.add(w);
    else if (r === undefined) throw new ImageError(`kernel module ${w} is neither in the kernel package nor built in`);
    else visit(r, []);
  }
  return { order, builtin: [...builtin], unresolvedSoft: [...unresolvedSoft] };
}

/**
 * modules.dep for the chosen modules, in depmod's format: each line lists a module's transitive
 * dependencies in reverse load order (modprobe loads them from the end of the list).
 */
export function modulesDep(order: ResolvedModule[]): string {
  const byName = new Map(order.map((m) => [m.name, m]));
  const lines: string[] = [];
  for (const m of order) {
    const seen = new Set<string>();
    const loadOrder: string[] = [];
    const walk = (name: string): void => {
      const dep = byName.get(name);
      if (dep === undefined || seen.has(name)) return;
      seen.add(name);
      for (const d of dep.deps) walk(d);
      loadOrder.push(dep.path);
    };
    for (const d of m.deps) walk(d);
    lines.push(`${m.path}:${loadOrder.length > 0 ? " " + loadOrder.reverse().join(" ") : ""}`);
  }
  return lines.join("\n") + "\n";
}

/** modules.alias for the chosen modules ("alias <pattern> <module>"). */
export function modulesAlias(order: ResolvedModule[]): string {
  const lines: string[] = [];
  for (const m of order) for (const a of m.info.aliases) lines.push(`alias ${a} ${m.name}`);
  return lines.length > 0 ? lines.join("\n") + "\n" : "";
}

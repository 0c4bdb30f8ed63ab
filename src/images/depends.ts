/**
 * Package dependency closure for the root disk, worked out from the archive's package index
 * (`apt-cache dumpavail` of the private apt), without installing anything.
 *
 * Debian packages do not declare dependencies on Essential packages (dpkg, perl-base, bash...), and
 * the few that do (e.g. "dpkg | install-info") are treated as satisfied: a lean image does not carry
 * the Essential set, busybox stands in for it. Dependencies on virtual packages are satisfied by a
 * package already chosen that provides them, else by the first provider by name. Version constraints
 * are not checked: the index holds one version of each package (apt's candidate).
 */
import { parseControl } from "./apt.js";
import { ImageError } from "./util.js";

/** One package of the index, with the fields the closure and the download need. */
export interface IndexedPackage {
  name: string;
  version: string;
  architecture: string;
  essential: boolean;
  /** Pre-Depends then Depends, as written. */
  depends: string;
  /** Names of the virtual packages it provides. */
  provides: string[];
  /** Size of the .deb in bytes. */
  size: number;
  /** Lower-case hex SHA-256 of the .deb ("" if the index has none). */
  sha256: string;
  /** Installed-Size in bytes (the field is in KiB). */
  installedBytes: number;
}

/** One alternative of a relation: a package name (architecture qualifier and version dropped). */
export interface Relation {
  name: string;
  /** "(>= 2.34)" as written, or "". */
  constraint: string;
}

/**
 * Parses a Depends-style field into clauses (comma-separated) of alternatives ("|"-separated).
 * Architecture qualifiers (":any"), version constraints, architecture lists ("[riscv64]") and build
 * profiles ("<!nocheck>") are dropped from the name.
 */
export function parseRelations(field: string): Relation[][] {
  const out: Relation[][] = [];
  for (const clause of field.split(",")) {
    const alts: Relation[] = [];
    for (const alt of clause.split("|")) {
      const m = /^\s*([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(\([^)]*\))?/.exec(alt);
      if (m?.[1] === undefined) continue;
      alts.push({ name: m[1], constraint: m[2] ?? "" });
    }
    if (alts.length > 0) out.push(alts);
  }
  return out;
}

/** Package names in a Provides field ("libgcc1 (= 1:14.2.0-19), awk"). */
function providesNames(field: string): string[] {
  return parseRelations(field).flatMap((c) => c.map((r) => r.name));
}

/** The packages of an index (a Packages file or `apt-cache dumpavail`), looked up by name. */
export class PackageIndex {
  private readonly stanzas = new Map<string, string>();
  private readonly providers = new Map<string, string[]>();
  private readonly parsed = new Map<string, IndexedPackage>();

  /** Indexes `text`; only the stanzas later asked for are fully parsed. */
  constructor(text: string) {
    for (const stanza of text.split(/\n\s*\n/)) {
      const name = /^Package:[ \t]*(\S+)/m.exec(stanza)?.[1];
      if (name === undefined || this.stanzas.has(name)) continue;
      this.stanzas.set(name, stanza);
      const prov = /^Provides:[ \t]*(.*(?:\n[ \t].*)*)/m.exec(stanza)?.[1];
      if (prov !== undefined) {
        for (const v of providesNames(prov.replace(/\n/g, " "))) {
          const list = this.providers.get(v);
          if (list === undefined) this.providers.set(v, [name]);
          else if (!list.includes(name)) list.push(name);
        }
      }
    }
  }

  /** Number of (real) packages in the index. */
  get size(): number {
    return this.stanzas.size;
  }

  /** The real package called `name`, or undefined (also for purely virtual names). */
  get(name: string): IndexedPackage | undefined {
    let p = this.parsed.get(name);
    if (p !== undefined) return p;
    const stanza = this.stanzas.get(name);
    if (stanza === undefined) return undefined;
    const f = parseControl(stanza)[0] ?? new Map<string, string>();
    const pre = f.get("Pre-Depends") ?? "";
    const dep = f.get("Depends") ?? "";
    p = {
      name,
      version: f.get("Version") ?? "",
      architecture: f.get("Architecture") ?? "",
      essential: (f.get("Essential") ?? "").toLowerCase() === "yes",
      depends: [pre, dep]
        .filter((x) => x.trim() !== "")
        .join(", ")
        .replace(/\n/g, " "),
      provides: providesNames((f.get("Provides") ?? "").replace(/\n/g, " ")),
      size: Number(f.get("Size") ?? 0),
      sha256: (f.get("SHA256") ?? "").toLowerCase(),
      installedBytes: Number(f.get("Installed-Size") ?? 0) * 1024,
    };
    this.parsed.set(name, p);
    return p;
  }

  /** Real packages that provide the virtual package `name`, sorted. */
  providersOf(name: string): string[] {
    return [...(this.providers.get(name) ?? [])].sort();
  }
}

/** A dependency that was deliberately not installed. */
export interface OmittedDependency {
  name: string;
  /** The package that asked for it. */
  neededBy: string;
  reason: string;
}

export interface ClosureOptions {
  /** Names never installed even if something depends on them, with the reason recorded. */
  exclude?: ReadonlyMap<string, string>;
  /** Names whose dependencies count as met without a package (e.g. "awk": busybox's applet), with the reason. */
  satisfied?: ReadonlyMap<string, string>;
  /** What to call the archive in error messages, e.g. "Debian trixie for riscv64". */
  archive?: string;
}

export interface Closure {
  /** The packages to install, sorted by name. */
  packages: IndexedPackage[];
  /** Dependencies that were skipped (Essential, excluded or satisfied otherwise), one per name. */
  omitted: OmittedDependency[];
}

/**
 * The packages `roots` need (Pre-Depends and Depends, recursively). Roots are always installed, even
 * if Essential. Throws an ImageError naming the package if a root or a needed dependency is not in
 * the index.
 */
export function dependencyClosure(
  index: PackageIndex,
  roots: readonly string[],
  options: ClosureOptions = {},
): Closure {
  const archive = options.archive ?? "the package index";
  const exclude = options.exclude ?? new Map<string, string>();
  const satisfied = options.satisfied ?? new Map<string, string>();
  const chosen = new Map<string, IndexedPackage>();
  const providedBy = new Map<string, string>();
  const omitted = new Map<string, OmittedDependency>();
  const queue: IndexedPackage[] = [];

  const choose = (p: IndexedPackage): void => {
    if (chosen.has(p.name)) return;
    chosen.set(p.name, p);
    for (const v of p.provides) if (!providedBy.has(v)) providedBy.set(v, p.name);
    queue.push(p);
  };
  const omit = (name: string, neededBy: string, reason: string): void => {
    if (!omitted.has(name)) omitted.set(name, { name, neededBy, reason });
  };
  /** A name is Essential if it is an Essential package, or a virtual one every provider of which is. */
  const essential = (name: string): boolean => {
    const p = index.get(name);
    if (p !== undefined) return p.essential;
    const provs = index.providersOf(name);
    return provs.length > 0 && provs.every((n) => index.get(n)?.essential === true);
  };

  for (const r of roots) {
    const p = index.get(r);
    if (p === undefined) {
      const provs = index.providersOf(r);
      throw new ImageError(
        provs.length > 0
          ? `${r} is a virtual package in ${archive}; name one of its providers instead: ${provs.join(", ")}`
          : `unknown package ${r}: it is not in ${archive}`,
      );
    }
    choose(p);
  }

  for (let i = 0; i < queue.length; i++) {
    const p = queue[i] as IndexedPackage;
    for (const clause of parseRelations(p.depends)) {
      const names = clause.map((r) => r.name);
      if (names.some((n) => chosen.has(n) || providedBy.has(n))) continue;
      const sat = names.find((n) => satisfied.has(n));
      if (sat !== undefined) {
        omit(sat, p.name, satisfied.get(sat) ?? "");
        continue;
      }
      const ess = names.find((n) => essential(n));
      if (ess !== undefined) {
        omit(ess, p.name, "Essential package, not installed (busybox stands in)");
        continue;
      }
      const usable = names.filter((n) => !exclude.has(n));
      let pick: IndexedPackage | undefined;
      for (const n of usable) {
        pick = index.get(n);
        if (pick !== undefined) break;
      }
      if (pick === undefined) {
        for (const n of usable) {
          const prov = index.providersOf(n).find((x) => !exclude.has(x));
          if (prov !== undefined) {
            pick = index.get(prov);
            break;
          }
        }
      }
      if (pick !== undefined) {
        choose(pick);
        continue;
      }
      const ex = names.find((n) => exclude.has(n));
      if (ex !== undefined) {
        omit(ex, p.name, exclude.get(ex) ?? "excluded");
        continue;
      }
      const written = clause.map((r) => (r.constraint !== "" ? `${r.name} ${r.constraint}` : r.name)).join(" | ");
      throw new ImageError(`${p.name} depends on ${written}, which is not in ${archive}`);
    }
  }

  const packages = [...chosen.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const skipped = [...omitted.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { packages, omitted: skipped };
}

/**
 * `npm run crash -- [--rounds N] [--only vm-qcow2|vm-raw|serve] [--seed S]`: the crash campaign of
 * issue 22. vm-qcow2 and vm-raw SIGKILL `yun run` while its guest writes and fsyncs records to a
 * disk (fuzz/crash-vm.ts); serve SIGKILLs `yun serve` at random points of its operations and checks
 * the cloud's invariants after the restart (fuzz/crash-serve.ts). Prints each round and a summary;
 * exits 1 when any round broke an invariant. runCrashCampaign is the same for other drivers.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { vmCrashRounds } from "./crash-vm.js";
import { serveCrashRounds } from "./crash-serve.js";

export const CRASH_KINDS = ["vm-qcow2", "vm-raw", "serve"] as const;
export type CrashKind = (typeof CRASH_KINDS)[number];

export interface CrashReport {
  kind: CrashKind;
  rounds: number;
  kills: number;
  violations: string[];
  seconds: number;
  /** Per kind: records verified and qemu-img check outcomes (vm), operations and restarts (serve). */
  details: Record<string, unknown>;
}

export interface CrashCampaignOptions {
  rounds: number;
  only?: CrashKind[];
  seed?: number;
  log?: (line: string) => void;
}

/** Runs `rounds` rounds of each selected kind, one kind after the other. */
export async function runCrashCampaign(opts: CrashCampaignOptions): Promise<CrashReport[]> {
  const kinds = opts.only ?? [...CRASH_KINDS];
  const seed = opts.seed ?? Date.now() % 1_000_000;
  const out: CrashReport[] = [];
  for (const kind of kinds) {
    opts.log?.(`# ${kind}: ${opts.rounds} rounds, seed ${seed}`);
    if (kind === "serve") {
      const r = await serveCrashRounds({ rounds: opts.rounds, seed, log: opts.log });
      const { rounds, kills, violations, seconds, ...details } = r;
      out.push({ kind, rounds, kills, violations, seconds, details });
    } else {
      const format = kind === "vm-qcow2" ? "qcow2" : "raw";
      const r = await vmCrashRounds({ formats: [format], rounds: opts.rounds, seed, log: opts.log });
      const { rounds, kills, violations, seconds, kind: _k, ...details } = r;
      out.push({ kind, rounds, kills, violations, seconds, details });
    }
  }
  return out;
}

function usage(message: string): never {
  console.error(`yun crash: ${message}`);
  console.error(`usage: node dist/fuzz/crash.js [--rounds N] [--only ${CRASH_KINDS.join("|")}[,...]] [--seed S]`);
  process.exit(2);
}

async function main(argv: string[]): Promise<number> {
  let rounds = 10;
  let only: CrashKind[] | undefined;
  let seed: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === "--rounds" || argv[i] === "--seed") {
      const n = Number(v);
      if (v === undefined || !Number.isInteger(n) || n < 0) usage(`${argv[i]} takes a whole number`);
      if (argv[i] === "--rounds") rounds = n;
      else seed = n;
      i++;
    } else if (argv[i] === "--only") {
      if (v === undefined) usage("--only takes a kind");
      const kinds = v.split(",");
      for (const k of kinds) if (!CRASH_KINDS.includes(k as CrashKind)) usage(`unknown kind ${k}`);
      only = kinds as CrashKind[];
      i++;
    } else usage(`unknown argument ${argv[i]}`);
  }
  const reports = await runCrashCampaign({ rounds, only, seed, log: (l) => console.log(l) });
  console.log("\n# summary");
  let failed = false;
  for (const r of reports) {
    console.log(
      `${r.kind}: ${r.rounds} rounds, ${r.kills} SIGKILLs, ${r.violations.length} violations, ${r.seconds.toFixed(0)} s; ${JSON.stringify(r.details)}`,
    );
    for (const v of r.violations) console.log(`  VIOLATION ${v}`);
    if (r.violations.length > 0) failed = true;
  }
  return failed ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error) => {
      console.error(`yun crash: ${e.stack ?? e.message}`);
      process.exit(1);
    },
  );
}

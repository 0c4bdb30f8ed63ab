/**
 * `npm run fuzz -- --minutes N [--only NAME[,NAME]] [--seed S] [--jobs J]`: runs every campaign
 * (fuzz/campaigns/index.ts) with fresh random seeds, each for its share of N minutes, in a worker
 * thread watched for hangs; prints per-campaign and per-surface counts and each failure with its
 * seed and shrunk counterexample. `--seed S` reruns one batch of each selected campaign with that
 * seed (to reproduce a failure). Exits 1 when anything failed.
 */
import { Worker } from "node:worker_threads";
import { writeFileSync } from "node:fs";
import { campaigns } from "./campaigns/index.js";
import type { Campaign, Surface } from "./campaign.js";
import type { WorkerInput, WorkerMessage } from "./worker.js";

/** A batch that has not ended after this long is a hang (cases are bounded to 1 s each). */
const HANG_MS = 120_000;

interface Tally {
  name: string;
  surface: Surface;
  cases: number;
  units: number;
  batches: number;
  ms: number;
  failures: string[];
}

function usage(message?: string): never {
  if (message) console.error(`yun fuzz: ${message}`);
  console.error(
    "usage: npm run fuzz -- [--minutes N] [--only NAME[,NAME...]] [--seed S] [--runs R] [--jobs J] [--json FILE]\n" +
      `campaigns: ${campaigns.map((c) => c.name).join(", ")}`,
  );
  process.exit(2);
}

function parseArgs(argv: string[]) {
  const opts = {
    minutes: 1,
    only: null as string[] | null,
    seed: undefined as number | undefined,
    runs: undefined as number | undefined,
    jobs: 1,
    json: null as string | null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    const num = (what: string) => {
      const n = Number(v);
      if (v === undefined || !Number.isFinite(n) || n < 0) usage(`${what} takes a number`);
      i++;
      return n;
    };
    if (a === "--minutes") opts.minutes = num(a);
    else if (a === "--seed") opts.seed = Math.trunc(num(a));
    else if (a === "--runs") opts.runs = Math.trunc(num(a));
    else if (a === "--jobs") opts.jobs = Math.max(1, Math.trunc(num(a)));
    else if (a === "--only") {
      if (!v) usage("--only takes campaign names");
      opts.only = v.split(",");
      i++;
    } else if (a === "--json") {
      if (!v) usage("--json takes a file name");
      opts.json = v;
      i++;
    } else if (a === "--help" || a === "-h") usage();
    else usage(`unknown argument ${a}`);
  }
  return opts;
}

function runCampaign(c: Campaign, ms: number, t: Tally, seed?: number, runs?: number): Promise<void> {
  return new Promise((resolve) => {
    const input: WorkerInput = { name: c.name, deadline: Date.now() + ms, seed, runs };
    const worker = new Worker(new URL("./worker.js", import.meta.url), { workerData: input });
    let current: { seed: number; since: number } | null = null;
    const t0 = Date.now();
    const watchdog = setInterval(() => {
      if (current && Date.now() - current.since > HANG_MS) {
        t.failures.push(
          `hang: a batch with seed ${current.seed} ran for over ${HANG_MS / 1000} s (rerun with --only ${c.name} --seed ${current.seed})`,
        );
        void worker.terminate();
      }
    }, 1000);
    const finish = () => {
      clearInterval(watchdog);
      t.ms += Date.now() - t0;
      resolve();
    };
    worker.on("message", (m: WorkerMessage) => {
      if (m.type === "start") current = { seed: m.seed, since: Date.now() };
      else if (m.type === "batch") {
        current = null;
        t.cases += m.cases;
        t.units += m.units;
        t.batches++;
        if (m.failure) {
          t.failures.push(m.failure);
          console.log(`\n[${c.name}] FAILED (seed ${m.seed}):\n${m.failure}\n`);
        }
      } else if (m.type === "error") t.failures.push(`the campaign could not run: ${m.message}`);
    });
    worker.on("error", (e) => {
      t.failures.push(`the worker crashed: ${e.stack ?? e.message}${current ? ` (seed ${current.seed})` : ""}`);
    });
    worker.on("exit", finish);
  });
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const selected = opts.only
    ? opts.only.map((n) => campaigns.find((c) => c.name === n) ?? usage(`no campaign "${n}"`))
    : campaigns;
  const totalMs = opts.minutes * 60_000;
  const weights = selected.reduce((s, c) => s + (c.weight ?? 1), 0);
  const tallies = selected.map((c): Tally => ({
    name: c.name,
    surface: c.surface,
    cases: 0,
    units: 0,
    batches: 0,
    ms: 0,
    failures: [],
  }));
  console.log(
    opts.seed !== undefined
      ? `yun fuzz: seed ${opts.seed}, ${selected.length} campaign(s)`
      : `yun fuzz: ${opts.minutes} minute(s) over ${selected.length} campaign(s), ${opts.jobs} at a time`,
  );
  // A queue of campaigns served by `jobs` lanes; each campaign gets its weighted share of the time.
  let next = 0;
  const lane = async () => {
    while (next < selected.length) {
      const i = next++;
      const c = selected[i];
      const share = (totalMs * (c.weight ?? 1) * opts.jobs) / weights;
      await runCampaign(c, share, tallies[i], opts.seed, opts.runs);
      const t = tallies[i];
      console.log(
        `${c.name.padEnd(18)} ${String(t.cases).padStart(11)} cases ${c.surface === "api" ? `${String(t.units).padStart(9)} requests ` : ""}` +
          `${(t.ms / 1000).toFixed(0).padStart(6)} s ${Math.round((t.units * 1000) / Math.max(t.ms, 1))
            .toString()
            .padStart(8)}/s` +
          `${t.failures.length ? `  ${t.failures.length} FAILURE(S)` : ""}`,
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.jobs, selected.length) }, lane));

  const bySurface = new Map<Surface, number>();
  for (const t of tallies) bySurface.set(t.surface, (bySurface.get(t.surface) ?? 0) + t.units);
  const failures = tallies.flatMap((t) => t.failures.map((f) => `[${t.name}] ${f}`));
  console.log(
    `\ntotals: ${[...bySurface].map(([s, n]) => `${n} ${s === "api" ? "API requests" : s === "device" ? "device cases" : "parser inputs"}`).join(", ")}; ` +
      `${failures.length} failure(s)`,
  );
  for (const f of failures) console.log(`\n${f}`);
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ tallies, totals: Object.fromEntries(bySurface) }, null, 2));
  process.exit(failures.length ? 1 : 0);
}

void main();

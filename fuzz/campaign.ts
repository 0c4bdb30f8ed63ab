/**
 * A fuzz campaign: one guest- or client-facing surface, one fast-check property over it. The same
 * campaign runs in two places: test/fuzz/ runs it with a fixed seed and a few runs (`npm test`),
 * and fuzz/main.ts (`npm run fuzz`) runs it with fresh seeds until its time is up. A campaign opens
 * a session once (devices, a server) and the property reuses it case after case, so cases are cheap;
 * `check` runs between batches for what one case cannot see (leaks, corrupted state).
 */
import fc from "fast-check";

/** What a case counts as in the totals: a device case, an API request, a parsed input. */
export type Surface = "device" | "api" | "parser";

export interface Session {
  property: fc.IRawProperty<unknown>;
  /** Units done so far when one case is more than one unit (API requests); default: the cases. */
  units?: () => number;
  /** Invariants between batches: memory bounded, state not corrupted. Throws with a sentence. */
  check?: () => void | Promise<void>;
  close: () => void | Promise<void>;
}

export interface Campaign {
  name: string;
  surface: Surface;
  /** Runs under `npm test` (fixed seed). */
  testRuns: number;
  /** Cases per fast-check run in the long job (a fresh seed each). */
  batchRuns: number;
  /** Share of the long job's time, relative to the other campaigns (default 1). */
  weight?: number;
  open: () => Session | Promise<Session>;
}

/** Longest a case may take: over it the case fails as a hang. */
export const CASE_LIMIT_MS = 1000;

/** Thrown by a property when a case breaks an invariant (kept distinct from what the code under test throws). */
export class FuzzFailure extends Error {}

export function must(cond: unknown, message: string): asserts cond {
  if (!cond) throw new FuzzFailure(message);
}

/** Wraps a synchronous predicate with the per-case time bound. */
export function timed<T>(predicate: (value: T) => void): (value: T) => void {
  return (value: T) => {
    const t0 = performance.now();
    predicate(value);
    const ms = performance.now() - t0;
    if (ms > CASE_LIMIT_MS) throw new FuzzFailure(`a case took ${ms.toFixed(0)} ms (more than ${CASE_LIMIT_MS} ms)`);
  };
}

/** The same for an asynchronous predicate. */
export function timedAsync<T>(predicate: (value: T) => Promise<void>): (value: T) => Promise<void> {
  return async (value: T) => {
    const t0 = performance.now();
    await predicate(value);
    const ms = performance.now() - t0;
    if (ms > CASE_LIMIT_MS) throw new FuzzFailure(`a case took ${ms.toFixed(0)} ms (more than ${CASE_LIMIT_MS} ms)`);
  };
}

export interface BatchResult {
  cases: number;
  units: number;
  /** fast-check's report (seed, path, shrunk counterexample, error) when the property failed. */
  failure?: string;
}

/** Runs `numRuns` cases of an open session with `seed`; then the session's between-batch checks. */
export async function runBatch(session: Session, seed: number, numRuns: number): Promise<BatchResult> {
  const before = session.units?.() ?? 0;
  const details = await fc.check(session.property, { seed, numRuns, endOnFailure: false });
  const cases = details.numRuns;
  const units = session.units ? session.units() - before : cases;
  if (details.failed) {
    const report = (await fc.asyncDefaultReportMessage(details)) ?? "failed";
    const err = details.errorInstance;
    const why =
      err instanceof Error ? (err instanceof FuzzFailure ? err.message : (err.stack ?? err.message)) : String(err);
    return { cases, units, failure: `${report}\nError: ${why}` };
  }
  try {
    await session.check?.();
  } catch (e) {
    return { cases, units, failure: `after seed ${seed} (${numRuns} runs): ${(e as Error).stack ?? e}` };
  }
  return { cases, units };
}

/** Runs a campaign once as `npm test` does: open, fixed seed, the campaign's test runs, close. */
export async function runFixed(c: Campaign, seed = 22): Promise<BatchResult> {
  const session = await c.open();
  try {
    return await runBatch(session, seed, c.testRuns);
  } finally {
    await session.close();
  }
}

/** A cheap deterministic generator for bulk bytes inside a case (fast-check draws its seed). */
export function fillRandom(buf: Uint8Array, seed: number, start = 0, end = buf.length): void {
  let s = seed | 0 || 1;
  for (let i = start; i < end; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    buf[i] = s & 0xff;
  }
}

/** Resident memory in MiB (for leak checks). */
export function rssMiB(): number {
  return process.memoryUsage().rss / (1 << 20);
}

/** Heap in use after a full collection when --expose-gc is on (else as is), in MiB. */
export function heapMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed / (1 << 20);
}

/**
 * A leak check for `check`: the heap may grow during the first batches (JIT, caches) but must
 * settle; it fails when the heap grew by more than `slackMiB` since the baseline taken at the
 * `warmup`-th call.
 */
export function leakGuard(name: string, slackMiB = 64, warmup = 3): () => void {
  let calls = 0;
  let baseline = 0;
  return () => {
    calls++;
    const now = heapMiB();
    if (calls === warmup) baseline = now;
    if (calls > warmup && now - baseline > slackMiB) {
      throw new FuzzFailure(
        `${name}: the heap grew from ${baseline.toFixed(0)} MiB to ${now.toFixed(0)} MiB (a leak?)`,
      );
    }
  };
}

/**
 * Runs one campaign in a worker thread for fuzz/main.ts: batches with fresh seeds (or the one seed
 * given) until the deadline, a message before and after each batch. The main thread watches the
 * messages: a batch that never ends is a hang, reported with its seed.
 */
import { parentPort, workerData } from "node:worker_threads";
import { randomInt } from "node:crypto";
import { runBatch, type Session } from "./campaign.js";
import { campaignByName } from "./campaigns/index.js";

export interface WorkerInput {
  name: string;
  deadline: number;
  /** Run exactly one batch with this seed (reproduction). */
  seed?: number;
  runs?: number;
}

export type WorkerMessage =
  | { type: "start"; seed: number }
  | { type: "batch"; seed: number; cases: number; units: number; failure?: string }
  | { type: "error"; message: string }
  | { type: "done" };

const input = workerData as WorkerInput;
const post = (m: WorkerMessage): void => parentPort!.postMessage(m);

async function main(): Promise<void> {
  const campaign = campaignByName(input.name);
  let session: Session = await campaign.open();
  let failures = 0;
  try {
    do {
      const seed = input.seed ?? randomInt(0x7fff_ffff);
      post({ type: "start", seed });
      const r = await runBatch(session, seed, input.runs ?? campaign.batchRuns);
      post({ type: "batch", seed, ...r });
      if (r.failure) {
        // The session may be what broke: start the next batch on a fresh one.
        if (++failures >= 3 || input.seed !== undefined) break;
        await session.close();
        session = await campaign.open();
      }
    } while (input.seed === undefined && Date.now() < input.deadline);
  } finally {
    await session.close();
  }
  post({ type: "done" });
}

main().catch((e: unknown) => post({ type: "error", message: (e as Error).stack ?? String(e) }));

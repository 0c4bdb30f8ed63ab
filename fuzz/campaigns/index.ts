/**
 * Every campaign `npm run fuzz` knows, in the order it runs them. A new campaign is one entry
 * here (and, for `npm test`, a test file under test/fuzz/ calling runFixed on it).
 */
import type { Campaign } from "../campaign.js";
import {
  virtqueueCampaign,
  virtioBlkCampaign,
  virtioConsoleCampaign,
  virtioNetCampaign,
  virtioRngCampaign,
  virtioVsockCampaign,
} from "./virtio.js";
import {
  clintCampaign,
  plicCampaign,
  rtcCampaign,
  sysconCampaign,
  uartCampaign,
  virtioRegistersCampaign,
} from "./mmio.js";
import { sbiCampaign } from "./sbi.js";
import { apiCampaign } from "./api.js";
import { qcow2Campaign } from "./qcow2.js";
import { userNetCampaign } from "./net.js";
import { snapshotCampaign } from "./snapshot.js";

export const campaigns: Campaign[] = [
  virtqueueCampaign,
  virtioBlkCampaign,
  virtioNetCampaign,
  virtioConsoleCampaign,
  virtioRngCampaign,
  virtioVsockCampaign,
  virtioRegistersCampaign,
  uartCampaign,
  rtcCampaign,
  sysconCampaign,
  clintCampaign,
  plicCampaign,
  sbiCampaign,
  qcow2Campaign,
  userNetCampaign,
  snapshotCampaign,
  apiCampaign,
];

export function campaignByName(name: string): Campaign {
  const c = campaigns.find((x) => x.name === name);
  if (!c) throw new Error(`no fuzz campaign "${name}" (known: ${campaigns.map((x) => x.name).join(", ")})`);
  return c;
}

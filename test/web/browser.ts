// Headless Chromium for the dashboard tests: Debian's /usr/bin/chromium driven by playwright-core,
// with a new, empty profile and no background traffic (this machine has no network beyond loopback).
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

/** A browser context and its profile directory (the caller removes it after closing the context). */
export async function launchBrowser(): Promise<{ context: BrowserContext; profile: string }> {
  const profile = mkdtempSync(join(tmpdir(), "yun-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return { context, profile };
}

/** The pixels of a PNG (a screenshot), decoded by the browser in a blank tab of `context`:
 *  RGBA, row by row. */
export async function decodePng(
  context: BrowserContext,
  png: Buffer,
): Promise<{ width: number; height: number; rgba: number[] }> {
  const page = await context.newPage();
  try {
    // A string: this runs in the page (DOM types are not part of the tests' compilation).
    return await page.evaluate(`(async () => {
      const bytes = Uint8Array.from(atob(${JSON.stringify(png.toString("base64"))}), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext("2d");
      ctx.drawImage(bitmap, 0, 0);
      return { width: bitmap.width, height: bitmap.height, rgba: Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data) };
    })()`);
  } finally {
    await page.close();
  }
}

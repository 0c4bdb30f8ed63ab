/**
 * Watches the console of a disk booting through U-Boot, so that a boot U-Boot gives up on ends
 * with one clear error instead of a VM idling at U-Boot's prompt (or in network boot, which Yun's
 * user-mode network cannot serve: it has no TFTP server).
 *
 * The watch ends (the boot went on) once a kernel speaks: U-Boot's "Starting kernel", the Linux EFI
 * stub, the kernel's banner. U-Boot gave up when it shows its "=> " prompt without anyone having
 * typed to it, or when its distro boot falls through to DHCP (every disk failed); an EFI GRUB gave
 * up when it shows its "grub> " prompt or says it failed to boot its entries.
 */

/** Lines that say U-Boot handed over to something that will boot (or is) a kernel. */
const HANDED_OVER = [/Starting kernel \.\.\./, /EFI stub: /, /Linux version \d/];
/** Lines that look like the reason for a failure, to quote. */
const REASON = /fail|error|not found|unable|bad |wrong|invalid|cannot|can't|missing|no such/i;

export class BootLoaderWatch {
  private line = "";
  private reason = "";
  private done = false;
  private sawUBoot = false;

  /**
   * Takes console output; returns why U-Boot gave up (a sentence fragment) once it did, else null.
   * `typed` says whether anyone has given the guest console input (then its prompt is wanted).
   */
  feed(bytes: Uint8Array, typed: boolean): string | null {
    if (this.done) return null;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (b === 0x0a || b === 0x0d) {
        const verdict = this.endLine();
        if (verdict !== null) return verdict;
        continue;
      }
      if (this.line.length < 512) this.line += String.fromCharCode(b);
    }
    // The prompt is printed without a newline and then waits: it is what the output ends with.
    const pending = this.line.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
    if (this.sawUBoot && !typed && /^=> ?$/.test(pending)) {
      this.done = true;
      return `U-Boot found nothing it could boot and stopped at its prompt${this.quote()}`;
    }
    if (this.sawUBoot && !typed && /^grub> ?$/.test(pending)) {
      this.done = true;
      return `GRUB found nothing to boot and stopped at its prompt${this.quote()}`;
    }
    return null;
  }

  /** Whether the watch is over (the kernel runs, or U-Boot gave up). */
  get finished(): boolean {
    return this.done;
  }

  private quote(): string {
    return this.reason ? ` (its last complaint: "${this.reason}")` : "";
  }

  private endLine(): string | null {
    const text = this.line.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, "").trim();
    this.line = "";
    if (text === "") return null;
    if (/^U-Boot \d{4}\.\d{2}/.test(text)) this.sawUBoot = true;
    if (HANDED_OVER.some((re) => re.test(text))) {
      this.done = true;
      return null;
    }
    if (this.sawUBoot && /^Failed to boot both default and fallback entries/.test(text)) {
      this.done = true;
      return `GRUB could not boot its menu's entries${this.quote()}`;
    }
    if (this.sawUBoot && /^BOOTP broadcast 1\b/.test(text)) {
      this.done = true;
      return `U-Boot found nothing it could boot on the disks and fell back to network boot${this.quote()}`;
    }
    if (REASON.test(text) && !/Failed to load '\/'|EFI variables|RNG|ubootefi\.var/.test(text)) {
      this.reason = text.slice(0, 160);
    }
    return null;
  }
}

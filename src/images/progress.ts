/**
 * Phase-by-phase progress for `yun image pull`.
 *
 * On a terminal the current phase is one line redrawn in place (with a spinner and live detail),
 * replaced by a summary line when the phase ends. Otherwise each phase prints exactly one summary
 * line when it ends, which keeps CI logs readable.
 */
import { formatDuration } from "./util.js";

const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

export interface ProgressOptions {
  /** Redraw a live status line (only sensible on a terminal). */
  live: boolean;
  /** Receives finished lines. */
  log: (line: string) => void;
  /** Where the live line is drawn (default process.stderr). */
  stream?: NodeJS.WriteStream;
}

export class PhaseProgress {
  private phase: string | undefined;
  private detail = "";
  private started = 0;
  private frame = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly stream: NodeJS.WriteStream;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
  }

  /** Starts a phase (ending the previous one without a summary if still open). */
  begin(phase: string, detail = ""): void {
    this.stopTimer();
    this.phase = phase;
    this.detail = detail;
    this.started = Date.now();
    if (this.options.live) {
      this.draw();
      this.timer = setInterval(() => this.draw(), 100);
      this.timer.unref();
    }
  }

  /** Updates the live detail of the current phase (shown only on a terminal). */
  update(detail: string): void {
    this.detail = detail;
  }

  /** Ends the current phase with a one-line summary. */
  end(summary: string): void {
    const phase = this.phase ?? "";
    const line = `${phase.padEnd(9)} ${summary} (${formatDuration(Date.now() - this.started)})`;
    this.stopTimer();
    this.clearLine();
    this.options.log(line);
    this.phase = undefined;
  }

  /** Removes the live line (on failure, before the error is printed). */
  abort(): void {
    this.stopTimer();
    this.clearLine();
    this.phase = undefined;
  }

  private draw(): void {
    if (this.phase === undefined) return;
    const spin = SPINNER[this.frame++ % SPINNER.length] ?? "";
    const elapsed = formatDuration(Date.now() - this.started);
    let text = `${spin} ${this.phase.padEnd(9)} ${elapsed.padStart(6)}  ${this.detail}`;
    const cols = this.stream.columns !== undefined && this.stream.columns > 20 ? this.stream.columns : 80;
    if (text.length > cols - 1) text = text.slice(0, Math.max(0, cols - 2)) + "…";
    this.stream.write(`\r\x1b[2K${text}`);
  }

  private clearLine(): void {
    if (this.options.live) this.stream.write("\r\x1b[2K");
  }

  private stopTimer(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}

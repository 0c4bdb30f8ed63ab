/**
 * The terminal Yun plays on a guest's console when no real terminal is there to play it (stdin
 * piped, a script attached to the console), and the rule that holds typed-ahead input until the
 * guest's shell is ready for it.
 *
 * `ConsoleTerminal` reads the guest's console output as a VT100-class terminal would: it follows the
 * cursor (printable text, CR/LF/BS/TAB, cursor movement, save/restore) on a screen of `rows` x
 * `cols`, and recognizes the device-status queries programs send to a terminal: cursor position
 * (ESC[6n, answered ESC[row;colR), status (ESC[5n, answered ESC[0n) and primary device attributes
 * (ESC[c, answered ESC[?1;2c, a VT100 with advanced video). What a viewer is shown has those queries
 * removed: they are requests to a terminal, not text, and a terminal that saw them later (a console
 * replayed to a real terminal) would answer them into the guest as stray input. It also tracks
 * whether the output ends in a shell prompt ("# " or "$ " at the end of the current line, escape
 * sequences aside), which is what `TypeAhead` waits for.
 *
 * Plain state, one switch per byte, nothing allocated per byte: what a viewer is shown is the
 * chunk itself unless a query was removed or a sequence straddles two chunks.
 */

/** The screen Yun's terminal claims (a VT100's). */
export const TERMINAL_ROWS = 24;
export const TERMINAL_COLS = 80;

/** What a query answered was: a line editor asking where the cursor is, or other probes. */
export type TerminalQuery = "cursor" | "status" | "attributes";

/**
 * Called for each query in the output, in order, with the terminal's answer and whether the
 * output before it ended in a shell prompt (a line editor asking at its prompt).
 */
export type QueryHandler = (answer: Uint8Array, query: TerminalQuery, atPrompt: boolean) => void;

const GROUND = 0;
const ESCAPE = 1;
/** After ESC and an intermediate byte (ESC ( B and the like): the next byte ends it. */
const ESCAPE_INTERMEDIATE = 2;
const CSI = 3;
/** A control sequence whose form we do not follow: skipped to its final byte. */
const CSI_IGNORE = 4;
/** OSC, DCS, SOS, PM, APC: text up to BEL or ST (ESC \). */
const STRING = 5;
const STRING_ESCAPE = 6;

const ESC = 0x1b;
const MAX_PARAMS = 8;
/** Longest escape sequence held back across two output chunks; longer ones pass as they are. */
const MAX_HELD = 64;

/** "# " and "$ " as the last two printable bytes of a line. */
const PROMPT_ROOT = 0x2320;
const PROMPT_USER = 0x2420;

const STATUS_OK = Uint8Array.from([ESC, 0x5b, 0x30, 0x6e]); // ESC[0n
const VT100_ATTRIBUTES = Uint8Array.from([ESC, 0x5b, 0x3f, 0x31, 0x3b, 0x32, 0x63]); // ESC[?1;2c

export class ConsoleTerminal {
  rows: number;
  cols: number;
  /** Cursor, 1-based, as a VT100 reports it. */
  row = 1;
  col = 1;
  /** The cursor sits past the last column: the next printable character wraps first. */
  private wrapPending = false;
  private savedRow = 1;
  private savedCol = 1;

  private state = GROUND;
  private readonly params = new Int32Array(MAX_PARAMS);
  private paramCount = 0;
  /** A private-parameter marker (?, >, <, =) or 0. */
  private privateMarker = 0;
  /** The sequence has intermediate bytes (none of the queries do). */
  private intermediate = false;

  /** The escape sequence being read, held until we know whether a viewer should see it. */
  private readonly seq = new Uint8Array(MAX_HELD);
  private seqLen = 0;
  /** The sequence outgrew `seq` (or is a string): its bytes pass through as they come. */
  private seqPassing = false;

  /** What a viewer is shown of the current chunk, built only when it differs from the chunk. */
  private shown = new Uint8Array(4096);
  private shownLen = 0;

  /** The last two printable bytes of the current line. */
  private tail = 0;

  constructor(rows = TERMINAL_ROWS, cols = TERMINAL_COLS) {
    this.rows = rows;
    this.cols = cols;
  }

  /** The output so far ends in a shell prompt ("# " or "$ " ending the current line). */
  get atPrompt(): boolean {
    return this.tail === PROMPT_ROOT || this.tail === PROMPT_USER;
  }

  /** Changes the screen size (the cursor stays inside it). */
  resize(rows: number, cols: number): void {
    this.rows = Math.max(1, rows | 0);
    this.cols = Math.max(1, cols | 0);
    this.row = Math.min(this.row, this.rows);
    this.col = Math.min(this.col, this.cols);
  }

  /**
   * Reads a chunk of console output. Each query in it goes to `onQuery` (if given) with its
   * answer. Returns what a viewer should be shown: `bytes` itself unless a query was removed or an
   * escape sequence is held back until the next chunk completes it.
   */
  scan(bytes: Uint8Array, onQuery: QueryHandler | null): Uint8Array {
    // Bytes held from the previous chunk are not in this one: the result differs from `bytes`.
    let changed = this.seqLen > 0 && !this.seqPassing;
    this.shownLen = 0;
    if (this.shown.length < bytes.length + MAX_HELD) this.shown = new Uint8Array(bytes.length + MAX_HELD);
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      switch (this.state) {
        case GROUND:
          if (b === ESC) this.beginSequence(b);
          else {
            this.show(b);
            this.ground(b);
          }
          break;
        case ESCAPE:
          if (b === ESC) {
            // ESC ESC: the first one stood alone.
            this.endSequence(false);
            this.beginSequence(b);
            break;
          }
          this.hold(b);
          if (b < 0x20) this.control(b);
          else this.escape(b);
          break;
        case ESCAPE_INTERMEDIATE:
          this.hold(b);
          if (b < 0x20) this.control(b);
          else if (b > 0x2f) this.endSequence(false);
          break;
        case CSI:
        case CSI_IGNORE:
          if (b === ESC) {
            this.endSequence(false);
            this.beginSequence(b);
            break;
          }
          if (b === 0x18 || b === 0x1a) {
            // CAN and SUB abort a sequence.
            this.endSequence(false);
            break;
          }
          this.hold(b);
          if (b < 0x20) {
            this.control(b); // C0 controls inside a sequence act as they would outside it
          } else if (b >= 0x40 && b <= 0x7e) {
            if (this.state === CSI && this.finishCsi(b, onQuery)) {
              this.endSequence(true);
              changed = true;
            } else {
              this.endSequence(false);
            }
          } else if (this.state === CSI) {
            this.csiByte(b);
          }
          break;
        case STRING:
          this.show(b);
          if (b === 0x07) this.state = GROUND;
          else if (b === ESC) this.state = STRING_ESCAPE;
          else if (b === 0x18 || b === 0x1a) this.state = GROUND;
          break;
        case STRING_ESCAPE:
          if (b === 0x5c) {
            this.show(b);
            this.state = GROUND;
          } else if (b === ESC) {
            this.beginSequence(b);
          } else {
            // The ESC ended the string and began a sequence; it was shown already, so the rest passes.
            this.beginSequence(ESC);
            this.seqLen = 0;
            this.seqPassing = true;
            this.show(b);
            if (b < 0x20) this.control(b);
            else this.escape(b);
          }
          break;
      }
    }
    if (this.seqLen > 0 && !this.seqPassing) changed = true; // held for the next chunk
    return changed ? this.shown.slice(0, this.shownLen) : bytes;
  }

  /** Bytes of an unfinished escape sequence held back from viewers (at the end of the stream). */
  flush(): Uint8Array {
    const held = this.seqPassing ? new Uint8Array(0) : this.seq.slice(0, this.seqLen);
    this.seqLen = 0;
    this.seqPassing = false;
    this.state = GROUND;
    return held;
  }

  // ------------------------------------------------------------------------ the shown stream

  private show(b: number): void {
    this.shown[this.shownLen++] = b;
  }

  private beginSequence(b: number): void {
    this.state = ESCAPE;
    this.seq[0] = b;
    this.seqLen = 1;
    this.seqPassing = false;
    this.params.fill(0);
    this.paramCount = 0;
    this.privateMarker = 0;
    this.intermediate = false;
  }

  /** A byte of the current sequence: held, or passed through once the sequence is too long. */
  private hold(b: number): void {
    if (this.seqPassing) {
      this.show(b);
      return;
    }
    if (this.seqLen === MAX_HELD) {
      for (let i = 0; i < this.seqLen; i++) this.show(this.seq[i]);
      this.seqPassing = true;
      this.show(b);
      return;
    }
    this.seq[this.seqLen++] = b;
  }

  /** The sequence ended: dropped (a query answered) or shown. */
  private endSequence(drop: boolean): void {
    if (!this.seqPassing && !drop) for (let i = 0; i < this.seqLen; i++) this.show(this.seq[i]);
    this.seqLen = 0;
    this.seqPassing = false;
    this.state = GROUND;
  }

  /** Enters a string (OSC and the like): its held introducer is shown and the rest passes. */
  private beginString(): void {
    if (!this.seqPassing) for (let i = 0; i < this.seqLen; i++) this.show(this.seq[i]);
    this.seqLen = 0;
    this.seqPassing = true;
    this.state = STRING;
  }

  // ------------------------------------------------------------------------ the terminal

  private ground(b: number): void {
    if (b < 0x20) this.control(b);
    else if (b !== 0x7f) {
      this.tail = ((this.tail << 8) | b) & 0xffff;
      if (b >= 0x80 && b < 0xc0) return; // a UTF-8 continuation byte takes no cell
      if (this.wrapPending) {
        this.wrapPending = false;
        this.col = 1;
        this.lineFeed();
      }
      if (this.col < this.cols) this.col++;
      else this.wrapPending = true;
    }
  }

  /** A C0 control character's effect on the cursor. */
  private control(b: number): void {
    switch (b) {
      case 0x08: // BS
        this.wrapPending = false;
        if (this.col > 1) this.col--;
        this.tail = 0;
        break;
      case 0x09: // HT: to the next tab stop (every 8 columns)
        this.col = Math.min(this.cols, (((this.col - 1) >> 3) + 1) * 8 + 1);
        this.tail = ((this.tail << 8) | 0x20) & 0xffff;
        break;
      case 0x0a: // LF, VT, FF
      case 0x0b:
      case 0x0c:
        this.wrapPending = false;
        this.lineFeed();
        this.tail = 0;
        break;
      case 0x0d: // CR
        this.wrapPending = false;
        this.col = 1;
        this.tail = 0;
        break;
    }
  }

  private lineFeed(): void {
    if (this.row < this.rows) this.row++;
  }

  private escape(b: number): void {
    switch (b) {
      case 0x5b: // [
        this.state = CSI;
        return;
      case 0x5d: // ] OSC
      case 0x50: // P DCS
      case 0x58: // X SOS
      case 0x5e: // ^ PM
      case 0x5f: // _ APC
        this.beginString();
        return;
    }
    if (b >= 0x20 && b <= 0x2f) {
      this.state = ESCAPE_INTERMEDIATE;
      return;
    }
    switch (b) {
      case 0x37: // 7 DECSC
        this.saveCursor();
        break;
      case 0x38: // 8 DECRC
        this.restoreCursor();
        break;
      case 0x44: // D IND
        this.wrapPending = false;
        this.lineFeed();
        break;
      case 0x45: // E NEL
        this.wrapPending = false;
        this.col = 1;
        this.lineFeed();
        break;
      case 0x4d: // M RI
        this.wrapPending = false;
        if (this.row > 1) this.row--;
        break;
      case 0x63: // c RIS
        this.row = 1;
        this.col = 1;
        this.wrapPending = false;
        break;
    }
    this.endSequence(false);
  }

  private csiByte(b: number): void {
    if (b >= 0x30 && b <= 0x39) {
      if (this.paramCount === 0) this.paramCount = 1;
      const i = this.paramCount - 1;
      if (i < MAX_PARAMS) this.params[i] = Math.min(99_999, this.params[i] * 10 + (b - 0x30));
    } else if (b === 0x3b || b === 0x3a) {
      this.paramCount = (this.paramCount === 0 ? 1 : this.paramCount) + 1;
    } else if (b >= 0x3c && b <= 0x3f) {
      // A private marker is only valid first.
      if (this.paramCount === 0 && this.privateMarker === 0) this.privateMarker = b;
      else this.state = CSI_IGNORE;
    } else {
      this.intermediate = true; // 0x20-0x2f
    }
  }

  private param(i: number, fallback: number): number {
    const v = i < this.paramCount && i < MAX_PARAMS ? this.params[i] : 0;
    return v === 0 ? fallback : v;
  }

  /** Carries out a complete control sequence; true if it was a query (answered, not shown). */
  private finishCsi(final: number, onQuery: QueryHandler | null): boolean {
    if (this.intermediate) return false;
    if (this.privateMarker !== 0) return false;
    const n = this.param(0, 1);
    switch (final) {
      case 0x41: // A CUU
        this.moveTo(this.row - n, this.col);
        break;
      case 0x42: // B CUD
      case 0x65: // e VPR
        this.moveTo(this.row + n, this.col);
        break;
      case 0x43: // C CUF
      case 0x61: // a HPR
        this.moveTo(this.row, this.col + n);
        break;
      case 0x44: // D CUB
        this.moveTo(this.row, this.col - n);
        break;
      case 0x45: // E CNL
        this.moveTo(this.row + n, 1);
        break;
      case 0x46: // F CPL
        this.moveTo(this.row - n, 1);
        break;
      case 0x47: // G CHA
      case 0x60: // ` HPA
        this.moveTo(this.row, n);
        break;
      case 0x48: // H CUP
      case 0x66: // f HVP
        this.moveTo(n, this.param(1, 1));
        break;
      case 0x64: // d VPA
        this.moveTo(n, this.col);
        break;
      case 0x72: // r DECSTBM homes the cursor
        this.moveTo(1, 1);
        break;
      case 0x73: // s SCOSC
        if (this.paramCount === 0) this.saveCursor();
        break;
      case 0x75: // u SCORC
        if (this.paramCount === 0) this.restoreCursor();
        break;
      case 0x6e: {
        // n DSR
        const what = this.param(0, 0);
        if (what === 6) return this.query(onQuery, "cursor");
        if (what === 5) return this.query(onQuery, "status");
        break;
      }
      case 0x63: // c DA
        if (this.param(0, 0) === 0) return this.query(onQuery, "attributes");
        break;
    }
    return false;
  }

  private query(onQuery: QueryHandler | null, query: TerminalQuery): true {
    if (onQuery !== null) {
      let answer: Uint8Array;
      if (query === "cursor") answer = new TextEncoder().encode(`\x1b[${this.row};${this.col}R`);
      else if (query === "status") answer = STATUS_OK;
      else answer = VT100_ATTRIBUTES;
      onQuery(answer, query, this.atPrompt);
    }
    return true;
  }

  private moveTo(row: number, col: number): void {
    this.wrapPending = false;
    this.row = Math.max(1, Math.min(this.rows, row));
    this.col = Math.max(1, Math.min(this.cols, col));
  }

  private saveCursor(): void {
    this.savedRow = this.row;
    this.savedCol = this.col;
  }

  private restoreCursor(): void {
    this.moveTo(this.savedRow, this.savedCol);
  }
}

/**
 * When input typed ahead of the guest (piped, not typed by a person watching) is handed to it:
 * - "prompt": once the guest's shell is ready for it, i.e. a line editor asks where the cursor is
 *   right after a prompt (busybox's ash), or the console, quiet for PROMPT_QUIET_MS, ends in a
 *   prompt ("# " or "$ ", e.g. bash's `root@host:~# `). Until then a getty or init that flushes
 *   its tty (agetty, systemd's TTYReset) or reopens the serial port would eat it. Boots of an image.
 * - "prompt-or-silence": as "prompt", or once the console has been silent for SILENCE_MS: a kernel
 *   of the user's own, whose init may read its input without a prompt.
 * - "immediate": as the guest's UART reads it (a restored or migrated guest is past its boot).
 * After the gate opens, input flows as it comes; a guest reboot closes it again ("prompt").
 */
export type TypeAheadRule = "prompt" | "prompt-or-silence" | "immediate";

export function isTypeAheadRule(v: unknown): v is TypeAheadRule {
  return v === "prompt" || v === "prompt-or-silence" || v === "immediate";
}

/** How long the console stays quiet after a prompt before held input goes. */
export const PROMPT_QUIET_MS = 300;
/** How long a silent console waits before held input goes, under "prompt-or-silence". */
export const SILENCE_MS = 2000;

/** Typed-ahead input held until the guest is ready to read it (TypeAheadRule). */
export class TypeAhead {
  private rule: TypeAheadRule;
  private open: boolean;
  private held: Uint8Array[] = [];
  private heldBytes = 0;

  constructor(rule: TypeAheadRule) {
    this.rule = rule;
    this.open = rule === "immediate";
  }

  get isOpen(): boolean {
    return this.open;
  }

  /** The rule a snapshot records: "immediate" once the guest's shell was ready, else the rule. */
  get current(): TypeAheadRule {
    return this.open ? "immediate" : this.rule;
  }

  /** Follows `rule` from now on (a restored snapshot's); held input stays held until it allows. */
  follow(rule: TypeAheadRule): void {
    this.rule = rule;
    this.open = rule === "immediate" && this.heldBytes === 0;
  }

  /** Bytes held. */
  get pending(): number {
    return this.heldBytes;
  }

  /** Input typed ahead: what may go to the guest now, or null if it is held. */
  push(bytes: Uint8Array): Uint8Array | null {
    if (this.open) return bytes;
    if (bytes.length > 0) {
      this.held.push(Uint8Array.from(bytes));
      this.heldBytes += bytes.length;
    }
    return null;
  }

  /** Whether held input may go, the console having been quiet `quietMs`, ending in a prompt or not. */
  due(quietMs: number, atPrompt: boolean): boolean {
    if (this.open || this.heldBytes === 0) return false;
    if (this.rule === "immediate") return true;
    if (atPrompt && quietMs >= PROMPT_QUIET_MS) return true;
    return this.rule === "prompt-or-silence" && quietMs >= SILENCE_MS;
  }

  /** Opens the gate: returns the held input (empty if none), which goes to the guest first. */
  release(): Uint8Array {
    this.open = true;
    const out = new Uint8Array(this.heldBytes);
    let at = 0;
    for (const c of this.held) {
      out.set(c, at);
      at += c.length;
    }
    this.held = [];
    this.heldBytes = 0;
    return out;
  }

  /**
   * The guest rebooted: the gate closes until its shell is ready again, holding `unread` (input
   * handed over but not read by the old boot) before anything held since.
   */
  restart(unread: Uint8Array): void {
    if (this.rule === "immediate") this.rule = "prompt";
    this.open = false;
    if (unread.length > 0) {
      this.held.unshift(Uint8Array.from(unread));
      this.heldBytes += unread.length;
    }
  }
}

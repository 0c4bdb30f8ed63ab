/**
 * The terminal Yun plays on a console without a real one (src/vmm/terminal.ts): the cursor it
 * follows, the queries it answers and removes from what a viewer sees, the prompt it recognizes,
 * and the rule that holds typed-ahead input until the guest's shell is ready.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConsoleTerminal, TypeAhead, PROMPT_QUIET_MS, SILENCE_MS, type TerminalQuery } from "../../src/vmm/terminal.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Feeds chunks; returns what a viewer saw and the answers, in order. */
function run(t: ConsoleTerminal, ...chunks: string[]) {
  let shown = "";
  const answers: { answer: string; query: TerminalQuery; atPrompt: boolean }[] = [];
  for (const c of chunks) {
    shown += dec(t.scan(enc(c), (answer, query, atPrompt) => answers.push({ answer: dec(answer), query, atPrompt })));
  }
  return { shown, answers };
}

test("answers the cursor position where the text left it, and removes the query", () => {
  const t = new ConsoleTerminal();
  const r = run(t, "BusyBox\r\n\r\n~ # \x1b[6n");
  assert.deepEqual(r.answers, [{ answer: "\x1b[3;5R", query: "cursor", atPrompt: true }]);
  assert.equal(r.shown, "BusyBox\r\n\r\n~ # ");
});

test("cursor: wrapping at the last column, tabs, backspace, movement, save and restore, clamping", () => {
  const t = new ConsoleTerminal();
  const at = (s: string): string => run(t, s + "\x1b[6n").answers.at(-1)!.answer;
  assert.equal(at("x".repeat(80)), "\x1b[1;80R", "the 80th character leaves the cursor on the last column");
  assert.equal(at("y"), "\x1b[2;2R", "the next one wraps first");
  assert.equal(at("\r\tab\t"), "\x1b[2;17R");
  assert.equal(at("\b\b"), "\x1b[2;15R");
  assert.equal(at("\x1b[10;20H"), "\x1b[10;20R");
  assert.equal(at("\x1b[3A\x1b[5C"), "\x1b[7;25R");
  assert.equal(at("\x1b[G\x1b[2B"), "\x1b[9;1R");
  // systemd's size probe: save, far corner, ask, restore. The answer is the screen's size.
  const probe = run(t, "\x1b7\x1b[32766;32766H\x1b[6n\x1b8\x1b[6n");
  assert.deepEqual(
    probe.answers.map((a) => a.answer),
    ["\x1b[24;80R", "\x1b[9;1R"],
  );
  assert.equal(probe.shown, "\x1b7\x1b[32766;32766H\x1b8", "only the queries are removed");
  assert.equal(at("\r\n".repeat(40)), "\x1b[24;1R", "line feeds at the bottom scroll");
  assert.equal(at("é"), "\x1b[24;2R", "a UTF-8 character takes one cell");
  t.resize(50, 132);
  assert.equal(at("\x1b[999;999H"), "\x1b[50;132R");
});

test("status and device attributes are answered as a VT100 would; other sequences pass untouched", () => {
  const t = new ConsoleTerminal();
  const r = run(t, "a\x1b[5nb\x1b[cc\x1b[0cd\x1b[?2004h\x1b[1;32me\x1b[0m\x1b]0;title\x07\x1b(B");
  assert.deepEqual(
    r.answers.map((a) => [a.query, a.answer]),
    [
      ["status", "\x1b[0n"],
      ["attributes", "\x1b[?1;2c"],
      ["attributes", "\x1b[?1;2c"],
    ],
  );
  assert.equal(r.shown, "abcd\x1b[?2004h\x1b[1;32me\x1b[0m\x1b]0;title\x07\x1b(B");
  // Text of an OSC string (up to BEL or ST) is no query, whatever it looks like.
  const s = run(t, "\x1b]2;[6n-ish\x07\x1b]0;[5n\x1b\\z");
  assert.equal(s.answers.length, 0);
  assert.equal(s.shown, "\x1b]2;[6n-ish\x07\x1b]0;[5n\x1b\\z");
});

test("a query split across two chunks is held, answered once and never shown; other split sequences arrive whole", () => {
  const t = new ConsoleTerminal();
  let r = run(t, "~ # \x1b", "[", "6n", "ok");
  assert.equal(r.shown, "~ # ok");
  assert.deepEqual(
    r.answers.map((a) => a.answer),
    ["\x1b[1;5R"],
  );
  const parts: string[] = [];
  for (const c of ["x\x1b[1", ";31", "mred"]) parts.push(dec(t.scan(enc(c), null)));
  assert.deepEqual(parts, ["x", "", "\x1b[1;31mred"]);
  assert.equal(dec(t.flush()), "", "nothing is held once the sequence ended");
  t.scan(enc("\x1b["), null);
  assert.equal(dec(t.flush()), "\x1b[", "flush hands over what is still held");
  // Without a handler the query is still recognized and removed (a real terminal answers it).
  r = run(t, "\x1b[6n");
  assert.equal(r.shown, "");
});

test("plain output is handed back as the same array (nothing is copied)", () => {
  const t = new ConsoleTerminal();
  const chunk = enc("[    1.234] Linux version 6.12\r\n\x1b[1mbold\x1b[0m\r\n");
  assert.equal(t.scan(chunk, null), chunk);
});

test("a shell prompt at the end of the output: # or $ ending the line, escape sequences aside", () => {
  const t = new ConsoleTerminal();
  const prompt = (s: string): boolean => (t.scan(enc(s), null), t.atPrompt);
  assert.equal(prompt("Welcome\r\n"), false);
  assert.equal(prompt("~ # "), true);
  assert.equal(prompt("ls\r\n"), false);
  assert.equal(prompt("\x1b[01;32mroot@web1\x1b[00m:\x1b[01;34m~\x1b[00m# \x1b[?2004h"), true, "bash's, in colour");
  assert.equal(prompt("\r\n"), false);
  assert.equal(prompt("user@host:~$ "), true);
  assert.equal(prompt("\r\nweb1 login: "), false, "a login prompt is not a shell's");
  assert.equal(prompt("\r\n# comment"), false);
  assert.equal(prompt("\r\n   [  OK  ] Started getty.\r\n"), false);
  // A query right after a prompt says so; one elsewhere does not.
  const r = run(t, "booting\x1b[6n\r\n$ \x1b[6n");
  assert.deepEqual(
    r.answers.map((a) => a.atPrompt),
    [false, true],
  );
});

test("typed-ahead input: held until a prompt has been quiet, released whole and in order", () => {
  const g = new TypeAhead("prompt");
  assert.equal(g.push(enc("nproc\n")), null);
  assert.equal(g.push(enc("poweroff -f\n")), null);
  assert.equal(g.pending, 18);
  assert.equal(g.due(10_000, false), false, "no prompt: held however long the console is silent");
  assert.equal(g.due(PROMPT_QUIET_MS - 1, true), false, "a prompt that just appeared may be followed by more");
  assert.equal(g.due(PROMPT_QUIET_MS, true), true);
  assert.equal(g.current, "prompt", "a snapshot now would wait for the prompt again");
  assert.equal(dec(g.release()), "nproc\npoweroff -f\n");
  assert.equal(g.isOpen, true);
  assert.equal(g.current, "immediate");
  const later = enc("echo hi\n");
  assert.equal(g.push(later), later, "once open, input goes as it comes");
  // A reboot closes the gate; what the old boot did not read waits for the new shell, first.
  g.restart(enc("unread\n"));
  assert.equal(g.push(enc("more\n")), null);
  assert.equal(dec(g.release()), "unread\nmore\n");
});

test("typed-ahead input under prompt-or-silence and immediate rules", () => {
  const g = new TypeAhead("prompt-or-silence");
  g.push(enc("x"));
  assert.equal(g.due(SILENCE_MS - 1, false), false);
  assert.equal(g.due(SILENCE_MS, false), true, "a silent console lets input go to an init without a prompt");
  const i = new TypeAhead("immediate");
  assert.equal(i.isOpen, true);
  const b = enc("y");
  assert.equal(i.push(b), b);
  // A restored snapshot's rule: immediate releases what was held.
  const r = new TypeAhead("prompt");
  r.push(enc("z"));
  r.follow("immediate");
  assert.equal(r.due(0, false), true);
  assert.equal(dec(r.release()), "z");
});

/** The serial console of an instance: xterm.js over the WebSocket /api/v1/instances/{id}/console.
 *  The token travels as the `bearer.<token>` subprotocol; the server replays recent output first. */
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { consoleUrl, getToken } from "./api.js";
import { h, replace } from "./dom.js";
import { attachChrome, connectWhenRunning } from "./attach.js";
import type { View } from "./session.js";

/** The open terminal, for scripts and tests that read its buffer (`window.yunTerminal`). */
declare global {
  interface Window {
    yunTerminal?: Terminal;
  }
}

export const consoleView: View = (main, _session, id) => {
  const chrome = attachChrome("console", "Console");
  const screen = h("div", { class: "screen", id: "terminal" });
  replace(
    main,
    chrome.toolbar,
    chrome.message,
    h("div", { class: "console-box" }, screen),
    h("p", { class: "muted hint" }, "Click the terminal and type; this is the instance's serial console (ttyS0)."),
  );

  const term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    // xterm's DOM renderer gives each row the glyphs' measured height with overflow hidden; at
    // 14 px DejaVu Sans Mono's underscore lies just below it (PRETTY_NAME read PRETTY NAME).
    // A taller row leaves it room.
    lineHeight: 1.2,
    theme: { background: "#0f1419", foreground: "#e6e1cf" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  window.yunTerminal = term;
  const onResize = (): void => fit.fit();
  window.addEventListener("resize", onResize);

  let ws: WebSocket | undefined;
  let closed = false;
  const encoder = new TextEncoder();
  const input = term.onData((data) => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });

  function connect(): void {
    const token = getToken() ?? "";
    chrome.setStatus("connecting…");
    const sock = new WebSocket(consoleUrl(id), [`bearer.${token}`]);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      chrome.setStatus("connected", "ok");
      chrome.say();
      term.focus();
    };
    sock.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      term.write(typeof ev.data === "string" ? ev.data : new Uint8Array(ev.data));
    };
    sock.onclose = (ev) => {
      if (closed || ws !== sock) return;
      chrome.setStatus("disconnected", "bad");
      chrome.reconnect.hidden = false;
      const why =
        ev.reason !== "" ? ev.reason : opened ? "The console connection closed." : "The console could not be opened.";
      chrome.say(opened ? "info" : "error", why);
    };
  }
  chrome.reconnect.addEventListener("click", connect);

  // A building instance's console shows its boot.
  connectWhenRunning(chrome, id, {
    heading: "Console",
    what: "console",
    states: ["running", "paused", "building"],
    connect,
  });

  return () => {
    closed = true;
    input.dispose();
    window.removeEventListener("resize", onResize);
    ws?.close();
    term.dispose();
    if (window.yunTerminal === term) window.yunTerminal = undefined;
  };
};

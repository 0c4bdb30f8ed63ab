/** The serial console of an instance: xterm.js over the WebSocket /api/v1/instances/{id}/console.
 *  The token travels as the `bearer.<token>` subprotocol; the server replays recent output first. */
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { consoleUrl, get, getToken, scoped, type Instance } from "./api.js";
import { errorText, h, notice, replace } from "./dom.js";
import type { View } from "./session.js";

/** The open terminal, for scripts and tests that read its buffer (`window.yunTerminal`). */
declare global {
  interface Window {
    yunTerminal?: Terminal;
  }
}

export const consoleView: View = (main, _session, id) => {
  const title = h("h2", null, "Console");
  const state = h("span", { class: "state", id: "console-instance-state" });
  const status = h("span", { class: "conn", id: "console-status", role: "status" }, "connecting…");
  const reconnect = h("button", { type: "button", id: "console-reconnect", hidden: true }, "Reconnect");
  const message = h("div", { class: "status" });
  const screen = h("div", { class: "screen", id: "terminal" });
  replace(
    main,
    h(
      "div",
      { class: "toolbar" },
      h("a", { href: "#/instances", class: "button" }, "← Instances"),
      title,
      state,
      h("div", { class: "spacer" }),
      status,
      reconnect,
    ),
    message,
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
    status.textContent = "connecting…";
    status.className = "conn";
    reconnect.hidden = true;
    const sock = new WebSocket(consoleUrl(id), [`bearer.${token}`]);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      status.textContent = "connected";
      status.className = "conn ok";
      replace(message);
      term.focus();
    };
    sock.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      term.write(typeof ev.data === "string" ? ev.data : new Uint8Array(ev.data));
    };
    sock.onclose = (ev) => {
      if (closed || ws !== sock) return;
      status.textContent = "disconnected";
      status.className = "conn bad";
      reconnect.hidden = false;
      const why =
        ev.reason !== "" ? ev.reason : opened ? "The console connection closed." : "The console could not be opened.";
      replace(message, notice(opened ? "info" : "error", why));
    };
  }
  reconnect.addEventListener("click", connect);

  get<Instance>(`/instances/${encodeURIComponent(id)}`, scoped())
    .then((i) => {
      title.textContent = `Console: ${i.name}`;
      document.title = `Yun — ${i.name} console`;
      state.textContent = i.state;
      state.className = `state state-${i.state}`;
      if (i.state === "running" || i.state === "paused" || i.state === "building") connect();
      else {
        status.textContent = "not connected";
        status.className = "conn bad";
        reconnect.hidden = false;
        replace(
          message,
          notice("info", `${i.name} is ${i.state}; start it from the instance list to use its console.`),
        );
      }
    })
    .catch((e: unknown) => {
      status.textContent = "not connected";
      status.className = "conn bad";
      replace(message, notice("error", errorText(e)));
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

/** The graphical console of an instance: noVNC's RFB client over the WebSocket
 *  /api/v1/instances/{id}/display, authenticated as the serial console is (the `bearer.<token>`
 *  subprotocol). The server offers RFB security None there: the token already said who we are. */
import type RFB from "@novnc/novnc";
import { consoleUrl, getToken } from "./api.js";
import { errorText, h, replace } from "./dom.js";
import { attachChrome, connectWhenRunning } from "./attach.js";
import type { View } from "./session.js";

/** The open RFB client, for tests that look at its state (`window.yunDisplay`). */
declare global {
  interface Window {
    yunDisplay?: RFB;
  }
}

/** noVNC (some 40 modules) is fetched when a graphical console is first opened, not with every
 *  page of the dashboard. A variable, so that tsc leaves the path (served by server.ts) alone. */
const RFB_MODULE = "/vendor/novnc/core/rfb.js";
let rfbClass: Promise<typeof RFB> | undefined;
function loadRfb(): Promise<typeof RFB> {
  rfbClass ??= (import(RFB_MODULE) as Promise<{ default: typeof RFB }>).then((m) => m.default);
  return rfbClass;
}

/** X11 keysyms of the characters "Type text" sends: Latin-1 maps to itself, controls to keys. */
function keysymOf(ch: string): number | null {
  const c = ch.codePointAt(0)!;
  if (ch === "\n") return 0xff0d; // Return
  if (ch === "\t") return 0xff09; // Tab
  if (c >= 0x20 && c <= 0x7e) return c;
  if (c >= 0xa0 && c <= 0xff) return c;
  return null;
}

export const displayView: View = (main, _session, id) => {
  const cad = h("button", { type: "button", id: "display-ctrl-alt-del", disabled: true }, "Ctrl-Alt-Del");
  const chrome = attachChrome("display", "Display", [cad]);
  const screen = h("div", { class: "display-screen", id: "display-screen" });
  const text = h("textarea", {
    id: "display-text",
    rows: 2,
    placeholder: "Text to type into the guest (Enter becomes Return)",
    "aria-label": "Text to type into the guest",
  }) as HTMLTextAreaElement;
  const typeButton = h("button", { type: "button", id: "display-type", disabled: true }, "Type text");
  replace(
    main,
    chrome.toolbar,
    chrome.message,
    h("div", { class: "display-box" }, screen),
    h("div", { class: "display-type" }, text, typeButton),
    h(
      "p",
      { class: "muted hint" },
      "Click the screen to give it the keyboard; the pointer is an absolute tablet. The serial console is under Console.",
    ),
  );

  let rfb: RFB | undefined;
  let closed = false;

  async function connect(): Promise<void> {
    rfb?.disconnect();
    chrome.setStatus("connecting…");
    let Rfb: typeof RFB;
    try {
      Rfb = await loadRfb();
    } catch (e) {
      chrome.setStatus("not connected", "bad");
      chrome.say("error", `The VNC client could not be loaded: ${errorText(e)}`);
      return;
    }
    if (closed) return;
    const client = new Rfb(screen, consoleUrl(id, "display"), { wsProtocols: [`bearer.${getToken() ?? ""}`] });
    client.scaleViewport = true;
    client.background = "#0f1419";
    rfb = client;
    window.yunDisplay = client;
    let opened = false;
    client.addEventListener("connect", () => {
      opened = true;
      chrome.setStatus("connected", "ok");
      cad.disabled = false;
      typeButton.disabled = false;
      chrome.say();
      client.focus();
    });
    client.addEventListener("disconnect", (ev) => {
      cad.disabled = true;
      typeButton.disabled = true;
      if (closed || rfb !== client) return;
      chrome.setStatus("disconnected", "bad");
      chrome.reconnect.hidden = false;
      const clean = (ev as CustomEvent<{ clean: boolean }>).detail?.clean === true;
      chrome.say(
        opened && clean ? "info" : "error",
        opened ? "The display connection closed." : "The display could not be opened.",
      );
    });
    client.addEventListener("securityfailure", (ev) => {
      const reason = (ev as CustomEvent<{ reason?: string }>).detail?.reason ?? "refused";
      chrome.say("error", `The display refused the connection: ${reason}`);
    });
  }
  chrome.reconnect.addEventListener("click", () => void connect());
  cad.addEventListener("click", () => rfb?.sendCtrlAltDel());
  typeButton.addEventListener("click", () => {
    const client = rfb;
    if (client === undefined) return;
    const skipped = new Set<string>();
    for (const ch of text.value) {
      const sym = keysymOf(ch);
      if (sym === null) {
        skipped.add(ch);
        continue;
      }
      client.sendKey(sym, null, true);
      client.sendKey(sym, null, false);
    }
    text.value = "";
    if (skipped.size > 0) chrome.say("info", `Not typed (no key for them): ${[...skipped].join(" ")}`);
    client.focus();
  });

  connectWhenRunning(chrome, id, {
    heading: "Display",
    what: "display",
    states: ["running", "paused"],
    refusal: (i) =>
      i.display === "vnc"
        ? null
        : `${i.name} has no graphical display (create an instance with display "vnc" for one).`,
    connect: () => void connect(),
  });

  return () => {
    closed = true;
    rfb?.disconnect();
    if (window.yunDisplay === rfb) window.yunDisplay = undefined;
  };
};

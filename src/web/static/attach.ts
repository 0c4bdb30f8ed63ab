/** What the serial console and the graphical console views share: their toolbar (back link,
 *  title, the instance's state, connection status, Reconnect), a message line, and opening the
 *  connection once the instance is known to be running. */
import { errorText, h, notice, replace, type Child } from "./dom.js";
import { get, scoped, type Instance } from "./api.js";

export interface AttachChrome {
  toolbar: HTMLElement;
  message: HTMLElement;
  reconnect: HTMLButtonElement;
  /** Shows the connection's state: "connecting…", "connected" (ok), "disconnected" (bad)... */
  setStatus(text: string, tone?: "ok" | "bad"): void;
  /** Shows a notice in the message line; none: clears it. */
  say(kind?: "info" | "error", text?: string): void;
}

/** `prefix` names the elements (PREFIX-status, PREFIX-reconnect, PREFIX-instance-state). */
export function attachChrome(
  prefix: string,
  heading: string,
  extras: Child[] = [],
): AttachChrome & {
  title: HTMLElement;
  state: HTMLElement;
} {
  const title = h("h2", null, heading);
  const state = h("span", { class: "state", id: `${prefix}-instance-state` });
  const status = h("span", { class: "conn", id: `${prefix}-status`, role: "status" }, "connecting…");
  const reconnect = h("button", { type: "button", id: `${prefix}-reconnect`, hidden: true }, "Reconnect");
  const message = h("div", { class: "status" });
  const toolbar = h(
    "div",
    { class: "toolbar" },
    h("a", { href: "#/instances", class: "button" }, "← Instances"),
    title,
    state,
    h("div", { class: "spacer" }),
    ...extras,
    status,
    reconnect,
  );
  return {
    toolbar,
    message,
    reconnect,
    title,
    state,
    setStatus(text, tone) {
      status.textContent = text;
      status.className = tone === undefined ? "conn" : `conn ${tone}`;
      if (tone !== "bad") reconnect.hidden = true;
    },
    say(kind, text) {
      if (kind === undefined || text === undefined) replace(message);
      else replace(message, notice(kind, text));
    },
  };
}

/**
 * Looks the instance up, shows its name and state, and calls `connect` when it is in one of
 * `states`; otherwise says why not (`refusal` may refuse a running one too, e.g. no display).
 */
export function connectWhenRunning(
  chrome: ReturnType<typeof attachChrome>,
  id: string,
  opts: {
    heading: string;
    what: string;
    states: string[];
    refusal?: (i: Instance) => string | null;
    connect: () => void;
  },
): void {
  const notConnected = (): void => {
    chrome.setStatus("not connected", "bad");
  };
  get<Instance>(`/instances/${encodeURIComponent(id)}`, scoped())
    .then((i) => {
      chrome.title.textContent = `${opts.heading}: ${i.name}`;
      document.title = `Yun — ${i.name} ${opts.what}`;
      chrome.state.textContent = i.state;
      chrome.state.className = `state state-${i.state}`;
      const refused = opts.refusal?.(i) ?? null;
      if (refused !== null) {
        notConnected();
        chrome.say("info", refused);
      } else if (opts.states.includes(i.state)) opts.connect();
      else {
        notConnected();
        chrome.reconnect.hidden = false;
        chrome.say("info", `${i.name} is ${i.state}; start it from the instance list to use its ${opts.what}.`);
      }
    })
    .catch((e: unknown) => {
      notConnected();
      chrome.say("error", errorText(e));
    });
}

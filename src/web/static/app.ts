/** The Yun dashboard: login, then a shell with the views (instances, console, usage, admin) chosen
 *  by the location hash. Each view renders into <main> and returns a cleanup (timers, sockets). */
import {
  ApiError,
  checkToken,
  clearSession,
  get,
  getToken,
  nameOf,
  selectProject,
  selectedProject,
  setToken,
  setUnauthorizedHandler,
  type List,
  type Project,
  type WhoAmI,
} from "./api.js";
import { errorText, h, notice, replace } from "./dom.js";
import type { Session, View } from "./session.js";
import { instancesView } from "./instances.js";
import { consoleView } from "./console.js";
import { displayView } from "./display.js";
import { usageView } from "./usage.js";
import { adminView } from "./admin.js";
import { eventsView } from "./events.js";
import { storageView } from "./storage.js";

const root = document.getElementById("app")!;
let cleanup: (() => void) | void = undefined;
let session: Session | undefined;

function route(): { view: string; arg: string } {
  const [view = "", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { view, arg: decodeURIComponent(rest.join("/")) };
}

function stopView(): void {
  if (cleanup) cleanup();
  cleanup = undefined;
}

function showLogin(message?: string): void {
  stopView();
  session = undefined;
  document.title = "Yun — log in";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "yun_…",
    required: true,
    "aria-label": "API token",
  });
  const status = h("div", { class: "status" }, message ? notice("error", message) : null);
  const form = h(
    "form",
    { class: "login card", id: "login" },
    h("h1", null, "Yun"),
    h(
      "p",
      { class: "muted" },
      "Log in with an API token. ",
      h("code", null, "yun serve"),
      " printed the admin token on its first start; it is also in ",
      h("code", null, "$YUN_HOME/cloud/admin.token"),
      ". ",
      h("code", null, "yun user token NAME"),
      " issues one for another user.",
    ),
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { type: "submit", class: "primary" }, "Log in"),
    status,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (token === "") return;
    replace(status, notice("info", "Checking the token…"));
    checkToken(token)
      .then((who) => {
        setToken(token);
        return start(who);
      })
      .catch((e: unknown) => {
        const msg =
          e instanceof ApiError && e.status === 401
            ? "That token was not accepted; check it and try again."
            : errorText(e);
        replace(status, notice("error", msg));
      });
  });
  replace(root, h("div", { class: "login-page" }, form));
  input.focus();
}

async function start(who: WhoAmI): Promise<void> {
  const isAdmin = who.role === "admin";
  let projects: Project[] = [];
  if (isAdmin) {
    try {
      projects = (await get<List<Project>>("/projects")).items;
    } catch {}
  }
  session = { who, role: who.role, isAdmin, canWrite: who.role !== "reader", projects, refreshProjects };
  if (location.hash === "" || location.hash === "#/" || location.hash.startsWith("#/login"))
    location.hash = "#/instances";
  render();
}

/** Reloads the admin's project list (after creating or deleting a project). */
async function refreshProjects(): Promise<void> {
  if (!session?.isAdmin) return;
  session.projects = (await get<List<Project>>("/projects")).items;
  if (selectedProject() !== "" && !session.projects.some((p) => p.id === selectedProject())) selectProject("");
}

function header(s: Session, current: string): HTMLElement {
  const link = (view: string, label: string): HTMLElement =>
    h("a", { href: `#/${view}`, class: current === view ? "active" : null, "data-nav": view }, label);
  let picker: HTMLElement | null = null;
  if (s.isAdmin && current !== "admin" && current !== "console" && current !== "display") {
    const sel = h(
      "select",
      { id: "project-picker", "aria-label": "Project" },
      h("option", { value: "" }, "All projects"),
      ...s.projects.map((p) => h("option", { value: p.id, selected: p.id === selectedProject() }, p.name)),
    );
    sel.addEventListener("change", () => {
      selectProject(sel.value);
      render();
    });
    picker = h("label", { class: "picker" }, h("span", { class: "label" }, "Project "), sel);
  }
  // Two groups that wrap onto lines of their own when the window is narrow (app.css): the
  // navigation, and the account (project picker, who is logged in, Log out).
  return h(
    "header",
    null,
    h("a", { class: "brand", href: "#/instances" }, "Yun"),
    h(
      "nav",
      null,
      link("instances", "Instances"),
      link("volumes", "Volumes & networks"),
      link("usage", "Usage"),
      link("events", "Activity"),
      s.isAdmin ? link("admin", "Projects & quotas") : null,
    ),
    h(
      "div",
      { class: "account" },
      picker,
      h(
        "span",
        { class: "who", id: "whoami" },
        `${nameOf(s.who.user)} · ${nameOf(s.who.project)} · `,
        h("span", { class: `role role-${s.role}` }, s.role),
      ),
      h(
        "button",
        {
          type: "button",
          id: "logout",
          onclick: () => {
            clearSession();
            location.hash = "#/login";
            showLogin();
          },
        },
        "Log out",
      ),
    ),
  );
}

const VIEWS: Record<string, View> = {
  instances: instancesView,
  console: consoleView,
  display: displayView,
  usage: usageView,
  admin: adminView,
  events: eventsView,
  volumes: storageView,
};

/** Other names of views: the view was once `#/storage`, and its page also shows the networks. */
const ALIASES: Record<string, string> = { storage: "volumes", networks: "volumes" };

/** What an unknown address shows: where the user is, and the way to the pages that exist. */
function notFoundView(main: HTMLElement, s: Session): void {
  document.title = "Yun — not found";
  replace(
    main,
    h(
      "div",
      { class: "card not-found", id: "not-found" },
      h("h2", null, "Page not found"),
      h("p", null, "There is no page ", h("code", null, location.hash), " in this dashboard. Go to:"),
      h(
        "ul",
        null,
        h("li", null, h("a", { href: "#/instances" }, "Instances")),
        h("li", null, h("a", { href: "#/volumes" }, "Volumes & networks")),
        h("li", null, h("a", { href: "#/usage" }, "Usage")),
        h("li", null, h("a", { href: "#/events" }, "Activity")),
        s.isAdmin ? h("li", null, h("a", { href: "#/admin" }, "Projects & quotas")) : null,
      ),
    ),
  );
}

function render(): void {
  stopView();
  if (!session) return showLogin();
  const { view: asked, arg } = route();
  let view = asked;
  if (asked === "" || asked === "login") {
    location.hash = "#/instances";
    return;
  }
  const alias = ALIASES[view];
  if (alias !== undefined) {
    // Show the page's own address without another history entry (or hashchange).
    view = alias;
    history.replaceState(null, "", `#/${view}${arg === "" ? "" : `/${encodeURIComponent(arg)}`}`);
  }
  const main = h("main", { id: "main" });
  replace(root, header(session, view), main);
  const v = VIEWS[view];
  if (v === undefined) return notFoundView(main, session);
  document.title = `Yun — ${view}`;
  try {
    cleanup = v(main, session, arg);
  } catch (e) {
    replace(main, notice("error", errorText(e)));
  }
}

setUnauthorizedHandler(() => {
  clearSession();
  showLogin("The token is no longer valid; log in again.");
});

window.addEventListener("hashchange", () => {
  if (session) render();
});

const saved = getToken();
if (saved === null) showLogin();
else {
  checkToken(saved)
    .then(start)
    .catch((e: unknown) => {
      clearSession();
      showLogin(e instanceof ApiError && e.status === 401 ? undefined : errorText(e));
    });
}

/** The audit log (/api/v1/events): who did what, newest first; refreshed every 5 s. */
import { get, nameOf, scoped, type ApiEvent, type List } from "./api.js";
import { errorText, formatTime, h, notice, replace, table } from "./dom.js";
import type { View } from "./session.js";

const POLL_MS = 5000;

export const eventsView: View = (main, session) => {
  const status = h("div", { class: "status" });
  const box = h("div", { id: "events" }, h("p", { class: "muted" }, "Loading events…"));
  replace(main, h("div", { class: "toolbar" }, h("h2", null, "Activity")), status, box);
  const projectName = (id: string): string => session.projects.find((p) => p.id === id)?.name ?? id;
  let stopped = false;
  let timer = 0;
  let last = "";

  async function refresh(): Promise<void> {
    try {
      const items = (await get<List<ApiEvent>>("/events", scoped({ limit: 200 }))).items;
      if (stopped) return;
      replace(status);
      const key = JSON.stringify(items);
      if (key === last) return;
      last = key;
      replace(
        box,
        table(
          ["Time", "User", "Project", "Action", "Resource", "Outcome", "Detail"],
          items.map((e) => [
            formatTime(e.at),
            // The name to read; the id (names are unique only within a project) on hover.
            h(
              "span",
              { class: "actor", title: e.userId ?? "the server itself", "data-user-id": e.userId ?? "" },
              nameOf(e.user),
            ),
            projectName(nameOf(e.project)),
            h("code", null, e.action),
            e.resource ?? "",
            h("span", { class: `outcome ${e.outcome === "ok" ? "ok" : "bad"}` }, e.outcome ?? ""),
            e.message ?? "",
          ]),
          "Nothing has happened yet.",
          { class: "list", id: "event-table" },
        ),
      );
    } catch (e) {
      if (!stopped) replace(status, notice("error", `Cannot load events: ${errorText(e)}`));
    }
  }

  function schedule(): void {
    if (stopped) return;
    timer = window.setTimeout(() => void refresh().finally(schedule), POLL_MS);
  }
  void refresh().finally(schedule);
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
};

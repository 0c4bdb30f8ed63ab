/** Usage per project: totals and per-instance usage from /api/v1/usage, and charts (uPlot) of the
 *  same quantities over time, one query per time bucket. Members and readers see their project;
 *  admins see every project side by side (one series each) or the one picked in the header. */
import uPlot from "uplot";
import { apiText, get, nameOf, scoped, selectedProject, type Usage } from "./api.js";
import { errorText, h, notice, replace, table, type Child } from "./dom.js";
import type { View } from "./session.js";

const RANGES: Record<string, { label: string; ms: number; buckets: number }> = {
  "1h": { label: "last hour", ms: 3600_000, buckets: 12 },
  "24h": { label: "last 24 hours", ms: 24 * 3600_000, buckets: 24 },
  "7d": { label: "last 7 days", ms: 7 * 24 * 3600_000, buckets: 28 },
};

const METRICS = [
  { key: "vcpuSeconds", label: "vCPU-seconds", digits: 1 },
  { key: "memoryGiBHours", label: "Memory GiB-hours", digits: 4 },
  { key: "diskGiBHours", label: "Disk GiB-hours", digits: 4 },
] as const;

const COLORS = ["#2f7fd8", "#16a34a", "#c2410c", "#7c3aed", "#db2777", "#0891b2", "#ca8a04", "#4b5563"];
/** At most this many projects are charted side by side (each costs one query per bucket). */
const MAX_SERIES = COLORS.length;

const fmt = (n: number | undefined, digits: number): string => (n ?? 0).toFixed(digits);

interface Target {
  label: string;
  /** ?project= for this series; undefined: the caller's own project. */
  project?: string;
}

export const usageView: View = (main, session) => {
  const rangeSel = h(
    "select",
    { id: "usage-range", "aria-label": "Time range" },
    Object.entries(RANGES).map(([k, r]) => h("option", { value: k, selected: k === "24h" }, r.label)),
  );
  const csv = h("button", { type: "button", id: "usage-csv" }, "Download CSV");
  const status = h("div", { class: "status" });
  const totals = h("div", { id: "usage-totals", class: "totals" });
  const charts = h("div", { id: "usage-charts", class: "charts" });
  const perInstance = h("div", { id: "usage-instances" });
  replace(
    main,
    h("div", { class: "toolbar" }, h("h2", null, "Usage"), h("div", { class: "spacer" }), rangeSel, csv),
    status,
    totals,
    charts,
    h("h3", null, "Per instance and volume"),
    perInstance,
  );

  // What to chart: the admin's pick, every project (admins, no pick), or the caller's project.
  const picked = selectedProject();
  let targets: Target[];
  if (session.isAdmin && picked === "" && session.projects.length > 0) {
    targets = session.projects.slice(0, MAX_SERIES).map((p) => ({ label: p.name, project: p.id }));
  } else if (picked !== "") {
    targets = [{ label: session.projects.find((p) => p.id === picked)?.name ?? picked, project: picked }];
  } else {
    targets = [{ label: nameOf(session.who.project) }];
  }
  const many = targets.length > 1;

  let plots: uPlot[] = [];
  let generation = 0;

  const usageOf = (t: Target, from: number, to: number): Promise<Usage> =>
    get<Usage>("/usage", {
      project: t.project,
      from: new Date(from).toISOString(),
      to: new Date(to).toISOString(),
    });

  async function load(): Promise<void> {
    const gen = ++generation;
    const range = RANGES[rangeSel.value] ?? RANGES["24h"]!;
    const to = Date.now();
    const from = to - range.ms;
    const step = range.ms / range.buckets;
    replace(status, notice("info", "Loading usage…"));
    try {
      const wholes = Promise.all(targets.map((t) => usageOf(t, from, to)));
      const series = Promise.all(
        targets.map((t) =>
          Promise.all(
            Array.from({ length: range.buckets }, (_, n) => usageOf(t, from + n * step, from + (n + 1) * step)),
          ),
        ),
      );
      const [w, s] = await Promise.all([wholes, series]);
      if (gen !== generation) return;
      replace(status);
      renderTotals(w, range.label);
      renderCharts(
        Array.from({ length: range.buckets }, (_, n) => (from + (n + 1) * step) / 1000),
        s,
      );
    } catch (e) {
      if (gen === generation) replace(status, notice("error", `Cannot load usage: ${errorText(e)}`));
    }
  }

  function renderTotals(us: Usage[], label: string): void {
    if (!many) {
      const u = us[0]!;
      replace(
        totals,
        h("p", { class: "muted" }, `Project ${targets[0]!.label}, ${label}:`),
        h(
          "div",
          { class: "tiles" },
          METRICS.map((m) =>
            h(
              "div",
              { class: "tile", "data-metric": m.key },
              h("div", { class: "value" }, fmt(u[m.key], m.digits)),
              h("div", { class: "label" }, m.label),
            ),
          ),
        ),
      );
    } else {
      replace(
        totals,
        h("p", { class: "muted" }, `All projects, ${label}:`),
        table(
          ["Project", ...METRICS.map((m) => m.label)],
          us.map((u, n) => [targets[n]!.label, ...METRICS.map((m) => fmt(u[m.key], m.digits))]),
          "No projects.",
          { class: "list", id: "usage-projects" },
        ),
      );
    }
    const rows: Child[][] = [];
    us.forEach((u, n) => {
      for (const i of u.instances ?? []) {
        rows.push([
          ...(many ? [targets[n]!.label] : []),
          i.name ?? i.id ?? "",
          ...METRICS.map((m) => fmt(i[m.key], m.digits)),
        ]);
      }
    });
    replace(
      perInstance,
      table(
        [...(many ? ["Project"] : []), "Resource", ...METRICS.map((m) => m.label)],
        rows,
        "Nothing was metered in this period.",
        { class: "list", id: "usage-table" },
      ),
    );
  }

  function renderCharts(xs: number[], series: Usage[][]): void {
    for (const p of plots) p.destroy();
    plots = [];
    replace(charts);
    const avail = charts.clientWidth || 900;
    const width = Math.max(300, Math.floor(avail >= 960 ? avail / 3 - 40 : avail - 40));
    for (const m of METRICS) {
      const box = h("div", { class: "chart card", "data-metric": m.key }, h("h4", null, m.label));
      charts.append(box);
      const data: uPlot.AlignedData = [xs, ...series.map((s) => s.map((u) => u[m.key] ?? 0))];
      plots.push(
        new uPlot(
          {
            width,
            height: 200,
            legend: { show: many },
            scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
            axes: [{}, { size: 60 }],
            series: [
              {},
              ...targets.map((t, n) => ({
                label: t.label,
                stroke: COLORS[n % COLORS.length],
                fill: many ? undefined : `${COLORS[n % COLORS.length]}33`,
                width: 2,
                paths: uPlot.paths.stepped!({ align: -1 }),
              })),
            ],
          },
          data,
          box,
        ),
      );
    }
  }

  rangeSel.addEventListener("change", () => void load());
  csv.addEventListener("click", () => {
    const range = RANGES[rangeSel.value] ?? RANGES["24h"]!;
    const to = Date.now();
    apiText(
      "/usage",
      scoped({ format: "csv", from: new Date(to - range.ms).toISOString(), to: new Date(to).toISOString() }),
    )
      .then((text) => {
        const a = h("a", {
          href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
          download: "yun-usage.csv",
        });
        a.click();
        URL.revokeObjectURL(a.href);
      })
      .catch((e: unknown) => replace(status, notice("error", `Cannot export usage: ${errorText(e)}`)));
  });
  void load();
  return () => {
    generation++;
    for (const p of plots) p.destroy();
  };
};

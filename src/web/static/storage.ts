/** Volumes and private networks of the project: lists, create, attach/detach, delete. */
import { del, get, post, scoped, type Instance, type List, type Network, type Volume } from "./api.js";
import { confirmButton, errorText, formatTime, h, notice, replace, table } from "./dom.js";
import type { View } from "./session.js";

const POLL_MS = 3000;

export const storageView: View = (main, session) => {
  const status = h("div", { class: "status", id: "storage-status" });
  const volumesBox = h("div", { id: "volumes" }, h("p", { class: "muted" }, "Loading volumes…"));
  const networksBox = h("div", { id: "networks" }, h("p", { class: "muted" }, "Loading networks…"));
  let stopped = false;
  let timer = 0;
  let instances: Instance[] = [];

  const report = (text: string, kind: "error" | "success" = "error"): void => replace(status, notice(kind, text));
  const act = (what: string, p: Promise<unknown>): void => {
    p.then(() => {
      report(`${what}: done`, "success");
      void refresh();
    }).catch((e: unknown) => report(`${what}: ${errorText(e)}`));
  };

  const volumeForm = (): HTMLElement => {
    const name = h("input", { name: "name", placeholder: "data1", required: true, "aria-label": "Volume name" });
    const size = h("input", {
      name: "sizeGiB",
      type: "number",
      min: 1,
      value: "1",
      required: true,
      "aria-label": "Size (GiB)",
    });
    const form = h(
      "form",
      { class: "inline", id: "volume-form" },
      name,
      size,
      h("span", null, "GiB"),
      h("button", { type: "submit", class: "primary" }, "Create volume"),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(
        `create volume ${name.value}`,
        post("/volumes", { name: name.value.trim(), sizeGiB: Number(size.value) }, scoped()),
      );
    });
    return form;
  };

  const networkForm = (): HTMLElement => {
    const name = h("input", { name: "name", placeholder: "private", required: true, "aria-label": "Network name" });
    const cidr = h("input", { name: "cidr", placeholder: "10.50.0.0/24", required: true, "aria-label": "CIDR" });
    const form = h(
      "form",
      { class: "inline", id: "network-form" },
      name,
      cidr,
      h("button", { type: "submit", class: "primary" }, "Create network"),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(
        `create network ${name.value}`,
        post("/networks", { name: name.value.trim(), cidr: cidr.value.trim() }, scoped()),
      );
    });
    return form;
  };

  /** Attach (to a stopped instance: volumes are plugged in at boot) or detach. */
  const attachControl = (v: Volume): HTMLElement | null => {
    if (!session.canWrite) return null;
    if (v.instance) {
      return h(
        "button",
        { type: "button", onclick: () => act(`detach ${v.name}`, post(`/volumes/${v.id}/detach`, {}, scoped())) },
        "Detach",
      );
    }
    const stoppedOnes = instances.filter((i) => i.state === "stopped");
    if (stoppedOnes.length === 0) return h("span", { class: "muted" }, "stop an instance to attach");
    const sel = h(
      "select",
      { "aria-label": `Attach ${v.name} to` },
      ...stoppedOnes.map((i) => h("option", { value: i.id }, i.name)),
    );
    return h(
      "span",
      null,
      sel,
      h(
        "button",
        {
          type: "button",
          onclick: () => act(`attach ${v.name}`, post(`/volumes/${v.id}/attach`, { instance: sel.value }, scoped())),
        },
        "Attach",
      ),
    );
  };

  async function refresh(): Promise<void> {
    try {
      const [vols, nets, insts] = await Promise.all([
        get<List<Volume>>("/volumes", scoped()),
        get<List<Network>>("/networks", scoped()),
        get<List<Instance>>("/instances", scoped()),
      ]);
      if (stopped) return;
      instances = insts.items;
      const instanceName = (id: string | null): string => instances.find((i) => i.id === id)?.name ?? id ?? "";
      replace(
        volumesBox,
        table(
          ["Name", "Size", "State", "Instance", "Created", ""],
          vols.items.map((v) => [
            v.name,
            `${v.sizeGiB} GiB`,
            h("span", { class: `badge state-${v.state}` }, v.state),
            instanceName(v.instance),
            formatTime(v.createdAt),
            session.canWrite
              ? h(
                  "span",
                  { class: "actions" },
                  attachControl(v),
                  confirmButton("Delete", "Really delete?", () =>
                    act(`delete ${v.name}`, del(`/volumes/${v.id}`, scoped())),
                  ),
                )
              : null,
          ]),
          "No volumes yet.",
          { class: "list", id: "volume-table" },
        ),
      );
      replace(
        networksBox,
        table(
          ["Name", "CIDR", "Gateway", "Created", ""],
          nets.items.map((n) => [
            n.name,
            h("code", null, n.cidr ?? ""),
            h("code", null, n.gateway ?? ""),
            formatTime(n.createdAt),
            session.canWrite
              ? confirmButton("Delete", "Really delete?", () =>
                  act(`delete ${n.name}`, del(`/networks/${n.id}`, scoped())),
                )
              : null,
          ]),
          "No private networks yet.",
          { class: "list", id: "network-table" },
        ),
      );
    } catch (e) {
      if (!stopped) report(`Cannot load volumes and networks: ${errorText(e)}`);
    }
  }

  replace(
    main,
    h("div", { class: "toolbar" }, h("h2", null, "Volumes")),
    session.canWrite ? volumeForm() : null,
    volumesBox,
    h("div", { class: "toolbar" }, h("h2", null, "Private networks")),
    h(
      "p",
      { class: "muted" },
      "Instances on one network reach each other; the daemon answers DHCP inside it. Other projects cannot see or join it.",
    ),
    session.canWrite ? networkForm() : null,
    networksBox,
    status,
  );
  const schedule = (): void => {
    if (!stopped) timer = window.setTimeout(() => void refresh().finally(schedule), POLL_MS);
  };
  void refresh().finally(schedule);
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
};

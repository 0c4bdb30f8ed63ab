/**
 * Instances: the list with live state (polled every 2 s), the create form, the actions, and an
 * instance's port forwards (its "Ports" panel: list, add, remove).
 */
import {
  del,
  get,
  nameOf,
  post,
  scoped,
  selectedProject,
  type Flavor,
  type Forward,
  type Image,
  type Instance,
  type KeyPair,
  type List,
  type Network,
} from "./api.js";
import { confirmButton, errorText, formatTime, h, notice, replace, table, type Child } from "./dom.js";
import type { View } from "./session.js";

const POLL_MS = 2000;

/** The actions a state allows, in button order (the server has the last word: 409 otherwise). */
function actionsFor(state: string): string[] {
  switch (state) {
    case "running":
      return ["stop", "pause", "reboot"];
    case "paused":
      return ["resume"];
    case "stopped":
    case "error":
      return ["start"];
    default:
      return [];
  }
}

const LABEL: Record<string, string> = {
  start: "Start",
  stop: "Stop",
  pause: "Pause",
  resume: "Resume",
  reboot: "Reboot",
};

function addresses(i: Instance): string {
  return (i.addresses ?? [])
    .map((a) => (typeof a === "string" ? a : (a.address ?? a.ip ?? "")))
    .filter((a) => a !== "")
    .join(", ");
}

export const instancesView: View = (main, session) => {
  // Admins without a pick see every project's instances (new ones go to the admin's own project).
  const allProjects = session.isAdmin && selectedProject() === "";
  const projectName = (i: Instance): string => {
    const id = nameOf(i.project ?? i.projectId);
    return session.projects.find((p) => p.id === id)?.name ?? id;
  };
  const status = h("div", { class: "status", id: "instances-status" });
  const listBox = h("div", { id: "instances" }, h("p", { class: "muted" }, "Loading instances…"));
  const portsBox = h("div", { id: "forwards-panel" });
  /** The instance whose port forwards are shown, if any. */
  let portsOf: Instance | null = null;
  let last = "";
  let stopped = false;
  let timer = 0;

  const say = (kind: "error" | "info" | "success", text: string): void => replace(status, notice(kind, text));

  async function refresh(): Promise<void> {
    let items: Instance[];
    try {
      items = (await get<List<Instance>>("/instances", scoped())).items;
    } catch (e) {
      if (!stopped) say("error", `Cannot list instances: ${errorText(e)}`);
      return;
    }
    if (stopped) return;
    const key = JSON.stringify(items);
    if (key === last) return;
    last = key;
    replace(listBox, renderTable(items));
  }

  function schedule(): void {
    if (stopped) return;
    timer = window.setTimeout(() => {
      void refresh().finally(schedule);
    }, POLL_MS);
  }

  async function act(i: Instance, action: string): Promise<void> {
    try {
      say("info", `${LABEL[action] ?? action}: ${i.name}…`);
      await post(`/instances/${encodeURIComponent(i.id)}/actions`, { action }, scoped());
      say("success", `${i.name}: ${action} requested.`);
    } catch (e) {
      say("error", errorText(e));
    }
    await refresh();
  }

  async function remove(i: Instance): Promise<void> {
    try {
      await del(`/instances/${encodeURIComponent(i.id)}`, scoped());
      say("success", `${i.name} is being deleted.`);
    } catch (e) {
      say("error", errorText(e));
    }
    await refresh();
  }

  function renderTable(items: Instance[]): HTMLElement {
    const rows: Child[][] = items.map((i) => {
      // The console types into the VM: the server gives it to members and admins, not readers.
      const buttons: Child[] = [
        h(
          "button",
          { type: "button", "data-action": "ports", onclick: () => void showPorts(i) },
          portsOf?.id === i.id ? "Ports ▾" : "Ports",
        ),
      ];
      if (session.canWrite) {
        buttons.push(
          h(
            "a",
            { class: "button", href: `#/console/${encodeURIComponent(i.id)}`, "data-action": "console" },
            "Console",
          ),
        );
        if (i.display === "vnc")
          buttons.push(
            h(
              "a",
              { class: "button", href: `#/display/${encodeURIComponent(i.id)}`, "data-action": "display" },
              "Display",
            ),
          );
        for (const a of actionsFor(i.state)) {
          buttons.push(h("button", { type: "button", "data-action": a, onclick: () => void act(i, a) }, LABEL[a]));
        }
        if (i.state !== "deleting") {
          buttons.push(confirmButton("Delete", "Really delete?", () => void remove(i), { "data-action": "delete" }));
        }
      }
      return [
        ...(allProjects ? [projectName(i)] : []),
        session.canWrite
          ? h("a", { href: `#/console/${encodeURIComponent(i.id)}`, class: "name" }, i.name)
          : h("span", { class: "name" }, i.name),
        h("span", { class: `state state-${i.state}`, "data-state": i.state, title: i.error ?? null }, i.state),
        nameOf(i.image),
        nameOf(i.flavor),
        i.vcpus,
        `${i.memoryMiB} MiB`,
        addresses(i),
        formatTime(i.createdAt),
        h("span", { class: "actions" }, buttons),
      ];
    });
    const t = table(
      [
        ...(allProjects ? ["Project"] : []),
        "Name",
        "State",
        "Image",
        "Flavor",
        "vCPUs",
        "Memory",
        "Addresses",
        "Created",
        "",
      ],
      rows,
      session.canWrite ? "No instances yet: create one above." : "No instances in this project.",
      { class: "list", id: "instance-table" },
    );
    // Rows carry the instance name so that scripts (and tests) can find them.
    t.querySelectorAll("tbody tr").forEach((tr, n) => {
      const i = items[n];
      if (i !== undefined) {
        tr.setAttribute("data-name", i.name);
        tr.setAttribute("data-id", i.id);
      }
    });
    return t;
  }

  /** The port forwards panel of instance `i` (toggled by its Ports button). */
  async function showPorts(i: Instance): Promise<void> {
    if (portsOf?.id === i.id) {
      portsOf = null;
      replace(portsBox);
      last = "";
      await refresh();
      return;
    }
    portsOf = i;
    last = "";
    await refresh();
    await renderPorts(i);
  }

  async function renderPorts(i: Instance): Promise<void> {
    const base = `/instances/${encodeURIComponent(i.id)}/forwards`;
    let items: Forward[];
    try {
      items = (await get<List<Forward>>(base, scoped())).items;
    } catch (e) {
      say("error", `Cannot list the port forwards of ${i.name}: ${errorText(e)}`);
      return;
    }
    if (portsOf?.id !== i.id) return;
    const rows: Child[][] = items.map((f) => [
      `${f.hostAddr}:${f.hostPort}`,
      String(f.guestPort),
      f.guestPort === 22 ? h("code", null, `yun instance ssh ${i.name}`) : "",
      session.canWrite
        ? confirmButton(
            "Remove",
            "Really remove?",
            () =>
              void del(`${base}/${encodeURIComponent(f.id)}`, scoped())
                .then(() => say("success", `Forward ${f.hostAddr}:${f.hostPort} removed.`))
                .catch((e: unknown) => say("error", errorText(e)))
                .finally(() => void renderPorts(i)),
            { "data-action": "remove-forward" },
          )
        : "",
    ]);
    const t = table(["Host", "Guest port", "", ""], rows, "No port forwards.", { class: "list", id: "forward-table" });
    t.querySelectorAll("tbody tr").forEach((tr, n) => {
      const f = items[n];
      if (f !== undefined) tr.setAttribute("data-id", f.id);
    });
    let form: HTMLElement | null = null;
    if (session.canWrite) {
      const guest = h("input", {
        id: "forward-guest",
        type: "number",
        min: "1",
        max: "65535",
        required: true,
        placeholder: "80",
      });
      const host = h("input", { id: "forward-host", type: "number", min: "0", max: "65535", placeholder: "any free" });
      form = h(
        "form",
        { class: "create card", id: "forward-form" },
        h("label", null, "Guest port", guest),
        h("label", null, "Host port", host),
        h("button", { type: "submit", class: "primary" }, "Add forward"),
      );
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const body: Record<string, number> = { guestPort: Number(guest.value) };
        if (host.value !== "") body.hostPort = Number(host.value);
        post<Forward>(base, body, scoped())
          .then((f) => say("success", `${f.hostAddr}:${f.hostPort} now reaches port ${f.guestPort} of ${i.name}.`))
          .catch((e: unknown) => say("error", errorText(e)))
          .finally(() => void renderPorts(i));
      });
    }
    replace(
      portsBox,
      h(
        "section",
        { class: "card", "data-instance": i.name },
        h("h3", null, `Port forwards of ${i.name}`),
        h(
          "p",
          { class: "muted" },
          "TCP to the host port on the server's machine reaches the guest port (through the instance's NAT).",
        ),
        t,
        form,
      ),
    );
  }

  replace(
    main,
    h("div", { class: "toolbar" }, h("h2", null, "Instances")),
    session.canWrite
      ? createForm(say, () => void refresh())
      : h(
          "p",
          { class: "muted", id: "read-only" },
          "Your role is reader: you can see this project's instances but not change them or use their consoles.",
        ),
    status,
    listBox,
    portsBox,
  );
  void refresh().finally(schedule);
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
};

function createForm(say: (kind: "error" | "info" | "success", text: string) => void, done: () => void): HTMLElement {
  const name = h("input", {
    id: "new-name",
    name: "name",
    required: true,
    placeholder: "web1",
    pattern: "[a-zA-Z0-9][a-zA-Z0-9.-]*",
  });
  const image = h("select", { id: "new-image", name: "image", required: true });
  const flavor = h("select", { id: "new-flavor", name: "flavor", required: true });
  const network = h("select", { id: "new-network", name: "network" }, h("option", { value: "" }, "default (NAT)"));
  const keyPair = h("select", { id: "new-keypair", name: "keyPair" }, h("option", { value: "" }, "none"));
  const submit = h("button", { type: "submit", class: "primary", id: "create-instance" }, "Create instance");
  const form = h(
    "form",
    { class: "create card", id: "create-form" },
    h("label", null, "Name", name),
    h("label", null, "Image", image),
    h("label", null, "Flavor", flavor),
    h("label", null, "Network", network),
    h("label", null, "Key pair", keyPair),
    submit,
  );

  const fill = async (): Promise<void> => {
    try {
      const [imgs, flvs, nets, keys] = await Promise.all([
        get<List<Image>>("/images", scoped()),
        get<List<Flavor>>("/flavors", scoped()),
        get<List<Network>>("/networks", scoped()).catch(() => ({ items: [] as Network[] })),
        get<List<KeyPair>>("/keypairs", scoped()).catch(() => ({ items: [] as KeyPair[] })),
      ]);
      replace(
        image,
        imgs.items.length === 0 ? h("option", { value: "" }, "no images: run yun image pull debian-tiny") : null,
        imgs.items.map((i) =>
          h("option", { value: i.name }, `${i.name}${i.status && i.status !== "available" ? ` (${i.status})` : ""}`),
        ),
      );
      replace(
        flavor,
        flvs.items.map((f) =>
          h(
            "option",
            { value: f.name, selected: f.name === "small" },
            `${f.name} — ${f.vcpus} vCPU, ${f.memoryMiB} MiB, ${f.diskGiB} GiB`,
          ),
        ),
      );
      network.append(
        ...nets.items.map((n) => h("option", { value: n.name }, `${n.name}${n.cidr ? ` (${n.cidr})` : ""}`)),
      );
      keyPair.append(...keys.items.map((k) => h("option", { value: k.name }, k.name)));
    } catch (e) {
      say("error", `Cannot load images and flavors: ${errorText(e)}`);
    }
  };
  void fill();

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body: Record<string, string> = { name: name.value.trim(), image: image.value, flavor: flavor.value };
    if (network.value !== "") body.network = network.value;
    if (keyPair.value !== "") body.keyPair = keyPair.value;
    submit.disabled = true;
    say("info", `Creating ${body.name}…`);
    post<{ name: string }>("/instances", body, scoped())
      .then((i) => {
        say("success", `${i.name} created; it boots in the background.`);
        name.value = "";
        done();
      })
      .catch((e: unknown) => say("error", errorText(e)))
      .finally(() => (submit.disabled = false));
  });
  return form;
}

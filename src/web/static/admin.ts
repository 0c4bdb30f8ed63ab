/** Projects, quotas and users, for admins: create and delete projects, edit quotas (with what is
 *  used), create users and issue their tokens (shown once). */
import { del, get, idOf, nameOf, post, put, type List, type Project, type Quotas, type User } from "./api.js";
import { confirmButton, errorText, formatTime, h, notice, replace, table, type Child } from "./dom.js";
import type { Session, View } from "./session.js";

const QUOTA_FIELDS = [
  { key: "instances", label: "Instances" },
  { key: "vcpus", label: "vCPUs" },
  { key: "memoryMiB", label: "Memory MiB" },
  { key: "diskGiB", label: "Disk GiB" },
] as const;

export const adminView: View = (main, session) => {
  if (!session.isAdmin) {
    replace(main, notice("error", "Only admins manage projects and quotas."));
    return;
  }
  const status = h("div", { class: "status", id: "admin-status" });
  const projectsBox = h("div", { id: "projects" }, h("p", { class: "muted" }, "Loading projects…"));
  const usersBox = h("div", { id: "users" }, h("p", { class: "muted" }, "Loading users…"));
  const say = (kind: "error" | "info" | "success", text: string | Node): void =>
    replace(status, typeof text === "string" ? notice(kind, text) : text);
  let alive = true;

  const projName = h("input", { id: "new-project-name", required: true, placeholder: "team-a" });
  const projForm = h(
    "form",
    { class: "inline card", id: "create-project" },
    h("label", null, "New project", projName),
    h("button", { type: "submit", class: "primary" }, "Create project"),
  );
  projForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    post<Project>("/projects", { name: projName.value.trim() })
      .then(async (p) => {
        say("success", `Project ${p.name} created.`);
        projName.value = "";
        await session.refreshProjects();
        await load();
      })
      .catch((e: unknown) => say("error", errorText(e)));
  });

  const userName = h("input", { id: "new-user-name", required: true, placeholder: "alice" });
  const userRole = h(
    "select",
    { id: "new-user-role" },
    h("option", { value: "member" }, "member"),
    h("option", { value: "reader" }, "reader"),
    h("option", { value: "admin" }, "admin"),
  );
  const userProject = h("select", { id: "new-user-project" });
  const userForm = h(
    "form",
    { class: "inline card", id: "create-user" },
    h("label", null, "New user", userName),
    h("label", null, "Role", userRole),
    h("label", null, "Project", userProject),
    h("button", { type: "submit", class: "primary" }, "Create user"),
  );
  userForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    post<User>("/users", { name: userName.value.trim(), role: userRole.value, project: userProject.value })
      .then(async (u) => {
        say("success", `User ${u.name} created; issue a token for them below.`);
        userName.value = "";
        await load();
      })
      .catch((e: unknown) => say("error", errorText(e)));
  });

  replace(
    main,
    h("div", { class: "toolbar" }, h("h2", null, "Projects & quotas")),
    status,
    projForm,
    projectsBox,
    h("h2", null, "Users"),
    userForm,
    usersBox,
  );

  async function load(): Promise<void> {
    try {
      const projects = (await get<List<Project>>("/projects")).items;
      const quotas = await Promise.all(
        projects.map((p) => get<Quotas>(`/projects/${encodeURIComponent(p.id)}/quotas`).catch(() => p.quotas)),
      );
      const users = (await get<List<User>>("/users")).items;
      if (!alive) return;
      replace(
        userProject,
        projects.map((p) => h("option", { value: p.name }, p.name)),
      );
      replace(projectsBox, projectTable(projects, quotas));
      replace(usersBox, userTable(users, projects));
    } catch (e) {
      if (alive) say("error", errorText(e));
    }
  }

  function projectTable(projects: Project[], quotas: (Quotas | undefined)[]): HTMLElement {
    const rows: Child[][] = projects.map((p, n) => {
      const q = quotas[n];
      const cells = QUOTA_FIELDS.map((f) => {
        const limit = q?.[f.key];
        const used = q?.used?.[f.key];
        return h("span", { "data-quota": f.key }, `${used ?? "?"} / ${limit ?? "?"}`);
      });
      return [
        h("strong", null, p.name),
        h("code", null, p.id),
        ...cells,
        formatTime(p.createdAt),
        h(
          "span",
          { class: "actions" },
          h("button", { type: "button", "data-action": "edit-quotas", onclick: () => editQuotas(p, q) }, "Edit quotas"),
          p.name === "admin"
            ? null
            : confirmButton("Delete", "Really delete?", () => void removeProject(p), { "data-action": "delete" }),
        ),
      ];
    });
    const t = table(
      ["Project", "ID", ...QUOTA_FIELDS.map((f) => `${f.label} used / limit`), "Created", ""],
      rows,
      "No projects.",
      { class: "list", id: "project-table" },
    );
    t.querySelectorAll("tbody tr").forEach((tr, n) => {
      if (projects[n]) tr.setAttribute("data-name", projects[n].name);
    });
    return t;
  }

  function editQuotas(p: Project, q: Quotas | undefined): void {
    const inputs = QUOTA_FIELDS.map((f) =>
      h("input", {
        type: "number",
        min: 0,
        step: 1,
        name: f.key,
        id: `quota-${f.key}`,
        value: String(q?.[f.key] ?? 0),
        required: true,
      }),
    );
    const form = h(
      "form",
      { class: "inline card", id: "quota-form" },
      h("strong", null, `Quotas of ${p.name}`),
      QUOTA_FIELDS.map((f, n) => h("label", null, f.label, inputs[n])),
      h("button", { type: "submit", class: "primary" }, "Save quotas"),
      h("button", { type: "button", onclick: () => replace(status) }, "Cancel"),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const body: Record<string, number> = {};
      QUOTA_FIELDS.forEach((f, n) => (body[f.key] = Number(inputs[n]!.value)));
      put<Quotas>(`/projects/${encodeURIComponent(p.id)}/quotas`, body)
        .then(async () => {
          say("success", `Quotas of ${p.name} saved.`);
          await load();
        })
        .catch((e: unknown) => say("error", errorText(e)));
    });
    say("info", form);
    inputs[0]!.focus();
  }

  async function removeProject(p: Project): Promise<void> {
    try {
      await del(`/projects/${encodeURIComponent(p.id)}`);
      say("success", `Project ${p.name} deleted.`);
      await session.refreshProjects();
    } catch (e) {
      say("error", errorText(e));
    }
    await load();
  }

  function userTable(users: User[], projects: Project[]): HTMLElement {
    const projectName = (u: User): string => {
      const ref = u.project ?? u.projectId;
      const id = idOf(ref);
      return projects.find((p) => p.id === id || p.name === id)?.name ?? nameOf(ref);
    };
    const t = table(
      ["User", "ID", "Project", "Role", ""],
      users.map((u) => [
        h("strong", null, u.name),
        h("code", null, u.id),
        projectName(u),
        h("span", { class: `role role-${u.role}` }, u.role),
        h(
          "span",
          { class: "actions" },
          h("button", { type: "button", "data-action": "token", onclick: () => void issueToken(u) }, "Issue token"),
        ),
      ]),
      "No users.",
      { class: "list", id: "user-table" },
    );
    t.querySelectorAll("tbody tr").forEach((tr, n) => {
      if (users[n]) tr.setAttribute("data-name", users[n].name);
    });
    return t;
  }

  async function issueToken(u: User): Promise<void> {
    try {
      const { token } = await post<{ token: string }>(`/users/${encodeURIComponent(u.id)}/tokens`);
      say(
        "success",
        h(
          "div",
          { class: "notice success", role: "status" },
          `Token for ${u.name} (shown once; copy it now): `,
          h("code", { id: "new-token", class: "token" }, token),
        ),
      );
    } catch (e) {
      say("error", errorText(e));
    }
  }

  void load();
  void (session satisfies Session);
  return () => {
    alive = false;
  };
};

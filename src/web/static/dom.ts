/** Tiny DOM helpers: element construction, tables, notices. No framework. */

export type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, unknown>;

/** Creates an element: `h("button", { class: "x", onclick: f }, "label")`. `on*` attributes become
 *  listeners; `value`, `checked`, `disabled`, `selected` are set as properties; null/false skip. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v as EventListener);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "selected") {
      (el as unknown as Record<string, unknown>)[k] = v;
    } else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el: Element, children: (Child | Child[])[]): void {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces the children of `el`. */
export function replace(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** A table with a header row; `rows` are arrays of cells. `empty` shows when there are no rows. */
export function table(headers: string[], rows: Child[][], empty: string, attrs?: Attrs): HTMLTableElement {
  const body =
    rows.length > 0
      ? rows.map((r) => h("tr", null, ...r.map((c) => h("td", null, c))))
      : [h("tr", { class: "empty" }, h("td", { colspan: headers.length }, empty))];
  return h(
    "table",
    attrs ?? null,
    h("thead", null, h("tr", null, ...headers.map((x) => h("th", null, x)))),
    h("tbody", null, body),
  );
}

/** A notice line (`role="alert"` for errors) that tests and screen readers can find. */
export function notice(kind: "error" | "info" | "success", text: string): HTMLElement {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A button that asks for a second click before running `action` (for deletes). */
export function confirmButton(
  label: string,
  confirmLabel: string,
  action: () => void,
  attrs?: Attrs,
): HTMLButtonElement {
  let armed = false;
  let timer = 0;
  const b = h("button", { type: "button", class: "danger", ...attrs }, label);
  b.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmLabel;
      b.classList.add("armed");
      timer = window.setTimeout(() => {
        armed = false;
        b.textContent = label;
        b.classList.remove("armed");
      }, 4000);
      return;
    }
    window.clearTimeout(timer);
    armed = false;
    b.textContent = label;
    b.classList.remove("armed");
    action();
  });
  return b;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
export function formatBytes(n: number): string {
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${UNITS[i]}`;
}

export function formatTime(iso: string | undefined): string {
  if (iso === undefined) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** The message of an error, for a notice. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

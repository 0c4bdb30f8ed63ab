/** The dashboard's view of the cloud API (docs/cloud-api.md): a bearer token kept in sessionStorage
 *  and one fetch wrapper that turns `{ error: { code, message } }` answers into ApiError. */

export type Role = "admin" | "member" | "reader";

/** A user or project reference: the API may answer an object or a bare name. */
export type Ref = string | { id?: string; name?: string };

export interface WhoAmI {
  user: Ref;
  project: Ref;
  role: Role;
}

export interface Quotas {
  instances: number;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  used?: Partial<Record<"instances" | "vcpus" | "memoryMiB" | "diskGiB", number>>;
}

export interface Project {
  id: string;
  name: string;
  quotas?: Quotas;
  createdAt?: string;
}

export interface User {
  id: string;
  name: string;
  role: Role;
  project?: Ref;
  projectId?: string;
}

export interface Flavor {
  id: string;
  name: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
}

export interface Image {
  id: string;
  name: string;
  format: string;
  sizeBytes: number;
  source: string;
  status: string;
}

export interface Instance {
  id: string;
  name: string;
  state: string;
  image: Ref;
  flavor: Ref;
  vcpus: number;
  memoryMiB: number;
  network?: Ref | null;
  addresses?: (string | { address?: string; ip?: string; network?: string })[];
  createdAt?: string;
  project?: Ref;
  projectId?: string;
  /** Why the instance is in state error. */
  error?: string | null;
  /** "vnc": it has a graphical display (the graphical console). */
  display?: "none" | "vnc";
}

export interface Network {
  id: string;
  name: string;
  cidr?: string;
  gateway?: string;
  createdAt?: string;
}

export interface Volume {
  id: string;
  name: string;
  sizeGiB: number;
  state: "available" | "in-use";
  instance: string | null;
  createdAt?: string;
}

export interface Forward {
  id: string;
  instance: string;
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

export interface KeyPair {
  id: string;
  name: string;
}

export interface UsageInstance {
  id?: string;
  name?: string;
  vcpuSeconds?: number;
  memoryGiBHours?: number;
  diskGiBHours?: number;
}

export interface Usage {
  project: Ref;
  vcpuSeconds: number;
  memoryGiBHours: number;
  diskGiBHours: number;
  instances: UsageInstance[];
}

export interface ApiEvent {
  id: string | number;
  at: string;
  user?: Ref;
  /** The actor's user id; null for the server itself and for old events of ambiguous names. */
  userId?: string | null;
  project?: Ref;
  action: string;
  resource?: string;
  outcome?: string;
  message?: string | null;
}

export interface List<T> {
  items: T[];
}

/** An error answer from the API, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = "yun.token";
const PROJECT_KEY = "yun.project";

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearSession(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(PROJECT_KEY);
}

/** The project an admin has selected (sent as `?project=ID`); "" means the admin's own view. */
export function selectedProject(): string {
  return sessionStorage.getItem(PROJECT_KEY) ?? "";
}

export function selectProject(id: string): void {
  if (id === "") sessionStorage.removeItem(PROJECT_KEY);
  else sessionStorage.setItem(PROJECT_KEY, id);
}

/** Called when the server answers 401: the app returns to the login page. */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

export type Query = Record<string, string | number | undefined>;

function url(path: string, query?: Query): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== "") params.set(k, String(v));
  const q = params.toString();
  return `/api/v1${path}${q === "" ? "" : `?${q}`}`;
}

/** Adds `project` (the admin's selection) to a query for project-scoped resources. */
export function scoped(query: Query = {}): Query {
  const p = selectedProject();
  return p === "" ? query : { project: p, ...query };
}

async function send(
  method: string,
  path: string,
  body?: unknown,
  query?: Query,
  token = getToken(),
): Promise<Response> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(url(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "The Yun server cannot be reached; is `yun serve` running?");
  }
  if (res.ok) return res;
  let code = "http_" + res.status;
  let message = `The server answered ${res.status} ${res.statusText}.`;
  try {
    const e = (await res.json()) as { error?: { code?: string; message?: string } };
    if (e.error?.code !== undefined) code = e.error.code;
    if (e.error?.message !== undefined) message = e.error.message;
  } catch {}
  if (res.status === 401 && token === getToken()) onUnauthorized();
  throw new ApiError(res.status, code, message);
}

/** One API call; answers the parsed JSON body (undefined for 204). */
export async function api<T>(method: string, path: string, body?: unknown, query?: Query): Promise<T> {
  const res = await send(method, path, body, query);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text === "" ? undefined : JSON.parse(text)) as T;
}

/** The raw text of an answer (CSV export). */
export async function apiText(path: string, query?: Query): Promise<string> {
  return (await send("GET", path, undefined, query)).text();
}

/** Checks a token without storing it: answers whoami or throws ApiError. */
export async function checkToken(token: string): Promise<WhoAmI> {
  const res = await send("GET", "/whoami", undefined, undefined, token);
  return (await res.json()) as WhoAmI;
}

export const get = <T>(path: string, query?: Query): Promise<T> => api<T>("GET", path, undefined, query);
export const post = <T>(path: string, body?: unknown, query?: Query): Promise<T> =>
  api<T>("POST", path, body ?? {}, query);
export const put = <T>(path: string, body: unknown, query?: Query): Promise<T> => api<T>("PUT", path, body, query);
export const del = (path: string, query?: Query): Promise<unknown> => api<unknown>("DELETE", path, undefined, query);

/** The display name of a reference (object or bare string). */
export function nameOf(r: Ref | null | undefined): string {
  if (r === null || r === undefined) return "";
  if (typeof r === "string") return r;
  return r.name ?? r.id ?? "";
}

export function idOf(r: Ref | null | undefined): string {
  if (r === null || r === undefined) return "";
  if (typeof r === "string") return r;
  return r.id ?? r.name ?? "";
}

/** The console WebSocket URL of an instance (token travels as the `bearer.<token>` subprotocol). */
export function consoleUrl(instanceId: string, what: "console" | "display" = "console"): string {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/api/v1/instances/${encodeURIComponent(instanceId)}/${what}`;
}

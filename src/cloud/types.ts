/**
 * The shapes the cloud API (docs/cloud-api.md) sends and receives, as plain types shared by the
 * server (whose zod schemas are checked against them) and the SDK client (client.ts). Type-only
 * imports: nothing is loaded at run time, so the client runs in the browser too.
 */
import type { MonitorMetrics } from "../vmm/monitor.js";

export type Role = "admin" | "member" | "reader";

export interface Ref {
  id: string;
  name: string;
}

export interface Whoami {
  user: Ref;
  project: Ref;
  role: Role;
}

export interface Quotas {
  instances: number;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  /** Bytes the project's buckets may hold (objects and the parts of unfinished multipart uploads). */
  objectBytes: number;
}

/** The limits, and what the project uses now. */
export interface QuotaUsage extends Quotas {
  used: Quotas;
}

export interface Project {
  id: string;
  name: string;
  quotas: Quotas;
  createdAt: string;
}

export interface User {
  id: string;
  name: string;
  project: string;
  role: Role;
  createdAt: string;
}

/** A user just created; with `withToken`, also their first API token. */
export interface CreatedUser extends User {
  /** The token, shown only this once (only its SHA-256 is stored). */
  token?: string;
  /** The token's id (for listing and revoking). */
  tokenId?: string;
}

export interface NewToken {
  /** The token, shown only this once (only its SHA-256 is stored). */
  token: string;
  user: string;
  /** The token's id (for listing and revoking; not the token). */
  id: string;
}

/** An object storage access key (S3 clients sign with its id and secret). */
export interface AccessKeyInfo {
  accessKeyId: string;
  user: string;
  createdAt: string;
}

export interface NewAccessKey extends AccessKeyInfo {
  /** The secret, shown only this once. */
  secretAccessKey: string;
}

/** An issued token as it can be shown again: its id and when it was issued. */
export interface TokenInfo {
  id: string;
  createdAt: string;
}

export interface Flavor {
  id: string;
  name: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
}

export type ImageFormat = "qcow2" | "raw";

export interface Image {
  id: string;
  name: string;
  format: ImageFormat;
  sizeBytes: number;
  source: "debian" | "upload";
  status: "available" | "error";
  /** The owning project; null for public images (debian). */
  project: string | null;
  createdAt: string;
}

export type InstanceState = "building" | "running" | "paused" | "stopping" | "stopped" | "deleting" | "error";

export interface Instance {
  id: string;
  name: string;
  project: string;
  state: InstanceState;
  /** Image name and id. */
  image: string;
  imageId: string;
  /** Flavor name and id, and what it gives. */
  flavor: string;
  flavorId: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  /** Network name and id; null for user-mode networking (NAT: an address of its own in 10.0.0.0/16). */
  network: string | null;
  networkId: string | null;
  addresses: string[];
  mac: string;
  keyPair: string | null;
  /** "vnc": a graphical display (the dashboard's graphical console); "none": serial console only. */
  display: "none" | "vnc";
  /** Volume ids attached (/dev/vdb onwards, in order). */
  volumes: string[];
  /** Why the instance is in state error, else null. */
  error: string | null;
  createdAt: string;
  updatedAt: string;
}

export type InstanceAction = "start" | "stop" | "reboot" | "pause" | "resume" | "resize";

/** The VM monitor's metrics (docs/vm-api.md) with when they were read and the instance's state. */
export type InstanceMetrics = { at: string; state: InstanceState } & Omit<MonitorMetrics, "exits">;

/** A port forward: TCP to hostAddr:hostPort on the server's machine reaches the instance's guestPort. */
export interface Forward {
  id: string;
  /** The instance's id. */
  instance: string;
  project: string;
  hostAddr: string;
  hostPort: number;
  guestPort: number;
  createdAt: string;
}

export interface CreateForwardRequest {
  guestPort: number;
  /** Absent or 0: a free port chosen by the server. */
  hostPort?: number;
  /** Default 127.0.0.1; another address only when the server listens beyond loopback. */
  hostAddr?: string;
}

export interface Volume {
  id: string;
  name: string;
  project: string;
  sizeGiB: number;
  state: "available" | "in-use";
  /** The instance it is attached to, or null. */
  instance: string | null;
  /** The snapshot it was created from, or null. */
  snapshot: string | null;
  createdAt: string;
}

export interface Snapshot {
  id: string;
  name: string;
  project: string;
  volume: string;
  sizeGiB: number;
  createdAt: string;
}

export interface Network {
  id: string;
  name: string;
  project: string;
  cidr: string;
  gateway: string;
  createdAt: string;
}

export interface KeyPair {
  id: string;
  name: string;
  project: string;
  publicKey: string;
  fingerprint: string;
  createdAt: string;
}

export interface InstanceUsage {
  id: string;
  name: string;
  vcpuSeconds: number;
  memoryGiBHours: number;
  diskGiBHours: number;
  /** A bucket's stored bytes over time (object storage). */
  objectGiBHours: number;
}

export interface Usage {
  project: string;
  from: string;
  to: string;
  vcpuSeconds: number;
  memoryGiBHours: number;
  diskGiBHours: number;
  objectGiBHours: number;
  /** Object storage requests in the period (counted per hour: the hours that overlap it). */
  objectRequests: { reads: number; writes: number };
  instances: InstanceUsage[];
}

export interface AuditEvent {
  id: number;
  at: string;
  /** The actor's name (for display; names are unique only within a project). */
  user: string;
  /** The actor's user id (usr-…); null for the daemon itself ("system") and for older events whose name was ambiguous. */
  userId: string | null;
  project: string;
  action: string;
  resource: string;
  /** "ok", or the error code of the refusal ("forbidden", "quota_exceeded", ...). */
  outcome: string;
  message: string | null;
}

export interface List<T> {
  items: T[];
}

export interface ApiErrorBody {
  error: { code: string; message: string };
}

export interface CreateInstanceRequest {
  name: string;
  image: string;
  flavor: string;
  network?: string;
  keyPair?: string;
  userData?: string;
  /** Volumes (ids or names) to attach at creation. */
  volumes?: string[];
  /** false: create the instance stopped, without booting it (default true). */
  start?: boolean;
  /** "vnc": a graphical display (virtio-gpu, keyboard, tablet) shown in the dashboard (default "none"). */
  display?: "none" | "vnc";
}

/** A sandbox (docs/sandboxes.md): starting, running, or paused (snapshotted, its VM stopped). */
export type SandboxState = "starting" | "running" | "paused";
/** NAT: the sandbox reaches out through its own user-mode NAT; none: its network card is unplugged. */
export type SandboxNetwork = "nat" | "none";

export interface Sandbox {
  id: string;
  project: string;
  /** The template's id. */
  template: string;
  state: SandboxState;
  vcpus: number;
  memoryMiB: number;
  network: SandboxNetwork;
  mac: string;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  /** When the server ends it (null while paused: a paused sandbox waits). */
  endAt: string | null;
  createdAt: string;
}

export interface Template {
  id: string;
  name: string;
  project: string;
  image: string;
  /** The commands run in it before the snapshot. */
  run: string[];
  memoryMiB: number;
  vcpus: number;
  state: "building" | "ready" | "error";
  error: string | null;
  createdAt: string;
}

/** One line of a command's NDJSON stream (POST /api/v1/sandboxes/{id}/commands). */
export type CommandEvent =
  | { type: "stdout" | "stderr"; data: string }
  | { type: "exit"; exitCode: number | null; signal: number | null; timedOut: boolean }
  | { type: "error"; code: string; message: string };

export interface SandboxFile {
  name: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  mode: number;
  mtime: number;
}

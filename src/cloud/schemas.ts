/**
 * The API's schemas (zod, with OpenAPI metadata): they validate every request and generate
 * /api/openapi.json. Response schemas mirror types.ts.
 */
import { z } from "@hono/zod-openapi";

/** Paths take an id or a name, so a name may not look like an id (ins-k2j4m9q0ab). */
const ID_LIKE = /^[a-z]{3}-[a-z2-7]{10}$/;
const name = (what: string) =>
  z
    .string()
    .regex(
      /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
      `${what} names use 1-63 letters, digits, '.', '-' or '_', starting with a letter or digit`,
    )
    .refine((s) => !ID_LIKE.test(s), `a ${what} name may not look like an id (xyz- and 10 letters or digits)`)
    .openapi({ example: "web1" });

export const ErrorSchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) }).openapi("Error");

export const ProjectQuery = z.object({
  project: z.string().min(1).max(80).optional().openapi({ description: "admins: the project to act in (id or name)" }),
});
export const IdParam = z.object({ id: z.string().min(1).max(80).openapi({ description: "an id or a name" }) });

const Role = z.enum(["admin", "member", "reader"]);
const Ref = z.object({ id: z.string(), name: z.string() });
const QuotasShape = {
  instances: z.number().int().min(0).max(10_000),
  vcpus: z.number().int().min(0).max(100_000),
  memoryMiB: z
    .number()
    .int()
    .min(0)
    .max(1 << 30),
  diskGiB: z
    .number()
    .int()
    .min(0)
    .max(1 << 30),
  objectBytes: z
    .number()
    .int()
    .min(0)
    .max(2 ** 50)
    .openapi({ description: "bytes the project's buckets may hold (object storage)" }),
};
export const Quotas = z.object(QuotasShape).openapi("Quotas");
export const QuotasUpdate = z.object(QuotasShape).partial().strict();
export const QuotaUsage = z.object({ ...QuotasShape, used: Quotas }).openapi("QuotaUsage");

export const Whoami = z.object({ user: Ref, project: Ref, role: Role }).openapi("Whoami");
export const Project = z
  .object({ id: z.string(), name: z.string(), quotas: Quotas, createdAt: z.string() })
  .openapi("Project");
export const ProjectCreate = z.object({ name: name("project"), quotas: QuotasUpdate.optional() }).strict();

export const User = z
  .object({ id: z.string(), name: z.string(), project: z.string(), role: Role, createdAt: z.string() })
  .openapi("User");
export const UserCreate = z
  .object({
    name: name("user"),
    role: Role,
    project: z.string().optional(),
    withToken: z
      .boolean()
      .optional()
      .openapi({ description: "also issue the user's first API token, answered once in `token`" }),
  })
  .strict();
export const CreatedUser = User.extend({
  token: z.string().optional().openapi({ description: "with withToken: the API token, shown only this once" }),
  tokenId: z.string().optional().openapi({ description: "with withToken: the token's id (tok-…)" }),
}).openapi("CreatedUser");
export const NewToken = z.object({ token: z.string(), user: z.string(), id: z.string() }).openapi("NewToken");
export const TokenInfo = z.object({ id: z.string(), createdAt: z.string() }).openapi("TokenInfo");
export const AccessKeyInfo = z
  .object({ accessKeyId: z.string(), user: z.string(), createdAt: z.string() })
  .openapi("AccessKeyInfo");
export const NewAccessKey = AccessKeyInfo.extend({
  secretAccessKey: z.string().openapi({ description: "the secret, shown only this once" }),
}).openapi("NewAccessKey");
export const AccessKeyParam = z.object({
  id: z.string().min(1).max(80).openapi({ description: "the user: an id or a name" }),
  keyId: z.string().regex(/^YUN[A-Z2-7]{17}$/, "an access key id looks like YUN and 17 letters or digits"),
});
export const TokenParam = z.object({
  id: z.string().min(1).max(80).openapi({ description: "the user: an id or a name" }),
  tokenId: z.string().regex(/^tok-[0-9a-f]{16}$/, "a token id looks like tok- and 16 hex digits"),
});

export const Flavor = z
  .object({ id: z.string(), name: z.string(), vcpus: z.number(), memoryMiB: z.number(), diskGiB: z.number() })
  .openapi("Flavor");
export const FlavorCreate = z
  .object({
    name: name("flavor"),
    vcpus: z.number().int().min(1).max(8),
    memoryMiB: z.number().int().min(64).max(2048),
    diskGiB: z.number().int().min(1).max(1024),
  })
  .strict();

export const ImageFormat = z.enum(["qcow2", "raw"]);
export const Image = z
  .object({
    id: z.string(),
    name: z.string(),
    format: ImageFormat,
    sizeBytes: z.number(),
    source: z.enum(["debian", "upload"]),
    status: z.enum(["available", "error"]),
    project: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("Image");
export const ImageUploadQuery = ProjectQuery.extend({ name: name("image"), format: ImageFormat });

export const InstanceState = z.enum(["building", "running", "paused", "stopping", "stopped", "deleting", "error"]);
export const Instance = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    state: InstanceState,
    image: z.string(),
    imageId: z.string(),
    flavor: z.string(),
    flavorId: z.string(),
    vcpus: z.number(),
    memoryMiB: z.number(),
    diskGiB: z.number(),
    network: z.string().nullable(),
    networkId: z.string().nullable(),
    addresses: z.array(z.string()),
    mac: z.string(),
    keyPair: z.string().nullable(),
    display: z.enum(["none", "vnc"]),
    volumes: z.array(z.string()),
    error: z.string().nullable(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi("Instance");
export const InstanceCreate = z
  .object({
    name: name("instance"),
    image: z.string().min(1).max(80),
    flavor: z.string().min(1).max(80),
    network: z.string().min(1).max(80).optional(),
    keyPair: z.string().min(1).max(80).optional(),
    userData: z.string().max(65536).optional(),
    volumes: z.array(z.string().min(1).max(80)).max(4).optional(),
    start: z.boolean().optional().openapi({ description: "false: create it stopped (default true)" }),
    display: z
      .enum(["none", "vnc"])
      .optional()
      .openapi({
        description:
          'vnc: a graphical display (virtio-gpu, keyboard, tablet), the dashboard\'s graphical console; default "none"',
      }),
  })
  .strict();
export const InstanceActionBody = z
  .object({
    action: z.enum(["start", "stop", "reboot", "pause", "resume", "resize"]),
    flavor: z.string().min(1).max(80).optional(),
  })
  .strict();
export const InstanceMetrics = z
  .object({
    at: z.string(),
    state: InstanceState,
    instret: z.number(),
    cpuSeconds: z.number(),
    idleSeconds: z.number(),
    uptimeSeconds: z.number(),
    blk: z.array(z.object({ reads: z.number(), writes: z.number(), readBytes: z.number(), writeBytes: z.number() })),
    net: z.object({ rxFrames: z.number(), txFrames: z.number(), rxBytes: z.number(), txBytes: z.number() }).nullable(),
  })
  .openapi("InstanceMetrics");
export const ConsoleLogQuery = ProjectQuery.extend({
  bytes: z.coerce
    .number()
    .int()
    .min(1)
    .max(1 << 20)
    .optional(),
});

export const Volume = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    sizeGiB: z.number(),
    state: z.enum(["available", "in-use"]),
    instance: z.string().nullable(),
    snapshot: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("Volume");
export const VolumeCreate = z
  .object({
    name: name("volume"),
    sizeGiB: z.number().int().min(1).max(1024).optional(),
    snapshot: z.string().min(1).max(80).optional(),
  })
  .strict();
export const VolumeAttach = z.object({ instance: z.string().min(1).max(80) }).strict();
export const Empty = z.object({}).strict();
export const Snapshot = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    volume: z.string(),
    sizeGiB: z.number(),
    createdAt: z.string(),
  })
  .openapi("Snapshot");
export const SnapshotCreate = z.object({ name: name("snapshot") }).strict();

export const Network = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    cidr: z.string(),
    gateway: z.string(),
    createdAt: z.string(),
  })
  .openapi("Network");
export const NetworkCreate = z
  .object({
    name: name("network"),
    cidr: z
      .string()
      .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, "cidr must look like 10.1.0.0/24")
      .openapi({ example: "10.1.0.0/24" }),
  })
  .strict();

export const Forward = z
  .object({
    id: z.string(),
    instance: z.string(),
    project: z.string(),
    hostAddr: z.string(),
    hostPort: z.number(),
    guestPort: z.number(),
    createdAt: z.string(),
  })
  .openapi("Forward");
export const ForwardCreate = z
  .object({
    guestPort: z.number().int().min(1).max(65535).openapi({ example: 22 }),
    hostPort: z
      .number()
      .int()
      .min(0)
      .max(65535)
      .refine((p) => p === 0 || p >= 1024, "hostPort must be 0 (a free port) or 1024-65535 (lower ones are privileged)")
      .optional()
      .openapi({ description: "absent or 0: a free port chosen by the server", example: 2222 }),
    hostAddr: z
      .string()
      .regex(/^\d{1,3}(\.\d{1,3}){3}$/, "hostAddr must be an IPv4 address such as 127.0.0.1")
      .optional()
      .openapi({ description: "default 127.0.0.1; others only when the server listens beyond loopback" }),
  })
  .strict();
export const ForwardParam = z.object({
  id: z.string().min(1).max(80).openapi({ description: "the instance: an id or a name" }),
  forwardId: z.string().regex(/^fwd-[a-z2-7]{10}$/, "a forward id looks like fwd- and 10 letters or digits"),
});

export const KeyPair = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    publicKey: z.string(),
    fingerprint: z.string(),
    createdAt: z.string(),
  })
  .openapi("KeyPair");
export const KeyPairCreate = z.object({ name: name("key pair"), publicKey: z.string().min(1).max(16384) }).strict();

export const UsageQuery = ProjectQuery.extend({
  from: z.string().optional(),
  to: z.string().optional(),
  format: z.enum(["json", "csv"]).optional(),
});
const UsageItem = z.object({
  id: z.string(),
  name: z.string(),
  vcpuSeconds: z.number(),
  memoryGiBHours: z.number(),
  diskGiBHours: z.number(),
  objectGiBHours: z.number(),
});
export const Usage = z
  .object({
    project: z.string(),
    from: z.string(),
    to: z.string(),
    vcpuSeconds: z.number(),
    memoryGiBHours: z.number(),
    diskGiBHours: z.number(),
    objectGiBHours: z.number(),
    objectRequests: z.object({ reads: z.number(), writes: z.number() }),
    instances: z.array(UsageItem),
  })
  .openapi("Usage");

export const EventsQuery = ProjectQuery.extend({
  limit: z.coerce.number().int().min(1).max(1000).optional(),
  after: z.coerce.number().int().min(0).optional(),
});
export const AuditEvent = z
  .object({
    id: z.number(),
    at: z.string(),
    user: z.string().openapi({ description: "the actor's name, for display" }),
    userId: z.string().nullable().openapi({
      description: "the actor's user id; null for the daemon (system) and older events of ambiguous names",
    }),
    project: z.string(),
    action: z.string(),
    resource: z.string(),
    outcome: z.string(),
    message: z.string().nullable(),
  })
  .openapi("Event");

export function listOf<T extends z.ZodTypeAny>(item: T) {
  return z.object({ items: z.array(item) });
}

const Env = z
  .record(
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, "environment names are letters, digits and '_'"),
    z.string().max(65536),
  )
  .refine((e) => Object.keys(e).length <= 256, "at most 256 environment variables");
const Metadata = z
  .record(z.string().min(1).max(128), z.string().max(4096))
  .refine((m) => Object.keys(m).length <= 64, "at most 64 metadata entries");
const TimeoutMs = z
  .number()
  .int()
  .min(1000)
  .max(24 * 3600_000);

export const Sandbox = z
  .object({
    id: z.string(),
    project: z.string(),
    template: z.string(),
    state: z.enum(["starting", "running", "paused"]),
    vcpus: z.number(),
    memoryMiB: z.number(),
    network: z.enum(["nat", "none"]),
    mac: z.string(),
    envs: z.record(z.string(), z.string()),
    metadata: z.record(z.string(), z.string()),
    endAt: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("Sandbox");
export const SandboxCreate = z
  .object({
    template: z
      .string()
      .min(1)
      .max(80)
      .optional()
      .openapi({ description: "id or name (default: base, built on first use)" }),
    timeoutMs: TimeoutMs.optional().openapi({
      description: "the server ends the sandbox after this (default 300 000)",
    }),
    envs: Env.optional(),
    metadata: Metadata.optional(),
    network: z.enum(["nat", "none"]).optional().openapi({ description: "nat (default) or none: no network" }),
  })
  .strict();
export const SandboxTimeout = z.object({ timeoutMs: TimeoutMs }).strict();
export const SandboxResume = z.object({ timeoutMs: TimeoutMs.optional() }).strict();
export const SandboxCommand = z
  .object({
    cmd: z.string().min(1).max(65536).openapi({ description: "run with /bin/sh -c" }),
    envs: Env.optional(),
    cwd: z.string().min(1).max(4096).optional(),
    background: z.boolean().optional().openapi({ description: "start it and answer with its pid" }),
    timeoutMs: z
      .number()
      .int()
      .min(1)
      .max(24 * 3600_000)
      .optional(),
  })
  .strict();
export const SandboxPathQuery = z.object({
  path: z.string().min(1).max(4096).openapi({ description: "a path in the sandbox" }),
  project: z.string().min(1).max(80).optional(),
});
export const SandboxFile = z
  .object({
    name: z.string(),
    type: z.enum(["file", "dir", "symlink", "other"]),
    size: z.number(),
    mode: z.number(),
    mtime: z.number(),
  })
  .openapi("SandboxFile");
export const Template = z
  .object({
    id: z.string(),
    name: z.string(),
    project: z.string(),
    image: z.string(),
    run: z.array(z.string()),
    memoryMiB: z.number(),
    vcpus: z.number(),
    state: z.enum(["building", "ready", "error"]),
    error: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("Template");
export const TemplateBuild = z
  .object({
    name: name("template"),
    from: z.string().min(1).max(80).optional().openapi({ description: "the image to boot (default debian-tiny)" }),
    run: z
      .array(z.string().min(1).max(65536))
      .max(64)
      .optional()
      .openapi({ description: "shell commands run in order" }),
    memoryMiB: z.number().int().min(64).max(8192).optional(),
  })
  .strict();

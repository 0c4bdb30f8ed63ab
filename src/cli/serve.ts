/**
 * `yun serve`: the cloud daemon. The REST API (/api/v1, described at /api/openapi.json), the
 * console WebSockets and the dashboard on one HTTP server; state in $YUN_HOME/cloud/yun.db.
 *
 * VMs are separate monitor processes: stopping the daemon leaves them running, and the next start
 * re-attaches to them (or marks stopped those that are gone, and stops monitors nobody owns).
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { Cloud } from "../cloud/cloud.js";
import { MonitorDriver } from "../cloud/compute/driver.js";
import { listen } from "../cloud/server.js";
import { DEFAULT_S3_PORT, listenObjects, type RunningObjectServer } from "../cloud/objects/server.js";
import { isLoopback, readTlsFiles, type TlsFiles } from "../cloud/security.js";
import { DEFAULT_PORT } from "../cloud/client.js";
import { localUrl, readServeRecord, removeServeRecord, serveRecordPath, writeServeRecord } from "../cloud/endpoint.js";
import { yunHome } from "../images/paths.js";
import { tightenTree } from "../storage/private.js";
import { EtcdStore, parseEtcdUrls } from "../cloud/store/etcd.js";
import { DEFAULT_LIMITS, NO_RATE_LIMITS, type LimitSettings } from "../cloud/limits.js";

const HELP = `Usage: yun serve [options]

Runs the Yun cloud: the API (/api/v1, described at /api/openapi.json), the instances' consoles and
the dashboard, on http://127.0.0.1:${DEFAULT_PORT}/ by default. State lives in $YUN_HOME/cloud.

On the first start it creates the project admin, the user admin and its token, printed once and
written to $YUN_HOME/cloud/admin.token (mode 0600).

Options:
  --port N          TCP port (default ${DEFAULT_PORT}; 0 picks a free one)
  --listen ADDR     address to listen on (default 127.0.0.1)
  --s3-port N|off   the S3-compatible object storage's TCP port, on the same address (default
                    ${DEFAULT_S3_PORT}, or a free one when --port is 0; 0 picks a free one; off: none).
                    Buckets by path (http://HOST:N/BUCKET/KEY) or by host (BUCKET.localhost:N);
                    S3 clients sign with an access key: yun user keys create
  --tls-cert FILE   serve HTTPS (and WSS consoles) with this PEM certificate (chain)
  --tls-key FILE    ... and this PEM private key
  --insecure        allow plain HTTP on an address other than loopback (tokens then cross the
                    network in clear text); without it such a --listen needs --tls-cert/--tls-key
  --rate-limit N    API requests a second per token (default ${DEFAULT_LIMITS.apiRate}; 0 turns every rate limit off)
  --rate-burst N    requests a token may send at once beyond the rate (default ${DEFAULT_LIMITS.apiBurst})
  --etcd URL[,URL...]  keep the cloud's records in etcd (the client URLs of one etcd cluster),
                    shared with the other yun serve processes given the same cluster; without
                    it, in SQLite at $YUN_HOME/cloud/yun.db
  --login-failures N  failed logins a minute per client address before it must wait
                    (default ${DEFAULT_LIMITS.loginFailuresPerMinute}, in bursts of ${DEFAULT_LIMITS.loginFailureBurst}; 0: no limit)
  -h, --help        show this help

JSON request bodies may be at most ${DEFAULT_LIMITS.jsonBodyBytes / 1024 / 1024} MiB (413 beyond); a throttled client gets 429 with
Retry-After. Files under $YUN_HOME are owner-only; older installs are tightened at start.

While it runs, its address is in $YUN_HOME/cloud/serve.json, where the yun CLI of the same
$YUN_HOME finds it (waiting while it starts): the CLI uses --server URL, else $YUN_SERVER, else
that record, else http://127.0.0.1:${DEFAULT_PORT}. One yun serve at a time serves a $YUN_HOME.

The record names the address yun serve listens on; to reach an HTTPS server by the host name
its certificate is for, set YUN_SERVER=https://HOST:PORT. A certificate not signed by a public
authority is trusted with NODE_EXTRA_CA_CERTS=FILE (the CA's or the certificate's PEM).

Stopping the server leaves running VMs running; the next start re-attaches to them.
`;

export async function serveCommand(args: string[]): Promise<number> {
  let v;
  try {
    v = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string" },
        "s3-port": { type: "string" },
        listen: { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        insecure: { type: "boolean" },
        "rate-limit": { type: "string" },
        "rate-burst": { type: "string" },
        "login-failures": { type: "string" },
        etcd: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`yun serve: ${(e as Error).message.split(". ")[0]} (see yun serve --help)\n`);
    return 2;
  }
  if (v.help) {
    process.stdout.write(HELP);
    return 0;
  }
  let port = DEFAULT_PORT;
  if (v.port !== undefined) {
    if (!/^\d{1,5}$/.test(v.port) || Number(v.port) > 65535) {
      process.stderr.write(`yun serve: --port takes a port number 0-65535, got "${v.port}"\n`);
      return 2;
    }
    port = Number(v.port);
  }
  // With --port 0 (tests, several servers on one machine) the S3 port is a free one too.
  let s3Port: number | null = port === 0 ? 0 : DEFAULT_S3_PORT;
  if (v["s3-port"] !== undefined) {
    if (v["s3-port"] === "off") s3Port = null;
    else if (!/^\d{1,5}$/.test(v["s3-port"]) || Number(v["s3-port"]) > 65535) {
      process.stderr.write(`yun serve: --s3-port takes a port number 0-65535 or off, got "${v["s3-port"]}"\n`);
      return 2;
    } else s3Port = Number(v["s3-port"]);
  }
  const host = v.listen ?? "127.0.0.1";
  const limits: Partial<LimitSettings> = {};
  for (const [flag, value, set] of [
    [
      "--rate-limit",
      v["rate-limit"],
      (n: number) => (n === 0 ? Object.assign(limits, NO_RATE_LIMITS) : (limits.apiRate = n)),
    ],
    ["--rate-burst", v["rate-burst"], (n: number) => (limits.apiBurst = n)],
    ["--login-failures", v["login-failures"], (n: number) => (limits.loginFailuresPerMinute = n)],
  ] as const) {
    if (value === undefined) continue;
    if (!/^\d{1,9}$/.test(value)) {
      process.stderr.write(`yun serve: ${flag} takes a whole number, got "${value}"\n`);
      return 2;
    }
    set(Number(value));
  }
  if (limits.apiRate !== undefined && limits.apiRate > 0 && (limits.apiBurst ?? DEFAULT_LIMITS.apiBurst) < 1) {
    process.stderr.write("yun serve: --rate-burst must be at least 1 while a rate limit is on\n");
    return 2;
  }
  if ((v["tls-cert"] === undefined) !== (v["tls-key"] === undefined)) {
    process.stderr.write("yun serve: --tls-cert and --tls-key go together (the certificate and its key)\n");
    return 2;
  }
  let tls: TlsFiles | undefined;
  if (v["tls-cert"] !== undefined && v["tls-key"] !== undefined) {
    try {
      tls = readTlsFiles(v["tls-cert"], v["tls-key"]);
    } catch (e) {
      process.stderr.write(`yun serve: ${(e as Error).message}\n`);
      return 2;
    }
  } else if (!isLoopback(host) && v.insecure !== true) {
    process.stderr.write(
      `yun serve: --listen ${host} is reachable from other machines, and tokens would cross the network in clear text; ` +
        "give --tls-cert FILE --tls-key FILE to serve HTTPS, or --insecure to serve plain HTTP anyway\n",
    );
    return 2;
  }
  let etcdUrls: string[] | undefined;
  if (v.etcd !== undefined) {
    try {
      etcdUrls = parseEtcdUrls(v.etcd);
    } catch (e) {
      process.stderr.write(`yun serve: ${(e as Error).message}\n`);
      return 2;
    }
  }
  const home = yunHome();
  const other = readServeRecord(home);
  if (other !== null) {
    process.stderr.write(
      `yun serve: another yun serve (pid ${other.pid}) already serves ${home} at ${other.url}/; stop it first, or give this one its own YUN_HOME\n`,
    );
    return 1;
  }
  // Clients of this YUN_HOME wait for the daemon from here on (see cloud/endpoint.ts).
  try {
    writeServeRecord(home, { state: "starting", url: "", tls: tls !== undefined, listen: host, port: 0 });
  } catch (e) {
    process.stderr.write(
      `yun serve: cannot write ${serveRecordPath(home)} (the CLI will need --server): ${(e as Error).message}\n`,
    );
  }
  const forget = (): void => removeServeRecord(home);
  process.once("exit", forget);
  // Installs from before private files: tenant data 0644 in 0755 directories.
  let tightened = 0;
  for (const d of ["cloud", "vms", "run", "net"]) tightened += tightenTree(join(home, d));
  if (tightened > 0)
    process.stdout.write(`yun serve: made ${tightened} files and directories under ${home} owner-only\n`);
  let cloud: Cloud;
  try {
    const store = etcdUrls ? await EtcdStore.open(etcdUrls) : undefined;
    cloud = new Cloud({ home, driver: new MonitorDriver(home), forwardsBeyondLoopback: !isLoopback(host), store });
  } catch (e) {
    const where = etcdUrls ? `in etcd at ${etcdUrls.join(",")}` : `in ${home}/cloud`;
    process.stderr.write(`yun serve: cannot open the cloud's state ${where}: ${(e as Error).message}\n`);
    forget();
    return 1;
  }
  const { adminToken } = await cloud.bootstrap();
  if (adminToken !== null) {
    process.stdout.write(
      `yun serve: created project admin and user admin; its token (shown once, also in ${home}/cloud/admin.token):\n${adminToken}\n`,
    );
  }
  const rec = await cloud.reconcile();
  if (rec.reattached.length) process.stdout.write(`yun serve: re-attached to ${rec.reattached.length} running VM(s)\n`);
  if (rec.stopped.length) process.stdout.write(`yun serve: ${rec.stopped.length} instance(s) were no longer running\n`);
  if (rec.orphans.length)
    process.stdout.write(`yun serve: stopped ${rec.orphans.length} VM(s) that no instance owned\n`);
  let running;
  try {
    running = await listen(cloud, host, port, { tls, limits });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "EADDRINUSE"
        ? `port ${port} on ${host} is in use (another yun serve?); choose one with --port`
        : code === "EADDRNOTAVAIL"
          ? `${host} is not an address of this machine`
          : tls !== undefined && /key|cert|PEM|asn1/i.test((e as Error).message)
            ? `the TLS certificate and key cannot be used: ${(e as Error).message}`
            : (e as Error).message;
    process.stderr.write(`yun serve: ${why}\n`);
    cloud.close();
    forget();
    return 1;
  }
  const shown = host.includes(":") ? `[${host}]` : host;
  const scheme = tls ? "https" : "http";
  let s3: RunningObjectServer | undefined;
  if (s3Port !== null) {
    try {
      s3 = await listenObjects(cloud, host, s3Port, tls);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      process.stderr.write(
        `yun serve: ${code === "EADDRINUSE" ? `the object storage's port ${s3Port} on ${host} is in use; choose one with --s3-port (or --s3-port off)` : (e as Error).message}\n`,
      );
      await running.close();
      await cloud.close();
      forget();
      return 1;
    }
    process.stdout.write(`yun serve: object storage (S3) on ${scheme}://${shown}:${s3.port}/\n`);
  }
  // Where the CLI finds this daemon; removed at exit (a record left by a kill is seen as stale).
  try {
    writeServeRecord(home, {
      state: "listening",
      url: localUrl(host, running.port, tls !== undefined),
      tls: tls !== undefined,
      listen: host,
      port: running.port,
    });
  } catch (e) {
    process.stderr.write(
      `yun serve: cannot write ${serveRecordPath(home)} (the CLI will need --server): ${(e as Error).message}\n`,
    );
  }
  process.stdout.write(`yun serve: listening on ${scheme}://${shown}:${running.port}/ (API /api/v1, dashboard /)\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      for (const s of ["SIGINT", "SIGTERM"] as const) process.off(s, stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  forget();
  process.off("exit", forget);
  await running.close();
  await s3?.close();
  await cloud.close();
  process.stdout.write("yun serve: stopped (running VMs keep running)\n");
  return 0;
}

/**
 * `yun cloud export|import`: the cloud's records out of a store into one file, and into a store
 * from one (see cloud/store/transfer.ts); how a single-host cloud moves onto etcd.
 */
import { parseArgs } from "node:util";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { readServeRecord } from "../cloud/endpoint.js";
import { EtcdStore, parseEtcdUrls } from "../cloud/store/etcd.js";
import { SqliteStore } from "../cloud/store/sqlite.js";
import type { Store, TableRows } from "../cloud/store/store.js";
import { exportRecords, importRecords, readExport } from "../cloud/store/transfer.js";
import { yunHome } from "../images/paths.js";

const HELP = `Usage: yun cloud export FILE [--etcd URL[,URL...]]
       yun cloud import FILE [--etcd URL[,URL...]] [--replace]

export writes every record of the cloud (projects, users, tokens, instances, volumes, usage,
the audit log...) into FILE, a SQLite database (mode 0600: it holds token hashes). import loads
such a file into a cloud: an export from an older yun is brought up to this one's schema.

The cloud is the one of $YUN_HOME ($YUN_HOME/cloud/yun.db), or with --etcd the one whose records
are in that etcd cluster. import refuses a cloud that already has records unless --replace, and a
$YUN_HOME whose yun serve is running; stop the yun serve processes of an etcd cluster first.

Only records move: the disks and images they name stay under $YUN_HOME. To move a single-host
cloud onto etcd on the same host:
  yun cloud export cloud.db && yun cloud import cloud.db --etcd http://127.0.0.1:2379
  yun serve --etcd http://127.0.0.1:2379
`;

export async function cloudRecordsCommand(args: string[]): Promise<number> {
  let v;
  try {
    v = parseArgs({
      args,
      allowPositionals: true,
      options: { etcd: { type: "string" }, replace: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    });
  } catch (e) {
    process.stderr.write(`yun cloud: ${(e as Error).message}\n`);
    return 2;
  }
  const [verb, file, ...extra] = v.positionals;
  if (v.values.help || verb === undefined || verb === "help") {
    process.stdout.write(HELP);
    return v.values.help || verb === "help" ? 0 : 2;
  }
  if ((verb !== "export" && verb !== "import") || file === undefined || extra.length > 0) {
    process.stderr.write(
      verb !== "export" && verb !== "import"
        ? `yun cloud: unknown command "${verb}" (export or import; see yun cloud --help)\n`
        : `yun cloud ${verb}: give one FILE (see yun cloud --help)\n`,
    );
    return 2;
  }
  if (verb === "export" && v.values.replace) {
    process.stderr.write("yun cloud export: --replace is for import\n");
    return 2;
  }
  let rows: TableRows | null = null;
  let store: Store;
  try {
    // The file first: a bad one changes nothing (not even an empty database made for the import).
    if (verb === "import") rows = readExport(file);
    if (v.values.etcd !== undefined) store = await EtcdStore.open(parseEtcdUrls(v.values.etcd));
    else {
      const home = yunHome();
      const path = join(home, "cloud", "yun.db");
      if (verb === "export" && !existsSync(path)) throw new Error(`there is no cloud in ${home} (no ${path})`);
      const serving = readServeRecord(home);
      if (verb === "import" && serving !== null)
        throw new Error(`yun serve (pid ${serving.pid}) is running on ${home}; stop it first`);
      mkdirSync(join(home, "cloud"), { recursive: true, mode: 0o700 });
      store = new SqliteStore(path);
    }
  } catch (e) {
    process.stderr.write(`yun cloud ${verb}: ${(e as Error).message}\n`);
    return 1;
  }
  try {
    const counts =
      verb === "export"
        ? await exportRecords(store, file)
        : await importRecords(store, rows!, { replace: v.values.replace });
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const some = Object.entries(counts)
      .filter(([, n]) => n > 0)
      .map(([t, n]) => `${n} ${t}`)
      .join(", ");
    process.stdout.write(
      verb === "export"
        ? `exported ${total} records from ${store.location} to ${file}${some ? ` (${some})` : ""}\n`
        : `imported ${total} records from ${file} into ${store.location}${some ? ` (${some})` : ""}\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`yun cloud ${verb}: ${(e as Error).message}\n`);
    return 1;
  } finally {
    await store.close();
  }
}

/**
 * `yun exec` against qemu-riscv64 as the oracle: the same Debian riscv64 programs (busybox static
 * and dynamic, coreutils) with the same arguments, root, input and environment must print the
 * same stdout and exit with the same status. Each case runs in this process through UserProcess
 * (no Node start-up per case); the CLI cases check what a user sees of bad input.
 */
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { UserProcess } from "../../src/user/process.js";
import { findInPath } from "../../src/images/util.js";
import { execTestRoot } from "../support/riscv-root.js";
import { packageFetchImpossible } from "../support/debian-package.js";

const QEMU = findInPath("qemu-riscv64");
const skip = QEMU === undefined ? "qemu-riscv64 is not installed" : (packageFetchImpossible() ?? false);
const ENV = ["PATH=/usr/bin:/bin", "TZ=UTC", "LC_ALL=C", "HOME=/nonexistent", "GREETING=hi there"];
const YUN = join(process.cwd(), "bin", "yun.js");

const INPUT = ["banana 3", "apple 10", "cherry 7", "apple 10", "date 1", "elderberry 22", ""].join("\n");

interface Case {
  program: string;
  args: string[];
  stdin?: string;
}

const bb = (...args: string[]): Case => ({ program: "/usr/bin/busybox", args });
const bbIn = (stdin: string, ...args: string[]): Case => ({ program: "/usr/bin/busybox", args, stdin });

/** Busybox applets (the dynamic busybox: ld.so, libc, PIE). */
const BUSYBOX: Case[] = [
  bb("echo", "hello", "world"),
  bb("printf", "%s-%d-%x|%5.2f\\n", "a", "42", "255", "3.14159"),
  bb("seq", "1", "25"),
  bb("seq", "-s", ",", "1", "0.5", "4"),
  bb("expr", "6", "*", "7"),
  bb("expr", "length", "riscv64"),
  bbIn(INPUT, "sort"),
  bb("sort", "-k2", "-n", "-r", "input.txt"),
  bbIn("a\na\nb\nc\nc\nc\n", "uniq", "-c"),
  bb("wc", "input.txt"),
  bb("head", "-n", "3", "input.txt"),
  bb("tail", "-n", "2", "input.txt"),
  bb("cut", "-d", " ", "-f", "1", "input.txt"),
  bbIn(INPUT, "tr", "a-z", "A-Z"),
  bbIn(INPUT, "tr", "-d", "aeiou"),
  bb("sed", "-e", "s/a/4/g", "-e", "2d", "input.txt"),
  bb("awk", '{ s += $2 } END { print s, NR; printf "%.5f %d\\n", s / NR, 2^20 }', "input.txt"),
  bb("awk", 'BEGIN { print sqrt(2), exp(1), sin(1), int(-3.7); x = sprintf("%e", 12345.678); print x }'),
  bb("grep", "-n", "an", "input.txt"),
  bb("grep", "-c", "-v", "apple", "input.txt"),
  bb("grep", "nothing-matches", "input.txt"),
  bb("md5sum", "input.txt", "blob.bin"),
  bb("sha1sum", "blob.bin"),
  bb("sha256sum", "input.txt", "blob.bin"),
  bb("sha512sum", "input.txt"),
  bbIn("3 4 * 5 + p\n", "dc"),
  bb("basename", "/a/b/c.txt", ".txt"),
  bb("dirname", "/a/b/c.txt"),
  bb("ls", "tree"),
  bb("ls", "-l", "tree"),
  bb("ls", "-la", "tree/sub"),
  bb("find", "tree", "-type", "f", "-name", "*.txt"),
  bb("cat", "input.txt", "tree/one.txt"),
  bb("date", "-d", "@0", "-u"),
  bb("date", "-u", "-d", "@1234567890", "+%Y-%m-%d %H:%M:%S %A"),
  bb("true"),
  bb("false"),
  bb("test", "3", "-gt", "2"),
  bb("test", "-d", "input.txt"),
  bb("base64", "blob.bin"),
  bb("od", "-A", "x", "-t", "x1z", "tree/one.txt"),
  bb("hexdump", "-C", "blob.bin"),
  bb("rev", "input.txt"),
  bb("nl", "input.txt"),
  bb("fold", "-w", "5", "input.txt"),
  bb("tac", "input.txt"),
  bb("factor", "1234567", "999983", "600851475143"),
  bb("stat", "-c", "%s %F %a %n", "input.txt", "tree"),
  bb("cmp", "input.txt", "tree/one.txt"),
  bb("diff", "input.txt", "tree/two.txt"),
  bb("realpath", "tree/sub/../one.txt"),
  bb("sh", "-c", 'echo "$GREETING" ${UNSET-unset}; exit 5'),
  bb("sh", "-c", "i=0; while [ $i -lt 300 ]; do i=$((i + 1)); done; echo $i;"),
  bb("sha3sum", "input.txt"),
  bb("xxd", "tree/tabs.txt"),
  bb("crc32", "blob.bin"),
  bb("cal", "2", "2024"),
  bb("bc", "-e", "scale=20; 4*a(1)"),
  bb("uname", "-m"),
  bb("dc", "-e", "2 64 ^ p 10 3 / p"),
  bb("expand", "tree/tabs.txt"),
  bb("unexpand", "-a", "tree/tabs.txt"),
  bb("strings", "-n", "6", "blob.bin"),
  bb("wc", "-c", "/usr/bin/busybox"),
  bb("sleep", "0.05"),
  bb("no-such-applet"),
];

/** The static busybox (non-PIE, no loader). */
const STATIC: Case[] = [
  ["echo", "static", "busybox"],
  ["sha256sum", "blob.bin"],
  ["ls", "-l", "tree"],
  ["awk", 'BEGIN { printf "%.6f\\n", atan2(1, 1) * 4 }'],
  ["sort", "-r", "input.txt"],
  ["date", "-d", "@0", "-u"],
  ["false"],
].map((args) => ({ program: "/usr/bin/busybox-static", args }));

/** GNU coreutils (dynamic, with libacl, libattr, libselinux, libgmp, libcrypto...). */
const COREUTILS: Case[] = [
  { program: "/usr/bin/sort", args: ["-k2,2n", "input.txt"] },
  { program: "/usr/bin/sort", args: [], stdin: INPUT },
  { program: "/usr/bin/sha256sum", args: ["input.txt", "blob.bin"] },
  { program: "/usr/bin/ls", args: ["-l", "tree"] },
  { program: "/usr/bin/ls", args: ["-lR", "--time-style=full-iso", "tree"] },
  { program: "/usr/bin/date", args: ["-d", "@0"] },
  { program: "/usr/bin/date", args: ["-u", "-d", "2024-02-29 13:14:15", "+%s %j %U"] },
  { program: "/usr/bin/seq", args: ["1", "0.1", "2"] },
  { program: "/usr/bin/factor", args: ["18446744073709551557", "1000000007"] },
  { program: "/usr/bin/wc", args: ["-l", "-w", "input.txt"] },
  { program: "/usr/bin/od", args: ["-t", "x8", "blob.bin"] },
  { program: "/usr/bin/stat", args: ["-c", "%s %a %F", "input.txt"] },
  { program: "/usr/bin/cat", args: ["no-such-file"] },
];

/** CPython (dynamic, a large program: its start-up alone is ~100 M instructions). */
const PYTHON: Case[] = [
  {
    program: "/usr/bin/python3.13",
    args: [
      "-c",
      "import json, sys; d = json.loads(sys.stdin.read()); print(json.dumps(d, sort_keys=True), sum(i * i for i in range(1000)), 2 ** 100, 7 / 3, divmod(-7, 2)); sys.exit(3)",
    ],
    stdin: '{"b": [1, 2.5, null], "a": "x"}',
  },
];

let root = "";
let work = "";

function makeTree(dir: string): void {
  writeFileSync(join(dir, "input.txt"), INPUT);
  const blob = Buffer.alloc(3000);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 7 + (i >> 5)) & 0xff;
  blob.write("embedded-string-here", 100);
  writeFileSync(join(dir, "blob.bin"), blob);
  mkdirSync(join(dir, "tree", "sub"), { recursive: true });
  writeFileSync(join(dir, "tree", "one.txt"), "one\n");
  writeFileSync(join(dir, "tree", "two.txt"), "banana 3\napple 11\n");
  writeFileSync(join(dir, "tree", "tabs.txt"), "a\tb\tc\n\tindented\n");
  writeFileSync(join(dir, "tree", "sub", "deep.txt"), "deep\n".repeat(100));
  const t = new Date("2024-01-02T03:04:05Z");
  for (const p of ["tree/one.txt", "tree/two.txt", "tree/tabs.txt", "tree/sub/deep.txt", "tree/sub", "tree"])
    utimesSync(join(dir, p), t, t);
}

interface Result {
  stdout: string;
  status: number;
}

function runQemu(c: Case): Result {
  const r = spawnSync(QEMU!, ["-L", root, join(root, c.program), ...c.args], {
    cwd: work,
    env: Object.fromEntries(ENV.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)])),
    input: c.stdin ?? "",
    encoding: "utf8",
  });
  return { stdout: r.stdout, status: r.status ?? 128 + 9 };
}

function runYun(c: Case): Result {
  const stdinPath = join(work, "..", "stdin");
  const stdoutPath = join(work, "..", "stdout");
  writeFileSync(stdinPath, c.stdin ?? "");
  const inFd = openSync(stdinPath, "r");
  const outFd = openSync(stdoutPath, "w");
  const errFd = openSync("/dev/null", "w");
  const cwd = process.cwd();
  try {
    process.chdir(work);
    const p = new UserProcess({
      root,
      program: c.program,
      argv: [c.program, ...c.args],
      env: ENV,
      stdio: [inFd, outFd, errFd],
    });
    const status = p.run();
    return { stdout: readFileSync(stdoutPath, "utf8"), status };
  } finally {
    process.chdir(cwd);
    closeSync(inFd);
    closeSync(outFd);
    closeSync(errFd);
  }
}

function compare(c: Case): void {
  const expected = runQemu(c);
  const got = runYun(c);
  const what = `${c.program} ${c.args.join(" ")}`;
  // The oracle must have run the program (127: this busybox lacks the applet), or the case says nothing.
  if (!c.args.includes("no-such-applet")) assert.notEqual(expected.status, 127, `qemu-riscv64 could not run ${what}`);
  assert.equal(got.stdout, expected.stdout, `stdout of ${what}`);
  assert.equal(got.status, expected.status, `exit status of ${what}`);
}

describe("yun exec against qemu-riscv64", { skip, timeout: 600_000 }, () => {
  before(async () => {
    root = await execTestRoot();
    const dir = mkdtempSync(join(tmpdir(), "yun-exec-"));
    work = join(dir, "work");
    mkdirSync(work);
    makeTree(work);
  });
  after(() => {
    if (work !== "") rmSync(join(work, ".."), { recursive: true, force: true });
  });

  for (const [group, cases] of [
    [`busybox (dynamic), ${BUSYBOX.length} cases`, BUSYBOX],
    [`busybox-static, ${STATIC.length} cases`, STATIC],
    [`coreutils, ${COREUTILS.length} cases`, COREUTILS],
    [`python3, ${PYTHON.length} case`, PYTHON],
  ] as const) {
    describe(group, () => {
      for (const c of cases) test(`${c.program.split("/").pop()} ${c.args.join(" ")}`.slice(0, 80), () => compare(c));
    });
  }

  test("the CLI: exit status, environment, and one clear line for bad input", () => {
    const cli = (args: string[]): { status: number; stdout: string; stderr: string } => {
      const r = spawnSync(process.execPath, [YUN, "exec", "--root", root, ...args], { cwd: work, encoding: "utf8" });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    };
    let r = cli(["--env", "WHO=yun", "/usr/bin/busybox", "sh", "-c", "echo $WHO; exit 3"]);
    assert.deepEqual([r.stdout, r.status], ["yun\n", 3], r.stderr);
    r = cli(["busybox", "sh", "-c", "echo ${WHO-unset}"]);
    assert.deepEqual([r.stdout, r.status], ["unset\n", 0], "a variable of the first run is not in the second");

    // fork, execve, wait4 and pipes (qemu-riscv64 cannot be the oracle: its execve runs host paths).
    const script = [
      "echo start",
      "/usr/bin/busybox echo child",
      'echo "a b c" | tr a-z A-Z',
      'x=$(echo sub); echo "got $x"',
      "/usr/bin/busybox false; echo rc=$?",
      "sha256sum input.txt | cut -c1-16",
      "exit 4",
    ].join("; ");
    r = cli(["/usr/bin/busybox", "sh", "-c", script]);
    const digest = createHash("sha256").update(INPUT).digest("hex").slice(0, 16);
    assert.equal(r.stdout, `start\nchild\nA B C\ngot sub\nrc=1\n${digest}\n`, r.stderr);
    assert.equal(r.status, 4);

    const bad = join(work, "..", "bad");
    mkdirSync(bad, { recursive: true });
    const host = join(bad, "x86-true");
    copyFileSync(findInPath("true")!, host);
    const expectOneLine = (args: string[], status: number, pattern: RegExp): void => {
      const out = cli(args);
      assert.equal(out.status, status, `${args.join(" ")}: ${out.stderr}`);
      assert.match(out.stderr, pattern);
      assert.equal(out.stderr.trim().split("\n").length, 1, out.stderr);
    };
    expectOneLine([host], 126, /not riscv64/);
    const truncated = join(bad, "truncated");
    writeFileSync(truncated, readFileSync(join(root, "usr/bin/busybox")).subarray(0, 200));
    expectOneLine([truncated], 126, /truncated ELF/);
    writeFileSync(join(bad, "text"), "just text\n");
    expectOneLine([join(bad, "text")], 126, /not an ELF/);
    expectOneLine([join(bad, "missing")], 127, /no such file/);
    // A dynamic program whose root has no loader.
    const noLoader = join(bad, "root");
    mkdirSync(join(noLoader, "usr/bin"), { recursive: true });
    copyFileSync(join(root, "usr/bin/busybox"), join(noLoader, "usr/bin/busybox"));
    const out = spawnSync(process.execPath, [YUN, "exec", "--root", noLoader, "/usr/bin/busybox", "true"], {
      encoding: "utf8",
    });
    assert.equal(out.status, 127, out.stderr);
    assert.match(out.stderr, /interpreter \/lib\/ld-linux-riscv64-lp64d.so.1 was not found/);
  });
});

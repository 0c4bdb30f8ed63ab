/**
 * yun exec's kernel: concurrent processes and threads in one Node process. Small C programs built
 * with riscv64-linux-gnu-gcc (static) run under yun exec and under qemu-riscv64 as the oracle (same
 * stdout and exit status); pipelines and CPython's threads and subprocess check what a user sees
 * (qemu-riscv64 cannot be the oracle there: its execve runs the host's programs).
 */
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UserProcess } from "../../src/user/process.js";
import { findInPath } from "../../src/images/util.js";
import { execTestRoot } from "../support/riscv-root.js";
import { packageFetchImpossible } from "../support/debian-package.js";

const GCC = findInPath("riscv64-linux-gnu-gcc");
const QEMU = findInPath("qemu-riscv64");
const ENV = ["PATH=/usr/bin:/bin", "TZ=UTC", "LC_ALL=C", "HOME=/nonexistent"];
const skipRoot = packageFetchImpossible() ?? false;
const skipC =
  GCC === undefined ? "riscv64-linux-gnu-gcc is not installed (apt-get install gcc-riscv64-linux-gnu)" : skipRoot;

/** 100 children, each exiting with i % 7; the parent waits for all and sums their statuses. */
const FORK100 = `
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
  pid_t self = getpid();
  for (int i = 0; i < 100; i++) {
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 1; }
    if (p == 0) _exit(getppid() == self ? i % 7 : 100);
  }
  int sum = 0, n = 0, st;
  while (wait(&st) > 0) { if (WIFEXITED(st)) sum += WEXITSTATUS(st); n++; }
  printf("children %d sum %d\\n", n, sum);
  return sum % 256 == 295 % 256 ? 7 : 1;
}
`;

/** 8 threads: a condition variable releases them, a mutex guards the counter, join collects them. */
const THREADS = `
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long counter;
static int ready, done;
static void *work(void *arg) {
  pthread_mutex_lock(&lock);
  while (!ready) pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  for (int i = 0; i < 20000; i++) {
    pthread_mutex_lock(&lock);
    counter++;
    pthread_mutex_unlock(&lock);
  }
  pthread_mutex_lock(&lock);
  done++;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  return (void *)((long)arg * 2);
}
int main(void) {
  pthread_t t[8];
  for (long i = 0; i < 8; i++) pthread_create(&t[i], 0, work, (void *)i);
  pthread_mutex_lock(&lock);
  ready = 1;
  pthread_cond_broadcast(&cond);
  while (done < 8) pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  long sum = 0;
  for (int i = 0; i < 8; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
  printf("counter %ld joined %ld\\n", counter, sum);
  return 0;
}
`;

/** A thread that spins on a flag another thread sets: only preemption lets the setter run. */
const SPIN = `
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static volatile int flag;
static void *setter(void *arg) {
  struct timespec ts = { 0, 20 * 1000 * 1000 };
  nanosleep(&ts, 0);
  flag = 1;
  return arg;
}
int main(void) {
  pthread_t t;
  pthread_create(&t, 0, setter, 0);
  while (!flag) {}
  pthread_join(t, 0);
  puts("the spinner saw the flag");
  return 0;
}
`;

/** Reads its own pipe, whose only writer is itself: it waits for ever (a deadlock). */
const DEADLOCK = `
#include <unistd.h>
int main(void) {
  int fds[2];
  char c;
  if (pipe(fds) != 0) return 1;
  return (int)read(fds[0], &c, 1);
}
`;

/**
 * Signals between processes and threads: kill to the parent (si_pid, delivered during
 * sigsuspend), a pipe read interrupted (EINTR without SA_RESTART, run again with it), tgkill to a thread parked in
 * sigsuspend, SIGCHLD's handler, and SIGTERM's default action ending a child.
 */
const CROSS_SIGNALS = `
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
static volatile int usr1_from = 0, usr2 = 0, thread_got = 0, chld = 0;
static void on_usr1(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; usr1_from = si->si_pid; }
static void on_usr2(int sig) { (void)sig; usr2++; }
static void on_chld(int sig) { (void)sig; chld++; }
static void *waiter(void *arg) {
  sigset_t none;
  (void)arg;
  sigemptyset(&none);
  while (!thread_got) sigsuspend(&none);
  return 0;
}
static void on_usr1_thread(int sig) { (void)sig; thread_got = 1; }
int main(void) {
  struct sigaction sa = {0};
  sigset_t block, none;
  int st;
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &sa, 0);
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  sigprocmask(SIG_BLOCK, &block, 0);
  pid_t c = fork();
  if (c == 0) { kill(getppid(), SIGUSR1); _exit(0); }
  sigemptyset(&none);
  while (!usr1_from) sigsuspend(&none);
  waitpid(c, &st, 0);
  printf("usr1 from child %d\\n", usr1_from == c);

  struct sigaction s2 = {0};
  s2.sa_handler = on_usr2;
  sigaction(SIGUSR2, &s2, 0);
  int fds[2];
  pipe(fds);
  c = fork();
  if (c == 0) {
    struct timespec t = {0, 50000000};
    nanosleep(&t, 0);
    kill(getppid(), SIGUSR2);
    nanosleep(&t, 0);
    _exit(0);
  }
  char b;
  ssize_t n = read(fds[0], &b, 1);
  printf("read %d %s usr2 %d\\n", (int)n, n < 0 && errno == EINTR ? "EINTR" : "?", usr2);
  waitpid(c, &st, 0);
  s2.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &s2, 0);
  c = fork();
  if (c == 0) {
    struct timespec t = {0, 50000000};
    nanosleep(&t, 0);
    kill(getppid(), SIGUSR2);
    nanosleep(&t, 0);
    write(fds[1], "x", 1);
    _exit(0);
  }
  n = read(fds[0], &b, 1);
  printf("restarted read %d %c usr2 %d\\n", (int)n, n == 1 ? b : '?', usr2);
  waitpid(c, &st, 0);

  struct sigaction s3 = {0};
  s3.sa_handler = on_usr1_thread;
  sigaction(SIGUSR1, &s3, 0);
  pthread_t t;
  pthread_create(&t, 0, waiter, 0);
  struct timespec d = {0, 20000000};
  nanosleep(&d, 0);
  pthread_kill(t, SIGUSR1);
  pthread_join(t, 0);
  printf("thread got %d\\n", thread_got);

  struct sigaction s4 = {0};
  s4.sa_handler = on_chld;
  sigaction(SIGCHLD, &s4, 0);
  c = fork();
  if (c == 0) { for (;;) pause(); }
  nanosleep(&d, 0);
  kill(c, SIGTERM);
  while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
  printf("child %s %d sigchld %d\\n", WIFSIGNALED(st) ? "signaled" : "exited", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), chld);
  return 0;
}
`;

let root = "";
let dir = "";

interface Result {
  stdout: string;
  status: number;
}

/** What the last runYun's kernel logged (yun exec's own diagnostics, not the program's stderr). */
let logged: string[] = [];

function runYun(program: string, args: string[]): Result {
  logged = [];
  const out = join(dir, "stdout");
  const outFd = openSync(out, "w");
  const inFd = openSync("/dev/null", "r");
  const errFd = openSync(join(dir, "stderr"), "w");
  try {
    const p = new UserProcess({
      root,
      program,
      argv: [program, ...args],
      env: ENV,
      stdio: [inFd, outFd, errFd],
      cwd: dir,
      log: (line) => logged.push(line),
    });
    const status = p.run();
    return { stdout: readFileSync(out, "utf8"), status };
  } finally {
    closeSync(outFd);
    closeSync(inFd);
    closeSync(errFd);
  }
}

function build(name: string, source: string): string {
  const c = join(dir, `${name}.c`);
  const exe = join(dir, name);
  writeFileSync(c, source);
  const r = spawnSync(GCC!, ["-O2", "-static", "-pthread", "-o", exe, c], { encoding: "utf8" });
  assert.equal(r.status, 0, `riscv64-linux-gnu-gcc ${name}.c: ${r.stderr}`);
  return exe;
}

/** Runs a built program under yun exec, checks the expected output, and qemu-riscv64 agrees when present. */
function againstOracle(exe: string, expected: Result): void {
  const got = runYun(exe, []);
  assert.deepEqual(got, expected, readFileSync(join(dir, "stderr"), "utf8"));
  if (QEMU === undefined) return;
  const q = spawnSync(QEMU, [exe], { encoding: "utf8" });
  assert.deepEqual({ stdout: q.stdout, status: q.status }, got, "qemu-riscv64 disagrees");
}

describe("yun exec's scheduler", { timeout: 900_000 }, () => {
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "yun-sched-"));
    if (skipRoot === false) root = await execTestRoot();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("fork 100 children, wait for all: the sum of their exit codes", { skip: skipC }, () => {
    againstOracle(build("fork100", FORK100), { stdout: "children 100 sum 295\n", status: 7 });
  });

  test("8 pthreads: a mutex and a condition variable (futex), then join", { skip: skipC }, () => {
    againstOracle(build("threads", THREADS), { stdout: "counter 160000 joined 56\n", status: 0 });
  });

  test("a spinning thread is preempted so the other thread sets its flag", { skip: skipC }, () => {
    againstOracle(build("spin", SPIN), { stdout: "the spinner saw the flag\n", status: 0 });
  });

  test("signals across processes and threads: kill, EINTR, tgkill, SIGCHLD, SIGTERM", { skip: skipC }, () => {
    againstOracle(build("crosssig", CROSS_SIGNALS), {
      stdout:
        "usr1 from child 1\nread -1 EINTR usr2 1\nrestarted read 1 x usr2 2\nthread got 1\nchild signaled 15 sigchld 1\n",
      status: 0,
    });
  });

  test("a deadlock is one clear line and the end, not a hang", { skip: skipC }, () => {
    const r = runYun(build("deadlock", DEADLOCK), []);
    assert.equal(r.status, 137);
    assert.equal(logged.length, 1, logged.join("\n"));
    assert.match(logged[0], /^yun exec: deadlock: every task waits .*deadlock\[\d+\]/);
  });

  test("pipelines run concurrently: yes | head, seq | sort -r | head", { skip: skipRoot }, () => {
    const sh = (script: string): Result => runYun("/usr/bin/busybox", ["sh", "-c", script]);
    assert.deepEqual(sh("yes | head -n 3"), { stdout: "y\ny\ny\n", status: 0 });
    assert.deepEqual(sh("seq 1 100000 | sort -r | head -n 2"), { stdout: "99999\n99998\n", status: 0 });
    // The shell's own fork/exec/wait, pipes and exit statuses.
    assert.deepEqual(sh('cd /tmp && pwd; x=$(echo sub | tr a-z A-Z); echo "$x"; false; echo rc=$?; exit 3'), {
      stdout: "/tmp\nSUB\nrc=1\n",
      status: 3,
    });
  });

  test(
    "a shell waits for its background job: SIGCHLD's handler runs, rt_sigsuspend returns",
    { skip: skipRoot },
    () => {
      const sh = (script: string): Result => runYun("/usr/bin/busybox", ["sh", "-c", script]);
      assert.deepEqual(sh("sleep 0.1 & wait; echo waited $?"), { stdout: "waited 0\n", status: 0 });
      assert.deepEqual(sh("(exit 5) & wait $!; echo waited $?"), { stdout: "waited 5\n", status: 0 });
    },
  );

  test("python3: 4 threads and subprocess.run with captured output", { skip: skipRoot }, () => {
    const script = [
      "import threading, subprocess",
      "out = []",
      "lock = threading.Lock()",
      "def work(i):",
      "    s = sum(range(i * 1000))",
      "    with lock: out.append((i, s))",
      "ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]",
      "[t.start() for t in ts]; [t.join() for t in ts]",
      "print(sorted(out))",
      "r = subprocess.run(['echo', 'hi'], capture_output=True)",
      "print(r.returncode, r.stdout)",
    ].join("\n");
    assert.deepEqual(runYun("/usr/bin/python3.13", ["-c", script]), {
      stdout: "[(0, 0), (1, 499500), (2, 1999000), (3, 4498500)]\n0 b'hi\\n'\n",
      status: 0,
    });
  });
});

/*
 * yun-agent: runs commands and moves files for the host, over virtio-vsock port 1024.
 * The protocol is in docs/guest-agent.md. One connection carries one request; each connection
 * is served by a child process of its own (which dies with the agent: PR_SET_PDEATHSIG), so a
 * slow or stuck request never holds up another.
 *
 * Built static with riscv64-linux-gnu-gcc when the debian-tiny image is built; started (and
 * restarted when it dies) by busybox init from /etc/inittab.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <sys/ioctl.h>

#define AGENT_PORT 1024
#define MAX_FRAME (1024 * 1024)
#define CHUNK (64 * 1024)
#define MAX_FIELDS 4096
#define BG_DIR "/run/yun-agent"

enum {
  T_REQUEST = 1,
  T_STDIN = 2,
  T_STDOUT = 3,
  T_STDERR = 4,
  T_EXIT = 5,
  T_ERROR = 6,
  T_DATA = 7,
  T_RESULT = 8,
};

static int sock = -1;

/* ---- frames: u32 payload length (LE), u8 type, payload ---- */

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int read_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void send_frame(int type, const void *data, size_t len) {
  unsigned char h[5] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff, (unsigned char)type};
  if (write_all(sock, h, 5) < 0 || (len > 0 && write_all(sock, data, len) < 0)) _exit(1);
}

/* Reads one frame into a malloc'd buffer (NUL-terminated); returns its type, -1 at end of stream. */
static int recv_frame(char **data, size_t *len) {
  unsigned char h[5];
  if (read_all(sock, h, 5) < 0) return -1;
  size_t n = (size_t)h[0] | ((size_t)h[1] << 8) | ((size_t)h[2] << 16) | ((size_t)h[3] << 24);
  if (n > MAX_FRAME) return -1;
  char *buf = malloc(n + 1);
  if (!buf) return -1;
  if (n > 0 && read_all(sock, buf, n) < 0) {
    free(buf);
    return -1;
  }
  buf[n] = 0;
  *data = buf;
  *len = n;
  return h[4];
}

/* A list of NUL-terminated "key=value" fields being built for a RESULT or EXIT frame. */
struct fields {
  char *buf;
  size_t len, cap;
};

static void field(struct fields *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void field(struct fields *f, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(f->buf ? f->buf + f->len : NULL, f->buf ? f->cap - f->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (f->buf && f->len + (size_t)n + 1 <= f->cap) {
      f->len += (size_t)n + 1;
      return;
    }
    f->cap = (f->cap + (size_t)n + 1) * 2;
    f->buf = realloc(f->buf, f->cap);
    if (!f->buf) _exit(1);
  }
}

static void send_fields(int type, struct fields *f) {
  send_frame(type, f->buf, f->len);
  free(f->buf);
  f->buf = NULL;
  f->len = f->cap = 0;
}

static void send_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void send_error(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  send_frame(T_ERROR, msg, n < 0 ? 0 : (size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n);
}

/* The request: its op and its key=value fields (pointers into the frame). */
struct request {
  const char *op;
  const char *key[MAX_FIELDS];
  const char *value[MAX_FIELDS];
  int count;
};

static int parse_request(char *data, size_t len, struct request *r) {
  r->count = 0;
  r->op = data;
  size_t at = strlen(data) + 1;
  while (at < len && r->count < MAX_FIELDS) {
    char *f = data + at;
    at += strlen(f) + 1;
    char *eq = strchr(f, '=');
    if (!eq) return -1;
    *eq = 0;
    r->key[r->count] = f;
    r->value[r->count] = eq + 1;
    r->count++;
  }
  return 0;
}

static const char *get(const struct request *r, const char *key) {
  for (int i = 0; i < r->count; i++)
    if (strcmp(r->key[i], key) == 0) return r->value[i];
  return NULL;
}

static long long get_num(const struct request *r, const char *key, long long dflt) {
  const char *v = get(r, key);
  return v ? strtoll(v, NULL, 10) : dflt;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- exec ---- */

/* In the child: stdio, environment, directory, then the program; 127 when it does not exist. */
static void exec_child(const struct request *r, int in_fd, int out_fd, int err_fd) {
  setsid();
  dup2(in_fd, 0);
  dup2(out_fd, 1);
  dup2(err_fd, 2);
  /* One system call rather than a thousand closes (each is slow in an emulated guest). */
  if (close_range(3, ~0U, 0) < 0)
    for (int fd = 3; fd < 1024; fd++) close(fd);
  signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  const char *cwd = get(r, "cwd");
  if (cwd && chdir(cwd) < 0) {
    dprintf(2, "yun-agent: cannot change to %s: %s\n", cwd, strerror(errno));
    _exit(126);
  }
  if (get(r, "clearenv")) clearenv();
  for (int i = 0; i < r->count; i++)
    if (strcmp(r->key[i], "env") == 0) putenv((char *)r->value[i]);
  if (!getenv("PATH")) setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  if (!getenv("HOME")) setenv("HOME", "/root", 1);
  char *argv[MAX_FIELDS + 1];
  int argc = 0;
  const char *shell = get(r, "shell");
  if (shell) {
    argv[argc++] = "/bin/sh";
    argv[argc++] = "-c";
    argv[argc++] = (char *)shell;
  } else {
    for (int i = 0; i < r->count; i++)
      if (strcmp(r->key[i], "arg") == 0) argv[argc++] = (char *)r->value[i];
  }
  argv[argc] = NULL;
  if (argc == 0) {
    dprintf(2, "yun-agent: no command given\n");
    _exit(127);
  }
  execvp(argv[0], argv);
  int e = errno;
  dprintf(2, "yun-agent: %s: %s\n", argv[0], e == ENOENT ? "command not found" : strerror(e));
  _exit(e == ENOENT ? 127 : 126);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void do_exec(const struct request *r) {
  int want_stdin = get(r, "stdin") != NULL;
  long long timeout = get_num(r, "timeout", 0);
  int in[2] = {-1, -1}, out[2], err[2];
  if ((want_stdin && pipe2(in, O_CLOEXEC) < 0) || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    send_error("cannot make pipes: %s", strerror(errno));
    return;
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    send_error("cannot fork: %s", strerror(errno));
    return;
  }
  if (pid == 0) exec_child(r, want_stdin ? in[0] : devnull, out[1], err[1]);
  close(devnull);
  close(out[1]);
  close(err[1]);
  if (want_stdin) {
    close(in[0]);
    set_nonblock(in[1]);
  }
  {
    struct fields f = {0};
    field(&f, "pid=%d", (int)pid);
    send_fields(T_RESULT, &f);
  }
  /* Pending stdin bytes (one frame at a time: the host's next frame waits while this one drains). */
  char *stdin_buf = NULL;
  size_t stdin_len = 0, stdin_off = 0;
  int stdin_fd = want_stdin ? in[1] : -1;
  int out_fd = out[0], err_fd = err[0];
  int sock_open = 1, timed_out = 0, status = 0, exited = 0;
  long long deadline = timeout > 0 ? now_ms() + timeout : 0;
  static char buf[CHUNK];
  while (out_fd >= 0 || err_fd >= 0 || !exited) {
    struct pollfd p[4];
    int n = 0, i_out = -1, i_err = -1, i_sock = -1, i_in = -1;
    if (out_fd >= 0) p[i_out = n++] = (struct pollfd){out_fd, POLLIN, 0};
    if (err_fd >= 0) p[i_err = n++] = (struct pollfd){err_fd, POLLIN, 0};
    if (sock_open && stdin_buf == NULL) p[i_sock = n++] = (struct pollfd){sock, POLLIN, 0};
    if (stdin_fd >= 0 && stdin_buf != NULL) p[i_in = n++] = (struct pollfd){stdin_fd, POLLOUT, 0};
    int wait = 50;
    if (deadline > 0 && !timed_out) {
      long long left = deadline - now_ms();
      if (left <= 0) {
        timed_out = 1;
        kill(-pid, SIGKILL);
      } else if (left < wait) {
        wait = (int)left;
      }
    }
    if (out_fd < 0 && err_fd < 0 && !exited) {
      /* Output closed (or redirected away): wait for the exit itself. */
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = 1;
        continue;
      }
    }
    int ready = poll(p, (nfds_t)n, n == 0 ? 10 : wait);
    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = 1;
    if (ready <= 0) continue;
    if (i_out >= 0 && p[i_out].revents) {
      ssize_t k = read(out_fd, buf, sizeof buf);
      if (k > 0) send_frame(T_STDOUT, buf, (size_t)k);
      else if (k == 0 || errno != EINTR) {
        close(out_fd);
        out_fd = -1;
      }
    }
    if (i_err >= 0 && p[i_err].revents) {
      ssize_t k = read(err_fd, buf, sizeof buf);
      if (k > 0) send_frame(T_STDERR, buf, (size_t)k);
      else if (k == 0 || errno != EINTR) {
        close(err_fd);
        err_fd = -1;
      }
    }
    if (i_sock >= 0 && p[i_sock].revents) {
      char *data;
      size_t len;
      int type = recv_frame(&data, &len);
      if (type < 0) {
        /* The host went away: the command goes too. */
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
        _exit(0);
      }
      if (type == T_STDIN && stdin_fd >= 0) {
        if (len == 0) {
          close(stdin_fd);
          stdin_fd = -1;
          free(data);
        } else {
          stdin_buf = data;
          stdin_len = len;
          stdin_off = 0;
        }
      } else {
        free(data);
      }
    }
    if (i_in >= 0 && p[i_in].revents) {
      ssize_t k = write(stdin_fd, stdin_buf + stdin_off, stdin_len - stdin_off);
      if (k > 0) stdin_off += (size_t)k;
      if ((k < 0 && errno != EAGAIN && errno != EINTR) || stdin_off == stdin_len) {
        free(stdin_buf);
        stdin_buf = NULL;
        if (k < 0) {
          /* The command stopped reading (EPIPE): later stdin is dropped. */
          close(stdin_fd);
          stdin_fd = -1;
        }
      }
    }
  }
  struct fields f = {0};
  if (WIFEXITED(status)) field(&f, "code=%d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status)) field(&f, "signal=%d", WTERMSIG(status));
  if (timed_out) field(&f, "timedout=1");
  send_fields(T_EXIT, &f);
}

/* Background: a supervisor (own session) runs the command with output to files and records its exit. */
static void do_background(const struct request *r) {
  mkdir(BG_DIR, 0700);
  int sync_pipe[2];
  if (pipe2(sync_pipe, O_CLOEXEC) < 0) {
    send_error("cannot make a pipe: %s", strerror(errno));
    return;
  }
  pid_t sup = fork();
  if (sup < 0) {
    send_error("cannot fork: %s", strerror(errno));
    return;
  }
  if (sup == 0) {
    setsid();
    prctl(PR_SET_PDEATHSIG, 0);
    pid_t pid = fork();
    if (pid == 0) {
      char path[64];
      snprintf(path, sizeof path, BG_DIR "/%d.out", (int)getpid());
      int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      snprintf(path, sizeof path, BG_DIR "/%d.err", (int)getpid());
      int err = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int in = open("/dev/null", O_RDONLY);
      exec_child(r, in, out, err);
    }
    char path[64], tmp[80];
    if (pid > 0) {
      snprintf(path, sizeof path, BG_DIR "/%d.cmd", (int)pid);
      FILE *cmd = fopen(path, "w");
      if (cmd) {
        const char *shell = get(r, "shell");
        if (shell) fprintf(cmd, "%s", shell);
        for (int i = 0; !shell && i < r->count; i++)
          if (strcmp(r->key[i], "arg") == 0) fprintf(cmd, "%s%s", i ? " " : "", r->value[i]);
        fclose(cmd);
      }
    }
    int id = (int)pid;
    (void)!write(sync_pipe[1], &id, sizeof id);
    close(sync_pipe[1]);
    if (pid < 0) _exit(1);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    snprintf(path, sizeof path, BG_DIR "/%d.exit", (int)pid);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f) {
      if (WIFEXITED(status)) fprintf(f, "code=%d\n", WEXITSTATUS(status));
      else fprintf(f, "signal=%d\n", WTERMSIG(status));
      fclose(f);
      rename(tmp, path);
    }
    _exit(0);
  }
  close(sync_pipe[1]);
  int id = -1;
  if (read_all(sync_pipe[0], &id, sizeof id) < 0 || id < 0) {
    send_error("cannot start the command in the background");
    return;
  }
  waitpid(sup, NULL, WNOHANG);
  struct fields f = {0};
  field(&f, "pid=%d", id);
  send_fields(T_RESULT, &f);
}

static void do_ps(void) {
  struct fields f = {0};
  DIR *d = opendir(BG_DIR);
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    int pid;
    char rest[16];
    if (sscanf(e->d_name, "%d.%15s", &pid, rest) != 2 || strcmp(rest, "cmd") != 0) continue;
    char path[300], cmd[512] = "", state[64] = "running";
    snprintf(path, sizeof path, BG_DIR "/%d.cmd", pid);
    FILE *c = fopen(path, "r");
    if (c) {
      size_t k = fread(cmd, 1, sizeof cmd - 1, c);
      cmd[k] = 0;
      fclose(c);
    }
    snprintf(path, sizeof path, BG_DIR "/%d.exit", pid);
    FILE *x = fopen(path, "r");
    if (x) {
      if (fgets(state, sizeof state, x)) state[strcspn(state, "\n")] = 0;
      fclose(x);
    }
    field(&f, "process=%d\t%s\t%s", pid, state, cmd);
  }
  if (d) closedir(d);
  send_fields(T_RESULT, &f);
}

static void do_kill(const struct request *r) {
  int pid = (int)get_num(r, "pid", 0);
  int sig = (int)get_num(r, "signal", SIGTERM);
  if (pid <= 1) {
    send_error("kill needs a process id above 1");
    return;
  }
  /* The command leads its own session: signal the whole group (its children too). */
  if (kill(-pid, sig) < 0 && kill(pid, sig) < 0) {
    send_error("cannot signal process %d: %s", pid, strerror(errno));
    return;
  }
  struct fields f = {0};
  field(&f, "ok=1");
  send_fields(T_RESULT, &f);
}

/* ---- files ---- */

static const char *type_name(mode_t m) {
  return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

static void do_read(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    send_error("%s: %s", path, strerror(errno));
    return;
  }
  if (S_ISDIR(st.st_mode)) {
    send_error("%s: is a directory", path);
    return;
  }
  struct fields f = {0};
  field(&f, "size=%lld", (long long)st.st_size);
  send_fields(T_RESULT, &f);
  static char buf[CHUNK];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      send_error("%s: %s", path, strerror(errno));
      return;
    }
    if (n == 0) break;
    send_frame(T_DATA, buf, (size_t)n);
  }
  send_frame(T_DATA, NULL, 0);
}

static void do_write(const struct request *r, const char *path) {
  int mode = (int)strtol(get(r, "mode") ? get(r, "mode") : "644", NULL, 8);
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (get(r, "append") ? O_APPEND : O_TRUNC);
  int fd = open(path, flags, mode);
  if (fd < 0) {
    send_error("%s: %s", path, strerror(errno));
    return;
  }
  long long total = 0;
  int failed = 0;
  for (;;) {
    char *data;
    size_t len;
    int type = recv_frame(&data, &len);
    if (type < 0) _exit(1); /* the host went away mid-file */
    if (type != T_DATA) {
      free(data);
      continue;
    }
    if (len == 0) {
      free(data);
      break;
    }
    if (!failed && write_all(fd, data, len) < 0) failed = errno;
    total += (long long)len;
    free(data);
  }
  if (!failed && close(fd) < 0) failed = errno;
  if (failed) {
    send_error("%s: %s", path, strerror(failed));
    return;
  }
  struct fields f = {0};
  field(&f, "bytes=%lld", total);
  send_fields(T_RESULT, &f);
}

static void stat_fields(struct fields *f, const char *prefix, const char *name, const struct stat *st) {
  if (prefix)
    field(f, "%s=%s\t%s\t%lld\t%o\t%lld", prefix, name, type_name(st->st_mode), (long long)st->st_size,
          (unsigned)(st->st_mode & 07777), (long long)st->st_mtime);
  else {
    field(f, "type=%s", type_name(st->st_mode));
    field(f, "size=%lld", (long long)st->st_size);
    field(f, "mode=%o", (unsigned)(st->st_mode & 07777));
    field(f, "mtime=%lld", (long long)st->st_mtime);
    field(f, "uid=%d", (int)st->st_uid);
    field(f, "gid=%d", (int)st->st_gid);
  }
}

static void do_stat(const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0) {
    send_error("%s: %s", path, strerror(errno));
    return;
  }
  struct fields f = {0};
  stat_fields(&f, NULL, path, &st);
  send_fields(T_RESULT, &f);
}

static void do_list(const char *path) {
  DIR *d = opendir(path);
  if (!d) {
    send_error("%s: %s", path, strerror(errno));
    return;
  }
  struct fields f = {0};
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
    stat_fields(&f, "entry", e->d_name, &st);
  }
  closedir(d);
  send_fields(T_RESULT, &f);
}

static int mkdir_p(char *path, int mode) {
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(path, (mode_t)mode) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(path, (mode_t)mode) < 0 && errno != EEXIST ? -1 : 0;
}

static int remove_tree(int dirfd_, const char *name) {
  struct stat st;
  if (fstatat(dirfd_, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return -1;
  if (!S_ISDIR(st.st_mode)) return unlinkat(dirfd_, name, 0);
  int fd = openat(dirfd_, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  DIR *d = fdopendir(fd);
  if (!d) return -1;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (remove_tree(fd, e->d_name) < 0) rc = -1;
  }
  closedir(d);
  return rc < 0 ? -1 : unlinkat(dirfd_, name, AT_REMOVEDIR);
}

static void ok_result(void) {
  struct fields f = {0};
  field(&f, "ok=1");
  send_fields(T_RESULT, &f);
}

static void do_mkdir(const struct request *r, const char *path) {
  int mode = (int)strtol(get(r, "mode") ? get(r, "mode") : "755", NULL, 8);
  char *copy = strdup(path);
  int rc = get(r, "parents") ? mkdir_p(copy, mode) : mkdir(path, (mode_t)mode);
  free(copy);
  if (rc < 0) send_error("%s: %s", path, strerror(errno));
  else ok_result();
}

static void do_remove(const struct request *r, const char *path) {
  int rc;
  if (get(r, "recursive")) rc = remove_tree(AT_FDCWD, path);
  else {
    struct stat st;
    rc = lstat(path, &st) < 0 ? -1 : S_ISDIR(st.st_mode) ? rmdir(path) : unlink(path);
  }
  if (rc < 0) send_error("%s: %s", path, strerror(errno));
  else ok_result();
}

/*
 * A VM restored from a snapshot (a sandbox from its template, a fork) starts with its template's
 * random state: the host sends fresh bytes, credited to the input pool, and the kernel's CRNG is
 * reseeded from it at once (RNDRESEEDCRNG), so /dev/urandom diverges between the copies now, not
 * at the next scheduled reseed.
 */
static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void do_reseed(const struct request *r) {
  const char *hex = get(r, "seed");
  size_t n = hex ? strlen(hex) / 2 : 0;
  if (n < 16 || n > 512 || strlen(hex) % 2 != 0) {
    send_error("reseed needs seed= with 16 to 512 bytes in hex");
    return;
  }
  struct rand_pool_info *info = calloc(1, sizeof *info + n);
  if (!info) {
    send_error("reseed: out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      free(info);
      send_error("reseed: the seed is not hex");
      return;
    }
    ((unsigned char *)info->buf)[i] = (unsigned char)(hi << 4 | lo);
  }
  info->entropy_count = (int)(n * 8);
  info->buf_size = (int)n;
  int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
  if (fd < 0 || ioctl(fd, RNDADDENTROPY, info) < 0) {
    send_error("reseed: adding entropy failed: %s", strerror(errno));
  } else if (ioctl(fd, RNDRESEEDCRNG) < 0) {
    send_error("reseed: reseeding the kernel's generator failed: %s", strerror(errno));
  } else {
    ok_result();
  }
  if (fd >= 0) close(fd);
  free(info);
}

static void serve(void) {
  char *data;
  size_t len;
  int type = recv_frame(&data, &len);
  if (type != T_REQUEST) return;
  struct request *r = calloc(1, sizeof *r);
  if (!r || parse_request(data, len, r) < 0) {
    send_error("the request is malformed (fields are key=value)");
    return;
  }
  const char *op = r->op;
  const char *path = get(r, "path");
  int needs_path = strcmp(op, "read") == 0 || strcmp(op, "write") == 0 || strcmp(op, "stat") == 0 ||
                   strcmp(op, "list") == 0 || strcmp(op, "mkdir") == 0 || strcmp(op, "remove") == 0;
  if (needs_path && (path == NULL || *path == 0)) {
    send_error("%s needs a path", op);
    return;
  }
  if (strcmp(op, "exec") == 0) {
    if (get(r, "background")) do_background(r);
    else do_exec(r);
  } else if (strcmp(op, "ps") == 0) do_ps();
  else if (strcmp(op, "kill") == 0) do_kill(r);
  else if (strcmp(op, "read") == 0) do_read(path);
  else if (strcmp(op, "write") == 0) do_write(r, path);
  else if (strcmp(op, "stat") == 0) do_stat(path);
  else if (strcmp(op, "list") == 0) do_list(path);
  else if (strcmp(op, "mkdir") == 0) do_mkdir(r, path);
  else if (strcmp(op, "remove") == 0) do_remove(r, path);
  else if (strcmp(op, "rename") == 0) {
    const char *from = get(r, "from"), *to = get(r, "to");
    if (!from || !to) send_error("rename needs from and to");
    else if (rename(from, to) < 0) send_error("rename %s to %s: %s", from, to, strerror(errno));
    else ok_result();
  } else if (strcmp(op, "reseed") == 0) {
    do_reseed(r);
  } else if (strcmp(op, "ping") == 0) {
    ok_result();
  } else {
    send_error("unknown request \"%s\"", op);
  }
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_DFL);
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    if (null > 2) close(null);
  }
  int listener = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = AGENT_PORT, .svm_cid = VMADDR_CID_ANY};
  if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0) {
    /* No vsock device or driver: say so once and stay (init would respawn an exiting agent at once). */
    dprintf(2, "yun-agent: cannot listen on vsock port %d: %s\n", AGENT_PORT, strerror(errno));
    for (;;) pause();
  }
  pid_t agent = getpid();
  for (;;) {
    int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    if (c < 0) {
      if (errno != EINTR) usleep(10000);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      /* Dies with the agent: a killed agent ends its requests, and the host hears of it. */
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != agent) _exit(1);
      close(listener);
      sock = c;
      serve();
      _exit(0);
    }
    close(c);
  }
}

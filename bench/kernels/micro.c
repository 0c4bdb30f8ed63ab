/*
 * Kernel-heavy micro-workloads for `npm run bench`, run as a static Linux program inside the guest:
 *
 *   micro getppid N    N getppid system calls (through syscall(), so no libc caching)
 *   micro pagefault N  N rounds of: map 64 MiB anonymous, write one byte to each 4 KiB page, unmap
 *   micro pipe N       N one-byte round trips between two processes over a pair of pipes
 *   micro mmap N       N mmap/munmap pairs of 64 KiB anonymous memory (never touched)
 *
 * It prints nothing on success and exits 0; on a failed call it names the call and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define FAULT_BYTES (64UL << 20)
#define MMAP_BYTES (64UL << 10)

static int fail(const char *what) {
  perror(what);
  return 1;
}

static int run_getppid(long n) {
  long sum = 0;
  for (long i = 0; i < n; i++) sum += syscall(SYS_getppid);
  return sum == 0 ? fail("getppid") : 0;
}

static int run_pagefault(long n) {
  for (long r = 0; r < n; r++) {
    volatile char *p = mmap(NULL, FAULT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return fail("mmap");
    for (unsigned long off = 0; off < FAULT_BYTES; off += PAGE) p[off] = 1;
    if (munmap((void *)p, FAULT_BYTES) != 0) return fail("munmap");
  }
  return 0;
}

static int run_pipe(long n) {
  int there[2], back[2];
  if (pipe(there) != 0 || pipe(back) != 0) return fail("pipe");
  pid_t child = fork();
  if (child < 0) return fail("fork");
  char c = 0;
  if (child == 0) {
    for (long i = 0; i < n; i++) {
      if (read(there[0], &c, 1) != 1) _exit(1);
      if (write(back[1], &c, 1) != 1) _exit(1);
    }
    _exit(0);
  }
  for (long i = 0; i < n; i++) {
    c = (char)i;
    if (write(there[1], &c, 1) != 1) return fail("write");
    if (read(back[0], &c, 1) != 1) return fail("read");
  }
  int status;
  if (waitpid(child, &status, 0) != child) return fail("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "micro: the pipe partner failed\n");
    return 1;
  }
  return 0;
}

static int run_mmap(long n) {
  for (long i = 0; i < n; i++) {
    void *p = mmap(NULL, MMAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return fail("mmap");
    if (munmap(p, MMAP_BYTES) != 0) return fail("munmap");
  }
  return 0;
}

int main(int argc, char **argv) {
  char *end;
  long n = argc == 3 ? strtol(argv[2], &end, 10) : 0;
  if (argc != 3 || *end != 0 || n <= 0) {
    fprintf(stderr, "usage: micro getppid|pagefault|pipe|mmap ITERATIONS\n");
    return 2;
  }
  if (strcmp(argv[1], "getppid") == 0) return run_getppid(n);
  if (strcmp(argv[1], "pagefault") == 0) return run_pagefault(n);
  if (strcmp(argv[1], "pipe") == 0) return run_pipe(n);
  if (strcmp(argv[1], "mmap") == 0) return run_mmap(n);
  fprintf(stderr, "micro: unknown workload \"%s\"\n", argv[1]);
  return 2;
}

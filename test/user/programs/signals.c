/* Signal and page-protection cases for yun exec, one per argv[1]; qemu-riscv64 is the oracle. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile char *page;
static volatile void *fault_addr;
static volatile int fault_code, faults, caught, caught_signo, caught_code, caught_pid_ok;
static sigjmp_buf jump;
static char *alt;
static volatile int on_alt, alt_flags;

static void make_writable(int sig, siginfo_t *info, void *uc) {
  (void)sig, (void)uc;
  fault_addr = info->si_addr;
  fault_code = info->si_code;
  faults++;
  mprotect((void *)page, 4096, PROT_READ | PROT_WRITE);
}

static void jump_back(int sig, siginfo_t *info, void *uc) {
  (void)uc;
  caught_signo = sig;
  fault_addr = info->si_addr;
  fault_code = info->si_code;
  siglongjmp(jump, 1);
}

static void record(int sig, siginfo_t *info, void *uc) {
  (void)uc;
  caught++;
  caught_signo = info->si_signo == sig ? sig : -1;
  caught_code = info->si_code;
  caught_pid_ok = info->si_pid == getpid();
}

static void count(int sig) {
  (void)sig;
  caught++;
}

static void on_alt_stack(int sig) {
  (void)sig;
  char local;
  on_alt = &local >= alt && &local < alt + SIGSTKSZ;
  stack_t now;
  sigaltstack(NULL, &now);
  alt_flags = now.ss_flags;
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *), int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO | flags;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) perror("sigaction");
}

static void handle_plain(int sig, void (*fn)(int), int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sa.sa_flags = flags;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) perror("sigaction");
}

/* Steps over the 4-byte instruction that trapped and changes a1 and fa0 in the context it returns to. */
static void step_over(int sig, siginfo_t *info, void *ucv) {
  ucontext_t *uc = ucv;
  caught++;
  caught_signo = sig;
  caught_code = info->si_code;
  fault_addr = info->si_addr;
  uc->uc_mcontext.__gregs[REG_PC] += 4;
  uc->uc_mcontext.__gregs[11] += 1000;
  uc->uc_mcontext.__fpregs.__d.__f[10] = 0x4004000000000000ULL; /* 2.5 */
}

static void trap_and_step(const char *what, int which) {
  long a1;
  double fa0;
  uintptr_t at = 0;
  if (which == 0)
    __asm__ volatile(".option push\n.option norvc\nli a1, 5\nfcvt.d.l fa0, zero\nla %2, 1f\n1: lw a0, 0(zero)\n"
                     ".option pop\nmv %0, a1\nfmv.d %1, fa0"
                     : "=r"(a1), "=f"(fa0), "=r"(at)::"a0", "a1", "fa0", "memory");
  else if (which == 1)
    __asm__ volatile(".option push\n.option norvc\nli a1, 6\nfcvt.d.l fa0, zero\nla %2, 1f\n1: .word 0\n"
                     ".option pop\nmv %0, a1\nfmv.d %1, fa0"
                     : "=r"(a1), "=f"(fa0), "=r"(at)::"a1", "fa0", "memory");
  else
    __asm__ volatile(".option push\n.option norvc\nli a1, 7\nfcvt.d.l fa0, zero\nla %2, 1f\n1: ebreak\n"
                     ".option pop\nmv %0, a1\nfmv.d %1, fa0"
                     : "=r"(a1), "=f"(fa0), "=r"(at)::"a1", "fa0", "memory");
  printf("%s: signal %d, code %d, si_addr is %s, a1 %ld, fa0 %.1f\n", what, caught_signo, caught_code,
         fault_addr == NULL ? "NULL" : (uintptr_t)fault_addr == at ? "the pc" : "elsewhere", a1, fa0);
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  setvbuf(stdout, NULL, _IONBF, 0);
  if (strcmp(mode, "protect") == 0) {
    /* A write to a read-only page: the handler makes it writable and returns; the write is redone. */
    page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    handle(SIGSEGV, make_writable, 0);
    page[100] = 42;
    printf("faults %d, at the written byte %s, code %s, value %d\n", faults,
           fault_addr == page + 100 ? "yes" : "no", fault_code == SEGV_ACCERR ? "SEGV_ACCERR" : "other", page[100]);
    page[200] = 7; /* writable now: no second fault */
    printf("faults %d, value %d\n", faults, page[200]);
    return 0;
  }
  if (strcmp(mode, "null") == 0) {
    handle(SIGSEGV, jump_back, 0);
    if (sigsetjmp(jump, 1) == 0) {
      volatile int *p = NULL;
      printf("read %d\n", *p);
      printf("not reached\n");
      return 1;
    }
    printf("recovered: signal %d, address %p, code %s\n", caught_signo, (void *)fault_addr,
           fault_code == SEGV_MAPERR ? "SEGV_MAPERR" : "other");
    /* siglongjmp restored the mask: SIGSEGV is deliverable again. */
    if (sigsetjmp(jump, 1) == 0) {
      volatile int *p = (int *)16;
      *p = 1;
    }
    printf("recovered again at %p\n", (void *)fault_addr);
    return 0;
  }
  if (strcmp(mode, "crash") == 0) {
    printf("before the crash\n");
    volatile int *p = NULL;
    *p = 1;
    printf("not reached\n");
    return 0;
  }
  if (strcmp(mode, "siginfo") == 0) {
    handle(SIGUSR1, record, 0);
    raise(SIGUSR1);
    printf("caught %d, si_signo %d, si_code %d, si_pid is mine: %d\n", caught, caught_signo, caught_code,
           caught_pid_ok);
    kill(getpid(), SIGUSR1);
    printf("caught %d, si_code %d (SI_USER), si_pid is mine: %d\n", caught, caught_code, caught_pid_ok);
    return 0;
  }
  if (strcmp(mode, "mask") == 0) {
    handle_plain(SIGUSR1, count, 0);
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    raise(SIGUSR1);
    sigpending(&pending);
    printf("blocked: caught %d, pending %d\n", caught, sigismember(&pending, SIGUSR1));
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    sigpending(&pending);
    printf("unblocked: caught %d, pending %d\n", caught, sigismember(&pending, SIGUSR1));
    return 0;
  }
  if (strcmp(mode, "altstack") == 0) {
    alt = malloc(SIGSTKSZ);
    stack_t ss = {.ss_sp = alt, .ss_size = SIGSTKSZ, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) perror("sigaltstack");
    handle_plain(SIGUSR2, on_alt_stack, SA_ONSTACK);
    raise(SIGUSR2);
    stack_t after;
    sigaltstack(NULL, &after);
    printf("handler on the alternate stack: %d, ss_flags there %d, after %d, size %zu\n", on_alt, alt_flags,
           after.ss_flags, after.ss_size == SIGSTKSZ ? (size_t)1 : (size_t)0);
    return 0;
  }
  if (strcmp(mode, "none") == 0) {
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(p, "kept");
    mprotect(p, 8192, PROT_NONE);
    handle(SIGSEGV, jump_back, 0);
    if (sigsetjmp(jump, 1) == 0) {
      printf("read %d\n", ((volatile char *)p)[4096]);
      return 1;
    }
    printf("PROT_NONE read faulted at the byte read: %s, code %s\n", fault_addr == p + 4096 ? "yes" : "no",
           fault_code == SEGV_ACCERR ? "SEGV_ACCERR" : "other");
    /* The kernel answers EFAULT for a buffer the program cannot access. */
    ssize_t n = write(1, p, 4);
    printf("write from it: %zd %s\n", n, n < 0 && errno == EFAULT ? "EFAULT" : "?");
    mprotect(p, 8192, PROT_READ);
    printf("readable again: %s\n", p);
    struct timespec ts;
    int r1 = clock_gettime(CLOCK_REALTIME, (struct timespec *)p);
    int e1 = errno;
    int r2 = clock_gettime(CLOCK_REALTIME, (struct timespec *)16);
    int e2 = errno;
    int r3 = clock_gettime(CLOCK_REALTIME, &ts);
    printf("clock_gettime into read-only, unmapped, own memory: %d %s, %d %s, %d\n", r1,
           e1 == EFAULT ? "EFAULT" : "?", r2, e2 == EFAULT ? "EFAULT" : "?", r3);
    munmap(p, 8192);
    if (sigsetjmp(jump, 1) == 0) printf("read %d\n", ((volatile char *)p)[0]);
    printf("unmapped read faulted: code %s\n", fault_code == SEGV_MAPERR ? "SEGV_MAPERR" : "other");
    return 0;
  }
  if (strcmp(mode, "resethand") == 0) {
    handle_plain(SIGUSR1, count, SA_RESETHAND);
    raise(SIGUSR1);
    printf("first: caught %d\n", caught);
    raise(SIGUSR1); /* the default action now: the process ends */
    printf("not reached\n");
    return 0;
  }
  if (strcmp(mode, "pipe") == 0) {
    int fds[2];
    pipe(fds);
    close(fds[0]);
    signal(SIGPIPE, SIG_IGN);
    ssize_t n = write(fds[1], "x", 1);
    printf("ignored SIGPIPE: %zd %s\n", n, n < 0 && errno == EPIPE ? "EPIPE" : "?");
    signal(SIGPIPE, SIG_DFL);
    write(fds[1], "x", 1);
    printf("not reached\n");
    return 0;
  }
  if (strcmp(mode, "context") == 0) {
    /* Registers survive a handler that clobbers them, and a handler can change the context it returns to. */
    handle_plain(SIGUSR1, count, 0);
    volatile double d = 1.5;
    double sum = 0;
    for (int i = 0; i < 5; i++) {
      raise(SIGUSR1);
      sum += d * i;
    }
    printf("caught %d, sum %.2f\n", caught, sum);
    return 0;
  }
  if (strcmp(mode, "rodata") == 0) {
    /* The program's own segments carry their ELF protections: constants are read-only, code is not writable. */
    static const char constant[] = "constant";
    handle(SIGSEGV, jump_back, 0);
    if (sigsetjmp(jump, 1) == 0) ((volatile char *)constant)[0] = 'C';
    printf("write to a constant: %s, %s\n", fault_addr == constant ? "faulted there" : "no fault", constant);
    fault_addr = NULL;
    if (sigsetjmp(jump, 1) == 0) *(volatile char *)(uintptr_t)main = 0;
    printf("write to code: %s\n", fault_addr == (void *)(uintptr_t)main ? "faulted there" : "no fault");
    return 0;
  }
  if (strcmp(mode, "fork") == 0) {
    /* The child changes protections and the mask; the parent's come back when it ends. */
    page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    handle(SIGSEGV, make_writable, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pid_t pid = fork();
    if (pid == 0) {
      mprotect((void *)page, 4096, PROT_READ | PROT_WRITE);
      sigprocmask(SIG_BLOCK, &set, NULL);
      page[1] = 1;
      printf("child wrote without a fault: faults %d\n", faults);
      _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    sigprocmask(SIG_BLOCK, NULL, &set);
    printf("parent: SIGUSR2 blocked %d, byte %d\n", sigismember(&set, SIGUSR2), page[1]);
    page[1] = 2;
    printf("parent's write faulted: faults %d, value %d\n", faults, page[1]);
    return 0;
  }
  if (strcmp(mode, "ucontext") == 0) {
    handle(SIGSEGV, step_over, 0);
    handle(SIGILL, step_over, 0);
    handle(SIGTRAP, step_over, 0);
    trap_and_step("load from NULL", 0);
    trap_and_step("illegal instruction", 1);
    trap_and_step("ebreak", 2);
    printf("caught %d\n", caught);
    return 0;
  }
  fprintf(stderr, "unknown mode %s\n", mode);
  return 2;
}

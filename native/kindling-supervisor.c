/*
 * kindling-supervisor: the main process of a persistent sandbox of the sandbox executor
 * (src/executors/sandbox/persistent.ts), run inside the sandbox (bound read-only, linked statically so that any
 * image can run it) in place of a supervisor written in sh. Every command is its child: it inherits the sandbox's
 * namespaces, cgroup, seccomp filter, no-new-privs and uid by construction.
 *
 *   kindling-supervisor AGENT_DIR
 *
 * Protocol (the same as the sh supervisor's): "r" once ready; then per line `ID STDIN(0|1)` on stdin it forks a
 * child for the command described by AGENT_DIR/ID/run and answers "p ID PID" (the pid in the sandbox's pid
 * namespace), and later "x ID STATUS" when that child ended (its exit code, or 128 + the signal that killed it).
 * End of stdin ends the supervisor (the sandbox goes with it).
 *
 * The child, before it execs the command:
 *   - puts every signal back to its default action and unblocks all: a shell's background job (`&`) runs with
 *     SIGINT and SIGQUIT ignored, which a program inherits through exec and cannot undo in sh (a Python program then
 *     never sees KeyboardInterrupt, `kill -INT` does nothing);
 *   - opens AGENT_DIR/ID/in (STDIN 1, else /dev/null), out and err, in that order (FIFOs whose other ends the server
 *     holds);
 *   - reads AGENT_DIR/ID/run, written by the server, root:sandbox-gid 0440: NUL-terminated fields
 *     `WORKDIR ENVC NAME=VALUE... ARGC ARG...`; chdir(WORKDIR) (exit 126 when it cannot), the ENVC entries set on
 *     top of the sandbox's environment, and ARG0 looked up in that environment's PATH as sh would (exit 127 when not
 *     found, 126 when not executable, with the reason on stderr).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LINE 256
#define MAX_RUN_BYTES (4 << 20)
#define MAX_RUNNING 4096

static const char *agent_dir;

struct running {
  pid_t pid;
  char id[MAX_LINE];
};
static struct running running[MAX_RUNNING];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[MAX_LINE * 2];
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(line, sizeof line, fmt, args);
  va_end(args);
  if (n < 0) return;
  size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
  const char *at = line;
  while (len > 0) {
    ssize_t w = write(1, at, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) _exit(1); /* the server is gone */
    at += w;
    len -= (size_t)w;
  }
}

/* ---- the child ----------------------------------------------------------------------------------------------- */

static void die(int code, const char *what, const char *detail) {
  dprintf(2, "kindling: %s: %s\n", what, detail);
  _exit(code);
}

static void open_onto(const char *path, int flags, int fd) {
  int opened;
  do opened = open(path, flags);
  while (opened < 0 && errno == EINTR);
  if (opened < 0) _exit(125); /* no stderr to say it on yet */
  if (opened != fd) {
    if (dup2(opened, fd) < 0) _exit(125);
    close(opened);
  }
}

static char *next_field(char *buf, size_t len, size_t *at) {
  if (*at >= len) return NULL;
  char *field = buf + *at;
  char *nul = memchr(field, '\0', len - *at);
  if (nul == NULL) return NULL;
  *at = (size_t)(nul - buf) + 1;
  return field;
}

static unsigned long count_field(char *buf, size_t len, size_t *at) {
  char *text = next_field(buf, len, at);
  char *end = NULL;
  if (text == NULL) die(125, "run", "malformed");
  unsigned long value = strtoul(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value > 1000000) die(125, "run", "malformed");
  return value;
}

static void run_command(const char *id, int with_stdin) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_UNBLOCK, &all, NULL);
  for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);

  char path[4096];
  snprintf(path, sizeof path, "%s/%s/in", agent_dir, id);
  if (with_stdin) open_onto(path, O_RDONLY, 0);
  else open_onto("/dev/null", O_RDONLY, 0);
  snprintf(path, sizeof path, "%s/%s/out", agent_dir, id);
  open_onto(path, O_WRONLY, 1);
  snprintf(path, sizeof path, "%s/%s/err", agent_dir, id);
  open_onto(path, O_WRONLY, 2);

  snprintf(path, sizeof path, "%s/%s/run", agent_dir, id);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(125, path, strerror(errno));
  char *buf = malloc(MAX_RUN_BYTES);
  if (buf == NULL) die(125, "run", strerror(ENOMEM));
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, MAX_RUN_BYTES - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die(125, path, strerror(errno));
    if (n == 0) break;
    len += (size_t)n;
    if (len == MAX_RUN_BYTES) die(125, path, "too large");
  }
  close(fd);

  size_t at = 0;
  char *workdir = next_field(buf, len, &at);
  if (workdir == NULL) die(125, "run", "malformed");
  /* As sh's `cd` did: PWD names the work dir (bwrap set it to the sandbox's); an env entry of the request wins. */
  if (setenv("PWD", workdir, 1) < 0) die(125, "PWD", strerror(errno));
  unsigned long envc = count_field(buf, len, &at);
  /* On top of the sandbox's own environment (bwrap's), as the sh supervisor's `export NAME=VALUE` lines did. */
  for (unsigned long i = 0; i < envc; i++) {
    char *entry = next_field(buf, len, &at);
    if (entry == NULL || strchr(entry, '=') == NULL || putenv(entry) != 0) die(125, "run", "malformed");
  }
  unsigned long argc = count_field(buf, len, &at);
  if (argc == 0) die(125, "run", "malformed");
  char **argv = calloc(argc + 1, sizeof *argv);
  if (argv == NULL) die(125, "run", strerror(ENOMEM));
  for (unsigned long i = 0; i < argc; i++)
    if ((argv[i] = next_field(buf, len, &at)) == NULL) die(125, "run", "malformed");

  if (chdir(workdir) < 0) die(126, workdir, strerror(errno));
  /* execvp looks the name up in the command's PATH (or the default path without one), as sh does. */
  execvp(argv[0], argv);
  int code = errno == ENOENT || errno == ENOTDIR ? 127 : 126;
  die(code, argv[0], errno == ENOENT ? "not found" : strerror(errno));
}

/* ---- the supervisor ------------------------------------------------------------------------------------------ */

static int valid_id(const char *id) {
  if (*id == '\0' || strlen(id) > 64) return 0;
  for (const char *c = id; *c; c++)
    if (!isalnum((unsigned char)*c)) return 0;
  return 1;
}

static void start(char *line) {
  char *space = strchr(line, ' ');
  if (space == NULL) return;
  *space = '\0';
  const char *id = line;
  int with_stdin = strcmp(space + 1, "1") == 0;
  if (!valid_id(id)) return;
  int slot = -1;
  for (int i = 0; i < MAX_RUNNING; i++)
    if (running[i].pid == 0) {
      slot = i;
      break;
    }
  if (slot < 0) {
    say("x %s 125\n", id);
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    say("x %s 125\n", id);
    return;
  }
  if (pid == 0) run_command(id, with_stdin);
  running[slot].pid = pid;
  snprintf(running[slot].id, sizeof running[slot].id, "%s", id);
  say("p %s %ld\n", id, (long)pid);
}

static void reap(void) {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 125;
    for (int i = 0; i < MAX_RUNNING; i++)
      if (running[i].pid == pid) {
        say("x %s %d\n", running[i].id, code);
        running[i].pid = 0;
        break;
      }
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    dprintf(2, "usage: kindling-supervisor AGENT_DIR\n");
    return 64;
  }
  agent_dir = argv[1];
  sigset_t child;
  sigemptyset(&child);
  sigaddset(&child, SIGCHLD);
  sigprocmask(SIG_BLOCK, &child, NULL);
  int sfd = signalfd(-1, &child, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) {
    dprintf(2, "kindling-supervisor: signalfd: %s\n", strerror(errno));
    return 1;
  }
  say("r\n");

  char buf[MAX_LINE];
  size_t used = 0;
  int input_open = 1;
  while (input_open) {
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(sfd, &info, sizeof info) == sizeof info) {
      }
      reap();
    }
    if (fds[0].revents & POLLNVAL) break; /* no stdin at all: as its end */
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(0, buf + used, sizeof buf - used);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        input_open = 0;
        break;
      }
      used += (size_t)n;
      char *nl;
      while ((nl = memchr(buf, '\n', used)) != NULL) {
        *nl = '\0';
        start(buf);
        size_t rest = used - (size_t)(nl - buf) - 1;
        memmove(buf, nl + 1, rest);
        used = rest;
      }
      if (used == sizeof buf) used = 0; /* a line longer than any the server writes: dropped */
    }
  }
  return 0;
}

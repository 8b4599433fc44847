/*
 * kindling-launch: the sandbox executor's launcher in one exec (src/executors/sandbox/launcher.ts). It does what the
 * shell chain `sh (join cgroups) -> prlimit -> [nsenter --net] -> setpriv -> sh -s` does, without four execs of
 * dynamically linked programs per sandbox (measured: a fifth of the machine's CPU in a burst of 100 creates).
 *
 *   kindling-launch UID GID CORE_LIMIT NETNS|- PROCS_FILE...
 *
 * As root, in this order:
 *   1. writes its pid into every PROCS_FILE (the cgroup.procs of its fresh cgroups); exit 125 when one fails;
 *   2. writes "R\n" on fd 4 (the status pipe): ready;
 *   3. RLIMIT_CORE = CORE_LIMIT (soft and hard) for the whole tree;
 *   4. NETNS other than "-": joins that network namespace (egress sandboxes);
 *   5. drops every capability from the bounding set, clears the supplementary groups, sets the real, effective and
 *      saved gid and uid to GID and UID (which empties the permitted and effective sets), clears the inheritable and
 *      ambient sets, sets no-new-privs, and asks for SIGKILL when the parent (the server) dies (after the uid change,
 *      which would clear it). Any failure: exit 125, nothing runs.
 * Then, unprivileged, it waits for one command on fd 5 (a pooled launcher waits here) and closes it:
 *   "OPEN_FILES\0STDIN(0|1)\0ARGC\0ARG0\0ARG1\0...ARGN\0"
 * sets RLIMIT_NOFILE = OPEN_FILES (soft and hard: the sandbox cannot raise it), keeps fd 0 (STDIN 1) or puts
 * /dev/null there (STDIN 0), closes fd 6 and execs ARG0 with ARG1... and an empty environment. fds 3, 4 and 7 (seccomp
 * filter, status, bwrap's arguments) pass through as they are.
 *
 * Exit 125: a step above failed; 127: the command could not be exec'd (the message of either on stderr and on fd 4);
 * 64: usage.
 *
 *   kindling-launch --serve SOCKET
 *
 * The spawner (src/executors/sandbox/launch-service.ts): one long-lived root process that forks launchers for the
 * server, so that the server's own (large) process is not forked and its event loop not held for each sandbox (a
 * spawn from node forks the whole server and waits for the exec: 5 to 10 ms each here). Requests on stdin, each a
 * list of NUL-terminated fields ended by an empty field:
 *   "S" TOKEN UID GID CORE_LIMIT NETNS|- PROCS_FILE...   fork a launcher (the arguments above)
 *   "K" TOKEN SIGNAL                                    signal a launcher not reaped yet
 * The forked launcher starts a session of its own (setsid), connects to SOCKET (the server's listening unix socket)
 * once for each of its fds 0, 1, 2, 3, 4, 5 and 7, sends TOKEN (16 bytes) and the fd's digit on each, and then goes on
 * as the launcher above. Answers on stdout, one line each:
 *   "P TOKEN PID"           forked
 *   "X TOKEN c CODE"        exited with CODE;  "X TOKEN s SIGNAL": killed by SIGNAL
 * At end of input it exits; its launchers then get SIGKILL (their parent-death signal), and it gets one itself when
 * the server dies.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

enum { FD_STATUS = 4, FD_COMMAND = 5, FD_OLD_STDIN = 6 };
enum { EXIT_SETUP = 125, EXIT_EXEC = 127, EXIT_USAGE = 64 };
/*
 * The command record: bwrap's path, "--args", "7", "--" and the user's command (bwrap's options come on fd 7). Read
 * into a buffer that grows up to this; execve refuses more than the kernel's argument space anyway (E2BIG: 127).
 */
#define MAX_COMMAND_BYTES (64 << 20)
#define MAX_ARGS 65536

/* The reason goes on stderr and on the status fd, where the executor reads it (a sandbox that never started returns no
 * stderr to anyone: the server logs the reason instead). */
static void fail(const char *what) {
  int saved = errno;
  dprintf(2, "kindling-launch: %s: %s\n", what, strerror(saved));
  dprintf(FD_STATUS, "kindling-launch: %s: %s\n", what, strerror(saved));
  _exit(EXIT_SETUP);
}

static int write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

static unsigned long parse_number(const char *text, const char *what) {
  char *end = NULL;
  errno = 0;
  unsigned long value = strtoul(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    dprintf(2, "kindling-launch: %s is not a number: %s\n", what, text);
    _exit(EXIT_USAGE);
  }
  return value;
}

static void join_cgroups(char **files, int count) {
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  for (int i = 0; i < count; i++) {
    int fd = open(files[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write_all(fd, pid, (size_t)len) < 0) fail(files[i]);
    close(fd);
  }
}

static void drop_privileges(uid_t uid, gid_t gid, pid_t parent) {
  /* The bounding set first: dropping from it needs CAP_SETPCAP, gone once the uid changes. */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0) break; /* EINVAL: past the kernel's last capability */
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) fail("PR_CAPBSET_DROP");
  }
  if (setgroups(0, NULL) < 0) fail("setgroups");
  if (setresgid(gid, gid, gid) < 0) fail("setresgid");
  if (setresuid(uid, uid, uid) < 0) fail("setresuid");
  /* A uid change from 0 empties permitted and effective, not inheritable: that is cleared here (ambient with it). */
  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) < 0) fail("capset");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) fail("PR_CAP_AMBIENT_CLEAR_ALL");
  if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid) {
    errno = EPERM;
    fail("the uid or gid did not change");
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("PR_SET_NO_NEW_PRIVS");
  /* After the uid change, which resets it. The parent may already be gone: then nobody waits for this sandbox. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fail("PR_SET_PDEATHSIG");
  if (getppid() != parent) {
    errno = ESRCH;
    fail("the server exited before the parent-death signal was set");
  }
}

/* Reads fd 5 to its end (the server writes one record and closes it). */
static char *read_command(size_t *len) {
  size_t size = 1 << 16;
  char *buf = malloc(size);
  if (buf == NULL) fail("malloc");
  size_t used = 0;
  for (;;) {
    if (used == size) {
      if (size == MAX_COMMAND_BYTES) {
        errno = E2BIG;
        fail("reading the command");
      }
      size *= 2;
      char *bigger = realloc(buf, size);
      if (bigger == NULL) fail("realloc");
      buf = bigger;
    }
    ssize_t n = read(FD_COMMAND, buf + used, size - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("reading the command");
    if (n == 0) break;
    used += (size_t)n;
  }
  close(FD_COMMAND);
  *len = used;
  return buf;
}

/* The next NUL-terminated field at *at, or NULL when the record ends first. */
static char *next_field(char *buf, size_t len, size_t *at) {
  if (*at >= len) return NULL;
  char *field = buf + *at;
  char *nul = memchr(field, '\0', len - *at);
  if (nul == NULL) return NULL;
  *at = (size_t)(nul - buf) + 1;
  return field;
}

static int launch(int argc, char **argv) {
  if (argc < 5) {
    dprintf(2, "usage: kindling-launch UID GID CORE_LIMIT NETNS|- PROCS_FILE...\n");
    return EXIT_USAGE;
  }
  uid_t uid = (uid_t)parse_number(argv[1], "UID");
  gid_t gid = (gid_t)parse_number(argv[2], "GID");
  rlim_t core = (rlim_t)parse_number(argv[3], "CORE_LIMIT");
  const char *netns = argv[4];
  if (uid == 0 || gid == 0) {
    dprintf(2, "kindling-launch: refusing to run a sandbox as uid or gid 0\n");
    return EXIT_USAGE;
  }

  /* Compared after PR_SET_PDEATHSIG: a parent gone before it was set left no one to kill this process. (Not
   * getppid() == 1: the server may itself be pid 1, in a container.) */
  pid_t parent = getppid();
  join_cgroups(argv + 5, argc - 5);
  if (write_all(FD_STATUS, "R\n", 2) < 0) fail("writing the status fd");

  struct rlimit core_limit = {.rlim_cur = core, .rlim_max = core};
  if (setrlimit(RLIMIT_CORE, &core_limit) < 0) fail("setrlimit(RLIMIT_CORE)");
  if (strcmp(netns, "-") != 0) {
    int fd = open(netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(netns);
    if (setns(fd, CLONE_NEWNET) < 0) fail("setns");
    close(fd);
  }
  drop_privileges(uid, gid, parent);

  size_t len = 0;
  char *record = read_command(&len);
  size_t at = 0;
  char *open_files = next_field(record, len, &at);
  char *with_stdin = next_field(record, len, &at);
  char *count_text = next_field(record, len, &at);
  if (open_files == NULL || with_stdin == NULL || count_text == NULL) {
    errno = EINVAL;
    fail("the command record");
  }
  unsigned long count = parse_number(count_text, "ARGC");
  if (count == 0 || count > MAX_ARGS) {
    errno = EINVAL;
    fail("the command record's ARGC");
  }
  char **args = calloc(count + 1, sizeof *args);
  if (args == NULL) fail("calloc");
  for (unsigned long i = 0; i < count; i++) {
    args[i] = next_field(record, len, &at);
    if (args[i] == NULL) {
      errno = EINVAL;
      fail("the command record's arguments");
    }
  }

  rlim_t files = (rlim_t)parse_number(open_files, "OPEN_FILES");
  struct rlimit nofile = {.rlim_cur = files, .rlim_max = files};
  if (setrlimit(RLIMIT_NOFILE, &nofile) < 0) fail("setrlimit(RLIMIT_NOFILE)");
  if (strcmp(with_stdin, "1") != 0) {
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0) fail("/dev/null");
    if (null != 0) close(null);
  }
  close(FD_OLD_STDIN);

  char *empty_env[] = {NULL};
  execve(args[0], args, empty_env);
  int saved = errno;
  dprintf(2, "kindling-launch: %s: %s\n", args[0], strerror(saved));
  dprintf(FD_STATUS, "kindling-launch: %s: %s\n", args[0], strerror(saved));
  return EXIT_EXEC;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* The spawner (--serve). */

enum { TOKEN_BYTES = 16, MAX_REQUEST_BYTES = 1 << 16, MAX_REQUEST_FIELDS = 64 };
static const int STDIO_SLOTS[] = {0, 1, 2, 3, FD_STATUS, FD_COMMAND, 7};
#define SLOT_COUNT ((int)(sizeof STDIO_SLOTS / sizeof STDIO_SLOTS[0]))

struct child {
  pid_t pid;
  char token[TOKEN_BYTES + 1];
};
static struct child *children = NULL;
static size_t child_count = 0, child_capacity = 0;

static void serve_fail(const char *what) {
  dprintf(2, "kindling-launch --serve: %s: %s\n", what, strerror(errno));
  _exit(EXIT_SETUP);
}

static void answer(const char *line) {
  if (write_all(1, line, strlen(line)) < 0) _exit(0); /* the server is gone */
}

/* In the forked child: fds 0-5 and 7 become connections to the server's socket, each announced by token and fd. */
static void connect_stdio(const char *socket_path, const char *token) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    fail(socket_path);
  }
  strcpy(addr.sun_path, socket_path);
  int high[SLOT_COUNT];
  for (int i = 0; i < SLOT_COUNT; i++) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) fail("socket");
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) fail("connecting to the server");
    char hello[TOKEN_BYTES + 1];
    memcpy(hello, token, TOKEN_BYTES);
    hello[TOKEN_BYTES] = (char)('0' + STDIO_SLOTS[i]);
    if (write_all(s, hello, sizeof hello) < 0) fail("greeting the server");
    /* Out of the way of the slots, which the loop below fills. */
    high[i] = fcntl(s, F_DUPFD_CLOEXEC, 64);
    if (high[i] < 0) fail("F_DUPFD_CLOEXEC");
    close(s);
  }
  for (int i = 0; i < SLOT_COUNT; i++) {
    if (dup2(high[i], STDIO_SLOTS[i]) < 0) fail("dup2"); /* dup2 clears close-on-exec on the slot */
    close(high[i]);
  }
  close(FD_OLD_STDIN);
}

static void spawn_launcher(const char *socket_path, char **fields, int count, int sigfd) {
  /* S TOKEN UID GID CORE NETNS PROCS... */
  if (count < 6 || strlen(fields[1]) != TOKEN_BYTES) {
    dprintf(2, "kindling-launch --serve: a malformed spawn request\n");
    if (count >= 2 && strlen(fields[1]) == TOKEN_BYTES) {
      char line[64];
      snprintf(line, sizeof line, "X %s c %d\n", fields[1], EXIT_USAGE);
      answer(line);
    }
    return;
  }
  if (child_count == child_capacity) {
    size_t capacity = child_capacity == 0 ? 64 : child_capacity * 2;
    struct child *bigger = realloc(children, capacity * sizeof *bigger);
    if (bigger == NULL) serve_fail("realloc");
    children = bigger;
    child_capacity = capacity;
  }
  pid_t spawner = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    char line[64];
    snprintf(line, sizeof line, "X %s c %d\n", fields[1], EXIT_SETUP);
    dprintf(2, "kindling-launch --serve: fork: %s\n", strerror(errno));
    answer(line);
    return;
  }
  if (pid == 0) {
    /* At once, not only after the uid change (launch() sets it again there): a spawner that dies from here on takes
     * this launcher with it, and one that died before the prctl shows as a changed parent. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) fail("PR_SET_PDEATHSIG");
    if (getppid() != spawner) {
      errno = ESRCH;
      fail("the launch helper exited before the parent-death signal was set");
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* an ignored signal would stay ignored across exec, in the sandbox too */
    close(sigfd);
    /* Detached from the server's session: a terminal's Ctrl-C must not reach sandboxes a graceful stop drains. */
    if (setsid() < 0) fail("setsid");
    connect_stdio(socket_path, fields[1]);
    /* The launcher only reads fds 0, 3 and 5 (and bwrap 7): nothing it or the sandbox writes there reaches the server. */
    for (int fd = 0; fd <= 7; fd++) {
      if (fd == 0 || fd == 3 || fd == FD_COMMAND || fd == 7) shutdown(fd, SHUT_WR);
    }
    /* launch() reads argv[1..]: fields[1] (the token) stands where the program's name would. */
    _exit(launch(count - 1, fields + 1));
  }
  struct child *c = &children[child_count++];
  c->pid = pid;
  memcpy(c->token, fields[1], TOKEN_BYTES + 1);
  char line[64];
  snprintf(line, sizeof line, "P %s %ld\n", fields[1], (long)pid);
  answer(line);
}

static void signal_launcher(char **fields, int count) {
  if (count != 3) return;
  int sig = atoi(fields[2]);
  for (size_t i = 0; i < child_count; i++) {
    /* Not reaped yet, so the pid cannot belong to another process. */
    if (strcmp(children[i].token, fields[1]) == 0) kill(children[i].pid, sig);
  }
}

static void reap(void) {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (size_t i = 0; i < child_count; i++) {
      if (children[i].pid != pid) continue;
      char line[64];
      if (WIFSIGNALED(status)) snprintf(line, sizeof line, "X %s s %d\n", children[i].token, WTERMSIG(status));
      else snprintf(line, sizeof line, "X %s c %d\n", children[i].token, WEXITSTATUS(status));
      children[i] = children[--child_count];
      answer(line);
      break;
    }
  }
}

/* Without close_range (kernels before 5.9): every descriptor /proc lists above 2. */
static void close_inherited_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  if (dir == NULL) serve_fail("/proc/self/fd");
  int fds[4096];
  int count = 0;
  struct dirent *entry;
  while ((entry = readdir(dir)) != NULL && count < (int)(sizeof fds / sizeof fds[0])) {
    int fd = atoi(entry->d_name);
    if (fd > 2 && fd != dirfd(dir)) fds[count++] = fd;
  }
  closedir(dir);
  for (int i = 0; i < count; i++) close(fds[i]);
}

static int serve(const char *socket_path) {
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != parent) serve_fail("PR_SET_PDEATHSIG");
  /* Nothing the server inherited passes on to sandboxes. */
  if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) close_inherited_fds();
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0) serve_fail("sigprocmask");
  int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) serve_fail("signalfd");
  signal(SIGPIPE, SIG_IGN);

  static char buf[MAX_REQUEST_BYTES];
  size_t used = 0;
  for (;;) {
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      serve_fail("poll");
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(sigfd, &info, sizeof info) > 0) {
      }
      reap();
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(0, buf + used, sizeof buf - used);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0; /* the server closed its end: launchers follow by their parent-death signal */
      used += (size_t)n;
      /* Every complete request: fields up to an empty one. */
      for (;;) {
        char *fields[MAX_REQUEST_FIELDS];
        int count = 0;
        size_t at = 0;
        int complete = 0;
        while (at < used) {
          char *nul = memchr(buf + at, '\0', used - at);
          if (nul == NULL) break;
          if (nul == buf + at) {
            complete = 1;
            at++;
            break;
          }
          if (count == MAX_REQUEST_FIELDS) {
            errno = E2BIG;
            serve_fail("a request with too many fields");
          }
          fields[count++] = buf + at;
          at = (size_t)(nul - buf) + 1;
        }
        if (!complete) {
          if (used == sizeof buf) {
            errno = E2BIG;
            serve_fail("a request too long");
          }
          break;
        }
        if (count > 0 && strcmp(fields[0], "S") == 0) spawn_launcher(socket_path, fields, count, sigfd);
        else if (count > 0 && strcmp(fields[0], "K") == 0) signal_launcher(fields, count);
        else dprintf(2, "kindling-launch --serve: an unknown request\n");
        memmove(buf, buf + at, used - at);
        used -= at;
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--serve") == 0) return serve(argv[2]);
  return launch(argc, argv);
}

/*
 * kindling-port: one proxied TCP connection into a persistent sandbox's network namespace.
 *
 *   kindling-port PORT IDLE_MS CONNECT_TIMEOUT_MS      (fd 3: an open /proc/PID/ns/net of the sandbox)
 *   kindling-port PORT IDLE_MS CONNECT_TIMEOUT_MS --in-sandbox
 *
 * The second form is for the gvisor executor: there the sandbox's sockets live in gVisor's own network stack, not in
 * a host namespace, so this same (statically linked) program is started inside the sandbox by `runsc exec`, as the
 * sandbox's user, and connects from there; it joins nothing and its stdin/stdout are the server's pipes.
 *
 * Joins the network namespace given as fd 3 (opened by the server when the sandbox started, before any of the
 * tenant's code ran: nothing the sandbox's processes do later changes which namespace this is), closes it, drops to
 * uid/gid 65534 without supplementary groups and with no-new-privs, then connects to 127.0.0.1:PORT (then [::1]:PORT
 * if refused) and relays: stdin -> socket, socket -> stdout, each direction through its own buffer, so that
 * backpressure on one side stops reading from the other (and only that direction). The process never joins any other
 * namespace, never listens, and never resolves a name: the only address it ever connects to is the sandbox's loopback.
 *
 * Report on stderr, one line, before any byte is relayed: "ok", or "refused", "timeout", "error TEXT".
 * Exit status: 0 done (both directions ended); 2 nothing listening (refused); 3 connect timed out; 4 idle for IDLE_MS;
 * 1 usage or system error. It dies with the server (PDEATHSIG) and on SIGKILL from it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

enum { NETNS_FD = 3, EXIT_DONE = 0, EXIT_FAILED = 1, EXIT_REFUSED = 2, EXIT_TIMEOUT = 3, EXIT_IDLE = 4 };
#define BUF_BYTES (64 * 1024)
#define NOBODY 65534

static void report(const char *line) {
  size_t n = strlen(line);
  while (n > 0) {
    ssize_t w = write(2, line, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    line += w;
    n -= (size_t)w;
  }
}

static int fail(const char *what) {
  char line[256];
  snprintf(line, sizeof line, "error %s: %s\n", what, strerror(errno));
  report(line);
  return EXIT_FAILED;
}

static long parse(const char *text, long min, long max) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || end == text || v < min || v > max) return -1;
  return v;
}

/* Non-blocking connect with a deadline; returns the socket, or -1 with errno (ETIMEDOUT when the deadline passed). */
static int connect_to(int family, int port, int timeout_ms) {
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int r;
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r = connect(fd, (struct sockaddr *)&a, sizeof a);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    r = connect(fd, (struct sockaddr *)&a, sizeof a);
  }
  if (r == 0) return fd;
  if (errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  for (;;) {
    r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    break;
  }
  if (r == 0) {
    close(fd);
    errno = ETIMEDOUT;
    return -1;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err != 0) {
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

struct lane {
  int from, to;
  char buf[BUF_BYTES];
  size_t len, off;
  int eof;  /* read side ended */
  int done; /* eof and everything written, write side shut */
};

static void finish(struct lane *l, int sock) {
  if (l->done) return;
  l->done = 1;
  if (l->to == sock) shutdown(sock, SHUT_WR);
  else close(l->to);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  int in_sandbox = argc == 5 && strcmp(argv[4], "--in-sandbox") == 0;
  if (in_sandbox) argc = 4;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Inside gVisor the parent is no process of the sandbox (runsc exec): the pipes ending tell of the server's end. */
  if (!in_sandbox && getppid() == 1) return EXIT_FAILED;
  if (argc != 4) {
    report("error usage: kindling-port PORT IDLE_MS CONNECT_TIMEOUT_MS (fd 3: the sandbox's network namespace)\n");
    return EXIT_FAILED;
  }
  long port = parse(argv[1], 1, 65535), idle_ms = parse(argv[2], 1, 86400000L), connect_ms = parse(argv[3], 1, 600000L);
  if (port < 0 || idle_ms < 0 || connect_ms < 0) {
    report("error bad arguments\n");
    return EXIT_FAILED;
  }
  if (!in_sandbox) {
    if (setns(NETNS_FD, CLONE_NEWNET) != 0) return fail("setns");
    close(NETNS_FD);
  }
  if (geteuid() == 0) {
    if (setgroups(0, NULL) != 0 || setresgid(NOBODY, NOBODY, NOBODY) != 0 || setresuid(NOBODY, NOBODY, NOBODY) != 0) return fail("dropping privileges");
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("no_new_privs");

  int sock = connect_to(AF_INET, (int)port, (int)connect_ms);
  if (sock < 0 && errno == ECONNREFUSED) sock = connect_to(AF_INET6, (int)port, (int)connect_ms);
  if (sock < 0) {
    if (errno == ECONNREFUSED || errno == EADDRNOTAVAIL || errno == ENETUNREACH || errno == EAFNOSUPPORT) {
      report("refused\n");
      return EXIT_REFUSED;
    }
    if (errno == ETIMEDOUT) {
      report("timeout\n");
      return EXIT_TIMEOUT;
    }
    return fail("connect");
  }
  report("ok\n");
  close(2);

  for (int fd = 0; fd <= 1; fd++) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return EXIT_FAILED;
  }
  static struct lane up = {.from = 0}, down = {.to = 1};
  up.to = sock;
  down.from = sock;
  struct lane *lanes[2] = {&up, &down};
  while (!(up.done && down.done)) {
    struct pollfd p[4];
    struct lane *owner[4];
    int writing[4];
    int n = 0;
    for (int i = 0; i < 2; i++) {
      struct lane *l = lanes[i];
      if (l->done) continue;
      if (l->len > l->off) {
        p[n] = (struct pollfd){.fd = l->to, .events = POLLOUT};
        owner[n] = l;
        writing[n++] = 1;
      } else if (!l->eof) {
        p[n] = (struct pollfd){.fd = l->from, .events = POLLIN};
        owner[n] = l;
        writing[n++] = 0;
      }
    }
    int r = poll(p, (nfds_t)n, (int)idle_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return EXIT_FAILED;
    }
    if (r == 0) return EXIT_IDLE;
    for (int i = 0; i < n; i++) {
      if (p[i].revents == 0) continue;
      struct lane *l = owner[i];
      if (writing[i]) {
        ssize_t w = write(l->to, l->buf + l->off, l->len - l->off);
        if (w < 0) {
          if (errno == EAGAIN || errno == EINTR) continue;
          return EXIT_DONE; /* the reader went away: nothing more can be delivered */
        }
        l->off += (size_t)w;
        if (l->off == l->len) l->off = l->len = 0;
      } else {
        ssize_t got = read(l->from, l->buf, sizeof l->buf);
        if (got < 0) {
          if (errno == EAGAIN || errno == EINTR) continue;
          got = 0; /* a reset reads as the end */
        }
        if (got == 0) l->eof = 1;
        else l->len = (size_t)got, l->off = 0;
      }
      if (l->eof && l->len == l->off) finish(l, sock);
    }
  }
  return EXIT_DONE;
}

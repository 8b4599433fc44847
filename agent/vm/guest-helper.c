/*
 * kindling-guest-helper: the two things the guest agent (node) cannot do itself, built statically on the host
 * (cc -static) and put on the agent disk by src/executors/microvm/assets.ts.
 *
 *   kindling-guest-helper reseed
 *       Reads up to 512 random bytes from stdin (sent by the host right after a snapshot restore), adds them to the
 *       kernel's input pool with RNDADDENTROPY and forces a CRNG reseed with RNDRESEEDCRNG, so that every VM restored
 *       from one snapshot produces different random numbers from then on. Exit 0 = reseeded; 2 = only mixed in.
 *
 *   kindling-guest-helper vsock-bridge PORT
 *   kindling-guest-helper unix-bridge PATH      (the same relay on a unix socket: lets the host test it)
 *       Listens on AF_VSOCK port PORT (any CID) and relays one connection at a time between it and stdin/stdout
 *       (the agent's pipes), like `socat VSOCK-LISTEN:PORT,fork STDIO` without the fork. When the host side goes away
 *       (or a snapshot restore resets vsock), it accepts the next connection; the agent's stream stays the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static int reseed(void) {
  struct {
    struct rand_pool_info info;
    unsigned char bytes[512];
  } seed;
  ssize_t got = 0, n;
  while (got < (ssize_t)sizeof seed.bytes && (n = read(0, seed.bytes + got, sizeof seed.bytes - (size_t)got)) > 0) got += n;
  if (got <= 0) {
    fprintf(stderr, "reseed: no bytes on stdin\n");
    return 1;
  }
  int fd = open("/dev/urandom", O_WRONLY);
  if (fd < 0) {
    perror("reseed: /dev/urandom");
    return 1;
  }
  seed.info.entropy_count = (int)got * 8;
  seed.info.buf_size = (int)got;
  int rc = 0;
  if (ioctl(fd, RNDADDENTROPY, &seed.info) != 0) {
    perror("reseed: RNDADDENTROPY");
    (void)!write(fd, seed.bytes, (size_t)got); /* at least mix them in */
    rc = 2;
  }
  if (ioctl(fd, RNDRESEEDCRNG) != 0) {
    perror("reseed: RNDRESEEDCRNG");
    rc = 2;
  }
  close(fd);
  return rc;
}

static int bridge(int listener) {
  char buf[65536];
  signal(SIGPIPE, SIG_IGN);
  if (listen(listener, 4) != 0) {
    perror("bridge: listen");
    return 1;
  }
  for (;;) {
    /* No host connected: wait for one, and drain what the agent writes meanwhile (its replies to a host that is gone
       are lost either way); the agent closing its end ends the helper. */
    struct pollfd idle[2] = {{.fd = listener, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    if (poll(idle, 2, -1) < 0) {
      if (errno == EINTR) continue;
      perror("bridge: poll");
      return 1;
    }
    if (idle[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (read(0, buf, sizeof buf) <= 0) return 0;
      continue;
    }
    if (!(idle[0].revents & POLLIN)) continue;
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("bridge: accept");
      return 1;
    }
    struct pollfd fds[2] = {{.fd = conn, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    for (;;) {
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = read(conn, buf, sizeof buf);
        if (n <= 0) break; /* host gone or vsock reset: accept the next connection */
        if (write_all(1, buf, (size_t)n) != 0) return 0; /* the agent is gone */
      }
      if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) return 0; /* the agent is gone */
        if (write_all(conn, buf, (size_t)n) != 0) break; /* frames to a dead connection are lost, like the host's */
      }
    }
    close(conn);
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "reseed") == 0) return reseed();
  if (argc >= 3 && strcmp(argv[1], "vsock-bridge") == 0) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[2]), .svm_cid = VMADDR_CID_ANY};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
      perror("vsock-bridge: socket/bind");
      return 1;
    }
    return bridge(fd);
  }
  if (argc >= 3 && strcmp(argv[1], "unix-bridge") == 0) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[2], sizeof addr.sun_path - 1);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
      perror("unix-bridge: socket/bind");
      return 1;
    }
    return bridge(fd);
  }
  fprintf(stderr, "usage: %s reseed | vsock-bridge PORT | unix-bridge PATH\n", argv[0]);
  return 64;
}

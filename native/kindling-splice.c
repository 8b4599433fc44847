/*
 * kindling-splice: moves a large HTTP body between a client's TCP socket and a program's stdio with splice(2), so that
 * the bytes never enter the server's JavaScript heap (the server keeps the headers, the limits and the result).
 *
 *   kindling-splice in BYTES IDLE_MS
 *                              the request body: the head the server already read (fd 6, until EOF), then exactly
 *                              BYTES more from the client socket (fd 3), into the program's stdin (fd 4). When the
 *                              program stops reading (EPIPE), the rest of the body is still read and dropped, so that
 *                              the client gets its answer instead of a reset connection.
 *   kindling-splice out IDLE_MS
 *                              the response body: the program's stdout (fd 3) to the client socket (fd 4) as HTTP/1.1
 *                              chunks, until end of file. The server wrote the head (and the start of the body)
 *                              before: nothing is sent until fd 6 (the gate) reaches end of file, which the server
 *                              closes once its own writes are out. It writes the last chunk and the trailers after.
 *
 * The descriptors are shared with the server (same open file descriptions): this program never changes their flags
 * (they are non-blocking, and waits go through poll). Descriptors 0-2 are not used because libuv makes a child's
 * 0-2 blocking, which would make the server's own socket blocking too.
 *
 * Report (fd 5), one line each: `in`: "closed N" as soon as the program closed its stdin after N bytes (the relay goes
 * on dropping the rest of the body), else "delivered N" at the end; `out`: "sent N" at the end.
 * Exit status: 0 done; 2 the client went away (end of file or reset before the end, or a failed write to it);
 * 3 the client was idle for longer than the limit; 1 usage or system error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { SRC = 3, DST = 4, REPORT = 5, HEAD = 6 };
enum { EXIT_DONE = 0, EXIT_FAILED = 1, EXIT_CLIENT_GONE = 2, EXIT_CLIENT_IDLE = 3 };
#define PIPE_BYTES (1 << 20)

/* How long the client may send nothing (in) or accept nothing (out) before the relay gives up on it (IDLE_MS). */
static int idle_ms;

/*
 * When bytes last moved anywhere (CLOCK_MONOTONIC, ms). A wait on the client ends once nothing has moved for idle_ms:
 * also when poll() keeps reporting a descriptor ready while nothing can move.
 */
static long long last_progress_ms;

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/*
 * Waits for `events` on `fd`; returns 0 when ready, -1 once the client has been idle for idle_ms (`client` set; else
 * it waits as long as it takes: the program's side is bounded by its timeout, which closes its end).
 */
static int wait_for(int fd, short events, int client) {
  struct pollfd p = {.fd = fd, .events = events};
  for (;;) {
    int timeout = -1;
    if (client) {
      long long left = last_progress_ms + idle_ms - now_ms();
      if (left <= 0) return -1;
      timeout = (int)left;
    }
    int r = poll(&p, 1, timeout);
    if (r > 0) return 0;
    if (r == 0) continue; /* the deadline check above decides */
    if (errno != EINTR) return 0; /* let the next call report the real error */
  }
}

/* Sleeps a little: a descriptor reported ready but nothing could move (see the urgent-data case in copy()). */
static void back_off(void) {
  struct timespec t = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
  nanosleep(&t, NULL);
}

static int make_pipe(int p[2]) {
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
  fcntl(p[1], F_SETPIPE_SZ, PIPE_BYTES); /* best effort: a smaller pipe only means more calls */
  return 0;
}

struct sink {
  int fd;      /* DST, or /dev/null once the program stopped reading */
  int broken;  /* the program closed its stdin */
  unsigned long long delivered;
};

/* Moves what is in the pipe (`*inpipe` bytes) on to the sink; returns 1 on progress, 0 when it would block. */
static int drain_pipe(int pipe_out, unsigned long long *inpipe, struct sink *sink) {
  ssize_t n = splice(pipe_out, NULL, sink->fd, NULL, *inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n > 0) {
    *inpipe -= (unsigned long long)n;
    if (!sink->broken) sink->delivered += (unsigned long long)n;
    return 1;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (sink->broken) return -1;
  /* EPIPE / ECONNRESET: the program is done with its input. What is left is read and dropped. */
  sink->broken = 1;
  dprintf(REPORT, "closed %llu\n", sink->delivered);
  sink->fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  return sink->fd < 0 ? -1 : 1;
}

/* Copies from `src` to the sink through a pipe: `limit` bytes, or until end of file when `limit` is 0. */
static int copy(int src, int is_client, unsigned long long limit, struct sink *sink) {
  int p[2];
  if (make_pipe(p) < 0) return EXIT_FAILED;
  unsigned long long left = limit, inpipe = 0;
  int eof = 0, status = EXIT_DONE, woke_readable = 0;
  while ((!eof && (limit == 0 || left > 0)) || inpipe > 0) {
    int progress = 0;
    if (!eof && (limit == 0 || left > 0)) {
      size_t want = PIPE_BYTES;
      if (limit != 0 && left < want) want = (size_t)left;
      ssize_t n = splice(src, NULL, p[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0 && errno == EAGAIN && woke_readable && inpipe == 0) {
        /*
         * poll() said readable, splice moved nothing: TCP urgent data stops splice at its mark for good. recv() steps
         * over the urgent byte (as node's reads do); the few bytes go through a buffer into the empty pipe (16 KiB
         * always fit). Nothing readable at all: back off instead of spinning.
         */
        char buf[16384];
        n = recv(src, buf, want < sizeof buf ? want : sizeof buf, MSG_DONTWAIT);
        if (n > 0 && write(p[1], buf, (size_t)n) != n) {
          status = EXIT_FAILED;
          break;
        }
        if (n < 0 && errno == EAGAIN) back_off();
      }
      woke_readable = 0;
      if (n > 0) {
        left -= (unsigned long long)n;
        inpipe += (unsigned long long)n;
        progress = 1;
        last_progress_ms = now_ms();
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        eof = 1;
        if (limit != 0) status = EXIT_CLIENT_GONE; /* the body ended before its declared length */
      }
    }
    if (inpipe > 0) {
      int r = drain_pipe(p[0], &inpipe, sink);
      if (r < 0) { status = EXIT_FAILED; break; }
      if (r > 0) {
        progress = 1;
        last_progress_ms = now_ms();
      }
    }
    if (progress) continue;
    /* Nothing moved: wait for the side that holds things up (with bytes in the pipe, the sink; else the source). */
    if (inpipe > 0) {
      wait_for(sink->fd, POLLOUT, 0);
    } else if (wait_for(src, POLLIN, is_client) < 0) {
      status = EXIT_CLIENT_IDLE;
      break;
    } else {
      woke_readable = 1;
    }
  }
  close(p[0]);
  close(p[1]);
  return status;
}

static int relay_in(unsigned long long bytes) {
  struct sink sink = {.fd = DST, .broken = 0, .delivered = 0};
  int status = copy(HEAD, 0, 0, &sink);
  if (status == EXIT_DONE && bytes > 0) status = copy(SRC, 1, bytes, &sink);
  if (!sink.broken) dprintf(REPORT, "delivered %llu\n", sink.delivered);
  return status;
}

static int send_all(const char *buf, size_t len, int more) {
  while (len > 0) {
    ssize_t n = send(DST, buf, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
      last_progress_ms = now_ms();
    } else if (n < 0 && errno == EAGAIN) {
      if (wait_for(DST, POLLOUT, 1) < 0) return EXIT_CLIENT_IDLE;
    } else if (!(n < 0 && errno == EINTR)) {
      return EXIT_CLIENT_GONE;
    }
  }
  return EXIT_DONE;
}

/* Blocks until the server closes the gate (end of file): its writes to the client come first. */
static void wait_gate(void) {
  char buf[64];
  for (;;) {
    ssize_t n = read(HEAD, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return;
    if (n < 0 && errno == EAGAIN) wait_for(HEAD, POLLIN, 0);
  }
}

static int relay_out(void) {
  wait_gate();
  last_progress_ms = now_ms();
  int p[2];
  if (make_pipe(p) < 0) return EXIT_FAILED;
  unsigned long long sent = 0;
  int owe_crlf = 0, eof = 0, status = EXIT_DONE;
  while (!eof && status == EXIT_DONE) {
    /* Fill the pipe with what the program has written so far (at least one byte): that is the next chunk. */
    size_t chunk = 0;
    while (chunk < PIPE_BYTES) {
      ssize_t n = splice(SRC, NULL, p[1], NULL, PIPE_BYTES - chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        chunk += (size_t)n;
        last_progress_ms = now_ms();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || errno != EAGAIN) { eof = 1; break; } /* a broken stdout ends the output like end of file */
      if (chunk > 0) break;
      wait_for(SRC, POLLIN, 0);
    }
    if (chunk == 0) break;
    char head[32];
    int len = snprintf(head, sizeof head, "%s%zx\r\n", owe_crlf ? "\r\n" : "", chunk);
    status = send_all(head, (size_t)len, 1);
    while (status == EXIT_DONE && chunk > 0) {
      /* No SPLICE_F_MORE: a program that writes a line now and then must not see it held back by the kernel. */
      ssize_t n = splice(p[0], NULL, DST, NULL, chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        chunk -= (size_t)n;
        sent += (unsigned long long)n;
        last_progress_ms = now_ms();
      } else if (n < 0 && errno == EAGAIN) {
        if (wait_for(DST, POLLOUT, 1) < 0) status = EXIT_CLIENT_IDLE;
      } else if (!(n < 0 && errno == EINTR)) {
        status = EXIT_CLIENT_GONE;
      }
    }
    owe_crlf = 1;
  }
  if (status == EXIT_DONE && owe_crlf) status = send_all("\r\n", 2, 0);
  dprintf(REPORT, "sent %llu\n", sent);
  return status;
}

/* A decimal number, nothing else. */
static int parse(const char *text, unsigned long long *value) {
  char *end;
  errno = 0;
  if (text[0] < '0' || text[0] > '9') return -1;
  *value = strtoull(text, &end, 10);
  return errno != 0 || *end != '\0' ? -1 : 0;
}

int main(int argc, char **argv) {
  /* The server may die without killing us (kill -9): then there is nobody to relay for. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGPIPE, SIG_IGN);
  last_progress_ms = now_ms();
  unsigned long long bytes = 0, idle = 0;
  if (argc == 4 && strcmp(argv[1], "in") == 0 && parse(argv[2], &bytes) == 0 && parse(argv[3], &idle) == 0 && idle > 0 && idle < 1ULL << 30) {
    idle_ms = (int)idle;
    return relay_in(bytes);
  }
  if (argc == 3 && strcmp(argv[1], "out") == 0 && parse(argv[2], &idle) == 0 && idle > 0 && idle < 1ULL << 30) {
    idle_ms = (int)idle;
    return relay_out();
  }
  fprintf(stderr, "usage: kindling-splice in BYTES IDLE_MS | out IDLE_MS   (descriptors: see the source)\n");
  return EXIT_FAILED;
}

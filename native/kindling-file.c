/*
 * kindling-file: writes or reads one file of a persistent sandbox straight on its disk on the host (the directory bwrap
 * binds at the sandbox's /work or /tmp), so that a file upload or download does not go through a FIFO and `cat`
 * inside the sandbox (src/executors/sandbox/direct-files.ts).
 *
 *   kindling-file write ROOT RELPATH UID GID   stdin -> the file (parents made 0755, the file 0644, truncated first)
 *   kindling-file read  ROOT RELPATH UID GID   the file -> stdout
 *
 * ROOT is opened as root (the server's path, root's directories); then the process drops to the sandbox's uid and gid
 * for good (no supplementary groups, no capabilities left), so permissions and owners are the sandbox user's, and
 * the disk quota of its subvolume (btrfs qgroup, EDQUOT) applies as it does to the sandbox's own processes.
 *
 * RELPATH is resolved one component at a time with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) from ROOT: no ".." can climb out, and ANY symlink on the way (the final
 * component too) stops the resolution (ELOOP), as does a mount point. Such paths, and every other case this program
 * does not handle (a directory, a FIFO, a missing file to read, a permission error), are answered "fall back": the
 * server then does the operation as before, inside the sandbox (its mount namespace, its uid), where a symlink leads
 * to the sandbox's own files. So this program never follows a link the sandbox's user planted.
 *
 * Status (fd 3), one line each:
 *   "f ERRNO"   not handled here; nothing was read from stdin (write) or written to stdout (read); exit 3
 *   "o SIZE"    the file is open (read: its size; write: 0): the copy starts
 *   "d SIZE"    done: the file's size (write) or the bytes sent (read); exit 0
 *   "e ERRNO"   the copy failed (write: the partial file was removed); exit 1. EPIPE on stdout (read: the reader went
 *               away) exits 2 without a line.
 * Usage errors exit 64.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { STATUS = 3 };
enum { EXIT_DONE = 0, EXIT_FAILED = 1, EXIT_GONE = 2, EXIT_FALLBACK = 3, EXIT_USAGE = 64 };
#define BUF_BYTES (1 << 20)
#define RESOLVE_FLAGS (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

static void status(const char *kind, long long value) {
  char line[64];
  int n = snprintf(line, sizeof line, "%s %lld\n", kind, value);
  ssize_t ignored = write(STATUS, line, (size_t)n);
  (void)ignored;
}

static int open_beneath(int dirfd, const char *name, int flags, mode_t mode) {
  struct open_how how = {.flags = (unsigned long long)(flags | O_CLOEXEC | O_NOFOLLOW), .mode = mode, .resolve = RESOLVE_FLAGS};
  int fd;
  do fd = (int)syscall(SYS_openat2, dirfd, name, &how, sizeof how);
  while (fd < 0 && errno == EINTR);
  return fd;
}

static int fall_back(int err) {
  status("f", err);
  return EXIT_FALLBACK;
}

/* Writes all of buf to fd; 0, or -1 with errno. */
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

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: kindling-file write|read ROOT RELPATH UID GID   (status on fd 3: see the source)\n");
    return EXIT_USAGE;
  }
  int writing = strcmp(argv[1], "write") == 0;
  if (!writing && strcmp(argv[1], "read") != 0) return EXIT_USAGE;
  char *end;
  long uid = strtol(argv[4], &end, 10);
  if (*end != '\0' || uid <= 0) return EXIT_USAGE;
  long gid = strtol(argv[5], &end, 10);
  if (*end != '\0' || gid <= 0) return EXIT_USAGE;
  signal(SIGPIPE, SIG_IGN);

  int dirfd = open(argv[2], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dirfd < 0) return fall_back(errno);
  /* For good: no way back to root from here. */
  if (setgroups(0, NULL) != 0 || setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0 || setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) {
    perror("kindling-file: dropping to the sandbox's uid");
    return EXIT_FAILED;
  }
  umask(022);

  /* Components: non-empty, never "." or ".." (the server sends a normalized relative path; checked again here). */
  char *rel = argv[3];
  if (rel[0] == '\0' || rel[0] == '/') return EXIT_USAGE;
  char *name = rel;
  for (char *slash; (slash = strchr(name, '/')) != NULL; name = slash + 1) {
    *slash = '\0';
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return EXIT_USAGE;
    if (writing && mkdirat(dirfd, name, 0777) != 0 && errno != EEXIST) return fall_back(errno);
    int next = open_beneath(dirfd, name, O_PATH | O_DIRECTORY, 0);
    if (next < 0) return fall_back(errno);
    close(dirfd);
    dirfd = next;
  }
  if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return EXIT_USAGE;

  /* O_NONBLOCK: a FIFO planted there must not block the open; anything but a regular file is left to the fallback. */
  int fd = open_beneath(dirfd, name, (writing ? O_WRONLY | O_CREAT : O_RDONLY) | O_NONBLOCK, writing ? 0666 : 0);
  if (fd < 0) return fall_back(errno);
  struct stat st;
  if (fstat(fd, &st) != 0) return fall_back(errno);
  if (!S_ISREG(st.st_mode)) return fall_back(S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
  if (fcntl(fd, F_SETFL, 0) != 0) return fall_back(errno);
  if (writing && ftruncate(fd, 0) != 0) return fall_back(errno);
  status("o", writing ? 0 : (long long)st.st_size);

  char *buf = malloc(BUF_BYTES);
  if (buf == NULL) return EXIT_FAILED;
  int in = writing ? 0 : fd;
  int out = writing ? fd : 1;
  long long total = 0;
  for (;;) {
    ssize_t n = read(in, buf, BUF_BYTES);
    if (n == 0) break;
    int err = 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
    } else if (write_all(out, buf, (size_t)n) != 0) {
      err = errno;
    }
    if (err != 0) {
      if (!writing && err == EPIPE) return EXIT_GONE;
      if (writing) {
        /* Nothing is kept of a write that failed (the disk is full): as the in-sandbox path does. */
        if (ftruncate(fd, 0) != 0) { /* the unlink below is what counts */ }
        unlinkat(dirfd, name, 0);
      }
      status("e", err);
      return EXIT_FAILED;
    }
    total += n;
  }
  if (writing) {
    /* Some file systems report a full disk only when the file is closed. */
    if (close(fd) != 0) {
      int err = errno;
      unlinkat(dirfd, name, 0);
      status("e", err);
      return EXIT_FAILED;
    }
  }
  status("d", total);
  return EXIT_DONE;
}

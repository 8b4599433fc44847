/*
 * kindling-btrfs: the btrfs operations of persistent sandboxes' storage (src/executors/sandbox/storage-btrfs.ts), as
 * ioctls from one long-lived process instead of one btrfs(8) process per operation: the ioctl of a subvolume snapshot
 * takes about 3 ms here, starting btrfs(8) for it about 20 ms.
 *
 * Reads one request per line on stdin and answers each, in order, with one line on stdout: "ok" or "err ERRNO TEXT".
 *   subvol DIR NAME              creates the subvolume DIR/NAME
 *   snap SRC DIR NAME ro|rw      snapshots the subvolume SRC as DIR/NAME (ro: read-only)
 *   delete DIR NAME              deletes the subvolume DIR/NAME
 *   limit PATH BYTES             limits what the subvolume at PATH refers to (its qgroup's max_rfer) to BYTES
 *   quota PATH                   enables quotas on the file system of PATH
 * Paths are absolute and contain no whitespace (the server builds them from ids of [A-Za-z0-9_-]); DIR and SRC are
 * opened with O_NOFOLLOW. It exits at the end of its stdin, and dies with the server (PDEATHSIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/btrfs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

static int open_dir(const char *path) { return open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); }

static int set_name(char *dst, size_t size, const char *name) {
  if (name == NULL || strlen(name) == 0 || strlen(name) >= size || strchr(name, '/') != NULL) return -EINVAL;
  strcpy(dst, name);
  return 0;
}

static int op_subvol(const char *dir, const char *name) {
  struct btrfs_ioctl_vol_args_v2 args;
  memset(&args, 0, sizeof args);
  int r = set_name(args.name, sizeof args.name, name);
  if (r < 0) return r;
  int fd = open_dir(dir);
  if (fd < 0) return -errno;
  r = ioctl(fd, BTRFS_IOC_SUBVOL_CREATE_V2, &args) < 0 ? -errno : 0;
  close(fd);
  return r;
}

static int op_snap(const char *src, const char *dir, const char *name, const char *mode) {
  struct btrfs_ioctl_vol_args_v2 args;
  memset(&args, 0, sizeof args);
  int r = set_name(args.name, sizeof args.name, name);
  if (r < 0) return r;
  if (mode == NULL || (strcmp(mode, "ro") != 0 && strcmp(mode, "rw") != 0)) return -EINVAL;
  if (strcmp(mode, "ro") == 0) args.flags = BTRFS_SUBVOL_RDONLY;
  int sfd = open_dir(src);
  if (sfd < 0) return -errno;
  int fd = open_dir(dir);
  if (fd < 0) {
    r = -errno;
    close(sfd);
    return r;
  }
  args.fd = sfd;
  r = ioctl(fd, BTRFS_IOC_SNAP_CREATE_V2, &args) < 0 ? -errno : 0;
  close(fd);
  close(sfd);
  return r;
}

static int op_delete(const char *dir, const char *name) {
  struct btrfs_ioctl_vol_args args;
  memset(&args, 0, sizeof args);
  int r = set_name(args.name, sizeof args.name, name);
  if (r < 0) return r;
  int fd = open_dir(dir);
  if (fd < 0) return -errno;
  r = ioctl(fd, BTRFS_IOC_SNAP_DESTROY, &args) < 0 ? -errno : 0;
  close(fd);
  return r;
}

static int op_limit(const char *path, const char *bytes) {
  if (bytes == NULL) return -EINVAL;
  char *end = NULL;
  errno = 0;
  unsigned long long value = strtoull(bytes, &end, 10);
  if (errno != 0 || end == bytes || *end != '\0') return -EINVAL;
  struct btrfs_ioctl_qgroup_limit_args args;
  memset(&args, 0, sizeof args);
  args.qgroupid = 0; /* 0: the subvolume the descriptor is in */
  args.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER;
  args.lim.max_rfer = value;
  int fd = open_dir(path);
  if (fd < 0) return -errno;
  int r = ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &args) < 0 ? -errno : 0;
  close(fd);
  return r;
}

static int op_quota(const char *path) {
  struct btrfs_ioctl_quota_ctl_args args;
  memset(&args, 0, sizeof args);
  args.cmd = BTRFS_QUOTA_CTL_ENABLE;
  int fd = open_dir(path);
  if (fd < 0) return -errno;
  int r = ioctl(fd, BTRFS_IOC_QUOTA_CTL, &args) < 0 ? -errno : 0;
  close(fd);
  return r;
}

static int run(char *line) {
  char *words[6] = {0};
  int n = 0;
  for (char *save = NULL, *word = strtok_r(line, " \t\n", &save); word != NULL && n < 6; word = strtok_r(NULL, " \t\n", &save)) words[n++] = word;
  if (n == 0) return -EINVAL;
  /* DIR, SRC and PATH are absolute: the first argument always, the second of snap too */
  if (n < 2 || words[1][0] != '/' || (strcmp(words[0], "snap") == 0 && (n < 3 || words[2][0] != '/'))) return -EINVAL;
  if (strcmp(words[0], "subvol") == 0 && n == 3) return op_subvol(words[1], words[2]);
  if (strcmp(words[0], "snap") == 0 && n == 5) return op_snap(words[1], words[2], words[3], words[4]);
  if (strcmp(words[0], "delete") == 0 && n == 3) return op_delete(words[1], words[2]);
  if (strcmp(words[0], "limit") == 0 && n == 3) return op_limit(words[1], words[2]);
  if (strcmp(words[0], "quota") == 0 && n == 2) return op_quota(words[1]);
  return -EINVAL;
}

int main(void) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1; /* the server is gone already */
  setvbuf(stdout, NULL, _IOLBF, 0);
  char *line = NULL;
  size_t size = 0;
  while (getline(&line, &size, stdin) >= 0) {
    int r = run(line);
    if (r == 0) printf("ok\n");
    else printf("err %d %s\n", -r, strerror(-r));
  }
  free(line);
  return 0;
}

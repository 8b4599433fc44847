#!/usr/bin/env bash
# Prepares a Debian 12 host for Kindling, idempotently (a second run takes a few seconds):
#   Debian packages -> dockerd running -> npm dependencies -> TypeScript + console build -> runtime images.
# Run as root on a fresh machine. Each step is skipped when already done:
#   - apt-get update/install only when a package is missing;
#   - dockerd is started (log /var/log/kindling-dockerd.log, pid /run/kindling-dockerd.pid) only when
#     /var/run/docker.sock does not answer;
#   - npm ci only when node_modules is missing or older than package-lock.json;
#   - images are rebuilt only when their recipe changed (kindling images build caches by recipe hash).
set -euo pipefail
cd "$(dirname "$0")/.."

# One set-up at a time on this checkout (two terminals, or start.sh while the tests run): npm ci and the image build
# must not race each other.
if [ -z "${KINDLING_SETUP_LOCKED:-}" ] && command -v flock >/dev/null; then
  export KINDLING_SETUP_LOCKED=1
  # -o: the lock fd is not inherited by what the script starts (dockerd would hold the lock for its whole life).
  exec flock -o "$PWD/.setup.lock" bash "$0" "$@"
fi

# python3-pip-whl: the pip wheel that builds of python bundles with requirements.txt run (the images carry no pip).
# nats-server: the cluster mode's JetStream (the tests start their own servers); prometheus: its promtool checks the
# shipped alert rules, and a test scrapes a running server with the real Prometheus. Neither runs as a service here.
PACKAGES=(docker.io bubblewrap uidmap mmdebstrap e2fsprogs btrfs-progs iproute2 util-linux ca-certificates curl tar
  debian-archive-keyring qemu-system-x86 qemu-utils chromium iptables gcc libc6-dev python3
  python3-httpx python3-h11 python3-pytest python3-websockets mypy runsc
  python3-pip-whl nats-server prometheus openssl systemd)
DOCKER_SOCK=/var/run/docker.sock
DOCKERD_LOG=/var/log/kindling-dockerd.log
DOCKERD_PIDFILE=/run/kindling-dockerd.pid
DOCKERD_TIMEOUT_S=60

log() { printf '[setup %3ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root; run this script as root"; }

# --- Node.js (not installed here: Debian's is 18, the project needs >= 20.19) -------------------------------------
command -v node >/dev/null || die "node is not installed (need Node.js >= 20.19 and npm)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
  die "node $(node --version) is too old (need >= 20.19)"

# --- Debian packages ---------------------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  need_root "installing ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A third-party source that cannot be reached makes update exit non-zero; the install below still decides.
  apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Docker engine -----------------------------------------------------------------------------------------------
docker_ping() { curl -fsS --max-time 2 --unix-socket "$DOCKER_SOCK" http://d/_ping >/dev/null 2>&1; }
if ! docker_ping; then
  need_root "starting dockerd"
  pid=""
  [ -s "$DOCKERD_PIDFILE" ] && pid="$(cat "$DOCKERD_PIDFILE")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    log "dockerd (pid $pid) is already starting; waiting for it"
  else
    log "starting dockerd (log $DOCKERD_LOG)"
    # setsid: dockerd outlives this script and the terminal; without job control $! is dockerd itself.
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DOCKERD_PIDFILE"
  fi
  deadline=$((SECONDS + DOCKERD_TIMEOUT_S))
  until docker_ping; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$DOCKERD_LOG" >&2 || true
      die "dockerd exited during start-up (see $DOCKERD_LOG)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$DOCKERD_LOG" >&2 || true
      die "dockerd (pid $pid) did not answer on $DOCKER_SOCK within ${DOCKERD_TIMEOUT_S}s (see $DOCKERD_LOG)"
    fi
    sleep 0.5
  done
  log "dockerd is up (pid $pid)"
fi

# --- npm dependencies and build ----------------------------------------------------------------------------------
# npm writes node_modules/.package-lock.json on every install: it is the stamp of the installed tree.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund
fi
log "npm run build"
npm run --silent build

# --- runtime images (rootfs dirs + Docker images) ----------------------------------------------------------------
log "kindling images build --microvm"
# --microvm: ext4 files of every image plus the microvm kernel, initramfs and agent disk (cached by stamp).
node bin/kindling.js images build --microvm
log "done"

#!/usr/bin/env bash
# Everything CI checks: host set-up (packages, dockerd, deps, build, images), lint, type-check, then every compiled
# test file (unit tests in dist/src, integration and e2e tests in dist/test), one file at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
npm run --silent lint
npx tsc -b

# Node 20's --test does not expand globs: list the files. A compiled test whose .ts source is gone (stale dist/) is
# skipped, so a deleted test cannot keep failing or passing.
files=()
while IFS= read -r f; do
  src="${f#dist/}"
  src="${src%.js}.ts"
  if [ -f "$src" ]; then files+=("$f"); else echo "[test] skipping stale $f (no $src)" >&2; fi
done < <(find dist/src dist/test dist/agent -type f -name '*.test.js' 2>/dev/null | sort)
# The SDK builds into its own package's dist/.
while IFS= read -r f; do files+=("$f"); done < <(find sdk/dist -type f -name '*.test.js' 2>/dev/null | sort)
[ "${#files[@]}" -gt 0 ] || { echo "[test] no compiled test files under dist/src or dist/test" >&2; exit 1; }

echo "[test] running ${#files[@]} test files" >&2
# Nothing the tests make may outlive them. Resources that existed before (another server running on this machine) are
# not counted.
kindling_resources() {
  curl -fsS --unix-socket /var/run/docker.sock \
    'http://d/containers/json?all=1&filters=%7B%22label%22%3A%5B%22dev.kindling.managed%3Dtrue%22%5D%7D' 2>/dev/null |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const c of JSON.parse(s||"[]"))console.log("container "+c.Id)})'
  find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -path '*/kindling*/*' 2>/dev/null | sed 's/^/cgroup /'
  pgrep -f 'qemu-system' 2>/dev/null | sed 's/^/qemu pid /' || true
  # The cluster tests start their own nats-server processes and must stop them.
  pgrep -x nats-server 2>/dev/null | sed 's/^/nats-server pid /' || true
}
before_file=$(mktemp)
kindling_resources | sort >"$before_file"

# In CI the machine is set up for these executors and tools (prometheus: promtool and the server, Debian's package): their
# tests must run, never skip.
if [ "${CI:-}" = true ]; then export KINDLING_TEST_REQUIRE="${KINDLING_TEST_REQUIRE:-docker,sandbox,microvm,chromium,prometheus,nats}"; fi

status=0
mkdir -p test-results
# A second lane runs beside the first, one file at a time, and prints its output at the end: the microVM conformance
# suite (QEMU without KVM: ~6 minutes, one VM at a time, its own data dir) and the suites that build images from
# Debian packages (mmdebstrap: ~1 minute per image, mostly waiting on dpkg and the mirror; images are named per
# process, so the lanes never share one). Measured on 2026-12-04: the first lane took 39 minutes with all of them in
# it (custom images 6.7 minutes, function packages 2.5), which left CI too close to its 45. Suites that assert the
# machine's state as a whole (all cgroups, all VMs) stay in the first lane. The other microVM suites (their VMs are
# scoped to their own data dirs) joined on 2026-12-04 when the first lane took 33 of CI's 39 minutes, and the cluster
# servers' suites (their servers have their own data dirs and nats-servers) when they were written. The console suite
# (its own server and browser, 105 s) joined on 2026-12-04 when the first lane took 2,037 s and the second 1,811 s.
side_files=()
for f in dist/src/executors/microvm/conformance.test.js dist/test/custom-images.test.js dist/test/function-packages.test.js \
  dist/src/executors/microvm/persistent.test.js dist/test/e2e-microvm.test.js dist/test/microvm-bundles.test.js \
  dist/test/cluster-serve.test.js dist/test/cluster-security.test.js dist/test/console-cluster.test.js dist/test/console.test.js \
  dist/test/cluster-gateways.test.js dist/test/cluster-shared-state.test.js dist/test/cluster-tenant-slots.test.js \
  dist/test/cluster-shared-usage.test.js dist/test/cluster-artifacts.test.js dist/test/cluster-gateway-lease.test.js \
  dist/test/cluster-partition.test.js; do
  [ -f "$f" ] && side_files+=("$f")
done
side_pid=""
if [ "${#side_files[@]}" -gt 0 ]; then
  rest=()
  for f in "${files[@]}"; do
    keep=1
    for s in "${side_files[@]}"; do [ "$f" = "$s" ] && keep=0; done
    [ "$keep" -eq 1 ] && rest+=("$f")
  done
  files=("${rest[@]}")
  # Then the end-to-end suites of functions, handlers and async invocations again, each server of theirs a cluster
  # gateway in front of a worker process and a nats-server (KINDLING_TEST_TARGET=cluster): the same client, the same
  # results (tests that watch the in-process server's warm pools say why they skip).
  (
    lane=0
    node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
      --test-reporter=./scripts/test-times-reporter.mjs --test-reporter-destination=test-results/test-times-side.txt \
      "${side_files[@]}" || lane=1
    echo "[test] the end-to-end suites against a cluster gateway:"
    KINDLING_TEST_TARGET=cluster node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
      --test-reporter=./scripts/test-times-reporter.mjs --test-reporter-destination=test-results/test-times-cluster-e2e.txt \
      dist/test/e2e-functions.test.js dist/test/e2e-handlers.test.js dist/test/e2e-invocations.test.js || lane=1
    exit "$lane"
  ) >test-results/side.log 2>&1 &
  side_pid=$!
fi
node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=./scripts/test-times-reporter.mjs --test-reporter-destination=test-results/test-times.txt \
  "${files[@]}" || status=$?
if [ -n "$side_pid" ]; then
  side_status=0
  wait "$side_pid" || side_status=$?
  echo "[test] the second lane (${side_files[*]}, then the end-to-end suites against a cluster gateway):" >&2
  cat test-results/side.log
  [ "$side_status" -eq 0 ] || { echo "[test] FAIL: the second lane" >&2; status=1; }
  cat test-results/test-times-side.txt test-results/test-times-cluster-e2e.txt >>test-results/test-times.txt 2>/dev/null || true
fi
# Where the time went, slowest test files first (the whole list is in test-results/test-times.txt).
echo "[test] slowest test files:" >&2
head -n 16 test-results/test-times.txt >&2 || true

# The Python SDK (sdk/python): strict type check, then its tests against a server the session starts. Debian's
# interpreter on purpose: its packages (httpx, pytest, mypy) are the ones setup.sh installs. pytest's exit code 5
# ("no tests collected") is a failure too: a suite that silently vanished must not pass.
/usr/bin/python3 -m mypy --strict sdk/python/kindling || status=1
py_status=0
(cd sdk/python && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests) || py_status=$?
if [ "$py_status" -ne 0 ]; then
  [ "$py_status" -eq 5 ] && echo "[test] FAIL: pytest collected no tests in sdk/python/tests" >&2
  status=1
fi

leaked=$(kindling_resources | sort | comm -13 "$before_file" - || true)
rm -f "$before_file"
if [ -n "$leaked" ]; then
  echo "[test] FAIL: the tests left these behind:" >&2
  echo "$leaked" | head -n 20 >&2
  status=1
else
  echo "[test] nothing left behind (containers, cgroups, VMs)" >&2
fi
exit "$status"

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
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"

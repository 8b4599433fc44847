#!/usr/bin/env bash
# Compiles the native helpers into dist/native (part of `npm run build`). kindling-splice is the data plane of large
# streams (see src/api/stream-relay.ts); without a C compiler the server runs without it (node streams instead) and
# says so at start-up. scripts/setup.sh installs gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist/native/kindling-splice
src=native/kindling-splice.c
mkdir -p dist/native
if [ -x "$out" ] && [ "$out" -nt "$src" ]; then exit 0; fi
if ! command -v cc >/dev/null; then
  echo "build-native: no C compiler (cc); $out is not built and large streams go through node" >&2
  exit 0
fi
cc -O2 -Wall -Wextra -Werror -o "$out.tmp" "$src"
mv "$out.tmp" "$out"

#!/usr/bin/env bash
# Compiles the native helpers into dist/native (part of `npm run build`). kindling-splice is the data plane of large
# streams (see src/api/stream-relay.ts); without a C compiler the server runs without it (node streams instead) and
# says so at start-up. kindling-port relays one proxied connection into a persistent sandbox's network namespace
# (src/executors/sandbox/ports.ts); without it, sandbox ports answer SANDBOX_PORTS_UNAVAILABLE. kindling-btrfs runs
# the btrfs ioctls of persistent sandboxes' storage (src/executors/sandbox/storage-btrfs.ts); without it, their disks
# are ext4 images (storage.ts). kindling-file writes and reads a persistent sandbox's files on its disk on the host
# (src/executors/sandbox/direct-files.ts); without it, those go through a command inside the sandbox. kindling-launch is
# the sandbox executor's launcher (src/executors/sandbox/launcher.ts); without it, a chain of sh, prlimit and setpriv
# does the same with four more execs per sandbox. kindling-supervisor is a persistent sandbox's main process
# (src/executors/sandbox/persistent.ts); without it, a supervisor written in sh. scripts/setup.sh installs gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/native
for name in kindling-splice kindling-port kindling-btrfs kindling-file kindling-launch kindling-supervisor; do
  out=dist/native/$name
  src=native/$name.c
  if [ -x "$out" ] && [ "$out" -nt "$src" ]; then continue; fi
  if ! command -v cc >/dev/null; then
    echo "build-native: no C compiler (cc); $out is not built" >&2
    continue
  fi
  # kindling-port and kindling-supervisor are linked statically: they run inside sandboxes (the gvisor executor's
  # port relay, src/executors/gvisor/ports.ts; every persistent sandbox's supervisor, src/executors/sandbox/
  # persistent.ts), whose image may have another C library or none. Without a static C library the supervisor is
  # not built at all (the sh supervisor is used): a dynamic one would fail in an image of another libc.
  if { [ "$name" = kindling-port ] || [ "$name" = kindling-supervisor ]; } && cc -O2 -Wall -Wextra -Werror -static -o "$out.tmp" "$src" 2>/dev/null; then :
  elif [ "$name" = kindling-supervisor ]; then
    echo "build-native: no static C library; $out is not built (persistent sandboxes use the sh supervisor)" >&2
    continue
  else cc -O2 -Wall -Wextra -Werror -o "$out.tmp" "$src"; fi
  mv "$out.tmp" "$out"
done

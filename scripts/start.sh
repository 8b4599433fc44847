#!/usr/bin/env bash
# Sets the host up (idempotent, fast when already done) and starts the server. Arguments go to `kindling serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The V8 flag: see bin/kindling.js.
exec node --initial-old-space-size=64 bin/kindling.js serve "$@"

#!/usr/bin/env bash
# Sets the host up (idempotent, fast when already done) and starts the server. Arguments go to `kindling serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/kindling.js serve "$@"

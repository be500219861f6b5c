#!/usr/bin/env bash
# Start a single-machine Ray head with every local GPU, for `cluster/submit.sh`. Extra options go to
# `ray start`; give it its own `--temp-dir DIR` and stop exactly this head with
# `cluster/stop_local.sh DIR` (`ray stop` stops every Ray on the machine).
set -euo pipefail

# The number of GPUs nvidia-smi lists; 0 without nvidia-smi or when it fails (no driver loaded).
gpu_count() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo 0
    return
  fi
  # grep -c prints the count, 0 included, exactly once; its status 1 for no match is not an error.
  nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
}

gpus=$(gpu_count)
exec ray start --head --num-gpus="$gpus" --dashboard-host=127.0.0.1 "$@"

#!/usr/bin/env bash
# Start a single-machine Ray head with every local GPU, for `cluster/submit.sh`. Stop it with `ray stop`.
set -euo pipefail
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)
exec ray start --head --num-gpus="$gpus" --dashboard-host=127.0.0.1 "$@"

#!/usr/bin/env bash
# Submit a job file to a Ray cluster: cluster/submit.sh jobs/imagenet_negrefine.toml [--set k=v ...]
# RAY_ADDRESS defaults to a local head started with cluster/local_start.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:?usage: cluster/submit.sh JOB.toml [negrefine-ray run options]}
shift
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
# Ray 2.60 heads started with `ray start` use token authentication; the client reads the same token.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# The driver reserves no CPU and no GPU: its own work (listing, mining, scoring) runs between the
# stages' Ray pools, and a CPU it held for the whole run would be missing from every pool (each stage
# then sizes its pool down, or stops with the numbers when even that does not fit).
exec ray job submit --runtime-env cluster/runtime_env.yaml --entrypoint-num-cpus 0 \
  -- python -m negrefine_ray run "$job" "$@"

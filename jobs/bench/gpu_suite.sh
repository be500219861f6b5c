#!/usr/bin/env bash
# One prepared command for a GPU machine: installs the wheels carried in .whl/, then
# runs the GPU checks (tests/test_gpu.py, pytest -m gpu) and the score, text, filter, image (and GPU
# decode, when jobs/bench/bench_gpu_decode.py exists) benchmarks at real shapes, each part under its
# own timeout inside one overall budget, going on after a failed part; prints one table at the end.
# Raw JSON, logs and the table go to --out (default $OUT, else ./gpu-suite-out). No Ray, no internet.
#
#   bash jobs/bench/gpu_suite.sh                 # on the GPU machine, ~6 min on one H100/H200
#   bash jobs/bench/gpu_suite.sh --dry-run       # every part on CPU at tiny shapes: the wiring
# Options: --out DIR, --budget SECONDS (default 540; dry run 600). Python: $PYTHON, else
# .venv/bin/python if present, else python3. Exit status 1 if any figure failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
REPO=$(pwd)

DRY=0
OUT_DIR=${OUT:-./gpu-suite-out}
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_suite: unknown argument '$1' (use --dry-run, --out DIR, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$BUDGET" ]; then
  if [ "$DRY" = 1 ]; then BUDGET=600; else BUDGET=540; fi
fi
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
mkdir -p "$OUT_DIR/logs" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: > "$OUT_DIR/parts.tsv"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
DEADLINE=$((START + BUDGET))

# part NAME TIMEOUT CMD...: run CMD under min(TIMEOUT, what is left of the budget), log to
# logs/NAME.log, append "name status rc seconds note" to parts.tsv, print one line (and the log's
# tail on failure), never stop the suite.
part() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    printf '%s\tskipped\t-\t0\tsuite budget spent\n' "$name" >> "$OUT_DIR/parts.tsv"
    echo "gpu_suite: $name skipped: the ${BUDGET}-s budget is spent"
    return
  fi
  local t0 rc status note=""
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT_DIR/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; note="after ${limit} s" ;;
    *) status=fail; note="exit $rc" ;;
  esac
  local secs=$(($(date +%s) - t0))
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$note" >> "$OUT_DIR/parts.tsv"
  echo "gpu_suite: $name $status in ${secs} s (limit ${limit} s, log logs/$name.log)"
  if [ "$status" != ok ]; then tail -n 8 "$OUT_DIR/logs/$name.log" | sed 's/^/    /'; fi
}

# The carried wheels (open_clip_torch and what it lacks, pytest): into a site folder first on the
# path, with the checkout itself, so negrefine_ray imports without being installed.
SITE=${GPU_SUITE_SITE:-/tmp/site}
[ "$DRY" = 1 ] && SITE=$OUT_DIR/site
if compgen -G ".whl/*.whl" > /dev/null; then
  part wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_suite: no .whl/*.whl: using the packages $PY already has"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

# The judge's tokenizer: SmolLM2's ChatML tokenizer carried in .whl/ (no internet on the GPU machine;
# it stands in for Qwen's, as in bench_filter.py); the dry run makes a synthetic one if it is absent.
TOKENIZER=.whl/tokenizer-smollm2
if [ ! -f "$TOKENIZER/tokenizer.json" ] && [ "$DRY" = 1 ]; then
  TOKENIZER=$OUT_DIR/tokenizer-synthetic
  part tokenizer 120 "$PY" jobs/bench/gpu_suite.py tokenizer "$TOKENIZER"
fi

B=jobs/bench
if [ "$DRY" = 1 ]; then
  part env 60 "$PY" $B/gpu_suite.py env --out "$OUT_DIR/env.json"
  part checks 120 env NEGREFINE_GPU_FIGURES="$OUT_DIR/checks.json" "$PY" -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_gpu.py --junitxml "$OUT_DIR/checks.xml"
  part score 120 "$PY" $B/score_stage.py --images 3000 --settings driver:cpu,driver:auto \
    --out "$OUT_DIR/score.json"
  part text 150 "$PY" $B/bench_text.py --arch nr-tiny-vit --device cpu --precision fp32 --batch-sizes 256 \
    --sweep-texts 512 --nouns 300 --adjectives 60 --out "$OUT_DIR/text.json"
  part filter 150 "$PY" $B/gpu_suite.py filter-tiny --shape qwen2.5-14b --tokenizer "$TOKENIZER" \
    --device cpu --questions 24 --batch-size 8 --reference-calls 2 --out "$OUT_DIR/filter.json"
  part images 180 "$PY" $B/gpu_suite.py images --arch nr-tiny-vit --device cpu --n-images 24 --n-large 4 \
    --size 160x120 --large-size 320x240 --batch-sizes 8 --precisions fp32 --workers 0 --e2e-batch 8 \
    --seconds 0.2 --out "$OUT_DIR/images.json"
  part glmcm 90 "$PY" $B/glmcm_cost.py --arch nr-tiny-vit --device cpu --batch 4 --labels 50 --seconds 0.3 \
    --rounds 1 --out "$OUT_DIR/glmcm.json"
  if [ -f $B/bench_gpu_decode.py ]; then
    part decode 120 "$PY" $B/bench_gpu_decode.py --device cpu --quick --out "$OUT_DIR/decode.json"
  fi
else
  part env 60 "$PY" $B/gpu_suite.py env --require-cuda --out "$OUT_DIR/env.json"
  part checks 120 env NEGREFINE_GPU_FIGURES="$OUT_DIR/checks.json" "$PY" -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_gpu.py --junitxml "$OUT_DIR/checks.xml"
  part score 120 "$PY" $B/score_stage.py --images 200000 --settings driver:cpu,driver:cuda \
    --out "$OUT_DIR/score.json"
  part text 120 "$PY" $B/bench_text.py --arch ViT-B-16 --device cuda --precision fp16 \
    --batch-sizes 1024,4096 --out "$OUT_DIR/text.json"
  if [ -f "$TOKENIZER/tokenizer.json" ]; then
    part filter 150 "$PY" $B/bench_filter.py --shape qwen2.5-14b --tokenizer "$TOKENIZER" --device cuda \
      --questions 4096 --batch-size 256 --reference-calls 8 --out "$OUT_DIR/filter.json"
  else
    printf 'filter\tfail\t-\t0\tno tokenizer at %s (gpu_suite.py smollm2-tokenizer)\n' "$TOKENIZER" \
      >> "$OUT_DIR/parts.tsv"
    echo "gpu_suite: filter not run: no $TOKENIZER/tokenizer.json to carry"
  fi
  part images 150 "$PY" $B/gpu_suite.py images --arch ViT-B-16 --device cuda --n-images 6144 --n-large 64 \
    --batch-sizes 256,1024 --precisions fp16,bf16 --workers 16 --e2e-batch 256 --e2e-precision fp16 \
    --seconds 1.5 --out "$OUT_DIR/images.json"
  part glmcm 60 "$PY" $B/glmcm_cost.py --device cuda --precision fp16 --batch 256 --seconds 3 --rounds 3 \
    --out "$OUT_DIR/glmcm.json"
  if [ -f $B/bench_gpu_decode.py ]; then
    part decode 90 "$PY" $B/bench_gpu_decode.py --device cuda --n-images 2048 --batch-size 256 --seconds 1.5 \
      --out "$OUT_DIR/decode.json"
  fi
fi

echo "gpu_suite: $(($(date +%s) - START)) s; raw JSON and logs in $OUT_DIR"
ARGS=()
[ "$DRY" = 1 ] && ARGS=(--dry-run)
"$PY" $B/gpu_suite.py table "$OUT_DIR" "${ARGS[@]}"

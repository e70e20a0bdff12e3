#!/usr/bin/env bash
# Run every performance benchmark at full size and write benchmarks/results/perf/*.{json,md}.
# TRL's half of bench_iteration needs trl (pip install 'rspo[bench]'), in this python or in
# the one named by RSPO_BENCH_TRL_PYTHON, e.g.:
#   python -m venv --system-site-packages /tmp/venv-trl && /tmp/venv-trl/bin/pip install "trl==1.16.0"
#   RSPO_BENCH_TRL_PYTHON=/tmp/venv-trl/bin/python bash benchmarks/run_all.sh
# Extra arguments (e.g. --repeats 7) go to every script. Takes about 15-25 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
PY="${PYTHON:-python}"
OUT=benchmarks/results/perf
mkdir -p "$OUT"
"$PY" benchmarks/bench_iteration.py --json "$OUT/iteration.json" "$@"
"$PY" benchmarks/bench_memory.py --json "$OUT/memory.json" "$@"
"$PY" benchmarks/bench_judge.py --json "$OUT/judge.json" "$@"
"$PY" benchmarks/bench_scaling.py --json "$OUT/scaling.json" "$@"
cat "$OUT"/{iteration,memory,judge,scaling}.md > "$OUT/README.md"
echo "results in $OUT"

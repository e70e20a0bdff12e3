#!/usr/bin/env bash
# GPU smoke test of rspo's scale-out paths, offline: builds a ~113M-parameter Llama locally
# (gym byte tokenizer, random weights), then runs one self-play iteration (generate, judge,
# score, train, evaluate on the embedded gym tasks and judges) in each mode:
#   hf     1 process, HF backend                   vllm   1 process, vLLM (if importable)
#   vllm-ddp  torchrun, a vLLM engine per GPU (2+ GPUs, if importable)
#   plain  hf without packing / decode loop / recorded log-probs (what those are worth)
#   ddp    torchrun over all visible GPUs          fsdp2  accelerate launch + fsdp2.yaml
#   zero3  accelerate launch + zero3.yaml (DeepSpeed ZeRO-3, if importable)
# Also the HF sampler's per-step noise cost at a 128k vocabulary, host vs GPU generators.
# For each: wall time, per-stage times, and peak memory (`rspo train --dry-run` at the
# run's maximum lengths, plus the largest nvidia-smi reading while the run ran).
#
#   scripts/gpu_smoke.sh                 # on a GPU machine (run once on one H200: docs/scaling.md)
#   scripts/gpu_smoke.sh --cpu --tiny    # CPU fallback: 2 gloo processes, a 0.1M model
#   options: --out DIR (default runs/gpu_smoke), --keep (do not delete DIR first)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CPU=0 TINY=0 KEEP=0 OUT="runs/gpu_smoke"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --tiny) TINY=1 ;;
    --keep) KEEP=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
[ "$KEEP" = 1 ] || rm -rf "$OUT"
mkdir -p "$OUT"

if [ "$CPU" = 1 ]; then
  DEVICE=cpu NPROC=2
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: use --cpu" >&2; exit 2; }
  # the GPUs this process may use (CUDA_VISIBLE_DEVICES, MIG), not every line of nvidia-smi -L
  DEVICE=auto NPROC="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
  [ "$NPROC" -ge 1 ] || { echo "torch sees no CUDA device: use --cpu" >&2; exit 2; }
  ONE="${CUDA_VISIBLE_DEVICES:-0}" ONE="${ONE%%,*}"  # single-process modes: the first visible
fi
if [ "$TINY" = 1 ]; then
  SIZE=(64 2 2) PROMPTS=8 EVAL=4 K=2 NEW=8 GEN_BS=8 BS=8 MB=4
else
  SIZE=(768 12 12) PROMPTS=128 EVAL=64 K=4 NEW=64 GEN_BS=64 BS=32 MB=8
fi

MODEL="$OUT/model"
"$PY" - "$MODEL" "${SIZE[@]}" <<'EOF'
import sys
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer
path, h, layers, heads = sys.argv[1], *map(int, sys.argv[2:])
tok = build_byte_tokenizer()
model = build_tiny_llama(tok, h, layers, heads, max_position_embeddings=1024, seed=0)
model.save_pretrained(path, safe_serialization=True)
tok.save_pretrained(path)
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {path}")
EOF

ARGS=(--preset gym --model.path "$MODEL" --model.device "$DEVICE" --run.iterations 1
  --data.num_prompts "$PROMPTS" --data.num_eval_prompts "$EVAL" --data.max_prompt_length 128
  --generation.num_samples "$K" --generation.max_new_tokens "$NEW"
  --generation.batch_size "$GEN_BS" --evaluation.max_new_tokens "$NEW"
  --evaluation.diversity_samples 2 --evaluation.n_boot 100
  --training.batch_size "$BS" --training.micro_batch_size "$MB" --training.epochs 1)

SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

# run MODE LAUNCHER...: a dry run (peak memory), then one iteration (times), same launcher
run() {
  local mode="$1"; shift
  local dir="$OUT/$mode" log="$OUT/$mode.log" sampler="" t0 t1 peak smi="-"
  echo "== $mode: $*"
  "$@" train "${ARGS[@]}" "${EXTRA[@]}" --output "$dir" --dry-run >"$OUT/$mode.dry.json" \
    2>"$OUT/$mode.dry.err" || { echo "$mode dry run FAILED:"; tail -20 "$OUT/$mode.dry.err"; return 1; }
  if [ "$CPU" = 0 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/$mode.smi" &
    sampler=$!
  fi
  t0=$(date +%s%N)
  if ! "$@" train "${ARGS[@]}" "${EXTRA[@]}" --output "$dir" --overwrite >"$log" 2>&1; then
    [ -z "$sampler" ] || kill "$sampler"
    echo "$mode FAILED:"; tail -30 "$log"; return 1
  fi
  t1=$(date +%s%N)
  if [ -n "$sampler" ]; then
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    smi="$(sort -n "$OUT/$mode.smi" | tail -1) MiB"
  fi
  peak=$("$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("%.2f GiB (%s, %s)" % (r["peak_memory_gib"], r["memory_kind"], r["engine"]))' "$OUT/$mode.dry.json")
  grep -E "^iter 1 |^data parallel" "$log" | sed "s/^/  /"
  printf "%-6s wall %4d.%01ds  dry-run peak %s  nvidia-smi max %s\n" "$mode" \
    $(((t1 - t0) / 1000000000)) $((((t1 - t0) / 100000000) % 10)) "$peak" "$smi" \
    | tee -a "$SUMMARY"
}

EXTRA=()
RSPO=("$PY" -m rspo.cli)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m rspo.cli)
status=0
if [ "$CPU" = 0 ]; then
  # Gumbel noise of the HF sampler per decode step at a Llama-3 vocabulary (128256), 64 rows:
  # drawn by the host generators (the CPU path) vs by per-row generators on the GPU
  CUDA_VISIBLE_DEVICES="$ONE" "$PY" - <<'EOF' | tee -a "$SUMMARY" || status=1
import time, torch
from rspo.generation import SamplingParams
from rspo.generation.hf import SeededGumbelSampler
dev, rows, vocab, steps = torch.device("cuda"), 64, 128256, 10
def per_step(host):
    s = SeededGumbelSampler(range(rows), SamplingParams(steps, 1.0))
    s.HOST_NOISE = ("cpu", "cuda") if host else ("cpu",)
    s._gumbel(vocab, dev)  # warm-up
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(steps):
        s._gumbel(vocab, dev)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3
host, device = per_step(True), per_step(False)
print(f"sampler noise per step (64 x 128256): host {host:.1f} ms, device {device:.2f} ms ({host / device:.0f}x)")
EOF
  CUDA_VISIBLE_DEVICES="$ONE" run hf "${RSPO[@]}" || status=1
  if "$PY" -c "import vllm, rspo.generation.vllm" 2>/dev/null; then
    EXTRA=(--generation.backend vllm)
    CUDA_VISIBLE_DEVICES="$ONE" run vllm "${RSPO[@]}" || status=1
    if [ "$NPROC" -ge 2 ]; then  # an engine per rank, each on its own GPU
      run vllm-ddp "${TORCHRUN[@]}" || status=1
    fi
    EXTRA=()
  else
    echo "== vllm: skipped (vllm or rspo's vllm backend not importable)" | tee -a "$SUMMARY"
  fi
else
  run hf "${RSPO[@]}" || status=1
fi
# the same single-process run without rspo's speed paths (padded forwards, transformers'
# generate, log π_t by a forward): what packing / the decode loop are worth on this device
EXTRA=(--training.packing off --generation.hf_decode generate --generation.logprobs off)
if [ "$CPU" = 0 ]; then
  CUDA_VISIBLE_DEVICES="$ONE" run plain "${RSPO[@]}" || status=1
else
  run plain "${RSPO[@]}" || status=1
fi
EXTRA=()
run ddp "${TORCHRUN[@]}" || status=1
if [ "$CPU" = 0 ]; then
  run fsdp2 "$PY" -m accelerate.commands.launch --config_file "$ROOT/rspo/configs/accelerate/fsdp2.yaml" \
    --num_processes "$NPROC" -m rspo.cli || status=1
else  # accelerate launch --cpu runs one process; set what fsdp2.yaml sets, under torchrun
  ACCELERATE_USE_FSDP=true FSDP_VERSION=2 run fsdp2 "${TORCHRUN[@]}" || status=1
fi
if "$PY" -c "import deepspeed, rspo.training.deepspeed" 2>/dev/null; then
  if [ "$CPU" = 0 ]; then
    run zero3 "$PY" -m accelerate.commands.launch --config_file "$ROOT/rspo/configs/accelerate/zero3.yaml" \
      --num_processes "$NPROC" -m rspo.cli || status=1
  else  # what zero3.yaml sets, under torchrun
    ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_ZERO_STAGE=3 DS_ACCELERATOR=cpu \
      run zero3 "${TORCHRUN[@]}" || status=1
  fi
else
  echo "== zero3: skipped (deepspeed not importable: pip install -e '.[deepspeed]')" | tee -a "$SUMMARY"
fi

echo "== summary ($NPROC processes for ddp/fsdp2/zero3; $SUMMARY)"
cat "$SUMMARY"
exit "$status"

#!/usr/bin/env bash
# The prepared GPU benchmark of issue 18 §3, on ONE GPU, in <= 8 minutes including setup:
# Qwen2.5-VL-7B shapes with random bf16 weights, sdpa (and flash-attention when `flash_attn` imports there);
# (a) latent vs text decode step, (b) K=8 latent vs plain generation, (c) ROI-SFT step tokens/s, MFU, peak memory,
# (d) VLPO vs GRPO step and chunked vs unchunked replay memory. Writes ONE JSON file (device name, every figure).
# Then `medlvr serve` throughput (issue 26): benchmarks/bench_serve.py on a 7B-shaped random checkpoint in bf16 on the
# GPU, 8 concurrent clients, batched vs one-at-a-time server, into serve.json.
#
#   bash benchmarks/gpu/run.sh              # GPU: writes benchmarks/gpu/results/gpu.json + serve.json (OUT=dir)
#   bash benchmarks/gpu/run.sh --dry-run    # CPU, tiny shape, the same code paths (tests/test_gpu_benchmark.py):
#                                           # dry_run.json + serve_dry_run.json
# With 2+ GPUs it then runs the multi-rank checks of issue 28 on all of them (benchmarks/gpu/multirank.py: ZeRO-2 on
# N ranks = 1 rank, the N-rank checkpoint resumed on 1 rank, VLPO on N ranks = 1 rank on the same rollouts with one
# reference everywhere, the latent diagnostics sharded over N ranks = one process) into multirank.json.
#   bash benchmarks/gpu/run.sh --multirank-dry-run [--keep DIR]   # the same checks on 2 CPU ranks (the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/gpu/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ "${1:-}" == "--dry-run" ]]; then
  "$PY" benchmarks/gpu/driver.py --dry-run --out "$OUT/dry_run.json"
  exec "$PY" benchmarks/bench_serve.py --clients 2 --requests 1 --repeats 1 --k 2 --max-tokens 4 \
    --json "$OUT/serve_dry_run.json"
fi
if [[ "${1:-}" == "--multirank-dry-run" ]]; then
  exec "$PY" benchmarks/gpu/multirank.py --dry-run --out "$OUT/multirank_dry_run.json" "${@:2}"
fi

# setup: the package from this checkout (dependencies are the machine's), the device on record
"$PY" -c "import medlvr.training" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import flash_attn" 2>/dev/null || echo "flash_attn does not import: sdpa only"
"$PY" benchmarks/gpu/driver.py --attn sdpa,flash_attention_2 --out "$OUT/gpu.json"
"$PY" benchmarks/bench_serve.py --shape 7b --device cuda --dtype bfloat16 --json "$OUT/serve.json"
NGPU=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
if (( NGPU >= 2 )); then
  "$PY" benchmarks/gpu/multirank.py --ranks "$NGPU" --device cuda --out "$OUT/multirank.json"
fi

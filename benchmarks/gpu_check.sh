#!/usr/bin/env bash
# Prepared GPU verification (not yet run: the session that wrote it had no GPU). About 5-8 minutes on one H100.
# Run from the repository root in an environment with a CUDA build of torch plus requirements-bench.txt:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/{gpu.json, cpu-on-gpu-host.json, sync_check.txt, nvidia-smi.txt, console.txt}.
set -uo pipefail
OUT="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_DISABLE_TELEMETRY=true WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0
PY="${PYTHON:-python}"
status=0
{
  nvidia-smi || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"

# 1. No host synchronisation in steady-state steps (torch.cuda.set_sync_debug_mode("error")).
timeout 240 "$PY" -m benchmarks.sync_check 2>&1 | tee "$OUT/sync_check.txt" || status=1

# 2. Throughput (mlp + ResNet-18 bf16/channels_last batch 512), CUDA peak memory, checkpoint share, start-up.
timeout 420 "$PY" -m benchmarks mlp resnet memory checkpoint startup --device cuda --threads 4 --repeats 3 \
  --json "$OUT/gpu.json" 2>&1 | tee "$OUT/console.txt" || status=1
exit $status

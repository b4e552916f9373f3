#!/usr/bin/env bash
# DINO training throughput (img/s), data-wait share and peak memory, ViT-S/16 at 224 px, one GPU, bf16.
#
#   bash bench/gpu.sh                 # on a machine with one CUDA GPU; about 3-5 minutes, capped at 8
#   PYTHON=/path/to/python bash bench/gpu.sh
#
# Needs a Python with a CUDA build of torch (>= 2.4) and lightning; sptrack is imported from this
# checkout (no install). Runs the CPU smoke configuration first (seconds) so a broken environment
# fails fast, then the measurements. Writes bench/results/gpu_throughput.json and preset_steps_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import sys, torch, lightning
print(f"torch {torch.__version__}  lightning {lightning.__version__}  cuda {torch.version.cuda}  "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", flush=True)
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible: nothing to measure (bench/gpu_throughput.py --smoke runs on CPU)")
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

timeout 60 "$PY" bench/gpu_throughput.py --smoke > /dev/null
echo "smoke run ok"
# 15 warm-up + 60 timed steps of 128 images (2 x 224 px + 6 x 96 px views each), synthetic images already on the host.
timeout 200 "$PY" bench/gpu_throughput.py --steps 60 --warmup 15 --batch-size 128 --precision bf16-mixed --out bench/results
# The recipe's vit_s16_imagenet preset on generated photos read from tar shards (2 x 224 + 10 x 96 views cut in the
# loader workers): img/s, the share of step time spent waiting for data, peak memory.
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
timeout 240 "$PY" bench/preset_steps.py --device cuda --batch-size 128 --steps 30 --warmup 10 --workers "$WORKERS" \
  --precision bf16-mixed --images 6000 --out bench/results

#!/usr/bin/env bash
# One GPU session for the 196-token testbed, in the order its time is worth spending:
#   1. mambatr's Triton kernels checked against the reference loops on this GPU (values, gradients);
#   2. vim_fmnist_p2 (patch 2, 196 tokens) fine-tuned from vim_fmnist_deit (patch embedding PI-resized,
#      position embedding resampled), for as many whole epochs as the time left allows: the step time is
#      measured first, the epoch count follows from it, so the cosine schedule ends where training ends;
#   3. Triton GPU timings (benchmarks/triton_gpu.py) with whatever time remains.
# Runs from a source checkout without installing (PYTHONPATH=src). The scan/conv implementation is
# triton when step 1 passes, else the PyTorch path (MAMBATR_OPS_IMPL=torch); the log says which.
#
#   bash benchmarks/gpu_testbed.sh FASHION_MNIST_DIR OUT_DIR SECONDS
#
# Smoke test on a CPU (tiny data, CPU kernels, Triton skipped):
#   DEVICE=cpu LIMIT=256 WARM_STEPS=1 PROBE_STEPS=2 bash benchmarks/gpu_testbed.sh /usr/share/datasets/fashion-mnist /tmp/gpu_smoke 120
set -u -o pipefail
data=$1
out=$2
budget=$3
device=${DEVICE:-cuda}
limit=${LIMIT:+--limit $LIMIT}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
mkdir -p "$out"
python=${PYTHON:-python3}
recipe=(--model vim_fmnist_p2 --init-from vim_fmnist_deit --lr 5e-4 --warmup-epochs 1 --random-erasing 0.25
    --mixup 0.8 --cutmix 1.0 --drop-path 0.05 --device "$device" --data "$data" $limit)

# 1. the kernels on this device
if [ "$device" = cuda ]; then
    $python benchmarks/triton_gpu.py --sections check --json "$out/triton_check.json" 2>&1 | tee "$out/check.log"
    impl=$($python - "$out/triton_check.json" <<'EOF'
import json, sys
sections = json.load(open(sys.argv[1]))["sections"]
rows = next(v["rows"] for k, v in sections.items() if k.startswith("check"))
print("triton" if all(r["ok"] for r in rows) else "torch")
EOF
    ) || impl=torch
else
    impl=cpu
fi
export MAMBATR_OPS_IMPL=$impl
echo "scan/conv implementation for training: $impl ($(left) s left)"

# 2. step time, then the epoch count that fits, then the training
speed=/tmp/gpu_testbed_speed
rm -rf "$speed"
$python -m mambatr train "${recipe[@]}" --epochs 30 --max-steps "${WARM_STEPS:-20}" --out "$speed" >/dev/null 2>&1  # compiles
t0=$(date +%s.%N)
$python -m mambatr train "${recipe[@]}" --epochs 30 --max-steps "${PROBE_STEPS:-100}" --out "$speed" --resume >/dev/null 2>&1
step_s=$($python -c "print(($(date +%s.%N) - $t0) / ${PROBE_STEPS:-100})")
steps_per_epoch=$($python -c "import math; print(math.ceil(${LIMIT:-55000} / 128))")
reserve=${RESERVE:-90}  # export, the val pass of the last epoch and the timings of step 3
epochs=$($python -c "print(max(1, min(30, int(($(left) - $reserve) / ($step_s * $steps_per_epoch * 1.12)))))")
echo "step ${step_s} s, ${steps_per_epoch} steps per epoch: training ${epochs} epochs ($(left) s left)"
timeout $(($(left) - 30)) $python -m mambatr train "${recipe[@]}" --epochs "$epochs" --out "$out/p2" \
    2>&1 | tr '\r' '\n' | grep --line-buffered -v -E "it/s|s/it|img/s" | tee "$out/train.log"
echo "training finished with status ${PIPESTATUS[0]} ($(left) s left)"

# 3. GPU timings with what is left
if [ "$device" = cuda ] && [ "$(left)" -gt 40 ]; then
    timeout $(($(left) - 10)) $python benchmarks/triton_gpu.py --sections kernels,training,dense --runs 5 \
        --json "$out/triton_gpu.json" 2>&1 | tee "$out/timings.log"
fi
echo "done ($(left) s left)"

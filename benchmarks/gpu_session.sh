#!/usr/bin/env bash
# The prepared GPU session: run it as it is on a CUDA machine with its own PyTorch (2.11 and up) and
# triton (3.6 and up), nothing installed, no internet, only a copy of this working tree. Everything goes
# to $OUT (default ./gpu_session): gpu_session.json (rewritten after every section) and gpu_session.log.
# Order (benchmarks/triton_gpu.py): the kernels against the reference on the GPU (values, gradients,
# float32 / bfloat16, gaps, reverse) first; one ViM-S layer's kernel times at batch 64; ViM-S dense
# images/s at batch 1 / 64 / 128, float32 and bfloat16 autocast, triton vs the PyTorch path (and
# mamba_ssm when it imports); all seven methods at 20 / 30 / 40 % against their ideal speed-up, HSA
# aligned and unaligned; a vim_fmnist_p2 training step. No section starts after BUDGET seconds (default
# 420), and the whole run is cut at 470 s, so it ends within 8 minutes.
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh            # on the GPU machine
#   OUT=/tmp/gpu_smoke bash benchmarks/gpu_session.sh --smoke  # any CPU: toy sizes in Triton's interpreter
set -u -o pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_session}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
args=(--json "$out/gpu_session.json" --budget "${BUDGET:-420}")
if [ "${1:-}" = --smoke ]; then
    export TRITON_INTERPRET=1
    args+=(--smoke --device cpu)
fi
{
    echo "gpu_session $(date -u +%FT%TZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    timeout "${LIMIT:-470}" "$python" benchmarks/triton_gpu.py "${args[@]}"
    echo "exit status $?"
} 2>&1 | tee "$out/gpu_session.log"
exit "${PIPESTATUS[0]}"

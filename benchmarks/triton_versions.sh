#!/usr/bin/env bash
# The Triton kernels under older triton releases: for each version, a virtual environment in /tmp with
# this project's torch and that triton from PyPI (CPU machine, no GPU), then the interpreter tests
# (tests/test_triton.py, which runs tests/triton_interpreted.py under TRITON_INTERPRET=1) and the
# compile-for-GPU test (tests/test_triton_compile.py: sm_80 / sm_90 cubins, no spills), from this
# checkout without installing it (PYTHONPATH=src). What was run and found: docs/scan.md.
#
#   bash benchmarks/triton_versions.sh 3.6.0 3.5.1        # about 3 minutes per version on 2 cores
#
# Triton before 3.9 runs its interpreter with numpy < 2.4 only (numpy 2.4 refuses int() of a size-1
# array, which those interpreters call on loop bounds), so the environments get numpy<2.4.
set -u -o pipefail
cd "$(dirname "$0")/.."
torch_version=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
status=0
for version in "$@"; do
    env=/tmp/mambatr_triton_$version
    [ -x "$env/bin/python" ] || python3 -m venv "$env"
    # --no-deps for triton: torch's own requirement would pull another triton over it
    "$env/bin/pip" install -q "torch==$torch_version" "numpy<2.4" pytest safetensors tqdm pillow \
        2>&1 | grep -v "^WARNING: Location" || true
    "$env/bin/pip" install -q --no-deps "triton==$version" 2>&1 | grep -v "^WARNING: Location" || true
    found=$("$env/bin/python" -c "import triton, torch; print(f'triton {triton.__version__}, torch {torch.__version__}')")
    echo "== $found"
    PYTHONPATH=src TRITON_CACHE_DIR="$env/triton_cache" "$env/bin/python" -m pytest -q -p no:cacheprovider \
        tests/test_triton.py tests/test_triton_compile.py 2>&1 | tail -n 4
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status

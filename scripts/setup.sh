#!/usr/bin/env sh
# Set up mambatr on a fresh Debian machine, root or not: Fashion-MNIST (Debian package), a virtual
# environment in .venv (stock Debian refuses `pip install` outside one), PyTorch 2.13.0, mambatr itself
# (editable, with test tools, the ONNX export extra and the Hub extra) and its C++ CPU kernels, compiled here into the package.
#
# PyTorch: `pip install torch==2.13.0` gives whatever build pip's configuration resolves to: the CPU
# build on this project's machines, the CUDA build (several GB of nvidia-* wheels) on an ordinary Linux
# machine. Set MAMBATR_TORCH_INDEX_URL to PyTorch's CPU wheel index to get the CPU build there.
set -eu
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@" >/dev/null; }
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    apt_install dataset-fashion-mnist
fi
if [ ! -x .venv/bin/python ]; then
    python3 -c "import ensurepip, venv" 2>/dev/null || apt_install python3-venv
    python3 -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade "pip>=23" "setuptools>=64" wheel ninja
if [ -n "${MAMBATR_TORCH_INDEX_URL:-}" ]; then
    $PIP install -q --index-url "$MAMBATR_TORCH_INDEX_URL" torch==2.13.0
else
    $PIP install -q torch==2.13.0
fi
# --no-build-isolation: setup.py needs this environment's torch to compile the kernels
$PIP install -q --no-build-isolation -e ".[dev,export,hub]"
.venv/bin/python -c "import torch; print(f'torch {torch.__version__} (CUDA build: {torch.version.cuda is not None})')"
.venv/bin/python -m mambatr.ops.build

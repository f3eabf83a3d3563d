#!/usr/bin/env sh
# Set up mambatr on a fresh Debian machine: Fashion-MNIST (Debian package), the CPU build of PyTorch,
# mambatr itself (editable, with test tools) and its C++ CPU kernels (compiled once, cached).
set -eu
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true   # expose the new `mambatr` command under pyenv
python3 -m mambatr.ops.build

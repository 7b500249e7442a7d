#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels a lent GPU machine lacks, for benchmarks/gpu_lease.sh to install there.
# The machine's image (../.library/device/KINDS.md) runs Python 3.12 with torch, accelerate, transformers,
# tokenizers, safetensors, opencv and huggingface-hub, but not diffusers or PyAV, and it cannot download anything.
#   bash benchmarks/gpu_wheels.sh              # diffusers: every training / bench stage
#   bash benchmarks/gpu_wheels.sh diffusers av # + PyAV (35 MB): mp4 folders; no longer fits beside the tree
#                                              # in a call (64 MiB), so `real_fsdp` uses world data instead
# Carry `.whl` with the run call (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# shellcheck disable=SC2068
python3 -m pip download -q --no-deps -d .whl --python-version 3.12 --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    ${@:-diffusers}
ls -la .whl

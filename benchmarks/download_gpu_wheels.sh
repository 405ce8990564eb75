#!/usr/bin/env bash
# Downloads the wheels of benchmarks/gpu_requirements.txt for CPython 3.12 on manylinux x86_64 into
# wheels/gpu (git-ignored), for the GPU machine, which has no internet:
#   bash benchmarks/download_gpu_wheels.sh [DEST]      # then carry DEST to the GPU machine and run
#   python benchmarks/gpu_check.py --wheels wheels/gpu --out gpu_check_out
# --no-deps: the requirements list is already the whole closure minus what the GPU machine has
# (torch, numpy, ...); resolving dependencies here would download torch.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-wheels/gpu}"
mkdir -p "$dest"
python -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_34_x86_64 --platform any -d "$dest" -r benchmarks/gpu_requirements.txt
du -cb "$dest"/*.whl | tail -1 | awk '{printf "total: %d bytes (%.1f MiB)\n", $1, $1 / 1048576}'

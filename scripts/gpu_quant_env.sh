#!/usr/bin/env bash
# llm-compressor for a GPU machine without a package registry (the H200 image): its own environment,
# because llm-compressor 0.14 pins compressed-tensors 0.19 and vLLM 0.24 pins 0.17.
#
#   here (with a registry):    bash scripts/gpu_quant_env.sh download    -> .gpu/quant/*.whl (~15 MB)
#   there (carry .gpu/quant):  bash scripts/gpu_quant_env.sh install [DIR] -> DIR/bin/python (default /tmp/q)
#
# The environment is a --target folder put first on PYTHONPATH by DIR/bin/python, on top of the
# machine's own torch and transformers; pass that python to --qbench-quant-python.
set -euo pipefail
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
wheels="$root/.gpu/quant"
case "${1:-}" in
  download)
    mkdir -p "$wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$wheels" llmcompressor==0.14.0.1 compressed-tensors==0.19.0 accelerate==1.15.0 \
      nvidia-ml-py==13.615.71 pillow==12.0.0 loguru==0.7.3
    du -sh "$wheels" ;;
  install)
    dir=${2:-/tmp/q}
    mkdir -p "$dir/bin"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$dir/lib" "$wheels"/*.whl
    printf '#!/bin/sh\nPYTHONPATH=%s/lib exec python3 "$@"\n' "$dir" > "$dir/bin/python"
    chmod +x "$dir/bin/python"
    "$dir/bin/python" -c 'import llmcompressor, compressed_tensors; print("llmcompressor", llmcompressor.__version__, "| compressed-tensors", compressed_tensors.__version__)' ;;
  *) echo "usage: $0 download | install [DIR]" >&2; exit 2 ;;
esac

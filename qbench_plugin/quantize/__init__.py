"""Quantization: how each method reaches an engine, the model to load and its arguments, and the
checkpoints qbench makes and caches (quantize.py); the llm-compressor worker (quantize_worker.py).

quantize_worker.py runs as a script in llm-compressor's own environment (.venv-quant), so it imports
nothing from qbench, and this folder, which is its sys.path[0] there, holds no module named like a
standard-library one.

May import: config, engines, machine, redact
"""

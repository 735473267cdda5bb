"""Engines behind one interface: classify texts into class probabilities (engine.py: vLLM's pooling
runner under test, transformers as the reference), the reference's faster paths (hf_paths.py:
length buckets, padding-free packing, torch.compile, CUDA graphs), the model's classification head, found and
checked unquantized (heads.py), and one engine's memory, read from its own processes or, in-process, as this
process's growth (memory.py).

An engine takes a config and knows nothing of how it is timed, recorded or reported.

May import: config
"""

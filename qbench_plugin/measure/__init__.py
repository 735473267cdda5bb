"""Measuring the engines in this process: every config's engine up at once, with its load time and
memory (pool.py); the interleaved rounds (rounds.py) and the session's latency matrix built on them
(matrix.py); the throughput ceiling and saturation sweep (ceiling.py), its HF rungs (hf_rungs.py),
the overlapped tokenizer pipeline (pretokenize.py) and the strings-in points it feeds (overlapped.py);
and the numbers derived from raw samples, percentiles, throughput, accuracy, timers (measure.py).

The pool sits here rather than in engines because it starts each config's engine through quantize
(the model and arguments its method needs) and records what the start cost into the run's record.

May import: config, engines, quantize, record, stats
"""

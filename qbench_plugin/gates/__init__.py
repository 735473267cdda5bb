"""CI gates: accuracy against fixed thresholds and the run's baseline config, performance against a
saved run through noise-aware intervals, and which configs the report may recommend (gates.py);
whether a saved run is comparable at all (baseline.py); when a tail percentile may be gated and the
confidence each gate needs when a run gates many (tails.py).

May import: config, machine, record, stats
"""

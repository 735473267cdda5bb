"""The JSON: what a run records and where it goes. The run's store, its per-config, per-case and
per-load-point records, written atomically as qbench.json (run.py); every metric's fixed name, unit
and direction (metrics.py); and pytest-benchmark's side, the group each measurement gets and
qbench's metrics and record added to benchmark.json (benchjson.py).

Measuring code writes here and reporting code reads from here, so this step knows neither.

May import: redact
"""

"""qbench: a pytest plugin that benchmarks quantized text classifiers served with vLLM.

The data flows one way, config -> engine -> measurements -> JSON -> report, and the subpackages are
its steps. Each one's docstring says what it owns and which others it may import ("May import: ..."),
and tests/test_layout.py holds that table and checks every import against it: nothing imports back
against the flow (an engine never imports the report, the report never imports an engine), and
record/ (the JSON) knows neither side, since the measuring steps write into it and the report reads it.

    dataset/    the evaluated split, the model's labels, the embedded default, tokens per text
    engines/    an engine behind one interface (vLLM, transformers), its classification head, its memory
    quantize/   how each quantization method reaches an engine; the llm-compressor worker
    stats/      noise: intervals over rounds, the host-speed probe
    measure/    the engine pool, the interleaved rounds, the latency matrix, the throughput ceiling
    loadtest/   a vLLM server, Locust against it, the load grid
    record/     the JSON: qbench.json's store and records, metric names, pytest-benchmark's JSON
    gates/      accuracy and performance gates, the saved baseline, which tails may be gated
    report/     everything rendered from a run's JSON: tables, picks, cost, log, HTML, plots, compare

At the top, two kinds of module. The plumbing, which may import every subpackage and which no
subpackage imports: plugin.py (the pytest hooks), fixtures.py and load_fixtures.py (the fixtures),
options.py (options and Settings), preflight.py (inputs checked before collection), status.py
(complete or partial, signals), bench.py (what a benchmark test calls) and cli.py (`qbench`). And
three leaves that import nothing from qbench and that any step may import: config.py (what to run),
machine.py (what it runs on) and redact.py (what must never be written or passed on).
"""

__version__ = "0.1.0"

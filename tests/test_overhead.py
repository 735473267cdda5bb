"""benchmarks/test_overhead.py on the real vLLM engine (CPU): the suite against a bare classify loop."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_plugin.measure.measure import paired_ratio

pytestmark = pytest.mark.slow  # a benchmark run in a subprocess with the real engine

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_is_measured_recorded_and_reported(tmp_path, embedded_model):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_overhead.py", "-p", "no:randomly", "--qbench-configs=cpu_default",
         "--qbench-batch-sizes=1,4", "--qbench-samples=20", "--qbench-warmup=3", f"--qbench-results-dir={tmp_path}"],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    (run_dir,) = list(tmp_path.iterdir())
    overhead = json.loads((run_dir / "qbench.json").read_text())["overhead"]["cpu_default"]
    assert overhead["batch_size"] == 1 and overhead["target"] == 0.98
    (bench,) = json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]
    bare, suite = bench["extra_info"]["bare_latency_samples_ns"], bench["extra_info"]["latency_samples_ns"]
    assert len(bare) == len(suite) == 20  # one bare call paired with each timed call
    assert overhead["ratio"] == paired_ratio(bare, suite)[0] and overhead["ci95"] == list(paired_ratio(bare, suite)[1:])
    low, high = overhead["ci95"]
    assert low <= overhead["ratio"] <= high
    assert overhead["verdict"] == ("met" if overhead["ratio"] >= 0.98 else "missed" if high < 0.98 else "within noise")
    # the target is the benchmark's own assertion: a measurable miss fails it with the measured ratio
    assert proc.returncode == 0 or (overhead["verdict"] == "missed" and f"suite throughput is {overhead['ratio']:.3f}" in out
                                    and "1 failed" in out), out[-3000:]
    log = (run_dir / "EXPERIMENT_LOG.md").read_text()
    assert f"| cpu_default | 1 | {overhead['bare_latency_p50_ms']:.3f} |" in log

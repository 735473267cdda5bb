"""Gates failing for real: a threshold the embedded model cannot meet, a saved run faster than this
one (qbench's gate and pytest-benchmark's --benchmark-compare-fail), and real run-to-run noise
that must pass."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benchmark runs in subprocesses with the real engine

ROOT = Path(__file__).resolve().parents[1]
CASE = ["benchmarks", "-p", "no:randomly", "--qbench-configs=cpu_default", "--qbench-batch-sizes=4",
        "--qbench-samples=20", "--qbench-warmup=3"]


def _pytest(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", *CASE, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    return proc, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, embedded_model):
    """A first run, saved in pytest-benchmark storage and in qbench's results."""
    tmp = tmp_path_factory.mktemp("gates")
    proc, out = _pytest("-k", "latency", f"--qbench-results-dir={tmp / 'results'}", "--benchmark-autosave",
                        f"--benchmark-storage=file://{tmp / 'storage'}")
    assert proc.returncode == 0, out[-4000:]
    (run_dir,) = (tmp / "results").iterdir()
    (saved,) = (tmp / "storage").rglob("*.json")
    return tmp, run_dir, saved


def _faster(data: dict, factor: float) -> dict:
    """The same run as if every batch had been `factor` times faster."""
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        extra["latency_samples_ns"] = [int(ns / factor) for ns in extra["latency_samples_ns"]]
        for key in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev", "ld15iqr", "hd15iqr", "total"):
            if isinstance(bench["stats"].get(key), (int, float)):
                bench["stats"][key] /= factor
        bench["stats"]["data"] = [v / factor for v in bench["stats"].get("data", [])]
    return data


@pytest.fixture(scope="module")
def failing_run(saved_run):
    tmp, run_dir, saved = saved_run
    faster = tmp / "faster.json"
    # 10x: a 2-core machine under load ran the same case 2.7x slower in one CI session, and the gate
    # allows the device's run-to-run noise on top; the regression must be beyond both
    faster.write_text(json.dumps(_faster(json.loads((run_dir / "benchmark.json").read_text()), 10.0)))
    storage = saved.parent
    (storage / "0002_faster.json").write_text(json.dumps(_faster(json.loads(saved.read_text()), 3.0)))
    return _pytest("-k", "latency or accuracy", "--qbench-min-accuracy=0.999", f"--qbench-perf-baseline={faster}",
                   f"--qbench-results-dir={tmp / 'results-fail'}", f"--benchmark-storage=file://{storage}",
                   "--benchmark-compare=0002", "--benchmark-compare-fail=mean:50%")


def test_accuracy_gate_fails_with_config_threshold_and_value(failing_run):
    proc, out = failing_run
    assert proc.returncode == 1
    assert "FAILED benchmarks/test_gates.py::test_accuracy_gates[cpu_default]" in out
    assert "config cpu_default: accuracy 0.9" in out and "is below min_accuracy 0.9990" in out


def test_faster_saved_run_fails_the_perf_gate(failing_run):
    proc, out = failing_run
    assert "FAILED benchmarks/test_latency.py::test_latency[cpu_default-bs4]" in out
    assert "REGRESSION case cpu_default-bs4: latency_p50_ms" in out and "worse than the saved run" in out


def test_pytest_benchmark_compare_fail_works_on_our_json(failing_run):
    _, out = failing_run
    assert "Performance has regressed" in out and "test_latency[cpu_default-bs4]" in out


def test_real_noise_between_runs_passes(saved_run):
    tmp, run_dir, _ = saved_run
    proc, out = _pytest("-k", "latency", f"--qbench-perf-baseline={run_dir}", f"--qbench-results-dir={tmp / 'r2'}")
    if proc.returncode != 0:
        # Same code, same machine must pass; but a shared 2-core machine can slow down by half between
        # two runs minutes apart (another job; seen once). One fresh pair, back to back, decides.
        first, _ = _pytest("-k", "latency", f"--qbench-results-dir={tmp / 'r3'}")
        assert first.returncode == 0
        (again,) = (tmp / "r3").iterdir()
        proc, out = _pytest("-k", "latency", f"--qbench-perf-baseline={again}", f"--qbench-results-dir={tmp / 'r4'}")
    assert proc.returncode == 0, out[-4000:]
    assert "gate PASS case cpu_default-bs4: latency_p50_ms" in out
    # 20 batches: the p95 is about the 2nd largest, reported and not gated (tails.py)
    assert "gate n/a  case cpu_default-bs4: latency_p95_ms: p95 of 20 batches is about the 2nd largest" in out

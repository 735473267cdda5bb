"""End to end under pytest-xdist: the issue's acceptance command, two CPU configs over two workers.

One run folder holding both configs (pytest-benchmark JSON with every case's samples, qbench.json
naming the workers, the report and the experiment log), written by the controller alone.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a vLLM engine and a transformers engine in two worker processes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("cpu_default", "cpu_bnb_int8")
BATCH_SIZES = (1, 4)


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_model):
    results = tmp_path_factory.mktemp("results")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-n", "2", "--qbench-configs", ",".join(CONFIGS),
         "--qbench-batch-sizes", ",".join(map(str, BATCH_SIZES)), "-m", "not gpu and not slow",
         "-k", "latency or accuracy", f"--qbench-results-dir={results}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc, list(results.iterdir())


def test_one_run_folder_holds_both_configs(run):
    proc, runs = run
    assert len(runs) == 1, (runs, proc.stdout[-3000:])
    run_dir = runs[0]
    bench = json.loads((run_dir / "benchmark.json").read_text())
    latency = {(b["extra_info"]["config"], b["extra_info"]["batch_size"]): b for b in bench["benchmarks"]
               if b["extra_info"].get("kind") == "latency"}
    assert set(latency) == {(c, bs) for c in CONFIGS for bs in BATCH_SIZES}, proc.stdout[-3000:]
    for case in latency.values():
        assert case["stats"]["data"] and case["extra_info"]["latency_samples_ns"]
        assert len(case["stats"]["data"]) == len(case["extra_info"]["latency_samples_ns"])
    accuracy = [b for b in bench["benchmarks"] if b["extra_info"].get("kind") == "accuracy"]
    assert {b["extra_info"]["config"] for b in accuracy} == set(CONFIGS)
    assert bench["qbench"]["run_id"] == run_dir.name

    record = json.loads((run_dir / "qbench.json").read_text())
    assert set(CONFIGS) <= set(record["configs"])
    workers = record["measurement"]["workers"]
    assert len(workers) == 2
    placed = {name: c["info"]["placement"]["worker"] for name, c in record["configs"].items()}
    assert len(set(placed.values())) == 2, placed  # each config on its own worker
    cores = [tuple(w["cores"]) for w in workers.values()]
    assert len(set(cores)) == 2 and not set(cores[0]) & set(cores[1])  # disjoint cores
    # the baseline ran on the other worker; the controller compared them
    assert record["configs"]["cpu_bnb_int8"]["metrics"].get("flip_rate") is not None
    assert (run_dir / "report.html").exists() and (run_dir / "EXPERIMENT_LOG.md").exists()
    assert "pytest-xdist workers" in (run_dir / "EXPERIMENT_LOG.md").read_text()


def test_only_the_gates_are_refused(run):
    """test_accuracy_gates matches -k accuracy; under -n it fails with one message instead of deciding a drop
    gate against a baseline that ran on another worker. Everything else passes."""
    proc, _ = run
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert failed and all("test_accuracy_gates" in line for line in failed), proc.stdout[-3000:]
    assert "does not run under pytest-xdist (-n) yet" in proc.stdout
    assert " 6 passed" in proc.stdout, proc.stdout[-3000:]


def test_pytest_benchmark_compare_reads_it(run):
    _, runs = run
    proc = subprocess.run([str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(runs[0] / "benchmark.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cpu_default" in proc.stdout and "cpu_bnb_int8" in proc.stdout


def test_perf_gates_are_refused_under_n(tmp_path):
    """--qbench-perf-baseline is not merged across workers yet: one usage error before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-n", "2", "--qbench-configs", "cpu_default",
         f"--qbench-perf-baseline={tmp_path}", f"--qbench-results-dir={tmp_path / 'results'}"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--qbench-perf-baseline (performance gates) is not supported with -n yet" in proc.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())

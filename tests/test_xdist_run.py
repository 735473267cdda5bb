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


def test_the_acceptance_command_passes_with_the_gates_decided(run):
    """-k accuracy also selects test_accuracy_gates. The baseline's worker decides its gates; the other
    worker decides min_accuracy and leaves the drop and flip-rate gates, which the controller decides
    after the merge and writes into qbench.json with the workers' verdicts."""
    proc, runs = run
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " 7 passed, 1 skipped" in proc.stdout, proc.stdout[-3000:]
    assert "accuracy gate(s) decided after the merge (the baseline ran on another worker): none failed" in proc.stdout
    assert "gate PASS config cpu_bnb_int8: accuracy drop vs baseline cpu_default" in proc.stdout
    gates = json.loads((runs[0] / "qbench.json").read_text())["gates"]
    decided = {(g["config"], g["gate"]): g["passed"] for g in gates}
    assert decided[("cpu_bnb_int8", "max_accuracy_drop")] is True, gates  # from the config file's gates
    assert decided[("cpu_default", "min_accuracy")] is True, gates  # decided on the baseline's worker


def test_gates_under_n_fail_the_run(run, tmp_path):
    """Against the first run as the perf baseline, with an accuracy gate no quantized config can pass:
    each worker decides its cases' perf gates, the controller fails the run on the gate it decided."""
    _, runs = run
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-n", "2", "--qbench-configs", ",".join(CONFIGS),
         "--qbench-batch-sizes", ",".join(map(str, BATCH_SIZES)), "-m", "not gpu and not slow",
         "-k", "latency or accuracy", f"--qbench-perf-baseline={runs[0]}",
         # perf gates that this shared machine's drift cannot fail: the failure asserted is the accuracy gate's
         "--qbench-perf-thresholds=latency_p50_ms=1000%,latency_p95_ms=1000%,throughput_samples_per_s=1000%",
         "--qbench-max-accuracy-drop=0", "--qbench-max-flip-rate=0", f"--qbench-results-dir={results}"],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "accuracy gate(s) decided after the merge failed" in proc.stdout, proc.stdout[-3000:]
    assert "gate FAIL config cpu_bnb_int8" in proc.stdout
    gates = json.loads((next(results.iterdir()) / "qbench.json").read_text())["gates"]
    perf = [g for g in gates if g["gate"] == "perf_regression:latency_p50_ms"]
    assert len(perf) == len(CONFIGS) * len(BATCH_SIZES), gates
    assert {g["config"] for g in perf} == set(CONFIGS), gates
    assert all(g["passed"] for g in perf), perf
    late = [g for g in gates if g["config"] == "cpu_bnb_int8" and g["gate"] in ("max_accuracy_drop", "max_flip_rate")]
    assert late and any(g["passed"] is False for g in late), late


def test_pytest_benchmark_compare_reads_it(run):
    _, runs = run
    proc = subprocess.run([str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(runs[0] / "benchmark.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cpu_default" in proc.stdout and "cpu_bnb_int8" in proc.stdout


@pytest.mark.parametrize(("option", "said"), [
    ("--qbench-sweep=on", "--qbench-sweep is not supported with -n yet"),  # a sweep takes the whole machine
    # a config and its reference must share rounds, and each worker times its own
    ("--qbench-perf-relative-to=cpu_default", "--qbench-perf-relative-to is not supported with -n"),
])
def test_what_needs_one_process_is_refused_under_n(tmp_path, option, said):
    """One usage error before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-n", "2", "--qbench-configs", "cpu_default",
         option, f"--qbench-results-dir={tmp_path / 'results'}"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert said in proc.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())

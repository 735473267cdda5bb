"""End to end: `pytest benchmarks` through the plugin with the real vLLM engine on CPU.

Runs the suite as a user does (a subprocess in the project root), then checks what it left:
pytest-benchmark JSON with every metric for every case, the HTML report with the matrix, and that
`pytest-benchmark compare` reads the JSON.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_plugin.metrics import REQUIRED

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 4)


def _pytest(*args, cwd=ROOT, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_model):
    results = tmp_path_factory.mktemp("results")
    proc = _pytest("benchmarks", "-m", "not gpu and not slow", f"--qbench-results-dir={results}", "--qbench-samples=8",
                   "--qbench-warmup=2", f"--qbench-batch-sizes={','.join(map(str, BATCH_SIZES))}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run_dir,) = list(results.iterdir())
    return proc, run_dir


def test_every_case_has_every_metric(run):
    _, run_dir = run
    data = json.loads((run_dir / "benchmark.json").read_text())
    cases = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "latency"]
    assert sorted(b["extra_info"]["batch_size"] for b in cases) == sorted(BATCH_SIZES)
    for bench in cases:
        extra = bench["extra_info"]
        missing = [name for name in REQUIRED if extra.get(name) is None]
        assert not missing, f"{bench['name']} lacks {missing}"
        assert len(extra["latency_samples_ns"]) == 8
        assert extra["latency_p50_ms"] <= extra["latency_p95_ms"] <= extra["latency_p99_ms"]
        assert extra["accuracy"] >= 0.85 and extra["cold_start_s"] > 0 and extra["memory_rss_mib"] > 100
    accuracy = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "accuracy"]
    assert len(accuracy) == 1 and accuracy[0]["extra_info"]["rows"] > 500
    qinfo = data["machine_info"]["qbench"]
    assert qinfo["versions"]["vllm"] and qinfo["versions"]["torch"] and qinfo["cpu_name"]
    assert "commit_info" in data and data["qbench"]["run_id"] == run_dir.name


def test_report_holds_the_matrix(run):
    _, run_dir = run
    html = (run_dir / "report.html").read_text()
    assert "qbench-matrix" in html and "p95 (ms)" in html and "cpu_default" in html
    assert "qbench-configs" in html and "macro-F1" in html
    assert "<script src=\"http" not in html and "<link rel=\"stylesheet\" href=\"http" not in html


def test_terminal_summary_and_json_survive(run):
    proc, run_dir = run
    assert "qbench" in proc.stdout and "cpu_default" in proc.stdout
    stored = json.loads((run_dir / "qbench.json").read_text())
    assert stored["configs"]["cpu_default"]["status"] == "ready"


def test_pytest_benchmark_compare_reads_our_json(run):
    _, run_dir = run
    cli = Path(sys.executable).parent / "pytest-benchmark"
    proc = subprocess.run([str(cli), "compare", str(run_dir / "benchmark.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "test_latency[cpu_default-bs1]" in proc.stdout


def test_broken_config_stops_the_run_naming_file_and_field(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "quantization": {"method": "int3"}}))
    proc = _pytest("benchmarks", f"--qbench-configs-dir={tmp_path}", "--collect-only", "-q")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "bad.json" in out and "quantization.method" in out and "valid methods" in out

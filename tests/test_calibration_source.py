"""Calibration never reads the evaluated rows (issue 18, item 2).

A single-file dataset or a saved Dataset reads the same rows under every split name, so
`--qbench-calibration-split train` would calibrate GPTQ/AWQ/int8 on the test rows. The checks run on
real files; one run-level test drives `pytest benchmarks` as a user would (it stops before any engine).
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qbench_plugin.dataset import embedded
from qbench_plugin.config import load_configs
from qbench_plugin.dataset.dataset import load_eval_set, model_labels
from qbench_plugin.preflight import PreflightError, check_calibration

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = load_configs(ROOT / "configs")
TEST_ROWS = embedded.read_jsonl(embedded.DATA_DIR / "test.jsonl")[:40]
TRAIN_ROWS = embedded.read_jsonl(embedded.DATA_DIR / "train.jsonl")[:40]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _settings(dataset: str, calibration_dataset: str = "", split: str = "test", calibration_split: str = "train"):
    return SimpleNamespace(dataset=dataset, split=split, calibration_dataset=calibration_dataset,
                           calibration_split=calibration_split, text_column="text")


def _configs(*names: str):
    return [c for c in CONFIGS if c.name in names]


def test_embedded_default_has_separate_splits(embedded_model):
    texts = load_eval_set("embedded", "test", "text", "label", model_labels(str(embedded_model))).texts
    checked = check_calibration(_settings("embedded"), CONFIGS, texts)
    assert checked == {"calibration_source": "embedded", "calibration_split": "train", "calibration_texts": 256,
                       "calibration_overlap": 0}


def test_one_file_needs_a_calibration_source(tmp_path):
    data = _jsonl(tmp_path / "eval.jsonl", TEST_ROWS)
    texts = [r["text"] for r in TEST_ROWS]
    with pytest.raises(PreflightError) as info:
        check_calibration(_settings(str(data)), _configs("cpu_default", "cpu_gptq_w4a16"), texts)
    message = str(info.value)
    assert f"--qbench-dataset {data} is one file" in message and "--qbench-calibration-dataset" in message
    assert "cpu_gptq_w4a16" in message and "\n" not in message
    # nothing calibrates: nothing to refuse
    assert check_calibration(_settings(str(data)), _configs("cpu_default", "cpu_bnb_int8"), texts) == {}
    # a separate file with other texts calibrates
    calib = _jsonl(tmp_path / "calib.jsonl", TRAIN_ROWS)
    checked = check_calibration(_settings(str(data), str(calib)), _configs("cpu_gptq_w4a16"), texts)
    assert checked["calibration_source"] == str(calib) and checked["calibration_texts"] == len(TRAIN_ROWS)


def test_one_saved_dataset_needs_a_calibration_source(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(TEST_ROWS).save_to_disk(str(saved))
    with pytest.raises(PreflightError, match="is one saved Dataset"):
        check_calibration(_settings(str(saved)), _configs("cpu_int8_w8a8"), [r["text"] for r in TEST_ROWS])


def test_overlapping_texts_are_refused_naming_both_sources(tmp_path):
    data = _jsonl(tmp_path / "eval.jsonl", TEST_ROWS)
    leaked = dict(TEST_ROWS[7], text="  " + TEST_ROWS[7]["text"].upper() + " ")  # case and spacing do not hide it
    calib = _jsonl(tmp_path / "calib.jsonl", TRAIN_ROWS[:10] + [leaked] + TRAIN_ROWS[10:])
    with pytest.raises(PreflightError) as info:
        check_calibration(_settings(str(data), str(calib)), _configs("cpu_awq_w4a16"), [r["text"] for r in TEST_ROWS])
    message = str(info.value)
    assert f"1 of the {len(TRAIN_ROWS) + 1} calibration texts from {calib} split train" in message
    assert f"also in {data} split test" in message and "\n" not in message
    # the same file named as both is caught the same way
    with pytest.raises(PreflightError, match=f"{len(TEST_ROWS)} of the {len(TEST_ROWS)} calibration texts"):
        check_calibration(_settings(str(data), str(data)), _configs("cpu_awq_w4a16"), [r["text"] for r in TEST_ROWS])


def test_only_the_texts_calibration_uses_are_compared(tmp_path):
    data = _jsonl(tmp_path / "eval.jsonl", TEST_ROWS)
    calib = _jsonl(tmp_path / "calib.jsonl", TRAIN_ROWS[:30] + TEST_ROWS[:1])  # the shared text is the 31st
    awq = _configs("cpu_awq_w4a16")[0]
    config = awq.model_copy(update={"quantization": awq.quantization.model_copy(update={"calibration_samples": 30})})
    checked = check_calibration(_settings(str(data), str(calib)), [config], [r["text"] for r in TEST_ROWS])
    assert checked["calibration_texts"] == 30


@pytest.mark.slow
def test_a_run_on_one_file_stops_before_any_engine(tmp_path, embedded_model):
    data = _jsonl(tmp_path / "eval.jsonl", TEST_ROWS)
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-m", "not gpu", f"--qbench-dataset={data}",
                           "--qbench-configs=cpu_default,cpu_gptq_w4a16", f"--qbench-results-dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4 and out.count("ERROR: qbench:") == 1, out[-3000:]
    assert "is one file: every split name reads the same rows" in out and "Traceback" not in out

"""Hard to break: bad data, a failing engine, out of memory, Ctrl-C, and secrets.

The run-level tests drive `pytest benchmarks` in a subprocess with the real vLLM engine; the
out-of-memory test is pure logic (a stand-in engine that raises MemoryError) since a real OOM
cannot be provoked safely on a shared 2-core machine; so is the rounds' gc.freeze test (a stand-in that
records the collector's state at each call).
"""
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qbench_plugin.bench import is_out_of_memory
from qbench_plugin.dataset.dataset import model_labels
from qbench_plugin.measure.rounds import RoundPlan, run_rounds
from qbench_plugin.redact import MASK, scrub, scrub_text

ROOT = Path(__file__).resolve().parents[1]
HF_SECRET = "hf_qbenchTESTsecret0123456789abcdefXYZ"
KEY_SECRET = "rp-qbench-test-key-9f8e7d6c5b4a"


def _run(*args, env=None, timeout=900):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:randomly", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc, proc.stdout + proc.stderr


def _only_dir(path: Path) -> Path:
    (run_dir,) = [p for p in path.iterdir() if p.is_dir() and p.name[0].isdigit()]
    return run_dir


# -- bad data -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory, embedded_model):
    labels = model_labels(str(embedded_model))
    rows = [
        {"text": "<script>alert('qbench')</script> where is my order #A12345?", "label": "order_status"},
        {"text": "¿Dónde está mi pedido? 注文はどこですか — I want a refund", "label": "refund_request"},
        {"text": "cancel my order please", "label": "cancel_order"},
        {"text": "cancel my order please", "label": "cancel_order"},
        {"text": "I need to return this item. " + "It arrived and it is not what I expected at all. " * 30,
         "label": "return_item"},
    ]
    assert all(r["label"] in labels for r in rows)
    path = tmp_path_factory.mktemp("data") / "odd.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_odd_texts_run_and_are_counted(odd_dataset, tmp_path):
    proc, out = _run(f"--qbench-dataset={odd_dataset}", "--qbench-configs=cpu_default", "-k", "test_accuracy[",
                     "--qbench-max-model-len=64", f"--qbench-results-dir={tmp_path}")
    assert proc.returncode == 0, out[-3000:]
    run_dir = _only_dir(tmp_path)
    facts = json.loads((run_dir / "qbench.json").read_text())["dataset"]
    assert facts["rows"] == 5 and facts["duplicate_rows"] == 1 and facts["non_ascii_rows"] == 1
    assert facts["truncated_rows"] == 1 and facts["truncation"] == "truncate"
    said = "split test: 5 rows, 1 of them (20.0%) longer than max_model_len 64 tokens and truncated to it"
    assert f"qbench dataset {odd_dataset} {said}" in out  # the terminal summary
    assert said in (run_dir / "EXPERIMENT_LOG.md").read_text()
    assert "<script>alert('qbench')" not in (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_over_length_texts_can_be_rejected_before_any_engine_starts(odd_dataset, tmp_path):
    proc, out = _run(f"--qbench-dataset={odd_dataset}", "--qbench-configs=cpu_default", "-k", "test_accuracy[",
                     "--qbench-max-model-len=64", "--qbench-truncation=reject", f"--qbench-results-dir={tmp_path}")
    assert proc.returncode == 4  # a usage error, before any test ran
    assert "1 texts are longer than max_model_len 64 tokens (line 5 of odd.jsonl)" in out
    assert "Initializing a V1 LLM engine" not in out


@pytest.mark.slow
def test_empty_text_is_a_clear_error(tmp_path, embedded_model):
    path = tmp_path / "empty_text.jsonl"
    path.write_text(json.dumps({"text": "where is it", "label": "order_status"}) + "\n"
                    + json.dumps({"text": "   ", "label": "order_status"}) + "\n")
    proc, out = _run(f"--qbench-dataset={path}", "--qbench-configs=cpu_default", "-k", "test_accuracy[",
                     f"--qbench-results-dir={tmp_path / 'r'}")
    assert proc.returncode == 4
    assert "1 rows have empty text in column 'text' (line 2 of empty_text.jsonl); remove them" in out


# -- a config that cannot start fails alone; secrets stay out -----------------------------------

@pytest.fixture(scope="module")
def broken_and_good(tmp_path_factory, embedded_model):
    tmp = tmp_path_factory.mktemp("fault")
    configs = tmp / "configs"
    configs.mkdir()
    (configs / "good.json").write_text(json.dumps({"name": "good", "dtype": "bfloat16", "baseline": True}))
    (configs / "broken.json").write_text(json.dumps(
        {"name": "broken", "quantization": {"method": "gptq", "checkpoint": str(tmp / "no-such-checkpoint")}}))
    proc, out = _run(f"--qbench-configs-dir={configs}", "--qbench-batch-sizes=1", "--qbench-samples=5", "--qbench-rounds=5",
                     "-k", "latency or accuracy", f"--qbench-results-dir={tmp / 'results'}",
                     env={"HF_TOKEN": HF_SECRET, "RUNPOD_API_KEY": KEY_SECRET})
    return proc, out, _only_dir(tmp / "results")


@pytest.mark.slow
def test_engine_that_fails_to_start_fails_only_its_config(broken_and_good):
    proc, out, run_dir = broken_and_good
    assert proc.returncode == 1
    assert "ERROR benchmarks/test_latency.py::test_latency[broken-bs1]" in out
    configs = json.loads((run_dir / "qbench.json").read_text())["configs"]
    assert configs["broken"]["status"] == "failed" and "no-such-checkpoint" in configs["broken"]["reason"]
    assert configs["good"]["status"] == "ready" and configs["good"]["metrics"]["accuracy"] > 0.85
    cases = json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]
    assert {b["extra_info"]["config"] for b in cases} == {"good"}


@pytest.mark.slow
def test_secrets_reach_no_file_and_no_log(broken_and_good):
    proc, out, run_dir = broken_and_good
    assert HF_SECRET not in out and KEY_SECRET not in out
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert HF_SECRET.encode() not in data and KEY_SECRET.encode() not in data, path


def test_scrub_masks_env_secrets_and_token_shapes(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", KEY_SECRET)
    text = f"POST failed with key {KEY_SECRET}; url https://x/?t=hf_abcdefghijklmnopqrstuvwxyz123; Bearer abc.def-123"
    assert scrub_text(text) == f"POST failed with key {MASK}; url https://x/?t={MASK}; Bearer {MASK}"
    assert scrub({"a": [KEY_SECRET, 3], KEY_SECRET: None}) == {"a": [MASK, 3], MASK: None}


# -- out of memory at one batch size ------------------------------------------------------------

class _EngineOutOfMemoryFrom:
    """Raises MemoryError from a batch size on (a stand-in for the out-of-memory logic alone)."""
    name = "stand-in"

    def __init__(self, limit):
        self.limit = limit

    def classify(self, texts):
        if len(texts) >= self.limit:
            raise MemoryError(f"cannot allocate a batch of {len(texts)}")
        return np.zeros((len(texts), 2), dtype=np.float32)


def test_out_of_memory_fails_its_case_and_skips_larger_batches():
    cases = [("c", 4), ("c", 8), ("c", 16), ("d", 16)]
    engines = {"c": _EngineOutOfMemoryFrom(8), "d": _EngineOutOfMemoryFrom(99)}
    timings = run_rounds(engines, cases, ["a", "b"], RoundPlan.from_samples(6, 2, 1, 0),
                         is_out_of_memory=is_out_of_memory)
    assert len(timings["c", 4].samples_ns) == 6 and timings["c", 4].error is None
    assert timings["c", 8].out_of_memory and "MemoryError: cannot allocate a batch of 8" in timings["c", 8].error
    assert timings["c", 16].error == "not run: batch size 8 ran out of memory" and not timings["c", 16].samples_ns
    assert len(timings["d", 16].samples_ns) == 6  # another config's larger batch runs on


class _EngineSeeingFrozen:
    """Records how many objects the collector had frozen at each call, and interrupts at a given call."""
    name = "stand-in"

    def __init__(self, interrupt_at=None):
        self.frozen, self.interrupt_at = [], interrupt_at

    def classify(self, texts):
        self.frozen.append(gc.get_freeze_count())
        if len(self.frozen) == self.interrupt_at:
            raise KeyboardInterrupt
        return np.zeros((len(texts), 2), dtype=np.float32)


@pytest.mark.parametrize("frozen_before", [False, True])
@pytest.mark.parametrize("interrupt_at", [None, 7])
def test_rounds_freeze_what_was_alive_and_leave_the_freeze_as_found(interrupt_at, frozen_before):
    # the per-round collection must not rescan engines and models (~0.3 s a round with vLLM loaded);
    # a heap nobody froze is unfrozen afterwards, also when Ctrl-C ends the rounds, and one that an
    # in-process vLLM engine core froze stays frozen
    was = gc.get_freeze_count()
    gc.unfreeze()
    if frozen_before:
        gc.freeze()
    try:
        before = gc.get_freeze_count()
        engine = _EngineSeeingFrozen(interrupt_at)
        plan = RoundPlan.from_samples(6, 3, 1, 0)
        if interrupt_at is None:
            run_rounds({"c": engine}, [("c", 2)], ["a", "b"], plan, is_out_of_memory=is_out_of_memory)
        else:
            with pytest.raises(KeyboardInterrupt):
                run_rounds({"c": engine}, [("c", 2)], ["a", "b"], plan, is_out_of_memory=is_out_of_memory)
        assert engine.frozen[0] <= before  # the warm-up runs before the freeze (frozen objects can be freed)
        assert all(n > engine.frozen[0] for n in engine.frozen[1:]), engine.frozen
        assert (gc.get_freeze_count() > 0) if frozen_before else (gc.get_freeze_count() == 0)
    finally:
        gc.unfreeze()
        if was:
            gc.freeze()


# -- Ctrl-C -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_keeps_finished_cases_and_marks_the_run_partial(tmp_path, embedded_model):
    # two configs, interleaved: the interruption cuts both short in the same round
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:randomly", "--qbench-configs=cpu_default,cpu_bnb_int8",
           "-k", "latency", "--qbench-batch-sizes=1,2,4,8,16,32", "--qbench-samples=60",
           f"--qbench-results-dir={tmp_path}"]
    # a new session, as a terminal's foreground group: Ctrl-C reaches pytest and vLLM's processes alike.
    # Output goes to a file: an unread pipe fills up and blocks the child.
    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 600
    rounds = 0
    while time.monotonic() < deadline and proc.poll() is None:
        record = next(tmp_path.glob("2*/qbench.json"), None)
        if record is not None:  # atomic writes: always whole JSON
            rounds = json.loads(record.read_text()).get("measurement", {}).get("rounds_done", 0)
            if rounds >= 2:
                break
        time.sleep(0.5)
    assert rounds >= 2, "the run finished no two rounds in time"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=180)
    log.seek(0)
    out = log.read()
    assert proc.returncode != 0, out[-3000:]
    assert "KeyboardInterrupt" in out or "Interrupted" in out
    run_dir = _only_dir(tmp_path)
    record = json.loads((run_dir / "qbench.json").read_text())
    assert record["status"] == "partial", record["status"]
    # every case of both configs keeps the whole rounds that finished before Ctrl-C, and only those
    cases = record["cases"]
    assert len(cases) == 12 and {c["status"] for c in cases} == {"partial"}
    kept = {len(set(c["sample_rounds"])) for c in cases}
    assert len(kept) == 1 and 2 <= kept.pop() < 10, kept
    assert record["measurement"]["interrupted"].startswith("Ctrl-C after")
    assert record["measurement"]["seconds"] > 0  # how long the finished rounds took, even when cut short
    html = (run_dir / "report.html").read_text()
    assert "PARTIAL RUN" in html
    assert "**PARTIAL RUN**" in (run_dir / "EXPERIMENT_LOG.md").read_text()
    line = next(l for l in out.splitlines() if l.startswith("qbench recommendation"))
    assert line.startswith("qbench recommendation (PARTIAL RUN: covers only the configs that finished latency cases")
    assert not list(run_dir.glob("*.writing")) and not list(run_dir.glob("*.tmp"))

"""A run's status in both JSON files: complete when every selected test ran, partial (with the reason)
when -x, --maxfail or SIGTERM stopped it. Drives pytest with the plugin on small test files: the status
is the plugin's doing, not an engine's, so no engine is started."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pytest sessions in subprocesses

TESTS = '''
import time
from pathlib import Path

def test_timed(benchmark):
    benchmark.pedantic(lambda: None, rounds=3, iterations=1)

def test_fails():
    assert {fail}

def test_waits():
    Path("{marker}").write_text("started")
    time.sleep({sleep})

def test_last():
    pass
'''


def _run(tmp_path: Path, *args: str, fail: bool = False, sleep: float = 0, terminate: bool = False):
    marker = tmp_path / "waiting"
    (tmp_path / "test_small.py").write_text(TESTS.format(fail=not fail, marker=marker, sleep=sleep))
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "pytest", str(tmp_path / "test_small.py"), "-p", "no:cacheprovider", "-p",
           "no:randomly", "-q", "--rootdir", str(tmp_path), "-c", os.devnull, "--qbench-report=always",
           f"--qbench-results-dir={results}", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if terminate:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    (run_dir,) = results.iterdir()
    return proc.returncode, out, run_dir, json.loads((run_dir / "benchmark.json").read_text())["qbench"]


def test_a_complete_run_says_complete_in_benchmark_json(tmp_path):
    code, out, _, record = _run(tmp_path)
    assert code == 0, out[-3000:]
    assert record["status"] == "complete" and record["status_reason"] is None


def test_a_run_stopped_by_maxfail_is_partial(tmp_path):
    code, out, _, record = _run(tmp_path, "-x", fail=True)
    assert code == 1, out[-3000:]
    assert record["status"] == "partial", record
    assert record["status_reason"].startswith("pytest stopped early (-x or --maxfail): stopping after 1 failures; "
                                              "2 of 4 selected tests did not run")
    # a failure that leaves nothing unrun does not make the run partial
    again = tmp_path / "again"
    again.mkdir()
    code, _, _, record = _run(again, "--maxfail=2", fail=True)
    assert code == 1 and record["status"] == "complete"


def test_sigterm_is_an_interruption_with_every_output_written(tmp_path):
    code, out, run_dir, record = _run(tmp_path, sleep=60, terminate=True)
    assert code == 2, out[-3000:]  # pytest: interrupted
    assert record["status"] == "partial" and "(SIGTERM)" in record["status_reason"], record
    assert (run_dir / "report.html").exists(), sorted(p.name for p in run_dir.iterdir())

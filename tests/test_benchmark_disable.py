"""--benchmark-disable makes pytest-benchmark's pedantic call the target once, with no rounds: a latency
measurement then has no timed batches and must skip with the reason, not fail on an empty list. Drives
pytest-benchmark itself; the engine is never called (the skip comes first), so none is started."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a pytest session in a subprocess

TESTS = '''
from qbench_plugin.bench import measure_latency
from qbench_plugin.record.run import RunStore


class NeverCalled:
    name = "vllm"

    def classify(self, texts):
        raise AssertionError("the engine must not be called under --benchmark-disable")


def test_latency(benchmark):
    store = RunStore(run_id="r", out_dir=None, settings={})
    measure_latency(benchmark, NeverCalled(), ["a text"] * 8, 4, samples=10, warmup=2, store=store, config="c")
'''


def test_latency_measurement_skips_with_the_reason_under_benchmark_disable(tmp_path):
    (tmp_path / "test_disabled.py").write_text(TESTS)
    proc = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_disabled.py"), "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-rs", "--benchmark-disable", "--rootdir", str(tmp_path), "-c",
                           os.devnull], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 skipped" in out and "--benchmark-disable: pytest-benchmark calls the target once" in out, out[-3000:]

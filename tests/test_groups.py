"""pytest-benchmark groups: latency cases keep their config's group; accuracy, sweep, load and overhead
entries get their own, so `pytest-benchmark compare --group-by=group` does not mix a 10 s accuracy round
into the latency columns. Drives pytest-benchmark itself (no engine: the groups are the plugin's doing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a pytest session in a subprocess

TESTS = '''
import pytest

@pytest.mark.parametrize("kind", ["latency", "accuracy", "saturation", "load", "overhead"])
def test_case(benchmark, kind):
    benchmark.group = "cpu_default"  # what bench.py and loadtest.py set
    benchmark.pedantic(lambda: None, rounds=3, iterations=1)
    benchmark.extra_info.update(kind=kind, config="cpu_default")
'''


def test_each_kind_of_measurement_has_its_own_group(tmp_path):
    (tmp_path / "test_kinds.py").write_text(TESTS)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_kinds.py"), "-p", "no:cacheprovider",
                           f"--benchmark-json={out}", "-q", "--rootdir", str(tmp_path), "-c", os.devnull],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    groups = {b["extra_info"]["kind"]: b["group"] for b in json.loads(out.read_text())["benchmarks"]}
    assert groups == {"latency": "cpu_default", "accuracy": "cpu_default accuracy", "saturation": "cpu_default sweep",
                      "load": "cpu_default load", "overhead": "cpu_default overhead"}
    cli = Path(sys.executable).parent / "pytest-benchmark"
    shown = subprocess.run([str(cli), "compare", str(out), "--group-by=group"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "benchmark 'cpu_default accuracy': 1 tests" in shown.stdout
    assert "benchmark 'cpu_default': 1 tests" in shown.stdout  # the latency case alone

"""Command-line options: `pytest --help` lists every one (argparse %-formats help strings)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_plugin.options import OPTIONS

pytestmark = pytest.mark.slow  # a pytest session in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_help_lists_every_qbench_option():
    # the plugin loads for every pytest command in the venv, so a crash here hides all help
    proc = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for opt in OPTIONS:
        flag = "--qbench-" + opt.name.replace("_", "-")
        assert flag in proc.stdout, flag
    assert "latency_p95_ms=15%,throughput_samples_per_s=10%" in " ".join(proc.stdout.split())

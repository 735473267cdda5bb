"""The verdicts' sensitivity, shown on the real engine rather than assumed: a B that is slower by
construction (tests/plugins/slowed_engine.py: every classify call 25% longer, throughput x0.8) is
run beside an identical A in one session, interleaved, and compared round by round."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_plugin.report.compare import NOISE_TESTED, compare_configs

pytestmark = pytest.mark.slow  # two benchmark runs in subprocesses, each starting vLLM engines

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def a_and_slow_b(tmp_path_factory, embedded_model):
    tmp = tmp_path_factory.mktemp("calibration")
    configs = tmp / "configs"
    configs.mkdir()
    base = json.loads((ROOT / "configs" / "cpu_default.json").read_text())
    (configs / "a.json").write_text(json.dumps({**base, "name": "a"}))
    (configs / "a2.json").write_text(json.dumps({**base, "name": "a2", "baseline": False}))  # a again
    (configs / "b.json").write_text(json.dumps({**base, "name": "b", "baseline": False}))
    env = dict(os.environ, PYTHONUNBUFFERED="1", QBENCH_TEST_SLOW_CONFIGS="b",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "slowed_engine", "benchmarks", "-k", "latency",
                           f"--qbench-configs-dir={configs}", "--qbench-batch-sizes=1,8",
                           # 100 rounds of 10: 10 rounds left p50's paired interval at +-20-30% on a busy
                           # 2-core machine, too wide to see 25%. A tail is decided only with 5 batches beyond
                           # it (tails.py), but at 500 in 50 rounds p99 hung on a few rounds' spikes (one CI
                           # run: three of a2's top four bs-1 batches in one round, b's p99 interval against it
                           # 0.96-1.53, so 6 of 8 worse); 10 beyond over 100 rounds weighs each round half
                           "--qbench-samples=1000", "--qbench-rounds=100",
                           f"--qbench-results-dir={tmp / 'results'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (run_dir,) = (tmp / "results").iterdir()
    return run_dir


def _speed(run_dir, a, b):
    _, _, long = compare_configs(run_dir, a, b)
    speed = long[long["metric"].isin(NOISE_TESTED)]
    assert len(speed) == 8  # p50, p95, p99, throughput at two batch sizes
    return speed


@pytest.mark.parametrize("reference", ["a", "a2"])
def test_a_slower_config_is_flagged_worse_round_by_round(a_and_slow_b, reference):
    """The issue's bar: at least 80% of the slowed config's speed deltas called worse (7 of its 8),
    throughput worse at every batch size, nothing better. Seen at 500 batches in 50 rounds: 8 of 8
    against both identical configs, the weakest interval 1.19-1.27 (p50 at bs 8); and in one CI run
    6 of 8 against a2 (both p99s within noise), hence 1000 in 100."""
    speed = _speed(a_and_slow_b, reference, "b")
    table = speed[["case", "metric", "a", "b", "ci_low", "ci_high", "verdict"]].to_string()
    throughput = speed[speed["metric"] == "throughput_samples_per_s"]
    assert (throughput["verdict"] == "worse").all(), table
    assert (speed["verdict"] == "worse").mean() >= 0.8 and not (speed["verdict"] == "better").any(), table


def test_the_slowed_config_is_told_from_an_identical_one(a_and_slow_b):
    """Two engines of the same config can differ on this CPU (seen: a2 1.11x a's throughput, interval
    1.04-1.19: where each engine's threads run on 2 cores), so an identical pair is not always 'within
    noise'; but the slowed config is slower than both identical ones, beyond that spread."""
    same = _speed(a_and_slow_b, "a", "a2")
    ratios = (same["b"] / same["a"])[same["metric"] == "throughput_samples_per_s"]
    assert ratios.between(0.85, 1.18).all(), same.to_string()
    for reference in ("a", "a2"):
        slow = _speed(a_and_slow_b, reference, "b")
        thr = slow[slow["metric"] == "throughput_samples_per_s"]
        assert (thr["b"] / thr["a"] < 0.92).all() and (thr["ci_high"] < 1).all(), slow.to_string()

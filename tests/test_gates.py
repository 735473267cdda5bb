"""Gate logic on fixed inputs: accuracy thresholds, noise-aware performance decisions."""
import json

import numpy as np
import pytest

from qbench_plugin.config import Gates
from qbench_plugin.gates import (GateFailure, GateKeeper, accuracy_gates, effective_gates, load_saved_cases,
                                 parse_thresholds, perf_gates)
from qbench_plugin.uncertainty import Timed, ratio_interval

METRICS = {"accuracy": 0.93, "accuracy_delta": -0.015, "flip_rate": 0.04}


def test_accuracy_gates_name_config_threshold_and_value():
    results = accuracy_gates("gptq", Gates(min_accuracy=0.95, max_accuracy_drop=0.01, max_flip_rate=0.05),
                             METRICS, "base")
    by_gate = {r.gate: r for r in results}
    assert by_gate["min_accuracy"].passed is False
    assert by_gate["min_accuracy"].message == "config gptq: accuracy 0.9300 is below min_accuracy 0.9500"
    assert by_gate["max_accuracy_drop"].passed is False
    assert "accuracy drop vs baseline base 0.0150 exceeds max_accuracy_drop 0.0100" in by_gate["max_accuracy_drop"].message
    assert by_gate["max_flip_rate"].passed is True


def test_missing_baseline_is_undecided_not_failed():
    (result,) = accuracy_gates("base", Gates(max_flip_rate=0.05), {"accuracy": 0.9}, None)
    assert result.passed is None and "no baseline comparison" in result.message


def test_command_line_override_wins():
    gates = effective_gates(Gates(min_accuracy=0.5, max_flip_rate=0.1), {"min_accuracy": 0.99, "max_flip_rate": None})
    assert gates.min_accuracy == 0.99 and gates.max_flip_rate == 0.1


def test_gatekeeper_records_every_verdict_and_fails_with_all_messages():
    seen = []
    keeper = GateKeeper({}, None, {}, seen.append)
    with pytest.raises(GateFailure) as info:
        keeper.check_accuracy("c", Gates(min_accuracy=0.99, max_accuracy_drop=0.001), METRICS, "base")
    assert len(seen) == 2 and "min_accuracy 0.9900" in str(info.value) and "max_accuracy_drop" in str(info.value)
    assert keeper.check_latency("c", 1, {}) == []  # no saved run: no performance gate


def _samples(rng, n=60, ms=20.0, scale=1.0):
    return (rng.lognormal(np.log(ms), 0.15, size=n) * scale * 1e6).astype(np.int64).tolist()


def test_clear_regression_fails():
    rng = np.random.default_rng(1)
    saved, current = _samples(rng), _samples(rng, scale=3.0)
    results = perf_gates("c", 4, {"latency_samples_ns": current}, {"latency_samples_ns": saved}, parse_thresholds(""))
    assert all(r.passed is False for r in results)
    assert any(r.message.startswith("REGRESSION case c-bs4: latency_p50_ms") for r in results)


def test_noise_within_threshold_passes():
    for seed in range(20):  # same distribution, independent draws: never a regression
        rng = np.random.default_rng(seed)
        saved, current = _samples(rng), _samples(rng, scale=1.03)
        results = perf_gates("c", 4, {"latency_samples_ns": current}, {"latency_samples_ns": saved},
                             parse_thresholds(""))
        assert all(r.passed for r in results), [r.message for r in results if not r.passed]


def test_improvement_is_reported_as_better():
    rng = np.random.default_rng(2)
    results = perf_gates("c", 1, {"latency_samples_ns": _samples(rng, scale=0.5)},
                         {"latency_samples_ns": _samples(rng)}, {"throughput_samples_per_s": 0.1})
    assert results[0].passed and "better than the saved run" in results[0].message


def test_ratio_interval_point_estimate():
    ratio, low, high = ratio_interval(Timed.of([2_000_000] * 20, 1), Timed.of([1_000_000] * 20, 1), "latency_p50_ms",
                                      paired=False)
    assert ratio == low == high == 2.0


def test_too_few_samples_or_rounds_is_undecided():
    (result,) = perf_gates("c", 1, {"latency_samples_ns": [1] * 5}, {"latency_samples_ns": [1] * 50}, {})
    assert result.passed is None and "10 unlabelled batches" in result.message
    rounds = {"latency_samples_ns": [1] * 40, "latency_sample_rounds": [i // 10 for i in range(40)]}  # 4 rounds
    (result,) = perf_gates("c", 1, rounds, {"latency_samples_ns": [1] * 50}, {})
    assert result.passed is None and "at least 5 rounds" in result.message


def test_parse_thresholds():
    t = parse_thresholds("latency_p95_ms=5%, throughput_samples_per_s=0.2")
    assert t["latency_p95_ms"] == 0.05 and t["throughput_samples_per_s"] == 0.2 and t["latency_p50_ms"] == 0.10
    with pytest.raises(ValueError, match="expected METRIC=PERCENT%"):
        parse_thresholds("p95=5%")


def test_half_written_saved_run_is_detected(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text('{"benchmarks": [{"extra_info": {"kind": "lat')
    with pytest.raises(ValueError, match="half-written or damaged"):
        load_saved_cases(path)
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="no qbench latency cases"):
        load_saved_cases(tmp_path)


def _rounds(rng, scale=1.0, rounds=10, block=6):
    return {"latency_samples_ns": _samples(rng, n=rounds * block, scale=scale),
            "latency_sample_rounds": [i // block for i in range(rounds * block)]}


def test_gate_judges_on_the_hosts_scale_when_both_runs_ran_the_probe():
    """Current run 1.3x slower on a host the probe finds 1.3x slower: passes at the small normalized
    allowance; the same slowdown on an unchanged host fails, though the raw allowance would pass it."""
    rng = np.random.default_rng(11)
    saved, current = _rounds(rng), _rounds(rng, scale=1.3)
    probe = [0.012 * f for f in (1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99)]
    seen = []

    def keeper(current_probe, run_noise=0.25):
        return GateKeeper({}, {("c", 8): saved}, {"latency_p50_ms": 0.10}, seen.append, run_noise=run_noise,
                          normalized_noise=0.05, saved_probe=probe, current_probe=lambda: current_probe)

    (passed,) = keeper([1.3 * p for p in probe]).check_latency("c", 8, current)
    assert passed.passed and "host-probe scale" in passed.message
    with pytest.raises(GateFailure, match="REGRESSION case c-bs8"):
        keeper(probe).check_latency("c", 8, current)
    (raw,) = keeper(None).check_latency("c", 8, current)  # no probe in this run: the raw allowance
    assert raw.passed and "host-probe" not in raw.message

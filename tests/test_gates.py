"""Gate logic on fixed inputs: accuracy thresholds, noise-aware performance decisions."""
import json

import numpy as np
import pytest

from qbench_plugin.config import Gates
from qbench_plugin.gates.gates import (GateFailure, GateKeeper, accuracy_gates, effective_gates, load_saved_cases,
                                       parse_thresholds, perf_comparisons, perf_gates, relative_perf_gates)
from qbench_plugin.stats.uncertainty import Timed, ratio_interval

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
    decided = [r for r in results if not r.by_rule]
    assert {r.gate for r in decided} == {"perf_regression:latency_p50_ms", "perf_regression:throughput_samples_per_s"}
    assert all(r.passed is False for r in decided)
    assert any(r.message.startswith("REGRESSION case c-bs4: latency_p50_ms") for r in results)


def test_noise_within_threshold_passes():
    for seed in range(20):  # same distribution, independent draws: never a regression
        rng = np.random.default_rng(seed)
        saved, current = _samples(rng), _samples(rng, scale=1.03)
        results = perf_gates("c", 4, {"latency_samples_ns": current}, {"latency_samples_ns": saved},
                             parse_thresholds(""))
        assert all(r.passed is not False for r in results), [r.message for r in results if r.passed is False]


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
        parse_thresholds("latency_p95_ms")
    with pytest.raises(ValueError, match="'p95' is not gated"):
        parse_thresholds("p95=5%")


def test_half_written_saved_run_is_detected(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text('{"benchmarks": [{"extra_info": {"kind": "lat')
    with pytest.raises(ValueError, match="half-written or damaged"):
        load_saved_cases(path)
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="no qbench latency cases"):
        load_saved_cases(tmp_path)


# -- fail closed: names, tails, many comparisons, strict -----------------------------------------

def test_threshold_for_a_metric_that_is_never_gated_is_refused():
    with pytest.raises(ValueError) as info:
        parse_thresholds("latency_p95_ms=5%,memory_rss_peak_mib=5%")
    text = str(info.value)
    assert "'memory_rss_peak_mib' is not gated" in text and "latency_p99_ms" in text and "\n" not in text


def _rounds(rng, rounds, block, scale=1.0):
    return {"latency_samples_ns": _samples(rng, n=rounds * block, scale=scale),
            "latency_sample_rounds": [i // block for i in range(rounds * block)]}


def test_gate_names_a_slower_machine_but_judges_the_measured_figures():
    """This run 1.3x slower on a machine the probe finds 1.3x slower: still a regression (the probe
    explains, it does not excuse), and the message says the machine may explain it."""
    rng = np.random.default_rng(11)
    saved, current = _rounds(rng, 10, 6), _rounds(rng, 10, 6, 1.3)
    probe = [0.012 * f for f in (1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99)]

    def keeper(current_probe):
        return GateKeeper({}, {("c", 8): saved}, {"latency_p50_ms": 0.10}, lambda r: None, run_noise=0.0,
                          saved_probe=probe, current_probe=lambda: current_probe)

    with pytest.raises(GateFailure, match="this run's machine was slower than the saved run's beyond"):
        keeper([1.3 * p for p in probe]).check_latency("c", 8, current)
    with pytest.raises(GateFailure) as same_machine:
        keeper(probe).check_latency("c", 8, current)
    assert "host probe this run/the saved run x1.00" in str(same_machine.value)
    assert "beyond" not in str(same_machine.value)
    with pytest.raises(GateFailure) as unprobed:
        keeper(None).check_latency("c", 8, current)
    assert "host probe" not in str(unprobed.value)


def test_tails_of_too_few_batches_are_not_gated():
    rng = np.random.default_rng(3)
    # 3x slower: the tails would regress, but 50 batches hold 2.5 beyond p95 and 0.5 beyond p99
    results = {r.gate: r for r in perf_gates("c", 1, _rounds(rng, 10, 5, 3.0), _rounds(rng, 10, 5), parse_thresholds(""))}
    p95, p99 = results["perf_regression:latency_p95_ms"], results["perf_regression:latency_p99_ms"]
    assert p95.passed is None and p95.by_rule and "p95 of 50 batches is about the 3rd largest (max of n); not gated" in p95.message
    assert "(100 batches)" in p95.message
    assert p99.passed is None and "p99 of 50 batches is about the largest" in p99.message and "(500 batches)" in p99.message
    assert results["perf_regression:latency_p50_ms"].passed is False
    # from 500 batches on both sides the p99 is decided
    results = {r.gate: r for r in perf_gates("c", 1, _rounds(rng, 10, 50, 3.0), _rounds(rng, 10, 50), parse_thresholds(""))}
    assert results["perf_regression:latency_p99_ms"].passed is False
    assert results["perf_regression:latency_p95_ms"].passed is False


def test_strict_fails_what_cannot_be_decided_but_not_a_tail_left_out_by_rule():
    rng = np.random.default_rng(4)
    seen = []
    lenient = GateKeeper({}, {("c", 2): _rounds(rng, 10, 5)}, parse_thresholds(""), seen.append)
    (missing,) = lenient.check_latency("c", 1, _rounds(rng, 10, 5))  # not in the saved run: n/a, passes
    assert missing.passed is None
    strict = GateKeeper({}, {("c", 2): _rounds(rng, 10, 5)}, parse_thresholds(""), seen.append, strict=True)
    with pytest.raises(GateFailure, match=r"UNDECIDED \(--qbench-gate-strict\) case c-bs1: not in the saved run"):
        strict.check_latency("c", 1, _rounds(rng, 10, 5))
    assert seen[-1].passed is False
    results = strict.check_latency("c", 2, _rounds(rng, 10, 5))  # same speed; tails of 50 not gated, not failed
    assert [r.passed for r in results if r.by_rule] == [None, None]
    assert all(r.passed for r in results if not r.by_rule)


def test_strict_does_not_fail_the_baseline_config_for_having_no_baseline():
    keeper = GateKeeper({}, None, {}, lambda r: None, strict=True)
    results = keeper.check_accuracy("base", Gates(max_accuracy_drop=0.01, max_flip_rate=0.05), {"accuracy": 0.9},
                                    None, is_baseline=True)
    assert [r.passed for r in results] == [True, True] and "base (itself)" in results[0].message
    with pytest.raises(GateFailure, match="UNDECIDED"):  # a non-baseline config without the comparison
        keeper.check_accuracy("q", Gates(max_flip_rate=0.05), {"accuracy": 0.9}, None)


def test_many_cases_gated_together_do_not_fail_on_noise():
    """Identical runs, 40 cases x 2 metrics: each interval alone at 95% lets a one-sided miss through about
    once in 30 (a bootstrap over 10 rounds runs a little narrow), so an uncorrected run flags several; at
    the Bonferroni level a run rarely flags one (seen: 0-1 in 200 such cases)."""
    thresholds = {"latency_p50_ms": 0.0, "throughput_samples_per_s": 0.0}  # no slack: noise alone decides

    def false_regressions(comparisons: int) -> int:
        keeper = GateKeeper({}, {}, thresholds, lambda r: None, comparisons=comparisons)
        flagged = 0
        for case in range(40):
            rng = np.random.default_rng(100 + case)
            keeper.saved_cases[("c", case + 1)] = _rounds(rng, 10, 5)
            try:
                keeper.check_latency("c", case + 1, _rounds(rng, 10, 5))
            except GateFailure as exc:
                flagged += str(exc).count("REGRESSION")
        return flagged

    assert false_regressions(1) >= 2
    assert false_regressions(80) <= 1
    assert perf_comparisons(40, parse_thresholds(""), 50) == 80  # p50 and throughput; tails of 50 not gated
    assert perf_comparisons(40, parse_thresholds(""), 500) == 160


def test_a_worker_without_the_baseline_decides_min_accuracy_and_leaves_the_rest():
    """Under -n a worker that lacks the baseline config skips the drop and flip-rate gates (naming them)
    and hands the config to the controller; min_accuracy it decides itself, failing the test if it fails."""
    seen, left = [], []
    keeper = GateKeeper({}, None, {}, seen.append, defer=left.append)
    rules = Gates(min_accuracy=0.9, max_accuracy_drop=0.01, max_flip_rate=0.05)
    with pytest.raises(pytest.skip.Exception, match="max_accuracy_drop, max_flip_rate decided after the merge"):
        keeper.check_accuracy("gptq", rules, {"accuracy": 0.93}, None)
    assert left == ["gptq"] and [r.gate for r in seen] == ["min_accuracy"] and seen[0].passed
    with pytest.raises(GateFailure, match="below min_accuracy"):
        keeper.check_accuracy("awq", Gates(min_accuracy=0.95, max_flip_rate=0.05), {"accuracy": 0.93}, None)
    assert left == ["gptq"]  # a failing local gate fails the test there; nothing is left for later
    # the baseline itself and a config compared on this worker decide everything here
    assert all(r.passed for r in keeper.check_accuracy("base", rules, {"accuracy": 0.93}, None, is_baseline=True))
    loose = Gates(min_accuracy=0.9, max_accuracy_drop=0.02, max_flip_rate=0.05)
    assert len(keeper.check_accuracy("int8", loose, METRICS, "base")) == 3 and left == ["gptq"]


def test_gates_after_merge_decide_the_baseline_gates_on_merged_records():
    from types import SimpleNamespace

    from qbench_plugin.config import BenchConfig
    from qbench_plugin.gates.gates import gates_after_merge

    configs = {"gptq": BenchConfig(name="gptq", gates=Gates(min_accuracy=0.5, max_accuracy_drop=0.01)),
               "awq": BenchConfig(name="awq", gates=Gates(max_flip_rate=0.05))}
    records = {"gptq": SimpleNamespace(metrics=METRICS, info={"baseline": "base"}),
               "awq": SimpleNamespace(metrics={"accuracy": 0.9}, info={})}  # its baseline never ran
    results = gates_after_merge(configs, records, {"max_accuracy_drop": None})
    assert [(r.config, r.gate, r.passed) for r in results] == [("gptq", "max_accuracy_drop", False),
                                                               ("awq", "max_flip_rate", None)]
    assert "drop vs baseline base 0.0150 exceeds max_accuracy_drop 0.0100" in results[0].message
    assert gates_after_merge(configs, records, {"max_accuracy_drop": 0.02})[0].passed  # the override wins
    strict = gates_after_merge(configs, records, {}, strict=True)
    assert strict[1].passed is False and strict[1].message.startswith("UNDECIDED")


# -- --qbench-perf-relative-to ------------------------------------------------------------------------

def _run(rng, rounds=20, config_scale=1.0, session_scale=1.0):
    """One run's (config case, reference case): a shared drift per round and a whole-session speed."""
    drift = rng.lognormal(0.0, 0.10, size=rounds) * session_scale
    labels = list(range(rounds))

    def case(scale):
        ns = (20e6 * scale * drift * rng.lognormal(0.0, 0.03, size=rounds)).astype(np.int64).tolist()
        return {"latency_samples_ns": ns, "latency_sample_rounds": labels}

    return case(config_scale), case(1.0)


def test_relative_gate_cancels_a_session_shift_the_absolute_gate_cannot_allow():
    rng = np.random.default_rng(5)
    saved, current = _run(rng), _run(rng, session_scale=1.4)  # the whole second session 40% slower
    thresholds = parse_thresholds("")
    absolute = perf_gates("gptq", 8, current[0], saved[0], thresholds, run_noise=0.2)
    assert any(r.passed is False for r in absolute)
    relative = relative_perf_gates("gptq", 8, "fp16", current, saved, thresholds, run_noise=0.1)
    assert [r.passed for r in relative if not r.by_rule] == [True, True]
    assert "against fp16 than in the saved run" in relative[0].message
    assert "relative run-to-run noise 10%" in relative[0].message


def test_relative_gate_catches_one_config_slowed_against_the_reference_inside_a_shift():
    rng = np.random.default_rng(6)
    saved, current = _run(rng), _run(rng, config_scale=1.3, session_scale=0.8)  # faster session, gptq 30% slower in it
    relative = relative_perf_gates("gptq", 8, "fp16", current, saved, parse_thresholds(""), run_noise=0.1)
    decided = [r for r in relative if not r.by_rule]
    assert decided and all(r.passed is False for r in decided)
    assert decided[0].message.startswith("REGRESSION case gptq-bs8: latency_p50_ms")
    # the absolute gate sees the faster session hide it
    assert all(r.passed is not False for r in perf_gates("gptq", 8, current[0], saved[0], parse_thresholds(""),
                                                         run_noise=0.2))


def test_relative_gate_without_the_reference_case_is_undecided_and_says_which():
    rng = np.random.default_rng(7)
    saved, current = _run(rng), _run(rng)
    (result,) = relative_perf_gates("gptq", 8, "fp16", (current[0], None), saved, parse_thresholds(""))
    assert result.passed is None
    assert result.message == "case gptq-bs8: no fp16-bs8 timed in this run; cannot compare against fp16"


def test_gatekeeper_gates_the_reference_absolutely_and_the_others_relative_to_it():
    rng = np.random.default_rng(8)
    saved, current = _run(rng), _run(rng, session_scale=1.4)
    seen = []
    keeper = GateKeeper({}, {("gptq", 8): saved[0], ("fp16", 8): saved[1]}, parse_thresholds(""), seen.append,
                        run_noise=0.2, relative_to="fp16", relative_noise=0.1,
                        current_case=lambda config, bs: {"fp16": current[1]}.get(config))
    keeper.check_latency("gptq", 8, current[0])  # relative: the shift cancels
    with pytest.raises(GateFailure, match="case fp16-bs8"):  # absolute: 40% slower is beyond 20% + 10%
        keeper.check_latency("fp16", 8, current[1])
    assert "against fp16" in seen[0].message and "than the saved run" in seen[-1].message


def test_relative_gate_with_a_case_of_too_few_rounds_is_undecided_and_names_it():
    rng = np.random.default_rng(9)
    saved, current = _run(rng), _run(rng)
    empty = {"latency_samples_ns": [], "latency_sample_rounds": []}  # a saved run written without samples
    (result,) = relative_perf_gates("gptq", 8, "fp16", current, (saved[0], empty), parse_thresholds(""))
    assert result.passed is None
    assert "fp16-bs8 has 0 rounds in the saved run" in result.message and "against fp16" in result.message


def test_a_config_timed_in_another_group_than_the_reference_is_gated_absolutely():
    # a later group of engines reuses the round labels minutes after the first: pairing by label would
    # cancel nothing, so 60% slower over the whole second session is judged as the absolute gate does
    rng = np.random.default_rng(10)
    saved, current = _run(rng), _run(rng, session_scale=1.6)
    grouped = ({**current[0], "group": 1}, {**current[1], "group": 0})
    seen = []
    keeper = GateKeeper({}, {("gptq", 8): saved[0], ("fp16", 8): saved[1]}, parse_thresholds(""), seen.append,
                        run_noise=0.2, relative_to="fp16", relative_noise=0.1,
                        current_case=lambda config, bs: {"fp16": grouped[1]}.get(config))
    with pytest.raises(GateFailure, match="case gptq-bs8"):
        keeper.check_latency("gptq", 8, grouped[0])
    absolute = perf_gates("gptq", 8, grouped[0], saved[0], parse_thresholds(""), run_noise=0.2,
                          confidence=keeper.confidence)
    assert [(r.passed, r.measured) for r in seen] == [(r.passed, r.measured) for r in absolute]
    assert "than the saved run" in seen[0].message
    assert "absolute, not against fp16: timed in different groups, this run: gptq in group 1, fp16 in group 0" \
        in seen[0].message
    # the same groups in both runs (or none recorded, as before groups were saved): relative
    same = GateKeeper({}, {("gptq", 8): saved[0], ("fp16", 8): saved[1]}, parse_thresholds(""), seen.append,
                      run_noise=0.2, relative_to="fp16", relative_noise=0.1,
                      current_case=lambda config, bs: {"fp16": {**current[1], "group": 0}}.get(config))
    same.check_latency("gptq", 8, {**current[0], "group": 0})
    assert "against fp16 than in the saved run" in seen[-1].message

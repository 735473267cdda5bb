"""Intervals from rounds, on simulated timings whose speed drifts between rounds (as measured on the
H200: blocks of one engine moved between 944 and 1,468 texts/s). Pure logic: no engine."""
import numpy as np
import pytest

from qbench_plugin.measure.rounds import RoundPlan
from qbench_plugin.stats.uncertainty import Timed, case_interval, ratio_interval

ROUNDS, BLOCK = 10, 5


def _run(rng, scale=1.0, drift=0.15, jitter=0.05, levels=None):
    """ROUNDS x BLOCK batch latencies (ns): each round at its own drifted speed, batches jittered around it."""
    levels = rng.lognormal(0.0, drift, size=ROUNDS) if levels is None else levels
    ms = 20.0 * scale * np.repeat(levels, BLOCK) * rng.lognormal(0.0, jitter, size=ROUNDS * BLOCK)
    return (ms * 1e6).astype(np.int64).tolist(), np.repeat(np.arange(ROUNDS), BLOCK).tolist()


def _flagged(found):
    return found is not None and not (found[1] <= 1 <= found[2])


def test_round_intervals_hold_their_level_under_drift_where_batch_intervals_do_not():
    """A/A: the same machine twice. Resampling batches calls most pairs different; rounds about 5%."""
    by_rounds = by_batches = 0
    trials = 200
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        (a_ns, a_r), (b_ns, b_r) = _run(rng), _run(rng)
        by_rounds += _flagged(ratio_interval(Timed.of(b_ns, 8, b_r), Timed.of(a_ns, 8, a_r), "throughput_samples_per_s",
                                             paired=False, resamples=500))
        by_batches += _flagged(ratio_interval(Timed.of(b_ns, 8), Timed.of(a_ns, 8), "throughput_samples_per_s",
                                              paired=False, resamples=500))
    assert by_rounds / trials <= 0.12, by_rounds
    assert by_batches / trials >= 0.4, by_batches


def test_paired_rounds_cancel_drift_that_hits_both_configs():
    """Two configs in the same rounds, B 10% slower: paired, the difference shows; unpaired, drift hides it."""
    rng = np.random.default_rng(7)
    levels = rng.lognormal(0.0, 0.25, size=ROUNDS)
    a_ns, rounds = _run(rng, levels=levels, jitter=0.02)
    b_ns, _ = _run(rng, scale=1.10, levels=levels, jitter=0.02)
    paired = ratio_interval(Timed.of(b_ns, 8, rounds), Timed.of(a_ns, 8, rounds), "latency_p50_ms", paired=True)
    unpaired = ratio_interval(Timed.of(b_ns, 8, rounds), Timed.of(a_ns, 8, rounds), "latency_p50_ms", paired=False)
    assert paired[1] > 1.05 and paired[2] < 1.15
    assert unpaired[1] < 1 < unpaired[2]


def test_case_interval_brackets_the_point_and_widens_with_drift():
    rng = np.random.default_rng(3)
    cases = {}
    for drift in (0.01, 0.3):
        ns, rounds = _run(rng, drift=drift)
        cases[drift] = Timed.of(ns, 8, rounds)
    widths = {}
    for drift, timed in cases.items():
        point, low, high = case_interval(timed, "throughput_samples_per_s")
        assert low <= point <= high
        widths[drift] = high - low
    assert widths[0.3] > 3 * widths[0.01]


def test_too_few_rounds_decide_nothing():
    ns, _ = _run(np.random.default_rng(0))
    four = [i // 13 for i in range(len(ns))]  # 4 rounds
    assert ratio_interval(Timed.of(ns, 1, four), Timed.of(ns, 1, four), "latency_p50_ms", paired=True) is None


def test_round_plan_orders_are_seeded_permutations():
    cases = [("a", 1), ("a", 8), ("b", 1), ("b", 8)]
    plan = RoundPlan.from_samples(samples=50, rounds=10, warmup=5, seed=42)
    orders = plan.orders(cases)
    assert plan.block == 5 and len(orders) == 10
    assert all(sorted(order) == sorted(cases) for order in orders)
    assert len({tuple(o) for o in orders}) > 1  # a fresh order per round
    assert orders == RoundPlan.from_samples(50, 10, 5, 42).orders(cases)
    assert orders != RoundPlan.from_samples(50, 10, 5, 43).orders(cases)


@pytest.mark.parametrize(("samples", "rounds", "message"), [
    (50, 1, "--qbench-rounds 1: at least 2 rounds"),
    (50, 7, "--qbench-samples 50 does not split into --qbench-rounds 7"),
    (3, 5, "--qbench-samples 3 does not split into --qbench-rounds 5"),
])
def test_round_plan_refuses_what_cannot_be_timed(samples, rounds, message):
    with pytest.raises(ValueError, match=message):
        RoundPlan.from_samples(samples, rounds, 5, 0)


def _probe(rng, slower=1.0, jitter=0.05):
    """ROUNDS host-probe totals (s) of a host `slower` times slower than the reference."""
    return (0.012 * slower * rng.lognormal(0.0, jitter, size=ROUNDS)).tolist()


def test_a_host_shift_is_taken_out_when_both_runs_ran_the_probe():
    """A/A on two hosts, B's 1.25x slower in everything: raw, B is called slower; on the hosts' scale not."""
    rng = np.random.default_rng(3)
    (a_ns, a_r), (b_ns, b_r) = _run(rng, drift=0.05), _run(rng, scale=1.25, drift=0.05)
    a, b = Timed.of(a_ns, 8, a_r), Timed.of(b_ns, 8, b_r)
    raw = ratio_interval(b, a, "latency_p50_ms", paired=False)
    scaled = ratio_interval(b, a, "latency_p50_ms", paired=False, hosts=(_probe(rng, 1.25), _probe(rng)))
    assert raw[1] > 1.1
    assert scaled[1] <= 1 <= scaled[2] and abs(scaled[0] - 1) < 0.05
    thr = ratio_interval(b, a, "throughput_samples_per_s", paired=False, hosts=(_probe(rng, 1.25), _probe(rng)))
    assert thr[1] <= 1 <= thr[2]  # a rate is scaled the other way


def test_a_slower_b_on_the_same_host_stays_slower_after_the_probe():
    rng = np.random.default_rng(4)
    (a_ns, a_r), (b_ns, b_r) = _run(rng, drift=0.05), _run(rng, scale=1.25, drift=0.05)
    scaled = ratio_interval(Timed.of(b_ns, 8, b_r), Timed.of(a_ns, 8, a_r), "latency_p50_ms", paired=False,
                            hosts=(_probe(rng), _probe(rng)))
    assert scaled[1] > 1.1


def test_a_noisy_probe_widens_the_interval():
    rng = np.random.default_rng(5)
    (a_ns, a_r), (b_ns, b_r) = _run(rng, drift=0.05), _run(rng, drift=0.05)
    a, b = Timed.of(a_ns, 8, a_r), Timed.of(b_ns, 8, b_r)
    steady = ratio_interval(b, a, "latency_p50_ms", paired=False, hosts=(_probe(rng), _probe(rng)))
    noisy = ratio_interval(b, a, "latency_p50_ms", paired=False,
                           hosts=(_probe(rng, jitter=0.4), _probe(rng, jitter=0.4)))
    assert noisy[2] - noisy[1] > 1.5 * (steady[2] - steady[1])


def test_the_probe_does_not_touch_paired_comparisons():
    rng = np.random.default_rng(6)
    (a_ns, a_r), (b_ns, b_r) = _run(rng), _run(rng)
    a, b = Timed.of(a_ns, 8, a_r), Timed.of(b_ns, 8, b_r)
    assert ratio_interval(b, a, "latency_p50_ms", paired=True) == \
        ratio_interval(b, a, "latency_p50_ms", paired=True, hosts=(_probe(rng, 2.0), _probe(rng)))


@pytest.mark.parametrize("samples, device, rounds", [(50, "cpu", 10), (50, "cuda", 50), (20, "cpu", 10), (12, "cpu", 12),
                                                      (7, "cpu", 7), (4, "cpu", 4), (100, "cpu", 20),
                                                      (300, "cuda", 300)])
def test_auto_rounds_keep_blocks_short_by_device_and_never_below_two_rounds(samples, device, rounds):
    plan = RoundPlan.auto(samples, device, warmup=1, seed=0)
    assert (plan.rounds, plan.block * plan.rounds) == (rounds, samples)


def test_the_plan_of_the_rounds_option_is_auto_by_device_when_unset():
    # `--qbench-rounds auto` is None in the settings: every reader of the block length (the matrix, the
    # idle-engine check) must resolve it the same way, not divide by it (the H200 run of 8f37f6e did)
    assert RoundPlan.of(50, None, "cuda", 1, 0) == RoundPlan.auto(50, "cuda", 1, 0)
    assert RoundPlan.of(50, None, "cuda", 1, 0).block == 1 and RoundPlan.of(50, None, "cpu", 1, 0).block == 5
    assert RoundPlan.of(50, 25, "cuda", 1, 0).block == 2
    with pytest.raises(ValueError, match="--qbench-rounds 1"):
        RoundPlan.of(50, 1, "cuda", 1, 0)


def test_auto_rounds_with_one_sample_names_the_options():
    with pytest.raises(ValueError, match="--qbench-samples 1 is too few for --qbench-rounds auto"):
        RoundPlan.auto(1, "cuda", warmup=1, seed=0)


def test_relative_interval_pairs_rounds_inside_each_run_so_round_drift_cancels():
    from qbench_plugin.stats.uncertainty import relative_interval

    def run(seed, q_scale):
        rng = np.random.default_rng(seed)
        drift = rng.lognormal(0.0, 0.3, 30)  # rounds up to ~2x apart, both configs alike
        base = [int(10e6 * d * rng.lognormal(0.0, 0.02)) for d in drift]
        q = [int(8e6 * q_scale * d * rng.lognormal(0.0, 0.02)) for d in drift]
        return Timed.of(q, 1, list(range(30))), Timed.of(base, 1, list(range(30)))

    same = relative_interval(run(1, 1.0), run(2, 1.0), "throughput_samples_per_s")
    assert same[1] <= 1 <= same[2] and same[2] - same[1] < 0.05, same  # unpaired, the drift alone spans ~0.3
    slower = relative_interval(run(3, 1.1), run(2, 1.0), "latency_p50_ms")
    assert slower[1] > 1 and slower[0] == pytest.approx(1.1, rel=0.03), slower
    assert relative_interval(run(1, 1.0), (Timed.of([1] * 3, 1, [0, 1, 2]),) * 2, "latency_p50_ms") is None

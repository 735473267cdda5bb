"""Pure statistics: percentiles, throughput, batching and classification scores on known inputs."""
import numpy as np
import pytest

from qbench_plugin.measure.measure import (LatencyRecorder, classification_metrics, latency_stats, make_batches,
                                           paired_ratio)


def test_percentiles_match_numpy_and_hand_values():
    samples_ns = [int(ms * 1e6) for ms in range(1, 101)]  # 1..100 ms
    stats = latency_stats(samples_ns, batch_size=4)
    assert stats["latency_p50_ms"] == pytest.approx(50.5)
    assert stats["latency_p95_ms"] == pytest.approx(95.05)
    assert stats["latency_p99_ms"] == pytest.approx(99.01)
    assert stats["latency_mean_ms"] == pytest.approx(50.5)
    assert stats["latency_min_ms"] == 1.0 and stats["latency_max_ms"] == 100.0
    # 100 batches of 4 texts in 5050 ms
    assert stats["throughput_samples_per_s"] == pytest.approx(400 / 5.05)


def test_percentiles_agree_with_numpy_on_random_samples():
    rng = np.random.default_rng(3)
    samples_ns = rng.lognormal(mean=16, sigma=0.4, size=997).astype(np.int64)
    stats = latency_stats(samples_ns.tolist(), batch_size=8)
    ms = samples_ns / 1e6
    for q in (50, 95, 99):
        assert stats[f"latency_p{q}_ms"] == pytest.approx(np.percentile(ms, q))


def test_latency_stats_rejects_empty():
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_recorder_keeps_every_call():
    recorder = LatencyRecorder(lambda x: x * 2)
    assert [recorder(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert len(recorder.samples_ns) == 5 and all(s >= 0 for s in recorder.samples_ns)


def test_make_batches_cycles_deterministically():
    batches = make_batches(["a", "b", "c"], 2, 4)
    assert batches == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]
    assert make_batches(["a", "b", "c"], 2, 4) == batches


def test_classification_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    scores = classification_metrics(y_true, y_pred, num_labels=4)  # class 3 absent: not averaged
    assert scores["accuracy"] == pytest.approx(3 / 5)
    f1_0 = 2 * 1 / (2 + 2)  # tp=1, support=2, predicted=2
    f1_1 = 2 * 2 / (2 + 3)
    f1_2 = 0.0
    assert scores["macro_f1"] == pytest.approx((f1_0 + f1_1 + f1_2) / 3)


def test_perfect_predictions_score_one():
    scores = classification_metrics([1, 2, 3], [1, 2, 3], num_labels=5)
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0}


def test_paired_ratio_cancels_drift_that_medians_of_samples_keep():
    # call times drift 2x over the run; within each pair the suite call is exactly 1% slower
    bare = np.linspace(5e6, 10e6, 50)
    suite = bare * 1.01
    shuffled_suite = np.roll(suite, 25)  # the same samples, unpaired
    ratio, low, high = paired_ratio(bare, suite)
    assert ratio == pytest.approx(1 / 1.01) and low == pytest.approx(1 / 1.01) and high == pytest.approx(1 / 1.01)
    assert paired_ratio(bare, shuffled_suite)[2] - paired_ratio(bare, shuffled_suite)[1] > 0.1


def test_paired_ratio_interval_holds_the_median_and_narrows_with_more_pairs():
    rng = np.random.default_rng(1)
    few = rng.normal(1.0, 0.05, 20), np.ones(20)
    many = rng.normal(1.0, 0.05, 2000), np.ones(2000)
    r, low, high = paired_ratio(*few)
    assert low <= r <= high
    r2, low2, high2 = paired_ratio(*many)
    assert high2 - low2 < (high - low) / 3 and low2 < 1.0 < high2
    with pytest.raises(ValueError, match="equally many"):
        paired_ratio([1, 2], [1])

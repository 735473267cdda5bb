"""Accuracy and macro-F1 of each config on the evaluation split."""
import pytest

from qbench_plugin.bench import measure_accuracy


@pytest.mark.accuracy
def test_accuracy(benchmark, qbench_engine, qbench_eval, qbench_settings, qbench_store, qbench_config):
    scores = measure_accuracy(benchmark, qbench_engine, qbench_eval, max(qbench_settings.batch_sizes),
                              store=qbench_store, config=qbench_config.name)
    assert 0.0 <= scores["accuracy"] <= 1.0

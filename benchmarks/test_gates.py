"""Accuracy gates per config: minimum accuracy, largest drop and flip rate against the baseline."""
import pytest


@pytest.mark.accuracy
def test_accuracy_gates(qbench_engine, qbench_config, qbench_store, qbench_gatekeeper):
    record = qbench_store.config(qbench_config.name)
    if "accuracy" not in record.metrics:
        pytest.skip(f"config {qbench_config.name}: accuracy was not measured (test_accuracy did not run)")
    qbench_gatekeeper.check_accuracy(qbench_config.name, qbench_config.gates, record.metrics,
                                     record.info.get("baseline"), is_baseline=qbench_config.baseline)

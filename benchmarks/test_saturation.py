"""The throughput ceiling (--qbench-sweep on): tokenizer alone, engine from strings and from tokens,
batch sizes raised until throughput saturates, then engine settings and replicas.

Runs last among a config's tests (file order): it closes the config's engine to start variants."""
import pytest

from qbench_plugin.bench import measure_ceiling
from qbench_plugin.ceiling import best


@pytest.mark.saturation
@pytest.mark.slow
def test_saturation(benchmark, qbench_engine, qbench_eval, qbench_settings, qbench_store, qbench_config):
    points = measure_ceiling(benchmark, qbench_engine, qbench_eval.texts, settings=qbench_settings,
                             store=qbench_store, config=qbench_config.name)
    assert best(points) is not None, "no sweep point finished"

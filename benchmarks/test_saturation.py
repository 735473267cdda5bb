"""The throughput ceiling (--qbench-sweep on): tokenizer alone, engine from strings and from tokens,
batch sizes raised until throughput saturates, then engine settings and replicas.

Runs after the matrix and accuracy tests (the plugin orders it so): it takes the machine for its
config alone and closes the config's engine to start variants."""
import pytest

from qbench_plugin.bench import measure_ceiling
from qbench_plugin.measure.ceiling import best


@pytest.mark.saturation
@pytest.mark.slow
def test_saturation(benchmark, qbench_engine, qbench_pool, qbench_eval, qbench_settings, qbench_store, qbench_config):
    with qbench_pool.exclusive(qbench_config.name, "saturation sweep") as engine:
        points = measure_ceiling(benchmark, engine, qbench_eval.texts, settings=qbench_settings,
                                 store=qbench_store, config=qbench_config.name)
    assert best(points) is not None, "no sweep point finished"

"""Load tests over HTTP: vLLM's OpenAI server (started per config, or --qbench-endpoint) under Locust.

Slow (a server start plus the run time), so `-m "not slow"` leaves them out; `pytest benchmarks`
runs them on the baseline config (--qbench-load-configs chooses others).
"""
import pytest

from qbench_plugin.loadtest import check_endpoint, measure_load

pytestmark = [pytest.mark.load, pytest.mark.slow]


def test_endpoint_answers(qbench_endpoint, qbench_eval, qbench_settings):
    texts = qbench_eval.texts[:64]
    results = check_endpoint(qbench_endpoint, texts, qbench_eval.labels, qbench_settings.load_batch_size)
    assert len(results) == len(texts)


def test_load(benchmark, qbench_endpoint, qbench_eval, qbench_settings, qbench_store):
    result = measure_load(benchmark, qbench_endpoint, qbench_eval.texts, qbench_eval.labels, qbench_settings,
                          qbench_store)
    assert result.metrics["load_failures"] == 0, result.describe()

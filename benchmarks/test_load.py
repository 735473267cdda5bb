"""Load tests over HTTP: vLLM's OpenAI server (started per config, or --qbench-endpoint) under Locust.

Slow (a server start plus the run time of every grid point), so `-m "not slow"` leaves them out;
`pytest benchmarks` runs them on the baseline config (--qbench-load-configs chooses others). One
test per grid point: users x request batch size (--qbench-load-users, --qbench-load-batch-size),
x offered rate in open loop (--qbench-load-rate), all against the config's one server.
"""
import pytest

from qbench_plugin.loadtest.loadtest import check_endpoint, measure_load

pytestmark = [pytest.mark.load, pytest.mark.slow]


def test_endpoint_answers(qbench_endpoint, qbench_eval, qbench_settings):
    texts = qbench_eval.texts[:64]
    results = check_endpoint(qbench_endpoint, texts, qbench_eval.labels, max(qbench_settings.load_batch_size),
                             truncate=qbench_settings.max_model_len)
    assert len(results) == len(texts)


def test_load(benchmark, qbench_endpoint, qbench_load_point, qbench_eval, qbench_settings, qbench_store):
    result = measure_load(benchmark, qbench_endpoint, qbench_load_point, qbench_eval.texts, qbench_eval.labels,
                          qbench_settings, qbench_store)
    assert result.metrics["load_failures"] == 0, result.describe()
    assert result.metrics["load_window_requests"], "no request was answered inside the measured window: " + \
        result.describe()

"""Test-only pytest plugin: the engines of the configs named in QBENCH_TEST_SLOW_CONFIGS (comma-
separated; default: every config) take QBENCH_TEST_SLOWDOWN (default 0.25) longer per classify call.

Loaded with `-p slowed_engine` (tests/plugins on PYTHONPATH) to make a B that is slower by
construction (latency x1.25 = throughput x0.8), so the sensitivity of the verdicts is shown on real
engine timings rather than assumed. The extra time is a busy wait proportional to the call's own time, so every
batch size slows by the same factor."""
import os
import time

from qbench_plugin.engines import engine as engines


def _slowed(factory, extra: float):
    names = {n for n in os.environ.get("QBENCH_TEST_SLOW_CONFIGS", "").split(",") if n}

    def start(spec, labels, extra_args=None):
        real = factory(spec, labels, extra_args)
        if names and spec.config.name not in names:
            return real
        classify = real.classify

        def slow_classify(texts):
            began = time.perf_counter_ns()
            out = classify(texts)
            until = time.perf_counter_ns() + int((time.perf_counter_ns() - began) * extra)
            while time.perf_counter_ns() < until:
                pass
            return out

        real.classify = slow_classify
        return real

    return start


def pytest_configure(config):
    extra = float(os.environ.get("QBENCH_TEST_SLOWDOWN", "0.25"))
    for name, factory in list(engines.ENGINES.items()):
        engines.ENGINES[name] = _slowed(factory, extra)

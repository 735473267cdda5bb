"""The suite's own cost: its measured throughput against a bare `llm.classify` loop, same batches."""
import time

import pytest

from qbench_plugin.bench import measure_latency
from qbench_plugin.measure import make_batches

TARGET = 0.98


@pytest.mark.slow
def test_overhead(benchmark, qbench_engine, qbench_eval, qbench_settings, qbench_store, qbench_config):
    llm = getattr(qbench_engine, "llm", None)
    if llm is None:
        pytest.skip(f"a bare-loop baseline exists for the vLLM engine only, not {qbench_engine.name}")
    s = qbench_settings
    batch_size = min(s.batch_sizes)  # smallest batches: where per-call overhead weighs most
    batches = make_batches(qbench_eval.texts, batch_size, s.samples + s.warmup)

    def bare_throughput() -> float:
        for batch in batches[: s.warmup]:
            llm.classify(batch, use_tqdm=False)
        start = time.perf_counter_ns()
        for batch in batches[s.warmup :]:
            llm.classify(batch, use_tqdm=False)
        return batch_size * s.samples / ((time.perf_counter_ns() - start) / 1e9)

    before = bare_throughput()
    stats = measure_latency(benchmark, qbench_engine, qbench_eval.texts, batch_size, samples=s.samples,
                            warmup=s.warmup, store=qbench_store, config=qbench_config.name, record=False)
    after = bare_throughput()  # bracketing the suite's pass cancels slow drift of the machine
    ratio = stats["throughput_samples_per_s"] / ((before + after) / 2)
    benchmark.extra_info.update(kind="overhead", bare_throughput_samples_per_s=(before + after) / 2,
                                suite_to_bare_throughput_ratio=ratio)
    assert ratio >= TARGET, f"suite throughput is {ratio:.3f} of a bare classify loop (target {TARGET})"

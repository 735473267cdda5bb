"""Per-batch latency percentiles and throughput of each config at each batch size."""
from qbench_plugin.bench import measure_latency


def test_latency(benchmark, qbench_engine, qbench_eval, qbench_settings, qbench_store, qbench_config,
                 qbench_gatekeeper, batch_size):
    stats = measure_latency(benchmark, qbench_engine, qbench_eval.texts, batch_size,
                            samples=qbench_settings.samples, warmup=qbench_settings.warmup,
                            store=qbench_store, config=qbench_config.name)
    assert stats["throughput_samples_per_s"] > 0
    qbench_gatekeeper.check_latency(qbench_config.name, batch_size, benchmark.extra_info)

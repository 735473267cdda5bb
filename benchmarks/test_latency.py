"""Per-batch latency percentiles and throughput of each config at each batch size.

The whole matrix is timed once, in interleaved rounds over every config's engine (qbench_matrix);
each test reports its own case and checks it against the perf baseline."""
from qbench_plugin.bench import report_case


def test_latency(benchmark, qbench_matrix, qbench_engine, qbench_config, qbench_store, qbench_gatekeeper, batch_size):
    stats = report_case(benchmark, qbench_matrix.timing((qbench_config.name, batch_size)), store=qbench_store,
                        engine=qbench_engine.name)
    assert stats["throughput_samples_per_s"] > 0
    qbench_gatekeeper.check_latency(qbench_config.name, batch_size, benchmark.extra_info)

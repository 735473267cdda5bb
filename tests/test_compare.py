"""`qbench compare` on saved runs: every file form a run leaves, deltas marked by each metric's direction."""
import copy
import json

import pandas as pd

from qbench_plugin.cli import main
from qbench_plugin.report.compare import compare_paths, load_run, to_text
from qbench_plugin.stats.probe import VERSION as PROBE_VERSION

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
    extra = [{"extra_info": {"kind": "latency", "config": c["config"], "engine": "vllm", "batch_size": c["batch_size"],
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


def _with_samples(run, run_id, seed, scale):
    """A run whose bs1 case kept 50 batch latencies around 10 ms x scale (metrics computed from them)."""
    import numpy as np

    from qbench_plugin.measure.measure import latency_stats

    run = copy.deepcopy(run)
    run["run_id"] = run_id
    samples = [int(v) for v in np.random.default_rng(seed).normal(10e6 * scale, 1e6, 50)]
    run["cases"][0]["metrics"] = latency_stats(samples, 1)
    run["cases"][0]["samples_ns"] = samples
    return run


def test_a_change_inside_the_noise_is_not_called_better_or_worse(tmp_path):
    a = _write(tmp_path / "a.json", _with_samples(RUN, "a", 1, 1.0))
    same_machine = _write(tmp_path / "b.json", _with_samples(RUN, "b", 2, 1.0))  # other draws, same distribution
    slower = _write(tmp_path / "c.json", _with_samples(RUN, "c", 3, 1.5))
    noisy = compare_paths(a, same_machine)[2].set_index(["case", "metric"])
    assert noisy.loc[("base-bs1", "latency_p50_ms"), "verdict"] == "within noise"
    low, high = noisy.loc[("base-bs1", "throughput_samples_per_s"), ["ci_low", "ci_high"]]
    assert low <= 1 <= high
    assert "within noise" in to_text(compare_paths(a, same_machine)[2])
    worse = compare_paths(a, slower)[2].set_index(["case", "metric"])
    assert worse.loc[("base-bs1", "latency_p50_ms"), "verdict"] == "worse"
    assert worse.loc[("base-bs1", "throughput_samples_per_s"), "ci_high"] < 1
    # bs4 kept no samples: a plain verdict, no interval
    assert pd.isna(worse.loc[("base-bs4", "latency_p50_ms"), "ci_low"])


def test_samples_come_from_benchmark_json_when_qbench_json_has_none(tmp_path):
    run = _with_samples(RUN, "old", 1, 1.0)
    samples = run["cases"][0].pop("samples_ns")
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    _write(run_dir / "qbench.json", run)
    _write(run_dir / "benchmark.json", {"benchmarks": [{"extra_info": {
        "kind": "latency", "config": "base", "batch_size": 1, "latency_samples_ns": samples}}]})
    frame = load_run(run_dir)[1].set_index("batch_size")
    assert frame.loc[1, "latency_samples_ns"] == samples and frame.loc[4, "latency_samples_ns"] == []
    # the same old record inside a benchmark.json (key "qbench") takes them from that file's benchmarks
    bench = json.loads((run_dir / "benchmark.json").read_text())
    embedded = _write(tmp_path / "embedded.json", {**bench, "qbench": run})
    assert load_run(embedded)[1].set_index("batch_size").loc[1, "latency_samples_ns"] == samples


def test_memory_within_tolerance_is_no_change_and_a_real_one_is(tmp_path):
    b = copy.deepcopy(RUN)
    b["configs"]["base"]["metrics"]["memory_rss_mib"] = 1000.5  # +0.05%: allocator drift, not a regression
    b["configs"]["base"]["metrics"]["memory_rss_peak_mib"] = 1200.0  # +9%: worse
    long = compare_paths(_write(tmp_path / "a.json", RUN), _write(tmp_path / "b.json", b))[2]
    verdict = long.set_index(["case", "metric"])["verdict"]
    assert verdict[("base-bs1", "memory_rss_mib")] == "within tolerance"
    assert verdict[("base-bs1", "memory_rss_peak_mib")] == "worse"
    text = to_text(long)
    assert "1,000.50 (+0.1%, within 6% tolerance)" in text and "worse" in text


def test_a_config_on_two_engines_is_said(tmp_path):
    b = copy.deepcopy(RUN)
    b["configs"]["base"]["engine"] = "hf"
    long = compare_paths(_write(tmp_path / "a.json", RUN), _write(tmp_path / "b.json", b))[2]
    assert set(long["engine_a"]) == {"vllm"} and set(long["engine_b"]) == {"hf"}
    assert "base ran on vllm in A and on hf in B (its deltas compare two engines" in to_text(long)
    same = compare_paths(tmp_path / "a.json", tmp_path / "a.json")[2]
    assert "ran on" not in to_text(same)


def _probed(run, seconds, device="cpu"):
    run = copy.deepcopy(run)
    run["measurement"] = {"device": device, "host_probe": {"version": PROBE_VERSION, "components": ["interpreter", "cpu_matmul"],
                                                           "rounds": list(range(len(seconds))), "seconds": seconds}}
    return run


def test_the_host_probe_explains_a_shift_and_scales_only_when_asked(tmp_path, capsys):
    """B is 1.3x slower in every case and its host probe 1.3x slower too. By default the verdict is on
    the measured figures (worse) and the probe names the slower machine; with --host-scale B is within
    noise, while the same B on an unchanged host stays worse."""
    probe = [0.012, 0.0121, 0.0119, 0.0122, 0.012, 0.0118]
    a = _write(tmp_path / "a.json", _probed(_with_samples(RUN, "a", 1, 1.0), probe))
    slow_host = _write(tmp_path / "b.json", _probed(_with_samples(RUN, "b", 2, 1.3), [1.3 * s for s in probe]))
    same_host = _write(tmp_path / "c.json", _probed(_with_samples(RUN, "c", 3, 1.3), probe))
    key = ("base-bs1", "latency_p50_ms")
    assert compare_paths(a, slow_host, noise=0.0)[2].set_index(["case", "metric"]).loc[key, "verdict"] == "worse"
    assert compare_paths(a, slow_host, normalize=True)[2].set_index(["case", "metric"]).loc[key, "verdict"] == "within noise"
    assert compare_paths(a, same_host, normalize=True)[2].set_index(["case", "metric"]).loc[key, "verdict"] == "worse"
    assert main(["compare", str(a), str(slow_host), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "host probe B/A x1.30" in out and "B's machine was slower than A's beyond the probe's A/A spread" in out
    assert "verdicts are on the measured figures" in out
    assert main(["compare", str(a), str(slow_host), "--host-scale", "--csv", str(tmp_path / "c.csv")]) == 0
    assert "(--host-scale)" in capsys.readouterr().out
    assert main(["compare", str(a), str(same_host), "--csv", str(tmp_path / "c.csv")]) == 0
    assert "beyond the probe" not in capsys.readouterr().out  # same machine: the probe says so
    unprobed = _write(tmp_path / "d.json", _with_samples(RUN, "d", 2, 1.3))
    assert main(["compare", str(a), str(unprobed), "--csv", str(tmp_path / "d.csv")]) == 0
    assert "no host probe in both runs" in capsys.readouterr().out


def _two_configs(run_id, seed, session=1.0, q_scale=1.0):
    """base and q at bs 1 in 40 interleaved rounds of one batch on a CPU: each round's drift (up to
    ~1.3x) hits both configs alike; `session` moves the whole run, `q_scale` only q."""
    import numpy as np

    from qbench_plugin.measure.measure import latency_stats

    rng = np.random.default_rng(seed)
    drift = rng.lognormal(0.0, 0.12, 40) * session
    run = {"run_id": run_id, "settings": {}, "commit": None, "measurement": {"device": "cpu"},
           "configs": {}, "cases": []}
    for config, ms in (("base", 10.0), ("q", 8.0 * q_scale)):
        samples = [int(ms * 1e6 * d * rng.lognormal(0.0, 0.03)) for d in drift]
        run["configs"][config] = {"name": config, "method": "none", "engine": "vllm", "status": "ready", "metrics": {}}
        run["cases"].append({"config": config, "batch_size": 1, "metrics": latency_stats(samples, 1),
                             "samples_ns": samples, "sample_rounds": list(range(40))})
    return run


def test_relative_to_a_reference_cancels_a_session_shift_and_sees_one_config_move(tmp_path, capsys):
    from qbench_plugin.report.relative import compare_relative

    a = _write(tmp_path / "a.json", _two_configs("a", 1))
    shifted = _write(tmp_path / "shifted.json", _two_configs("shifted", 2, session=1.5))  # every config 1.5x slower
    q_slower = _write(tmp_path / "q.json", _two_configs("q", 3, q_scale=1.25))  # only q, 25% slower
    absolute = compare_paths(a, shifted)[2].set_index(["case", "metric"])["verdict"]
    assert absolute[("q-bs1", "throughput_samples_per_s")] == "worse"  # the shift is beyond the 25% allowance
    relative = compare_relative(a, shifted, "base")[2]
    assert list(relative["case"].unique()) == ["q / base-bs1"]
    assert (relative["verdict"] == "within noise").all(), relative
    assert relative.attrs["run_noise"] == 0.10
    moved = compare_relative(a, q_slower, "base")[2].set_index("metric")
    assert moved.loc["throughput_samples_per_s", "verdict"] == "worse"
    assert moved.loc["latency_p50_ms", "verdict"] == "worse"
    assert moved.loc["throughput_samples_per_s", "b"] / moved.loc["throughput_samples_per_s", "a"] < 0.85
    # the same 25% on q alone is within the absolute comparison's noise: the whole run could have moved that much
    assert compare_paths(a, q_slower)[2].set_index(["case", "metric"]).loc[
        ("q-bs1", "throughput_samples_per_s"), "verdict"] == "within noise"
    csv = tmp_path / "rel.csv"
    assert main(["compare", str(a), str(q_slower), "--relative-to", "base", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "q / base-bs1" in out and "over base's in its own run" in out and "allowed: 10%" in out
    assert pd.read_csv(csv)["verdict"].isin(["worse"]).sum() >= 2


def test_relative_to_a_config_a_run_lacks_is_named(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _two_configs("a", 1))
    assert main(["compare", str(a), str(a), "--relative-to", "fp16_baseline", "--csv", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "no latency cases of fp16_baseline" in err and "configs in this run: base, q" in err


def test_configs_with_a_second_run_or_relative_to_is_refused_not_ignored(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _two_configs("a", 1))
    for extra in ([str(a)], ["--relative-to", "base"]):
        assert main(["compare", str(a), *extra, "--configs", "base", "q", "--csv", str(tmp_path / "x.csv")]) == 1
        assert "--configs compares two configs inside the one run A" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()

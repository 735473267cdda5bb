"""EXPERIMENT_LOG.md, written from a run: what ran where, what it measured, and what to do about it.

The log is the write-up a person would otherwise type by hand after a benchmark. It is generated from
the one RunResults object the report also renders, so its numbers are the report's numbers. Every
section is always present; one without data says why, so no placeholder is ever left in it.
"""
from __future__ import annotations

import re
import time

import pandas as pd
from typing import Any, Callable, Iterable, Sequence

from . import gpus, loadgrid, tables
from .compare import NOISE, TOLERATED, counts_text, engine_changes, unmatched
from .loadgrid import texts_a_request
from .summary import LOAD_SOURCE, MATRIX_SOURCE, RunResults, memory_column, saturation_points
from .tables import MISSING, STATUS_WORDS, fmt, value

SECTIONS = (
    "Hardware",
    "Software versions",
    "Experiment matrix",
    "Results per method",
    "Observations: memory, cold start, accuracy",
    "Comparison to the baseline",
    "Load test",
    "Key findings",
    "Cost analysis",
    "Recommendations",
    "Scaling",
)
MEMORY_WORDS = {"weights_memory_mib": "weights in memory", "memory_rss_peak_mib": "peak host memory",
                "memory_rss_mib": "host memory once ready"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- sections ---------------------------------------------------------------------------------------

def hardware(r: RunResults) -> str:
    m = r.machine
    gpus_seen = m.get("gpu_names") or []
    cores = f", {m['cpu_count']} logical cores" if m.get("cpu_count") else ""
    lines = [f"- CPU: {m.get('cpu_name') or 'model not reported by the OS'}{cores}"]
    if m.get("memory_total_gib") is not None:
        lines.append(f"- Memory: {fmt(m['memory_total_gib'], 1)} GiB")
    if gpus_seen:
        lines.append(f"- GPU: {', '.join(gpus_seen)} (driver {m.get('gpu_driver') or 'unreported'}, "
                     f"CUDA {m.get('cuda') or 'unreported'})")
    else:
        lines.append("- GPU: none visible (nvidia-smi and torch.cuda found no device), so configs that need "
                     "CUDA were skipped and the measured configs ran on the CPU")
    if m.get("platform"):
        lines.append(f"- OS: {m['platform']}")
    return "\n".join(lines)


def software(r: RunResults) -> str:
    m = r.machine
    versions = dict(m.get("versions") or {})
    rows = [("python", m.get("python") or "unreported")]
    rows += [(name, version or "not installed") for name, version in versions.items()]
    rows.append(("qbench commit", r.commit or "not a git checkout"))
    return md_table(("package", "version"), rows)


def matrix(r: RunResults) -> str:
    s = r.settings
    parts = []
    if s.get("model"):
        parts.append(f"model `{s['model']}`")
    if s.get("dataset"):
        parts.append(f"dataset `{s['dataset']}` split `{s.get('split')}`")
    if s.get("batch_sizes"):
        parts.append("batch sizes " + ", ".join(str(b) for b in s["batch_sizes"]))
    if s.get("samples"):
        parts.append(f"{s['samples']} timed batches after {s.get('warmup', 0)} warmup batches per case")
    if s.get("max_model_len"):
        parts.append(f"max_model_len {s['max_model_len']}")
    head = ("Settings: " + "; ".join(parts) + ".") if parts else "The run recorded no settings."
    if data := r.dataset_text():
        head += f" Evaluated {data}."
    if m := r.machine.get("pytest_markexpr"):
        head += f" Tests selected with `-m \"{m}\"`."
    measured = r.table.groupby("config")["batch_size"].apply(lambda b: ", ".join(str(int(x)) for x in sorted(b)))
    rows = []
    for name, rec in r.configs.items():
        status = STATUS_WORDS.get(rec.get("status"), str(rec.get("status")))
        note = rec.get("reason") or ("baseline" if rec.get("baseline") else "")
        rows.append((name, rec.get("method"), rec.get("engine"), status, measured.get(name, "none"), note or "-"))
    for name in r.not_run.get("configs") or []:
        rows.append((name, "-", "-", "not run", "none", "the run stopped before this config started"))
    if not rows:
        return head + "\n\nNo config was collected in this run (all were deselected or the run stopped before any started)."
    return head + "\n\n" + md_table(("config", "method", "engine", "status", "batch sizes measured", "reason / note"), rows)


def per_method(r: RunResults) -> str:
    if r.table.empty:
        return "No latency case finished in this run, so there is nothing to tabulate; see the experiment matrix for why."
    out = []
    for method, rows in r.table.groupby("method", sort=True):
        out.append(f"### Method `{method}`\n")
        out.append(md_table(
            ("config", "engine", "batch size", "avg (ms)", "p95 (ms)", "p99 (ms)", "throughput (texts/s)"),
            [(row["config"], row["engine"], int(row["batch_size"]), fmt(row["latency_mean_ms"]),
              fmt(row["latency_p95_ms"]), fmt(row["latency_p99_ms"]), fmt(row["throughput_samples_per_s"], 1))
             for _, row in rows.sort_values(["config", "batch_size"]).iterrows()]))
        out.append("")
    out.append("Latencies are per batch (one `classify` call, tokenization included); throughput is texts per "
               "second over all timed batches.")
    return "\n".join(out)


def _config_rows(r: RunResults) -> list[dict[str, Any]]:
    return [{"config": name, **(rec.get("metrics") or {}), "engine": rec.get("engine")}
            for name, rec in r.configs.items() if rec.get("status") == "ready"]


def observations(r: RunResults) -> str:
    rows = _config_rows(r)
    if not rows:
        return "No config started an engine in this run, so there are no memory, cold-start or accuracy readings."
    has_gpu = any(value(x, "gpu_memory_peak_mib") is not None for x in rows)
    header = ["config", "engine", "accuracy", "macro-F1", "cold start (s)", "RSS ready (MiB)", "RSS peak (MiB)"]
    if has_gpu:
        header.append("GPU peak (MiB)")
    has_weights = any(value(x, "weights_memory_mib") is not None for x in rows)
    if has_weights:
        header.append("weights in memory (MiB)")
    header += ["weights on disk (MiB)", "compression", "quantization time (s)"]
    table = []
    for x in rows:
        line = [x["config"], x["engine"], fmt(value(x, "accuracy"), 4), fmt(value(x, "macro_f1"), 4),
                fmt(value(x, "cold_start_s")), fmt(value(x, "memory_rss_mib"), 1), fmt(value(x, "memory_rss_peak_mib"), 1)]
        if has_gpu:
            line.append(fmt(value(x, "gpu_memory_peak_mib"), 1))
        if has_weights:
            line.append(fmt(value(x, "weights_memory_mib"), 1))
        ratio = value(x, "compression_ratio")
        line += [fmt(value(x, "model_weights_mib"), 1), f"{ratio:.2f}x" if ratio else "none (quantized at load)",
                 fmt(value(x, "quantization_time_s")) if value(x, "quantization_time_s") is not None else "no checkpoint made"]
        table.append(line)
    notes = []
    mem_key = memory_column(pd.DataFrame(rows))  # the run's one memory axis, as in the picks and the Pareto front
    what = MEMORY_WORDS.get(mem_key, mem_key)
    with_mem = [x for x in rows if value(x, mem_key) is not None]
    if with_mem:
        low = min(with_mem, key=lambda x: x[mem_key])
        high = max(with_mem, key=lambda x: x[mem_key])
        notes.append(f"- Memory: lowest {what} is {low['config']} "
                     f"({fmt(low[mem_key], 1)} MiB), highest {high['config']} ({fmt(high[mem_key], 1)} MiB).")
    if has_gpu and any(x["engine"] == "vllm" for x in rows):
        notes.append("- GPU peak on the vllm engine is the pool vLLM reserves (gpu_memory_utilization of the GPU: "
                     "weights, activations, KV cache), so it is about the same for every vllm config; "
                     "the weights in memory are what quantization saves.")
    notes.append("- Host memory is each engine's own: for vllm, the PSS of its engine processes (the KV cache "
                 "included: VLLM_CPU_KVCACHE_SPACE on CPU); for hf, the growth of the pytest process while the model "
                 "loaded. Every engine was resident at once for the interleaved rounds, so the readings are per "
                 "engine, not the machine's total.")
    with_cold = [x for x in rows if value(x, "cold_start_s") is not None]
    if with_cold:
        fast = min(with_cold, key=lambda x: x["cold_start_s"])
        slow = max(with_cold, key=lambda x: x["cold_start_s"])
        notes.append(f"- Cold start: fastest {fast['config']} ({fmt(fast['cold_start_s'])} s), slowest "
                     f"{slow['config']} ({fmt(slow['cold_start_s'])} s), from engine construction to ready.")
    with_acc = [x for x in rows if value(x, "accuracy") is not None]
    if with_acc:
        best = max(with_acc, key=lambda x: x["accuracy"])
        worst = min(with_acc, key=lambda x: x["accuracy"])
        notes.append(f"- Accuracy on the whole `{r.settings.get('split')}` split: highest {best['config']} "
                     f"({fmt(best['accuracy'], 4)}), lowest {worst['config']} ({fmt(worst['accuracy'], 4)}); "
                     f"spread {fmt(best['accuracy'] - worst['accuracy'], 4)}.")
    else:
        notes.append("- Accuracy was not measured (the accuracy tests did not run).")
    return md_table(header, table) + "\n\n" + "\n".join(notes)


def _baseline_name(r: RunResults) -> str | None:
    for name, rec in r.configs.items():
        if rec.get("baseline") and rec.get("status") == "ready":
            return name
    return None


def baseline_comparison(r: RunResults) -> str:
    base = _baseline_name(r)
    if base is None:
        declared = [n for n, rec in r.configs.items() if rec.get("baseline")]
        if declared:
            why = f"the baseline config ({', '.join(declared)}) did not run: " + "; ".join(
                f"{n}: {r.configs[n].get('status')} {r.configs[n].get('reason') or ''}".strip() for n in declared)
        else:
            why = 'no config in this run is marked `"baseline": true`'
        return f"No comparison to a baseline: {why}."
    others = [n for n, rec in r.configs.items() if n != base and rec.get("status") == "ready"]
    if not others:
        return f"Only the baseline ({base}) ran, so there is nothing to compare with it."
    rows = []
    base_rows = r.table[r.table["config"] == base].set_index("batch_size")
    for name in others:
        m = r.configs[name].get("metrics") or {}
        mine = r.table[r.table["config"] == name].set_index("batch_size")
        common = sorted(set(mine.index) & set(base_rows.index))
        speed = ", ".join(
            f"bs{b}: p95 x{mine.loc[b, 'latency_p95_ms'] / base_rows.loc[b, 'latency_p95_ms']:.2f}, "
            f"throughput x{mine.loc[b, 'throughput_samples_per_s'] / base_rows.loc[b, 'throughput_samples_per_s']:.2f}"
            for b in common) or "no common batch size"
        rows.append((name, fmt(m.get("accuracy_delta"), 4, signed=True), fmt(m.get("macro_f1_delta"), 4, signed=True),
                     fmt(m.get("flip_rate"), 2, pct=True),
                     fmt(m.get("max_abs_prob_diff"), 4), speed))
    text = md_table(("config", "accuracy delta", "macro-F1 delta", "flip rate", "max abs prob diff",
                     "speed vs baseline (ratio of this config's value to the baseline's)"), rows)
    return (f"Against the baseline **{base}** on the same rows (deltas are config minus baseline; flip rate is the "
            f"share of rows whose predicted label differs):\n\n" + text)


def load_test(r: RunResults) -> str:
    if not r.loads:
        selected = r.machine.get("pytest_markexpr")
        why = (f"this run selected tests with `-m \"{selected}\"` and no load test recorded a result"
               if selected else "no load test recorded a result in this run")
        return (f"No load-test data: {why}. Load tests (marker `load`, benchmarks/test_load.py) drive an HTTP "
                "server with concurrent Locust users; run them with `-m load` to fill this section.")
    out = [load_method(r), "", md_table(*tables.load_grid(r))]
    if r.capacity:
        out += ["", f"### Capacity at p95 <= {r.options.p95_target_ms:g} ms\n",
                "Per config, the grid point with the highest req/s whose p95 stays at or under the target "
                "(`--qbench-p95-target-ms`), among points without failed requests"
                + (" that kept their open-loop schedule" if _open_loop(r) else "") + "; where none does, the note "
                "says why (capacity is never extrapolated):\n", md_table(*tables.capacity(r))]
        out.append("\nThe latency-throughput curve (p95 against req/s, one line per config and request batch "
                   "size) is `load_p95_vs_rps.png`.")
    return "\n".join(out)


def _open_loop(r: RunResults) -> bool:
    return "rate" in r.load_table and r.load_table["rate"].notna().any()


def load_method(r: RunResults) -> str:
    """How the load table was measured, from the run's own settings."""
    s = r.settings
    settle, window = s.get("load_settle"), s.get("load_duration")
    text = ("One Locust run per grid point, every point of a config against that config's one server. Each "
            f"point's figures come from its measured window: {fmt(settle, 1) if settle is not None else 'the settle period'} s "
            "after Locust started its last user (ramp-up left out), for "
            f"{fmt(window, 0) if window is not None else 'the run time'} s; 'whole-run req/s' is the whole run, "
            "ramp-up included. Latency is per request as the clients saw it (successful requests of the window); "
            "failures count the whole run.")
    if _open_loop(r):
        text += (f" Open loop: the users send on a fixed schedule that adds up to the offered req/s, and a request "
                 f"that left more than {loadgrid.LATE_TOLERANCE_MS:g} ms after its slot is counted as sent late "
                 f"(a point with more than {loadgrid.MAX_LATE_SHARE:.0%} of its window late missed its schedule).")
    else:
        text += " Closed loop: each user sends its next request when the last one is answered."
    return text


def key_findings(r: RunResults) -> str:
    out = []
    recs = r.recommendations
    if "latency" in recs:
        rec = recs["latency"]
        out.append(f"- Lowest p95 among configs that pass their accuracy gates: {rec.config} at batch size "
                   f"{rec.batch_size}, {fmt(rec.latency_p95_ms)} ms.")
    if "throughput" in recs:
        rec = recs["throughput"]
        out.append(f"- Highest throughput among them: {rec.config} at batch size {rec.batch_size}, "
                   f"{fmt(rec.throughput_samples_per_s, 1)} texts/s.")
    base = _baseline_name(r)
    if base is not None and not r.table.empty:
        largest = int(r.table["batch_size"].max())
        at = r.table[r.table["batch_size"] == largest].set_index("config")
        if base in at.index:
            for name in at.index:
                if name == base:
                    continue
                ratio = at.loc[name, "throughput_samples_per_s"] / at.loc[base, "throughput_samples_per_s"]
                delta = (r.configs.get(name, {}).get("metrics") or {}).get("accuracy_delta")
                acc = f", accuracy {fmt(delta, 4, signed=True)} vs baseline" if delta is not None else ""
                out.append(f"- {name} ({at.loc[name, 'method']}) at batch size {largest}: {ratio:.2f}x the "
                           f"baseline's throughput{acc}.")
    for name, rows in r.table.groupby("config"):
        rows = rows.sort_values("batch_size")
        if len(rows) > 1:
            first, last = rows.iloc[0], rows.iloc[-1]
            gain = last["throughput_samples_per_s"] / first["throughput_samples_per_s"]
            out.append(f"- {name}: batch size {int(first['batch_size'])} to {int(last['batch_size'])} multiplies "
                       f"throughput by {gain:.2f} and p95 by {last['latency_p95_ms'] / first['latency_p95_ms']:.2f}.")
    noisy = r.table[r.table["latency_p99_ms"] > 3 * r.table["latency_p50_ms"]]
    if not noisy.empty:
        cases = ", ".join(f"{row['config']} bs{int(row['batch_size'])}" for _, row in noisy.iterrows())
        out.append(f"- Unsteady timings (p99 over 3x p50): {cases}; a busy machine or engine stalls widen the tail, "
                   "so rerun these before trusting their p95/p99.")
    eligible = r.eligible
    if r.pricing.available and not eligible.empty and eligible["cost_per_1m_usd"].notna().any():
        cheap = eligible.loc[eligible["cost_per_1m_usd"].idxmin()]
        out.append(f"- Cheapest per request: {cheap['config']} at batch size {int(cheap['batch_size'])}, "
                   f"{fmt(cheap['cost_per_1m_usd'], 4, money=True)} per 1M requests priced as {r.pricing.gpu}.")
    if not r.table.empty and r.table["mfu"].notna().any():
        top = r.table.loc[r.table["mfu"].idxmax()]
        out.append(f"- Highest MFU: {top['config']} at batch size {int(top['batch_size'])}, "
                   f"{fmt(top['mfu'], 2, pct=True)} of {fmt(r.peak.tflops, 1)} TFLOP/s.")
    skipped = [n for n, rec in r.configs.items() if rec.get("status") in ("skipped", "failed")]
    if skipped:
        out.append(f"- {len(skipped)} config(s) did not run here ({', '.join(skipped)}); the experiment matrix "
                   "gives each reason.")
    blocked = r.eligibility[(~r.eligibility["eligible"]) & (r.eligibility["status"] == "ready")]
    for _, row in blocked.iterrows():
        out.append(f"- {row['config']} ran but is not recommended: {row['why_not']}.")
    if not out:
        out.append("- No latency or accuracy result finished in this run, so there is no finding to report; "
                   "the experiment matrix says what happened to each config.")
    return "\n".join(out)


def cost_analysis(r: RunResults) -> str:
    p = r.pricing
    grid = any(c.found for c in r.capacity)
    matrix = not tables.best_rows(r).empty
    if not grid and not matrix:
        return ("No cost: no config that passes its accuracy gates has a measured throughput. "
                "Cost per request is price per hour over requests per hour, so it needs a throughput.")
    out = []
    if p.available:
        out.append(f"Priced as **{p.gpu}**: on-demand {tables.price(p.on_demand_per_hour)}/h, spot "
                   f"{tables.price(p.spot_per_hour) if p.spot_per_hour is not None else 'no spot price given'}/h "
                   f"({p.source}). One replica runs fully busy at the measured throughput.")
        if p.note:
            out.append(f"\nNote: {p.note}.")
    else:
        out.append(f"No price for this run: {p.source}. The requests per replica-hour below are measured; "
                   "multiply your hourly price by 1,000 / (requests per hour) for the cost per 1K requests.")
    if grid:
        out.append(f"\nSource: the {LOAD_SOURCE}, each config at its capacity at p95 <= {r.options.p95_target_ms:g} ms "
                   "(Load test); a request is one HTTP request of that point's batch size:\n")
        out.append(md_table(*tables.load_cost(r)))
    if matrix:
        out.append(f"\nThe {MATRIX_SOURCE} (batches in the process, no HTTP, no queueing){', for comparison' if grid else ''}: "
                   "each config that passes its gates, at its highest-throughput batch size; one request is one text:\n")
        out.append(md_table(*tables.cost(r)))
    out.append(f"\nList prices assumed when no price is given (USD per GPU-hour, and per vCPU-hour for a run on a CPU, "
               f"as of {gpus.PRICES_AS_OF}; "
               "assumptions, check your provider):\n")
    out.append(md_table(*tables.gpu_prices()))
    return "\n".join(out)


def recommendations(r: RunResults) -> str:
    out = [f"{r.coverage_note()}: another config might have won.\n"] if r.partial else []
    if not r.recommendations:
        out.append(f"No recommendation: {r.no_recommendation}.")
    else:
        out.append(md_table(*tables.picks(r)))
        out.append("\nBalance score = mean of min-max-normalized throughput and (1 - min-max-normalized p95) over "
                   "the eligible (config, batch size) rows; 1 is best on both.")
        out.extend(f"- Tie: {text}." for text in r.tie_notes)
        out.extend(f"- Reference: {ref.text()}." for ref in r.references)
        out.extend(f"- Not ranked: {text}." for text in r.left_out)
    out.append("\nEligibility (a config is recommended only if it ran, its accuracy was measured and no accuracy "
               "gate failed):\n")
    out.append(md_table(*tables.eligibility(r)))
    if r.deployment:
        d = r.deployment
        win = r.recommendations["balanced"]
        out.append(f"\nDeployment settings from the balanced pick ({win.config}, batch size {win.batch_size}):\n")
        out.append("```bash\n" + tables.deployment_env(r) + "\n```")
        out.extend(f"- {note}" for note in d["notes"])
    return "\n".join(out)


def scaling(r: RunResults) -> str:
    t = r.traffic
    if t.from_load:
        out = [f"Traffic tiers under a p95 target of {t.p95_target_ms:g} ms (option `--qbench-p95-target-ms`), "
               f"sized from the {t.source}: each replica serves its config's capacity at the target (Load test), "
               "the requests/s its server answered under concurrent load with p95 at or under the target; a request "
               "is one HTTP request of the capacity point's batch size, and no headroom is added.\n"]
    else:
        out = [f"Traffic tiers under a p95 target of {t.p95_target_ms:g} ms (option `--qbench-p95-target-ms`), "
               f"sized from the {t.source} (no load grid ran): a request is one text, replicas run at the measured "
               "throughput with no headroom added, and queueing is not modelled (p95 is the batch latency).\n"]
    if t.reason:
        out.append(f"No tier plan: {t.reason}.")
    elif t.from_load:
        out.append(f"Serving config: {t.config} at point {t.point} ({texts_a_request(t.batch_size)}, p95 "
                   f"{fmt(t.latency_p95_ms)} ms, {fmt(t.capacity_per_replica_per_s, 1)} req/s per replica): the "
                   "highest capacity among configs that did not fail their accuracy gates"
                   + (f"; note: {t.note}" if t.note else "") + ".\n")
        out.append(md_table(*tables.tiers(r)))
    else:
        out.append(f"Serving row: {t.config} at batch size {t.batch_size} (p95 {fmt(t.latency_p95_ms)} ms, "
                   f"{fmt(t.capacity_per_replica_per_s, 1)} texts/s per replica): the eligible row with the "
                   "highest throughput that meets the target.\n")
        out.append(md_table(*tables.tiers(r)))
    out.append("\n### Headroom (MFU)\n")
    w = r.workload
    tokens, params = w.get("mean_tokens_per_text"), w.get("non_embedding_params")
    facts = []
    facts.append(f"- Mean tokens per text: {fmt(tokens, 1)} (model's tokenizer on the evaluated split, truncated at "
                 f"{w.get('max_model_len', r.settings.get('max_model_len'))})" if tokens else
                 f"- Tokens per text: {MISSING} ({w.get('tokens_error') or 'the evaluation split was not loaded'})")
    facts.append(f"- Non-embedding parameters: {fmt(params)} (FLOPs per token = 2 x this)" if params else
                 f"- Non-embedding parameters: {MISSING} ({w.get('params_error') or 'the model was not loaded'})")
    facts.append(f"- Peak: {fmt(r.peak.tflops, 1)} TFLOP/s ({r.peak.source})" if r.peak.tflops else
                 f"- Peak TFLOP/s: {r.peak.source}")
    out.extend(facts)
    if not r.table.empty and r.table["achieved_tflops"].notna().any():
        out.append("")
        out.append(md_table(*tables.mfu(r)))
    return "\n".join(out)


def saved_run_comparison(r: RunResults) -> str:
    long = r.comparison
    out = [f"This run (B) against saved run {r.comparison_source} (A): {counts_text(long)}; values are this run's, "
           f"the change is from A; \"{NOISE}\": the bootstrap 95% interval of B/A includes 1; \"{TOLERATED}\": a "
           f"memory change within the tolerance of run-to-run drift (every number is in {'compare.csv'}).\n"]
    if engines := engine_changes(long):
        out.append(f"Engines differ: {engines}.\n")
    header, rows = tables.comparison(r)
    if not rows:
        out.append("No case ran in both runs.")
    else:
        out.append(md_table(header, rows))
    if extra := unmatched(long):
        out.append(f"\nCases in one run only: {extra}.")
    return "\n".join(out)


def suite_overhead(r: RunResults) -> str:
    if not r.overhead:
        return "Not measured in this run (benchmarks/test_overhead.py, marked slow, vLLM engine only)."
    out = ["The suite's throughput over bare `llm.classify` calls on the same batches: each timed suite call "
           "follows a bare call on its batch; suite/bare is the median of the per-pair ratios, with its "
           "bootstrap 95% interval. The target is missed only when the whole interval lies below it; "
           "\"within noise\" means the median is below the target and the interval reaches it.\n"]

    def verdict(o: dict) -> str:
        v = o.get("verdict") or ("met" if o["ratio"] >= o["target"] else "missed")
        return v if v == "met" else f"{v} (target {o['target']})"

    rows = [(name, o["batch_size"], fmt(o["bare_latency_p50_ms"], 3), fmt(o["suite_latency_p50_ms"], 3),
             fmt(o["ratio"], 3), "-" if not o.get("ci95") else f"{o['ci95'][0]:.3f}-{o['ci95'][1]:.3f}", verdict(o))
            for name, o in r.overhead.items()]
    out.append(md_table(["config", "batch size", "bare p50 ms", "suite p50 ms", "suite/bare", "95% interval",
                         "target"], rows))
    return "\n".join(out)


def throughput_ceiling(r: RunResults) -> str:
    if r.ceiling.empty:
        return "No saturation sweep in this run (`--qbench-sweep on` adds one for `--qbench-sweep-configs`)."
    out = ["Points from `benchmarks/test_saturation.py`. \"tokenization timed: no\" means the engine got "
           "pre-tokenized input (vLLM TokensPrompt, HF padded tensors) and the tokenizer ran outside the timed "
           "region; tokenizer rows time the tokenizer alone. Memory is the GPU's (device-wide) where there is one, "
           "else the process tree's RSS.\n"]
    for _, p in saturation_points(r.ceiling).iterrows():
        p95 = f"p95 {p['p95 ms']} ms" if p["p95 ms"] != "-" else "no per-batch p95 (replicas run concurrently)"
        out.append(f"- Saturation point of {p['config']}: {p['texts/s']} texts/s at batch size {p['batch size']} "
                   f"({p['how']}; tokenization timed: {p['tokenization timed']}), {p95}, "
                   f"peak memory {p['peak memory MiB']} MiB, MFU {p['MFU']}.")
    out.append("")
    out.append(md_table(*tables.ceiling_all(r)))
    return "\n".join(out)


def measurement_design(r: RunResults) -> str:
    m = r.measurement
    if not m:
        return "No latency matrix was timed in this run (or it was recorded before qbench timed in rounds)."
    groups = m.get("groups") or []
    out = [f"Design: {m.get('design', 'interleaved rounds')}. Each case's {m['rounds'] * m['block']} timed batches "
           f"were split into {m['rounds']} rounds of {m['block']}, after {m['warmup']} untimed warm-up batches; in "
           f"every round each case ran one untimed call and then its block, the cases in a fresh random order "
           f"(seed {m['seed']}; `qbench.json` -> `measurement.orders` has every round's order). Garbage collection "
           "was off inside a block and memory was read between blocks, never during one. The matrix took "
           f"{fmt(m.get('seconds'), 1)} s.\n",
           "Intervals (95%) come from the rounds: a bootstrap that resamples whole rounds, so drift over seconds to "
           "minutes is inside them. Two configs of this run are compared round by round (paired); two runs are "
           "compared with each run's rounds resampled on its own.\n"]
    if len(groups) > 1:
        out.append("Not every engine could be resident at once; each group below was interleaved within itself, and "
                   "the first group's rounds were split in halves around the others (A B A), so comparisons across "
                   "groups are not paired round by round but drift that grew over the run hit them alike on average:\n")
        out.extend(f"- group {i + 1}: {', '.join(g)}" for i, g in enumerate(groups))
        out.extend(f"- {name}: {why}" for name, why in (m.get("not_resident") or {}).items())
        if m.get("visits"):
            out.append(f"- order: {'; '.join(m['visits'])}")
    elif groups:
        out.append(f"Every engine was resident for the whole matrix: {', '.join(groups[0])}.")
    idle = m.get("idle_engines_by_config") or ({m["idle_engines"]["config"]: m["idle_engines"]}
                                                if m.get("idle_engines") else {})
    if idle:
        out.append("\nIdle engines (`benchmarks/test_residency.py`): each config below timed with the other vLLM "
                   "engines resident and idle, against the same engines stopped (SIGSTOP), in alternating block pairs; "
                   "stopped / resident time below 1 means the idle engines cost it time:\n")
        out.extend(f"- {x['config']} at batch size {x['batch_size']}, beside {', '.join(x['idle_engines'])}: "
                   f"{x['stopped_over_resident']:.3f} (95% interval {x['ci95'][0]:.3f}-{x['ci95'][1]:.3f}, "
                   f"{x['pairs']} pairs): {x['verdict']}" for x in idle.values())
    if m.get("run_noise") is not None:
        out.append(f"\nRun-to-run noise allowed by this run's perf gates: {m['run_noise']:.0%} (the device's A/A figure, "
                   "or `--qbench-run-noise`).")
    probe = m.get("host_probe") or {}
    if probe.get("seconds"):
        ms = [1e3 * x for x in probe["seconds"]]
        out.append(f"\nHost probe (a fixed workload of {', '.join(probe.get('components', []))}, once per round; "
                   f"probe.py): median {sorted(ms)[len(ms) // 2]:.2f} ms over {len(ms)} rounds, "
                   f"{min(ms):.2f}-{max(ms):.2f} ms. Comparing two runs, qbench compare and the perf gates print the probes' ratio: a host slower or faster beyond the probe's own spread is named as the likely cause of a whole-run shift.")
    if m.get("interrupted"):
        out.append(f"\nInterrupted: {m['interrupted']}; the cases keep those whole rounds.")
    return "\n".join(out)


BUILDERS: tuple[tuple[str, Callable[[RunResults], str]], ...] = (
    ("Hardware", hardware), ("Software versions", software), ("Experiment matrix", matrix),
    ("Results per method", per_method), ("Observations: memory, cold start, accuracy", observations),
    ("Comparison to the baseline", baseline_comparison), ("Load test", load_test), ("Key findings", key_findings),
    ("Cost analysis", cost_analysis), ("Recommendations", recommendations), ("Scaling", scaling),
    ("Suite overhead", suite_overhead), ("Throughput ceiling", throughput_ceiling),
    ("How it was measured", measurement_design),
)


def experiment_log(r: RunResults, files: Sequence[str] = ()) -> str:
    parts = [f"# Experiment log: qbench run {r.run_id}\n",
             f"Written by qbench from the run's own measurements on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
             f"{f' at commit {r.commit}' if r.commit else ''}. Prices are assumptions (marked as such); every "
             "other number was measured in this run.\n"]
    if r.partial:
        missing = r.not_run_text()
        parts.append(f"**PARTIAL RUN**: {r.status_reason or 'the run stopped early'}. Every section below covers "
                     f"only what finished{f'; {missing}' if missing else ''}.\n")
    for title, build in BUILDERS:
        parts.append(f"## {title}\n")
        parts.append(build(r).rstrip() + "\n")
    if r.comparison is not None:
        parts.append("## Comparison with a saved run\n")
        parts.append(saved_run_comparison(r) + "\n")
    if files:
        parts.append("## Files\n")
        parts.append("\n".join(f"- `{name}`" for name in files) + "\n")
    return "\n".join(parts)


# What a hand-filled template leaves behind, and what a formatting slip prints for a missing number.
PLACEHOLDER_PATTERN = re.compile(r"\bTBD\b|\bTODO\b|\bFIXME\b|\bXX+\b|\[fill|<fill|\?\?\?|\bnan\b|\bNone\b|\bNaN\b")


def find_placeholders(text: str) -> list[str]:
    """Every placeholder-looking token in the text, with its line, for a test to assert on."""
    return [f"line {i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if PLACEHOLDER_PATTERN.search(line)]

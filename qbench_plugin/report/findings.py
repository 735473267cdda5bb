"""The experiment log's sections on what the run found: memory, cold start and accuracy per config, the
comparison with the baseline config, the load test, and the key findings (Markdown, from RunResults)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from qbench_plugin.loadtest import loadgrid
from qbench_plugin.report import tables
from qbench_plugin.report.summary import RunResults, memory_column
from qbench_plugin.report.tables import fmt, md_table, value

MEMORY_WORDS = {"weights_memory_mib": "weights in memory", "memory_rss_peak_mib": "peak host memory",
                "memory_rss_mib": "host memory once ready"}


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
    inproc = [n for n, rec in r.configs.items() if rec.get("status") == "ready" and rec.get("engine") == "vllm"
              and (rec.get("info") or {}).get("engine_core") == "in-process"]
    vllm_how = ("the PSS of its engine processes" if not inproc else
                "the growth of the pytest process while it loaded, its engine core running in-process "
                f"({', '.join(inproc)}), else the PSS of its engine processes")
    notes.append(f"- Host memory is each engine's own: for vllm, {vllm_how} (the KV cache "
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
                 f"that its user's previous answer held more than {loadgrid.LATE_TOLERANCE_MS:g} ms past its slot is counted "
                 f"as sent late (a point with more than {loadgrid.MAX_LATE_SHARE:.0%} of its window late, or answering "
                 f"under {loadgrid.MIN_RATE_HELD:.0%} of the offered rate, missed its schedule).")
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

"""What a person decides from a run: tables, which config to serve, what it costs, how far from peak.

Everything here is pure: it takes a run's JSON (qbench.json's shape, live or saved), the configs and
the report options, and returns one `RunResults`; the CSVs, plots, HTML blocks, EXPERIMENT_LOG.md
and the terminal line all render from that object, so they cannot disagree.

Recommendations consider only (config, batch size) rows whose config passed its accuracy gates
(`gates.passes_accuracy_gates`, so the report and CI agree on what passes). Prices, peak and traffic
tiers are cost.py's; the picks and the winner's deployment settings are picks.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

from qbench_plugin.loadtest import loadgrid
from qbench_plugin.measure.ceiling import leader
from qbench_plugin.config import BenchConfig
from qbench_plugin.report.bounds import path_words
from qbench_plugin.report.cost import (Peak, Pricing, TrafficPlan, add_costs, cost_per_requests, load_traffic_plan,
                                       resolve_peak, resolve_pricing, traffic_plan)
from qbench_plugin.gates.gates import gate_frame
from qbench_plugin.record.metrics import CASE_METRICS, CONFIG_METRICS, DERIVED_METRICS
from qbench_plugin.report.picks import Recommendation, ReferenceLine, balance_scores, deployment_settings, recommend
from qbench_plugin.record.run import describe_not_run

DEFAULT_P95_TARGET_MS = 100.0


@dataclass(frozen=True)
class ReportOptions:
    """The report's knobs (--qbench-gpu-type, --qbench-price-per-hour, ...); None or '' means not given."""

    gpu_type: str = ""
    price_per_hour: float | None = None
    spot_price_per_hour: float | None = None
    peak_tflops: float | None = None
    p95_target_ms: float = DEFAULT_P95_TARGET_MS
    gate_overrides: Mapping[str, float | None] = field(default_factory=dict)


# -- the table --------------------------------------------------------------------------------------

def table_from_json(run: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (config, batch size): case metrics, then the config's metrics (RunStore.table's shape)."""
    configs = run.get("configs") or {}
    rows = []
    for case in run.get("cases") or []:
        rec = configs.get(case["config"]) or {}
        row = {"config": case["config"], "method": rec.get("method"), "engine": rec.get("engine"),
               "batch_size": int(case["batch_size"])}
        row.update({k: v for k, v in (case.get("metrics") or {}).items() if k not in DERIVED_METRICS})
        row.update(rec.get("metrics") or {})
        row["tokenization_timed"] = "yes" if case.get("tokenization_in_timed_region", True) else "no"
        rows.append(row)
    columns = ["config", "method", "engine", "batch_size", *CASE_METRICS, *CONFIG_METRICS]
    frame = pd.DataFrame(rows)
    for name in columns:
        if name not in frame:
            frame[name] = None
    rest = [c for c in frame.columns if c not in columns]
    frame = frame[columns + rest]
    numeric = [c for c in frame.columns if c not in ("config", "method", "engine", "tokenization_timed")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame.sort_values(["config", "batch_size"], kind="stable").reset_index(drop=True)


def add_derived(table: pd.DataFrame, workload: Mapping[str, Any], peak_tflops: float | None) -> pd.DataFrame:
    """tokens/s, achieved TFLOP/s and MFU per row; NaN where the tokens, parameters or peak are unknown."""
    table = table.copy()
    tokens = workload.get("mean_tokens_per_text")
    params = workload.get("non_embedding_params")
    nan = float("nan")
    # each case's own timed texts where recorded (batch sizes time different rows); else the split's mean
    per_case = table["timed_tokens_per_text"] if "timed_tokens_per_text" in table else pd.Series(nan, index=table.index)
    per_case = pd.to_numeric(per_case, errors="coerce").fillna(tokens if tokens else nan)
    table["tokens_per_s"] = table["throughput_samples_per_s"] * per_case
    # forward pass of a dense decoder: 2 FLOPs per parameter per token (attention's share is left out)
    table["achieved_tflops"] = 2.0 * params * table["tokens_per_s"] / 1e12 if params else nan
    table["mfu"] = table["achieved_tflops"] / peak_tflops if peak_tflops else nan
    return table


def ceiling_table(points: Iterable[Mapping[str, Any]], workload: Mapping[str, Any],
                  peak_tflops: float | None) -> pd.DataFrame:
    """The sweep's points (qbench.json "ceiling") with tokens/s, TFLOP/s and MFU, where a point measured
    model work."""
    frame = pd.DataFrame(list(points))
    if frame.empty:
        return frame
    frame["throughput_samples_per_s"] = frame["texts_per_s"]
    frame = add_derived(frame, workload, peak_tflops).drop(columns="throughput_samples_per_s")
    # the tokenizer's points do no model FLOPs; a failed point measured none (its 0 texts/s is no 0% MFU)
    failed = frame["error"].notna() if "error" in frame else False
    frame.loc[(frame["stage"] != "engine") | failed, ["tokens_per_s", "achieved_tflops", "mfu"]] = float("nan")
    return frame


def ceiling_best(frame: pd.DataFrame) -> pd.DataFrame:
    """Per config, its saturation point: the fastest engine point that beats every simpler one by more
    than the sweep's gain rule (ceiling.leader), not the raw maximum."""
    if frame.empty:
        return frame
    measured = frame[(frame["stage"] == "engine") & frame["error"].isna() & (frame["texts_per_s"] > 0)]
    if measured.empty:
        return measured
    picks = []
    for _, group in measured.groupby("config", sort=False):
        rows = group.to_dict("records")
        picks.append(group.index[leader(rows)])
    return measured.loc[picks].reset_index(drop=True)


def ceiling_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs to tell the points apart, formatted for the report and the log."""
    def settings(row) -> str:
        parts = [f"{k}={v}" for k, v in (row["engine_settings"] or {}).items()] + path_words(row)
        if row["replicas"] > 1:
            fed = row.get("path_settings")
            fed = isinstance(fed, Mapping) and fed.get("feed") == "processes"
            parts.append(f"{row['replicas']} replicas" + (", a process each" if fed else ""))
        if row["stage"] == "tokenizer" and pd.notna(row.get("tokenizers_parallelism")):
            parts.append("TOKENIZERS_PARALLELISM=" + ("true" if row["tokenizers_parallelism"] else "false"))
        return ", ".join(parts) or "defaults"

    def num(value: Any, digits: int) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:,.{digits}f}"

    rows = []
    for _, row in frame.iterrows():
        memory = row.get("gpu_memory_peak_mib")
        memory = memory if memory is not None and pd.notna(memory) else row.get("memory_rss_peak_mib")
        rows.append({
            "config": row["config"], "engine": row["engine"], "stage": row["stage"],
            "tokenization timed": ("yes, overlapped" if row.get("overlapped") == True else "yes")  # noqa: E712
            if row["input"] == "strings" else "no",
            "deployable": row.get("deployable") if isinstance(row.get("deployable"), str) else
            ("vllm" if row["engine"] == "vllm" else "reference"),
            "order": row["order"], "batch size": int(row["batch_size"]), "settings": settings(row),
            "texts/s": row["error"] if isinstance(row["error"], str) else num(row["texts_per_s"], 1),
            "p95 ms": num(row.get("latency_p95_ms"), 2), "peak memory MiB": num(memory, 0),
            "compile s": num(row.get("compile_s"), 1),
            "MFU": "-" if pd.isna(row.get("mfu")) else f"{row['mfu']:.2%}",
        })
    return pd.DataFrame(rows)


def saturation_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Each config's saturation point as displayed, with `how`: its settings and batch order in words."""
    shown = ceiling_display(ceiling_best(frame))
    if not shown.empty:
        shown["how"] = [s if o == "dataset" else f"{s}, {o.replace('_', '-')} batches"
                        for s, o in zip(shown["settings"], shown["order"])]
    return shown


# -- aggregate tables --------------------------------------------------------------------------------

def pivots(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """p95 and throughput by (method, config) x batch size; config keeps two configs of one method apart."""
    out = {}
    for name, value in (("p95_ms", "latency_p95_ms"), ("throughput", "throughput_samples_per_s")):
        if table.empty:
            out[name] = pd.DataFrame()
            continue
        pivot = table.pivot_table(index=["method", "config"], columns="batch_size", values=value, aggfunc="first")
        pivot.columns = [f"bs{b}" for b in pivot.columns]
        out[name] = pivot.reset_index()
    return out


def method_stats(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame()
    grouped = table.groupby("method", sort=True)
    stats = grouped.agg(
        configs=("config", "nunique"), cases=("config", "size"),
        p95_ms_min=("latency_p95_ms", "min"), p95_ms_mean=("latency_p95_ms", "mean"),
        p95_ms_max=("latency_p95_ms", "max"), p99_ms_max=("latency_p99_ms", "max"),
        throughput_min=("throughput_samples_per_s", "min"), throughput_mean=("throughput_samples_per_s", "mean"),
        throughput_max=("throughput_samples_per_s", "max"), accuracy_mean=("accuracy", "mean"),
        memory_rss_mib_mean=("memory_rss_mib", "mean"), cold_start_s_mean=("cold_start_s", "mean"),
    )
    return stats.reset_index()


def memory_column(table: pd.DataFrame) -> str:
    """The one memory axis of a run's ranking, tie-breaks and Pareto front: the weights in memory when
    every row has them (what quantization changes; vLLM reserves the same GPU pool whatever the
    model), else the engines' peak host memory, else their memory once ready."""
    for name in ("weights_memory_mib", "memory_rss_peak_mib", "memory_rss_mib"):
        if name in table and not table.empty and table[name].notna().all():
            return name
    return "memory_rss_mib"


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on accuracy (higher), p95 and memory (lower) all at once."""
    mem = memory_column(table)
    points = table.dropna(subset=["accuracy", "latency_p95_ms", mem]).copy()
    keep = []
    values = points[["accuracy", "latency_p95_ms", mem]].to_numpy(dtype=float)
    for i, (acc, p95, m) in enumerate(values):
        dominated = any(
            a >= acc and p <= p95 and mm <= m and (a > acc or p < p95 or mm < m)
            for j, (a, p, mm) in enumerate(values) if j != i)
        keep.append(not dominated)
    points["pareto"] = keep
    points["memory_metric"] = mem
    return points


# -- the results object ------------------------------------------------------------------------------

@dataclass
class RunResults:
    run_id: str
    commit: str | None
    settings: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    configs: dict[str, dict[str, Any]]  # qbench.json's per-config records
    options: ReportOptions
    table: pd.DataFrame  # one row per (config, batch size): every metric, derived, eligibility, costs
    eligibility: pd.DataFrame
    pivots: dict[str, pd.DataFrame]
    method_stats: pd.DataFrame
    recommendations: dict[str, Recommendation]
    no_recommendation: str | None
    deployment: dict[str, Any] | None
    pricing: Pricing
    peak: Peak
    traffic: TrafficPlan
    pareto: pd.DataFrame
    loads: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    comparison: pd.DataFrame | None = None
    comparison_source: str | None = None
    ceiling: pd.DataFrame = field(default_factory=pd.DataFrame)  # saturation sweep points, MFU included
    references: list[ReferenceLine] = field(default_factory=list)  # other-engine configs vs the best serving one
    left_out: list[str] = field(default_factory=list)  # rows too thinly timed to be picked (picks.undecidable)
    measurement: dict[str, Any] = field(default_factory=dict)  # rounds, seed, groups: how the matrix was timed
    overhead: dict[str, dict[str, Any]] = field(default_factory=dict)  # config -> suite vs bare loop
    load_table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per load-grid point (loadgrid)
    capacity: list[loadgrid.Capacity] = field(default_factory=list)  # per loaded config, at the p95 target
    status: str = "complete"  # qbench.json's: complete, or partial when the run stopped early (Ctrl-C)
    status_reason: str | None = None
    not_run: dict[str, list] = field(default_factory=dict)  # configs / cases of a stopped run that never ran
    dataset: dict[str, Any] = field(default_factory=dict)  # qbench.json's: rows, duplicates, truncated rows, ...

    @property
    def tie_notes(self) -> list[str]:
        """One sentence per pick that is a statistical tie, naming the tied configs."""
        return [text for rec in self.recommendations.values() if (text := rec.tie_text())]

    @property
    def eligible(self) -> pd.DataFrame:
        return self.table[self.table["eligible"]]

    @property
    def partial(self) -> bool:
        return self.status == "partial"

    def not_run_text(self) -> str:
        """'not run: configs a, b; cases c-bs8, c-bs16' for a stopped run; '' when everything ran."""
        text = describe_not_run(self.not_run)
        return f"not run: {text}" if text else ""

    def coverage_note(self) -> str | None:
        """For a stopped run, what its picks cover and what never ran; None for a complete run."""
        if not self.partial:
            return None
        finished = ", ".join(dict.fromkeys(self.table["config"])) or "none"
        note = f"PARTIAL RUN: covers only the configs that finished latency cases before the run stopped ({finished})"
        return f"{note}; {self.not_run_text()}" if self.not_run_text() else note

    def dataset_text(self) -> str | None:
        """The evaluated split in one sentence, truncation first: timings and accuracy are on what the
        engines saw, and a truncated text is not the text in the file."""
        d = self.dataset
        if not d.get("rows"):
            return None
        rows, cut = int(d["rows"]), int(d.get("truncated_rows") or 0)
        text = f"dataset {d.get('source')} split {d.get('split')}: {rows:,} rows"
        if cut:
            text += (f", {cut:,} of them ({cut / rows:.1%}) longer than max_model_len {d.get('max_model_len')} tokens "
                     "and truncated to it (--qbench-truncation truncate; accuracy and timings are on the truncated texts)")
        else:
            text += f", none longer than max_model_len {d.get('max_model_len')} tokens"
        extra = [f"{int(d[k]):,} {what}" for k, what in (("duplicate_rows", "duplicates"), ("non_ascii_rows", "non-ASCII"))
                 if d.get(k)]
        return text + (f"; {', '.join(extra)}" if extra else "")

    def headline(self) -> str:
        """The terminal's one line."""
        rec = self.recommendations.get("balanced")
        label = "qbench recommendation" + (f" ({self.coverage_note()})" if self.partial else "")
        if rec is None:
            return f"{label}: none ({self.no_recommendation})"
        line = (f"{label}: {rec.config} at batch size {rec.batch_size} "
                f"({rec.method}, {rec.engine}): p95 {rec.latency_p95_ms:.2f} ms, "
                f"{rec.throughput_samples_per_s:,.1f} texts/s")
        if rec.accuracy is not None:
            line += f", accuracy {rec.accuracy:.4f}"
        cost = cost_per_requests(rec.throughput_samples_per_s, self.pricing.on_demand_per_hour, 1_000_000)
        if cost is not None:
            line += f", ${cost:,.4f} per 1M requests ({self.pricing.gpu})"
        return line


    def ceiling_lines(self) -> list[str]:
        """The terminal's line per swept config: its saturation point."""
        return [f"qbench ceiling: {p['config']} {p['texts/s']} texts/s at batch size {p['batch size']} ({p['how']}; "
                f"tokenization timed: {p['tokenization timed']}), p95 {p['p95 ms']} ms, MFU {p['MFU']}"
                for _, p in saturation_points(self.ceiling).iterrows()]


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if hasattr(item, "as_dict"):
        return item.as_dict()
    return dict(getattr(item, "__dict__", {"value": item}))


def build_results(run: Mapping[str, Any], *, machine: Mapping[str, Any], bench_configs: Mapping[str, BenchConfig],
                  options: ReportOptions, loads: Iterable[Any] | None = None) -> RunResults:
    """Compute everything once from a run's JSON (RunStore.to_json() or a saved qbench.json)."""
    configs = {name: dict(rec) for name, rec in (run.get("configs") or {}).items()}
    settings = dict(run.get("settings") or {})
    workload = dict(run.get("workload") or {})
    device_names = list(machine.get("gpu_names") or [])
    peak = resolve_peak(options, device_names)
    pricing = resolve_pricing(options, device_names, machine.get("cpu_count"))
    eligibility = gate_frame(configs, bench_configs, options.gate_overrides)
    eligible_names = set(eligibility.loc[eligibility["eligible"], "config"])

    table = add_derived(table_from_json(run), workload, peak.tflops)
    table["eligible"] = table["config"].isin(eligible_names)
    engine = str(settings.get("engine") or "vllm")  # the serving engine: picks, tiers and costs rank its configs
    serving = table["eligible"] & (table["engine"] == engine)
    table["balance_score"] = balance_scores(table[serving]).reindex(table.index)
    table = add_costs(table, pricing)

    eligible = table[table["eligible"]]
    picks = recommend(eligible, list(run.get("cases") or []), engine=engine, memory=memory_column(eligible),
                      planned_rounds=settings.get("rounds"))
    recs = picks.recommendations
    if recs:
        no_rec = None
    elif table.empty:
        no_rec = "no latency case finished"
    elif picks.reason:
        no_rec = picks.reason
    else:
        no_rec = "no config with latency cases passed its accuracy gates"
    deployment = None
    if "balanced" in recs:
        win = recs["balanced"]
        deployment = deployment_settings(win, configs.get(win.config, {}), bench_configs.get(win.config), settings)
    if loads is None:
        loads = run.get("loads") or []
    loads = [_as_dict(item) for item in loads]
    capacity = loadgrid.capacities(loads, options.p95_target_ms)
    if capacity:  # a load grid ran: size the tiers by what the server delivered
        traffic = load_traffic_plan(capacity, eligibility, configs, options.p95_target_ms, pricing)
    else:
        traffic = traffic_plan(table[serving], options.p95_target_ms, pricing)
    return RunResults(
        run_id=str(run.get("run_id")), commit=run.get("commit"), settings=settings, machine=dict(machine),
        workload=workload, configs=configs, options=options, table=table, eligibility=eligibility,
        pivots=pivots(table), method_stats=method_stats(table), recommendations=recs, no_recommendation=no_rec,
        deployment=deployment, pricing=pricing, peak=peak, references=picks.references, left_out=picks.left_out,
        traffic=traffic, pareto=pareto_front(table),
        loads=loads, gates=[_as_dict(g) for g in run.get("gates") or []],
        ceiling=ceiling_table(run.get("ceiling") or [], workload, peak.tflops),
        overhead=dict(run.get("overhead") or {}), measurement=dict(run.get("measurement") or {}),
        status=str(run.get("status") or "complete"), status_reason=run.get("status_reason"),
        not_run=dict(run.get("not_run") or {}), dataset=dict(run.get("dataset") or {}),
        load_table=loadgrid.load_table(loads), capacity=capacity,
    )

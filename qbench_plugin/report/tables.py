"""The report's tables as (header, rows) of display strings, one builder per table.

The experiment log (explog.py with findings.py, decisions.py and design.py) renders them as Markdown
through md_table and htmlblocks.py as HTML, so the log and the HTML report show the same rows, formatted
once, from the run's one RunResults.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

from qbench_plugin.report import gpus
from qbench_plugin.loadtest import loadgrid
from qbench_plugin.report.compare import wide as compare_wide
from qbench_plugin.report.cost import cost_per_requests
from qbench_plugin.report.picks import KINDS
from qbench_plugin.report.summary import RunResults, ceiling_best, ceiling_display

MISSING = "not measured"
STATUS_WORDS = {"ready": "ran", "skipped": "skipped", "failed": "failed", "pending": "not run"}
Table = tuple[list[str], list[list[Any]]]


def fmt(value: Any, digits: int = 2, pct: bool = False, money: bool = False, signed: bool = False) -> str:
    """Numbers for people; None and NaN become 'not measured', never 'nan' or 'None'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool,)):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not pct and not money:
        return f"{value:,}"
    number = float(value)
    if signed:
        return f"{number:+.{digits}f}"
    if pct:
        return f"{number:.{digits}%}"
    if money:
        return f"${number:,.{digits}f}"
    return f"{number:,.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Table as Markdown, for the experiment log (htmlblocks.py makes the HTML)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def value(row: pd.Series | dict, name: str) -> Any:
    """row[name], with NaN and a missing column both None."""
    found = row.get(name) if hasattr(row, "get") else None
    if found is None or (isinstance(found, float) and math.isnan(found)):
        return None
    return found


def picks(r: RunResults) -> Table:
    header = ["pick", "config", "method", "engine", "batch size", "p95 (ms)", "texts/s", "accuracy", "balance score"]
    rows = [[rec.title, rec.config, rec.method, rec.engine, rec.batch_size, fmt(rec.latency_p95_ms),
             fmt(rec.throughput_samples_per_s, 1), fmt(rec.accuracy, 4), fmt(rec.balance_score, 3)]
            for rec in (r.recommendations[k] for k in KINDS if k in r.recommendations)]
    return header, rows


def eligibility(r: RunResults) -> Table:
    rows = [[row["config"], STATUS_WORDS.get(row["status"], row["status"]), row["gates"],
             "yes" if row["eligible"] else "no", row["why_not"] or "-"] for _, row in r.eligibility.iterrows()]
    return ["config", "status", "gates", "eligible", "why not"], rows


def best_rows(r: RunResults) -> pd.DataFrame:
    """Each eligible config at its highest-throughput batch size, fastest first."""
    eligible = r.eligible
    if eligible.empty:
        return eligible
    idx = eligible.groupby("config")["throughput_samples_per_s"].idxmax()
    return eligible.loc[idx].sort_values("throughput_samples_per_s", ascending=False)


def cost(r: RunResults) -> Table:
    p = r.pricing
    header = ["config", "batch size", "texts/s", "requests per replica-hour"]
    if p.available:
        header += ["on-demand $/1K", "on-demand $/1M", "spot $/1K", "spot $/1M"]
    rows = []
    for _, row in best_rows(r).iterrows():
        line = [row["config"], int(row["batch_size"]), fmt(row["throughput_samples_per_s"], 1),
                fmt(row["throughput_samples_per_s"] * 3600, 0)]
        if p.available:
            spot = p.spot_per_hour is not None
            line += [fmt(value(row, "cost_per_1k_usd"), 6, money=True), fmt(value(row, "cost_per_1m_usd"), 4, money=True),
                     fmt(value(row, "spot_cost_per_1k_usd"), 6, money=True) if spot else "no spot price",
                     fmt(value(row, "spot_cost_per_1m_usd"), 4, money=True) if spot else "no spot price"]
        rows.append(line)
    return header, rows


def price(value: float | None) -> str:
    """USD per hour: cents for GPUs, four decimals for CPUs' fractions of a dollar."""
    return fmt(value, 2 if value is None or value >= 1 else 4, money=True)


def gpu_prices() -> Table:
    """The price table, GPUs per GPU-hour and the CPU per vCPU-hour."""
    header = ["hardware", "on-demand $/h", "spot $/h", "dense bf16/fp16 peak TFLOP/s", "source"]
    rows = [[g.name, price(g.on_demand_per_hour), price(g.spot_per_hour), fmt(g.peak_tflops, 0), g.price_source]
            for g in gpus.GPUS]
    cpu = gpus.CPU
    rows.append(["CPU, per vCPU", price(cpu.on_demand_per_vcpu_hour), price(cpu.spot_per_vcpu_hour),
                 "unknown (give --qbench-peak-tflops)", cpu.price_source])
    return header, rows


def tiers(r: RunResults) -> Table:
    priced = r.pricing.available
    header = ["requests/min", "requests/s", "replicas", "utilization"]
    if priced:
        header += ["on-demand $/h", "spot $/h"]
    rows = []
    for tier in r.traffic.tiers:
        line = [fmt(tier.requests_per_min), fmt(tier.requests_per_min / 60, 2), tier.replicas,
                fmt(tier.utilization, 1, pct=True)]
        if priced:
            line += [fmt(tier.on_demand_per_hour, 2, money=True),
                     fmt(tier.spot_per_hour, 2, money=True) if tier.spot_per_hour is not None else "no spot price"]
        rows.append(line)
    return header, rows


def mfu(r: RunResults) -> Table:
    rows = [[row["config"], int(row["batch_size"]), fmt(row["tokens_per_s"], 0), fmt(row["achieved_tflops"], 5),
             fmt(row["mfu"], 3, pct=True) if pd.notna(row["mfu"]) else "peak unknown"]
            for _, row in r.table.iterrows()]
    return ["config", "batch size", "tokens/s", "achieved TFLOP/s", "MFU"], rows


def load_grid(r: RunResults) -> Table:
    """One row per (config, request batch size, users[, offered rate]) of the load grid."""
    return loadgrid.display(r.load_table)


def capacity(r: RunResults) -> Table:
    """Each loaded config's highest requests/s at p95 <= the target, with the point it came from."""
    header = ["config", "req/s", "texts/s", "p95 (ms)", "point", "users", "batch size", "offered req/s", "note"]
    rows = []
    for c in r.capacity:
        if c.found:
            rows.append([c.config, fmt(c.rps, 1), fmt(c.texts_per_s, 1), fmt(c.latency_p95_ms), c.point, c.users,
                         c.batch_size, fmt(c.rate, 1) if c.rate is not None else "closed loop", "-"])
        else:
            rows.append([c.config, "none", "-", "-", "-", "-", "-", "-", c.reason])
    return header, rows


def load_cost(r: RunResults) -> Table:
    """Cost per request at each config's server-measured capacity (a request: one HTTP request of the
    capacity point's batch size)."""
    p = r.pricing
    header = ["config", "point", "texts a request", "req/s", "texts/s", "requests per replica-hour"]
    if p.available:
        header += ["on-demand $/1K requests", "on-demand $/1M requests", "spot $/1K requests", "spot $/1M requests"]
    rows = []
    for c in (c for c in r.capacity if c.found):
        line = [c.config, c.point, c.batch_size, fmt(c.rps, 1), fmt(c.texts_per_s, 1), fmt(c.rps * 3600, 0)]
        if p.available:
            spot = p.spot_per_hour is not None
            line += [fmt(cost_per_requests(c.rps, p.on_demand_per_hour, 1_000), 6, money=True),
                     fmt(cost_per_requests(c.rps, p.on_demand_per_hour, 1_000_000), 4, money=True),
                     fmt(cost_per_requests(c.rps, p.spot_per_hour, 1_000), 6, money=True) if spot else "no spot price",
                     fmt(cost_per_requests(c.rps, p.spot_per_hour, 1_000_000), 4, money=True) if spot else "no spot price"]
        rows.append(line)
    return header, rows


def _of(frame: pd.DataFrame) -> Table:
    """A frame another module already formats (the sweep's, the comparison's) as (header, rows)."""
    return list(frame.columns), [list(row) for row in frame.itertuples(index=False)]


def ceiling_points(r: RunResults) -> Table:
    """Each swept config's saturation point (the sweep's gain rule, not the raw maximum)."""
    return _of(ceiling_display(ceiling_best(r.ceiling)))


def ceiling_all(r: RunResults) -> Table:
    """Every sweep point, in the order the sweep ran them."""
    return _of(ceiling_display(r.ceiling))


def comparison(r: RunResults) -> Table:
    """One row per case in both this run and the saved one, a column per compared metric."""
    return _of(compare_wide(r.comparison))


def deployment_env(r: RunResults) -> str:
    """The balanced pick's serving settings as NAME=value lines (its notes are r.deployment["notes"])."""
    return "\n".join(f"{k}={v}" for k, v in r.deployment.items() if k != "notes")

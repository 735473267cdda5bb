"""The report's decision blocks for pytest-html: recommendation, plots, pivots, load capacity, cost, tiers,
MFU, gates, and the comparison with a saved run (the load-test table is report.py's).

Rendered from the run's one RunResults. Every table goes through DataFrame.to_html(escape=True) and
every other string through html.escape, since config names, reasons and paths come from files a user
wrote; plots are PNG data URIs, so the self-contained report still needs no network.
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

import pandas as pd

from qbench_plugin.report import gpus, tables
from qbench_plugin.report.bounds import bound_lines
from qbench_plugin.report.compare import NOISE, counts_text, engine_changes, unmatched
from qbench_plugin.loadtest.loadgrid import texts_a_request
from qbench_plugin.report.plots import Plot
from qbench_plugin.report.cost import LOAD_SOURCE, MATRIX_SOURCE
from qbench_plugin.report.design import measurement_design
from qbench_plugin.report.summary import RunResults
from qbench_plugin.report.tables import MISSING, fmt

STYLE = """<style>
.qbench-headline { font-size: 15px; padding: 8px 12px; background: #eef6ee; border-left: 4px solid #3a7d3a; }
.qbench-none { font-size: 15px; padding: 8px 12px; background: #fdf3e7; border-left: 4px solid #c77700; }
figure.qbench-plot { margin: 8px 0 20px; }
figure.qbench-plot img { max-width: 100%; border: 1px solid #ddd; }
pre.qbench-env { background: #f6f6f6; padding: 8px; display: inline-block; }
</style>"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(frame: pd.DataFrame, css: str = "qbench") -> str:
    if frame.empty:
        return "<p>(no rows)</p>"
    return frame.to_html(index=False, escape=True, na_rep=MISSING, classes=css, border=0)


def _frame(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> pd.DataFrame:
    return pd.DataFrame([list(r) for r in rows], columns=list(header))


def headline_html(r: RunResults) -> list[str]:
    """First in the summary: what to serve, in one sentence."""
    if not r.recommendations:
        return [STYLE, f'<p class="qbench-none">No recommendation: {_e(r.no_recommendation)}.</p>']
    return [STYLE, f'<p class="qbench-headline">{_e(r.headline())}</p>']


def recommendation_html(r: RunResults) -> list[str]:
    out = ["<h2>Recommendations (configs that pass their accuracy gates)</h2>"]
    if r.recommendations:
        out.append(_table(_frame(*tables.picks(r)), "qbench qbench-recommendations"))
        out.append("<p>Balance score: mean of min-max-normalized throughput and 1 - min-max-normalized p95 over the "
                   "eligible (config, batch size) rows.</p>")
        out.extend(f"<p class=\"qbench-tie\">Tie: {_e(text)}.</p>" for text in r.tie_notes)
        out.extend(f"<p class=\"qbench-reference\">Reference: {_e(ref.text())}.</p>" for ref in r.references)
        out.extend(f"<p class=\"qbench-left-out\">Not ranked: {_e(text)}.</p>" for text in r.left_out)
    else:
        out.append(f"<p>No recommendation: {_e(r.no_recommendation)}.</p>")
    if r.deployment:
        out.append("<h3>Deployment settings (balanced pick)</h3>"
                   f"<pre class=\"qbench-env\">{_e(tables.deployment_env(r))}</pre>")
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in r.deployment["notes"]) + "</ul>")
    out.append("<h3>Accuracy gates</h3>")
    out.append(_table(_frame(*tables.eligibility(r)), "qbench qbench-gates"))
    return out


def plots_html(plots: Sequence[Plot], r: RunResults) -> list[str]:
    out = ["<h2>Plots</h2>"]
    if not plots:
        out.append(f"<p>No plots: {_e(r.no_recommendation or 'no latency case finished')}.</p>")
    for plot in plots:
        out.append(f'<figure class="qbench-plot" id="qbench-plot-{_e(plot.name)}"><figcaption><b>{_e(plot.title)}</b>'
                   f'</figcaption><img alt="{_e(plot.title)}" src="{plot.data_uri()}"></figure>')
    return out


def _formatted(frame: pd.DataFrame, digits: int) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            frame[column] = [fmt(v, digits) for v in frame[column]]
    return frame


def tables_html(r: RunResults) -> list[str]:
    out = ["<h2>p95 batch latency (ms) by method x batch size</h2>",
           _table(_formatted(r.pivots["p95_ms"], 2), "qbench qbench-pivot-p95"),
           "<h2>Throughput (texts/s) by method x batch size</h2>",
           _table(_formatted(r.pivots["throughput"], 1), "qbench qbench-pivot-throughput"),
           "<h2>Per-method statistics</h2>",
           _table(_formatted(r.method_stats, 2), "qbench qbench-method-stats")]
    return out


def capacity_html(r: RunResults) -> list[str]:
    """Load grid: each config's capacity at the p95 target (the load table itself is report.py's)."""
    if not r.capacity:
        return []
    out = [f"<h2>Load capacity at p95 &lt;= {_e(f'{r.options.p95_target_ms:g}')} ms</h2>",
           "<p>Per config, the load-grid point with the highest req/s whose p95 stays at or under the target, among "
           "points without failed requests (open loop: that kept their schedule); where none does, why. Not "
           "extrapolated.</p>",
           _table(_frame(*tables.capacity(r)), "qbench qbench-capacity")]
    return out


def cost_html(r: RunResults) -> list[str]:
    p = r.pricing
    out = ["<h2>Cost per request</h2>"]
    grid = any(c.found for c in r.capacity)
    if tables.best_rows(r).empty and not grid:
        out.append("<p>No cost: no config that passes its accuracy gates has a measured throughput.</p>")
    else:
        if p.available:
            spot = tables.price(p.spot_per_hour) if p.spot_per_hour is not None else "no spot price given"
            out.append(f"<p>Priced as <b>{_e(p.gpu)}</b>: on-demand {_e(tables.price(p.on_demand_per_hour))}/h, spot "
                       f"{_e(spot)}/h ({_e(p.source)}).</p>")
            if p.note:
                out.append(f"<p><i>{_e(p.note)}.</i></p>")
        else:
            out.append(f"<p>No price: {_e(p.source)}. Requests per replica-hour are measured.</p>")
        if grid:
            out.append(f"<p>Source: the {_e(LOAD_SOURCE)}, each config at its capacity at the p95 target; a request "
                       "is one HTTP request of that point's batch size.</p>")
            out.append(_table(_frame(*tables.load_cost(r)), "qbench qbench-load-cost"))
        if not tables.best_rows(r).empty:
            out.append(f"<p>The {_e(MATRIX_SOURCE)} (no HTTP, no queueing){', for comparison' if grid else ''}: "
                       "a request is one text.</p>")
            out.append(_table(_frame(*tables.cost(r)), "qbench qbench-cost"))
    out.append(f"<details><summary>List prices assumed when no price is given (USD per GPU-hour, and per vCPU-hour "
               f"for a run on a CPU, as of "
               f"{_e(gpus.PRICES_AS_OF)})</summary>")
    out.append(_table(_frame(*tables.gpu_prices()), "qbench qbench-gpus"))
    out.append("</details>")
    return out


def scaling_html(r: RunResults) -> list[str]:
    t = r.traffic
    out = [f"<h2>Traffic tiers (p95 target {_e(f'{t.p95_target_ms:g}')} ms)</h2>",
           f"<p>Source: the {_e(t.source)}.</p>"]
    if t.reason:
        out.append(f"<p>No tier plan: {_e(t.reason)}.</p>")
    elif t.from_load:
        note = f" Note: {t.note}." if t.note else ""
        out.append(f"<p>Serving config: {_e(t.config)} at point {_e(t.point)} ({_e(texts_a_request(t.batch_size))}, p95 "
                   f"{_e(fmt(t.latency_p95_ms))} ms, {_e(fmt(t.capacity_per_replica_per_s, 1))} req/s per replica, "
                   f"measured on its server under load), no headroom added.{_e(note)}</p>")
        out.append(_table(_frame(*tables.tiers(r)), "qbench qbench-tiers"))
    else:
        out.append(f"<p>Serving row: {_e(t.config)} at batch size {t.batch_size} (p95 {_e(fmt(t.latency_p95_ms))} ms, "
                   f"{_e(fmt(t.capacity_per_replica_per_s, 1))} texts/s per replica), no headroom added.</p>")
        out.append(_table(_frame(*tables.tiers(r)), "qbench qbench-tiers"))
    w = r.workload
    out.append("<h2>Headroom (MFU)</h2>")
    out.append(f"<p>Mean tokens per text {_e(fmt(w.get('mean_tokens_per_text'), 1))}; non-embedding parameters "
               f"{_e(fmt(w.get('non_embedding_params')))}; peak: "
               f"{_e(fmt(r.peak.tflops, 1) + ' TFLOP/s (' + r.peak.source + ')' if r.peak.tflops else r.peak.source)}.</p>")
    if not r.table.empty:
        out.append(_table(_frame(*tables.mfu(r)), "qbench qbench-mfu"))
    return out


def ceiling_html(r: RunResults) -> list[str]:
    if r.ceiling.empty:
        return []
    out = ["<h2>Throughput ceiling</h2>",
           "<p>\"tokenization timed: no\": pre-tokenized input, tokenizer outside the timed region; tokenizer rows "
           "time the tokenizer alone. Saturation points (highest texts/s per config):</p>"]
    out.append(_table(_frame(*tables.ceiling_points(r)), "qbench qbench-ceiling-best"))
    out += [f"<p>{_e(line[2:])}</p>" for line in bound_lines(r.ceiling, cpu_run=not r.machine.get("gpu_names"))]
    out.append("<details><summary>All sweep points</summary>")
    out.append(_table(_frame(*tables.ceiling_all(r)), "qbench qbench-ceiling"))
    out.append("</details>")
    return out


def comparison_html(r: RunResults) -> list[str]:
    if r.comparison is None:
        return []
    return [f"<h2>Compared with saved run {_e(r.comparison_source)}</h2>",
            f"<p>{_e(counts_text(r.comparison))}; values are this run's, change is from the saved run; "
            f"&quot;{NOISE}&quot;: the bootstrap 95% interval of this run / saved run includes 1.</p>",
            _table(_frame(*tables.comparison(r)), "qbench qbench-compare")] + (
        [f"<p><b>Engines differ</b>: {_e(engines)}.</p>"] if (engines := engine_changes(r.comparison)) else []) + (
        [f"<p>Cases in one run only: {_e(extra)}.</p>"] if (extra := unmatched(r.comparison)) else [])


def measurement_html(r: RunResults) -> list[str]:
    """How the matrix was timed (rounds, seed, groups, idle engines): the experiment log's section."""
    paragraphs = [p.strip() for p in measurement_design(r).split("\n\n") if p.strip()]
    return ["<h2>How it was measured</h2>"] + [f"<p>{_e(p)}</p>".replace("\n", "<br>") for p in paragraphs]


def results_html(r: RunResults, plots: Sequence[Plot], files: Sequence[str] = ()) -> list[str]:
    """Everything after the matrix; the headline goes first through headline_html."""
    blocks = (recommendation_html(r) + plots_html(plots, r) + tables_html(r) + capacity_html(r) + cost_html(r)
              + scaling_html(r))
    blocks += ceiling_html(r)
    blocks += comparison_html(r)  # load tests: report.py's load_html, from the store
    blocks += measurement_html(r)
    if files:
        blocks.append("<p>Also written next to this report: " + ", ".join(f"<code>{_e(f)}</code>" for f in files) + "</p>")
    return blocks

"""The HTML report's content: the config x batch-size matrix and accuracy per config.

Rendered as plain escaped HTML tables inside pytest-html's self-contained report, so it reads
offline with nothing fetched.
"""
from __future__ import annotations

import html

import pandas as pd

from qbench_plugin.loadtest.loadgrid import display, load_table
from qbench_plugin.record.run import RunStore, describe_not_run

MATRIX_COLUMNS = {
    "config": "config",
    "method": "method",
    "engine": "engine",
    "batch_size": "batch size",
    "latency_mean_ms": "mean (ms)",
    "latency_p50_ms": "p50 (ms)",
    "latency_p95_ms": "p95 (ms)",
    "latency_p99_ms": "p99 (ms)",
    "throughput_samples_per_s": "throughput (samples/s)",
}
CONFIG_COLUMNS = {
    "name": "config",
    "method": "method",
    "engine": "engine",
    "status": "status",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "cold_start_s": "cold start (s)",
    "memory_rss_mib": "RSS ready (MiB)",
    "memory_rss_peak_mib": "RSS peak (MiB)",
    "gpu_memory_peak_mib": "GPU peak (MiB)",
    "weights_memory_mib": "weights in memory (MiB)",
    "model_weights_mib": "weights on disk (MiB)",
    "reason": "reason",
}


def matrix_frame(store: RunStore) -> pd.DataFrame:
    table = store.table()
    if table.empty:
        return pd.DataFrame(columns=list(MATRIX_COLUMNS.values()))
    table = table.sort_values(["config", "batch_size"])
    return table[[c for c in MATRIX_COLUMNS if c in table]].rename(columns=MATRIX_COLUMNS)


def config_frame(store: RunStore) -> pd.DataFrame:
    rows = []
    for rec in store.configs.values():
        row = {"name": rec.name, "method": rec.method, "engine": rec.engine, "status": rec.status,
               "reason": rec.reason or ""}
        row.update(rec.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(CONFIG_COLUMNS))
    return frame.rename(columns=CONFIG_COLUMNS)


def _table(frame: pd.DataFrame, css_class: str) -> str:
    # escape=True: dataset texts and reasons can hold markup; they must show, not run.
    return frame.to_html(index=False, escape=True, na_rep="-", float_format=lambda v: f"{v:,.3f}",
                         classes=css_class, border=0)


STYLE = """<style>
table.qbench { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
table.qbench th, table.qbench td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.qbench th { background: #f0f0f0; }
table.qbench td:first-child { text-align: left; }
</style>"""


def load_frame(store: RunStore) -> pd.DataFrame:
    """One row per load-grid point: the config, the point, and what the clients saw (loadgrid.display)."""
    header, rows = display(load_table([load.summary() for load in store.loads]))
    return pd.DataFrame(rows, columns=header)


def load_html(store: RunStore) -> list[str]:
    """The load-test table (latencies are per request, client side, successful requests of each window)."""
    if not store.loads:
        return []
    return ["<h2>Load tests: Locust against the HTTP server</h2>",
            "<p>One row per (config, request batch size, users): per-request latency seen by the clients "
            "(successful requests) and req/s, both from each point's measured window, after Locust's ramp-up and a "
            "settle period; failures count the whole run, and whole-run req/s includes the ramp-up. Capacity at the "
            "p95 target and the latency-throughput plot are further down.</p>",
            _table(load_frame(store), "qbench qbench-load")]


def summary_html(store: RunStore) -> list[str]:
    """HTML blocks for the report's summary: run id, the matrix, and per-config results."""
    head = f"<p>qbench run <code>{html.escape(store.run_id)}</code>"
    if store.commit:
        head += f" at commit <code>{html.escape(store.commit)}</code>"
    head += "</p>"
    if store.status == "partial":
        head += (f'<p class="qbench-partial" style="color:#b00;font-weight:bold">PARTIAL RUN: '
                 f"{html.escape(store.status_reason or '')}</p>")
        if missing := describe_not_run(store.not_run()):
            head += f'<p class="qbench-not-run">Not run: {html.escape(missing)}</p>'
    return [
        STYLE,
        head,
        "<h2>Latency and throughput: config x batch size</h2>",
        "<p>Per batch (one classify call) with tokenization inside the timed region: texts go in as strings. "
        "Pre-tokenized figures, when the run has them, are under Throughput ceiling.</p>",
        _table(matrix_frame(store), "qbench qbench-matrix"),
        "<h2>Per config: accuracy, cold start, memory</h2>",
        _table(config_frame(store), "qbench qbench-configs"),
    ] + load_html(store)

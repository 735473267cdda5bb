"""The report's plots (the matrix's four, and the load grid's latency-throughput curve), drawn once per run as PNG bytes: written to results/<run id>/ and embedded
in the HTML report as data URIs, so the report reads offline.

matplotlib's object API with the Agg canvas (no pyplot): no global backend state, no display needed,
safe inside a pytest process that other plugins share.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from qbench_plugin.loadtest.loadgrid import texts_a_request
from qbench_plugin.report.summary import RunResults, memory_column

DPI = 100


@dataclass(frozen=True)
class Plot:
    name: str  # file name stem: results/<run id>/<name>.png
    title: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def latency_plot(table: pd.DataFrame) -> Plot:
    """One panel per method: p50 (dashed), p95 (solid) and p99 (dotted) batch latency vs batch size."""
    methods = sorted(table["method"].dropna().unique())
    fig = Figure(figsize=(4.2 * max(len(methods), 1), 3.8), layout="constrained")
    colors = _colors(sorted(table["config"].unique()))
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        for config, rows in table[table["method"] == method].groupby("config"):
            rows = rows.sort_values("batch_size")
            c = colors[config]
            ax.plot(rows["batch_size"], rows["latency_p95_ms"], "-o", color=c, label=f"{config} p95")
            ax.plot(rows["batch_size"], rows["latency_p50_ms"], "--", color=c, alpha=0.7, label=f"{config} p50")
            ax.plot(rows["batch_size"], rows["latency_p99_ms"], ":", color=c, alpha=0.7, label=f"{config} p99")
        ax.set_title(f"method: {method}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("batch latency (ms)")
        ax.set_xticks(sorted(table["batch_size"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency vs batch size (p50 dashed, p95 solid, p99 dotted)")
    return Plot("latency_vs_batch_size", "Latency vs batch size, per method", _png(fig))


def throughput_plot(table: pd.DataFrame) -> Plot:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(sorted(table["config"].unique()))
    for config, rows in table.groupby("config"):
        rows = rows.sort_values("batch_size")
        ax.plot(rows["batch_size"], rows["throughput_samples_per_s"], "-o", color=colors[config],
                label=f"{config} ({rows['method'].iloc[0]})")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (texts/s)")
    ax.set_xticks(sorted(table["batch_size"].unique()))
    ax.set_title("Throughput vs batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Plot("throughput_vs_batch_size", "Throughput vs batch size", _png(fig))


def p95_heatmap(table: pd.DataFrame) -> Plot:
    grid = table.pivot_table(index="config", columns="batch_size", values="latency_p95_ms", aggfunc="first")
    fig = Figure(figsize=(2.6 + 1.1 * grid.shape[1], 1.4 + 0.45 * grid.shape[0]), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values) & (values > 0)]
    # p95 often spans orders of magnitude across configs: a log scale keeps the fast cells apart
    norm = LogNorm(finite.min(), finite.max()) if finite.size and finite.max() > 10 * finite.min() else None
    image = ax.imshow(values, cmap="viridis_r", aspect="auto", norm=norm)
    ax.set_xticks(range(grid.shape[1]), [str(b) for b in grid.columns])
    ax.set_yticks(range(grid.shape[0]), list(grid.index))
    ax.set_xlabel("batch size")
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = image.norm(v) > 0.5  # viridis_r is dark at the high end
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="p95 batch latency (ms)")
    ax.set_title("p95 latency (ms): config x batch size")
    return Plot("p95_heatmap", "p95 heatmap, config x batch size", _png(fig))


def pareto_plot(pareto: pd.DataFrame) -> Plot:
    """Accuracy against p95 and against memory; rows on the 3-way Pareto front are ringed and labelled."""
    mem = str(pareto["memory_metric"].iloc[0]) if not pareto.empty else memory_column(pareto)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    colors = _colors(sorted(pareto["config"].unique()))
    mem_label = {"weights_memory_mib": "weights in memory (MiB)", "memory_rss_peak_mib": "peak host memory of the engine (MiB)",
                 "memory_rss_mib": "host memory of the engine once ready (MiB)"}.get(mem, mem)
    for i, (x, label) in enumerate((("latency_p95_ms", "p95 batch latency (ms)"), (mem, mem_label))):
        ax = fig.add_subplot(1, 2, i + 1)
        for config, rows in pareto.groupby("config"):
            ax.scatter(rows[x], rows["accuracy"], color=colors[config], label=config, s=40, alpha=0.8)
        front = pareto[pareto["pareto"]]
        ax.scatter(front[x], front["accuracy"], s=160, facecolors="none", edgecolors="black", linewidths=1.5,
                   label="Pareto front")
        for _, row in front.iterrows():
            ax.annotate(f"{row['config']} bs{int(row['batch_size'])}", (row[x], row["accuracy"]),
                        textcoords="offset points", xytext=(6, 6), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Accuracy / p95 / memory: Pareto front (higher accuracy, lower p95 and memory)")
    return Plot("pareto_front", "Accuracy / p95 / memory Pareto front", _png(fig))


def load_plot(load: pd.DataFrame, capacity: list, p95_target_ms: float) -> Plot:
    """Load grid: p95 request latency against req/s, one line per (config, request batch size) through
    its points in rising load, each point labelled with its users (or offered rate); the p95 target
    dashed, each config's capacity at it ringed."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(list(dict.fromkeys(load["config"])))
    styles = ["-o", "--s", ":^", "-.D", "-v", "--P"]
    sizes = sorted(int(b) for b in load["batch_size"].dropna().unique())
    for (config, batch), rows in load.groupby(["config", "batch_size"], sort=False):
        rows = rows.sort_values(["rate", "users"] if rows["rate"].notna().any() else ["users"])
        ax.plot(rows["load_rps"], rows["load_latency_p95_ms"], styles[sizes.index(int(batch)) % len(styles)],
                color=colors[config], label=f"{config}, {texts_a_request(int(batch))}")
        for _, row in rows.iterrows():
            label = f"{row['rate']:g}/s" if pd.notna(row.get("rate")) else f"u{int(row['users'])}"
            ax.annotate(label, (row["load_rps"], row["load_latency_p95_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    found = [c for c in capacity if c.found]
    if found:
        ax.scatter([c.rps for c in found], [c.latency_p95_ms for c in found], s=180, facecolors="none",
                   edgecolors="black", linewidths=1.5, label="capacity at the target", zorder=3)
    if p95_target_ms <= 1.5 * float(load["load_latency_p95_ms"].max()):
        ax.axhline(p95_target_ms, color="gray", linestyle="--", linewidth=1, label=f"p95 target {p95_target_ms:g} ms")
    else:  # far above every point: drawing it would flatten the curve
        ax.plot([], [], " ", label=f"p95 target {p95_target_ms:g} ms (above every point)")
    ax.set_xlabel("requests/s (measured window)")
    ax.set_ylabel("p95 request latency (ms)")
    ax.set_title("Latency against throughput under load (p95 vs req/s, per config)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Plot("load_p95_vs_rps", "Load grid: p95 latency against requests/s, per config", _png(fig))


def make_plots(results: RunResults) -> list[Plot]:
    """The matrix's four (none when no latency case finished: the report says so instead), and the load
    grid's curve when a grid point was measured."""
    table = results.table
    plots = []
    if not table.empty:
        plots = [latency_plot(table), throughput_plot(table), p95_heatmap(table)]
        if not results.pareto.empty:
            plots.append(pareto_plot(results.pareto))
    load = results.load_table
    if not load.empty and "load_rps" in load:
        measured = load.dropna(subset=["load_rps", "load_latency_p95_ms"])
        if not measured.empty:
            plots.append(load_plot(measured, results.capacity, results.options.p95_target_ms))
    return plots

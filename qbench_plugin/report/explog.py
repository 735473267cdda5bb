"""EXPERIMENT_LOG.md, written from a run: what ran where, what it measured, and what to do about it.

The log is the write-up a person would otherwise type by hand after a benchmark. It is generated from
the one RunResults object the report also renders, so its numbers are the report's numbers. Every
section is always present; one without data says why, so no placeholder is ever left in it. This
module writes the setup sections and puts the log together; findings.py, decisions.py and design.py
write the rest.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Sequence

from qbench_plugin.report.decisions import cost_analysis, recommendations, scaling
from qbench_plugin.report.design import measurement_design, saved_run_comparison, suite_overhead, throughput_ceiling
from qbench_plugin.report.findings import baseline_comparison, key_findings, load_test, observations
from qbench_plugin.report.summary import RunResults
from qbench_plugin.gates.tails import too_few_for_tail
from qbench_plugin.report.tables import STATUS_WORDS, fmt, md_table

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
    if note := tail_note(r.settings.get("samples")):
        out.append(note)
    return "\n".join(out)


def tail_note(samples: Any) -> str | None:
    """What a p95/p99 of this run's batch count is (tails.py): below the gated minimum it is about the
    largest of n, a slow call rather than a percentile, and the table shows it as measured."""
    if not isinstance(samples, int) or samples <= 0:
        return None
    few = [line for m in ("latency_p95_ms", "latency_p99_ms") if (line := too_few_for_tail(m, samples))]
    if not few:
        return None
    return ("Tails: " + "; ".join(f.split("; not gated")[0] for f in few) + ". Read these as the slowest calls, "
            "not as percentiles; the perf gates leave them out (`--qbench-samples` raises the count).")


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

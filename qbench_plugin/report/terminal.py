"""What a run prints at its end, in pytest's terminal summary: the matrix, each config, load point and
gate, then the report's comparison, dataset line, headline, load capacities and sweep points."""
from __future__ import annotations

from typing import Any

from qbench_plugin.report.compare import to_text
from qbench_plugin.report.outputs import ReportState
from qbench_plugin.redact import scrub_text
from qbench_plugin.report.report import matrix_frame
from qbench_plugin.record.run import RunStore


def write_summary(tr: Any, store: RunStore, report: ReportState | None) -> None:
    """The `qbench` section: the matrix, each config, load point and gate, then the report's lines."""
    if not (store.configs or store.loads):
        return
    tr.section("qbench")
    frame = matrix_frame(store)
    if not frame.empty:
        tr.write_line(frame.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    for rec in store.configs.values():
        acc = rec.metrics.get("accuracy")
        line = f"{rec.name} [{rec.method}, {rec.engine}]: {rec.status}"
        if acc is not None:
            line += f", accuracy {acc:.4f}, macro-F1 {rec.metrics.get('macro_f1'):.4f}"
        if rec.reason:
            line += f" ({rec.reason})"
        tr.write_line(scrub_text(line))
    for load in store.loads:
        m = load.metrics
        line = f"load {load.name}{f' {load.point}' if load.point else ''} ({load.kind} {load.target}): {load.status}"
        if m.get("load_requests") is not None:
            line += (f", {m['load_requests']} requests, {m['load_failures']} failed, {m['load_rps']} req/s, "
                     f"p95 {m['load_latency_p95_ms']} ms")
            if m.get("load_late_requests"):
                line += f", {m['load_late_requests']} sent late"
        if load.reason:
            line += f" ({load.reason.splitlines()[0]})"
        tr.write_line(scrub_text(line))
    for gate in store.gates:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[gate.passed]
        tr.write_line(scrub_text(f"gate {verdict} {gate.message}"))
    _report_summary(tr, report)
    if store.out_dir is not None:
        tr.write_line(f"results: {store.out_dir}")


def _report_summary(tr: Any, report: ReportState | None) -> None:
    if report is None:
        return
    if report.error:
        tr.write_line(f"qbench report failed: {scrub_text(report.error)}")
    results = report.results
    if results is None:
        return
    if results.comparison is not None:
        tr.write_line(scrub_text(f"compared with saved run {results.comparison_source} (values are this run's):"))
        tr.write_line(scrub_text(to_text(results.comparison)))
    if data := results.dataset_text():
        tr.write_line(scrub_text(f"qbench {data}"))
    tr.write_line(scrub_text(results.headline()))
    for capacity in results.capacity:
        tr.write_line(scrub_text(f"qbench load capacity: {capacity.text()}"))
    for line in results.ceiling_lines():
        tr.write_line(scrub_text(line))

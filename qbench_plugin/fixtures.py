"""Session fixtures: settings, the model, the evaluation split, the engine pool and the matrix.

Engines live in one session-scoped pool (pool.py), all up at once, so that the latency matrix can
interleave them (matrix.py); `qbench_engine`, parametrized over the configs, borrows from it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from qbench_plugin.gates import gates
from qbench_plugin import distribute, preflight
from qbench_plugin.quantize import quantize
from qbench_plugin.bench import is_out_of_memory
from qbench_plugin.config import BenchConfig
from qbench_plugin.dataset.dataset import EvalSet, load_texts, model_labels
from qbench_plugin.dataset.embedded import default_cache_dir, resolve_model
from qbench_plugin.engines.engine import Engine, EngineUnavailable, cuda_available
from qbench_plugin.measure.matrix import Matrix
from qbench_plugin.options import Settings
from qbench_plugin.measure.pool import EnginePool, Neighbour
from qbench_plugin.load_fixtures import launch_early_server
from qbench_plugin.measure.rounds import RoundPlan
from qbench_plugin.record.run import RunStore
from qbench_plugin.stats.probe import probe_seconds
from qbench_plugin.stats.uncertainty import run_noise_for


@pytest.fixture(scope="session")
def qbench_settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig._qbench.settings


@pytest.fixture(scope="session")
def qbench_store(pytestconfig: pytest.Config) -> RunStore:
    return pytestconfig._qbench.store


@pytest.fixture(scope="session")
def qbench_model(qbench_settings: Settings) -> str:
    """The classifier to benchmark: a hub id or local path; the embedded one is trained at first use."""
    return resolve_model(qbench_settings.model, qbench_settings.cache_dir)


@pytest.fixture(scope="session")
def qbench_labels(qbench_model: str) -> list[str]:
    return model_labels(qbench_model)


@pytest.fixture(scope="session")
def qbench_eval(pytestconfig: pytest.Config) -> EvalSet:
    """The evaluation split, validated with the run's other inputs before any test ran (preflight.py, from
    the plugin's session start); validated here only when that did not run (a session outside benchmarks/)."""
    state = pytestconfig._qbench
    if state.inputs is None:
        state.inputs = preflight.prepare(state.settings, state.store, configs=state.configs or [])
    return state.inputs.eval_set


@pytest.fixture(scope="session")
def qbench_quant_context(qbench_settings: Settings) -> quantize.QuantContext:
    s = qbench_settings
    source = s.calibration_dataset or s.dataset
    if s.calibration_split == s.split and source == s.dataset:
        raise pytest.UsageError(f"--qbench-calibration-split must differ from the evaluated split ({s.split!r})")
    # preflight.check_calibration has checked that these texts are not the evaluated ones
    return quantize.QuantContext.detect(
        cache_dir=s.cache_dir or default_cache_dir(), quant_python=s.quant_python,
        worker_timeout_s=s.quantize_timeout, make_unrunnable=s.quantize_unrunnable,
        calibration=lambda: load_texts(source, s.calibration_split, s.text_column))


@pytest.fixture(scope="session")
def qbench_gatekeeper(pytestconfig: pytest.Config, qbench_settings: Settings,
                      qbench_store: RunStore) -> gates.GateKeeper:
    s = qbench_settings
    try:
        saved, saved_probe = preflight.saved_baseline(s) or (None, None)
        thresholds = gates.parse_thresholds(s.perf_thresholds)
    except ValueError as exc:
        raise pytest.UsageError(f"qbench: {exc}") from None
    overrides = {"min_accuracy": s.min_accuracy, "max_accuracy_drop": s.max_accuracy_drop,
                 "max_flip_rate": s.max_flip_rate}
    device = _device_name()
    noise = s.run_noise if s.run_noise is not None else run_noise_for(device)
    qbench_store.measurement["run_noise"] = noise
    # every perf interval the run decides shares one error budget (tails.py)
    state = pytestconfig._qbench
    cases = state.run_matrix_cases if state.run_matrix_cases is not None else len(state.matrix_cases)
    comparisons = gates.perf_comparisons(cases, thresholds, s.samples)
    if saved is not None:
        qbench_store.measurement["gate_comparisons"] = comparisons
    defer = None
    if distribute.is_worker(pytestconfig) and not any(c.baseline for c in state.configs or []):
        defer = qbench_store.measurement.setdefault(distribute.GATES_AFTER_MERGE, []).append
    relative_noise = run_noise_for(device, relative=True)
    if saved is not None and s.perf_relative_to:
        qbench_store.measurement.update(perf_relative_to=s.perf_relative_to, relative_run_noise=relative_noise)
    return gates.GateKeeper(overrides, saved, thresholds, qbench_store.add_gate, run_noise=noise,
                            strict=s.gate_strict, comparisons=comparisons, saved_probe=saved_probe,
                            current_probe=lambda: probe_seconds(qbench_store.measurement.get("host_probe")),
                            defer=defer, relative_to=s.perf_relative_to, relative_noise=relative_noise,
                            current_case=lambda config, batch_size: _case_samples(qbench_store, config, batch_size))


def _case_samples(store: RunStore, config: str, batch_size: int) -> dict[str, Any] | None:
    """This run's timed case, as the perf gates read one (None: not timed in this process)."""
    for case in store.cases:
        if (case.config, case.batch_size) == (config, batch_size) and case.samples_ns:
            return {"samples_ns": case.samples_ns, "sample_rounds": case.sample_rounds, "batch_size": batch_size,
                    "group": case.group}
    return None


def _device_name() -> str:
    if not cuda_available():
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0)


@pytest.fixture(scope="session")
def qbench_pool(pytestconfig: pytest.Config, qbench_settings: Settings, qbench_model: str, qbench_labels: list[str],
                qbench_store: RunStore, qbench_quant_context: quantize.QuantContext, qbench_eval: EvalSet):
    """Every selected config's engine, started together at first use and closed at the end of the
    session (or before a load test's server). Depends on qbench_eval so that bad data fails before
    any engine starts."""
    state = pytestconfig._qbench
    engine_pool = EnginePool(state.configs or [], model=qbench_model, labels=qbench_labels,
                             max_model_len=qbench_settings.max_model_len, default_engine=qbench_settings.engine,
                             store=qbench_store, quant=qbench_quant_context, progress=state.progress,
                             co_resident=qbench_settings.interleave,
                             vllm_in_process=qbench_settings.vllm_inprocess, gpu_sharers=state.gpu_sharers,
                             starts=qbench_settings.engine_starts)
    state.pool = engine_pool
    if state.early_config is not None:
        log_dir = qbench_store.out_dir or Path(tempfile.mkdtemp(prefix="qbench-server-"))
        state.early_server = launch_early_server(state.early_config, qbench_settings, qbench_model,
                                                 qbench_quant_context, log_dir)
        if state.early_server is not None:
            early = state.early_server
            engine_pool.neighbours[early.label] = Neighbour(pids=[early.launched.child.proc.pid],
                                                            started=early.done.wait)
            state.progress(f"qbench: starting the {state.early_config.name} server for the load tests beside the engines")
    try:
        yield engine_pool
    finally:
        engine_pool.close_all("the end of the session")
        state.pool = None
        if state.early_server is not None:  # its load test never ran (deselected after a failure, Ctrl-C)
            engine_pool.unpark(state.early_server.label)
            state.early_server.stop()
            state.early_server = None


@pytest.fixture(scope="session")
def qbench_matrix(pytestconfig: pytest.Config, qbench_pool: EnginePool, qbench_settings: Settings,
                  qbench_eval: EvalSet, qbench_store: RunStore) -> Matrix:
    """The latency matrix of the session's selected cases, timed in interleaved rounds at first use."""
    state = pytestconfig._qbench
    s = qbench_settings
    plan = RoundPlan.of(s.samples, s.rounds, qbench_pool.device, s.warmup, state.seed)
    return Matrix(qbench_pool, state.matrix_cases, qbench_eval.texts, plan, qbench_store,
                  is_out_of_memory=is_out_of_memory, progress=state.progress,
                  token_counts=state.inputs.token_counts if state.inputs else None, pin_cores=s.pin_cores,
                  starts=s.engine_starts)


@pytest.fixture(scope="session")
def qbench_config(request: pytest.FixtureRequest) -> BenchConfig:
    return request.param


@pytest.fixture(scope="session")
def qbench_engine(qbench_config: BenchConfig, qbench_pool: EnginePool) -> Engine:
    """The config's engine, borrowed from the pool (which keeps every engine up for the session)."""
    try:
        return qbench_pool.get(qbench_config)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)

"""Session fixtures: settings, the model, the evaluation split, and one engine per config.

The engine fixture is session-scoped and parametrized over the configs, so pytest groups the tests
of each config together, builds its engine once, and closes it (memory released) before the next.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest

from . import gates, preflight, quantize
from .config import BenchConfig
from .embedded import default_cache_dir, resolve_model
from .engine import Engine, EngineSpec, EngineUnavailable, cuda_available, start_engine
from .load import EvalSet, load_texts, model_labels
from .measure import MemoryTracker, Stopwatch, mib
from .options import Settings
from .run import ConfigRecord, RunStore


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
        state.inputs = preflight.prepare(state.settings, state.store)
    return state.inputs.eval_set


@pytest.fixture(scope="session")
def qbench_quant_context(qbench_settings: Settings) -> quantize.QuantContext:
    s = qbench_settings
    if s.calibration_split == s.split:
        raise pytest.UsageError(f"--qbench-calibration-split must differ from the evaluated split ({s.split!r})")
    return quantize.QuantContext.detect(
        cache_dir=s.cache_dir or default_cache_dir(), quant_python=s.quant_python,
        calibration=lambda: load_texts(s.dataset, s.calibration_split, s.text_column))


@pytest.fixture(scope="session")
def qbench_gatekeeper(qbench_settings: Settings, qbench_store: RunStore) -> gates.GateKeeper:
    s = qbench_settings
    try:
        saved = gates.load_saved_cases(s.perf_baseline) if s.perf_baseline else None
        thresholds = gates.parse_thresholds(s.perf_thresholds)
    except ValueError as exc:
        raise pytest.UsageError(f"qbench: {exc}") from None
    overrides = {"min_accuracy": s.min_accuracy, "max_accuracy_drop": s.max_accuracy_drop,
                 "max_flip_rate": s.max_flip_rate}
    return gates.GateKeeper(overrides, saved, thresholds, qbench_store.add_gate)


class EngineSlot:
    """The in-process engine that is alive, if any, and how to close it. pytest closes a config's
    engine only when the next config's starts, so the last one would live on through the load tests:
    its memory peaks would count the server's, and the server would start beside it. A server start
    releases the slot first."""

    def __init__(self) -> None:
        self._held: tuple[str, Callable[[str], None]] | None = None

    def hold(self, config: str, close: Callable[[str], None]) -> None:
        self._held = (config, close)

    def release(self, reason: str, config: str | None = None) -> None:
        """Close the held engine (only `config`'s, when given); `reason` says why, in the record."""
        if self._held is None or config not in (None, self._held[0]):
            return
        _, close = self._held
        self._held = None
        close(reason)


@pytest.fixture(scope="session")
def qbench_engine_slot() -> EngineSlot:
    return EngineSlot()


@pytest.fixture(scope="session")
def qbench_config(request: pytest.FixtureRequest) -> BenchConfig:
    return request.param


def _compression_ratio(source: str, prepared: quantize.Prepared) -> float | None:
    """Source weights on disk over the engine's checkpoint on disk; None when quantized at load."""
    if prepared.model == source:
        return None if prepared.engine_kwargs else 1.0
    before, after = quantize.weights_bytes(source), quantize.weights_bytes(prepared.model)
    return round(before / after, 3) if before and after else None


@pytest.fixture(scope="session")
def qbench_engine(qbench_config: BenchConfig, qbench_settings: Settings, qbench_model: str,
                  qbench_labels: list[str], qbench_store: RunStore, qbench_quant_context: quantize.QuantContext,
                  qbench_eval: EvalSet, qbench_engine_slot: EngineSlot):
    """One engine per config. Depends on qbench_eval so that bad data fails before any engine starts."""
    cfg = qbench_config
    engine_name = cfg.engine or qbench_settings.engine
    device = "cuda" if cuda_available() else "cpu"
    record = qbench_store.configs.setdefault(cfg.name, ConfigRecord(cfg.name, cfg.method, engine_name, cfg.baseline))
    if record.status == "failed":  # pytest retries a failed session fixture per test; fail fast instead
        pytest.fail(f"config {cfg.name}: engine failed to start: {record.reason}", pytrace=False)
    tracker = MemoryTracker()
    qbench_store.memory[cfg.name] = tracker.reading
    stopwatch = Stopwatch()
    try:
        if cfg.device == "cuda" and device != "cuda":
            raise EngineUnavailable(f"config {cfg.name} needs a CUDA GPU; torch.cuda.is_available() is False here")
        spec = EngineSpec(config=cfg, model=qbench_model, engine=engine_name,
                          max_model_len=qbench_settings.max_model_len, device=device)
        prepared = quantize.prepare(spec, qbench_quant_context)  # may make a checkpoint (minutes)
        tracker.start()
        with stopwatch.track():
            engine: Engine = start_engine(dataclasses.replace(spec, model=prepared.model), qbench_labels,
                                          prepared.engine_kwargs)
    except EngineUnavailable as exc:
        tracker.stop()
        record.status, record.reason = "skipped", str(exc)
        record.metrics.update(exc.metrics)
        qbench_store.save()
        pytest.skip(str(exc))
    except Exception as exc:
        tracker.stop()
        record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
        qbench_store.save()
        raise
    ready = tracker.reading
    record.status = "ready"
    record.info.update(prepared.info, model=prepared.model, device=device,
                       engine_kwargs={k: v for k, v in getattr(engine, "engine_kwargs", {}).items()})
    record.metrics.update(
        cold_start_s=round(stopwatch.seconds, 3),
        memory_rss_mib=mib(ready.rss_end_bytes),
        gpu_memory_used_mib=mib(ready.gpu_end_bytes),
        model_weights_mib=mib(quantize.weights_bytes(prepared.model)),
        weights_memory_mib=mib(engine.weights_memory_bytes()),
        quantization_time_s=prepared.info.get("quantization_time_s"),
        compression_ratio=_compression_ratio(qbench_model, prepared),
    )
    qbench_store.save()

    def close(reason: str) -> None:
        engine.close()
        reading = tracker.stop()
        if qbench_store.memory.pop(cfg.name, None) is not None:  # not frozen by a sweep
            record.metrics.update(memory_rss_peak_mib=mib(reading.rss_peak_bytes),
                                  gpu_memory_peak_mib=mib(reading.gpu_peak_bytes))
            if reason:
                record.info["memory_peaks"] = reason
        qbench_store.save()

    qbench_engine_slot.hold(cfg.name, close)
    try:
        yield engine
    finally:
        qbench_engine_slot.release("", config=cfg.name)

"""Session fixtures: settings, the model, the evaluation split, and one engine per config.

The engine fixture is session-scoped and parametrized over the configs, so pytest groups the tests
of each config together, builds its engine once, and closes it (memory released) before the next.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from . import quantize
from .config import BenchConfig
from .embedded import EMBEDDED, ensure_model
from .engine import Engine, EngineSpec, EngineUnavailable, cuda_available, start_engine
from .load import EvalSet, load_eval_set, model_labels
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
    if qbench_settings.model == EMBEDDED:
        return str(ensure_model(qbench_settings.cache_dir))
    return qbench_settings.model


@pytest.fixture(scope="session")
def qbench_labels(qbench_model: str) -> list[str]:
    return model_labels(qbench_model)


@pytest.fixture(scope="session")
def qbench_eval(qbench_settings: Settings, qbench_labels: list[str]) -> EvalSet:
    s = qbench_settings
    return load_eval_set(s.dataset, s.split, s.text_column, s.label_column, qbench_labels)


@pytest.fixture(scope="session")
def qbench_config(request: pytest.FixtureRequest) -> BenchConfig:
    return request.param


def weights_bytes(model: str) -> int | None:
    """Size of a checkpoint's weight files, for local folders and hub snapshots already downloaded."""
    path = Path(model)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, local_files_only=True))
        except Exception:
            return None
    files = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    return sum(f.stat().st_size for f in files) if files else None


@pytest.fixture(scope="session")
def qbench_engine(qbench_config: BenchConfig, qbench_settings: Settings, qbench_model: str,
                  qbench_labels: list[str], qbench_store: RunStore):
    cfg = qbench_config
    engine_name = cfg.engine or qbench_settings.engine
    device = "cuda" if cuda_available() else "cpu"
    record = qbench_store.configs.setdefault(cfg.name, ConfigRecord(cfg.name, cfg.method, engine_name))
    if record.status == "failed":  # pytest retries a failed session fixture per test; fail fast instead
        pytest.fail(f"config {cfg.name}: engine failed to start: {record.reason}", pytrace=False)
    try:
        if cfg.device == "cuda" and device != "cuda":
            raise EngineUnavailable(f"config {cfg.name} needs a CUDA GPU; torch.cuda.is_available() is False here")
        spec = EngineSpec(config=cfg, model=qbench_model, engine=engine_name,
                          max_model_len=qbench_settings.max_model_len, device=device)
        prepared = quantize.prepare(spec)
    except EngineUnavailable as exc:
        record.status, record.reason = "skipped", str(exc)
        qbench_store.save()
        pytest.skip(str(exc))
    tracker = MemoryTracker().start()
    stopwatch = Stopwatch()
    try:
        with stopwatch.track():
            engine: Engine = start_engine(dataclasses.replace(spec, model=prepared.model), qbench_labels,
                                          prepared.engine_kwargs)
    except EngineUnavailable as exc:
        tracker.stop()
        record.status, record.reason = "skipped", str(exc)
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
        model_weights_mib=mib(weights_bytes(prepared.model)),
    )
    qbench_store.save()
    try:
        yield engine
    finally:
        engine.close()
        reading = tracker.stop()
        record.metrics.update(memory_rss_peak_mib=mib(reading.rss_peak_bytes),
                              gpu_memory_peak_mib=mib(reading.gpu_peak_bytes))
        qbench_store.save()

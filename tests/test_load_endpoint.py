"""What counts as a valid endpoint answer (qbench_plugin.loadtest.endpoint), and the pure parts of load tests:
request shapes, metrics from per-request records and their measured window, the Locust command lines,
the config selection, the grid's points, the load table and the capacity at a p95 target."""
import json

import pytest

from qbench_plugin.config import BenchConfig
from qbench_plugin.loadtest.endpoint import InvalidResponse, auth_headers, build_request, parse_response
from qbench_plugin.load_fixtures import select_load_configs
from qbench_plugin.loadtest.loadgrid import (LATE_TOLERANCE_MS, MAX_LATE_SHARE, LoadPoint, capacities, display,
                                             grid_points, load_table)
from qbench_plugin.loadtest.loadstats import measured_window, summarize
from qbench_plugin.loadtest.loadtest import Endpoint, LoadSpec, locust_commands
from qbench_plugin.redact import mask_env_secret
from qbench_plugin.record.metrics import LOAD_METRICS
from qbench_plugin.loadtest.serve import ServerSpec, Unservable, engine_cli_args, server_command

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
    # the server reads a long text's first max_model_len tokens, as the in-process matrix does
    assert build_request("vllm", ["a"], "m", truncate=256).body == {"model": "m", "input": ["a"],
                                                                    "truncate_prompt_tokens": 256}
    assert build_request("runpod", ["a"], truncate=256).body == {"input": {"prompts": ["a"]}}
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


MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def test_summarize_takes_rates_and_percentiles_from_the_window_and_counts_from_the_whole_run():
    # 100 successes every 100 ms, 10-109 ms each; a refused connection and a 503 in the window
    records = [[T0 + i * 100 * MS, (10 + i) * MS, 200, "ok"] for i in range(100)]
    records += [[T0 + 5000 * MS, 1 * MS, 0, "connection_error"], [T0 + 6000 * MS, 50 * MS, 503, "server_error"]]
    # the window: answers from 2 s to 8 s (requests 20..79 end inside it: 2,030 ms .. 7,989 ms)
    m = summarize(records, batch_size=8, window=(T0 + 2000 * MS, T0 + 8000 * MS), ramp_s=1.5)
    assert set(m) == set(LOAD_METRICS)
    assert m["load_requests"] == 102 and m["load_failures"] == 2  # the whole run
    assert m["load_server_errors"] == 1 and m["load_connection_errors"] == 1
    assert m["load_window_requests"] == 60 + 2 and m["load_duration_s"] == pytest.approx(6.0)
    assert m["load_rps"] == pytest.approx(62 / 6.0, rel=1e-3)
    assert m["load_texts_per_s"] == pytest.approx(60 * 8 / 6.0, rel=1e-3)  # successful texts only
    ok_ms = [10 + i for i in range(20, 80)]  # latencies of the window's successes
    assert m["load_latency_p50_ms"] == pytest.approx(sorted(ok_ms)[29] + 0.5)
    assert m["load_latency_mean_ms"] == pytest.approx(sum(ok_ms) / 60)
    run_s = (99 * 100 + 109) / 1000
    assert m["load_run_rps"] == pytest.approx(102 / run_s, rel=1e-3)  # whole run, first sent to last answer
    assert m["load_ramp_s"] == 1.5 and m["load_late_requests"] == 0


def test_summarize_counts_requests_sent_late_against_their_slot():
    tolerance_ns = int(LATE_TOLERANCE_MS * MS)
    records = [[T0 + i * 10 * MS, 5 * MS, 200, "ok", late] for i, late in
               enumerate([0, tolerance_ns, tolerance_ns + 1, 80 * MS, None])]
    m = summarize(records, 1, window=(T0, T0 + 100 * MS))
    assert m["load_window_requests"] == 5 and m["load_late_requests"] == 2


def test_summarize_without_requests_successes_or_window():
    assert summarize([], 8)["load_requests"] == 0
    m = summarize([[0, 5, 0, "connection_error"]], 8, window=(0, 10))
    assert m["load_failures"] == 1 and m["load_latency_p95_ms"] is None and m["load_window_requests"] == 1
    m = summarize([[T0, 5 * MS, 200, "ok"]], 8)  # Locust never started all its users: no window
    assert m["load_requests"] == 1 and m["load_rps"] is None and m["load_run_rps"] is not None


def test_measured_window_opens_after_spawning_complete_and_the_settle_period():
    recorded = {"test_start_unix_ns": T0, "spawning_complete_unix_ns": T0 + 4500 * MS,
                "stopping_unix_ns": T0 + 26_500 * MS, "requests": [[T0, 10 * MS, 200, "ok"]]}
    window, ramp_s = measured_window(recorded, settle_s=2.0)
    assert window == (T0 + 6500 * MS, T0 + 26_500 * MS) and ramp_s == pytest.approx(4.5)
    assert measured_window({**recorded, "spawning_complete_unix_ns": None}, 2.0)[0] is None
    no_stop = measured_window({**recorded, "stopping_unix_ns": None, "requests": [[T0 + 9000 * MS, 5 * MS, 200, "ok"]]}, 0)
    assert no_stop[0] == (T0 + 4500 * MS, T0 + 9005 * MS)  # the last answer closes it


def test_locust_commands_carry_the_key_name_never_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_UNIT_KEY", KEY)
    ep = Endpoint("endpoint", "https://api.example/v2/abc", "runpod", key_env="QBENCH_UNIT_KEY")
    spec = LoadSpec(users=3, spawn_rate=1.5, duration_s=7, batch_size=4, settle_s=2, rate=12.0, truncate=256, workers=2)
    cmds = locust_commands(ep, spec, texts_file=tmp_path / "t", labels_file=tmp_path / "l", csv_prefix=tmp_path / "c",
                           requests_out=tmp_path / "r", master_port=5601)
    assert len(cmds) == 3 and "--master" in cmds[0] and all("--worker" in c for c in cmds[1:])
    main = cmds[0]
    assert main[main.index("-u") + 1] == "3"
    # the locustfile ends the window itself; --run-time is a backstop past ramp-up (2 s), settle and window
    assert main[main.index("--qbench-window") + 1] == "7" and main[main.index("--qbench-settle") + 1] == "2"
    assert main[main.index("-t") + 1] == f"{2 + 2 + 7 + 30}s" and "--reset-stats" in main
    assert float(main[main.index("--qbench-user-rate") + 1]) == pytest.approx(4.0)  # 12 req/s over 3 users
    assert "--qbench-truncate" not in main  # RunPod: the worker truncates as it is written to
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


def test_vllm_commands_truncate_and_closed_loop_has_no_pacing(tmp_path):
    ep = Endpoint("cpu_default", "http://127.0.0.1:1", "vllm", model="m")
    (cmd,) = locust_commands(ep, LoadSpec(users=2, spawn_rate=10, duration_s=5, batch_size=1, truncate=256),
                             texts_file=tmp_path / "t", labels_file=tmp_path / "l", csv_prefix=tmp_path / "c",
                             requests_out=tmp_path / "r")
    assert cmd[cmd.index("--qbench-truncate") + 1] == "256" and "--qbench-user-rate" not in cmd


def test_grid_points_run_by_batch_size_then_load():
    points = grid_points((8, 2), (8, 1))
    assert [p.id for p in points] == ["u2-b1", "u8-b1", "u2-b8", "u8-b8"]
    assert not any(p.open_loop for p in points)
    open_loop = grid_points((10,), (1,), (100.0, 50.0, 12.5))
    assert [p.id for p in open_loop] == ["r12.5-u10-b1", "r50-u10-b1", "r100-u10-b1"]
    assert open_loop[1].user_rate == pytest.approx(5.0)


def _load(config, users, batch, rps, p95, failures=0, status=None, rate=None, late=0, window=1000):
    point = LoadPoint(users, batch, rate)
    return {"name": config, "kind": "vllm", "target": "http://x", "point": point.id,
            "status": status or ("passed" if not failures else "failed"),
            "settings": {"users": users, "batch_size": batch, "rate": rate, "duration_s": 20, "settle_s": 2},
            "metrics": {"load_rps": rps, "load_texts_per_s": rps * batch, "load_latency_p95_ms": p95,
                        "load_failures": failures, "load_window_requests": window, "load_late_requests": late,
                        "load_requests": window + 100, "load_latency_p50_ms": p95 / 2, "load_latency_p99_ms": p95 * 1.2,
                        "load_run_rps": rps * 0.9}}


def test_capacity_is_the_highest_rps_under_the_target_among_points_without_failures():
    loads = [_load("a", 2, 1, 150, 20), _load("a", 8, 1, 260, 60), _load("a", 16, 1, 270, 130),
             _load("a", 32, 1, 400, 90, failures=3),  # fastest under the target, but it failed requests
             _load("a", 8, 8, 90, 95)]
    (cap,) = capacities(loads, 100)
    assert cap.found and cap.rps == 260 and cap.point == "u8-b1" and cap.users == 8 and cap.batch_size == 1
    assert cap.points == 5 and "260.0 req/s" in cap.text() and "u8-b1" in cap.text()
    (tight,) = capacities(loads, 50)
    assert tight.rps == 150 and tight.point == "u2-b1"


def test_no_capacity_says_why_and_does_not_extrapolate():
    (cap,) = capacities([_load("a", 2, 1, 150, 120), _load("a", 8, 1, 260, 300)], 100)
    assert not cap.found and cap.rps is None
    assert "lowest p95" in cap.reason and "120.00 ms at u2-b1" in cap.reason and "not extrapolated" in cap.reason
    (failed,) = capacities([_load("b", 2, 1, 150, 20, failures=1)], 100)
    assert not failed.found and "had failed requests" in failed.reason
    # a config whose server could not run has no capacity line at all; an error point has no measurement
    assert capacities([_load("c", 2, 1, 0, 0, status="skipped")], 100) == []
    (errored,) = capacities([{"name": "d", "status": "error", "reason": "LoadError: boom"}], 100)
    assert not errored.found and "no grid point was measured" in errored.reason


def test_open_loop_points_that_missed_their_schedule_are_no_capacity():
    late = int(MAX_LATE_SHARE * 1000) + 1
    loads = [_load("a", 10, 1, 48, 20, rate=50, late=0), _load("a", 10, 1, 180, 40, rate=200, late=late),
             _load("a", 10, 1, 99, 30, rate=100, late=int(MAX_LATE_SHARE * 1000))]
    (cap,) = capacities(loads, 100)
    assert cap.rps == 99 and cap.rate == 100 and "100 req/s offered by 10 users" in cap.text()
    header, rows = display(load_table(loads))
    assert "offered req/s" in header and "sent late" in header
    late_col = header.index("sent late")
    assert [r[late_col] for r in rows] == ["0", "10", "11 (schedule missed)"]  # sorted by offered rate
    # no request late, but the window answered 80 of the 100 req/s offered: the client fell behind
    (short,) = capacities([_load("a", 10, 1, 80, 30, rate=100), _load("a", 10, 1, 45, 30, rate=50)], 100)
    assert short.rps == 45 and short.rate == 50
    (none,) = capacities([_load("a", 10, 1, 80, 30, rate=100)], 100)
    assert not none.found and "fell behind its open-loop schedule" in none.reason
    header, rows = display(load_table([_load("a", 10, 1, 80, 30, rate=100)]))
    assert rows[0][header.index("sent late")] == "0 (schedule missed)"


def test_load_table_has_one_row_per_point_in_run_order_and_shows_skips():
    loads = [_load("b", 8, 8, 90, 95), _load("b", 2, 1, 150, 20), _load("a", 2, 1, 100, 10),
             {"name": "c", "kind": "vllm", "target": "-", "status": "skipped", "reason": "needs a CUDA GPU\nmore"}]
    frame = load_table(loads)
    assert list(frame["config"]) == ["b", "b", "a", "c"]
    assert list(frame["point"][:3]) == ["u2-b1", "u8-b8", "u2-b1"] and frame["point"].isna().iloc[3]
    header, rows = display(frame)
    assert header[:3] == ["config", "batch size", "users"] and "offered req/s" not in header
    assert rows[0][header.index("req/s")] == "150.0" and rows[0][header.index("p95 (ms)")] == "20.00"
    assert rows[0][header.index("requests (window / run)")] == "1,000 / 1,100"
    assert rows[3][header.index("status")] == "skipped: needs a CUDA GPU" and rows[3][header.index("req/s")] == "-"


def test_grid_options_take_lists_and_name_what_they_expect():
    from qbench_plugin.options import _counts, _rates

    assert _counts("user counts")("10, 20,50,20") == (10, 20, 50)
    assert _rates("50,100.5") == (50.0, 100.5) and _rates("") == ()
    with pytest.raises(pytest.UsageError, match="comma-separated user counts"):
        _counts("user counts")("10,many")
    with pytest.raises(pytest.UsageError, match="of at least 1"):
        _counts("batch sizes")("8,0")
    with pytest.raises(pytest.UsageError, match="positive requests/s"):
        _rates("50,-1")

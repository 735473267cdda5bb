"""-n (pytest-xdist) without engines: which worker gets which config and cores, and the controller's
merge of two workers' outputs into one run (record/merge.py)."""
import numpy as np

from qbench_plugin.distribute import compare_with_baseline, samples_s
from qbench_plugin.placement import assign_groups, scope_of, split_cores, split_gpus
from qbench_plugin.record.merge import merge_outputs, worker_output
from qbench_plugin.record.run import CaseRecord, ConfigRecord, RunStore

CONFIGS = ["cpu_default", "cpu_bnb_int8", "cpu_default_x"]


def test_a_configs_tests_share_one_scope():
    assert scope_of("benchmarks/test_latency.py::test_latency[cpu_default-bs1]", CONFIGS) == "cpu_default"
    assert scope_of("benchmarks/test_accuracy.py::test_accuracy[cpu_default]", CONFIGS) == "cpu_default"
    assert scope_of("benchmarks/test_latency.py::test_latency[cpu_default_x-bs4]", CONFIGS) == "cpu_default_x"
    # xdist's loadgroup suffix, should a later xdist write it where pytest reads it
    assert scope_of("benchmarks/test_latency.py::test_latency[cpu_bnb_int8-bs4]@cpu_bnb_int8", CONFIGS) == "cpu_bnb_int8"
    assert scope_of("benchmarks/test_x.py::test_plain", CONFIGS) == "benchmarks/test_x.py::test_plain"
    assert scope_of("benchmarks/test_x.py::test_y[other-1]", CONFIGS) == "benchmarks/test_x.py::test_y[other-1]"


def test_groups_go_round_robin_in_collection_order():
    scopes = ["a", "b", "a", "c", "b"]
    assert assign_groups(scopes, 2) == {"a": 0, "b": 1, "c": 0}
    assert assign_groups(scopes, 4) == {"a": 0, "b": 1, "c": 2}


def test_cores_are_split_disjoint():
    assert split_cores([0, 1], 2) == [[0], [1]]
    assert split_cores([3, 0, 1, 2, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split_cores([0, 1], 3) == [[0], [1], [0]]  # more workers than cores: shared, round robin


def test_each_worker_owns_gpus_or_shares_one_and_says_with_how_many():
    assert split_gpus(["0", "1"], 2) == [(["0"], 1), (["1"], 1)]
    # more GPUs than workers: a worker owns several (a config's tensor_parallel_size can use them)
    assert split_gpus(["0", "1", "2", "3"], 2) == [(["0", "1"], 1), (["2", "3"], 1)]
    assert split_gpus(["4", "6", "7"], 2) == [(["4", "6"], 1), (["7"], 1)]  # CUDA_VISIBLE_DEVICES' own names
    # fewer GPUs than workers: round robin, each sharer told how many use its GPU (their engines split its memory)
    assert split_gpus(["0"], 2) == [(["0"], 2), (["0"], 2)]
    assert split_gpus(["0", "1"], 3) == [(["0"], 2), (["1"], 1), (["0"], 2)]
    assert split_gpus([], 2) == [([], 1), ([], 1)]  # a CPU machine


def test_samples_come_from_qbench_not_pytest_benchmark():
    assert samples_s({"kind": "latency", "latency_samples_ns": [1_000_000, 2_000_000]}) == [0.001, 0.002]
    assert samples_s({"kind": "accuracy", "pass_ns": [5_000_000_000]}) == [5.0]
    assert samples_s({"kind": "load"}) == []


def _entry(config, bs, samples):
    return {"group": config, "name": f"test_latency[{config}-bs{bs}]", "fullname": f"b.py::test_latency[{config}-bs{bs}]",
            "params": {"batch_size": bs}, "param": f"{config}-bs{bs}", "options": {"timer": "perf_counter"},
            "extra_info": {"kind": "latency", "config": config, "batch_size": bs},
            "stats": {"data": samples, "iterations": 1}}


def _worker(worker, cores, config, baseline, probs, accuracy):
    store = RunStore(run_id="run", out_dir=None, settings={})
    rec = ConfigRecord(config, "none", "vllm", baseline, status="ready", metrics={"accuracy": accuracy, "macro_f1": accuracy})
    rec.probabilities, rec.predictions = np.asarray(probs), np.asarray(probs).argmax(1)
    store.configs[config] = rec
    store.cases = [CaseRecord(config, bs, {"latency_p50_ms": 1.0}, samples_ns=[1000 * bs, 2000 * bs]) for bs in (1, 4)]
    store.measurement = {"rounds": 2, "block": 4, "warmup": 1, "seed": 7, "groups": [[config]], "seconds": 3.0 + cores[0]}
    store.planned_configs, store.planned_cases = [config], [(config, 1), (config, 4)]
    store.status = "complete"
    entries = [_entry(config, bs, [1e-6 * bs, 2e-6 * bs]) for bs in (1, 4)]
    return worker_output(store, entries, {"worker": worker, "cores": cores, "device": "cpu"})


def test_two_workers_merge_into_one_run():
    a = _worker("gw0", [0], "cpu_default", True, [[0.9, 0.1], [0.2, 0.8]], 1.0)
    b = _worker("gw1", [1], "cpu_bnb_int8", False, [[0.6, 0.4], [0.7, 0.3]], 0.5)
    store = RunStore(run_id="run", out_dir=None, settings={})
    store.status = "complete"
    entries = merge_outputs(store, [b, a])  # the order workers went down in
    compare_with_baseline(store)
    assert [e["extra_info"]["config"] for e in entries] == ["cpu_default"] * 2 + ["cpu_bnb_int8"] * 2
    assert all(e["stats"]["data"] for e in entries)
    assert list(store.configs) == ["cpu_default", "cpu_bnb_int8"]
    assert sorted((c.config, c.batch_size) for c in store.cases) == [
        ("cpu_bnb_int8", 1), ("cpu_bnb_int8", 4), ("cpu_default", 1), ("cpu_default", 4)]
    assert store.cases[0].samples_ns == [1000, 2000]
    workers = store.measurement["workers"]
    assert {w: (p["cores"], p["configs"]) for w, p in workers.items()} == {
        "gw0": ([0], ["cpu_default"]), "gw1": ([1], ["cpu_bnb_int8"])}
    assert store.measurement["seed"] == 7 and store.measurement["seconds"] == 4.0
    assert store.configs["cpu_bnb_int8"].info["placement"] == {"worker": "gw1", "cores": [1], "device": "cpu"}
    # the baseline ran on the other worker: the controller compares them
    bnb = store.configs["cpu_bnb_int8"]
    assert bnb.info["baseline"] == "cpu_default" and bnb.metrics["flip_rate"] == 0.5
    assert bnb.metrics["accuracy_delta"] == -0.5
    assert store.planned_configs == ["cpu_default", "cpu_bnb_int8"] and store.status == "complete"
    assert store.to_json()["measurement"]["workers"]["gw1"]["device"] == "cpu"


def test_a_partial_worker_makes_the_run_partial():
    a = _worker("gw0", [0], "cpu_default", True, [[0.9, 0.1]], 1.0)
    a["status"], a["status_reason"] = "partial", "interrupted"
    store = RunStore(run_id="run", out_dir=None, settings={})
    merge_outputs(store, [a])
    assert store.status == "partial" and "gw0" in store.status_reason


def test_the_controller_merges_gate_verdicts_and_decides_the_gates_workers_left():
    """gw0 decided min_accuracy of cpu_default; gw1, without the baseline, left cpu_bnb_int8's flip-rate
    gate. After the merge the controller decides it (flip rate 0.5 > 0.1) and the run fails."""
    from types import SimpleNamespace

    from qbench_plugin.config import BenchConfig, Gates
    from qbench_plugin.distribute import GATES_AFTER_MERGE, Controller
    from qbench_plugin.gates.gates import GateResult

    a = _worker("gw0", [0], "cpu_default", True, [[0.9, 0.1], [0.2, 0.8]], 1.0)
    a["gates"] = [GateResult("min_accuracy", "cpu_default", True, 1.0, 0.5, "config cpu_default: ok").as_dict()]
    b = _worker("gw1", [1], "cpu_bnb_int8", False, [[0.6, 0.4], [0.7, 0.3]], 0.5)
    b["measurement"][GATES_AFTER_MERGE] = ["cpu_bnb_int8"]
    settings = SimpleNamespace(min_accuracy=None, max_accuracy_drop=None, max_flip_rate=None, gate_strict=False)
    configs = [BenchConfig(name="cpu_default", baseline=True), BenchConfig(name="cpu_bnb_int8", gates=Gates(max_flip_rate=0.1))]
    store = RunStore(run_id="run", out_dir=None, settings={})
    controller = Controller(SimpleNamespace(store=store, settings=settings, configs=configs))
    controller.outputs = [a, b]
    merge_outputs(store, controller.outputs)
    compare_with_baseline(store)
    controller.decide_gates(store)
    assert [(g.config, g.gate, g.passed) for g in store.gates] == [
        ("cpu_default", "min_accuracy", True), ("cpu_bnb_int8", "max_flip_rate", False)]
    assert controller.failed_after_merge == ["config cpu_bnb_int8: flip rate vs baseline cpu_default 0.5000 exceeds "
                                             "max_flip_rate 0.1000"]
    assert store.to_json()["gates"][1]["passed"] is False

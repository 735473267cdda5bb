"""Issue 21's HF rungs and overlapped tokenization: the layouts (bucketed, packed) give the padded
engine's answers on the real embedded model, the tokenizer pipeline gives direct tokenization's ids
in order, and each rung is a point that records how it ran (CUDA-only rungs skipped with the reason)."""
import numpy as np
import pytest

from qbench_plugin.config import BenchConfig
from qbench_plugin.dataset.dataset import load_eval_set, model_labels
from qbench_plugin.engines import hf_paths
from qbench_plugin.engines.engine import EngineSpec, start_engine, tokens_prompts
from qbench_plugin.measure import ceiling, hf_rungs, pretokenize


# -- layouts, pure logic ----------------------------------------------------------------------------

def test_packed_rows_restart_positions_per_text_and_keep_every_text_once():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12, 13]]
    layout, nxt = hf_paths.pack(ids, rows=2, width=6)
    assert nxt == 4  # [11, 12, 13] does not fit what is left of two rows of 6
    assert layout.texts == [0, 1, 2, 3]
    assert layout.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert layout.doc_ids.tolist() == [[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, 3, -1]]
    assert layout.ends.tolist() == [2, 4, 9, 10]  # flat index of each text's last token
    assert layout.tokens == 10
    batches = hf_paths.pack_all(ids, rows=2, width=6)
    assert [b.texts for b in batches] == [[0, 1, 2, 3], [4]] and {b.shape for b in batches} == {(2, 6)}
    with pytest.raises(ValueError, match="more than the packed row width 6"):
        hf_paths.pack([[1] * 7], rows=1, width=6)


def test_packed_row_count_follows_pack_texts_and_falls_back_to_the_batch_size():
    setup = hf_rungs.RungSetup(config="t", device="cuda", batch_size=512, total=8192, max_length=256, buckets=(32,),
                               pack_width=512, compile_mode="default", cache_dir=None, mean_tokens=25.0)
    assert hf_rungs._rows(setup) == 25  # 512 texts of 25 tokens in rows of 512
    bigger = hf_rungs.RungSetup(**{**setup.__dict__, "pack_texts": 4096})
    assert hf_rungs._rows(bigger) == 200
    assert hf_rungs._point(hf_rungs.parse_rungs("packed")[0], bigger, ceiling.TOKENS).path_settings["rows"] == 200
    assert hf_rungs._point(hf_rungs.parse_rungs("bucketed")[0], bigger, ceiling.TOKENS).batch_size == 512


def test_timed_packed_layouts_are_all_full_however_the_total_divides():
    # 10 texts of 3 tokens; a 2x6 layout holds 4: packing the 10 alone would leave a last layout of 2,
    # timed at a full layout's cost. The stream cycles on instead: every layout holds 4
    ids = [[t] * 3 for t in range(1, 11)]
    layouts = hf_rungs.full_layouts(ids, rows=2, width=6, pad=0, total=10)
    assert [len(layout.texts) for layout in layouts] == [4] * ceiling.MIN_BATCHES
    assert layouts[2].input_ids.tolist()[0][:3] == [9, 9, 9] and layouts[2].input_ids.tolist()[1][:3] == [1, 1, 1]
    many = hf_rungs.full_layouts(ids, rows=2, width=6, pad=0, total=30)
    assert len(many) == 8 and sum(len(layout.texts) for layout in many) >= 30
    mixed_ids = [[1] * 5, [2] * 2, [3] * 4]
    mixed = hf_rungs.full_layouts(mixed_ids, rows=3, width=8, pad=0, total=50)
    longhand = hf_paths.pack_all(mixed_ids * 100, rows=3, width=8)  # the same stream, written out
    assert [layout.input_ids.tolist() for layout in mixed] == [layout.input_ids.tolist() for layout in longhand[: len(mixed)]]


def test_buckets_give_a_fixed_shape_per_bucket():
    assert hf_paths.parse_buckets(" 64,32 ,32") == [32, 64]
    with pytest.raises(ValueError, match="positive whole numbers"):
        hf_paths.parse_buckets("0")
    assert [hf_paths.bucket_for(n, [32, 64], 256) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, 256]
    short, long = hf_paths.bucketed([[1] * 5, [2] * 20], [32, 64], 256, 8), hf_paths.bucketed([[3] * 40], [32, 64], 256, 8)
    assert short.shape == (8, 32) and long.shape == (8, 64)
    assert short.ends.tolist() == [4, 32 + 19] and short.doc_ids[2:].max() == hf_paths.PAD_DOC
    assert short.tokens == 25


def test_rungs_parse_name_and_refuse_what_cannot_run():
    rungs = hf_rungs.parse_rungs("bucketed, packed+compile+graphs,packed+flex")
    assert [r.name for r in rungs] == ["bucketed", "packed+compile+graphs", "packed+flex"]
    assert rungs[1].graphs and rungs[1].compile and rungs[2].attention == "flex"
    assert hf_rungs.parse_rungs("") == []
    for device in ("cuda", "cpu"):
        assert hf_rungs.parse_rungs(hf_rungs.DEFAULT_RUNGS[device])
    with pytest.raises(ValueError, match="'padded\\+compile'"):
        hf_rungs.parse_rungs("padded+compile")
    with pytest.raises(ValueError, match="not flex"):
        hf_rungs.parse_rungs("packed+flex+graphs")


def test_engine_settings_take_the_vllm_rungs():
    assert ceiling.parse_engine_settings("max_num_batched_tokens=262144,async_scheduling=true,"
                                         "max_cudagraph_capture_size=1024;async_scheduling=False") == [
        {"max_num_batched_tokens": 262144, "async_scheduling": True, "max_cudagraph_capture_size": 1024},
        {"async_scheduling": False}]
    with pytest.raises(ValueError, match="'yes' is not true or false"):
        ceiling.parse_engine_settings("async_scheduling=yes")


def test_points_say_how_they_ran_and_the_simpler_path_wins_a_tie():
    padded = ceiling.Point("c", "hf", "engine", "tokens", 256, texts_per_s=1000.0)
    packed = ceiling.Point("c", "hf", "engine", "tokens", 256, texts_per_s=1030.0, path="packed",
                           compile_mode="default", compile_s=3.5, path_settings={"rung": "packed+compile"})
    record = packed.as_dict()
    assert record["deployable"] == "reference" and record["compile_mode"] == "default" and record["compile_s"] == 3.5
    assert ceiling.Point("c", "vllm", "engine", "strings", 8, overlapped=True).as_dict()["deployable"] == "vllm"
    assert ceiling.best([padded, packed]) is padded  # 3% is inside the sweep's 5% gain rule
    faster = ceiling.Point("c", "hf", "engine", "tokens", 256, texts_per_s=1500.0, path="packed")
    assert ceiling.best([padded, packed, faster]) is faster


# -- the tokenizer pipeline -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def texts(embedded_model):
    labels = model_labels(str(embedded_model))
    return load_eval_set("embedded", "test", "text", "label", labels).texts


def _direct(model, batches):
    task = pretokenize.Tokenize(str(model), 256)
    return [task(b) for b in batches]


@pytest.mark.parametrize("mode", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_the_pipeline_gives_direct_tokenization_in_order(embedded_model, texts, mode):
    batches = [texts[k : k + 37] for k in range(0, 600, 37)]
    direct = _direct(embedded_model, batches)
    task = pretokenize.Tokenize(str(embedded_model), 256, tokens_prompts)
    seen = []
    with pretokenize.Pipeline(task, mode, workers=3, depth=2) as pipeline:
        pipeline.warm(batches[0])
        out = pretokenize.feed(pipeline, batches, [lambda prompts: seen.append(prompts) or len(prompts)])
    assert out == [len(b) for b in batches]
    assert [[p["prompt_token_ids"] for p in batch] for batch in seen] == direct
    with pytest.raises(ValueError, match="expected one of thread, process"):
        pretokenize.Pipeline(task, "fork")


def test_replicas_take_every_batch_once_and_errors_reach_the_caller(embedded_model, texts):
    batches = [texts[k : k + 10] for k in range(0, 200, 10)]
    with pretokenize.Pipeline(pretokenize.Tokenize(str(embedded_model), 256), "thread", workers=2) as pipeline:
        out = pretokenize.feed(pipeline, batches, [len, len, len])
        assert out == [10] * 20

        def broken(ids):
            raise RuntimeError("replica died")

        with pytest.raises(RuntimeError, match="replica died"):
            pretokenize.feed(pipeline, batches, [len, broken])


# -- the real model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_engine(embedded_model):
    spec = EngineSpec(config=BenchConfig(name="t", dtype="float32"), model=str(embedded_model), engine="hf",
                      max_model_len=256, device="cpu")
    engine = start_engine(spec, model_labels(str(embedded_model)))
    yield engine
    engine.close()


@pytest.mark.parametrize("attention", ["sdpa", pytest.param("flex", marks=pytest.mark.slow)])
def test_packed_and_bucketed_give_the_padded_answers(hf_engine, texts, attention):
    rows = texts[:160]
    padded = hf_engine.classify(rows)
    ids = hf_engine.tokenizer(rows, truncation=True, max_length=256)["input_ids"]
    runner = hf_paths.FastRunner(hf_engine.model, "cpu", attention=attention)
    try:
        packed = np.zeros_like(padded)
        layouts = hf_paths.pack_all(ids, rows=3, width=128)
        assert len(layouts) > 1 and max(len(l.texts) for l in layouts) > 3  # several texts a row
        for layout in layouts:
            packed[layout.texts] = runner(layout)
        bucketed = np.zeros_like(padded)
        for k in range(0, len(ids), 48):
            layout = hf_paths.bucketed(ids[k : k + 48], [32, 64], 256, 48, indices=range(k, min(k + 48, len(ids))))
            bucketed[layout.texts] = runner(layout)
    finally:
        runner.close()
    assert hf_engine.model.config._attn_implementation == "sdpa"  # given back
    for got in (packed, bucketed):
        assert np.abs(got - padded).max() < 1e-4
        assert (got.argmax(1) == padded.argmax(1)).all()


@pytest.mark.slow  # times every rung, strings-in included (~25 s on 2 cores)
def test_each_rung_is_a_point_and_graphs_are_skipped_without_cuda(hf_engine, texts):
    rows = texts[:200]
    lengths = [len(i) for i in hf_engine.tokenizer(rows, truncation=True, max_length=256)["input_ids"]]
    setup = hf_rungs.RungSetup(config="t", device="cpu", batch_size=32, total=160, max_length=256, buckets=(32, 64),
                               pack_width=256, compile_mode="default", cache_dir=None,
                               mean_tokens=sum(lengths) / len(lengths), tokenize_mode="thread", tokenize_workers=2)
    points = list(hf_rungs.rung_points(hf_engine, rows, lengths, hf_rungs.parse_rungs("bucketed,packed,packed+graphs"),
                                       setup, is_out_of_memory=lambda exc: False))
    names = [(p.path_settings["rung"], p.input) for p in points]
    assert names == [("bucketed", "tokens"), ("bucketed", "strings"), ("packed", "tokens"), ("packed", "strings"),
                     ("packed+graphs", "tokens")]
    for p in points[:4]:
        assert p.error is None and p.texts_per_s > 0 and p.deployable == "reference"
        assert p.compile_s is not None and p.memory_rss_peak_mib > 0 and p.timed_tokens_per_text > 0
        assert p.overlapped == (p.input == "strings")
    assert points[0].path_settings["buckets"] == [32, 64] and points[0].order == "length_sorted"
    assert set(points[0].path_settings["shapes"]) <= {"32x32", "32x64", "32x256"}
    assert points[2].path_settings["shapes"] == [f"{points[2].path_settings['rows']}x256"]
    assert points[1].path_settings["tokenize_mode"] == "thread"
    assert points[4].error == "skipped: CUDA graphs need a CUDA device (this run's device is cpu)"
    assert points[4].cuda_graphs and points[4].texts_per_s == 0


# -- vLLM from strings, overlapped (a stand-in engine records what it is given) ---------------------

class _TokensEngine:
    name = "vllm"
    max_length = 256

    def __init__(self, model):
        self.tokenizer_source, self.calls = str(model), []

    def classify_encoded(self, prompts):
        self.calls.append([p["prompt_token_ids"] for p in prompts])
        return np.zeros((len(prompts), 2), dtype=np.float32)


def test_vllm_strings_point_feeds_tokens_prompts_from_the_pipeline(embedded_model, texts):
    from qbench_plugin.measure.overlapped import overlapped_point

    engines = [_TokensEngine(embedded_model), _TokensEngine(embedded_model)]
    point = overlapped_point(engines, texts[:64], 8, 32, config="c", mode="thread", workers=2,
                             settings={"max_num_seqs": 64})
    assert point.error is None and point.input == "strings" and point.overlapped and point.replicas == 2
    assert point.texts == 64 and point.texts_per_s > 0 and point.deployable == "vllm"
    assert point.path_settings == {"tokenize_mode": "thread", "tokenize_workers": 2}
    timed = [ids for e in engines for call in e.calls[1:] for ids in call]  # calls[0]: each one's warm-up
    assert sorted(timed) == sorted(_direct(embedded_model, [texts[:64]])[0])


# -- what the report says ---------------------------------------------------------------------------

def test_the_log_names_what_bounds_the_ceiling_with_the_evidence():
    from qbench_plugin.report.bounds import bounds
    from qbench_plugin.report.summary import ceiling_display, ceiling_table

    def p(**kw):
        base = dict(config="c", engine="hf", stage="engine", input="tokens", batch_size=256, texts=2560, seconds=1.0)
        return ceiling.Point(**{**base, **kw}).as_dict()

    points = [p(texts_per_s=10000.0), p(texts_per_s=19000.0, path="packed", compile_mode="max-autotune-no-cudagraphs",
                                         compile_s=80.0, path_settings={"rung": "packed+compile", "rows": 16, "width": 512}),
              p(input="strings", texts_per_s=17000.0, path="packed", overlapped=True,
                path_settings={"rung": "packed", "tokenize_mode": "process", "tokenize_workers": 8}),
              p(stage="tokenizer", input="strings", texts_per_s=20000.0)]
    frame = ceiling_table(points, {"mean_tokens_per_text": 25, "non_embedding_params": 360e6}, 989.0)
    found = bounds(frame, cpu_run=False)[0]
    assert found["tokens_bound"] == "GPU compute" and found["mfu"] > 0.3  # 19,000 x 25 x 2 x 360e6 / 989e12
    assert found["strings_bound"] == "tokenizer" and "tokenizer alone 20,000 texts/s" in found["evidence"]
    shown = ceiling_display(frame)
    assert "packed+compile" in shown["settings"][1] and "torch.compile max-autotune-no-cudagraphs" in shown["settings"][1]
    assert shown["compile s"][1] == "80.0" and shown["deployable"][1] == "reference"
    assert shown["tokenization timed"][2] == "yes, overlapped" and "8 process workers" in shown["settings"][2]
    serial = [points[0], points[3], p(input="strings", texts_per_s=6700.0)]
    slow_gpu = ceiling_table(serial, {"mean_tokens_per_text": 25, "non_embedding_params": 360e6}, 989.0)
    found = bounds(slow_gpu, cpu_run=False)[0]
    assert found["tokens_bound"] == "undetermined" and "in series" in found["strings_bound"]
    assert "would give 6,667 texts/s" in found["evidence"]  # 1 / (1/10,000 + 1/20,000)
    assert bounds(slow_gpu, cpu_run=True)[0]["tokens_bound"].startswith("CPU compute")
    # vLLM's engine core in the pytest process removes only the IPC of each call's requests: a gain is the host's
    vllm = [p(engine="vllm", texts_per_s=6500.0), p(engine="vllm", texts_per_s=8000.0, engine_settings={"in_process": True})]
    found = bounds(ceiling_table(vllm, {"mean_tokens_per_text": 25, "non_embedding_params": 360e6}, 989.0), False)[0]
    assert found["tokens_bound"] == "host" and "in-process core, replicas) gained 23%" in found["evidence"]

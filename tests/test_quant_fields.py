"""Config fields that once were silently ignored: `bits` of GPTQ/AWQ/int8, the head's name, and the
figures priced or sized from a file or device name (issue 18, items 11, 12, 15)."""
import json
from pathlib import Path

import pytest
import torch

from qbench_plugin.report import gpus
from qbench_plugin.quantize import quantize
from qbench_plugin.config import BenchConfig, ConfigError, load_config
from qbench_plugin.dataset.dataset import load_texts, model_labels
from qbench_plugin.engines.engine import EngineSpec, start_engine
from qbench_plugin.engines.heads import Head, classification_head

ROOT = Path(__file__).resolve().parents[1]
QUANT_PYTHON = ROOT / ".venv-quant" / "bin" / "python"


def _config(tmp_path, quantization, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"quantization": quantization}))
    return path


# -- item 11: bits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quantization, bits, scheme", [
    ({"method": "gptq", "bits": 8}, 8, "W8A16"),
    ({"method": "gptq", "bits": 4}, 4, "W4A16"),
    ({"method": "gptq"}, None, "W4A16"),
    ({"method": "awq", "bits": 4}, 4, "W4A16_ASYM"),
    ({"method": "int8", "bits": 8}, 8, "W8A8"),
    ({"method": "gptq", "bits": 8, "scheme": "W8A16"}, 8, "W8A16"),
])
def test_bits_choose_the_scheme_that_is_made(tmp_path, quantization, bits, scheme):
    config = load_config(_config(tmp_path, quantization))
    assert config.quantization.bits == bits
    assert quantize.QuantRecipe.from_config(config, 256).scheme == scheme


@pytest.mark.parametrize("quantization, field, detail", [
    ({"method": "gptq", "bits": 3}, "quantization.bits", "'gptq' has 4, 8-bit weights only, not 3"),
    ({"method": "awq", "bits": 8}, "quantization.bits", "'awq' has 4-bit weights only, not 8"),
    ({"method": "int8", "bits": 4}, "quantization.bits", "'int8' has 8-bit weights only, not 4"),
    ({"method": "fp8", "bits": 4}, "quantization.bits", "'fp8' has 8-bit weights only"),
    ({"method": "none", "bits": 4}, "quantization.bits", "'none' has no bits setting"),
    ({"method": "gptq", "bits": 8, "scheme": "W4A16"}, "quantization.scheme", "'W4A16' is not 8-bit weights"),
    ({"method": "int8", "scheme": "W4A16"}, "quantization.scheme", "'W4A16' is not 8-bit weights"),
])
def test_bits_another_scheme_would_run_are_refused(tmp_path, quantization, field, detail):
    path = _config(tmp_path, quantization)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and f"field '{field}'" in message and detail in message
    assert "\n" not in message


@pytest.mark.slow
def test_gptq_8_bits_makes_an_8_bit_checkpoint(embedded_model, tmp_path):
    """The real worker: `bits: 8` gives 8-bit weights in the checkpoint, not W4A16."""
    if not QUANT_PYTHON.exists():
        pytest.fail(f"{QUANT_PYTHON} missing: scripts/setup.sh creates the llm-compressor environment")
    config = BenchConfig(name="g8", quantization={"method": "gptq", "bits": 8, "calibration_samples": 32})
    ctx = quantize.QuantContext.detect(cache_dir=tmp_path, quant_python=QUANT_PYTHON,
                                       calibration=lambda: load_texts("embedded", "train", "text"))
    path, meta = quantize.make_checkpoint(str(embedded_model), quantize.QuantRecipe.from_config(config, 256), ctx)
    qconfig = json.loads((path / "config.json").read_text())["quantization_config"]
    weights = [group["weights"] for group in qconfig["config_groups"].values()]
    assert weights and all(w["num_bits"] == 8 for w in weights)
    assert all(group.get("input_activations") is None for group in qconfig["config_groups"].values())
    assert meta["recipe"]["scheme"] == "W8A16" and quantize.head_is_unquantized(path)


# -- item 12: the head ------------------------------------------------------------------------------

def _tiny(tmp_path, kind, embedded_model=None, weights=False):
    """A small BERT/RoBERTa/DistilBERT classifier folder (config only, or with random weights and the
    embedded model's tokenizer, for the engine)."""
    from transformers import AutoTokenizer, BertConfig, DistilBertConfig, RobertaConfig
    from transformers import AutoModelForSequenceClassification

    vocab = 1000
    tokenizer = None
    if embedded_model is not None:
        tokenizer = AutoTokenizer.from_pretrained(embedded_model)
        vocab = len(tokenizer) + 8
    labels = model_labels(str(embedded_model)) if embedded_model is not None else ["a", "b", "c"]
    common = dict(vocab_size=vocab, num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={v: k for k, v in enumerate(labels)})
    config = {
        "bert": lambda: BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                   max_position_embeddings=512, **common),
        "roberta": lambda: RobertaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=128, **common),
        "distilbert": lambda: DistilBertConfig(dim=64, n_layers=1, n_heads=2, hidden_dim=128, **common),
    }[kind]()
    out = tmp_path / kind
    if weights:
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        config.save_pretrained(out)
    return out


def test_head_is_found_from_the_architecture(embedded_model, tmp_path):
    assert classification_head(str(embedded_model)) == Head(modules=("score",), linears=("score",))
    assert classification_head(str(_tiny(tmp_path, "bert"))) == Head(("classifier",), ("classifier",))
    assert classification_head(str(_tiny(tmp_path, "roberta"))).linears == ("classifier.dense", "classifier.out_proj")
    assert classification_head(str(_tiny(tmp_path, "distilbert"))).modules == ("pre_classifier", "classifier")


def _checkpoint(folder: Path, source: Path, tensors: dict, ignore: list[str]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "ignore": ignore}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: torch.zeros(2, 2) for k in tensors}, str(folder / "model.safetensors"))
    return folder


def test_head_check_follows_the_head_name(tmp_path):
    bert = _tiny(tmp_path, "bert")
    plain = _checkpoint(tmp_path / "plain", bert, ["classifier.weight", "classifier.bias",
                                                   "bert.encoder.layer.0.output.dense.weight_packed"], ["classifier"])
    packed = _checkpoint(tmp_path / "packed", bert, ["classifier.weight_packed", "classifier.weight_scale"], [])
    unlisted = _checkpoint(tmp_path / "unlisted", bert, ["classifier.weight", "classifier.bias"], ["score"])
    assert quantize.head_is_unquantized(plain)
    assert not quantize.head_is_unquantized(packed)
    assert not quantize.head_is_unquantized(unlisted)


def test_worker_is_told_the_head_to_leave_alone(embedded_model, tmp_path):
    recipe = quantize.QuantRecipe(method="gptq", scheme="W4A16", calibration_samples=8, max_length=64)
    for model, ignore in ((_tiny(tmp_path, "bert"), "classifier"),
                          (_tiny(tmp_path, "roberta"), "classifier.dense,classifier.out_proj"),
                          (embedded_model, "score")):
        cmd = quantize.worker_command(Path("py"), str(model), recipe, tmp_path / "out", tmp_path / "c.jsonl", 8)
        assert cmd[cmd.index("--ignore") + 1] == ignore


def test_a_checkpoint_with_a_quantized_head_fails_the_config(embedded_model, tmp_path):
    """The pytest path (quantize.prepare, which the engine pool calls) checks the head, not only the CLI."""
    config = BenchConfig(name="g", quantization={"method": "gptq"})
    recipe = quantize.QuantRecipe.from_config(config, 256)
    target = quantize.checkpoint_dir(tmp_path, str(embedded_model), recipe)
    _checkpoint(target, embedded_model, ["score.weight_packed", "score.weight_scale"], [])
    (target / "qbench_quant.json").write_text(json.dumps({"recipe": {}, "quantization_time_s": 1.0}))
    ctx = quantize.QuantContext(cache_dir=tmp_path, quant_python=None, calibration=lambda: [])
    spec = EngineSpec(config=config, model=str(embedded_model), engine="vllm", max_model_len=256, device="cuda")
    with pytest.raises(RuntimeError, match=r"the classification head \(score\) is quantized"):
        quantize.prepare(spec, ctx)


@pytest.mark.slow
def test_bitsandbytes_skips_a_bert_style_head(embedded_model, tmp_path):
    model = _tiny(tmp_path, "bert", embedded_model, weights=True)
    spec = EngineSpec(config=BenchConfig(name="b", engine="hf", dtype="float32",
                                         quantization={"method": "bitsandbytes", "bits": 8}),
                      model=str(model), engine="hf", max_model_len=128, device="cpu")
    prepared = quantize.prepare(spec, quantize.QuantContext(cache_dir=tmp_path, quant_python=None,
                                                            calibration=lambda: []))
    assert prepared.engine_kwargs["quantization_config"].llm_int8_skip_modules == ["classifier"]
    engine = start_engine(spec, model_labels(str(model)), prepared.engine_kwargs)
    try:
        assert type(engine.model.bert.encoder.layer[0].output.dense).__name__ == "Linear8bitLt"
        assert type(engine.model.classifier) is torch.nn.Linear
        assert engine.classify(["where is my package"]).shape == (1, 23)
    finally:
        engine.close()


# -- item 15: pricing and weights on disk ------------------------------------------------------------

@pytest.mark.parametrize("device, name", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                          ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200"),
                                          ("NVIDIA H200 NVL", None)])
def test_h100_parts_are_told_apart(device, name):
    found = gpus.detect([device])
    assert (found.name if found else None) == name
    if name in ("H100 PCIe", "H100 NVL"):
        assert found.peak_tflops < gpus.by_name("H100").peak_tflops
        assert gpus.by_name(name) is found


def test_weights_count_the_format_that_loads(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 300)
    assert quantize.weights_bytes(str(tmp_path)) == 100
    (tmp_path / "model.safetensors").unlink()
    assert quantize.weights_bytes(str(tmp_path)) == 300

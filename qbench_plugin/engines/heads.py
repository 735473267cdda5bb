"""The classification head of a model, found rather than assumed, and checks that it stays unquantized.

Qwen2 and Llama classifiers call their head `score`; BERT and RoBERTa `classifier` (RoBERTa's holds a
dense layer and `out_proj`); DistilBERT has `pre_classifier` and `classifier`. What they share is
that the head is every top-level module outside the base model (`base_model_prefix`), so that is
the rule here. The head stays in full precision: it is a few thousand parameters, its width (the
label count) is rarely a multiple the 4-bit kernels need, and it decides every prediction.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Head:
    modules: tuple[str, ...]  # top-level module names (bitsandbytes' skip list takes these)
    linears: tuple[str, ...]  # the Linear layers inside them (llm-compressor's ignore list takes these)

    def describe(self) -> str:
        return ", ".join(self.linears or self.modules)


def head_of(net: Any) -> Head:
    """The head of a built model: top-level children outside its base model that hold parameters."""
    import torch

    base = getattr(net, "base_model_prefix", "")
    modules = tuple(name for name, child in net.named_children()
                    if name != base and any(True for _ in child.parameters()))
    linears = tuple(f"{top}.{sub}" if sub else top for top in modules
                    for sub, layer in getattr(net, top).named_modules() if isinstance(layer, torch.nn.Linear))
    if not modules:
        raise ValueError(f"{type(net).__name__}: no classification head found outside the base model {base!r}")
    return Head(modules=modules, linears=linears)


@functools.lru_cache(maxsize=16)
def classification_head(model: str) -> Head:
    """The head of `model` (hub id or folder), from its config alone: the model is built on the meta
    device, so no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model)
    if hasattr(config, "quantization_config"):  # a quantized checkpoint: the architecture is what matters
        del config.quantization_config
    with torch.device("meta"):
        net = AutoModelForSequenceClassification.from_config(config)
    return head_of(net)


def _covered(name: str, listed: list[str]) -> bool:
    return any(name == entry or name.startswith(entry + ".") for entry in listed)


def head_is_unquantized(checkpoint: Path, head: Head) -> bool:
    """True when every Linear of the head is stored as a plain weight (and bias) and the checkpoint's
    quantization config lists it as not quantized (compressed-tensors' `ignore`, bitsandbytes'
    `llm_int8_skip_modules`)."""
    from safetensors import safe_open

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    qconfig = config.get("quantization_config") or {}
    listed = list(qconfig.get("ignore") or qconfig.get("llm_int8_skip_modules") or [])
    names: list[str] = []
    for f in Path(checkpoint).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            names += list(fh.keys())
    for linear in head.linears:
        stored = sorted(n[len(linear) + 1:] for n in names if n.startswith(linear + "."))
        if not _covered(linear, listed) or stored not in (["weight"], ["bias", "weight"]):
            return False
    return bool(head.linears)


def check_loaded_head(net: Any) -> None:
    """Raise when a model loaded with quantization at load (bitsandbytes) has a quantized head layer."""
    import torch

    head = head_of(net)
    for name in head.linears:
        layer = net.get_submodule(name)
        if type(layer) is not torch.nn.Linear:
            raise RuntimeError(f"classification head layer {name} was loaded as {type(layer).__name__}, not an "
                               "unquantized Linear; qbench keeps the head in full precision")

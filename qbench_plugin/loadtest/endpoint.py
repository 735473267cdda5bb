"""What a classification endpoint is sent and what counts as a valid answer, for every kind we call.

Pure functions (no I/O, no numpy, no torch) so that the Locust workers, the endpoint checks and the
unit tests share one definition of "valid", and a worker on another machine imports this module
cheaply. Two kinds of endpoint:

* `vllm`: vLLM's OpenAI server, `POST {url}/classify` with `{"model": NAME, "input": [texts],
  "truncate_prompt_tokens": MAX_MODEL_LEN}` (vLLM keeps a longer text's first tokens, as the in-process
  engine's tokenizer does; without it vLLM answers HTTP 400 to a text over its max_model_len), answering `{"data": [{"index", "label", "probs"}, ...]}`.
* `runpod`: a RunPod-style serverless endpoint, `POST {url}/runsync` with
  `{"input": {"prompts": [texts]}}` and a Bearer key, answering `{"status": "COMPLETED",
  "output": ...}` where output is a list of `{"label", "probs"}` or an object holding one under
  `data` or `results` (RunPod workers wrap their handler's return value in `output`).

Messages built here never contain the API key: the key is not an argument of anything in this
module, and a response body is quoted only in a bounded excerpt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

KINDS = ("vllm", "runpod")
PROB_TOLERANCE = 0.01  # probabilities of one text must sum to 1 within this
EXCERPT_CHARS = 300


class InvalidResponse(ValueError):
    """An answer that does not hold one well-formed classification per text; the message says how."""


@dataclass(frozen=True)
class Classification:
    label: str
    probs: tuple[float, ...]


@dataclass(frozen=True)
class Request:
    path: str  # appended to the endpoint's base URL
    body: dict[str, Any]


def build_request(kind: str, texts: Sequence[str], model: str | None = None,
                  truncate: int | None = None) -> Request:
    """The HTTP request that classifies `texts` on an endpoint of `kind`; `truncate` (vLLM only): the
    most tokens of a text the server reads (its first ones), so long texts are measured as the
    in-process matrix measures them instead of being refused. A RunPod worker truncates as it is written to."""
    if kind == "vllm":
        if not model:
            raise ValueError("a vLLM endpoint needs the served model name")
        body: dict[str, Any] = {"model": model, "input": list(texts)}
        if truncate:
            body["truncate_prompt_tokens"] = int(truncate)
        return Request("/classify", body)
    if kind == "runpod":
        return Request("/runsync", {"input": {"prompts": list(texts)}})
    raise ValueError(f"unknown endpoint kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def auth_headers(kind: str, key: str | None) -> dict[str, str]:
    """Headers carrying the key (RunPod only). The returned dict holds the secret: never log it."""
    if kind == "runpod" and key:
        return {"Authorization": f"Bearer {key}"}
    return {}


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _items(kind: str, body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise InvalidResponse(f"expected a JSON object, got {type(body).__name__}: {_excerpt(body)}")
    if kind == "vllm":
        data = body.get("data")
        if not isinstance(data, list):
            raise InvalidResponse(f"vLLM answer has no 'data' list: {_excerpt(body)}")
        # vLLM numbers its results; order by index so that result i belongs to text i.
        if all(isinstance(item, dict) and isinstance(item.get("index"), int) for item in data):
            indices = sorted(item["index"] for item in data)
            if indices != list(range(len(data))):
                raise InvalidResponse(f"vLLM result indices are {indices}, expected 0..{len(data) - 1}")
            data = sorted(data, key=lambda item: item["index"])
        return data
    if kind == "runpod":
        status = body.get("status")
        if status != "COMPLETED":
            detail = body.get("error") or body.get("output")
            raise InvalidResponse(f"RunPod job status is {status!r}, not 'COMPLETED'"
                                  + (f": {_excerpt(detail)}" if detail else ""))
        output = body.get("output")
        if isinstance(output, dict):
            output = output.get("data", output.get("results"))
        if not isinstance(output, list):
            raise InvalidResponse(f"RunPod output holds no list of results: {_excerpt(body.get('output'))}")
        return output
    raise ValueError(f"unknown endpoint kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def parse_response(kind: str, body: Any, n_texts: int, labels: Sequence[str]) -> list[Classification]:
    """Validate an endpoint's JSON answer to `n_texts` texts and return one Classification per text.

    Valid: exactly one result per text, each with a label from `labels` and one probability per
    label, finite, in [0, 1], summing to 1 within PROB_TOLERANCE."""
    items = _items(kind, body)
    if len(items) != n_texts:
        raise InvalidResponse(f"{len(items)} results for {n_texts} texts")
    known = set(labels)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidResponse(f"result {i} is not an object: {_excerpt(item)}")
        label = item.get("label")
        if label not in known:
            raise InvalidResponse(f"result {i}: label {_excerpt(label)} is not one the model knows "
                                  f"({len(labels)} labels, e.g. {', '.join(list(labels)[:3])})")
        probs = item.get("probs", item.get("probabilities"))
        if not isinstance(probs, list) or len(probs) != len(labels):
            size = len(probs) if isinstance(probs, list) else type(probs).__name__
            raise InvalidResponse(f"result {i}: expected {len(labels)} probabilities, got {size}")
        if not all(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
            raise InvalidResponse(f"result {i}: probabilities must be finite numbers in [0, 1]")
        total = math.fsum(probs)
        if abs(total - 1.0) > PROB_TOLERANCE:
            raise InvalidResponse(f"result {i}: probabilities sum to {total:.4f}, not 1 +/- {PROB_TOLERANCE}")
        out.append(Classification(label=label, probs=tuple(float(p) for p in probs)))
    return out

"""Keep secrets out of everything qbench writes: JSON, HTML, CSV, Markdown, logs.

(Named redact, not secrets: the quantization worker runs as a script from this folder, where a
secrets.py would shadow the standard library module that numpy imports.)

Tokens reach transformers, datasets, vLLM and HTTP clients through the environment only; this
module masks their values (and anything shaped like a Hugging Face token) wherever a string is
about to be written, as a last line of defence against an exception message or a URL carrying one.
"""
from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_TOKEN_SHAPES = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names say they are secret, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, values: list[str] | None = None) -> str:
    for value in secret_values() if values is None else values:
        text = text.replace(value, MASK)
    return _TOKEN_SHAPES.sub(MASK, text)


def scrub(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of a JSON-like object with every secret masked in its strings (keys included)."""
    values = secret_values() if values is None else values
    if isinstance(obj, str):
        return scrub_text(obj, values)
    if isinstance(obj, dict):
        return {scrub(k, values): scrub(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, values) for v in obj]
    return obj


def env_secret(name: str | None) -> str | None:
    """The value of the environment variable `name` (an endpoint's API key), None if unset or empty."""
    return (os.environ.get(name) or None) if name else None


def mask_env_secret(text: str, name: str | None) -> str:
    """`text` with the value of the variable `name` masked, and token-shaped strings too. For the load
    tests' messages, which may quote a request that carried the key."""
    key = env_secret(name)
    return scrub_text(text, [key] if key else [])

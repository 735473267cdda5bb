"""Keep secrets out of everything qbench writes: JSON, HTML, CSV, Markdown, logs.

(Named redact, not secrets: a secrets.py would shadow the standard library module that numpy imports
in any script run from its folder, as the quantization worker once ran from this one; tests/test_layout.py
keeps such names out of the folders scripts run from.)

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


class Environ(dict):
    """A child process's environment whose repr names no values. `pytest -l` prints the locals of every
    frame of a traceback (and report.html keeps them): a plain copy of os.environ there prints HF_TOKEN."""

    def __repr__(self) -> str:
        return f"<environment of {len(self)} variables>"

    __str__ = __repr__


def child_env(*, drop: tuple[str, ...] = (), **changes: str) -> Environ:
    """This process's environment for a child, without the `drop` names and with `changes`. Pass it
    straight into the subprocess call rather than binding it in a frame that can raise."""
    env = Environ(os.environ)
    for name in drop:
        env.pop(name, None)
    env.update(changes)
    return env


def scrub_report(report: Any) -> None:
    """Mask secrets in a pytest test report: its captured sections (stdout, stderr, log) and its
    failure text, which under `-l` lists every frame's locals. The terminal, junitxml and report.html
    all render from this object."""
    values = secret_values()
    report.sections = [(title, scrub_text(content, values)) for title, content in report.sections]
    longrepr = report.longrepr
    if longrepr is None:
        return
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason); pytest needs the tuple shape
        report.longrepr = (*longrepr[:-1], scrub_text(str(longrepr[-1]), values))
        return
    text = str(longrepr)
    cleaned = scrub_text(text, values)
    if cleaned != text:  # only then: a structured longrepr keeps pytest's own rendering otherwise
        report.longrepr = cleaned

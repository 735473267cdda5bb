"""Shared fixtures for qbench's own tests: the embedded model (trained once, cached)."""
import os
from pathlib import Path

import pytest

from qbench_plugin.dataset.embedded import ensure_model

ROOT = Path(__file__).resolve().parents[1]
# vLLM starts its engine in a spawned process; keep its CPU KV cache small on 2-core CI machines.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    return ensure_model()

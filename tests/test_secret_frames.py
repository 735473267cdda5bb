"""Secrets in tracebacks and child environments (issue 18, items 16 and 17).

`pytest -l` prints every frame's locals into the terminal and report.html; a frame holding a copy of
the environment would print HF_TOKEN there. The inner sessions below run real failing calls (the
quantization worker, a child that cannot start, a vLLM server that cannot load its model) under -l.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qbench_plugin.engines import engine
from qbench_plugin.loadtest import serve
from qbench_plugin.redact import child_env

ROOT = Path(__file__).resolve().parents[1]
HF_SECRET = "hf_qbenchFRAMEsecret0123456789abcdefXYZ"

FAILING_CALLS = '''
import os
from pathlib import Path

from qbench_plugin.quantize import quantize
from qbench_plugin.loadtest import serve
from qbench_plugin.redact import child_env


def test_worker_fails(tmp_path):
    ctx = quantize.QuantContext(cache_dir=tmp_path, quant_python=Path("/bin/false"), calibration=lambda: ["a text"])
    recipe = quantize.QuantRecipe(method="gptq", scheme="W4A16", calibration_samples=8, max_length=64)
    quantize._run_worker(os.environ["QBENCH_TEST_MODEL"], recipe, ctx, tmp_path / "target")


def test_child_cannot_start(tmp_path):
    serve.spawn("nothing", [str(tmp_path / "no-such-program")], log_path=None, env=child_env())


def test_server_cannot_load(tmp_path):
    spec = serve.ServerSpec(model=str(tmp_path / "no-model"), dtype="bfloat16", max_model_len=64, device="cpu",
                            enforce_eager=True)
    serve.start_server(spec, tmp_path / "server.log", timeout_s=240)
'''

PRINTS_TOKEN = '''
import os


def test_prints_and_compares_the_token():
    token = os.environ["HF_TOKEN"]
    print("the token is", token)
    assert token == "something else"
'''


def _inner(tmp_path: Path, source: str, *args: str, model: Path | None = None) -> tuple[str, str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, HF_TOKEN=HF_SECRET, PYTHONPATH=str(ROOT), QBENCH_TEST_MODEL=str(model or ""))
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_inner.py", "-l", "-rA", "-p", "no:cacheprovider",
                           "--html", "report.html", "--self-contained-html", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.stdout + proc.stderr, (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_failing_calls_under_showlocals_keep_the_token_out(embedded_model, tmp_path):
    # qbench's plugin off: only the frames themselves keep the environment out of the locals
    output, html = _inner(tmp_path, FAILING_CALLS, "-p", "no:qbench", model=embedded_model)
    assert "3 failed" in output, output[-3000:]
    assert "llm-compressor failed" in output and "cannot start nothing" in output and "vLLM server exited" in output
    assert HF_SECRET not in output and HF_SECRET not in html
    assert "HF_TOKEN" not in output  # no environment was printed at all, not even masked


@pytest.mark.slow
def test_report_sections_and_locals_are_scrubbed(tmp_path):
    output, html = _inner(tmp_path, PRINTS_TOKEN)
    assert "1 failed" in output and "Captured stdout call" in output, output[-3000:]
    assert "the token is ***" in output and "token      = '***'" in output  # -l's locals, masked
    assert HF_SECRET not in output and HF_SECRET not in html


def test_server_environment_lacks_insecure_serialization(monkeypatch, tmp_path):
    """What start_server hands the child: the switch is dropped even while an in-process engine holds it."""
    monkeypatch.setenv(serve.INSECURE_SERIALIZATION, "1")
    spec = serve.ServerSpec(model="m", dtype="bfloat16", max_model_len=64, device="cpu", enforce_eager=True)
    report = tmp_path / "child-env.txt"
    # the real start_server, spawn and environment; only the command is a stand-in that reports its
    # environment and exits (a vLLM server takes a minute to start)
    monkeypatch.setattr(serve, "server_command", lambda spec, port: [
        sys.executable, "-c", f"import os; open({str(report)!r}, 'w').write(repr(sorted(os.environ)))"])
    with pytest.raises(serve.ServerError, match="exited with status 0"):
        serve.start_server(spec, tmp_path / "server.log", timeout_s=30)
    names = eval(report.read_text())  # noqa: S307  (our own child's repr of a list of names)
    assert serve.INSECURE_SERIALIZATION not in names and "QBENCH_SERVER_LOG" in names and "PATH" in names


def test_insecure_serialization_is_scoped_and_nests(monkeypatch):
    monkeypatch.delenv(engine.INSECURE_SERIALIZATION, raising=False)
    with engine.insecure_serialization():
        with engine.insecure_serialization():
            assert os.environ[engine.INSECURE_SERIALIZATION] == "1"
        assert os.environ[engine.INSECURE_SERIALIZATION] == "1"  # the outer user still needs it
    assert engine.INSECURE_SERIALIZATION not in os.environ
    monkeypatch.setenv(engine.INSECURE_SERIALIZATION, "0")  # the user's own value comes back
    with engine.insecure_serialization():
        pass
    assert os.environ[engine.INSECURE_SERIALIZATION] == "0"


def test_child_env_repr_names_no_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    env = child_env(drop=("PATH",), EXTRA="1")
    assert env["HF_TOKEN"] == HF_SECRET and "PATH" not in env and env["EXTRA"] == "1"
    assert HF_SECRET not in repr(env) and HF_SECRET not in str(env) and HF_SECRET not in repr({"env": env})

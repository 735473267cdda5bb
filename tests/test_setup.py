"""scripts/setup.sh: uv gets pip's index settings (this machine's CPU torch comes through them), and
every step says what it does with the time since the start."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_settings_reach_uv(tmp_path):
    conf = tmp_path / "pip.conf"  # a config file and the environment, as pip merges them
    conf.write_text("[global]\nextra-index-url = file:///from-conf\nconstraint = /c.txt\ncert = /conf.pem\n"
                    "[install]\nfind-links = /install-wheels\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SSL_CERT_FILE"))}
    # the machine's own pip.conf files (user's, /etc/xdg's) out of the way; PIP_CONFIG_FILE is read last
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), XDG_CONFIG_DIRS=str(tmp_path),
               PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS="/env-wheels /more-wheels",
               PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu")
    script = f'eval "$({shlex.quote(sys.executable)} {ROOT}/scripts/pip_to_uv.py)"; printf "%s\\n" "${{UV_ARGS[@]}}" "$SSL_CERT_FILE"'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:-1] == [
        "--index-strategy", "unsafe-best-match",
        "--find-links", "/env-wheels", "--find-links", "/more-wheels",  # the environment wins, as in pip
        "--extra-index-url", "https://download.pytorch.org/whl/cpu",
        "--constraint", "/c.txt", "/conf.pem"]


def test_steps_are_timed(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for stamp in (".venv/.qbench-installed-cpu", ".venv-quant/.qbench-installed", ".venv/.qbench-bytecode"):
        (tmp_path / stamp).parent.mkdir(exist_ok=True)
        (tmp_path / stamp).touch()
    out = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=dict(os.environ, QBENCH_EXTRA="cpu"),
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == "qbench setup [   0s] already installed (cpu); nothing to do\n"


def test_bytecode_is_compiled_once_for_an_installed_venv(tmp_path):
    """A .venv installed before setup compiled bytecode (no stamp) gets it on the next run, and only
    then: with PYTHONDONTWRITEBYTECODE set, nothing else ever caches it."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    for tool in ("python", "uv"):  # stand-ins that record how setup called them
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n[ "$1" = -c ] && echo /site\nexit 0\n')
        (bin_dir / tool).chmod(0o755)
    for stamp in (".venv/.qbench-installed-cpu", ".venv-quant/.qbench-installed"):
        (tmp_path / stamp).parent.mkdir(exist_ok=True)
        (tmp_path / stamp).touch()
    env = dict(os.environ, QBENCH_EXTRA="cpu")
    first = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert "compiling bytecode in .venv" in first.stdout
    assert "python -m compileall -qq -j 0 /site" in calls.read_text().splitlines()
    second = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert second.stdout == "qbench setup [   0s] already installed (cpu); nothing to do\n"

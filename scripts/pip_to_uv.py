"""Print pip's effective index settings as bash for uv: `UV_ARGS=(...)` and, where pip has a CA bundle and
the environment names none, `export SSL_CERT_FILE=...`. scripts/setup.sh evals it.

uv reads no pip configuration, and this machine's pip finds the CPU torch wheel through pip.conf and
PIP_* variables (find-links, extra index URLs, a constraints file). `pip config list` shows them all,
the environment's as `:env:.KEY`, which wins over the files, as it does in pip. Run with the venv's
python (it needs pip)."""
import ast
import shlex
import subprocess
import sys

RANK = {":env:": 3, "install": 2, "global": 1}
FLAGS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "index-url": "--index-url",
         "constraint": "--constraint"}


def pip_settings() -> dict[str, str]:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=True).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in RANK and value and RANK[section] >= found.get(key, (0, ""))[0]:
            found[key] = (RANK[section], ast.literal_eval(value))
    return {key: value for key, (_, value) in found.items()}


def main() -> None:
    settings = pip_settings()
    args = ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version across all indexes
    for key, flag in FLAGS.items():
        for value in settings.get(key, "").split():  # pip splits list options on whitespace
            args += [flag, value]
    print("UV_ARGS=(" + " ".join(shlex.quote(a) for a in args) + ")")
    if settings.get("cert"):
        print(f"export SSL_CERT_FILE=\"${{SSL_CERT_FILE:-{settings['cert']}}}\"")


if __name__ == "__main__":
    main()

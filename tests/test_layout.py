"""The package's layout: each subpackage imports only the steps its docstring names, the data flowing
one way (config -> engine -> measurements -> JSON -> report), and every module is at most 400 lines.

The allowed imports live here, in ALLOWED, and nowhere else; each subpackage's __init__ docstring
states its row ("May import: ..."), and a test keeps the two equal. Every import counts: top-level,
inside a function, under TYPE_CHECKING."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "qbench_plugin"
MAX_LINES = 400

# The top level: plumbing (pytest hooks, fixtures, options, the CLI) may import anything, and nothing
# outside it imports it; the leaves import nothing from qbench and anything may import them.
PLUMBING = {"plugin", "fixtures", "load_fixtures", "options", "preflight", "status", "bench", "cli", "distribute",
            "placement"}
LEAVES = {"config", "machine", "redact"}
TOP = "top"  # the unit of __init__.py and of every plumbing module

# What each unit may import besides itself: a leaf or a subpackage by name, or "package.module" for
# that one module of a subpackage (report reads two pure modules of the measuring steps, nothing else).
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "machine": set(),
    "redact": set(),
    "dataset": set(),
    "stats": set(),
    "engines": {"config"},
    "quantize": {"config", "engines", "machine", "redact"},
    "record": {"redact"},
    "measure": {"config", "engines", "quantize", "record", "stats"},
    "loadtest": {"dataset", "record", "redact"},
    "gates": {"config", "machine", "record", "stats"},
    "report": {"config", "gates", "loadtest.loadgrid", "machine", "measure.ceiling", "record", "redact", "stats"},
}

# Run as scripts, so their folder is sys.path[0]: a module there named like a standard-library one
# would shadow it. The quantize worker runs in llm-compressor's environment, without qbench.
SCRIPTS = ("quantize/quantize_worker.py", "loadtest/locustfile.py")  # `python quantize_worker.py`, `locust -f`
STANDALONE = {f"{PACKAGE}.quantize.quantize_worker"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return TOP
    if len(parts) == 1 and not (ROOT / PACKAGE / parts[0]).is_dir():
        return parts[0] if parts[0] in LEAVES else TOP
    return parts[0]


def imported(source: str, module: str, is_package: bool = False, known: set[str] | None = None) -> list[str]:
    """The qbench modules (or packages) that `source`, the text of `module`, imports."""
    known = set(modules()) if known is None else known
    targets = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:  # `from package import module` imports the module
                targets.append(f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name)
    return [t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")]


def allowed(source_unit: str, target: str) -> bool:
    target_unit = unit_of(target)
    if source_unit in (TOP, target_unit):
        return True
    if target_unit == TOP:
        return False
    rest = target.split(".")[1:]
    return target_unit in ALLOWED[source_unit] or ".".join(rest[:2]) in ALLOWED[source_unit]


def violations(module: str, source: str, is_package: bool = False, known: set[str] | None = None) -> list[str]:
    """Imports against the table, and imports of no module (a stale path after a move)."""
    known = set(modules()) if known is None else known
    unit = unit_of(module)
    targets = imported(source, module, is_package, known)
    return ([f"{module} imports {target} ({unit} -> {unit_of(target)})" for target in targets
             if not allowed(unit, target)]
            + [f"{module} imports {target}, which is no module" for target in targets if target not in known])


def docstring_row(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((ROOT / PACKAGE / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    rows = [line for line in doc.splitlines() if line.startswith("May import:")]
    assert len(rows) == 1, f"{package}/__init__.py: its docstring needs one 'May import: ...' line"
    names = rows[0].removeprefix("May import:").strip()
    return set() if names == "nothing" else {n.strip() for n in names.split(",")}


def test_every_import_follows_the_table():
    known = set(modules())
    found = []
    for module, path in modules().items():
        found += violations(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)
    assert not found, "imports against the data flow (tests/test_layout.py ALLOWED):\n" + "\n".join(found)


@pytest.mark.parametrize("module, source, is_package", [
    (f"{PACKAGE}.report.summary", "from qbench_plugin.engines.engine import Engine", False),  # never an engine
    (f"{PACKAGE}.report.summary", "def f():\n    from ..measure import pool", False),  # lazy and relative count too
    (f"{PACKAGE}.report.summary", "from qbench_plugin.measure.pool import EnginePool", False),  # only its ceiling
    (f"{PACKAGE}.report.summary", "import qbench_plugin.loadtest.serve", False),
    (f"{PACKAGE}.engines.engine", "from qbench_plugin.report import summary", False),  # engines never import the report
    (f"{PACKAGE}.engines.engine", "from qbench_plugin import quantize", False),
    (f"{PACKAGE}.measure.matrix", "from qbench_plugin.options import Settings", False),  # no step imports the plumbing
    (f"{PACKAGE}.record.run", "from .. import config", False),
    (f"{PACKAGE}.config", "from qbench_plugin.record.run import RunStore", False),  # a leaf imports nothing
    (f"{PACKAGE}.stats", "from .. import machine", True),  # a package's __init__ is its package's
    (f"{PACKAGE}.report.plots", "from .loadgrid import texts_a_request", False),  # loadgrid is loadtest's, not report's
])
def test_a_violating_import_is_caught(module, source, is_package):
    assert violations(module, source, is_package)


def test_allowed_imports_pass():
    assert not violations(f"{PACKAGE}.report.summary", "from qbench_plugin.measure.ceiling import leader\n"
                                                       "from qbench_plugin.loadtest import loadgrid\n"
                                                       "from . import tables\nfrom ..gates.gates import gate_frame")
    assert not violations(f"{PACKAGE}.plugin", "from qbench_plugin.engines.engine import Engine")
    assert not violations(f"{PACKAGE}.measure.pool", "from qbench_plugin.quantize import quantize")


def test_the_table_is_the_docstrings_and_flows_one_way():
    packages = {p.parent.name for p in (ROOT / PACKAGE).glob("*/__init__.py")}
    assert packages | LEAVES == set(ALLOWED), "every subpackage and top-level leaf has a row in ALLOWED"
    for package in packages:
        assert docstring_row(package) == ALLOWED[package], f"{package}/__init__.py's 'May import:' line"
    for unit, targets in ALLOWED.items():
        assert all(t.split(".")[0] in ALLOWED and t.split(".")[0] != unit for t in targets), unit
    seen, done = set(), set()

    def visit(unit, path):
        assert unit not in seen - done, f"a cycle: {' -> '.join(path)}"
        if unit not in done:
            seen.add(unit)
            for target in ALLOWED[unit]:
                visit(target.split(".")[0], path + [target])
            done.add(unit)

    for unit in ALLOWED:
        visit(unit, [unit])


def test_the_top_level_is_plumbing_or_a_leaf():
    top = {p.stem for p in (ROOT / PACKAGE).glob("*.py")} - {"__init__"}
    assert top == PLUMBING | LEAVES, "a new top-level module is either plumbing or a leaf: say which here"


def test_every_module_is_at_most_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split by concern: {long}"


def test_scripts_run_from_their_folder():
    for script in SCRIPTS:
        folder = ROOT / PACKAGE / Path(script).parent
        shadowing = {p.stem for p in folder.glob("*.py")} & set(sys.stdlib_module_names)
        assert not shadowing, f"{folder.name}/ is sys.path[0] for {script}: {shadowing} would shadow the stdlib"
    for module in STANDALONE:
        assert not imported(modules()[module].read_text(encoding="utf-8"), module), f"{module} runs without qbench"

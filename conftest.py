"""Root conftest: the qbench plugin itself is registered through its pytest11 entry point
(pyproject.toml), so a checkout used without `pip install -e .` still gets it here."""
import importlib.metadata

if not any(ep.name == "qbench" for ep in importlib.metadata.entry_points(group="pytest11")):
    pytest_plugins = ["qbench_plugin.plugin"]

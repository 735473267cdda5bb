"""A run's inputs, validated once before any test runs: configs, model, dataset, labels, lengths.

A bad input is a usage error, not a test failure: raised from a session fixture it would repeat for
every test, and from parametrization once per module. The plugin calls this before collection, so a
bad input stops the run with one line naming the file, field, label, row or path, before any engine
starts; the fixtures then take what was validated here instead of loading it again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from qbench_plugin.config import BenchConfig, load_selected
from qbench_plugin.dataset.dataset import (DataError, EvalSet, load_eval_set, load_texts, model_labels, normalized,
                                           row_places, same_rows_for_every_split)
from qbench_plugin.dataset.embedded import EMBEDDED, Progress, resolve_model
from qbench_plugin.options import Settings
from qbench_plugin.record.run import RunStore
from qbench_plugin.dataset.workload import measure_workload, over_length_rows, token_lengths, truncated

# a Hugging Face repo id: "name" or "owner/name" of letters, digits, '-', '_', '.' (no leading '.' or '-')
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class PreflightError(ValueError):
    """An input that stops the run before it starts; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Inputs:
    model: str  # local path or hub id, the embedded model trained
    labels: list[str]
    eval_set: EvalSet
    over_length: list[int]  # rows longer than max_model_len, truncated by the engines
    token_counts: tuple[int, ...] | None = None  # per row, truncated as the engines truncate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_configs(settings: Settings) -> tuple[list[BenchConfig], list[str]]:
    """The selected configs, baselines first, and a warning per broken config file that was not selected."""
    configs, warnings = load_selected(settings.configs_dir, list(settings.configs))
    # baselines first: every other config's flip rate is measured against their predictions
    return sorted(configs, key=lambda c: not c.baseline), warnings


def _path_or_hub_id(option: str, value: str) -> Path | None:
    """The existing path `value` names, None for a hub id; a PreflightError for what is neither, which
    transformers and datasets would otherwise report as an invalid repo id, pages long."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or not HUB_ID.match(value):
        raise PreflightError(f"{option} {value}: no such file or directory, and not a hub id (owner/name)")
    return None


def check_model_ref(model: str) -> None:
    """An existing model folder, 'embedded[:preset]' or something shaped like a hub id."""
    if model.split(":")[0] == EMBEDDED:
        return
    path = _path_or_hub_id("--qbench-model", model)
    if path is not None and path.is_dir() and not (path / "config.json").is_file():
        raise PreflightError(f"--qbench-model {model}: folder has no config.json (not a transformers model)")


def check_dataset_ref(dataset: str) -> None:
    if dataset != EMBEDDED:
        _path_or_hub_id("--qbench-dataset", dataset)


def _guard(what: str, action: Callable[[], Any]) -> Any:
    """Run a loader; a DataError passes as it is, anything else becomes one line naming `what`."""
    try:
        return action()
    except (DataError, PreflightError):
        raise
    except Exception as exc:  # noqa: BLE001  (transformers/datasets raise many types, with pages of detail)
        raise PreflightError(f"{what}: {_first_line(exc)}") from None


def check_inputs(settings: Settings, progress: Progress | None = None) -> Inputs:
    """Model (trained first if embedded), its labels, the evaluated split, and over-length rows."""
    s = settings
    check_model_ref(s.model)
    check_dataset_ref(s.dataset)
    model = _guard(f"--qbench-model {s.model}", lambda: resolve_model(s.model, s.cache_dir, progress))
    labels = _guard(f"--qbench-model {s.model}: reading its config", lambda: model_labels(model))
    eval_set = _guard(f"--qbench-dataset {s.dataset} split {s.split}",
                      lambda: load_eval_set(s.dataset, s.split, s.text_column, s.label_column, labels))
    lengths = _guard(f"--qbench-model {s.model}: tokenizing the split", lambda: token_lengths(model, eval_set.texts))
    over = over_length_rows(lengths, s.max_model_len)
    if over and s.truncation == "reject":
        place = row_places(s.dataset, s.split, len(eval_set.texts))
        raise PreflightError(f"dataset {s.dataset} split {s.split}: {len(over)} texts are longer than max_model_len "
                             f"{s.max_model_len} tokens ({place(over)}); raise --qbench-max-model-len or use "
                             "--qbench-truncation truncate")
    return Inputs(model=model, labels=labels, eval_set=eval_set, over_length=over,
                  token_counts=tuple(truncated(lengths, s.max_model_len)))


CALIBRATED = ("gptq", "awq", "int8")  # methods whose checkpoint qbench makes from calibration texts


def check_calibration(settings: Settings, configs: Sequence[BenchConfig], eval_texts: Sequence[str]) -> dict[str, Any]:
    """The calibration texts the selected configs will use are not evaluated texts. A single-file or
    single-Dataset --qbench-dataset reads the same rows under every split name, so it needs a separate
    --qbench-calibration-dataset; any calibration text also in the evaluated split stops the run.
    Returns what was checked, for the run's record ({} when no config calibrates)."""
    s = settings
    calibrating = [c for c in configs if c.method in CALIBRATED and not c.quantization.checkpoint]
    if not calibrating:
        return {}
    names = ", ".join(c.name for c in calibrating)
    if not s.calibration_dataset and (why := same_rows_for_every_split(s.dataset)):
        raise PreflightError(
            f"--qbench-dataset {s.dataset} {why}: every split name reads the same rows, so --qbench-calibration-split "
            f"{s.calibration_split} would calibrate {names} on the evaluated rows; give separate calibration texts "
            "with --qbench-calibration-dataset")
    source = s.calibration_dataset or s.dataset
    used = max(c.quantization.calibration_samples for c in calibrating)  # the worker takes the first n
    texts = _guard(f"--qbench-calibration-dataset {source} split {s.calibration_split}",
                   lambda: load_texts(source, s.calibration_split, s.text_column))[:used]
    evaluated = {normalized(t) for t in eval_texts}
    shared = [t for t in texts if normalized(t) in evaluated]
    if shared:
        raise PreflightError(
            f"calibration texts overlap the evaluated ones: {len(shared)} of the {len(texts)} calibration texts from "
            f"{source} split {s.calibration_split} (--qbench-calibration-dataset) are also in {s.dataset} split "
            f"{s.split} (--qbench-dataset), e.g. {shared[0][:60]!r}; {names} would be calibrated on evaluated rows")
    return {"calibration_source": source, "calibration_split": s.calibration_split, "calibration_texts": len(texts),
            "calibration_overlap": 0}


def prepare(settings: Settings, store: RunStore, progress: Progress | None = None,
            configs: Sequence[BenchConfig] = ()) -> Inputs:
    """check_inputs and check_calibration, then the split's facts and the workload (tokens per text,
    parameters) into the run's record, once per run before any engine starts."""
    s = settings
    inputs = check_inputs(settings, progress)
    calibration = check_calibration(settings, configs or (), inputs.eval_set.texts)
    store.dataset.update(inputs.eval_set.facts, source=s.dataset, split=s.split, truncation=s.truncation,
                         max_model_len=s.max_model_len, truncated_rows=len(inputs.over_length), **calibration)
    store.workload.update(measure_workload(inputs.model, inputs.eval_set.texts, s.max_model_len, inputs.token_counts))
    return inputs


def saved_baseline(settings: Settings) -> tuple[dict, list[float] | None] | None:
    """The perf baseline's latency cases and its host-probe seconds (None without a probe), or a
    ValueError when it cannot be read or measured something else than this run will (another model,
    dataset, split, max_model_len or device: baseline.py)."""
    from qbench_plugin.gates import baseline, gates

    if not settings.perf_baseline:
        return None
    path, data = baseline.read_saved(settings.perf_baseline)
    cases = gates.cases_of(path, data)
    here = baseline.identity(settings.public(), baseline.current_gpu_names())
    why = baseline.incompatibility(here, baseline.saved_identity(data), strict=settings.gate_strict)
    if why:
        raise ValueError(f"{path}: not comparable with this run: {why}")
    return cases, gates.probe_of(data)


def check_gate_inputs(settings: Settings, configs: Sequence[BenchConfig] | None = None) -> None:
    """--qbench-perf-thresholds parses, --qbench-perf-baseline reads and is comparable (the gatekeeper
    reads them again), and --qbench-perf-relative-to names a config of this run that the saved run has."""
    from qbench_plugin.gates import gates

    read: dict[str, Any] = {}  # the saved run, read once for both of its checks
    for option, check in (("--qbench-perf-thresholds", lambda: gates.parse_thresholds(settings.perf_thresholds)),
                          ("--qbench-perf-relative-to", lambda: _check_relative_to(settings, configs)),
                          ("--qbench-perf-baseline", lambda: read.update(saved=saved_baseline(settings))),
                          ("--qbench-perf-relative-to", lambda: _check_reference_saved(settings, read.get("saved")))):
        try:
            check()
        except ValueError as exc:
            raise PreflightError(f"{option}: {exc}") from None


def _check_relative_to(settings: Settings, configs: Sequence[BenchConfig] | None) -> None:
    """What the option needs of this run (before the saved run is read)."""
    reference = settings.perf_relative_to
    if not reference:
        return
    names = [c.name for c in configs or []]
    if configs is not None and reference not in names:
        raise ValueError(f"{reference} is not a config of this run (configs: {', '.join(names)})")
    if not settings.perf_baseline:
        raise ValueError(f"{reference}: a relative gate compares with a saved run; give --qbench-perf-baseline too")
    if not settings.interleave:
        raise ValueError(f"{reference}: a relative gate pairs each config with {reference} round by round, which "
                         "needs them timed in the same rounds; drop --qbench-interleave off")


def _check_reference_saved(settings: Settings, found: tuple[dict, list[float] | None] | None) -> None:
    """The saved run (`found` by saved_baseline, comparable) has the reference's cases."""
    reference = settings.perf_relative_to
    if not reference:
        return
    saved = {config for config, _ in (found or ({}, None))[0]}
    if reference not in saved:
        raise ValueError(f"{reference} has no latency cases in the saved run {settings.perf_baseline} "
                         f"(configs there: {', '.join(sorted(saved))})")

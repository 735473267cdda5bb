"""What bounds a config's throughput ceiling, named from the sweep's own points, with the evidence.

Three rates decide it: the best point from pre-tokenized input (tokens in), the best from strings
(tokenization timed, overlapped or not) and the tokenizer alone. Rules, in order:

- tokens in: on a CPU run, "CPU compute" (the host is the device); "GPU compute" when its MFU
  reaches COMPUTE_MFU; "host" when a rung that only removes host work (CUDA graphs, async scheduling,
  replicas) beat the best point without one by more than the sweep's 5%; else "undetermined", with
  the MFU: a low MFU alone does not say whether launches, padding or memory bandwidth hold it.
- strings in: "same as tokens in" when it reaches 90% of the tokens-in rate (tokenization hidden);
  "tokenizer" when it reaches 80% of the tokenizer alone; when its best point tokenized in series
  (no overlap), "in series", with the rate the two in series would give (1 / (1/tokens + 1/tokenizer));
  else "host" (the feeding, neither the engine nor the tokenizer at its own rate).
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

COMPUTE_MFU = 0.30  # dense bf16 GEMMs of this model's size reach about 60-70% of an H200's peak; half that is busy
HIDDEN, NEAR_TOKENIZER, GAIN = 0.9, 0.8, 0.05


def path_words(row: Mapping[str, Any]) -> list[str]:
    """How a point ran, in words, for the settings column (empty for the engine's own padded path)."""
    out = []
    extra = row.get("path_settings")
    extra = extra if isinstance(extra, Mapping) else {}
    if isinstance(row.get("path"), str) and row["path"] != "padded":
        out.append(extra.get("rung") or row["path"])
        if "buckets" in extra:
            out.append("buckets " + "/".join(str(b) for b in extra["buckets"]))
        if "rows" in extra:
            out.append(f"rows {extra['rows']}x{extra['width']}")
        if row.get("attention") == "flex":
            out.append("flex attention")
    if isinstance(row.get("compile_mode"), str):
        out.append(f"torch.compile {row['compile_mode']}")
    if row.get("cuda_graphs") == True:  # noqa: E712  (NaN on points recorded before the field)
        out.append("CUDA graphs")
    if row.get("overlapped") == True:  # noqa: E712
        out.append(f"tokenized by {extra.get('tokenize_workers', '?')} {extra.get('tokenize_mode', '')} workers, overlapped")
    return out


def _rate(frame: pd.DataFrame) -> tuple[float, Any]:
    if frame.empty:
        return 0.0, None
    row = frame.loc[frame["texts_per_s"].idxmax()]
    return float(row["texts_per_s"]), row


def _host_rungs(frame: pd.DataFrame) -> pd.Series:
    settings = frame.get("engine_settings", pd.Series([None] * len(frame), index=frame.index))
    # async scheduling and the in-process engine core (no IPC between front end and core) remove host work only
    host_settings = settings.map(lambda s: isinstance(s, Mapping)
                                 and bool(s.get("async_scheduling") or s.get("in_process")))
    graphs = frame.get("cuda_graphs", pd.Series(False, index=frame.index)) == True  # noqa: E712
    return graphs | host_settings | (frame["replicas"].fillna(1) > 1)


def bounds(frame: pd.DataFrame, cpu_run: bool) -> list[dict[str, Any]]:
    """Per swept config: the three rates, the best tokens-in point's MFU, and what bounds each side."""
    out: list[dict[str, Any]] = []
    if frame.empty:
        return out
    for config, group in frame.groupby("config", sort=False):
        ok = group[group["error"].isna() & (group["texts_per_s"] > 0)]
        engine = ok[ok["stage"] == "engine"]
        tokens, top = _rate(engine[engine["input"] == "tokens"])
        strings, strings_top = _rate(engine[engine["input"] == "strings"])
        tokenizer, _ = _rate(ok[ok["stage"] == "tokenizer"])
        mfu = None if top is None or pd.isna(top.get("mfu")) else float(top["mfu"])
        host = _host_rungs(engine)
        with_host, _ = _rate(engine[host & (engine["input"] == "tokens")])
        without_host, _ = _rate(engine[~host & (engine["input"] == "tokens")])
        evidence = [f"tokens in {tokens:,.0f} texts/s" + (f" at MFU {mfu:.1%}" if mfu is not None else ""),
                    f"strings in {strings:,.0f} texts/s", f"tokenizer alone {tokenizer:,.0f} texts/s"]
        if cpu_run:
            tokens_bound = "CPU compute (the engine runs on the host)"
        elif mfu is not None and mfu >= COMPUTE_MFU:
            tokens_bound = "GPU compute"
        elif without_host and with_host > without_host * (1 + GAIN):
            tokens_bound = "host"
            evidence.append(f"removing host work (graphs, async scheduling, in-process core, replicas) gained "
                            f"{with_host / without_host - 1:.0%}")
        else:
            tokens_bound = "undetermined"
            evidence.append("MFU below 30% and no host-side rung gained 5%: padding, memory bandwidth or kernel "
                            "efficiency, not measured apart")
        if not strings:
            strings_bound = "not measured"
        elif tokens and strings >= HIDDEN * tokens:
            strings_bound = "same as tokens in (tokenization hidden)"
        elif tokenizer and strings >= NEAR_TOKENIZER * tokenizer:
            strings_bound = "tokenizer"
        elif strings_top.get("overlapped") != True and tokens and tokenizer:  # noqa: E712
            serial = 1 / (1 / tokens + 1 / tokenizer)
            strings_bound = "tokenizer and engine in series (not overlapped)"
            evidence.append(f"the two in series would give {serial:,.0f} texts/s")
        else:
            strings_bound = "host (feeding)"
        out.append({"config": config, "tokens_in": tokens, "strings_in": strings, "tokenizer": tokenizer, "mfu": mfu,
                    "deployable": None if top is None else top.get("deployable"),
                    "tokens_bound": tokens_bound, "strings_bound": strings_bound, "evidence": "; ".join(evidence)})
    return out


def bound_lines(frame: pd.DataFrame, cpu_run: bool) -> list[str]:
    """One Markdown bullet per config for the experiment log and the report."""
    return [f"- What bounds {b['config']}: from tokens, {b['tokens_bound']}; from strings, {b['strings_bound']} "
            f"({b['evidence']})." for b in bounds(frame, cpu_run)]

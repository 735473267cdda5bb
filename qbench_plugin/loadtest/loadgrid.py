"""The load grid: its points, the load table, and each config's capacity at a p95 target.

A load test runs one Locust run per grid point against one server per config: users x request
batch size (closed loop: each user sends its next request when the last one is answered), or, with
`--qbench-load-rate`, offered rate x users x batch size (open loop: requests leave on a schedule, and
users only bound how many are in flight). Pure: it reads load records (run.LoadRecord.summary()
dicts, live or from a saved qbench.json) and returns tables and choices, so unit tests need no server.

Capacity at a target: for each config, the measured point with the highest requests/s whose p95
stays at or under the target, counting only points that had no failed request and (open loop) kept
their schedule. No point qualifies: the capacity says so and why; it never extrapolates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

LATE_TOLERANCE_MS = 10.0  # open loop: a request its user's previous answer held more than this past its slot is late
MAX_LATE_SHARE = 0.01  # open loop: a point keeps its schedule when at most this share of its window is late
# open loop: ... and its window answered at least this share of the offered rate (a client too slow to send
# on time is not late by its own answers, but its rate falls short)
MIN_RATE_HELD = 0.9


@dataclass(frozen=True)
class LoadPoint:
    """One grid point: `users` Locust users sending `batch_size` texts a request, closed loop, or
    paced to `rate` requests/s in all (open loop)."""

    users: int
    batch_size: int
    rate: float | None = None

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def id(self) -> str:
        """The pytest id's tail: `u8-b1`, or `r50-u8-b1` in open loop."""
        head = f"r{self.rate:g}-" if self.rate is not None else ""
        return f"{head}u{self.users}-b{self.batch_size}"

    @property
    def user_rate(self) -> float | None:
        """Requests/s each user is paced to (open loop)."""
        return self.rate / self.users if self.rate is not None else None


def texts_a_request(n: Any) -> str:
    return "1 text a request" if n == 1 else f"{n} texts a request"


def grid_points(users: Sequence[int], batch_sizes: Sequence[int], rates: Sequence[float] = ()) -> list[LoadPoint]:
    """Every point, in the order they run: by batch size, then rate, then users (load rising)."""
    points = {LoadPoint(u, b, r) for u in users for b in batch_sizes for r in (rates or [None])}
    return sorted(points, key=lambda p: (p.batch_size, p.rate or 0.0, p.users))


# -- the table ------------------------------------------------------------------------------------

TABLE_COLUMNS = ("config", "kind", "target", "status", "reason", "point", "users", "rate", "batch_size",
                 "settle_s", "duration_s", "workers")


def load_rows(loads: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per load record: who, the point, the settings and every metric."""
    rows = []
    for item in loads:
        settings = dict(item.get("settings") or {})
        row = {"config": item.get("name"), "kind": item.get("kind"), "target": item.get("target"),
               "status": item.get("status"),
               "reason": (item.get("reason") or "").splitlines()[0] if item.get("reason") else "",
               "point": item.get("point")}
        row.update(settings)
        row.update(item.get("metrics") or {})
        rows.append(row)
    return rows


def load_table(loads: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (config, request batch size, users[, rate]), configs in run order, load rising."""
    rows = load_rows(loads)
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    frame = pd.DataFrame(rows)
    for column in TABLE_COLUMNS:
        if column not in frame:
            frame[column] = None
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["config"]))}
    frame["_order"] = frame["config"].map(order)
    keys = ["_order"] + [c for c in ("batch_size", "rate", "users") if frame[c].notna().any()]
    frame = frame.sort_values(keys, kind="stable", na_position="first").drop(columns="_order")
    return frame.reset_index(drop=True)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _cell(value: Any, digits: int = 2) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:,.{digits}f}"


def _count(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{int(number):,}"


def late_share(row: Mapping[str, Any]) -> float | None:
    late, window = _num(row.get("load_late_requests")), _num(row.get("load_window_requests"))
    if late is None or not window:
        return None
    return late / window


def kept_schedule(row: Mapping[str, Any]) -> bool:
    """Closed loop: always. Open loop: at most MAX_LATE_SHARE of the window's requests left late, and
    at least MIN_RATE_HELD of the offered rate answered."""
    rate = _num(row.get("rate"))
    if rate is None:
        return True
    share, rps = late_share(row), _num(row.get("load_rps"))
    return share is not None and share <= MAX_LATE_SHARE and rps is not None and rps >= MIN_RATE_HELD * rate


def display(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The load table for people (experiment log and HTML report share it): header, rows."""
    open_loop = "rate" in frame and frame["rate"].notna().any()
    header = ["config", "batch size", "users"] + (["offered req/s"] if open_loop else []) + [
        "req/s", "texts/s", "p50 (ms)", "p95 (ms)", "p99 (ms)", "failures"] + (
        ["sent late"] if open_loop else []) + ["requests (window / run)", "whole-run req/s", "status"]
    rows = []
    for _, row in frame.iterrows():
        status = str(row.get("status") or "-")
        if row.get("reason"):
            status += f": {row['reason']}"
        line = [row.get("config") or "-", _count(row.get("batch_size")), _count(row.get("users"))]
        if open_loop:
            line.append(_cell(row.get("rate"), 1))
        line += [_cell(row.get("load_rps"), 1), _cell(row.get("load_texts_per_s"), 1),
                 _cell(row.get("load_latency_p50_ms")), _cell(row.get("load_latency_p95_ms")),
                 _cell(row.get("load_latency_p99_ms")), _count(row.get("load_failures"))]
        if open_loop:
            late = _count(row.get("load_late_requests"))
            if late != "-" and not kept_schedule(row):
                late += " (schedule missed)"
            line.append(late)
        line += [f"{_count(row.get('load_window_requests'))} / {_count(row.get('load_requests'))}",
                 _cell(row.get("load_run_rps"), 1), status]
        rows.append(line)
    return header, rows


# -- capacity at a p95 target ---------------------------------------------------------------------

@dataclass(frozen=True)
class Capacity:
    """A config's highest requests/s with p95 at or under the target, or why there is none."""

    config: str
    p95_target_ms: float
    points: int  # grid points measured for this config
    rps: float | None = None
    texts_per_s: float | None = None
    latency_p95_ms: float | None = None
    point: str | None = None
    users: int | None = None
    batch_size: int | None = None
    rate: float | None = None
    reason: str | None = None

    @property
    def found(self) -> bool:
        return self.rps is not None

    def text(self) -> str:
        if not self.found:
            return f"{self.config}: no capacity at p95 <= {self.p95_target_ms:g} ms: {self.reason}"
        how = (f"{self.rate:g} req/s offered by {self.users} users" if self.rate is not None
               else f"{self.users} users")
        return (f"{self.config}: {self.rps:,.1f} req/s ({self.texts_per_s:,.1f} texts/s) at p95 "
                f"{self.latency_p95_ms:,.2f} ms <= {self.p95_target_ms:g} ms, from point {self.point} "
                f"({how}, {texts_a_request(self.batch_size)})")


def _qualifies(row: Mapping[str, Any], target: float) -> bool:
    p95, rps = _num(row.get("load_latency_p95_ms")), _num(row.get("load_rps"))
    return (row.get("status") == "passed" and p95 is not None and rps is not None and rps > 0
            and p95 <= target and kept_schedule(row))


def capacity_for(config: str, rows: Sequence[Mapping[str, Any]], target: float) -> Capacity:
    """Capacity of one config from its rows (load_rows' dicts)."""
    measured = [r for r in rows if r.get("status") in ("passed", "failed")]
    if not measured:
        why = "; ".join(sorted({r.get("reason") or str(r.get("status")) for r in rows})) or "no point ran"
        return Capacity(config, target, 0, reason=f"no grid point was measured ({why})")
    good = [r for r in measured if _qualifies(r, target)]
    if good:
        best = max(good, key=lambda r: (_num(r["load_rps"]), -_num(r["load_latency_p95_ms"]), -(r.get("users") or 0)))
        return Capacity(config, target, len(measured), rps=_num(best["load_rps"]),
                        texts_per_s=_num(best.get("load_texts_per_s")),
                        latency_p95_ms=_num(best["load_latency_p95_ms"]), point=best.get("point"),
                        users=best.get("users"), batch_size=best.get("batch_size"), rate=_num(best.get("rate")))
    clean = [r for r in measured if r.get("status") == "passed" and kept_schedule(r)
             and _num(r.get("load_latency_p95_ms")) is not None]
    if clean:
        low = min(clean, key=lambda r: _num(r["load_latency_p95_ms"]))
        why = (f"the lowest p95 among its {len(measured)} point(s) without failures was "
               f"{_num(low['load_latency_p95_ms']):,.2f} ms at {low.get('point')}")
    elif any(r.get("status") == "passed" for r in measured):
        why = "every point without failures fell behind its open-loop schedule"
    else:
        why = f"all {len(measured)} point(s) had failed requests"
    return Capacity(config, target, len(measured),
                    reason=f"{why}; not extrapolated (raise --qbench-p95-target-ms, or add lighter points)")


def capacities(loads: Iterable[Mapping[str, Any]], target: float) -> list[Capacity]:
    """Each loaded config's capacity at p95 <= target, in run order; configs that were only skipped
    (the server cannot run them) have none."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in load_rows(loads):
        by_config.setdefault(str(row["config"]), []).append(row)
    return [capacity_for(name, rows, target) for name, rows in by_config.items()
            if any(r.get("status") != "skipped" for r in rows)]

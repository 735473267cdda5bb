"""Replicas fed from processes of their own: N copies of a vLLM engine on one device, each built, fed
and timed by its own Python process, as N `vllm serve` instances behind a load balancer would run.

The thread-fed replicas (ceiling.replicated_point) drive every engine's front end (request
processing, output collection: Python) from one process, so the front ends share one GIL; on an H200
two of them gave 5,824 texts/s against one engine's 6,507, where the GPU was 12% busy. Here nothing
but the start signal and the per-call times crosses between processes, so the host work of N front
ends runs on N cores.
"""
from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

import numpy as np

from qbench_plugin.measure.ceiling import STRINGS, TOKENS, MIN_BATCHES, Point, batch_indices, memory_share, tracked

FEED = "processes"  # path_settings["feed"] of these points
START_TIMEOUT_S = 1800.0  # a cold vLLM start on a GPU compiles for minutes (a replica's start, each in turn)


def _serve(template, settings: dict[str, Any], batches: list[list[str]], conn: Connection) -> None:
    """A replica process: build the engine, tokenize its batches, warm both inputs up (untimed), then
    run its batches once per ("run", input) command and answer with each call's time."""
    engine = None
    try:
        engine = template.variant(**settings)
        encoded = [engine.encode(b) for b in batches]
        engine.classify_encoded(encoded[len(encoded) // 2])
        engine.classify(batches[len(batches) // 2])
        conn.send(("ready", None))
        while True:
            command, input = conn.recv()
            if command != "run":
                break
            calls, fn = (encoded, engine.classify_encoded) if input == TOKENS else (batches, engine.classify)
            samples = []
            for call in calls:
                start = time.perf_counter_ns()
                fn(call)
                samples.append(time.perf_counter_ns() - start)
            conn.send(("done", samples))
    except BaseException as exc:  # noqa: BLE001  (the parent names it; this process then ends)
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
    finally:
        if engine is not None:
            engine.close()
        conn.close()


def _answers(conns: Sequence[Connection], expected: str, timeout_s: float, *, first: int = 0) -> list[Any]:
    """One answer from every replica, or the first replica's error (a replica that died says EOF);
    replicas are named by position, counted from `first`."""
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(conns):
        waiting = [c for k, c in enumerate(conns) if k not in answers]
        ready = wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"{len(waiting)} of {len(conns)} replica processes did not answer in {timeout_s:.0f} s")
        for conn in ready:
            k = conns.index(conn) + first
            try:
                kind, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"replica process {k} ended without an answer") from None
            if kind == "error":
                raise RuntimeError(f"replica process {k}: {value}")
            if kind != expected:
                raise RuntimeError(f"replica process {k} answered {kind!r}, expected {expected!r}")
            answers[k - first] = value
    return [answers[k] for k in range(len(conns))]


def process_replica_points(engine, count: int, top: Point, texts: Sequence[str], lengths: Sequence[int], total: int, *,
                           config: str, inputs: Sequence[str] = (TOKENS, STRINGS),
                           start_timeout_s: float = START_TIMEOUT_S) -> list[Point]:
    """`count` replicas at the best point's batch size and settings (each with its share of the GPU
    memory, ceiling.memory_share), one process each; a point per input, timed from the start signal to
    the last replica's last result. Replicas that cannot start or fail are one point with the error: a
    finding, not a crash.

    Each replica starts once the one before it is ready: vLLM sizes its KV cache from whole-device
    free-memory deltas while it profiles, so replicas profiling at once charge each other's loading to
    themselves (vllm-project/vllm#55827, seen on 0.24). On the H200, 3 and 4 replicas started at once
    failed with "No available memory for the cache blocks" at 0.283 and 0.212 of the device each."""
    settings = {**top.engine_settings, **memory_share(engine, count)}
    extra = {"feed": FEED}

    def point(input: str, **fields: Any) -> Point:
        return Point(config, engine.name, "engine", input, top.batch_size, order=top.order, replicas=count,
                     engine_settings=dict(settings), path_settings=dict(extra), **fields)

    if engine.name != "vllm":
        return [point(TOKENS, error=f"replicas fed from processes start vLLM engines from their settings; "
                                    f"{engine.name} replicas are fed from threads only (--qbench-sweep-replica-feed threads)")]
    batches = [[texts[i] for i in rows]
               for rows in batch_indices(lengths, top.batch_size, total * count, top.order, min_batches=MIN_BATCHES * count)]
    shares = [batches[k::count] for k in range(count)]
    context = multiprocessing.get_context("spawn")  # fork after CUDA or OpenMP work hangs (engine.py)
    conns, processes = [], []
    points: list[Point] = []
    try:
        for share in shares:
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(engine, settings, share, child), name="qbench-replica")
            process.start()
            child.close()  # so that a replica that dies is EOF here
            conns.append(parent)
            processes.append(process)
            _answers([parent], "ready", start_timeout_s, first=len(conns) - 1)
        for input in inputs:
            found = point(input)
            with tracked(found):
                start = time.perf_counter_ns()
                for conn in conns:
                    conn.send(("run", input))
                samples = _answers(conns, "done", start_timeout_s)
                elapsed = time.perf_counter_ns() - start
            flat = np.asarray([s for per in samples for s in per], dtype=np.float64)
            found.texts = sum(len(b) for b in batches)
            found.seconds = elapsed / 1e9
            found.texts_per_s = found.texts / found.seconds
            found.latency_p50_ms, found.latency_p95_ms = (float(v) / 1e6 for v in np.percentile(flat, [50, 95]))
            points.append(found)
    except Exception as exc:  # noqa: BLE001
        points.append(point(inputs[len(points)] if len(points) < len(inputs) else TOKENS,
                            error=f"{count} replica processes failed: {type(exc).__name__}: {exc}"[:300]))
    finally:
        for conn in conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in processes:
            process.join(timeout=120)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        for conn in conns:
            conn.close()
    return points

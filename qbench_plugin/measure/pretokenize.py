"""Strings in, tokenization overlapped: batch N+1 is tokenized (and laid out for the engine) in worker
threads or processes while the engine runs batch N.

The string paths ran the tokenizer in series with the device, so their ceiling was the sum of both
times; overlapped, it is the larger of the two. Results come back in the order the batches went in,
whatever order the workers finish in.

"thread" workers share this process: the Rust tokenizer releases the GIL while it encodes a batch,
but turning its output into Python lists holds it. "process" workers are spawned (never forked: this process may hold CUDA or OpenMP state), each loads
its own copy of the task once, and ships token ids back pickled. On the 2-core dev machine, 16,384
texts in batches of 1,024 through two workers: serial 9,300 texts/s, thread 5,600, process 9,900
(TOKENIZERS_PARALLELISM off); hence "process" is the default.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

MODES = ("thread", "process")


class Tokenize:
    """A picklable batch task: strings -> token ids (truncated like the engines), then `layout` on them
    when given (a module-level function, so it pickles too)."""

    def __init__(self, tokenizer, max_length: int, layout: Callable[[list[list[int]]], Any] | None = None):
        # a path is loaded where the task runs (once per worker process): vLLM's tokenizer wrapper is a
        # class made at run time, which does not pickle
        self.source = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
        self.tokenizer = None if self.source is not None else tokenizer
        self.max_length, self.layout = max_length, layout
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        if self.source is not None:
            state["tokenizer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __call__(self, texts: Sequence[str]) -> Any:
        if self.tokenizer is None:
            with self._lock:
                if self.tokenizer is None:
                    from transformers import AutoTokenizer

                    self.tokenizer = AutoTokenizer.from_pretrained(os.fspath(self.source))
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return self.layout(ids) if self.layout is not None else ids


_task: Tokenize | None = None  # a process worker's copy, set once by _init


def _init(task: Tokenize) -> None:
    global _task
    _task = task


def _run(texts: Sequence[str]) -> Any:
    assert _task is not None, "worker started without its task"
    return _task(texts)


class Pipeline:
    """A started pool of workers for one task; `stream(batches)` yields each batch's encoding in order,
    keeping up to `depth` batches ahead of the consumer. Start it (and warm it) outside a timed region:
    spawning processes and loading the tokenizer into them takes seconds."""

    def __init__(self, task: Tokenize, mode: str = "thread", workers: int = 2, depth: int = 0):
        if mode not in MODES:
            raise ValueError(f"tokenizer pipeline mode {mode!r}: expected one of {', '.join(MODES)}")
        self.task, self.mode, self.workers = task, mode, max(1, workers)
        self.depth = depth or 2 * self.workers  # enough in flight that no worker waits for the consumer
        self._pool: Executor
        if mode == "process":
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init, initargs=(task,))
            self._fn: Callable[[Sequence[str]], Any] = _run
        else:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="qbench-tokenize")
            self._fn = task

    def warm(self, batch: Sequence[str]) -> None:
        """One batch on every worker: processes are started and hold their tokenizer afterwards."""
        for future in [self._pool.submit(self._fn, batch) for _ in range(self.workers)]:
            future.result()

    def stream(self, batches: Sequence[Sequence[str]]) -> Iterator[Any]:
        pending: list = []
        upcoming = iter(batches)
        for batch in upcoming:
            pending.append(self._pool.submit(self._fn, batch))
            if len(pending) >= self.depth:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append(self._pool.submit(self._fn, nxt))
            yield result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def feed(pipeline: Pipeline, batches: Sequence[Sequence[str]], consumers: Sequence[Callable[[Any], Any]]) -> list[Any]:
    """Every batch through the pipeline into `consumers` (one engine, or several replicas each driven by
    its own thread, taking the next encoded batch as they free up); returns each batch's result in
    batch order. A consumer's exception is raised here once all threads stopped."""
    if len(consumers) == 1:
        return [consumers[0](encoded) for encoded in pipeline.stream(batches)]
    work: queue.Queue = queue.Queue(maxsize=2 * len(consumers))
    results: list[Any] = [None] * len(batches)
    errors: list[BaseException] = []
    done = object()

    def drive(consume: Callable[[Any], Any]) -> None:
        while True:
            item = work.get()
            if item is done:
                return
            index, encoded = item
            try:
                if not errors:
                    results[index] = consume(encoded)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
                errors.append(exc)

    threads = [threading.Thread(target=drive, args=(c,), name="qbench-consumer") for c in consumers]
    for t in threads:
        t.start()
    try:
        for index, encoded in enumerate(pipeline.stream(batches)):
            if errors:
                break
            work.put((index, encoded))
    finally:
        for _ in threads:
            work.put(done)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results

"""Server-side batching: concurrent requests for one signature run as one call.

Mirrors TF Serving's `--enable_batching` with a `--batching_parameters_file`
(serving/config/batching.config is read by both servers). A batch is formed
from queued requests with the same servable, signature and input layout; it
closes when it reaches `max_batch_size` rows or when its oldest request has
waited `batch_timeout_micros`. Rows are concatenated along dimension 0 and
the outputs split back per request.

A failing batch is re-run request by request, so one client's bad image
fails only that client's request. A request with more rows than
`max_batch_size` is refused as TF Serving refuses it ("Task size N is larger
than maximum input batch size M", INVALID_ARGUMENT); requests cancelled or past
their deadline while queued are dropped before their batch runs.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass, fields
from collections.abc import Callable, Hashable

import grpc
import numpy as np

from serving.errors import ServingError, invalid_argument
from serving.limits import NO_CONTEXT, RequestContext

log = logging.getLogger("serving")


@dataclass(frozen=True)
class BatchingParameters:
    """The subset of TF Serving's BatchingParameters this server honours."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2

    @classmethod
    def from_file(cls, path: str) -> BatchingParameters:
        """Reads the text-proto file TF Serving takes (`name { value: N }` lines)."""
        values = {}
        known = {f.name for f in fields(cls)}
        with open(path) as f:
            text = re.sub(r"#.*", "", f.read())
        for name, value in re.findall(r"(\w+)\s*:?\s*\{\s*value\s*:\s*(\d+)\s*\}", text):
            if name in known:
                values[name] = int(value)
            else:
                log.warning("%s: batching parameter %s is not used by this server", path, name)
        leftover = re.sub(r"(\w+)\s*:?\s*\{\s*value\s*:\s*(\d+)\s*\}", "", text).strip()
        if leftover:
            raise ValueError(
                f"{path}: cannot read batching parameters near {leftover[:40]!r}; "
                f"expected lines like 'max_batch_size {{ value: 32 }}'"
            )
        params = cls(**values)
        if min(params.max_batch_size, params.max_enqueued_batches, params.num_batch_threads) < 1:
            raise ValueError(f"{path}: sizes and thread counts must be positive: {params}")
        return params


Outputs = dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "rows", "context", "enqueued", "done", "result", "error")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, context: RequestContext):
        self.inputs = inputs
        self.rows = rows
        self.context = context
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: Outputs | None = None
        self.error: BaseException | None = None


class BatchScheduler:
    """Shared batch queues with `num_batch_threads` workers."""

    def __init__(self, params: BatchingParameters, on_batch: Callable[[int], None] | None = None):
        self.params = params
        self._on_batch = on_batch or (lambda rows: None)  # e.g. a batch-size metric
        self._timeout = params.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        # key → (run function, queued tasks); dict order = age of each queue's oldest task
        self._queues: dict[Hashable, tuple[Callable, collections.deque]] = {}
        self._forming: set[Hashable] = set()
        self._queued_rows = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def run(
        self,
        key: Hashable,
        inputs: dict[str, np.ndarray],
        rows: int,
        run: Callable[[dict[str, np.ndarray]], Outputs],
        context: RequestContext = NO_CONTEXT,
    ) -> Outputs:
        """Runs `run` on these inputs, batched with concurrent tasks of the same key."""
        if rows > self.params.max_batch_size:
            raise invalid_argument(
                f"Task size {rows} is larger than maximum input batch size {self.params.max_batch_size}"
            )
        context.check()
        if rows == 0:
            return run(inputs)  # nothing to batch
        task = _Task(inputs, rows, context)
        with self._cond:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            limit = self.params.max_enqueued_batches * self.params.max_batch_size
            if self._queued_rows + rows > limit:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            if key not in self._queues:
                self._queues[key] = (run, collections.deque())
            self._queues[key][1].append(task)
            self._queued_rows += rows
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._cond:
                key = self._next_key()
                while key is None:
                    if self._stopping:
                        return
                    self._cond.wait()
                    key = self._next_key()
                self._forming.add(key)
                run, queue = self._queues[key]
                deadline = queue[0].enqueued + self._timeout
                while sum(t.rows for t in queue) < self.params.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, rows, dropped = [], 0, []
                while queue and rows + queue[0].rows <= self.params.max_batch_size:
                    task = queue.popleft()
                    self._queued_rows -= task.rows
                    if task.context.cancelled or task.context.expired():
                        dropped.append(task)  # nobody waits for this answer any more
                        continue
                    batch.append(task)
                    rows += task.rows
                if not queue:
                    del self._queues[key]
                self._forming.discard(key)
                self._cond.notify_all()
            for task in dropped:
                try:
                    task.context.check()
                except ServingError as err:
                    task.error = err
                task.done.set()
            if batch:
                self._on_batch(rows)
                self._process(run, batch)

    def _next_key(self) -> Hashable | None:
        for key in self._queues:  # oldest first
            if key not in self._forming:
                return key
        return None

    @staticmethod
    def _process(run: Callable, batch: list[_Task]) -> None:
        if len(batch) == 1:
            _finish(batch[0], run)
            return
        merged = {name: np.concatenate([t.inputs[name] for t in batch]) for name in batch[0].inputs}
        total = sum(t.rows for t in batch)
        try:
            outputs = run(merged)
            if any(np.shape(value)[:1] != (total,) for value in outputs.values()):
                raise ValueError("an output is not batched along dimension 0")
        except Exception:
            # Some request in the batch is bad (or the batch as a whole failed):
            # answer each on its own so the error reaches only its sender.
            for task in batch:
                _finish(task, run)
            return
        offset = 0
        for task in batch:
            task.result = {name: value[offset : offset + task.rows] for name, value in outputs.items()}
            offset += task.rows
            task.done.set()


def _finish(task: _Task, run: Callable) -> None:
    try:
        task.result = run(task.inputs)
    except BaseException as err:  # handed to the waiting request thread, which raises it
        task.error = err
    task.done.set()

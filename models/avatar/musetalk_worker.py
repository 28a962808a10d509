"""One worker thread per process that runs a renderer's batches for every
session: frames queued by all streams, earliest deadline first.

A frame job carries the session it belongs to, its deadline (when the media
clock will show it, on ``time.monotonic``) and a payload the inference function
understands; the worker pops up to ``batch_size`` jobs with the earliest
deadlines (of any sessions) and hands their payloads to ``infer`` in one call,
which returns one result per payload in order. Results go back on the job
(``wait``), so a stream pairs each picture with the audio it queued the job
for. ``drop(session)`` removes that session's pending jobs (barge-in) and no
other. Calls (``call``) run before any frame: the per-chunk audio features
that frame jobs are made from.

The batch size comes from measuring ``infer`` at start-up (``measure``):
batches of 1, 2, 4 and 8, and the largest that keeps up (renders its frames in
no more time than they take to play, and within a latency budget) is taken.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from models.base import MEDIA_FPS

log = logging.getLogger(__name__)

FRAME_PERIOD = 1.0 / MEDIA_FPS
BATCH_SIZES = (1, 2, 4, 8)

Infer = Callable[[Sequence[Any]], Sequence[Any]]


class FrameJob:
    """One frame to render; ``wait`` for its ``result``."""

    __slots__ = ("session", "deadline", "payload", "result", "error", "cancelled", "_done")

    def __init__(self, session: Hashable, deadline: float, payload: Any) -> None:
        self.session = session
        self.deadline = deadline
        self.payload = payload
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Whether the result is there (within ``timeout`` seconds)."""
        return self._done.wait(timeout if timeout is None else max(0.0, timeout))

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()


@dataclass(order=True)
class _Entry:
    deadline: float
    order: int
    job: FrameJob = field(compare=False)


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    largest_batch: int = 0
    sessions_per_batch: list[int] = field(default_factory=list)  # the last 100 batches

    def add(self, jobs: Sequence[FrameJob]) -> None:
        self.batches += 1
        self.frames += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        self.sessions_per_batch = [*self.sessions_per_batch[-99:], len({j.session for j in jobs})]


class BatchWorker:
    """The one thread that renders frames for every stream, in batches."""

    def __init__(self, infer: Infer, batch_size: int, *, name: str = "renderer") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.infer = infer
        self.batch_size = batch_size
        self.stats = WorkerStats()
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._calls: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producers
    def submit(self, session: Hashable, deadline: float, payload: Any) -> FrameJob:
        job = FrameJob(session, deadline, payload)
        with self._cond:
            if self._closed:
                raise RuntimeError("the render worker is closed")
            heapq.heappush(self._heap, _Entry(deadline, next(self._order), job))
            self._cond.notify()
        return job

    def call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the worker thread before the next batch."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the render worker is closed")
            self._calls.append((future, fn, args))
            self._cond.notify()
        return future

    def drop(self, session: Hashable) -> int:
        """Forget ``session``'s pending frames (a batch already running keeps
        its own); returns how many were dropped."""
        with self._cond:
            keep = [e for e in self._heap if e.job.session != session]
            gone = [e.job for e in self._heap if e.job.session == session]
            if gone:
                self._heap = keep
                heapq.heapify(self._heap)
        for job in gone:
            job.cancelled = True
            job._finish()
        return len(gone)

    def pending(self, session: Hashable | None = None) -> int:
        with self._cond:
            return sum(1 for e in self._heap if session is None or e.job.session == session)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    # --------------------------------------------------------------- worker
    def _next_batch(self) -> list[FrameJob]:
        """Called with the lock held: the earliest-deadline jobs, at most batch_size."""
        jobs: list[FrameJob] = []
        while self._heap and len(jobs) < self.batch_size:
            jobs.append(heapq.heappop(self._heap).job)
        return jobs

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._calls or self._heap):
                    self._cond.wait()
                if self._closed:
                    break
                if self._calls:
                    call = self._calls.popleft()
                    jobs: list[FrameJob] = []
                else:
                    jobs = self._next_batch()
            if not jobs:
                future, fn, args = call
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # handed to whoever waits on it
                        future.set_exception(exc)
                continue
            self._render(jobs)
        with self._cond:
            left = [e.job for e in self._heap]
            self._heap = []
            calls = list(self._calls)
            self._calls.clear()
        for job in left:
            job.cancelled = True
            job._finish()
        for future, _, _ in calls:
            future.cancel()

    def _render(self, jobs: list[FrameJob]) -> None:
        try:
            results = self.infer([job.payload for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"infer returned {len(results)} results for {len(jobs)} frames")
        except Exception as exc:  # the streams show their last picture meanwhile
            log.exception("rendering a batch of %d frames failed", len(jobs))
            for job in jobs:
                job._finish(error=exc)
            return
        self.stats.add(jobs)
        for job, result in zip(jobs, results, strict=True):
            job._finish(result)


# ------------------------------------------------------------ batch size
@dataclass(frozen=True)
class BatchMeasure:
    seconds: dict[int, float]  # batch size -> seconds per batch
    chosen: int

    def fps(self, size: int) -> float:
        return size / self.seconds[size]

    def describe(self) -> str:
        parts = ", ".join(
            f"{b}: {s * 1000:.0f} ms ({b / s:.1f} fps)" for b, s in self.seconds.items()
        )
        return f"batch {self.chosen} (per batch {parts})"


def keeps_up(size: int, seconds: float, max_batch_s: float) -> bool:
    """A batch keeps up when its frames take no longer to render than to play
    (one session's real time) and it ends within the latency budget."""
    return seconds <= size * FRAME_PERIOD and seconds <= max_batch_s


def choose_batch_size(seconds: dict[int, float], max_batch_s: float) -> int:
    """The largest measured size that keeps up; 1 when none does (the lowest
    latency on a machine that cannot keep up anyway)."""
    fitting = [b for b, s in seconds.items() if keeps_up(b, s, max_batch_s)]
    return max(fitting) if fitting else 1


def measure(
    infer: Infer,
    payload: Any,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    max_batch_s: float = 0.2,
    repeats: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchMeasure:
    """Time ``infer`` on batches of ``payload`` (after one warm-up call) and
    choose the batch size. ``repeats``: runs per size, the fastest counts."""
    infer([payload])
    seconds: dict[int, float] = {}
    for size in sizes:
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = clock()
            infer([payload] * size)
            best = min(best, clock() - start)
        seconds[size] = best
        if best > 4 * max_batch_s:  # far too slow already: larger ones only take longer
            break
    return BatchMeasure(seconds, choose_batch_size(seconds, max_batch_s))

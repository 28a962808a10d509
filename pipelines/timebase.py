"""Where the pipeline's time comes from: a small protocol, the real clock, and
a virtual clock that tests advance deterministically.

The media clock and the session read the time, sleep and run blocking work
(ASR, TTS, rendering) only through a ``TimeSource``, so the same code runs on
the wall clock in the server and on ``VirtualTime`` in tests, where a 25 fps
reply of several seconds plays out in a fraction of a second and always the
same way. The waits built on ``sleep`` (``wait_event``, ``wait_for``,
``Timeout``) replace asyncio's own, which would read the real loop time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# VirtualTime yields to the event loop at most this often before it moves the
# time on, in case something keeps the loop busy without ever waiting.
MAX_SETTLE_ROUNDS = 10_000


class TimeSource(Protocol):
    """Seconds on a monotonic clock, sleeping on it, and blocking work in
    threads (a virtual clock must know when threads are busy)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def run_in_thread(
        self, executor: Executor | None, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]: ...


class RealTime:
    """The wall clock: time.monotonic (the event loop's own clock) and asyncio."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def run_in_thread(
        self, executor: Executor | None, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def block(self, seconds: float) -> None:
        """In a worker thread: take ``seconds`` (a scripted model's work)."""
        time.sleep(seconds)


REAL_TIME = RealTime()


# ----------------------------------------------------------- waits on a clock
async def wait_for(time_source: TimeSource, awaitable: Awaitable[T], seconds: float) -> T:
    """``asyncio.wait_for`` on ``time_source``: the result, or TimeoutError
    after ``seconds`` (the awaitable is then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(time_source.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})  # its clean-up runs before we go on
    if task.cancelled():
        raise TimeoutError
    return task.result()


async def wait_event(time_source: TimeSource, event: asyncio.Event, until: float) -> None:
    """Wait for ``event``, but not past the time ``until`` on ``time_source``."""
    left = until - time_source.now()
    if event.is_set() or left <= 0:
        return
    try:
        await wait_for(time_source, event.wait(), left)
    except TimeoutError:
        pass


class Timeout:
    """``asyncio.timeout`` on a TimeSource: cancels the enclosing task after
    ``seconds`` (None or 0: never) and turns that into TimeoutError on exit.
    ``lift()`` removes the limit (e.g. once the first token has come)."""

    def __init__(self, time_source: TimeSource, seconds: float | None) -> None:
        self._time = time_source
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> Timeout:
        self._task = asyncio.current_task()
        assert self._task is not None, "Timeout must be used inside a task"
        self._cancelling = self._task.cancelling()
        if self._seconds:
            self._watch = asyncio.ensure_future(self._expire(self._seconds))
        return self

    async def _expire(self, seconds: float) -> None:
        await self._time.sleep(seconds)
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def lift(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.lift()
        assert self._task is not None
        if self._expired and exc_type is asyncio.CancelledError:
            # Ours, unless someone else cancelled the task as well.
            if self._task.uncancel() <= self._cancelling:
                raise TimeoutError from exc


# -------------------------------------------------------------- virtual time
@dataclass
class _Job:
    """One call in a worker thread; counted busy while it computes."""

    busy: bool = True
    finished: bool = False


@dataclass(order=True)
class _Sleeper:
    due: float
    order: int
    wake: asyncio.Future[None] | threading.Event = field(compare=False)
    job: _Job | None = field(default=None, compare=False)


class VirtualTime:
    """A clock that tests move: ``now()`` starts at 0 and jumps from one
    sleeper's due time to the next, so a run is fast and repeatable.

    It cooperates with the event loop and with threads in one rule: time moves
    on only when nothing else can. A driver task (started by the first sleep
    or thread call) first yields to the event loop until no other callback is
    ready to run (it reads the loop's ready queue, a CPython detail; without
    one it yields a fixed number of times), and then only if no thread started
    by ``run_in_thread`` is still computing. Blocking work thus takes no
    virtual time, however long it really takes, and its result is seen at the
    same virtual instant on every run. A scripted model that should take time
    calls ``block(seconds)`` in its thread: the thread then waits on the
    virtual clock like a sleeping task. Time spent waiting on anything else
    (sockets, a real ``asyncio.sleep``) is not counted: virtual time runs on
    meanwhile. Call ``aclose()`` at the end to stop the driver.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()  # worker threads sleep and finish, too
        self._sleepers: list[_Sleeper] = []
        self._order = itertools.count()
        self._busy = 0  # jobs computing in threads
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self._start()
        assert self._loop is not None
        wake: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            heapq.heappush(self._sleepers, _Sleeper(self._now + seconds, next(self._order), wake))
        self._poke()
        await wake

    def run_in_thread(
        self, executor: Executor | None, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        self._start()
        assert self._loop is not None
        job = _Job()
        with self._lock:
            self._busy += 1
        try:
            future = self._loop.run_in_executor(executor, self._run_job, job, fn, args)
        except BaseException:
            self._job_done(job)
            raise
        # On the loop, once the result (or a cancellation) is there.
        future.add_done_callback(lambda _: self._job_done(job))
        return future

    def block(self, seconds: float) -> None:
        """In a thread started by ``run_in_thread``: wait ``seconds`` of virtual time."""
        if seconds <= 0:
            return
        job: _Job | None = getattr(self._local, "job", None)
        if job is None:
            raise RuntimeError("VirtualTime.block() outside run_in_thread would never wake")
        assert self._loop is not None
        wake = threading.Event()
        with self._lock:
            if self._closed:
                return
            if job.busy:
                job.busy = False
                self._busy -= 1
            sleeper = _Sleeper(self._now + seconds, next(self._order), wake, job)
            heapq.heappush(self._sleepers, sleeper)
        self._loop.call_soon_threadsafe(self._poke)
        wake.wait()

    async def aclose(self) -> None:
        """Stop the driver; threads still blocked on the virtual clock go on
        (their work is no longer waited for, but must not hang at exit)."""
        with self._lock:
            self._closed = True
            for sleeper in self._sleepers:
                if isinstance(sleeper.wake, threading.Event):
                    sleeper.wake.set()
            self._sleepers = [s for s in self._sleepers if not isinstance(s.wake, threading.Event)]
            heapq.heapify(self._sleepers)
        if self._driver is not None:
            self._driver.cancel()
            try:
                await self._driver
            except asyncio.CancelledError:
                pass
            self._driver = None

    # ------------------------------------------------------------ internals
    def _run_job(self, job: _Job, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self._local.job = job
        try:
            return fn(*args)
        finally:
            self._local.job = None

    def _job_done(self, job: _Job) -> None:
        with self._lock:
            job.finished = True
            if job.busy:
                job.busy = False
                self._busy -= 1
        self._poke()

    def _start(self) -> None:
        if self._driver is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._driver = self._loop.create_task(self._drive(), name="virtual-time")

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _settle(self) -> None:
        """Yield until no other callback of the loop is ready to run."""
        ready = getattr(self._loop, "_ready", None)
        for _ in range(MAX_SETTLE_ROUNDS if ready is not None else 50):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    async def _drive(self) -> None:
        assert self._changed is not None
        while True:
            await self._settle()
            with self._lock:
                while self._sleepers and _abandoned(self._sleepers[0]):
                    heapq.heappop(self._sleepers)
                if self._busy or not self._sleepers:
                    self._changed.clear()
                    moved = False
                else:
                    self._now = max(self._now, self._sleepers[0].due)
                    while self._sleepers and self._sleepers[0].due <= self._now:
                        self._wake(heapq.heappop(self._sleepers))
                    moved = True
            if not moved:
                await self._changed.wait()

    def _wake(self, sleeper: _Sleeper) -> None:
        """Called with the lock held."""
        if isinstance(sleeper.wake, threading.Event):
            job = sleeper.job
            if job is not None and not job.finished:
                job.busy = True  # computing again, before the thread even runs
                self._busy += 1
            sleeper.wake.set()
        elif not sleeper.wake.done():
            sleeper.wake.set_result(None)


def _abandoned(sleeper: _Sleeper) -> bool:
    return isinstance(sleeper.wake, asyncio.Future) and sleeper.wake.cancelled()

"""Thread priorities: media pacing must win the CPU over inference.

On a 2-core machine llama.cpp, onnxruntime and CTranslate2 threads can keep
both cores busy; the event loop that releases frames then waits its turn and
the video stutters. Linux nice values are per thread and inherited by threads
created later, so we load and run models in threads whose nice value is raised:
their worker pools (created at load) inherit it, while the event loop and the
avatar render threads stay at normal priority.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def lower_this_thread(nice: int) -> None:
    """Raise the nice value of the calling thread only (Linux semantics)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("could not lower inference thread priority: %s", exc)


async def run_in_low_priority_thread(fn: Callable[[], T], nice: int) -> T:
    """Run ``fn`` in a fresh thread with a raised nice value; await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        lower_this_thread(nice)
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(future.set_exception, exc)
        else:
            loop.call_soon_threadsafe(future.set_result, result)

    threading.Thread(target=run, name="model-loader", daemon=True).start()
    return await future

"""Uploads that are processed in a worker thread (avatars, voices): the
multipart body read within a size limit, the file saved under a safe name, and
a table of jobs whose progress clients poll."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024  # form fields and boundaries on top of the file
# Finished and failed uploads are kept for their progress to be read, then forgotten.
FINISHED_JOB_TTL_S = 600.0
MAX_FINISHED_JOBS = 20


@dataclass
class Job:
    name: str
    fraction: float = 0.0
    message: str = "queued"
    state: str = "running"  # running | done | error
    error: str | None = None
    started: float = 0.0  # wall clock
    ended: float | None = None  # JobTable's clock, once done or failed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "fraction": round(self.fraction, 3),
            "message": self.message,
            "state": self.state,
        }
        if self.error is not None:
            d["error"] = self.error
        return d


class JobTable:
    """The latest upload job of each avatar name. Running jobs stay; a finished
    or failed one is forgotten ``ttl_s`` after it ended, and beyond the newest
    ``max_finished`` of them, so failed uploads do not pile up in memory.
    Used from the event loop only (the worker thread only moves a job's
    fraction and message)."""

    def __init__(
        self,
        ttl_s: float = FINISHED_JOB_TTL_S,
        max_finished: int = MAX_FINISHED_JOBS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.clock = clock
        self._jobs: dict[str, Job] = {}

    def __len__(self) -> int:
        self.prune()
        return len(self._jobs)

    def get(self, name: str) -> Job | None:
        self.prune()
        return self._jobs.get(name)

    def running(self) -> list[Job]:
        return [job for job in self._jobs.values() if job.state == "running"]

    def start(self, name: str) -> Job:
        """A new running job for ``name`` (replacing a finished one)."""
        self.prune()
        job = Job(name=name, started=time.time())
        self._jobs.pop(name, None)
        self._jobs[name] = job
        return job

    def finish(self, job: Job, error: str | None = None) -> None:
        if error is None:
            job.state, job.fraction, job.message = "done", 1.0, "ready"
        else:
            job.state, job.error, job.message = "error", error, "failed"
        job.ended = self.clock()
        self.prune()

    def forget(self, name: str) -> None:
        self._jobs.pop(name, None)

    def prune(self) -> None:
        now = self.clock()
        ended = sorted(
            (job for job in self._jobs.values() if job.ended is not None),
            key=lambda job: job.ended or 0.0,
            reverse=True,
        )
        for i, job in enumerate(ended):
            if i >= self.max_finished or now - (job.ended or now) > self.ttl_s:
                del self._jobs[job.name]


class _TooLarge(Exception):
    pass


async def read_form(request: Request, max_mb: float, fields: str) -> FormData:
    """The multipart form of ``request``, refused (413) past ``max_mb`` of file
    while it is read, not after; ``fields`` names them in the 400 message. The
    caller closes the form."""
    max_bytes = int(max_mb * 1024 * 1024)
    too_large = f"the upload is too large (at most {max_mb:g} MB)"
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
        raise HTTPException(413, too_large)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, f"send multipart/form-data with the fields {fields}")

    async def limited() -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes + MULTIPART_SLACK:
                raise _TooLarge
            yield chunk

    parser = MultiPartParser(request.headers, limited(), max_files=1, max_fields=10)
    try:
        return await parser.parse()
    except _TooLarge:
        raise HTTPException(413, too_large) from None
    except MultiPartException as exc:
        raise HTTPException(400, f"bad upload: {exc.message}") from None


def upload_name(filename: str | None) -> str:
    """The client's file name, made safe to use here (the messages about the file
    name it; its extension helps FFmpeg), or "upload"."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name)[-80:].lstrip("._-")
    return name or "upload"


def save_upload(upload: UploadFile, dest: Path) -> int:
    """Copy the uploaded file to ``dest``; its size in bytes."""
    upload.file.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
        return out.tell()


def end_job(
    jobs: JobTable,
    job: Job,
    done: asyncio.Future[Any],
    expected: type[Exception],
    failure: Callable[[BaseException], str],
    doing: str,
) -> None:
    """Record how a job's worker ended: bad input (``expected``) quietly, any
    other failure logged with its traceback."""
    if done.cancelled():
        jobs.finish(job, "cancelled")
        return
    exc = done.exception()
    if exc is not None and not isinstance(exc, expected):
        log.error("%s %r failed", doing, job.name, exc_info=exc)
    jobs.finish(job, None if exc is None else failure(exc))

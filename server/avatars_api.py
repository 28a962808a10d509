"""REST routes for avatars: list, add (multipart upload, prepared in a worker
thread), progress, remove. Adding, removing and the progress of an upload need
the server's API key (server/auth.py); the list is open. See docs/api.md."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from core.config import Config
from models.base import AvatarModel
from server.auth import require_api_key
from tools.avatar_library import (
    DEFAULT_AVATAR,
    AvatarError,
    AvatarInfo,
    AvatarLimits,
    AvatarTooLarge,
    check_name,
    list_avatars,
    remove_avatar,
)
from tools.avatar_prepare import prepare_avatar

log = logging.getLogger(__name__)
router = APIRouter()

# One preparation at a time: it is CPU-heavy and sessions share the cores.
_PREPARE_LOCK = threading.Lock()
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


def _jobs(request: Request) -> JobTable:
    state = request.app.state
    if not hasattr(state, "avatar_jobs"):
        state.avatar_jobs = JobTable()
    return state.avatar_jobs


def _settings(request: Request) -> tuple[Path, AvatarLimits, str]:
    config = request.app.state.manager.config
    return (
        config.weights_path / "avatars",
        AvatarLimits.from_config(config.avatars),
        config.avatar.default,
    )


def _refresh_renderer(model: AvatarModel) -> None:
    """Let the running renderer see added or removed avatars (blocking)."""
    refresh = getattr(model, "refresh", None)
    if callable(refresh):
        refresh()


async def _refresh(request: Request) -> None:
    await asyncio.to_thread(_refresh_renderer, request.app.state.manager.engines.avatar)


def _error(exc: AvatarError) -> HTTPException:
    return HTTPException(getattr(exc, "status", 400), str(exc))


async def sync_with_disk(config: Config, model: AvatarModel) -> list[AvatarInfo]:
    """Reload the renderer's avatars when weights/avatars changed behind its back
    (`videochat avatar add|remove` while the server runs); return what is there."""
    infos = list_avatars(config.weights_path / "avatars")
    on_disk = {info.name for info in infos}
    loaded = set(model.avatars())
    if on_disk - loaded or loaded - on_disk - {config.avatar.default, DEFAULT_AVATAR}:
        refresh = getattr(model, "refresh", None)
        if callable(refresh):
            log.info("avatars changed on disk; reloading them")
            await asyncio.to_thread(refresh)
    return infos


@router.get("/api/avatars")
async def get_avatars(request: Request) -> list[dict]:
    """Every avatar the renderer can use (``ready: true``), plus uploads still
    being prepared (``ready: false``)."""
    manager = request.app.state.manager
    infos = await sync_with_disk(manager.config, manager.engines.avatar)
    modes = {info.name: info.mode for info in infos}
    names = manager.engines.avatar.avatars()
    out = [{"name": n, "mode": modes.get(n, "photo"), "ready": True} for n in names]
    for job in _jobs(request).running():
        if job.name not in names:
            out.append({"name": job.name, "mode": None, "ready": False})
    return out


@router.get("/api/avatars/{name}/progress", dependencies=[Depends(require_api_key)])
async def get_progress(name: str, request: Request) -> dict:
    job = _jobs(request).get(name)
    if job is None:
        raise HTTPException(404, f"no preparation of {name!r}")
    return job.to_dict()


@router.delete("/api/avatars/{name}", dependencies=[Depends(require_api_key)])
async def delete_avatar(name: str, request: Request) -> dict:
    avatars_dir, _, default = _settings(request)
    job = _jobs(request).get(name)
    if job is not None and job.state == "running":
        raise HTTPException(409, f"avatar {name!r} is being prepared")
    try:
        await asyncio.to_thread(remove_avatar, name, avatars_dir, default)
    except AvatarError as exc:
        raise _error(exc) from None
    _jobs(request).forget(name)
    await _refresh(request)
    return {"removed": name}


@router.post("/api/avatars", status_code=201, dependencies=[Depends(require_api_key)])
async def add_avatar(request: Request) -> JSONResponse:
    """multipart/form-data: ``name``, ``file``, optional ``kind`` (photo|video;
    sniffed from the content when absent). Waits for the preparation and
    answers 201 with the avatar; poll ``/api/avatars/{name}/progress`` meanwhile."""
    avatars_dir, limits, default = _settings(request)
    max_bytes = int(limits.max_upload_mb * 1024 * 1024)
    too_large = f"the upload is too large (at most {limits.max_upload_mb:g} MB)"
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
        raise HTTPException(413, too_large)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send multipart/form-data with the fields name and file")

    async def limited() -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes + MULTIPART_SLACK:
                raise _TooLarge
            yield chunk

    parser = MultiPartParser(request.headers, limited(), max_files=1, max_fields=10)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise HTTPException(413, too_large) from None
    except MultiPartException as exc:
        raise HTTPException(400, f"bad upload: {exc.message}") from None
    try:
        return await _add_from_form(request, form, avatars_dir, limits, default, max_bytes)
    finally:
        await form.close()


async def _add_from_form(
    request: Request,
    form: Any,
    avatars_dir: Path,
    limits: AvatarLimits,
    default: str,
    max_bytes: int,
) -> JSONResponse:
    too_large = f"the upload is too large (at most {limits.max_upload_mb:g} MB)"
    name = form.get("name")
    upload = form.get("file")
    kind = form.get("kind") or None
    if not isinstance(name, str):
        raise HTTPException(400, "missing form field 'name'")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "missing form field 'file' (the photo or video)")
    if kind not in (None, "photo", "video"):
        raise HTTPException(400, f"kind must be 'photo' or 'video', not {kind!r}")
    try:
        check_name(name)
    except AvatarError as exc:
        raise _error(exc) from None
    if name in (default, DEFAULT_AVATAR):
        raise HTTPException(400, f"{name!r} is the default avatar; choose another name")
    jobs = _jobs(request)
    current = jobs.get(name)
    if current is not None and current.state == "running":
        raise HTTPException(409, f"avatar {name!r} is already being prepared")
    job = jobs.start(name)

    upload_dir = Path(tempfile.mkdtemp(prefix="videochat-upload-"))
    src = upload_dir / _upload_name(upload.filename)
    model = request.app.state.manager.engines.avatar

    def progress(fraction: float, message: str) -> None:
        job.fraction, job.message = fraction, message

    def work() -> AvatarInfo:
        try:
            size = _save(upload, src)
            if size > max_bytes:
                raise AvatarTooLarge(too_large)
            if size == 0:
                raise AvatarError("the uploaded file is empty")
            with _PREPARE_LOCK:
                info = prepare_avatar(name, src, kind, avatars_dir, limits, progress)
        finally:
            shutil.rmtree(upload_dir, ignore_errors=True)
        _refresh_renderer(model)
        return info

    # The worker thread cannot be stopped: if the client leaves (the request is
    # cancelled), the job still ends when the thread does, and then expires.
    preparing = asyncio.ensure_future(asyncio.to_thread(work))
    preparing.add_done_callback(lambda done: _end_job(jobs, job, done))
    try:
        info = await asyncio.shield(preparing)
    except AvatarError as exc:
        raise _error(exc) from None
    except Exception as exc:
        raise HTTPException(500, _failure(exc)) from None
    body = info.to_dict()
    body.pop("path", None)
    return JSONResponse(body, status_code=201)


def _failure(exc: BaseException) -> str:
    """The message of a failed preparation (bad input says what was wrong)."""
    return str(exc) if isinstance(exc, AvatarError) else f"preparation failed: {exc}"


def _end_job(jobs: JobTable, job: Job, done: asyncio.Future[AvatarInfo]) -> None:
    if done.cancelled():
        jobs.finish(job, "preparation cancelled")
        return
    exc = done.exception()
    if exc is not None and not isinstance(exc, AvatarError):
        log.error("preparing avatar %r failed", job.name, exc_info=exc)
    jobs.finish(job, None if exc is None else _failure(exc))


def _upload_name(filename: str | None) -> str:
    """The client's file name, made safe to use here (the messages about the file
    name it; its extension helps FFmpeg), or "upload"."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name)[-80:].lstrip("._-")
    return name or "upload"


def _save(upload: UploadFile, dest: Path) -> int:
    upload.file.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
        return out.tell()

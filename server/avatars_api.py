"""REST routes for avatars: list, add (multipart upload, prepared in a worker
thread), progress, remove. See docs/api.md."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from models.avatar_prepare import (
    DEFAULT_AVATAR,
    AvatarError,
    AvatarInfo,
    AvatarLimits,
    check_name,
    list_avatars,
    prepare_avatar,
    remove_avatar,
)
from models.base import AvatarModel
from server.config import Config

log = logging.getLogger(__name__)
router = APIRouter()

# One preparation at a time: it is CPU-heavy and sessions share the cores.
_PREPARE_LOCK = threading.Lock()
MULTIPART_SLACK = 64 * 1024  # form fields and boundaries on top of the file


@dataclass
class Job:
    name: str
    fraction: float = 0.0
    message: str = "queued"
    state: str = "running"  # running | done | error
    error: str | None = None
    started: float = 0.0

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


class _TooLarge(Exception):
    pass


def _jobs(request: Request) -> dict[str, Job]:
    state = request.app.state
    if not hasattr(state, "avatar_jobs"):
        state.avatar_jobs = {}
    return state.avatar_jobs


def _settings(request: Request) -> tuple[Path, AvatarLimits, str]:
    config = request.app.state.manager.config
    return (
        config.weights_path / "avatars",
        AvatarLimits.from_config(config.avatars),
        config.avatar.default,
    )


async def _refresh(request: Request) -> None:
    """Let the running renderer see added or removed avatars."""
    model = request.app.state.manager.engines.avatar
    refresh = getattr(model, "refresh", None)
    if callable(refresh):
        await asyncio.to_thread(refresh)


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
    for job in _jobs(request).values():
        if job.state == "running" and job.name not in names:
            out.append({"name": job.name, "mode": None, "ready": False})
    return out


@router.get("/api/avatars/{name}/progress")
async def get_progress(name: str, request: Request) -> dict:
    job = _jobs(request).get(name)
    if job is None:
        raise HTTPException(404, f"no preparation of {name!r}")
    return job.to_dict()


@router.delete("/api/avatars/{name}")
async def delete_avatar(name: str, request: Request) -> dict:
    avatars_dir, _, default = _settings(request)
    job = _jobs(request).get(name)
    if job is not None and job.state == "running":
        raise HTTPException(409, f"avatar {name!r} is being prepared")
    try:
        await asyncio.to_thread(remove_avatar, name, avatars_dir, default)
    except AvatarError as exc:
        raise _error(exc) from None
    _jobs(request).pop(name, None)
    await _refresh(request)
    return {"removed": name}


@router.post("/api/avatars", status_code=201)
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
    if name in jobs and jobs[name].state == "running":
        raise HTTPException(409, f"avatar {name!r} is already being prepared")
    job = Job(name=name, started=time.time())
    jobs[name] = job

    upload_dir = Path(tempfile.mkdtemp(prefix="videochat-upload-"))
    suffix = Path(upload.filename or "").suffix.lower()
    if not suffix[1:].isalnum() or len(suffix) > 6:
        suffix = ""
    src = upload_dir / f"upload-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        size = await asyncio.to_thread(_save, upload, src)
        if size > max_bytes:
            raise AvatarError(too_large)
        if size == 0:
            raise AvatarError("the uploaded file is empty")

        def progress(fraction: float, message: str) -> None:
            job.fraction, job.message = fraction, message

        def run() -> Any:
            with _PREPARE_LOCK:
                return prepare_avatar(name, src, kind, avatars_dir, limits, progress)

        info = await asyncio.to_thread(run)
    except AvatarError as exc:
        job.state, job.error, job.message = "error", str(exc), "failed"
        status = 413 if str(exc) == too_large else getattr(exc, "status", 400)
        raise HTTPException(status, str(exc)) from None
    except Exception as exc:
        log.exception("preparing avatar %r failed", name)
        job.state, job.error, job.message = "error", f"preparation failed: {exc}", "failed"
        raise HTTPException(500, job.error) from None
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
    await _refresh(request)
    job.state, job.fraction, job.message = "done", 1.0, "ready"
    body = info.to_dict()
    body.pop("path", None)
    return JSONResponse(body, status_code=201)


def _save(upload: UploadFile, dest: Path) -> int:
    upload.file.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
        return out.tell()

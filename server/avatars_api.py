"""REST routes for avatars: list, add (multipart upload, prepared in a worker
thread), progress, remove. Adding, removing and the progress of an upload need
the server's API key (server/auth.py); the list is open. See docs/api.md."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from core.config import Config
from models.base import AvatarModel
from server.auth import require_api_key
from server.uploads import JobTable, end_job, read_form, save_upload, upload_name
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
    form = await read_form(request, limits.max_upload_mb, "name and file")
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
    src = upload_dir / upload_name(upload.filename)
    model = request.app.state.manager.engines.avatar

    def progress(fraction: float, message: str) -> None:
        job.fraction, job.message = fraction, message

    def work() -> AvatarInfo:
        try:
            size = save_upload(upload, src)
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
    preparing.add_done_callback(
        lambda done: end_job(jobs, job, done, AvatarError, _failure, "preparing avatar")
    )
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

"""REST routes for voices: the stock voices per language and the user voices
(list, a spoken sample of each), adding one from an uploaded clip (decoded,
checked and matched to a Kokoro voice in a worker thread: tools/voice_library.py),
its progress, removing one. Adding, removing and the progress need the
server's API key; the list and the samples are open. See docs/api.md."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from server.auth import require_api_key
from server.uploads import JobTable, end_job, read_form, save_upload, upload_name
from tools.voice_library import (
    LANGS,
    SAMPLE_TEXT,
    VoiceError,
    VoiceInfo,
    VoiceLimits,
    VoiceTooLarge,
    add_voice,
    check_new_name,
    list_voices,
    remove_voice,
    sample_path,
    stock_lang,
    write_sample,
)

log = logging.getLogger(__name__)
router = APIRouter()

# One voice at a time: decoding, the VAD and the matching are CPU-heavy and
# sessions share the cores. Samples likewise, one synthesis at a time.
_ADD_LOCK = threading.Lock()
_SAMPLE_LOCK = threading.Lock()
# What the listing shows of another backend's voice, beside name, lang, sample.
DESCRIBED = ("gender", "description", "backend")


def _jobs(request: Request) -> JobTable:
    state = request.app.state
    if not hasattr(state, "voice_jobs"):
        state.voice_jobs = JobTable()
    return state.voice_jobs


def _weights(request: Request) -> Path:
    return Path(request.app.state.manager.config.weights_path)


def _error(exc: VoiceError) -> HTTPException:
    return HTTPException(getattr(exc, "status", 400), str(exc))


def _sample_url(name: str) -> str:
    return f"/api/voices/{name}/sample"


def _described(tts: Any, name: str) -> dict[str, Any] | None:
    """What another TTS backend says of its voice (Piper's ``joe``: its
    languages, gender, a description), or None."""
    return tts.describe_voice(name) if tts is not None else None


def _realtime(request: Request) -> dict[str, dict[str, float]]:
    """The plan's live real-time factor by language and TTS backend
    (server/machine.py ``voice_realtime``); empty without a calibration."""
    machine = getattr(request.app.state, "machine", None) or {}
    return (machine.get("plan") or {}).get("voice_realtime") or {}


def _keeps_up(realtime: dict[str, dict[str, float]], lang: str, backend: str) -> dict[str, bool]:
    """``keeps_up``: whether this machine makes the voice's replies at least as
    fast as they play (one conversation alone); absent where not measured."""
    factor = realtime.get(lang, {}).get(backend)
    return {} if factor is None else {"keeps_up": factor >= 1}


def _voice_lang(name: str, users: dict[str, VoiceInfo], tts: Any = None) -> str | None:
    user = users.get(name)
    if user is not None:
        return user.lang
    described = _described(tts, name)
    return described["langs"][0] if described else stock_lang(name)


def _catalogue(request: Request) -> tuple[list[str], dict[str, VoiceInfo]]:
    """The TTS's voices and, among them, the user voices on disk."""
    tts = request.app.state.manager.engines.tts
    names = list(tts.voices())
    on_disk = {info.name: info for info in list_voices(_weights(request))}
    return names, {n: on_disk[n] for n in names if n in on_disk}


@router.get("/api/voices")
async def get_voices(request: Request) -> dict[str, Any]:
    """The stock voices of each language (with a sample URL), the user voices
    (with how close their match came) and uploads still being matched."""
    names, users = await asyncio.to_thread(_catalogue, request)
    tts_config = request.app.state.manager.config.tts
    stock: dict[str, list[dict[str, Any]]] = {lang: [] for lang in LANGS}
    tts = request.app.state.manager.engines.tts
    realtime = _realtime(request)
    for name in names:
        described = _described(tts, name)
        if described is not None:  # another backend's voice, listed under each of its languages
            for lang in described["langs"]:
                if lang in stock:
                    entry = {"name": name, "lang": lang, "sample": _sample_url(name)}
                    entry.update({k: described[k] for k in DESCRIBED})
                    stock[lang].append({**entry, **_keeps_up(realtime, lang, described["backend"])})
            continue
        lang = stock_lang(name)
        if name not in users and lang in stock:
            entry = {"name": name, "lang": lang, "sample": _sample_url(name)}
            stock[lang].append({**entry, **_keeps_up(realtime, lang, "main")})
    user = [
        {
            **info.to_dict(),
            "sample": _sample_url(info.name),
            "ready": True,
            **_keeps_up(realtime, info.lang, "main"),
        }
        for info in users.values()
    ]
    for job in _jobs(request).running():
        if job.name not in users:
            user.append({"name": job.name, "ready": False})
    return {
        "default": {"en": tts_config.voice_en, "zh": tts_config.voice_zh},
        "stock": stock,
        "user": user,
    }


@router.get("/api/voices/{name}/sample")
async def get_sample(name: str, request: Request) -> FileResponse:
    """A short WAV of the voice saying a sentence in its language, made once
    and cached under weights/voice_samples/."""
    names, users = await asyncio.to_thread(_catalogue, request)
    if name not in names:
        raise HTTPException(404, f"no voice {name!r}")
    tts = request.app.state.manager.engines.tts
    lang = _voice_lang(name, users, tts) or "en"
    path = sample_path(_weights(request), name, users.get(name))

    def make() -> None:
        with _SAMPLE_LOCK:
            if path.is_file():  # made by a request that held the lock before
                return
            speech = tts.synthesize(SAMPLE_TEXT[lang], lang, voice=name)
            audio = np.asarray(speech.audio, np.float32)
            write_sample(path, audio, int(speech.sample_rate))

    if not path.is_file():
        try:
            await asyncio.to_thread(make)
        except Exception as exc:
            log.exception("sample of voice %r failed", name)
            raise HTTPException(500, f"the sample could not be made: {exc}") from None
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-cache"})


@router.get("/api/voices/{name}/progress", dependencies=[Depends(require_api_key)])
async def get_progress(name: str, request: Request) -> dict:
    job = _jobs(request).get(name)
    if job is None:
        raise HTTPException(404, f"no voice being added as {name!r}")
    return job.to_dict()


@router.delete("/api/voices/{name}", dependencies=[Depends(require_api_key)])
async def delete_voice(name: str, request: Request) -> dict:
    job = _jobs(request).get(name)
    if job is not None and job.state == "running":
        raise HTTPException(409, f"voice {name!r} is being added")
    try:
        await asyncio.to_thread(remove_voice, name, _weights(request))
    except VoiceError as exc:
        raise _error(exc) from None
    _jobs(request).forget(name)
    request.app.state.manager.engines.forget_voice_lines(name)
    return {"removed": name}


@router.post("/api/voices", status_code=201, dependencies=[Depends(require_api_key)])
async def add(request: Request) -> JSONResponse:
    """multipart/form-data: ``name``, ``audio`` (a clip of one person speaking,
    3-30 s of speech, any common format), optional ``text`` (its transcript)
    and ``lang`` (en|zh; else from the transcript, else recognized). Waits for
    the match and answers 201 with the voice; poll ``/api/voices/{name}/progress``."""
    limits = VoiceLimits.from_config(request.app.state.manager.config)
    max_bytes = int(limits.max_upload_mb * 1024 * 1024)
    form = await read_form(request, limits.max_upload_mb, "name and audio")
    try:
        return await _add_from_form(request, form, limits, max_bytes)
    finally:
        await form.close()


def _text_field(form: Any, key: str) -> str | None:
    value = form.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPException(400, f"form field {key!r} must be text")
    return value


async def _add_from_form(
    request: Request, form: Any, limits: VoiceLimits, max_bytes: int
) -> JSONResponse:
    too_large = f"the upload is too large (at most {limits.max_upload_mb:g} MB)"
    name = _text_field(form, "name")
    upload = form.get("audio")
    text = _text_field(form, "text")
    lang = _text_field(form, "lang")
    if name is None:
        raise HTTPException(400, "missing form field 'name'")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "missing form field 'audio' (the clip)")
    if lang not in (None, *LANGS):
        raise HTTPException(400, f"lang must be 'en' or 'zh', not {lang!r}")
    weights = _weights(request)
    try:
        await asyncio.to_thread(check_new_name, name, weights)
    except VoiceError as exc:
        raise _error(exc) from None
    jobs = _jobs(request)
    current = jobs.get(name)
    if current is not None and current.state == "running":
        raise HTTPException(409, f"voice {name!r} is already being added")
    job = jobs.start(name)

    upload_dir = Path(tempfile.mkdtemp(prefix="videochat-voice-"))
    src = upload_dir / upload_name(upload.filename)
    asr = request.app.state.manager.engines.asr

    def progress(fraction: float, message: str) -> None:
        job.fraction, job.message = fraction, message

    def recognize(audio: np.ndarray) -> str:
        return str(asr.transcribe(audio).language)

    def work() -> VoiceInfo:
        try:
            size = save_upload(upload, src)
            if size > max_bytes:
                raise VoiceTooLarge(too_large)
            if size == 0:
                raise VoiceError("the uploaded file is empty")
            with _ADD_LOCK:
                return add_voice(
                    name,
                    src,
                    weights,
                    text=text,
                    lang=lang,
                    recognize=recognize,
                    limits=limits,
                    progress=progress,
                )
        finally:
            shutil.rmtree(upload_dir, ignore_errors=True)

    # The worker thread cannot be stopped: if the client leaves, the job still
    # ends when the thread does, and then expires (as for avatars).
    adding = asyncio.ensure_future(asyncio.to_thread(work))
    adding.add_done_callback(
        lambda done: end_job(jobs, job, done, VoiceError, _failure, "adding voice")
    )
    try:
        info = await asyncio.shield(adding)
    except VoiceError as exc:
        raise _error(exc) from None
    except RuntimeError as exc:  # tools/voice_match.py missing or its model absent
        raise HTTPException(503, _failure(exc)) from None
    except Exception as exc:
        raise HTTPException(500, _failure(exc)) from None
    body = info.to_dict()
    body.update({"sample": _sample_url(info.name), "ready": True})
    return JSONResponse(body, status_code=201)


def _failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VoiceError) else f"voice matching failed: {exc}"

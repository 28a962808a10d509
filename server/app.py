"""The FastAPI app: the page, signalling (/offer) and the session REST API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from aiortc import RTCPeerConnection
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from models.base import BackendUnavailable
from models.registry import Engines, load_engines
from pipelines.planner import ReplyCosts, ReplyPlanner
from pipelines.session import Session
from pipelines.splitter import warm_up as warm_up_splitter
from server.avatars_api import router as avatars_router
from server.avatars_api import sync_with_disk
from server.config import REPO_ROOT, Config
from server.machine import apply_plan, plan_machine
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.rtc import answer_offer, encode_vp8_without_denoiser, offer_loopback_only

log = logging.getLogger(__name__)
STATIC = REPO_ROOT / "static"
DOCS = REPO_ROOT / "docs"
RETRY_AFTER_S = 30  # what a full server tells a client to wait


class Offer(BaseModel):
    sdp: str = Field(min_length=1, max_length=100_000)
    type: Literal["offer"]
    avatar: str | None = None
    voice: str | None = None
    lang: Literal["en", "zh", "auto"] = "auto"


class Answer(BaseModel):
    sdp: str
    type: str
    session_id: str


class SessionManager:
    """All live sessions of this process, each with its peer connection."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        metrics: Metrics | None = None,
        planner: ReplyPlanner | None = None,
    ) -> None:
        self.engines = engines
        # One for the process: it learns this machine's load across sessions.
        self.planner = planner or ReplyPlanner.immediate()
        self.config = config
        self.metrics = metrics or Metrics()
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, RTCPeerConnection] = {}

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return session

    @property
    def capacity(self) -> int:
        return int(self.config.server.max_sessions)

    async def open(self, offer: Offer) -> Answer:
        if len(self.sessions) >= self.capacity:
            raise HTTPException(
                503,
                f"This server is busy: it holds {self.capacity} conversation"
                f"{'s' if self.capacity != 1 else ''} at a time on this machine. "
                f"Try again in a minute.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if offer.voice and offer.voice not in self.engines.tts.voices():
            raise HTTPException(400, f"unknown voice {offer.voice!r}")
        if offer.avatar and offer.avatar not in self.engines.avatar.avatars():
            await sync_with_disk(self.config, self.engines.avatar)  # added by the CLI?
        try:
            session = Session(
                self.engines,
                self.config,
                lang=offer.lang,
                avatar=offer.avatar,
                voice=offer.voice,
                on_turn_end=self.metrics.observe_turn,
                planner=self.planner,
            )
        except KeyError as exc:
            raise HTTPException(400, str(exc.args[0] if exc.args else exc)) from None
        try:
            pc = await answer_offer(
                session, offer.sdp, offer.type, self.config.server.mic_prefetch_packets
            )
        except Exception as exc:  # aiortc raises ValueError & co. on bad SDP
            await session.close()
            raise HTTPException(400, f"malformed offer: {exc}") from None
        self.sessions[session.id] = session
        self.peers[session.id] = pc
        self.metrics.session_opened(len(self.sessions))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

        log.info(
            "session %s opened (lang=%s avatar=%s)", session.id, offer.lang, session.avatar_name
        )
        local = pc.localDescription
        return Answer(sdp=local.sdp, type=local.type, session_id=session.id)

    async def close(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        pc = self.peers.pop(session_id, None)
        if session is None:
            return False
        await session.close()
        self.metrics.session_closed(session, len(self.sessions))
        if pc is not None:
            await pc.close()
        log.info("session %s closed after %d turns", session_id, len(session.turns))
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid) for sid in list(self.sessions)))


def create_app(config: Config, engines: Engines | None = None) -> FastAPI:
    """Build the app. ``engines`` may be given (tests); otherwise models load at startup."""
    if config.server.loopback_only:
        offer_loopback_only()
    encode_vp8_without_denoiser()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = engines
        if loaded is None:
            # Plan for this machine before the models load with the chosen settings.
            machine = await asyncio.to_thread(plan_machine, config)
            app.state.machine = machine.public()
            metrics.set_machine(app.state.machine)
            planner = ReplyPlanner(
                ReplyCosts.from_calibration(
                    machine.calibration,
                    tts_threads=int(config.tts.threads),
                    llm_threads=int(config.llm.threads),
                    parallel_calls=int(config.tts.parallel_calls),
                )
            )
        else:
            apply_plan(config, None)  # tests hand in their models: built-in defaults
            planner = None
        if loaded is None:
            try:
                loaded = await load_engines(config)
            except BackendUnavailable as exc:
                log.error("%s", exc)
                raise SystemExit(f"cannot start: {exc}") from None
        warm_up_splitter()  # jieba's dictionary, before the first Chinese turn
        app.state.manager = SessionManager(loaded, config, metrics, planner)
        host = config.server.host if config.server.host != "0.0.0.0" else "127.0.0.1"
        log.info("ready: open http://%s:%d in Chromium or Firefox", host, config.server.port)
        yield
        await app.state.manager.close_all()
        if engines is None:
            await loaded.close()

    app = FastAPI(title="videochat", lifespan=lifespan)
    metrics = Metrics()  # this app's own registry
    app.state.metrics = metrics
    metrics.track_sessions(
        lambda: list(app.state.manager.sessions.values()) if hasattr(app.state, "manager") else []
    )

    def manager(request: Request) -> SessionManager:
        return request.app.state.manager

    @app.get("/health")
    async def health(request: Request) -> dict:
        sessions = manager(request)
        return {
            "status": "ok",
            "sessions": len(sessions.sessions),
            "capacity": sessions.capacity,
            "machine": getattr(request.app.state, "machine", None),
        }

    @app.get("/api/machine")
    async def machine_info(request: Request) -> dict:
        """This machine's calibration, what it holds and the settings chosen."""
        machine = getattr(request.app.state, "machine", None)
        if machine is None:
            raise HTTPException(
                404, "no calibration: this server was started with its models given"
            )
        return machine

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/offer", response_model=Answer)
    async def offer(body: Offer, request: Request) -> Answer:
        return await manager(request).open(body)

    @app.get("/api/sessions")
    async def list_sessions(request: Request) -> list[dict]:
        return [s.summary() for s in manager(request).sessions.values()]

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: str, request: Request) -> dict:
        return manager(request).get(session_id).summary(detail=True)

    @app.delete("/api/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> JSONResponse:
        if not await manager(request).close(session_id):
            raise HTTPException(404, f"no session {session_id!r}")
        return JSONResponse({"closed": session_id})

    # /api/avatars: list, add (upload), progress, remove.
    app.include_router(avatars_router)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A malformed body is the client's mistake: 400 with what was wrong.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg')}"
            for err in exc.errors()
        )
        return JSONResponse({"detail": f"bad request: {problems}"}, status_code=400)

    # Notes and benchmark plots (docs/bench_*.png), read-only. /docs itself
    # stays FastAPI's API explorer; only /docs/<file> reaches this mount.
    app.mount("/docs", StaticFiles(directory=DOCS, check_dir=False), name="docs")
    # The page and its assets; relative URLs in index.html resolve here.
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app

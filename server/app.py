"""The FastAPI app: the page, signalling (/offer) and the session REST API."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from core.config import REPO_ROOT, Config, ConfigError
from models.base import BackendUnavailable
from models.registry import Engines, load_engines
from pipelines.events import MAX_TEXT_CHARS, EndReason, protocol_schema
from pipelines.planner import ReplyCosts, ReplyPlanner
from pipelines.session import Session
from pipelines.splitter import warm_up as warm_up_splitter
from server.auth import load_or_create_api_key, require_api_key
from server.avatars_api import router as avatars_router
from server.cluster import ClusterRegistry, NodeInfo, keep_beating
from server.guards import BodyLimit, ClientRateLimit, SessionCORS
from server.machine import apply_plan, plan_machine, tts_spot_check
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.rtc import encode_vp8_without_denoiser, offer_loopback_only
from server.sessions import Answer, Minted, Offer, SessionManager, SessionOptions
from server.voices_api import router as voices_router

__all__ = ["SessionManager", "create_app"]

log = logging.getLogger(__name__)
STATIC = REPO_ROOT / "static"
DOCS = REPO_ROOT / "docs"


def freeze_startup_objects() -> None:
    """Move everything loaded at start-up (370k objects: models' Python side,
    jieba's dictionary) out of the garbage collector's reach. A full
    collection over them took 0.8-1.6 s on a 2-core machine and blocks the
    event loop that paces media; Python runs one whenever enough objects have
    survived, and put off so long, conversations' garbage piled up in between
    (RSS +14.6 % over 100 connect/disconnect cycles, `make soak`)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "%d start-up objects frozen out of garbage collection (%.2f s)",
        gc.get_freeze_count(),
        time.perf_counter() - started,
    )


async def passed_on(sessions: SessionManager, session_id: str, request: Request) -> Response | None:
    """A call about one session (the API key or that session's token): in a
    cluster, the answer of the node that runs it when that is another one;
    None when this node answers."""
    await sessions.authorize(session_id, request)
    return await sessions.elsewhere(session_id, request)


def connected(sessions: SessionManager, session_id: str) -> Session:
    """The running session, or 409 for one that exists but is not connected."""
    if session_id not in sessions.live:
        raise HTTPException(409, f"session {session_id!r} is not connected")
    return sessions.get(session_id)


class SayRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


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
                ),
                max_reply_audio_s=float(config.llm.max_reply_audio_s),
            )
        else:
            apply_plan(config, None)  # tests hand in their models: built-in defaults
            planner = None
        if loaded is None:
            try:
                loaded = await load_engines(config)
            except (BackendUnavailable, ConfigError) as exc:
                log.error("%s", exc)
                raise SystemExit(f"cannot start: {exc}") from None
        if planner is not None and planner.costs is not None:
            # The cached calibration may be from a freer (or busier) hour of
            # this host: the planner starts from today's TTS speed.
            check = await asyncio.to_thread(
                tts_spot_check, loaded.tts, machine.calibration, int(config.tts.threads)
            )
            planner.slowdown = check.ratio
            app.state.machine["spot_check"] = check.to_dict()
            (log.warning if check.slower else log.info)("%s", check.describe())
        warm_up_splitter()  # jieba's dictionary, before the first Chinese turn
        freeze_startup_objects()
        cluster = ClusterRegistry(config) if config.cluster.redis_url else None
        app.state.manager = SessionManager(loaded, config, metrics, planner, cluster)
        beating = None
        if cluster is not None:
            beating = asyncio.create_task(keep_beating(cluster, app.state.manager))
            log.info(
                "cluster: node %s at %s, registry %s",
                cluster.node_id,
                cluster.node_url,
                config.cluster.redis_url,
            )
        host = config.server.host if config.server.host != "0.0.0.0" else "127.0.0.1"
        if key_made:
            log.warning(
                "made an API key (kept in %s; send it as 'Authorization: Bearer <key>' to "
                "manage sessions and avatars): %s",
                config.weights_path / "api_key",
                app.state.api_key,
            )
        elif not config.server.api_key:
            log.info("API key: in %s", config.weights_path / "api_key")
        log.info("ready: open http://%s:%d in Chromium or Firefox", host, config.server.port)
        yield
        await app.state.manager.drain()  # SIGTERM: no new sessions, live ones told
        if beating is not None and cluster is not None:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
            await cluster.leave()
        if engines is None:
            await loaded.close()

    if config.cluster.redis_url and not config.server.api_key:
        # Every node must accept the same key; a key made per node would not.
        raise ConfigError(
            "cluster.redis_url is set: give every node the same server.api_key "
            "(e.g. VIDEOCHAT_SERVER__API_KEY)"
        )
    app = FastAPI(
        title="videochat",
        summary="A real-time digital human: sessions over REST, media over WebRTC.",
        lifespan=lifespan,
    )
    app.state.api_key, key_made = load_or_create_api_key(config.server.api_key, config.weights_path)
    # Each added middleware wraps the ones before: CORS (outermost) answers
    # preflights, then the rate and body-size limits.
    app.add_middleware(BodyLimit, max_bytes=config.server.max_body_kb * 1024)
    app.add_middleware(
        ClientRateLimit, rate=config.server.http_requests_per_s, burst=config.server.http_burst
    )
    app.add_middleware(
        SessionCORS,
        origins=lambda: app.state.manager.origins() if hasattr(app.state, "manager") else set(),
    )
    metrics = Metrics()  # this app's own registry
    app.state.metrics = metrics
    metrics.track_sessions(
        lambda: list(app.state.manager.sessions.values()) if hasattr(app.state, "manager") else []
    )

    def manager(request: Request) -> SessionManager:
        return request.app.state.manager

    @app.get("/health")
    async def health(request: Request) -> dict:
        """ "ok", or "degraded" with the failing stages (e.g. the LLM endpoint)."""
        sessions = manager(request)
        failing = sessions.engines.health.report()
        cluster = sessions.cluster
        if cluster is not None and not cluster.available:
            failing = [*failing, "cluster registry (Redis)"]
        return {
            "status": "degraded" if failing else "ok",
            "failing": failing,
            "sessions": len(sessions.live),
            "capacity": sessions.capacity,
            "draining": sessions.draining,
            "modes": sessions.modes(),
            "node": sessions.node_id,
            "machine": getattr(request.app.state, "machine", None),
        }

    @app.get("/api/cluster", dependencies=[Depends(require_api_key)])
    async def cluster_info(request: Request) -> dict:
        """The cluster's nodes as the registry has them (API key); a single
        node lists itself."""
        sessions = manager(request)
        if sessions.cluster is None:
            this = {
                "id": None,
                "url": None,
                "capacity": sessions.capacity,
                "sessions": len(sessions.live),
                "alive": True,
            }
            return {"cluster": False, "registry": None, "nodes": [this]}
        cluster = sessions.cluster
        try:
            nodes = [node.public() for node in await cluster.nodes()]
            registry = "ok"
        except HTTPException:  # Redis is away: this node can only speak for itself
            this = NodeInfo(
                cluster.node_id, cluster.node_url, sessions.capacity, len(sessions.live)
            )
            nodes, registry = [this.public()], "unreachable"
        return {"cluster": True, "registry": registry, "node": cluster.node_id, "nodes": nodes}

    @app.get("/api/machine")
    async def machine_info(request: Request) -> dict:
        """This machine's calibration, what it holds and the settings chosen."""
        machine = getattr(request.app.state, "machine", None)
        if machine is None:
            raise HTTPException(
                404, "no calibration: this server was started with its models given"
            )
        return machine

    @app.get("/api/rtc")
    async def rtc_config() -> dict:
        """The ICE servers the page's peer should use (`server.ice_servers`;
        none when loopback-only). Credentials here are visible to every visitor."""
        if config.server.loopback_only:
            return {"iceServers": []}
        return {"iceServers": [s.model_dump(exclude_none=True) for s in config.server.ice_servers]}

    @app.get("/api/protocol")
    async def protocol() -> dict:
        """JSON Schema of the data channel: client messages and server events."""
        return protocol_schema()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/offer", response_model=Answer)
    async def offer(body: Offer, request: Request) -> Answer | Response:
        """Answer a browser's WebRTC offer. With a session token (body or Bearer
        header): that minted session. Without one: a new session, from the
        server's own page only (``server.open_page``)."""
        return await manager(request).open(body, request)

    @app.post(
        "/api/sessions",
        status_code=201,
        response_model=Minted,
        dependencies=[Depends(require_api_key)],
    )
    async def create_session(options: SessionOptions, request: Request) -> Minted:
        """Mint a session for a browser (API key): its options and a token that
        connects it (``POST /offer``) within ``server.session_token_ttl_s``."""
        return await manager(request).mint(options)

    @app.get("/api/sessions", dependencies=[Depends(require_api_key)])
    async def list_sessions(request: Request) -> list[dict]:
        return await manager(request).summaries()

    # Calls about one session: the API key or that session's token; in a
    # cluster, passed to the node that runs the session (passed_on()).
    @app.get("/api/sessions/{session_id}", response_model=None)
    async def get_session(session_id: str, request: Request) -> dict | Response:
        """One session with its turns and history."""
        sessions = manager(request)
        forwarded = await passed_on(sessions, session_id, request)
        return forwarded or await sessions.summary(session_id, detail=True)

    @app.get("/api/sessions/{session_id}/transcript", response_model=None)
    async def get_transcript(session_id: str, request: Request) -> dict | Response:
        """What the user said and what the avatar said, turn by turn."""
        sessions = manager(request)
        forwarded = await passed_on(sessions, session_id, request)
        if forwarded is not None:
            return forwarded
        return {"id": session_id, "turns": await sessions.transcript(session_id)}

    @app.post("/api/sessions/{session_id}/say", status_code=202, response_model=None)
    async def say(session_id: str, body: SayRequest, request: Request) -> dict | Response:
        """Make the avatar say a text (it interrupts what it is saying)."""
        sessions = manager(request)
        forwarded = await passed_on(sessions, session_id, request)
        if forwarded is not None:
            return forwarded
        session = connected(sessions, session_id)
        try:
            turn = session.say(body.text)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"id": session_id, "turn": turn.index}

    @app.post("/api/sessions/{session_id}/interrupt", response_model=None)
    async def interrupt(session_id: str, request: Request) -> dict | Response:
        sessions = manager(request)
        forwarded = await passed_on(sessions, session_id, request)
        if forwarded is not None:
            return forwarded
        connected(sessions, session_id).interrupt("api")
        return {"id": session_id, "interrupted": True}

    @app.delete("/api/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> Response:
        """Hang up (API key, or the session's own token)."""
        sessions = manager(request)
        forwarded = await passed_on(sessions, session_id, request)
        if forwarded is not None:
            return forwarded
        if not await sessions.close(session_id, EndReason.DELETED):
            raise HTTPException(404, f"no session {session_id!r}")
        return JSONResponse({"closed": session_id})

    # /api/avatars: list, add (upload), progress, remove.
    app.include_router(avatars_router)
    # /api/voices: stock and user voices, samples, add (upload), progress, remove.
    app.include_router(voices_router)

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

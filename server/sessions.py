"""Sessions as a resource: minted with options and a token, admitted against
capacity, connected over WebRTC, ended for a reason, reported to a webhook.

The life of a session:

1. ``mint`` (``POST /api/sessions``, API key): options and a short-lived token;
   the session waits for its browser. The page's own flow skips this step.
2. ``open`` (``POST /offer``): the slot is reserved before the first ``await``
   (so concurrent offers cannot overrun capacity), the peer answered, and a
   watcher started: no connection within ``handshake_timeout_s``, no speech
   or text for ``idle_timeout_s``, or ``max_duration_s`` reached, ends it.
3. ``close`` with a reason (hang-up, deleted, idle, ...): the page is told
   (an ``ended`` event), the peer closed, the webhook called. A session that
   ended for a resumable reason (its peer failed, its node was lost) is kept
   ``cluster.reconnect_window_s``: an offer with its token continues it, with
   its history and transcript.

With ``cluster.redis_url`` the records of waiting and ended sessions live in
Redis (server/cluster.py) instead of this process: any node mints (placing
the session on the least loaded node), answers the REST API (passing calls
for a session another node runs to that node) and takes a reconnect.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from aiortc import RTCPeerConnection
from fastapi import HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from core.config import Config
from models.base import ChatMessage
from models.registry import Engines
from pipelines.events import MAX_TEXT_CHARS, EndedEvent, EndReason
from pipelines.planner import ReplyPlanner
from pipelines.session import Session
from pipelines.turn import Turn
from server.auth import bearer, is_api_key, new_session_token, unauthorized
from server.avatars_api import sync_with_disk
from server.cluster import FORWARDED_HEADER, ClusterRegistry, RegistryUnavailable, SessionRecord
from server.metrics import Metrics
from server.rtc import answer_offer, check_offer
from tools.avatar_library import read_info

log = logging.getLogger(__name__)
RETRY_AFTER_S = 30  # what a full server tells a client to wait
WATCH_EVERY_S = 0.5  # how often lifetimes are checked
ENDED_FLUSH_S = 0.2  # lets the "ended" event leave before the peer closes
WEBHOOK_TIMEOUT_S = 5.0
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
Mode = Literal["cascade", "end-to-end"]
# Ends a reconnect with the same token may continue: the peer failed, its
# node died, or the peer closed without a DELETE (a browser whose network went
# away closes its peer; the page's and the widget's own hang-up DELETE first).
RESUMABLE = frozenset({EndReason.NODE_LOST, EndReason.CONNECTION_FAILED, EndReason.HANGUP})


class SessionOptions(BaseModel):
    """What an embedding app's backend chooses for one session."""

    model_config = ConfigDict(extra="forbid")

    avatar: str | None = Field(None, max_length=64)
    voice: str | None = Field(None, max_length=64)
    lang: Literal["en", "zh", "auto"] = "auto"
    # "end-to-end": the speech-to-speech model (s2s.backend) takes the turns;
    # "cascade": ASR + LLM + TTS. None: end-to-end when s2s.backend is set.
    mode: Mode | None = None
    system_prompt: str | None = Field(None, min_length=1, max_length=4000)
    greeting: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    max_duration_s: float | None = Field(None, gt=0, le=86_400)
    idle_timeout_s: float | None = Field(None, gt=0, le=86_400)
    allowed_origin: str | None = Field(None, max_length=200)
    webhook_url: HttpUrl | None = None

    @field_validator("allowed_origin")
    @classmethod
    def _an_origin(cls, value: str | None) -> str | None:
        if value is not None and not _ORIGIN.match(value):
            raise ValueError("an origin is scheme://host[:port], e.g. https://app.example.com")
        return value


class Minted(BaseModel):
    session_id: str
    token: str
    expires_at: float  # Unix time: connect before this
    node: str | None = None  # in a cluster: the node the session was placed on
    connect_url: str | None = None  # ... and where its browser connects (POST /offer)


class Offer(BaseModel):
    sdp: str = Field(min_length=1, max_length=100_000)
    type: Literal["offer"]
    token: str | None = Field(None, max_length=200)
    avatar: str | None = Field(None, max_length=64)
    voice: str | None = Field(None, max_length=64)
    lang: Literal["en", "zh", "auto"] = "auto"
    mode: Mode | None = None  # as in SessionOptions


class Answer(BaseModel):
    sdp: str
    type: str
    session_id: str
    token: str  # this session's own credential (transcript, say, hang-up)
    node: str | None = None  # in a cluster: the node that runs the session


@dataclass
class _Resume:
    """What a session that ended for a resumable reason continues with."""

    reason: str
    ended_at: float
    transcript: list[dict[str, Any]]
    history: list[ChatMessage]


@dataclass
class _Waiting:
    """A minted session that has not connected yet, or one that may reconnect."""

    options: SessionOptions
    token: str
    expires_at: float  # Unix time
    resume: _Resume | None = None


@dataclass
class _Live:
    session: Session
    pc: RTCPeerConnection
    options: SessionOptions
    token: str
    opened: float = field(default_factory=time.monotonic)
    watcher: asyncio.Task[None] | None = None
    earlier: list[dict[str, Any]] = field(default_factory=list)  # turns before a reconnect

    def transcript(self) -> list[dict[str, Any]]:
        return [*self.earlier, *(_transcript_entry(t) for t in self.session.turns)]


def _transcript_entry(turn: Turn) -> dict[str, Any]:
    return {"user": turn.user_text, "avatar": turn.heard_text, "source": turn.source}


def release_free_heap() -> None:
    """glibc's malloc_trim(0): return freed heap pages to the system (a no-op
    where the C library has no such call)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def same_origin(origin: str, request: Request) -> bool:
    host = request.headers.get("host", "")
    return origin.rstrip("/") == f"{request.url.scheme}://{host}"


class SessionManager:
    """All live sessions of this process, each with its peer connection."""

    def __init__(
        self,
        engines: Engines,
        config: Config,
        metrics: Metrics | None = None,
        planner: ReplyPlanner | None = None,
        cluster: ClusterRegistry | None = None,
    ) -> None:
        self.engines = engines
        # One for the process: it learns this machine's load across sessions.
        self.planner = planner or ReplyPlanner.immediate()
        self.config = config
        self.metrics = metrics or Metrics()
        self.cluster = cluster
        self.live: dict[str, _Live] = {}
        # Single node: minted sessions not connected yet, and resumable ones.
        # In a cluster these records are in Redis.
        self.waiting: dict[str, _Waiting] = {}
        self._reserved = 0  # offers admitted and still being answered
        self.draining = False
        self._background: set[asyncio.Task[Any]] = set()
        self._cluster_origins: set[str] = set()  # sessions' origins, read from Redis
        self._closing: set[str] = set()  # closes under way (their peers' "closed" comes too)

    # ------------------------------------------------------------- views
    @property
    def sessions(self) -> dict[str, Session]:
        return {sid: live.session for sid, live in self.live.items()}

    @property
    def capacity(self) -> int:
        return int(self.config.server.max_sessions)

    @property
    def node_id(self) -> str | None:
        return self.cluster.node_id if self.cluster is not None else None

    def modes(self) -> list[str]:
        """The session modes this server offers (the page's switch)."""
        return ["cascade", "end-to-end"] if self.engines.s2s is not None else ["cascade"]

    def avatar_names(self) -> list[str]:
        return list(self.engines.avatar.avatars())

    def voice_names(self) -> list[str]:
        return list(self.engines.tts.voices())

    def get(self, session_id: str) -> Session:
        live = self.live.get(session_id)
        if live is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return live.session

    def _local_summary(self, live: _Live, detail: bool) -> dict[str, Any]:
        info = live.session.summary(detail=detail)
        info["turns"] += len(live.earlier)
        if self.cluster is not None:
            info["node"] = self.cluster.node_id
        return info

    async def summary(self, session_id: str, detail: bool = False) -> dict[str, Any]:
        live = self.live.get(session_id)
        if live is not None:
            return self._local_summary(live, detail)
        if self.cluster is not None:
            return (await self._record(session_id)).summary(detail=detail)
        waiting = self.waiting.get(session_id)
        if waiting is None:
            raise HTTPException(404, f"no session {session_id!r}")
        if waiting.resume is None:
            return {"id": session_id, "state": "waiting", "expires_at": waiting.expires_at}
        info: dict[str, Any] = {
            "id": session_id,
            "state": "ended",
            "reason": waiting.resume.reason,
            "ended_at": waiting.resume.ended_at,
            "resumable": True,
            "turns": len(waiting.resume.transcript),
        }
        if detail:
            info["history"] = waiting.resume.history
        return info

    async def summaries(self) -> list[dict[str, Any]]:
        """Every session (API key): this node's, or in a cluster every node's
        as the registry has them (the same list from every node)."""
        if self.cluster is not None:
            return [record.summary() for record in await self.cluster.records()]
        return [await self.summary(sid) for sid in (*self.live, *self.waiting)]

    async def transcript(self, session_id: str) -> list[dict[str, Any]]:
        live = self.live.get(session_id)
        if live is not None:
            return live.transcript()
        if self.cluster is not None:
            return (await self._record(session_id)).transcript
        waiting = self.waiting.get(session_id)
        if waiting is None or waiting.resume is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return waiting.resume.transcript

    async def _record(self, session_id: str) -> SessionRecord:
        assert self.cluster is not None
        record = await self.cluster.get(session_id)
        if record is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return record

    def origins(self) -> set[str]:
        """Origins that may call the API from a browser right now."""
        found = set(self.config.server.allowed_origins) | self._cluster_origins
        for entry in (*self.live.values(), *self.waiting.values()):
            if entry.options.allowed_origin:
                found.add(entry.options.allowed_origin)
        return found

    # ------------------------------------------------------------ access
    async def authorize(self, session_id: str, request: Request) -> None:
        """The API key, or this session's own token: else 401/403/404."""
        credential = bearer(request)
        if credential is None:
            raise unauthorized("this session")
        if is_api_key(credential, request):
            if session_id in self.live or session_id in self.waiting:
                return
            if self.cluster is not None and await self.cluster.exists(session_id):
                return
            raise HTTPException(404, f"no session {session_id!r}")
        owner = await self._session_of(credential)
        if owner is None:
            raise HTTPException(401, "unknown or expired token", {"WWW-Authenticate": "Bearer"})
        if owner != session_id:
            raise HTTPException(403, "this token belongs to another session")

    async def _session_of(self, token: str) -> str | None:
        for sid, live in self.live.items():
            if live.token == token:
                return sid
        if self.cluster is not None:
            return await self.cluster.session_of(token)
        self._forget_expired()
        return next((sid for sid, w in self.waiting.items() if w.token == token), None)

    async def elsewhere(self, session_id: str, request: Request) -> Response | None:
        """In a cluster: the answer of the node that runs ``session_id``, when
        that is another live node (None: this node answers)."""
        if self.cluster is None or session_id in self.live:
            return None
        record = await self._record(session_id)
        if record.state != "live" or record.node == self.cluster.node_id:
            return None
        if await self.cluster.node_url_of(record.node) is None:
            return None  # its node is gone: the record answers until the reaper ends it
        try:
            return await self.cluster.forward(request, record.node)
        except HTTPException:
            if request.method != "GET":
                raise
            return None  # its node does not answer (dying?): the record does

    def _forget_expired(self) -> None:
        now = time.time()
        for sid in [sid for sid, w in self.waiting.items() if w.expires_at <= now]:
            waiting = self.waiting.pop(sid)
            if waiting.resume is None:
                log.info("session %s: token expired unused", sid)
            else:
                log.info("session %s: reconnect window over", sid)

    def _origin_allowed(self, origin: str, options: SessionOptions, request: Request) -> bool:
        return (
            same_origin(origin, request)
            or origin in self.config.server.allowed_origins
            or origin == options.allowed_origin
        )

    # ------------------------------------------------------------- mint
    async def mint(self, options: SessionOptions) -> Minted:
        self._check_choices(options)
        session_id = Session.new_id()
        token = new_session_token()
        expires = time.time() + self.config.server.session_token_ttl_s
        if self.cluster is not None:
            return await self._mint_in_cluster(session_id, token, expires, options)
        self._forget_expired()
        self.waiting[session_id] = _Waiting(options, token, expires)
        log.info("session %s minted (lang=%s avatar=%s)", session_id, options.lang, options.avatar)
        return Minted(session_id=session_id, token=token, expires_at=expires)

    async def _mint_in_cluster(
        self, session_id: str, token: str, expires: float, options: SessionOptions
    ) -> Minted:
        cluster = self._registry()
        node = await cluster.place(session_id, expires, options.avatar, options.voice)
        if node is None:
            raise HTTPException(
                503,
                "Every node is busy: no machine of this cluster has room for another "
                "conversation. Try again in a minute.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            await cluster.save_waiting(
                session_id, node, options.model_dump(mode="json"), token, expires
            )
        except HTTPException:
            await cluster.release(node, session_id)
            raise
        url = await cluster.node_url_of(node)
        log.info("session %s minted on node %s (lang=%s)", session_id, node, options.lang)
        return Minted(
            session_id=session_id, token=token, expires_at=expires, node=node, connect_url=url
        )

    def _registry(self) -> ClusterRegistry:
        """The registry, or a 503 while Redis is unreachable."""
        assert self.cluster is not None
        if not self.cluster.available:
            raise RegistryUnavailable()
        return self.cluster

    def _end_to_end(self, options: SessionOptions) -> bool:
        if options.mode is None:
            return self.engines.s2s is not None
        return options.mode == "end-to-end"

    def _engines_for(self, options: SessionOptions) -> Engines:
        """The models a session uses: a cascade session beside a configured
        end-to-end model gets the same models without it."""
        if self.engines.s2s is not None and not self._end_to_end(options):
            return dataclasses.replace(self.engines, s2s=None)
        return self.engines

    def _check_choices(self, options: SessionOptions) -> None:
        if self._end_to_end(options) and self.engines.s2s is None:
            raise HTTPException(
                400, "mode 'end-to-end' needs a speech-to-speech model (s2s.backend in the config)"
            )
        # An end-to-end model speaks in its own voices (the session's turns go to it).
        speaker = self._engines_for(options).s2s or self.engines.tts
        if options.voice and options.voice not in speaker.voices():
            raise HTTPException(400, f"unknown voice {options.voice!r}")

    def _avatar_voice(self, avatar: str | None, options: SessionOptions) -> str | None:
        """The default voice the avatar's meta.json names, if the TTS has it
        (an end-to-end model speaks in its own voices: none)."""
        if self._end_to_end(options):
            return None
        name = avatar or self.config.avatar.default
        info = read_info(self.config.weights_path / "avatars" / name)
        if info is None or not info.voice:
            return None
        if info.voice not in self.engines.tts.voices():
            log.warning("avatar %s names voice %r, which the TTS lacks", info.name, info.voice)
            return None
        return info.voice

    # ------------------------------------------------------------- open
    def _page_options(self, offer: Offer, request: Request) -> SessionOptions:
        """The options of the page's own flow (an offer without a token)."""
        origin = request.headers.get("origin")
        if not self.config.server.open_page:
            raise HTTPException(401, "an offer needs a session token (POST /api/sessions)")
        if origin and not same_origin(origin, request):
            raise HTTPException(
                401, f"an offer from {origin} needs a session token minted by POST /api/sessions"
            )
        return SessionOptions(
            avatar=offer.avatar, voice=offer.voice, lang=offer.lang, mode=offer.mode
        )

    async def _take_over(self, token: str) -> None:
        """An offer with the token of a live session whose peer is not
        connected (the browser noticed a lost network before the server did):
        that peer is let go, the session kept for this offer. A connected
        peer keeps its session: 409."""
        live = next((live for live in self.live.values() if live.token == token), None)
        if live is None:
            return
        if live.pc.connectionState == "connected":
            raise HTTPException(409, "this token's session is already connected")
        log.info("session %s: a new offer takes over from its lost peer", live.session.id)
        await self.close(live.session.id, EndReason.CONNECTION_FAILED)

    def _admit(self, offer: Offer, request: Request) -> tuple[str | None, SessionOptions, str]:
        """Who is offering: (minted session id or None, options, token)."""
        token = offer.token or bearer(request)
        origin = request.headers.get("origin")
        if token:
            self._forget_expired()
            session_id = next((s for s, w in self.waiting.items() if w.token == token), None)
            if session_id is None:
                raise HTTPException(401, "unknown or expired session token")
            waiting = self.waiting[session_id]
            if origin and not self._origin_allowed(origin, waiting.options, request):
                raise HTTPException(403, f"origin {origin} may not connect to this session")
            return session_id, waiting.options, token
        return None, self._page_options(offer, request), new_session_token()

    async def open(self, offer: Offer, request: Request) -> Answer | Response:
        if self.cluster is not None:
            return await self._open_in_cluster(offer, request)
        if offer.token or bearer(request):
            await self._take_over(offer.token or bearer(request) or "")
        session_id, options, token = self._admit(offer, request)
        check_offer(offer.sdp)  # 400 before any slot is taken
        # The token is spent on this offer, unless the offer fails.
        waiting = self.waiting.pop(session_id) if session_id is not None else None
        try:
            return await self._open_here(
                offer, options, token, session_id, waiting.resume if waiting else None
            )
        except BaseException:
            if waiting is not None and session_id is not None:
                self.waiting[session_id] = waiting
            raise

    async def _open_in_cluster(self, offer: Offer, request: Request) -> Answer | Response:
        """An offer on any node: answered here when the session is placed
        here, else passed to its node; a resumable session is placed anew."""
        cluster = self._registry()
        check_offer(offer.sdp)
        token = offer.token or bearer(request)
        if token:
            return await self._offer_in_cluster(cluster, offer, request, token, None)
        # The page's own flow: mint (placed anywhere), then connect; a failed
        # connect gives the slot back at once rather than when the token expires.
        minted = await self.mint(self._page_options(offer, request))
        offer = offer.model_copy(update={"token": minted.token})
        try:
            answer = await self._offer_in_cluster(
                cluster, offer, request, minted.token, offer.model_dump_json().encode()
            )
        except BaseException:
            await cluster.end(minted.session_id, EndReason.CONNECTION_FAILED, resumable=False)
            raise
        if isinstance(answer, Response) and answer.status_code >= 400:
            await cluster.end(minted.session_id, EndReason.CONNECTION_FAILED, resumable=False)
        return answer

    async def _offer_in_cluster(
        self,
        cluster: ClusterRegistry,
        offer: Offer,
        request: Request,
        token: str,
        body: bytes | None,
    ) -> Answer | Response:
        session_id = await cluster.session_of(token)
        record = await cluster.get(session_id) if session_id else None
        if record is None:
            raise HTTPException(401, "unknown or expired session token")
        now = time.time()
        if record.state == "live" and record.node != cluster.node_id:
            if await cluster.node_url_of(record.node) is None:
                raise HTTPException(
                    503,
                    "this session's node stopped answering; reconnect in a few seconds",
                    {"Retry-After": str(max(1, math.ceil(self.config.cluster.node_ttl_s)))},
                )
            return await cluster.forward(request, record.node, body)  # it decides
        # A request another node passed here must be answered here.
        stay = bool(request.headers.get(FORWARDED_HEADER))
        if record.state == "live":
            stay = True  # the peer it takes over from ran here
            await self._take_over(token)
            if record.id not in self.live:  # let go here, or lost track of: resumable
                await cluster.end(record.id, EndReason.CONNECTION_FAILED, resumable=True)
            record = await cluster.get(record.id) or record
        if record.state == "ended":
            window = self.config.cluster.reconnect_window_s
            if not record.resumable or now > record.ended_at + window:
                raise HTTPException(401, "unknown or expired session token")
            expires = now + self.config.server.session_token_ttl_s
            node = await cluster.place(
                record.id,
                expires,
                record.options.get("avatar"),
                record.options.get("voice"),
                stay=stay,
            )
            if node is None:
                raise HTTPException(
                    503,
                    "Every node is busy; reconnect in a minute.",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            await cluster.move(record.id, node, expires)
            log.info("session %s resumes on node %s", record.id, node)
            record.node, record.state, record.expires_at = node, "waiting", expires
        elif record.expires_at <= now:
            raise HTTPException(401, "unknown or expired session token")
        options = SessionOptions(**record.options)
        origin = request.headers.get("origin")
        if origin and not self._origin_allowed(origin, options, request):
            raise HTTPException(403, f"origin {origin} may not connect to this session")
        if record.node != cluster.node_id:
            return await cluster.forward(request, record.node, body)
        resume = None
        if record.transcript or record.history:
            resume = _Resume(record.reason, record.ended_at, record.transcript, record.history)
        return await self._open_here(offer, options, token, record.id, resume)

    async def _open_here(
        self,
        offer: Offer,
        options: SessionOptions,
        token: str,
        session_id: str | None,
        resume: _Resume | None,
    ) -> Answer:
        if self.draining:
            raise HTTPException(503, "this server is shutting down", {"Retry-After": "5"})
        if len(self.live) + self._reserved >= self.capacity:
            raise HTTPException(
                503,
                f"This server is busy: it holds {self.capacity} conversation"
                f"{'s' if self.capacity != 1 else ''} at a time on this machine. "
                f"Try again in a minute.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        # Reserved with no await since the count was read: concurrent offers
        # see each other's reservations.
        self._reserved += 1
        try:
            if session_id is None:
                self._check_choices(options)
            live = await self._connect(offer, options, token, session_id, resume)
        finally:
            self._reserved -= 1
        self.live[live.session.id] = live
        self.metrics.session_opened(len(self.live))
        live.watcher = self._spawn(self._watch(live))
        if self.cluster is not None:
            try:
                session = live.session
                await self.cluster.mark_live(session.id, session.avatar_name, session.voice or "")
            except HTTPException:  # the heartbeat re-asserts it when Redis is back
                log.warning("session %s: live, but the registry did not hear it", live.session.id)
        local = live.pc.localDescription
        return Answer(
            sdp=local.sdp,
            type=local.type,
            session_id=live.session.id,
            token=token,
            node=self.node_id,
        )

    async def _connect(
        self,
        offer: Offer,
        options: SessionOptions,
        token: str,
        session_id: str | None,
        resume: _Resume | None = None,
    ) -> _Live:
        if options.avatar and options.avatar not in self.engines.avatar.avatars():
            await sync_with_disk(self.config, self.engines.avatar)  # added by the CLI?
        try:
            session = Session(
                self._engines_for(options),
                self.config,
                session_id=session_id,
                lang=options.lang,
                avatar=options.avatar,
                voice=options.voice or self._avatar_voice(options.avatar, options),
                system_prompt=options.system_prompt,
                # A reconnect continues the conversation: no second greeting.
                greeting=None if resume is not None else options.greeting,
                on_turn_end=lambda turn: self._turn_ended(live, turn),
                planner=self.planner,
                history=resume.history if resume is not None else None,
            )
        except KeyError as exc:
            raise HTTPException(400, str(exc.args[0] if exc.args else exc)) from None
        try:
            pc = await answer_offer(
                session,
                offer.sdp,
                offer.type,
                self.config.server.mic_prefetch_packets,
                loopback_only=self.config.server.loopback_only,
                limits=self.config.server,
                ice_servers=self.config.server.ice_servers,
            )
        except Exception:  # aiortc raises ValueError & co. on SDP it cannot use
            log.warning("session %s: unusable offer", session.id, exc_info=True)
            await session.close()
            raise HTTPException(
                400, "malformed offer: the SDP could not be parsed or negotiated"
            ) from None
        live = _Live(session, pc, options, token)
        if resume is not None:
            live.earlier = list(resume.transcript)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self._notify(live, "session.started", {"resumed": resume is not None})
            elif pc.connectionState in ("failed", "closed"):
                closed = pc.connectionState == "closed"
                await self.close(
                    session.id, EndReason.HANGUP if closed else EndReason.CONNECTION_FAILED
                )

        log.info(
            "session %s %s (lang=%s avatar=%s)",
            session.id,
            "resumed" if resume is not None else "opened",
            options.lang,
            session.avatar_name,
        )
        return live

    # ------------------------------------------------------------ lifetimes
    async def _watch(self, live: _Live) -> None:
        server = self.config.server
        idle_limit = live.options.idle_timeout_s or server.idle_timeout_s
        max_duration = live.options.max_duration_s or server.max_duration_s
        while live.session.id in self.live:
            await asyncio.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            reason: EndReason | None = None
            if live.pc.connectionState != "connected" and not live.session.clock.frames_sent:
                if now - live.opened > server.handshake_timeout_s:
                    reason = EndReason.HANDSHAKE_TIMEOUT
            elif max_duration and now - live.opened > max_duration:
                reason = EndReason.MAX_DURATION
            elif idle_limit and live.session.idle_seconds() > idle_limit:
                reason = EndReason.IDLE_TIMEOUT
            if reason is not None:
                await self.close(live.session.id, reason)
                return

    async def close(self, session_id: str, reason: EndReason = EndReason.DELETED) -> bool:
        if self.waiting.pop(session_id, None) is not None:
            log.info("session %s ended before connecting (%s)", session_id, reason)
            return True
        live = self.live.pop(session_id, None)
        if live is None:
            if session_id in self._closing:
                return True
            return await self._close_elsewhere(session_id, reason)
        self._closing.add(session_id)
        try:
            await self._close_live(live, reason)
        finally:
            self._closing.discard(session_id)
        return True

    async def _close_live(self, live: _Live, reason: EndReason) -> None:
        session = live.session
        session_id = session.id
        session.emit(EndedEvent(reason=reason))
        if live.pc.connectionState == "connected":
            await asyncio.sleep(ENDED_FLUSH_S)
        await session.close()
        self.metrics.session_closed(session, len(self.live))
        await live.pc.close()
        if live.watcher is not None and live.watcher is not asyncio.current_task():
            live.watcher.cancel()
        log.info("session %s closed (%s) after %d turns", session_id, reason, len(session.turns))
        if not self.live:
            # Nobody's media to disturb: free the session's reference cycles now
            # (cheap, start-up objects are frozen: server/app.py) and hand the
            # heap they held back to the system. Measured by `make soak`: both
            # after every cycle kept RSS flat (+0.9 % over 30 cycles), the trim
            # alone did not (+4.9 MiB a cycle).
            gc.collect()
            release_free_heap()
        resumable = reason in RESUMABLE and self.config.cluster.reconnect_window_s > 0
        first = await self._record_end(live, reason, resumable)
        self._forget_expired()  # older resumable ones whose window is over
        if resumable and self.cluster is None:
            self.waiting[session_id] = _Waiting(
                live.options,
                live.token,
                time.time() + self.config.cluster.reconnect_window_s,
                _Resume(reason, time.time(), live.transcript(), session.history.turns),
            )
        if first:
            self._notify(
                live,
                "session.ended",
                {"reason": reason, "turns": len(live.transcript()), "resumable": resumable},
            )

    async def _record_end(self, live: _Live, reason: EndReason, resumable: bool) -> bool:
        """Tell the registry (cluster): True when this node is the one that
        ended the session (a dead-node reaper may have been first)."""
        if self.cluster is None:
            return True
        sid = live.session.id
        try:
            await self.cluster.save_turns(sid, live.transcript(), live.session.history.turns)
            return await self.cluster.end(sid, reason, resumable)
        except HTTPException:
            log.warning("session %s: ended while the registry was unreachable", sid)
            return True

    async def _close_elsewhere(self, session_id: str, reason: EndReason) -> bool:
        """DELETE of a session this node does not run: a waiting or ended one
        is ended in the registry (a live one's DELETE went to its node)."""
        if self.cluster is None:
            return False
        record = await self.cluster.get(session_id)
        if record is None:
            return False
        if record.state != "ended":
            await self.cluster.end(session_id, reason, resumable=False)
        else:  # no more reconnects
            await self.cluster.end_resumable(session_id)
        return True

    async def close_all(self, reason: EndReason = EndReason.SERVER_SHUTDOWN) -> None:
        await asyncio.gather(*(self.close(sid, reason) for sid in list(self.live)))
        self.waiting.clear()

    async def drain(self) -> None:
        """SIGTERM: admit no one, tell the live sessions, then close them."""
        self.draining = True
        if self.live:
            log.info("draining %d session(s)", len(self.live))
            for live in self.live.values():
                live.session.emit(EndedEvent(reason=EndReason.SERVER_SHUTDOWN))
            await asyncio.sleep(self.config.server.drain_s)
        await self.close_all()
        if self._background:
            await asyncio.wait(self._background, timeout=WEBHOOK_TIMEOUT_S)

    # ------------------------------------------------------------ cluster
    async def after_heartbeat(self, rejoined: bool) -> None:
        """Housekeeping after each heartbeat that reached Redis: end dead
        nodes' sessions (once, cluster-wide) and, after an outage, drop local
        sessions the cluster has since given to another node."""
        cluster = self.cluster
        assert cluster is not None
        for record in await cluster.reap_dead_nodes():
            self._notify_record(record, "session.ended")
        self._cluster_origins = await cluster.origins()
        if not rejoined:
            return
        for sid in list(self.live):
            current = await cluster.get(sid)
            if current is not None and current.node != cluster.node_id:
                log.warning("session %s moved to node %s while Redis was away", sid, current.node)
                await self.close(sid, EndReason.NODE_LOST)
            else:
                await cluster.mark_live(sid)

    # ------------------------------------------------------------ webhooks
    def _turn_ended(self, live: _Live, turn: Turn) -> None:
        self.metrics.observe_turn(turn)
        self._notify(live, "turn.completed", {"turn": turn.summary()})
        if self.cluster is not None and self.cluster.available:
            self._spawn(self._save_turns(live))

    async def _save_turns(self, live: _Live) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.save_turns(
                live.session.id, live.transcript(), live.session.history.turns
            )
        except HTTPException:
            log.warning("session %s: turn not saved, the registry is unreachable", live.session.id)

    def _notify(self, live: _Live, event: str, data: dict[str, Any]) -> None:
        url = live.options.webhook_url
        if url is None:
            return
        body = {"event": event, "session_id": live.session.id, "time": time.time(), **data}
        self._spawn(self._post(str(url), body, live.session.id))

    def _notify_record(self, record: SessionRecord, event: str) -> None:
        """A webhook for a session no node runs (a dead node's)."""
        url = record.options.get("webhook_url")
        if not url:
            return
        body = {
            "event": event,
            "session_id": record.id,
            "time": time.time(),
            "reason": record.reason,
            "turns": len(record.transcript),
            "resumable": record.resumable,
        }
        self._spawn(self._post(str(url), body, record.id))

    async def _post(self, url: str, body: dict[str, Any], session_id: str) -> None:
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False) as http:
                response = await http.post(url, json=body)
                response.raise_for_status()
        except Exception as exc:  # the hook's failure is not the session's
            log.warning("session %s: webhook %s failed: %s", session_id, body["event"], exc)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

"""HTTP guards in front of the API: CORS for embedding origins, a request rate
per client address (429) and a cap on request bodies (413)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.rtc import TokenBucket

# Only the API and signalling are limited; the page and its assets are not.
GUARDED_PREFIXES = ("/offer", "/api/")
# Uploads stream to disk with their own limits (avatars.max_upload_mb, voice uploads).
UPLOAD_PATHS = ("/api/avatars", "/api/voices")
MAX_TRACKED_CLIENTS = 4096


class SessionCORS(CORSMiddleware):
    """Starlette's CORS, with the allowed origins read on every request: the
    configured ones plus those of the sessions minted right now."""

    def __init__(self, app: ASGIApp, origins: Callable[[], set[str]]) -> None:
        super().__init__(
            app,
            allow_origins=(),
            allow_methods=("GET", "POST", "DELETE"),
            allow_headers=("Authorization", "Content-Type"),
            # A busy server's wait: the widget on another origin honours it.
            expose_headers=("Retry-After",),
            max_age=600,
        )
        self._origins = origins

    def is_allowed_origin(self, origin: str) -> bool:
        return origin in self._origins()


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _guarded(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith(GUARDED_PREFIXES)


class ClientRateLimit:
    """At most ``rate`` requests a second (bursts of ``burst``) per client
    address on the API; past it 429 with Retry-After."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _guarded(scope) or scope["method"] == "OPTIONS" or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        bucket = self._buckets.pop(address, None) or TokenBucket(self.rate, self.burst)
        self._buckets[address] = bucket  # most recent last; the oldest are forgotten
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        if not bucket.take():
            wait = max(1, round(bucket.wait_s() + 0.5))
            await _reply(send, 429, "too many requests: slow down", {"Retry-After": str(wait)})
            return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised while a chunked body is read; an HTTPException so that FastAPI's
    body parsing passes it on as the 413 it is."""


class BodyLimit:
    """Request bodies on the API are at most ``max_bytes`` (413): checked on
    Content-Length and, for chunked bodies, while they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _guarded(scope) or scope["path"].startswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.max_bytes // 1024} kB"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _reply(send, 413, too_large, {})
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(413, too_large)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, too_large, {})

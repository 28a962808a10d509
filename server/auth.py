"""Who may do what: the server's API key and per-session tokens.

Two kinds of credential, both sent as ``Authorization: Bearer <credential>``:

- the **API key** (one per server) sees and manages every session and avatar;
  an embedding app's backend holds it and never hands it to a browser;
- a **session token** (minted per session) works for that session alone: its
  /offer, its transcript, say, interrupt and hang-up.

With no key configured, the server makes one at first start, keeps it in
``weights/api_key`` (mode 0600) and prints it, the way Jupyter prints its
token: secure by default, nothing to set up on one's own machine.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)
API_KEY_FILE = "api_key"


def load_or_create_api_key(configured: str, weights_dir: Path) -> tuple[str, bool]:
    """The configured key, else the one kept in ``weights_dir``, else a new one
    written there. Returns (key, made_now)."""
    if configured:
        return configured, False
    path = weights_dir / API_KEY_FILE
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, False
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start: the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key, True


def new_session_token() -> str:
    return secrets.token_urlsafe(24)


def bearer(request: Request) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_api_key(credential: str | None, request: Request) -> bool:
    key: str | None = getattr(request.app.state, "api_key", None)
    return bool(credential and key and secrets.compare_digest(credential, key))


def unauthorized(what: str) -> HTTPException:
    return HTTPException(
        401,
        f"{what} needs a credential: send 'Authorization: Bearer <API key or session token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_api_key(request: Request) -> None:
    """FastAPI dependency: the request must carry the server's API key."""
    credential = bearer(request)
    if credential is None:
        raise unauthorized("this call")
    if not is_api_key(credential, request):
        raise HTTPException(403, "this call needs the server's API key")

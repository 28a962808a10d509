"""A tiny third-party site that embeds the videochat widget.

It stands for "your" website: another origin than the videochat server. Its
backend holds the videochat API key and, for each visitor, mints a session
token with ``POST /api/sessions``; the page it serves gets only that token and
loads ``<videochat-avatar>`` from the videochat server::

    python -m examples.host --port 8100 --videochat http://127.0.0.1:8000 --api-key KEY

(or ``VIDEOCHAT_API_KEY=KEY python -m examples.host ...``). The videochat
server must list this site's origin, here ``http://127.0.0.1:8100``, in
``server.allowed_origins``. The standard library is enough: no framework.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("examples.host")

MINT_TIMEOUT_S = 10

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="data:,">
  <title>Example host site · videochat widget</title>
  <style>
    body {{ font: 16px/1.5 Georgia, serif; margin: 2rem auto; max-width: 46rem;
           padding: 0 1rem; background: #fbf7ef; color: #2b2418; }}
    /* The widget's insides are in its shadow DOM: these rules do not reach them. */
    button, p {{ color: #8b2d0b; }}
    .events {{ font: 13px/1.4 ui-monospace, monospace; max-height: 16rem; overflow: auto; }}
    .problem {{ background: #fde8e8; padding: 0.5rem 1rem; }}
  </style>
</head>
<body>
  <h1>Example host site</h1>
  <p>This page comes from <code>{origin}</code>; the avatar below comes from
     <code>{videochat}</code>. This site's backend minted the session token; the
     API key never reached this page.</p>
  {problem}
  <videochat-avatar id="avatar" server="{videochat}" token="{token}" lang="{lang}">
  </videochat-avatar>
  <h2>Events this page heard</h2>
  <ol id="events" class="events"></ol>
  <script src="{videochat}/widget.js"></script>
  <script>
    // The host page listens to the widget like to any element.
    const avatar = document.getElementById('avatar');
    const list = document.getElementById('events');
    window.hostEvents = [];
    for (const name of ['connected', 'reconnecting', 'state', 'user-text', 'bot-text', 'turn',
                        'error', 'ended']) {{
      avatar.addEventListener(name, (event) => {{
        const d = event.detail || {{}};
        window.hostEvents.push({{ name, detail: d }});
        const li = document.createElement('li');
        li.textContent = `${{name}}: ${{d.value ?? d.text ?? d.message ?? d.reason ?? ''}}`;
        list.prepend(li);
      }});
    }}
    // A token opens one session: after it ends, ask this site's backend for another.
    avatar.addEventListener('ended', async () => {{
      const resp = await fetch('/token', {{ method: 'POST' }});
      if (resp.ok) avatar.token = (await resp.json()).token;
    }});
  </script>
</body>
</html>
"""


class MintError(RuntimeError):
    """The videochat server would not mint a session token."""


def mint_token(videochat: str, api_key: str, lang: str) -> dict:
    """``POST /api/sessions`` with the API key: ``{"session_id", "token", "expires_at"}``."""
    request = urllib.request.Request(
        f"{videochat}/api/sessions",
        data=json.dumps({"lang": lang}).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=MINT_TIMEOUT_S) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise MintError(f"POST /api/sessions answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MintError(f"cannot reach {videochat}: {exc}") from None


class HostHandler(BaseHTTPRequestHandler):
    """GET / serves the page with a fresh token; POST /token mints another."""

    server: HostServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != "/":
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        cfg = self.server
        token, problem, status = "", "", HTTPStatus.OK
        try:
            token = mint_token(cfg.videochat, cfg.api_key, cfg.lang)["token"]
        except MintError as exc:
            log.warning("%s", exc)
            problem = (
                f'<p class="problem">Could not get a videochat session: {html.escape(str(exc))}</p>'
            )
            status = HTTPStatus.BAD_GATEWAY
        page = PAGE.format(
            origin=html.escape(cfg.origin),
            videochat=html.escape(cfg.videochat),
            token=html.escape(token),
            lang=html.escape(cfg.lang),
            problem=problem,
        )
        self._reply(status, page.encode(), "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/token":
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        cfg = self.server
        try:
            minted = mint_token(cfg.videochat, cfg.api_key, cfg.lang)
        except MintError as exc:
            body = json.dumps({"detail": str(exc)}).encode()
            self._reply(HTTPStatus.BAD_GATEWAY, body, "application/json")
            return
        body = json.dumps({"token": minted["token"]}).encode()
        self._reply(HTTPStatus.OK, body, "application/json")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # each visit, its own token
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


class HostServer(ThreadingHTTPServer):
    def __init__(self, host: str, port: int, videochat: str, api_key: str, lang: str) -> None:
        super().__init__((host, port), HostHandler)
        self.videochat = videochat.rstrip("/")
        self.api_key = api_key
        self.lang = lang
        self.origin = f"http://{host}:{self.server_address[1]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.host", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--videochat", default="http://127.0.0.1:8000", help="the videochat server")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VIDEOCHAT_API_KEY", ""),
        help="the videochat server's API key (default: $VIDEOCHAT_API_KEY; see weights/api_key)",
    )
    parser.add_argument("--lang", default="auto", choices=["en", "zh", "auto"])
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key (or VIDEOCHAT_API_KEY) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    httpd = HostServer(args.host, args.port, args.videochat, args.api_key, args.lang)
    log.info("example host site on %s, embedding %s", httpd.origin, httpd.videochat)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()

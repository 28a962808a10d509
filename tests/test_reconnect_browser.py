"""Real-browser tests of resumable sessions and of the page's mode switch:
Debian Chromium against the server app in this process, with scripted models
(tests/fakes.py), so the test can end a session on the server the way a lost
cluster node does (``SessionManager.close(id, EndReason.NODE_LOST)``).

* The page, and the widget, reconnect with the session's token after a
  resumable end: "Reconnecting…", then the same session id, the transcript
  kept, a second turn answered, the server's history holding both turns.
* A hang-up (the user's own) never reconnects; a resumable end the server no
  longer honours ends with "The connection was lost. …".
* The Mode switch shows only beside an end-to-end model and its choice
  reaches the server.

The fake microphone plays silence: turns are typed. Run it like the other
browser tests, in a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -m browser \\
        tests/test_reconnect_browser.py -q'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Config
from pipelines.events import EndReason
from server.app import create_app
from tests.fakes import ScriptedLLM, ScriptedSpeechToSpeech, fake_engines, served
from tests.test_browser import CHROMIUM, chromium_args

pytestmark = pytest.mark.browser

API_KEY = "reconnect-test-key"
REPLIES = {
    "France": "The capital of France is Paris.",
    "weather": "It is sunny today.",
}
FIRST = "What is the capital of France?"
SECOND = "How is the weather?"
TURN_TIMEOUT_MS = 30_000
RECONNECT_TIMEOUT_MS = 30_000  # backoff 1 s, then an offer and ICE on loopback

# Before the page's own script: every text the status pill shows, and every
# /offer body the page sends.
WATCH_JS = """
window.__states = [];
window.__offers = [];
const fetch0 = window.fetch;
window.fetch = function (input, init) {
  const url = typeof input === 'string' ? input : input.url;
  if (/\\/offer$/.test(url) && init && init.body) window.__offers.push(JSON.parse(init.body));
  return fetch0.apply(this, arguments);
};
document.addEventListener('DOMContentLoaded', () => {
  const state = document.getElementById('state');
  if (!state) return;
  new MutationObserver(() => { window.__states.push(state.textContent); })
    .observe(state, {childList: true, characterData: true, subtree: true});
});
"""

# The widget on the server's own origin (its open page: no token to mint),
# with a host page's listeners.
WIDGET_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body>
  <videochat-avatar lang="en"></videochat-avatar>
  <script>
    window.hostEvents = [];
    const avatar = document.querySelector('videochat-avatar');
    for (const name of ['connected', 'reconnecting', 'state', 'user-text', 'bot-text', 'turn',
                        'error', 'ended']) {
      avatar.addEventListener(name, (e) => window.hostEvents.push({ name, detail: e.detail }));
    }
  </script>
  <script src="/widget.js"></script>
</body></html>
"""

CHANNEL_OPEN_JS = "() => window.videochat.dc !== null && window.videochat.dc.readyState === 'open'"


def make_app(s2s: ScriptedSpeechToSpeech | None = None, reconnect_window_s: float = 300.0) -> Any:
    config = Config()
    config.server.api_key = API_KEY
    config.server.loopback_only = True
    config.cluster.reconnect_window_s = reconnect_window_s
    engines = fake_engines(ScriptedLLM(REPLIES))
    if s2s is not None:
        engines.s2s = s2s
    return create_app(config, engines=engines)


def on_server(app: Any, coro: Any, timeout: float = 20) -> Any:
    """Run ``coro`` on the served app's event loop (its sessions live there)."""
    return asyncio.run_coroutine_threadsafe(coro, app.state.serving_loop).result(timeout)


def api(base: str, path: str, token: str) -> httpx.Response:
    return httpx.get(
        base + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False
    )


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def silence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone: 2 s of 16 kHz silence (Chromium loops it)."""
    path = tmp_path_factory.mktemp("mic") / "silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\0\0" * 32_000)
    return path


@pytest.fixture(scope="module")
def browser(silence: Path) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (make chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(silence))
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def open_page(browser: Any, url: str, html: str | None = None) -> Iterator[Any]:
    """A fresh page on ``url`` (``html`` served there when given); its console
    is printed on failure and uncaught errors fail the test."""
    console: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    if html is not None:
        page.route(url, lambda route: route.fulfill(body=html, content_type="text/html"))
    else:
        page.add_init_script(WATCH_JS)
    try:
        page.goto(url)
        yield page
        errors = [line for line in console if line.startswith("pageerror")]
        assert not errors, f"uncaught errors in the page: {errors}"
    except BaseException:
        print("---- page console ----\n" + "\n".join(console))
        raise
    finally:
        context.close()


def start_page(page: Any) -> None:
    page.wait_for_function("() => window.videochat !== undefined")
    page.wait_for_function("() => document.getElementById('avatar').options.length > 0")
    page.click("#start")
    page.wait_for_function(CHANNEL_OPEN_JS, timeout=TURN_TIMEOUT_MS)


def ask_page(page: Any, question: str, answer: str) -> None:
    """Type ``question``; wait for the bot's line holding ``answer`` and the
    turn's end."""
    turns = page.evaluate("() => window.videochat.events.filter((e) => e.type === 'turn').length")
    page.fill("#text", question)
    page.click("#send")
    page.wait_for_function(
        """([answer, turns]) =>
             [...document.querySelectorAll('#log .msg.bot')].some((li) =>
               li.textContent.includes(answer))
             && window.videochat.events.filter((e) => e.type === 'turn').length > turns""",
        arg=[answer, turns],
        timeout=TURN_TIMEOUT_MS,
    )


def log_lines(page: Any) -> list[list[str]]:
    return page.evaluate(
        "() => [...document.querySelectorAll('#log .msg')].map((li) => [li.className, "
        "li.textContent])"
    )


def history_of(base: str, session_id: str, token: str, turns: int) -> dict[str, Any]:
    """GET /api/sessions/{id} with the session's token, once it holds ``turns`` turns."""

    def check() -> dict[str, Any] | None:
        resp = api(base, f"/api/sessions/{session_id}", token)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        body = resp.json()
        return body if len(body.get("history", [])) >= 2 * turns else None

    return wait_until(check, 10, f"session {session_id}'s history holding {turns} turns")


def assert_both_turns(detail: dict[str, Any]) -> None:
    history = [(m["role"], m["content"]) for m in detail["history"]]
    users = [content for role, content in history if role == "user"]
    bots = [content for role, content in history if role == "assistant"]
    assert users == [FIRST, SECOND], history
    assert "Paris" in bots[0] and "sunny" in bots[1], history
    assert detail["turns"] == 2, detail


# ------------------------------------------------------------------ the page
@pytest.mark.parametrize("reason", [EndReason.NODE_LOST, EndReason.CONNECTION_FAILED])
def test_the_page_reconnects_to_the_same_session_after_a_resumable_end(
    browser: Any, reason: EndReason
) -> None:
    app = make_app()
    with served(app) as base, open_page(browser, base + "/") as page:
        start_page(page)
        ask_page(page, FIRST, "Paris")
        session_id, token = page.evaluate(
            "() => [window.videochat.sessionId, window.videochat.token]"
        )
        assert session_id and token
        first_log = log_lines(page)

        on_server(app, app.state.manager.close(session_id, reason))
        page.wait_for_function(
            "() => window.__states.includes('Reconnecting…')", timeout=10_000, polling=50
        )
        assert page.evaluate("() => window.videochat.reconnecting") is True
        page.wait_for_function(
            f"""() => !window.videochat.reconnecting && ({CHANNEL_OPEN_JS})()
                      && document.getElementById('state').textContent !== 'Reconnecting…'""",
            timeout=RECONNECT_TIMEOUT_MS,
        )
        state = page.evaluate(
            """() => ({sessionId: window.videochat.sessionId, token: window.videochat.token,
                       reconnects: window.videochat.reconnects, offers: window.__offers,
                       error: document.getElementById('error').hidden ? ''
                         : document.getElementById('error').textContent,
                       hangupShown: !document.getElementById('hangup').hidden,
                       textEnabled: !document.getElementById('text').disabled})"""
        )
        assert state["sessionId"] == session_id, state
        assert state["token"] == token and state["error"] == "", state
        assert state["hangupShown"] and state["textEnabled"], state
        assert state["reconnects"] == 1, state
        # The second offer carried the token and the same choices.
        first_offer, again = state["offers"]
        assert again["token"] == token and "token" not in first_offer, state["offers"]
        assert {k: again.get(k) for k in ("avatar", "lang", "voice", "mode")} == {
            k: first_offer.get(k) for k in ("avatar", "lang", "voice", "mode")
        }
        assert session_id in app.state.manager.live  # live again, on the server
        # The transcript is the same list, the first turn still in it.
        assert log_lines(page)[: len(first_log)] == first_log
        assert any("bot" in c and "Paris" in t for c, t in first_log), first_log

        ask_page(page, SECOND, "sunny")
        assert_both_turns(history_of(base, session_id, token, 2))
        page.click("#hangup")
        page.wait_for_function("() => window.videochat.sessionId === null", timeout=10_000)
        print(json.dumps({"states": page.evaluate("() => window.__states")}, ensure_ascii=False))


def test_a_hang_up_does_not_reconnect(browser: Any) -> None:
    app = make_app()
    with served(app) as base, open_page(browser, base + "/") as page:
        start_page(page)
        ask_page(page, FIRST, "Paris")
        session_id, token = page.evaluate(
            "() => [window.videochat.sessionId, window.videochat.token]"
        )
        page.click("#hangup")
        page.wait_for_function(
            "() => window.videochat.pc === null && window.videochat.sessionId === null",
            timeout=10_000,
        )
        time.sleep(3.5)  # past the first two reconnect delays (1 s, 2 s)
        state = page.evaluate(
            """() => ({reconnects: window.videochat.reconnects, states: window.__states,
                       offers: window.__offers.length, pc: window.videochat.pc !== null,
                       startShown: !document.getElementById('start').hidden})"""
        )
        assert state["reconnects"] == 0 and state["offers"] == 1 and not state["pc"], state
        assert "Reconnecting…" not in state["states"] and state["startShown"], state
        assert session_id not in app.state.manager.live
        # Ended for good: the server no longer knows the session or its token.
        assert api(base, f"/api/sessions/{session_id}", API_KEY).status_code == 404
        refused = httpx.post(
            base + "/offer", json={"sdp": "v=0", "type": "offer", "token": token}, trust_env=False
        )
        assert refused.status_code == 401, refused.text


def test_the_page_gives_up_when_the_session_cannot_be_resumed(browser: Any) -> None:
    """The server sends a resumable reason but keeps nothing (no reconnect
    window): the re-offer is refused (401) and the page says so and resets."""
    app = make_app(reconnect_window_s=0)
    with served(app) as base, open_page(browser, base + "/") as page:
        start_page(page)
        session_id = page.evaluate("() => window.videochat.sessionId")
        on_server(app, app.state.manager.close(session_id, EndReason.NODE_LOST))
        page.wait_for_function(
            "() => !document.getElementById('error').hidden && window.videochat.pc === null"
            " && !window.videochat.reconnecting",
            timeout=RECONNECT_TIMEOUT_MS,
        )
        state = page.evaluate(
            """() => ({error: document.getElementById('error').textContent,
                       states: window.__states, reconnects: window.videochat.reconnects,
                       startShown: !document.getElementById('start').hidden,
                       sessionId: window.videochat.sessionId,
                       state: document.getElementById('state').textContent})"""
        )
        assert state["error"] == "The connection was lost. Press Start to talk again.", state
        assert "Reconnecting…" in state["states"], state
        assert state["reconnects"] == 1, state  # a 401 is final: no more attempts
        assert state["startShown"] and state["sessionId"] is None and state["state"] == "idle"


# ---------------------------------------------------------------- the widget
def test_the_widget_reconnects_to_the_same_session(browser: Any) -> None:
    app = make_app()
    with served(app) as base:
        url = base + "/widget-host.html"
        with open_page(browser, url, WIDGET_PAGE) as page:
            page.wait_for_function("() => customElements.get('videochat-avatar') !== undefined")
            avatar = "document.querySelector('videochat-avatar')"
            page.click("videochat-avatar .start")
            page.wait_for_function(
                "() => hostEvents.some((e) => e.name === 'connected')", timeout=TURN_TIMEOUT_MS
            )

            def ask(question: str, answer: str) -> None:
                turns = page.evaluate("() => hostEvents.filter((e) => e.name === 'turn').length")
                assert page.evaluate(f"(q) => {avatar}.send(q)", question)
                page.wait_for_function(
                    """([answer, turns]) =>
                         hostEvents.some((e) => e.name === 'bot-text'
                                              && String(e.detail.text).includes(answer))
                         && hostEvents.filter((e) => e.name === 'turn').length > turns""",
                    arg=[answer, turns],
                    timeout=TURN_TIMEOUT_MS,
                )

            ask(FIRST, "Paris")
            session_id = page.evaluate(f"() => {avatar}.sessionId")
            token = page.evaluate(f"() => {avatar}._sessionToken")
            on_server(app, app.state.manager.close(session_id, EndReason.NODE_LOST))
            page.wait_for_function(
                "() => hostEvents.filter((e) => e.name === 'connected').length === 2",
                timeout=RECONNECT_TIMEOUT_MS,
            )
            events = page.evaluate("() => hostEvents")
            names = [e["name"] for e in events]
            reconnecting = next(e for e in events if e["name"] == "reconnecting")["detail"]
            assert reconnecting == {
                "type": "reconnecting",
                "reason": "node_lost",
                "session_id": session_id,
            }, reconnecting
            again = [e for e in events if e["name"] == "connected"][1]["detail"]
            assert again == {"type": "connected", "session_id": session_id, "resumed": True}
            assert names.index("reconnecting") < len(names) - names[::-1].index("connected")
            assert "ended" not in names and "error" not in names, names
            assert page.evaluate(f"() => {avatar}.connected") is True
            assert page.evaluate(f"() => {avatar}.state") != "reconnecting"
            assert session_id in app.state.manager.live

            ask(SECOND, "sunny")
            assert_both_turns(history_of(base, session_id, token, 2))
            page.click("videochat-avatar .start")  # Stop
            page.wait_for_function(
                "() => hostEvents.some((e) => e.name === 'ended')", timeout=10_000
            )
            ended = page.evaluate("() => hostEvents.find((e) => e.name === 'ended').detail")
            assert ended == {"type": "ended", "reason": "stopped"}, ended


# ---------------------------------------------------------------- mode switch
def test_the_mode_switch_shows_beside_an_end_to_end_model(browser: Any) -> None:
    s2s = ScriptedSpeechToSpeech({}, REPLIES)
    app = make_app(s2s)
    with served(app) as base, open_page(browser, base + "/") as page:
        assert httpx.get(base + "/health", trust_env=False).json()["modes"] == [
            "cascade",
            "end-to-end",
        ]
        page.wait_for_function("() => !document.getElementById('mode-field').hidden")
        options = page.evaluate(
            "() => [...document.getElementById('mode').options].map((o) => [o.value, o.text])"
        )
        assert options == [
            ["cascade", "Cascade (ASR → LLM → TTS)"],
            ["end-to-end", "End-to-end (speech-to-speech)"],
        ]
        page.select_option("#mode", "end-to-end")
        assert page.is_disabled("#voice")  # the end-to-end model speaks in its own voices
        start_page(page)
        assert page.is_disabled("#mode")  # fixed while connected, like the other choices
        session_id, token = page.evaluate(
            "() => [window.videochat.sessionId, window.videochat.token]"
        )
        offer = page.evaluate("() => window.__offers[0]")
        assert offer["mode"] == "end-to-end" and "voice" not in offer, offer
        # The server runs it end to end: the scripted model answers the turn.
        ask_page(page, FIRST, "Paris")
        assert len(s2s.conversations) == 1 and s2s.conversations[0].inputs == [FIRST]
        summary = api(base, f"/api/sessions/{session_id}", token).json()
        assert summary["mode"] == "end-to-end", summary
        page.click("#hangup")
        page.wait_for_function("() => window.videochat.sessionId === null", timeout=10_000)

        page.select_option("#mode", "cascade")
        assert not page.is_disabled("#voice")
        start_page(page)
        offer = page.evaluate("() => window.__offers[1]")
        assert offer["mode"] == "cascade", offer
        ask_page(page, FIRST, "Paris")  # the scripted LLM (cascade), not the s2s model
        assert len(s2s.conversations) == 1 and s2s.conversations[0].inputs == [FIRST]
        page.click("#hangup")
        page.wait_for_function("() => window.videochat.sessionId === null", timeout=10_000)


def test_the_mode_switch_is_hidden_with_one_mode(browser: Any) -> None:
    app = make_app()
    with served(app) as base, open_page(browser, base + "/") as page:
        assert httpx.get(base + "/health", trust_env=False).json()["modes"] == ["cascade"]
        page.wait_for_function("() => window.videochat !== undefined")
        page.wait_for_function("() => Array.isArray(window.videochat.modes)")
        start_page(page)
        assert page.is_hidden("#mode-field")
        offer = page.evaluate("() => window.__offers[0]")
        assert "mode" not in offer, offer
        page.click("#hangup")
        page.wait_for_function("() => window.videochat.sessionId === null", timeout=10_000)

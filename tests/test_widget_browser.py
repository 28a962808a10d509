"""Real-browser test of the embeddable widget, from a second site.

The videochat server runs with an API key and one allowed origin; the example
host site (examples/host) runs on that origin and on one that is not allowed.
Its backend mints a session token with the API key; Chromium, with the fake
microphone asking tests/fixtures/question_en.wav, loads its page, which loads
``<videochat-avatar>`` from the videochat server. From the allowed origin the
widget holds a spoken conversation, seen through the events it fires on the
host page; from the other it reports the refusal and no session opens.

Run it like tests/test_browser.py, in a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -m browser -q'
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from bench.launch import free_port, running_server
from tests.test_browser import (
    AUDIO_RMS_THRESHOLD,
    CHROMIUM,
    CONVERSATION_TIMEOUT_S,
    QUESTION_WAV,
    REPO_ROOT,
    chromium_args,
)

pytestmark = pytest.mark.browser

API_KEY = "widget-test-key"
HOST_START_TIMEOUT_S = 20
REFUSAL_TIMEOUT_S = 30
AVATAR_JS = "document.querySelector('videochat-avatar')"

# Watches the widget the way a host page would (its events and methods) and
# hears its video element's audio through WebAudio (works with --mute-audio).
# Chromium loops the fake-microphone file: like a person who asked once, the
# microphone is muted (widget.mute) once the server has the question.
PROBE_JS = """
() => {
  const avatar = document.querySelector('videochat-avatar');
  const video = avatar.shadowRoot.querySelector('video');
  const probe = {maxSpeaking: 0, micMutedAt: null};
  window.__probe = probe;
  const t0 = performance.now();
  let state = null;
  let analyser = null;
  let buf = null;
  const muteOnce = () => {
    if (probe.micMutedAt !== null) return;
    avatar.mute(true);
    probe.micMutedAt = Math.round(performance.now() - t0);
  };
  avatar.addEventListener('state', (e) => {
    state = e.detail.value;
    if (state === 'thinking') muteOnce();
  });
  avatar.addEventListener('user-text', (e) => { if (e.detail.final) muteOnce(); });
  setInterval(() => {
    const stream = video.srcObject;
    if (!analyser && stream && stream.getAudioTracks().length) {
      const ctx = new AudioContext();
      ctx.resume();
      analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      buf = new Float32Array(analyser.fftSize);
      ctx.createMediaStreamSource(new MediaStream(stream.getAudioTracks())).connect(analyser);
    }
    if (!analyser || state !== 'speaking') return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    probe.maxSpeaking = Math.max(probe.maxSpeaking, Math.sqrt(sum / buf.length));
  }, 50);
}
"""

SNAPSHOT_JS = """
() => {
  const avatar = document.querySelector('videochat-avatar');
  const error = avatar.shadowRoot.querySelector('.error');
  const events = window.hostEvents || [];
  return {
    heardQuestion: events.some((e) => e.name === 'user-text' && e.detail.final
                                      && /capital/i.test(String(e.detail.text))),
    botText: events.some((e) => e.name === 'bot-text' && String(e.detail.text).trim() !== ''),
    errored: events.some((e) => e.name === 'error'),
    connected: avatar.connected,
    sessionId: avatar.sessionId,
    shownError: error.hidden ? '' : error.textContent,
    probe: window.__probe,
    events: events.slice(-40),
  };
}
"""

CONVERSED_JS = f"""
() => {{
  const s = ({SNAPSHOT_JS})();
  if (s.heardQuestion && s.botText && s.probe.maxSpeaking > {AUDIO_RMS_THRESHOLD}) return 'done';
  if (s.errored && !s.connected && s.sessionId === null) return 'failed';  // gave up
  return false;
}}
"""


@contextlib.contextmanager
def host_site(port: int, videochat: str) -> Iterator[str]:
    """``python -m examples.host`` on ``port``; yields its origin."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.host", "--port", str(port), "--videochat", videochat],
            cwd=REPO_ROOT,
            env={**env, "VIDEOCHAT_API_KEY": API_KEY},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + HOST_START_TIMEOUT_S
            while not _accepts(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the example host site did not start on {port}:\n{log.read()}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.fixture(scope="module")
def sites() -> Iterator[dict[str, str]]:
    """The videochat server allowing one host origin, and two host sites."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    allowed_port, refused_port = free_port(), free_port()
    env = {
        "VIDEOCHAT_SERVER__API_KEY": API_KEY,
        "VIDEOCHAT_SERVER__ALLOWED_ORIGINS": json.dumps([f"http://127.0.0.1:{allowed_port}"]),
    }
    with (
        running_server(env) as (videochat, process),
        host_site(allowed_port, videochat) as allowed,
        host_site(refused_port, videochat) as refused,
    ):
        yield {
            "videochat": videochat,
            "allowed": allowed,
            "refused": refused,
            "log": process.log_path,
        }


@pytest.fixture(scope="module")
def browser(sites: dict[str, str]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(QUESTION_WAV)
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _api(sites: dict[str, str], path: str) -> httpx.Response:
    return httpx.get(
        sites["videochat"] + path,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
        trust_env=False,
    )


@contextlib.contextmanager
def _host_page(browser: object, url: str, sites: dict[str, str]) -> Iterator[object]:
    """A fresh page on ``url`` whose console and server log print on failure."""
    console: list[str] = []
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        page.goto(url + "/")
        page.wait_for_function("() => customElements.get('videochat-avatar') !== undefined")
        yield page
        errors = [line for line in console if line.startswith("pageerror")]
        assert not errors, f"uncaught errors in the page: {errors}"
    except BaseException:
        print("---- page console ----\n" + "\n".join(console))
        with open(sites["log"], encoding="utf-8", errors="replace") as log:
            print("---- videochat server log (tail) ----\n" + log.read()[-20000:])
        raise
    finally:
        context.close()


def test_widget_converses_from_an_allowed_origin(sites: dict[str, str], browser: object) -> None:
    from playwright.sync_api import Error as PlaywrightError

    with _host_page(browser, sites["allowed"], sites) as page:
        assert API_KEY not in page.content(), "the API key reached the browser"
        page.evaluate(PROBE_JS)
        spent_token = page.evaluate(f"{AVATAR_JS}.token")
        page.click("videochat-avatar .start")  # Playwright's CSS reaches into open shadow roots
        try:
            outcome = page.wait_for_function(
                CONVERSED_JS, timeout=CONVERSATION_TIMEOUT_S * 1000, polling=250
            ).json_value()
        except PlaywrightError:
            outcome = "timeout"
        snapshot = page.evaluate(SNAPSHOT_JS)
        assert outcome == "done", (
            f"{outcome}: wanted a final user-text about 'capital', a bot-text and audible reply "
            f"audio (RMS > {AUDIO_RMS_THRESHOLD}) through the widget's events; widget state:\n"
            + json.dumps(snapshot, indent=1, ensure_ascii=False)
        )
        session_id = snapshot["sessionId"]
        names = [e["name"] for e in snapshot["events"]]
        assert "connected" in names and "state" in names, names
        assert _api(sites, f"/api/sessions/{session_id}").status_code == 200

        page.click("videochat-avatar .start")  # now "Stop"
        page.wait_for_function("() => hostEvents.some((e) => e.name === 'ended')", timeout=10_000)
        deadline = time.monotonic() + 10
        while _api(sites, f"/api/sessions/{session_id}").status_code != 404:
            assert time.monotonic() < deadline, f"session {session_id} still there after stop"
            time.sleep(0.25)

        # The host's backend hands the page a new token for next time. The spent
        # one is refused, and the widget shows and fires the server's reason.
        page.wait_for_function(f"(spent) => {AVATAR_JS}.token !== spent", arg=spent_token)
        page.evaluate(f"(spent) => {{ {AVATAR_JS}.token = spent; }}", spent_token)
        page.click("videochat-avatar .start")
        failed_start = "hostEvents.find((e) => e.name === 'error' && e.detail.status)"
        page.wait_for_function(f"() => {failed_start}", timeout=REFUSAL_TIMEOUT_S * 1000)
        error = page.evaluate(f"() => {failed_start}.detail")
        assert error["status"] == 401 and "token" in error["message"], error
        assert page.evaluate(SNAPSHOT_JS)["shownError"] == error["message"]
    print(json.dumps({"probe": snapshot["probe"]}))


def test_widget_is_refused_from_an_origin_not_allowed(
    sites: dict[str, str], browser: object
) -> None:
    with _host_page(browser, sites["refused"], sites) as page:
        page.click("videochat-avatar .start")
        page.wait_for_function(
            "() => hostEvents.some((e) => e.name === 'error')", timeout=REFUSAL_TIMEOUT_S * 1000
        )
        snapshot = page.evaluate(SNAPSHOT_JS)
        assert not snapshot["connected"] and snapshot["sessionId"] is None, snapshot
        # Refused by CORS (the widget cannot read the answer) or by /offer's 403.
        error = next(e for e in snapshot["events"] if e["name"] == "error")["detail"]
        assert error.get("status") in ("cors", 403), error
        assert error["message"] == snapshot["shownError"], (error, snapshot)
        assert sites["refused"] in snapshot["shownError"], snapshot
        print(json.dumps({"refused": error}))
        assert not any(e["name"] == "connected" for e in snapshot["events"]), snapshot
        # The token the host minted is still unused: nothing live on the server.
        assert httpx.get(sites["videochat"] + "/health", trust_env=False).json()["sessions"] == 0
        listed = _api(sites, "/api/sessions").json()
        assert all(s.get("state") == "waiting" for s in listed), listed

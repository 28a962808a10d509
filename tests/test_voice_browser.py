"""Real-browser tests of the page's voice flow: Debian Chromium against
`videochat serve` (one server for the module, a short matching budget).

* A clip made by the project's Kokoro (a Chinese voice other than the default)
  is uploaded through the page's form: progress shows, the voice lands in the
  picker, its sample plays, and Start opens a session with that voice.
* The record button records Chromium's fake microphone (the same clip, looped)
  and that recording is added as a voice.

Run it like tests/test_browser.py, in a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -m browser \\
        tests/test_voice_browser.py -q'
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.launch import running_server
from tests.test_browser import CHROMIUM, REPO_ROOT, chromium_args

pytestmark = pytest.mark.browser

API_KEY = "voice-browser-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
KOKORO = REPO_ROOT / "weights" / "kokoro"
TEXT = "今天天气很好，我们一起去公园散步，然后在湖边喝一杯茶吧。"
SPEAKER = "zm_yunxi"  # not the default Chinese voice (zf_xiaoxiao)
# The first voice added on a machine also embeds the stock voices once (Kokoro
# speaks each); a slow machine needs minutes for that.
ADD_TIMEOUT_S = 600
STARTUP_TIMEOUT_S = 600  # the models load (and the LLM caches its persona) first
UPLOADED = "browser-voice-upload"
RECORDED = "browser-voice-record"

# Before the page's own script: note every media element asked to play, and
# every text the voice form's status and progress bar show.
WATCH_JS = """
window.__played = [];
const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function () {
  window.__played.push(this);
  return play.call(this);
};
window.__voiceForm = [];
document.addEventListener('DOMContentLoaded', () => {
  const status = document.getElementById('voice-status');
  const bar = document.getElementById('voice-progress');
  new MutationObserver(() => {
    window.__voiceForm.push({text: status.textContent, value: bar.value, shown: !bar.hidden});
  }).observe(status, {childList: true, characterData: true, subtree: true});
});
"""

ADDED_JS = """
() => /^(Added|Could not|Upload failed)/.test(document.getElementById('voice-status').textContent)
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~5 s of Chinese from Kokoro's zm_yunxi, 16 kHz WAV, with a little silence
    around it (also the fake microphone's sound)."""
    if not (KOKORO / "voices.npz").is_file():
        pytest.skip("weights/kokoro missing: run `videochat weights`")
    from models.tts.kokoro import KOKORO_MODEL_FILE, KOKORO_VOICES_FILE, KokoroSynthesizer
    from tests.make_fixtures import resample, write_wav

    tts = KokoroSynthesizer(
        KOKORO / KOKORO_MODEL_FILE, KOKORO / KOKORO_VOICES_FILE, threads=2, warmup=False
    )
    speech = tts.synthesize(TEXT, "zh", voice=SPEAKER)
    audio = resample(speech.audio, speech.sample_rate, 16_000)
    audio = audio * (0.6 / max(float(np.abs(audio).max()), 1e-6))
    quiet = np.zeros(int(0.5 * 16_000), np.float32)
    path = tmp_path_factory.mktemp("voice") / "my-voice.wav"
    write_wav(path, np.concatenate([quiet, audio, quiet]).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (make chromium)")
    env = {"VIDEOCHAT_SERVER__API_KEY": API_KEY, "VIDEOCHAT_VOICES__MATCH_BUDGET_S": "3"}
    with running_server(env, timeout=STARTUP_TIMEOUT_S) as (url, process):
        try:
            yield {"url": url, "log": process.log_path}
        finally:
            for name in (UPLOADED, RECORDED):  # whatever a failed test left
                httpx.delete(f"{url}/api/voices/{name}", headers=AUTH, trust_env=False)


@pytest.fixture(scope="module")
def browser(server: dict[str, Any], clip: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(clip))
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def voice_page(browser: Any, server: dict[str, Any]) -> Iterator[Any]:
    """The page, with the voice form open and the API key filled in; its
    console and the server's log are printed on failure."""
    console: list[str] = []
    context = browser.new_context()
    context.add_init_script(WATCH_JS)
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        page.goto(server["url"] + "/")
        page.wait_for_function("() => window.videochat !== undefined")
        page.click(".voice-upload summary")
        page.fill("#voice-key", API_KEY)
        yield page
        errors = [line for line in console if line.startswith("pageerror")]
        assert not errors, f"uncaught errors in the page: {errors}"
    except BaseException:
        print("---- page console ----\n" + "\n".join(console))
        with open(server["log"], encoding="utf-8", errors="replace") as log:
            print("---- server log (tail) ----\n" + log.read()[-20000:])
        raise
    finally:
        context.close()


def api(server: dict[str, Any], method: str, path: str) -> httpx.Response:
    return httpx.request(method, server["url"] + path, headers=AUTH, timeout=10, trust_env=False)


def user_voices(server: dict[str, Any]) -> list[str]:
    return [v["name"] for v in api(server, "GET", "/api/voices").json()["user"]]


def add_through_the_form(page: Any, name: str) -> str:
    page.fill("#voice-name", name)
    page.select_option("#voice-lang", "zh")
    page.click("#voice-add")
    page.wait_for_function(ADDED_JS, timeout=ADD_TIMEOUT_S * 1000, polling=250)
    return page.text_content("#voice-status") or ""


def test_upload_pick_play_and_talk_with_a_voice(
    server: dict[str, Any], browser: Any, clip: Path
) -> None:
    with voice_page(browser, server) as page:
        page.set_input_files("#voice-file", str(clip))
        status = add_through_the_form(page, UPLOADED)
        assert status.startswith(f"Added {UPLOADED} (zh): it matches your clip at "), status
        # Progress showed while the server matched the clip.
        seen = page.evaluate("() => window.__voiceForm")
        matching = [s for s in seen if s["text"].startswith(f"Matching {UPLOADED}: ")]
        assert matching and all(s["shown"] for s in matching), seen
        assert any(0 < s["value"] < 1 for s in matching), seen
        assert UPLOADED in user_voices(server)

        # In the picker, under "Your voices", and picked for the next Start.
        assert page.input_value("#voice") == UPLOADED
        group = page.evaluate(
            "(name) => document.querySelector(`#voice option[value='${name}']`)"
            ".parentElement.label",
            UPLOADED,
        )
        assert group == "Your voices"

        # Its sample plays: an <audio> gets the sample's URL and loads it.
        page.click("#voice-play")
        sample = f"/api/voices/{UPLOADED}/sample"
        page.wait_for_function(
            """(url) => window.__played.some(
                 (a) => a.src.endsWith(url) && a.readyState >= 2 && !a.error && a.duration > 1)""",
            arg=sample,
            timeout=120_000,
        )

        # Start: the page offers that voice, and the server opens a session with it.
        offers: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda r: (
                offers.append(json.loads(r.post_data or "{}"))
                if r.url.endswith("/offer") and r.method == "POST"
                else None
            ),
        )
        page.click("#start")
        page.wait_for_function("() => window.videochat.sessionId", timeout=60_000)
        session_id = page.evaluate("() => window.videochat.sessionId")
        assert [o.get("voice") for o in offers] == [UPLOADED], offers
        summary = api(server, "GET", f"/api/sessions/{session_id}").json()
        assert summary["voice"] == UPLOADED, summary
        page.click("#hangup")
        page.wait_for_function("() => window.videochat.pc === null", timeout=10_000)

    assert api(server, "DELETE", f"/api/voices/{UPLOADED}").json() == {"removed": UPLOADED}
    assert UPLOADED not in user_voices(server)


def test_record_a_voice_from_the_microphone(server: dict[str, Any], browser: Any) -> None:
    """Chromium's fake microphone plays the clip (looped); the page records
    it with MediaRecorder until its countdown ends and uploads the WebM."""
    with voice_page(browser, server) as page:
        page.click("#voice-record")
        page.wait_for_function(
            "() => document.getElementById('voice-status').textContent.startsWith('Recorded')",
            timeout=30_000,
        )
        assert page.is_visible("#voice-recording")  # the preview of the recording
        status = add_through_the_form(page, RECORDED)
        assert status.startswith(f"Added {RECORDED} (zh)"), status
        assert page.input_value("#voice") == RECORDED
    assert api(server, "DELETE", f"/api/voices/{RECORDED}").json() == {"removed": RECORDED}
    assert RECORDED not in user_voices(server)


def test_the_page_says_where_this_machine_speaks_a_voice_slower_than_it_plays(
    server: dict[str, Any], browser: Any
) -> None:
    """The hint under the controls follows the calibration (GET /api/voices
    "keeps_up"): shown on a machine whose default voices cannot keep up (the
    AVX2 kind), naming the voices that do; hidden where they keep up."""
    listing = api(server, "GET", "/api/voices").json()
    keeps_up = {
        (lang, v["name"]): v.get("keeps_up")
        for lang in ("en", "zh")
        for v in listing["stock"][lang]
    }
    slow = [lang for lang in ("en", "zh") if keeps_up[(lang, listing["default"][lang])] is False]
    faster_en = [v["name"] for v in listing["stock"]["en"] if v.get("keeps_up")]
    with voice_page(browser, server) as page:
        page.wait_for_function("() => document.querySelectorAll('#voice option').length > 1")
        assert page.is_visible("#voice-hint") == bool(slow)
        if not slow:
            return
        text = page.text_content("#voice-hint") or ""
        names = {"en": "English", "zh": "Chinese"}
        assert all(names[lang] in text for lang in slow), text
        assert all(f"{name} (English)" in text for name in faster_en if "en" in slow), text
        if "en" in slow and faster_en:  # picking a voice that keeps up, in English: no hint
            page.select_option("#lang", "en")
            page.select_option("#voice", faster_en[0])
            assert not page.is_visible("#voice-hint")
            # joe speaks no Chinese: that session's Chinese is the default voice's.
            page.select_option("#lang", "auto")
            assert page.is_visible("#voice-hint") == ("zh" in slow)
            if "zh" in slow:
                text = page.text_content("#voice-hint") or ""
                assert "Chinese" in text and "English" not in text.split(".")[0], text

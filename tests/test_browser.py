"""Real-browser test: Debian Chromium talks to `videochat serve` over WebRTC.

Run it in a loopback-only network namespace (the Makefile does):

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest -m browser -q'

The fake microphone plays tests/fixtures/question_en.wav (Chromium loops it);
the test waits for the transcript, a spoken reply (heard through a WebAudio
analyser, which works even with --mute-audio) and a playing 512x512 video.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
QUESTION_WAV = REPO_ROOT / "tests" / "fixtures" / "question_en.wav"

STARTUP_TIMEOUT_S = 180  # models load before /health answers
CONVERSATION_TIMEOUT_S = 90
AUDIO_RMS_THRESHOLD = 0.01  # about -40 dBFS; silence decodes to ~0

# Never go through a proxy: everything here is on 127.0.0.1.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Chromium loops the fake-microphone file, so the question would come again
# ~1 s after it ends and barge in on the reply. Like a person who asked once,
# the page mutes its microphone (the track sends silence) once the server
# has the question: on the first "thinking" state or final transcript.
MUTE_MIC_AFTER_QUESTION = True

# Samples the page every 50 ms: the loudest remote audio while the avatar is
# speaking, and how many video frames were presented.
PROBE_JS = """
(muteAfterQuestion) => {
  const vc = window.videochat;
  const probe = {maxSpeaking: 0, maxAfterBotText: 0, maxAny: 0, frames: 0, samples: 0,
                 micMutedAt: null, maxVideoWidth: 0, connectionStates: [], timeline: []};
  const t0 = performance.now();
  let seen = 0;
  window.__probe = probe;
  const video = document.getElementById('video');
  if (video.requestVideoFrameCallback) {
    const onFrame = () => { probe.frames += 1; video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }
  setInterval(() => {
    const level = vc.audioLevel();
    let state = null;
    let botText = false;
    let asked = false;
    for (const e of vc.events) {
      if (e.type === 'state') state = e.value;
      if (e.type === 'bot_text') botText = true;
      if ((e.type === 'state' && e.value === 'thinking') || (e.type === 'user_text' && e.final)) {
        asked = true;
      }
    }
    if (muteAfterQuestion && asked && probe.micMutedAt === null && vc.pc) {
      for (const sender of vc.pc.getSenders()) {
        if (sender.track && sender.track.kind === 'audio') sender.track.enabled = false;
      }
      probe.micMutedAt = Math.round(performance.now() - t0);
    }
    probe.samples += 1;
    for (; seen < vc.events.length; seen++) {  // arrival times, to 50 ms
      const e = vc.events[seen];
      const what = e.type === 'state' ? e.value : (e.text ?? e.message ?? e.latency ?? '');
      probe.timeline.push([Math.round(performance.now() - t0), e.type, what]);
    }
    probe.maxVideoWidth = Math.max(probe.maxVideoWidth, video.videoWidth);
    const cs = vc.pc ? vc.pc.connectionState : 'none';
    if (probe.connectionStates[probe.connectionStates.length - 1] !== cs) {
      probe.connectionStates.push(cs);
    }
    probe.maxAny = Math.max(probe.maxAny, level);
    if (botText) probe.maxAfterBotText = Math.max(probe.maxAfterBotText, level);
    if (state === 'speaking') probe.maxSpeaking = Math.max(probe.maxSpeaking, level);
  }, 50);
}
"""

SNAPSHOT_JS = """
() => {
  const vc = window.videochat;
  const video = document.getElementById('video');
  const events = vc.events;
  return {
    userFinalCapital: events.some((e) => e.type === 'user_text' && e.final
                                         && /capital/i.test(String(e.text))),
    botText: events.some((e) => e.type === 'bot_text' && String(e.text).trim() !== ''),
    video: {
      width: video.videoWidth, height: video.videoHeight, paused: video.paused,
      readyState: video.readyState, currentTime: video.currentTime, muted: video.muted,
    },
    probe: window.__probe,
    sessionId: vc.sessionId,
    connectionState: vc.pc ? vc.pc.connectionState : null,
    error: document.getElementById('error').hidden ? ''
      : document.getElementById('error').textContent,
    events: events.slice(-60),
  };
}
"""

DONE_JS = f"""
() => {{
  const s = ({SNAPSHOT_JS})();
  if (s.userFinalCapital && s.botText
      && s.video.width === 512 && s.video.height === 512 && !s.video.paused
      && s.video.readyState >= 2 && s.video.currentTime > 0
      && s.probe && s.probe.frames > 25
      && s.probe.maxSpeaking > {AUDIO_RMS_THRESHOLD}) return 'done';
  // The page gave up (failed /offer, failed connection): no point waiting.
  if (s.error && window.videochat.pc === null) return 'failed';
  return false;
}}
"""


def chromium_args(fake_mic_wav: Path = QUESTION_WAV) -> list[str]:
    """Chromium's flags here: a fake microphone that plays ``fake_mic_wav``
    (allowed without asking), loopback ICE, sound without a click, no proxy."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic_wav.resolve()}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--no-proxy-server",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def log(self, tail_chars: int = 20000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no server log: {exc})"
        return text[-tail_chars:]


def _health_ok(url: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _assert_session_closed(server: Server, session_id: str, timeout_s: float = 10) -> None:
    """After hang-up (DELETE /api/sessions/{id}) the session leaves /api/sessions."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with _NO_PROXY_OPENER.open(f"{server.url}/api/sessions", timeout=5) as resp:
                sessions = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return  # no session listing: nothing more to check
        ids = [s.get("id", s.get("session_id")) for s in sessions if isinstance(s, dict)]
        if session_id not in ids:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"session {session_id} still listed after hang-up: {sessions}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="videochat-browser-"))
    log_path = log_dir / "server.log"
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--loopback-only",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    srv = Server(proc, url, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _health_ok(url):
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with {proc.returncode} before /health answered; "
                    f"log:\n{srv.log()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"GET /health did not answer 200 within {STARTUP_TIMEOUT_S} s; "
                    f"log:\n{srv.log()}"
                )
            time.sleep(0.5)
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_talk_to_avatar_in_chromium(server: Server) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    assert QUESTION_WAV.exists(), f"missing fake-microphone fixture {QUESTION_WAV}"
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    args = chromium_args()
    console: list[str] = []
    snapshot: dict = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.goto(server.url + "/")
                page.wait_for_function("() => window.videochat !== undefined")
                page.evaluate(PROBE_JS, MUTE_MIC_AFTER_QUESTION)
                page.click("#start")
                try:
                    outcome = page.wait_for_function(
                        DONE_JS, timeout=CONVERSATION_TIMEOUT_S * 1000, polling=250
                    ).json_value()
                except PlaywrightError:
                    outcome = "timeout"
                if outcome != "done":
                    snapshot = page.evaluate(SNAPSHOT_JS)
                    state = json.dumps(snapshot, indent=1, ensure_ascii=False)
                    why = (
                        f"the page gave up with: {snapshot['error']}"
                        if outcome == "failed"
                        else f"within {CONVERSATION_TIMEOUT_S} s the page did not get all of"
                    )
                    raise AssertionError(
                        f"{why} (wanted: a final user_text about 'capital', a bot_text, a "
                        "playing 512x512 video and audible reply audio, RMS > "
                        f"{AUDIO_RMS_THRESHOLD} while speaking). Page state:\n{state}"
                    )
                snapshot = page.evaluate(SNAPSHOT_JS)
                assert snapshot["sessionId"], "the /offer answer carried no session_id"
                assert snapshot["error"] == "", f"page shows an error: {snapshot['error']}"

                page.click("#hangup")
                page.wait_for_function(
                    "() => window.videochat.pc === null && window.videochat.sessionId === null",
                    timeout=10_000,
                )
                assert page.is_visible("#start")
                _assert_session_closed(server, snapshot["sessionId"])
                errors = [line for line in console if line.startswith("pageerror")]
                assert not errors, f"uncaught errors in the page: {errors}"
            finally:
                browser.close()
    except BaseException:
        print("---- page console ----")
        print("\n".join(console))
        print("---- server log (tail) ----")
        print(server.log())
        raise
    print(json.dumps({"probe": snapshot.get("probe"), "video": snapshot.get("video")}, indent=1))


def test_the_page_uploads_an_avatar_and_reports_a_refused_voice(
    server: Server, tmp_path: Path
) -> None:
    """The page's upload forms: an avatar prepared from a photo with progress
    and picked from the list; a voice clip that is not audio refused with the
    server's message, nothing added."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    import cv2
    from playwright.sync_api import sync_playwright
    from skimage import data

    photo = tmp_path / "portrait.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not a recording\n" * 50)
    key = (REPO_ROOT / "weights" / "api_key").read_text(encoding="utf-8").strip()
    name = "browser-upload-test"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args())
            try:
                page = browser.new_page()
                page.goto(server.url + "/")
                page.wait_for_function("() => window.videochat !== undefined")
                page.click(".avatar-upload:not(.voice-upload) summary")  # open the form
                page.fill("#avatar-name", name)
                page.set_input_files("#avatar-file", str(photo))
                page.fill("#avatar-key", key)
                page.click("#avatar-add")
                page.wait_for_function(
                    "() => /^(Added|Could not|Upload failed)/.test("
                    "document.getElementById('avatar-status').textContent)",
                    timeout=120_000,
                )
                status = page.text_content("#avatar-status") or ""
                assert status.startswith(f"Added {name}"), status
                page.click(".voice-upload summary")
                page.fill("#voice-name", "not-a-voice")
                page.set_input_files("#voice-file", str(not_audio))
                page.fill("#voice-key", key)
                page.click("#voice-add")
                page.wait_for_function(
                    "() => /^(Added|Could not|Upload failed)/.test("
                    "document.getElementById('voice-status').textContent)",
                    timeout=60_000,
                )
                status = page.text_content("#voice-status") or ""
                assert status.startswith("Could not add not-a-voice:"), status
            finally:
                browser.close()
        with _NO_PROXY_OPENER.open(f"{server.url}/api/voices", timeout=10) as resp:
            voices = json.load(resp)
        assert "not-a-voice" not in [v["name"] for v in voices["user"]]
    finally:
        request = urllib.request.Request(
            f"{server.url}/api/avatars/{name}",
            method="DELETE",
            headers={"Authorization": f"Bearer {key}"},
        )
        try:
            _NO_PROXY_OPENER.open(request, timeout=10).close()
        except urllib.error.URLError:
            pass

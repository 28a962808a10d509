"""The Docker image, end to end: its container assembles the models into a
volume, calibrates, serves, and answers a spoken question with speech and video
over WebRTC (the benchmark's aiortc client, loopback only).

Run by `make docker-test` (docker/test.sh), which builds the image and names it
in VIDEOCHAT_DOCKER_IMAGE; skipped without it, so `make test` never runs it.
The container uses the host's network with `--loopback-only`, on a free port.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.client import Client, read_wav, to_48k
from bench.launch import free_port
from server.rtc import offer_loopback_only

IMAGE = os.environ.get("VIDEOCHAT_DOCKER_IMAGE", "")
# Models and calibration: kept between runs, as on a real host.
VOLUME = os.environ.get("VIDEOCHAT_DOCKER_VOLUME", "videochat-test-weights")
# A first start downloads the models and calibrates (minutes on 2 cores).
STARTUP_S = float(os.environ.get("VIDEOCHAT_DOCKER_STARTUP_S", "1800"))
LOG = os.environ.get("VIDEOCHAT_DOCKER_LOG", "")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not IMAGE, reason="VIDEOCHAT_DOCKER_IMAGE not set (make docker-test)"),
]


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def weights_volume_files() -> set[str]:
    """The files at the top of the weights volume, listed by a throwaway container."""
    out = docker(
        "run", "--rm", "--network", "none", "--volume", f"{VOLUME}:/app/weights",
        "--entrypoint", "ls", IMAGE, "-A", "/app/weights",
    )  # fmt: skip
    return set(out.split())


def test_the_image_holds_no_models_and_no_calibration() -> None:
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "ls", IMAGE, "-A", "weights")
    assert out.split() == ["README.md"]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    name = f"videochat-test-{port}"
    docker(
        "run", "--detach", "--name", name, "--network", "host",
        "--volume", f"{VOLUME}:/app/weights", IMAGE,
        "serve", "--host", "127.0.0.1", "--port", str(port), "--loopback-only",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if docker("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
                raise RuntimeError(f"the container exited:\n{tail(name)}")
            if time.monotonic() - started > STARTUP_S:
                raise RuntimeError(f"not ready in {STARTUP_S:.0f} s:\n{tail(name)}")
            time.sleep(2)
        print(f"container ready in {time.monotonic() - started:.0f} s")
        yield base
    finally:
        if LOG:
            Path(LOG).write_text(logs(name), encoding="utf-8")
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


def logs(name: str) -> str:
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def tail(name: str, lines: int = 60) -> str:
    return "\n".join(logs(name).splitlines()[-lines:])


async def test_a_spoken_question_gets_a_spoken_answer(server: str) -> None:
    offer_loopback_only()  # the client, too, offers only 127.0.0.1
    client = Client(server)
    await client.connect()
    try:
        pcm, rate = read_wav(FIXTURES / "question_en.wav")  # "What is the capital of France?"
        since = len(client.received.events)
        client.mic.say(to_48k(pcm, rate))
        spoken = time.perf_counter()
        heard, turn = await client.wait_for_reply(since=since, timeout=240)
        events = [e for _, e in client.received.events[since:]]
        reply = " ".join(e["text"] for e in events if e["type"] == "bot_text")
        print(f"heard {heard['text']!r}; replied {reply!r}; latency {turn['latency']}")
        assert "capital" in heard["text"].lower()
        assert "paris" in reply.lower()
        assert any(e["type"] == "state" and e["value"] == "speaking" for e in events)
        assert client.first_loud_audio_after(spoken) is not None, "no reply audio arrived"
        assert client.received.video_sizes == {(512, 512)}
        assert len(client.received.video_times) > 25
    finally:
        await client.close()


def test_the_calibration_is_cached_in_the_volume(server: str) -> None:
    machine = httpx.get(f"{server}/health", timeout=5).json()["machine"]
    assert machine, "/health shows no calibration"
    assert {"calibration.json", "whisper-base", "kokoro"} <= weights_volume_files()

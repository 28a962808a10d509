"""An aiortc client that talks to the server like a browser would.

It sends a WAV file as its microphone (in real time, then silence), receives
the avatar's audio and video, and records events and arrival times so tests
and the benchmark can measure what a user would experience.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.rtc import shorten_audio_jitter_buffer

RATE = 48_000
FRAME = 960  # 20 ms


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if wav.getnchannels() > 1:
            data = data.reshape(-1, wav.getnchannels())[:, 0]
    return data, rate


def to_48k(pcm: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return pcm.astype(np.int16)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate, RATE)
    out = resample_poly(pcm.astype(np.float32), RATE // g, rate // g)
    return np.clip(out, -32768, 32767).astype(np.int16)


class MicrophoneTrack(MediaStreamTrack):
    """Plays queued utterances in real time; silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[np.ndarray] = []
        self._buffer = np.zeros(0, dtype=np.int16)
        self._start: float | None = None
        self._sent = 0
        # perf_counter time at which the last queued utterance's speech ends.
        self.speech_end_times: list[float] = []
        self.speech_start_times: list[float] = []

    def say(
        self,
        pcm48k: np.ndarray,
        speech_end_offset: float | None = None,
        speech_start_offset: float = 0.0,
    ) -> None:
        """Queue audio; offsets (s) say where the speech inside it starts and ends."""
        self._queue.append((pcm48k, speech_start_offset, speech_end_offset))  # type: ignore[arg-type]

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.perf_counter()
        due = self._start + self._sent / RATE
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._buffer.size < FRAME and self._queue:
            pcm, start_offset, end_offset = self._queue.pop(0)  # type: ignore[misc]
            now = time.perf_counter() + self._buffer.size / RATE
            self.speech_start_times.append(now + start_offset)
            self.speech_end_times.append(
                now + (end_offset if end_offset is not None else pcm.size / RATE)
            )
            self._buffer = np.concatenate([self._buffer, pcm])
        chunk = self._buffer[:FRAME]
        self._buffer = self._buffer[FRAME:]
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, dtype=np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


class Busy(httpx.HTTPStatusError):
    """The server refused the offer: it holds all the conversations it can
    (503). An ``httpx.HTTPStatusError`` like any other refusal, with the
    Retry-After header and the server's message at hand."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            message = str(response.json().get("detail", ""))
        except (ValueError, AttributeError):
            message = response.text
        retry = response.headers.get("retry-after")
        super().__init__(
            f"{response.status_code} (Retry-After: {retry}): {message}",
            request=response.request,
            response=response,
        )
        self.retry_after = retry
        self.message = message


@dataclass
class Received:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio: list[tuple[float, float]] = field(default_factory=list)  # (time, rms)
    video_times: list[float] = field(default_factory=list)  # decoded frames
    # Arrival of the last RTP packet of each video frame, before decoding: the
    # network-side view, apart from this client's decoder.
    video_packet_times: list[float] = field(default_factory=list)
    video_sizes: set[tuple[int, int]] = field(default_factory=set)
    # (arrival time, mouth-region crop) of each frame while Client.keep_crops is set.
    crops: list[tuple[float, np.ndarray]] = field(default_factory=list)
    last_image: np.ndarray | None = None


class Client:
    # The voice every client asks for when none is given (`python -m bench --voice`).
    default_voice: str | None = None

    def __init__(
        self,
        base_url: str,
        lang: str = "auto",
        avatar: str | None = None,
        token: str | None = None,
        voice: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.voice = voice or self.default_voice
        self.lang = lang
        self.avatar = avatar
        # A minted session's token (POST /api/sessions); else the server's own
        # page flow, whose answer carries the session's token.
        self.token = token
        self.mic = MicrophoneTrack()
        self.pc = RTCPeerConnection()
        self.received = Received()
        self.session_id: str | None = None
        self.channel = None
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = asyncio.Event()
        self._event = asyncio.Condition()
        self.keep_crops = False  # the benchmark's mouth-motion detection turns it on

    async def connect(self) -> None:
        pc = self.pc
        pc.addTransceiver(self.mic, direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        self.channel = pc.createDataChannel("events")

        @self.channel.on("open")
        def on_open() -> None:
            self._opened.set()

        @self.channel.on("message")
        def on_message(message: str) -> None:
            self.received.events.append((time.perf_counter(), json.loads(message)))
            asyncio.ensure_future(self._notify())

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            reader = self._read_audio if track.kind == "audio" else self._read_video
            self._tasks.append(asyncio.ensure_future(reader(track)))

        await pc.setLocalDescription(await pc.createOffer())
        body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer", "lang": self.lang}
        if self.avatar:
            body["avatar"] = self.avatar
        if self.voice:
            body["voice"] = self.voice
        if self.token:
            body["token"] = self.token
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{self.base_url}/offer", json=body)
        if response.status_code == 503:
            raise Busy(response)
        response.raise_for_status()
        answer = response.json()
        self.session_id = answer["session_id"]
        self.token = answer["token"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        # Hold received audio 40 ms like the server does, not aiortc's 80 ms:
        # closer to a browser, whose jitter buffer adapts down on loopback.
        shorten_audio_jitter_buffer(pc, 2)
        self._stamp_video_packets()
        await asyncio.wait_for(self._opened.wait(), 20)

    def _stamp_video_packets(self) -> None:
        """Record when each video frame's last RTP packet (marker bit) arrives.

        Wraps aiortc 1.16's RTCRtpReceiver._handle_rtp_packet (private, called by
        the DTLS transport per packet): the only place that sees packets before
        the decoder thread."""
        stamps = self.received.video_packet_times
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.kind != "video" or not hasattr(receiver, "_handle_rtp_packet"):
                continue
            handle = receiver._handle_rtp_packet

            async def stamped(packet, arrival_time_ms, _handle=handle):  # type: ignore[no-untyped-def]
                if packet.marker:
                    stamps.append(time.perf_counter())
                await _handle(packet, arrival_time_ms)

            receiver._handle_rtp_packet = stamped  # type: ignore[method-assign]

    async def _notify(self) -> None:
        async with self._event:
            self._event.notify_all()

    async def wait_for(self, predicate, timeout: float, since: int = 0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        """Wait for an event matching ``predicate`` among the events from index
        ``since`` on; return it."""
        deadline = time.perf_counter() + timeout
        seen = since
        while True:
            for _, event in self.received.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.received.events)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(
                    f"no matching event in {timeout} s; got {[e for _, e in self.received.events]}"
                )
            async with self._event:
                try:
                    await asyncio.wait_for(self._event.wait(), remaining)
                except TimeoutError:
                    pass

    async def wait_for_reply(self, since: int, timeout: float = 120) -> tuple[dict, dict]:
        """Wait for the transcript of the user's turn and for that turn's end
        (the server sends `turn` when the reply has been played); return both."""
        final = await self.wait_for(
            lambda e: e["type"] == "user_text" and e["final"], timeout, since=since
        )
        turn = await self.wait_for(
            lambda e: e["type"] == "turn", timeout, since=self.index_of(final)
        )
        return final, turn

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authorize this client's calls on its own session."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def index_of(self, event: dict[str, Any]) -> int:
        return next(i for i, (_, e) in enumerate(self.received.events) if e is event)

    def send(self, message: dict[str, Any]) -> None:
        assert self.channel is not None
        self.channel.send(json.dumps(message))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray().astype(np.float32) / 32768.0
            self.received.audio.append((time.perf_counter(), float(np.sqrt(np.mean(pcm**2)))))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.received.video_times.append(time.perf_counter())
            self.received.video_sizes.add((frame.width, frame.height))
            if self.keep_crops:
                self.received.crops.append((self.received.video_times[-1], _mouth(frame)))
            if len(self.received.video_times) % 25 == 0:
                self.received.last_image = frame.to_ndarray(format="rgb24")

    def first_loud_audio_after(self, t: float, threshold: float = 0.01) -> float | None:
        for when, rms in self.received.audio:
            if when >= t and rms > threshold:
                return when
        return None

    def audio_since(self, t: float) -> list[tuple[float, float]]:
        return [(when, rms) for when, rms in self.received.audio if when >= t]

    def fps_between(self, start: float, end: float) -> float:
        frames = [t for t in self.received.video_times if start <= t <= end]
        return len(frames) / max(end - start, 1e-6)

    async def close(self) -> None:
        """Hang up (DELETE, while the session's token is still valid), then
        close the peer; closing first would end the session and its token."""
        for task in self._tasks:
            task.cancel()
        if self.session_id:
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    await http.delete(
                        f"{self.base_url}/api/sessions/{self.session_id}", headers=self.auth
                    )
            except httpx.TransportError:  # the server is gone: nothing to hang up
                pass
        await self.pc.close()


def _mouth(frame: av.VideoFrame) -> np.ndarray:
    """The mouth region of a decoded frame, from its luma plane only (cheap)."""
    from bench.analysis import mouth_crop

    try:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        gray = luma[: frame.height, : frame.width]
    except (ValueError, TypeError):
        gray = frame.to_ndarray(format="gray")
    return mouth_crop(gray)

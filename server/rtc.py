"""WebRTC plumbing: peer connections, the microphone reader, loopback-only ICE."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any, Protocol

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from fastapi import HTTPException

from core.config import IceServer
from models.base import VAD_SAMPLE_RATE
from pipelines.events import ErrorEvent, to_wire
from pipelines.session import Session

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "events"


class ChannelLimits(Protocol):
    messages_per_s: float
    messages_burst: int
    max_message_bytes: int


class TokenBucket:
    """``rate`` events a second with bursts of ``burst``. Hand-written (a dozen
    lines) because it is used per session and per client address in-process,
    where rate-limit libraries bring storage backends we do not need."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next event is allowed."""
        return max(0.0, (1.0 - self.tokens) / self.rate) if self.rate > 0 else 60.0


def check_offer(sdp: str) -> None:
    """A 400 for offers this server cannot use, before a slot is taken."""
    if not sdp.lstrip().startswith("v=0"):
        raise HTTPException(400, "malformed offer: an SDP offer starts with 'v=0'")
    if "\nm=application" not in sdp.replace("\r\n", "\n"):
        raise HTTPException(
            400, f"the offer has no data channel: open one labelled {EVENTS_CHANNEL!r} first"
        )
    if "\nm=audio" not in sdp.replace("\r\n", "\n"):
        raise HTTPException(400, "the offer has no audio: add the microphone track")


def _is_loopback_candidate(line: str) -> bool:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
    fields = line.split()
    if len(fields) < 6:
        return False
    try:
        return ipaddress.ip_address(fields[4]).is_loopback
    except ValueError:  # mDNS names (*.local) and junk
        return False


def keep_loopback_candidates(sdp: str) -> str:
    """The offer with every non-loopback ICE candidate removed, so a
    loopback-only server never sends a connectivity check anywhere else."""
    lines = sdp.splitlines()
    kept = [
        line
        for line in lines
        if not line.startswith("a=candidate:") or _is_loopback_candidate(line)
    ]
    if len(kept) != len(lines):
        log.info("dropped %d non-loopback ICE candidate(s)", len(lines) - len(kept))
    return "\r\n".join(kept) + "\r\n"


def aiortc_vp8_options(bitrate: int, **changes: str) -> dict[str, str]:
    """The libvpx options aiortc 1.16's Vp8Encoder opens the codec with
    (codecs/vpx.py), with ``changes``."""
    return {
        "bufsize": str(bitrate),  # rc_buf_sz = 1000 ms
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),  # minrate = maxrate = bit_rate: CBR
        "maxrate": str(bitrate),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
        **changes,
    }


def encode_vp8_without_denoiser() -> None:
    """Make aiortc's VP8 encoder run without libvpx's denoiser.

    aiortc opens libvpx with ``noise-sensitivity 4``. Our frames are rendered,
    not filmed: there is no sensor noise to remove, and on the avatar the
    denoiser costs 1.7 ms a frame (8.1 against 6.4 ms on a 2-core AVX2 EPYC,
    ``python -m bench.encoder``) and lowers the PSNR (41.8 against 46.4 dB).
    There is no setting for it, so the encoder class aiortc picks is replaced
    by one that opens libvpx itself with aiortc 1.16's options but this one.
    """
    import multiprocessing

    import aiortc.codecs
    from aiortc.codecs.vpx import Vp8Encoder, number_of_threads

    class Vp8EncoderWithoutDenoiser(Vp8Encoder):
        def encode(self, frame, force_keyframe: bool = False):  # type: ignore[no-untyped-def]
            codec = self.codec
            bitrate = self.target_bitrate
            if codec is None or (
                frame.width != codec.width
                or frame.height != codec.height
                or abs(bitrate - codec.bit_rate) / codec.bit_rate > 0.1
            ):
                codec = av.CodecContext.create("libvpx", "w")
                codec.width, codec.height = frame.width, frame.height
                codec.bit_rate = bitrate
                codec.pix_fmt = "yuv420p"
                codec.gop_size = 3000
                codec.qmin, codec.qmax = 2, 56
                codec.options = aiortc_vp8_options(bitrate, **{"noise-sensitivity": "0"})
                codec.thread_count = number_of_threads(
                    frame.width * frame.height, multiprocessing.cpu_count()
                )
                self.codec = codec
            return super().encode(frame, force_keyframe)

    aiortc.codecs.Vp8Encoder = Vp8EncoderWithoutDenoiser  # what get_encoder() builds


def offer_loopback_only() -> None:
    """Make aioice gather only 127.0.0.1 host candidates (it never offers
    loopback by default) and make aiortc use no STUN server by default (it
    would look up and query stun.l.google.com). For tests, benchmarks and
    sandboxed machines; every aiortc client in this project calls it."""
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceGatherer

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    RTCIceGatherer.getDefaultIceServers = classmethod(lambda cls: [])  # type: ignore[method-assign]


def rtc_configuration(servers: list[IceServer], loopback_only: bool) -> RTCConfiguration:
    """The server peer's ICE servers: none when loopback-only."""
    if loopback_only:
        return RTCConfiguration(iceServers=[])
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers
        ]
    )


def parse_message(message: str | bytes, limit: int) -> dict[str, Any]:
    """One data-channel message as a JSON object; ValueError says what is wrong."""
    if len(message) > limit:
        raise ValueError(f"messages are limited to {limit} bytes")
    if isinstance(message, bytes):
        raise ValueError("messages must be JSON text, not binary")
    try:
        data = json.loads(message)
    except RecursionError:  # deeply nested brackets
        raise ValueError("message nested too deeply") from None
    except ValueError:
        raise ValueError("messages must be JSON objects") from None
    if not isinstance(data, dict):
        raise ValueError("messages must be JSON objects")
    return data


async def read_microphone(track: MediaStreamTrack, session: Session) -> None:
    """Decode the browser's audio, resample to 16 kHz mono and feed the VAD."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=VAD_SAMPLE_RATE)
    while not session.closed:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            session.feed_mic(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))


def shorten_audio_jitter_buffer(pc: RTCPeerConnection, packets: int) -> None:
    """aiortc holds incoming audio until 4 later packets arrive (80 ms) before
    decoding it. Every turn and every barge-in waits for that, so we let the
    config choose a shorter hold. There is no public setting: this replaces the
    receiver's private JitterBuffer (checked against aiortc 1.16)."""
    from aiortc.jitterbuffer import JitterBuffer

    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind == "audio" and hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=packets)


async def answer_offer(
    session: Session,
    sdp: str,
    kind: str,
    mic_prefetch_packets: int = 4,
    *,
    loopback_only: bool = False,
    limits: ChannelLimits | None = None,
    ice_servers: list[IceServer] | None = None,
) -> RTCPeerConnection:
    """Create the server's peer for one session and answer the browser's offer."""
    pc = RTCPeerConnection(rtc_configuration(ice_servers or [], loopback_only))
    max_bytes = limits.max_message_bytes if limits else 16_384
    bucket = TokenBucket(limits.messages_per_s, limits.messages_burst) if limits else None

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:  # type: ignore[no-untyped-def]
        if channel.label != EVENTS_CHANNEL:
            return

        def send(event: dict) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(event, ensure_ascii=False))

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if bucket is not None and not bucket.take():
                wait = round(bucket.wait_s(), 2)
                slow_down = ErrorEvent(message="too many messages: slow down", retry_after_s=wait)
                send(to_wire(slow_down))
                return
            try:
                data = parse_message(message, max_bytes)
            except ValueError as exc:
                send(to_wire(ErrorEvent(message=str(exc))))
                return
            session.handle_message(data)

        if channel.readyState == "open":
            session.attach(send)
        else:
            channel.on("open", lambda: session.attach(send))

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            session.own_task(read_microphone(track, session))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("session %s: peer %s", session.id, pc.connectionState)
        if pc.connectionState == "connected":
            session.start()

    if loopback_only:
        sdp = keep_loopback_candidates(sdp)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        if mic_prefetch_packets != 4:
            shorten_audio_jitter_buffer(pc, mic_prefetch_packets)
        # aiortc attaches each track to the browser's transceiver of the same kind:
        # reply audio on its sendrecv microphone transceiver, video on its recvonly one.
        pc.addTrack(session.clock.audio_track)
        pc.addTrack(session.clock.video_track)
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await pc.close()
        raise
    return pc

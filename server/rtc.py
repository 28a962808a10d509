"""WebRTC plumbing: peer connections, the microphone reader, loopback-only ICE."""

from __future__ import annotations

import asyncio
import json
import logging

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.base import VAD_SAMPLE_RATE
from pipelines.session import Session

log = logging.getLogger(__name__)


def offer_loopback_only() -> None:
    """Make aioice gather only 127.0.0.1 host candidates (it never offers
    loopback by default). For tests, benchmarks and sandboxed machines."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


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
    session: Session, sdp: str, kind: str, mic_prefetch_packets: int = 4
) -> RTCPeerConnection:
    """Create the server's peer for one session and answer the browser's offer."""
    pc = RTCPeerConnection()

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:  # type: ignore[no-untyped-def]
        if channel.label != "events":
            return

        def send(event: dict) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(event, ensure_ascii=False))

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            try:
                data = json.loads(message)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                send({"type": "error", "message": "messages must be JSON objects"})
                return
            session.handle_message(data)

        if channel.readyState == "open":
            session.attach(send)
        else:
            channel.on("open", lambda: session.attach(send))

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            asyncio.ensure_future(read_microphone(track, session))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("session %s: peer %s", session.id, pc.connectionState)
        if pc.connectionState == "connected":
            session.start()

    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    if mic_prefetch_packets != 4:
        shorten_audio_jitter_buffer(pc, mic_prefetch_packets)
    # aiortc attaches each track to the browser's transceiver of the same kind:
    # reply audio on its sendrecv microphone transceiver, video on its recvonly one.
    pc.addTrack(session.clock.audio_track)
    pc.addTrack(session.clock.video_track)
    await pc.setLocalDescription(await pc.createAnswer())
    return pc

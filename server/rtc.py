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

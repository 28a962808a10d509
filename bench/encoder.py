"""What encoding the avatar's video costs, per setting (`python -m bench.encoder`).

Renders 10 s of the default photo avatar speaking a Kokoro sentence (the real
renderer, 512x512 at 25 fps), then encodes the same frames with:

- aiortc's own VP8 encoder as the server uses it (libvpx, realtime,
  cpu-used -6, noise sensitivity 4, CBR at its start rate of 500 kbps);
- the same with other libvpx settings (no denoiser; cpu-used -16, the fastest);
- aiortc's H.264 encoder (libx264, ultrafast, zerolatency, 1 Mbps).

For each: ms of CPU per frame (process time, so encoder threads count; the
RGB to YUV conversion is included, as in aiortc), the share of one core at
25 fps, kbit/s out, and the luma PSNR of the decoded frames against the
rendered ones. Prints a markdown table; with
``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import fractions
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

FPS = 25
SECONDS = 10
SENTENCE = (
    "Maybe my mom will bring apple pie to the picnic, and we can sit by the river "
    "and watch the boats go by until the sun goes down."
)


def render_frames(weights: Path, seconds: float = SECONDS) -> list[np.ndarray]:
    from core.config import Config
    from models.avatar.model import PhotoAvatarModel
    from models.base import to_media_rate
    from models.tts import load_synthesizer

    speech = load_synthesizer(Config().tts, weights).synthesize(SENTENCE, "en")
    stream = PhotoAvatarModel(weights).new_stream("astronaut")
    stream.push_audio(to_media_rate(speech), speech=speech)
    return [stream.next_frame().image for _ in range(int(seconds * FPS))]


def _video_frame(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = index * (90_000 // FPS)
    frame.time_base = fractions.Fraction(1, 90_000)
    return frame


def _aiortc_vp8() -> Callable[[av.VideoFrame], bytes]:
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    encoder = Vp8Encoder()
    # aiortc returns RTP payloads; strip the payload descriptors for the decoder.
    return lambda frame: b"".join(vp8_depayload(p) for p in encoder.encode(frame)[0])


def _aiortc_h264() -> Callable[[av.VideoFrame], bytes]:
    from aiortc.codecs.h264 import H264Encoder, h264_depayload

    encoder = H264Encoder()
    return lambda frame: b"".join(h264_depayload(p) for p in encoder.encode(frame)[0])


def _libvpx(**changes: str) -> Callable[[av.VideoFrame], bytes]:
    """libvpx with aiortc 1.16's options (codecs/vpx.py), some changed."""
    from server.rtc import aiortc_vp8_options

    bitrate = 500_000
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = codec.height = 512
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.time_base = fractions.Fraction(1, 90_000)
    codec.options = aiortc_vp8_options(bitrate, **changes)
    codec.thread_count = 1

    def encode(frame: av.VideoFrame) -> bytes:
        return b"".join(bytes(p) for p in codec.encode(frame.reformat(format="yuv420p")))

    return encode


SETTINGS: dict[str, Callable[[], Callable[[av.VideoFrame], bytes]]] = {
    "VP8, aiortc as shipped (cpu-used -6, denoiser 4)": _aiortc_vp8,
    "VP8, no denoiser": lambda: _libvpx(**{"noise-sensitivity": "0"}),
    "VP8, cpu-used -16 (fastest), no denoiser": lambda: _libvpx(
        **{"cpu-used": "-16", "noise-sensitivity": "0"}
    ),
    "H.264, aiortc (libx264 ultrafast, zerolatency)": _aiortc_h264,
}


def _psnr_luma(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(images: list[np.ndarray], name: str, make) -> dict[str, float]:  # type: ignore[no-untyped-def]
    encode = make()
    decoder_name = "h264" if "H.264" in name else "vp8"
    decoder = av.CodecContext.create(decoder_name, "r")
    cpu: list[float] = []
    size = 0
    psnr: list[float] = []
    for index, image in enumerate(images):
        frame = _video_frame(image, index)
        start = time.process_time()
        data = encode(frame)
        cpu.append(time.process_time() - start)
        size += len(data)
        if data:
            for decoded in decoder.decode(av.Packet(data)):
                reference = frame.reformat(format="yuv420p").to_ndarray()[:512]
                psnr.append(_psnr_luma(decoded.to_ndarray()[:512], reference))
    ms = 1000 * float(np.median(cpu[FPS:]))  # after the first second (keyframe, warm-up)
    return {
        "ms": ms,
        "core": ms * FPS / 1000,
        "kbps": 8 * size / len(images) * FPS / 1000,
        "psnr": float(np.median(psnr)) if psnr else float("nan"),
    }


TABLE_HEADER = (
    "| encoder setting | CPU ms per frame (median) | share of one core at 25 fps "
    "| kbit/s | luma PSNR (dB, median) |",
    "|---|---|---|---|---|",
)


def table_row(name: str, r: dict[str, float]) -> str:
    psnr = "-" if r["psnr"] != r["psnr"] else f"{r['psnr']:.1f}"
    return f"| {name} | {r['ms']:.2f} | {100 * r['core']:.0f} % | {r['kbps']:.0f} | {psnr} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    images = render_frames(Path(args.weights))
    lines = list(TABLE_HEADER)
    for name, make in SETTINGS.items():
        lines.append(table_row(name, measure(images, name, make)))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

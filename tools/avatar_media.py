"""Reading what the user uploads to make an avatar: a picture (OpenCV) or a
short clip (PyAV, resampled to 25 fps), refused with an ``AvatarError`` that
says what is wrong with it (damaged, a photo sent as a video, too long ...)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from tools.avatar_library import FPS, AvatarError, AvatarLimits

log = logging.getLogger(__name__)

TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}  # FFmpeg "decodes" text files as these

Kind = Literal["photo", "video"]


def decode_image(path: Path) -> np.ndarray | None:
    """The picture as BGR, or None where OpenCV cannot decode it (it refuses a
    truncated JPEG or PNG as a whole)."""
    data = np.fromfile(str(path), np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return bgr if bgr is not None and bgr.ndim == 3 else None


def _undecodable_image(path: Path) -> AvatarError:
    return AvatarError(
        f"{path.name} could not be decoded as an image (PNG, JPEG, WebP, BMP or TIFF): "
        "it is damaged, truncated or not a picture"
    )


def read_photo(path: Path) -> np.ndarray:
    """The picture as RGB; AvatarError when it cannot be decoded or is tiny."""
    bgr = decode_image(path)
    if bgr is None:
        raise _undecodable_image(path)
    if min(bgr.shape[:2]) < 16:
        raise AvatarError(f"{path.name} is too small a picture ({bgr.shape[1]}x{bgr.shape[0]})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def undecodable_video(path: Path) -> AvatarError:
    """The error for a file that is no clip we can read."""
    return AvatarError(
        f"{path.name} could not be decoded as a video (MP4, WebM, MOV, MKV ...): "
        "it is damaged, truncated or not a video"
    )


def _is_still_image(container: Any) -> bool:
    """FFmpeg reads a lone picture through its image demuxers ("image2" by the
    file's extension, "jpeg_pipe", "png_pipe" ... by its content)."""
    names = container.format.name.split(",")
    return any(n == "image2" or n.endswith("_pipe") for n in names)


def open_video(path: Path) -> Any:
    import av

    try:
        container = av.open(str(path))
    except Exception:
        raise undecodable_video(path) from None
    video = container.streams.video
    if not video or video[0].codec_context.name in TEXT_CODECS:
        container.close()
        raise undecodable_video(path)
    if _is_still_image(container):
        container.close()
        if decode_image(path) is None:
            raise undecodable_video(path)
        raise AvatarError(f"{path.name} is a photo, not a video: add it as a photo")
    return container


def clip_duration(container: Any) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def frames_25fps(
    path: Path, limits: AvatarLimits, width: int | None = None, height: int | None = None
) -> Iterator[np.ndarray]:
    """The clip's frames resampled to 25 fps (each output frame: the latest source
    frame at its time), as RGB arrays, optionally scaled by libswscale."""
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        k = 0
        start = None
        prev = None
        prev_t = 0.0
        step = 1.0 / FPS
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else prev_t + step
                if start is None:
                    start = t
                t -= start
                if t > limits.max_clip_seconds + 0.5:
                    raise AvatarError(too_long(t, limits))
                if prev is not None:
                    while k * step < t - 1e-6:
                        yield prev
                        k += 1
                prev = frame.to_ndarray(format="rgb24", width=width, height=height)
                prev_t = t
        except AvatarError:
            raise
        except Exception as exc:
            if prev is None:
                raise undecodable_video(path) from None
            log.warning("%s: decoding stopped early: %s", path.name, exc)
        if prev is not None:
            end = prev_t + step
            while k * step < end - 1e-6:
                yield prev
                k += 1
    finally:
        container.close()


def too_long(seconds: float, limits: AvatarLimits) -> str:
    return (
        f"the clip is too long ({seconds:.1f} s; at most {limits.max_clip_seconds:g} s): "
        "trim it to a few seconds of the person talking and pausing"
    )


def sniff_kind(path: Path) -> Kind:
    """Returns "photo" if OpenCV decodes the file as an image, else "video" if PyAV finds a
    video stream that decodes and is not a lone picture; AvatarError otherwise."""
    if decode_image(path) is not None:
        return "photo"
    container = None
    try:
        import av

        container = av.open(str(path))
        video = container.streams.video
        if _is_still_image(container):
            # A picture OpenCV refused (a truncated JPEG): FFmpeg would decode
            # what there is of it, a one-frame "clip".
            raise _undecodable_image(path)
        if video and video[0].codec_context.name not in TEXT_CODECS:
            next(container.decode(video[0]))  # decodes, too
            return "video"
    except AvatarError:
        raise
    except Exception:
        pass
    finally:
        if container is not None:
            container.close()
    raise AvatarError(f"{path.name} could not be decoded as an image or a video")

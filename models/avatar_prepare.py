"""Avatars from a photo or a video, prepared once and cached under
``weights_dir/avatars/<name>/``.

Layout of a prepared avatar (everything in pixels of the 512x512 crop)::

    meta.json      mode ("photo" | "video"), fps, size, crop box in the source,
                   and the face geometry models/avatar_photo.py reads (mouth,
                   eyes: the ``ASTRONAUT_META`` schema), derived from landmarks
    image.png      512x512 head-and-shoulders crop, the face ~40 % of the width
                   (for a video: its first frame)
    landmarks.npy  float32 FaceMesh landmarks: (478, 2) for a photo,
                   (N, 478, 2) for a video (one row per frame); the photo
                   renderer builds its mouth mesh on them. Photo avatars
                   without this file still load: the renderer runs FaceMesh
                   once (``face_landmarks``)
    frames/        video only: the N cropped frames at 25 fps, 000000.jpg ...

The crop box of a video is fixed for the whole clip (from the median face box).
Preparation builds in ``avatars/.tmp/`` and renames the finished folder into
place, so a failure or a crash never leaves a half-written avatar; bad input
raises ``AvatarError`` with a message meant for the user.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # whole name: fullmatch
DEFAULT_AVATAR = "astronaut"
SIZE = 512
FPS = 25
FACE_SHARE = 0.40  # face (landmark) width / crop width
FACE_TOP = 0.45  # face centre, as a share of the crop height from its top
DET_TO_FACE = 0.9  # FaceMesh face width / face-detector box width (about)
MIN_CLIP_SECONDS = 1.0
MAX_LOST_SHARE = 0.2  # video frames without landmarks (interpolated) at most
MIN_FACE_SCORE = 0.6  # a face detection scored lower is no face
SAME_FACE_OVERLAP = 0.5  # boxes overlapping more (of the smaller one) are one face
MIN_OTHER_FACE_SHARE = 0.5  # a further face is at least this share of the main face's width
TMP_DIR = ".tmp"
TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}  # FFmpeg "decodes" text files as these
N_LANDMARKS = 478

Kind = Literal["photo", "video"]
Progress = Callable[[float, str], None]

# FaceMesh indices (mediapipe's canonical face model; 468-477 are the irises).
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # outer mouth corners (image left, image right)
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14
LIP_UPPER_OUTER, LIP_LOWER_OUTER = 0, 17
CHIN = 152
# Image-left eye (the subject's right) and image-right eye:
# (outer/inner corners in image-left-to-right order, upper lid, lower lid).
EYES = ((33, 133, 159, 145), (362, 263, 386, 374))


class AvatarError(ValueError):
    """Bad input for an avatar (the API answers 4xx, the CLI prints it)."""

    status = 400


class AvatarNotFound(AvatarError):
    status = 404


class AvatarTooLarge(AvatarError):
    status = 413


@dataclass
class AvatarLimits:
    max_upload_mb: float = 50.0
    max_clip_seconds: float = 30.0
    min_face_px: int = 80

    @classmethod
    def from_config(cls, section: Any) -> AvatarLimits:
        return cls(
            max_upload_mb=float(section.max_upload_mb),
            max_clip_seconds=float(section.max_clip_seconds),
            min_face_px=int(section.min_face_px),
        )


@dataclass
class AvatarInfo:
    name: str
    mode: str
    path: Path
    frames: int = 1
    fps: int = FPS
    size: int = SIZE
    crop: list[int] = field(default_factory=list)
    seconds: float = 0.0  # preparation time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["ready"] = True
        return d


def check_name(name: str) -> str:
    """The name, if it is a valid avatar name; AvatarError naming what is wrong
    otherwise (a trailing newline is not let through: ``fullmatch``)."""
    if not isinstance(name, str):
        raise AvatarError(f"bad avatar name {name!r}: not a string")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise AvatarError(
            f"bad avatar name {name!r}: it contains a control character "
            f"(U+{ord(control):04X}); use 1-40 letters, digits, '-' or '_'"
        )
    if not NAME_RE.fullmatch(name):
        raise AvatarError(
            f"bad avatar name {name!r}: use 1-40 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def _noop(fraction: float, message: str) -> None:
    pass


# ====================================================================== faces
def _quiet_mediapipe() -> Any:
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import mediapipe as mp
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            "mediapipe is not installed: pip install --no-deps mediapipe==0.10.21 "
            "(see requirements.lock)"
        ) from exc
    return mp


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The intersection of two (x, y, w, h) boxes over the smaller one's area: 1 when
    one lies inside the other (a detector's box for the nose or the mouth of a
    face another box already holds), 0 when they are apart."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    smaller = min(a[2] * a[3], b[2] * b[3])
    return inter / smaller if smaller > 0 else 0.0


class FaceDetector:
    """The distinct faces in a picture, as boxes (x, y, w, h in pixels), the main
    (widest) face first, from mediapipe's full-range and short-range BlazeFace
    detectors.

    The main face is the widest box either detector finds (scored at least
    ``min_confidence``). A further face counts only if it is a person the
    subject could be confused with, which is where the detectors' false boxes
    differ from real faces (measured on variants of the astronaut photo and on
    pictures of two people, tests/test_avatar_faces.py):

    - it is scored at least ``min_confidence``: the short-range graph also
      reports boxes scored below the threshold it is given (0.50-0.57 on the
      astronaut's collar);
    - it overlaps no face already found (``SAME_FACE_OVERLAP`` of the smaller
      box): both detectors find the same face, or a box lies on a detail of it;
    - the full-range detector finds it: it is the model for several faces at
      any distance, and it found every second person in our two-person
      pictures, while the short-range one (for one face close to the camera)
      missed most of them and was alone in boxing the collar (scored up to 0.75
      in a brightened photo);
    - it is at least ``MIN_OTHER_FACE_SHARE`` of the main face's width: a face
      that much smaller is a detail or a person far behind, and leaves no doubt
      about whom to animate.
    """

    def __init__(self, min_confidence: float = MIN_FACE_SCORE) -> None:
        mp = _quiet_mediapipe()
        fd = mp.solutions.face_detection
        self.min_confidence = min_confidence
        self._full_range = fd.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._short_range = fd.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence
        )

    def _boxes(self, detector: Any, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        boxes = []
        for d in detector.process(rgb).detections or []:
            score = float(d.score[0]) if d.score else 0.0
            b = d.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, b.width * w, b.height * h], np.float64)
            if score >= self.min_confidence and box[2] > 1 and box[3] > 1:
                boxes.append(box)
        return boxes

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        # Full-range boxes first: where both detectors find a face, its box is kept.
        found: list[tuple[np.ndarray, bool]] = []  # (box, found by the full-range one)
        for box, full_range in [(b, True) for b in self._boxes(self._full_range, rgb)] + [
            (b, False) for b in self._boxes(self._short_range, rgb)
        ]:
            if all(_overlap(box, kept) < SAME_FACE_OVERLAP for kept, _ in found):
                found.append((box, full_range))
        if not found:
            return []
        found.sort(key=lambda item: -item[0][2])
        main = found[0][0]
        others = [
            box
            for box, full_range in found[1:]
            if full_range and box[2] >= MIN_OTHER_FACE_SHARE * main[2]
        ]
        if len(others) < len(found) - 1:
            log.debug("ignored %d boxes that are no second face", len(found) - 1 - len(others))
        return [main, *others]

    def close(self) -> None:
        self._full_range.close()
        self._short_range.close()


class FaceMesher:
    """478 FaceMesh landmarks in pixels; ``static``: photo mode, else tracking."""

    def __init__(self, static: bool) -> None:
        mp = _quiet_mediapipe()
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=0.5,
            min_tracking_confidence=0.5,
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        pts = result.multi_face_landmarks[0].landmark
        return np.array([[p.x * w, p.y * h] for p in pts], np.float32)

    def close(self) -> None:
        self._mesh.close()


def face_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """The (478, 2) float32 FaceMesh landmarks (pixels) of the face in one RGB
    photo, or None if none is found. For avatars prepared without
    ``landmarks.npy``: the photo renderer builds its mouth mesh on them."""
    mesher = FaceMesher(static=True)
    try:
        return mesher(np.ascontiguousarray(rgb, dtype=np.uint8))
    finally:
        mesher.close()


def crop_box(face: np.ndarray, shape: tuple[int, ...]) -> list[int]:
    """A square head-and-shoulders box (x, y, side) around a face box (x, y, w, h)
    in a (h, w) image: the face ~40 % of its width, inside the image (smaller and
    shifted rather than padded when the face is near an edge)."""
    h, w = shape[:2]
    fx, fy, fw, fh = (float(v) for v in face)
    side = fw * DET_TO_FACE / FACE_SHARE
    side = int(round(min(side, w, h)))
    cx, cy = fx + fw / 2, fy + fh / 2
    x = int(round(min(max(cx - side / 2, 0), w - side)))
    y = int(round(min(max(cy - FACE_TOP * side, 0), h - side)))
    return [x, y, side]


def _crop(rgb: np.ndarray, box: list[int]) -> np.ndarray:
    x, y, side = box
    patch = rgb[y : y + side, x : x + side]
    interp = cv2.INTER_AREA if side > SIZE else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(patch, (SIZE, SIZE), interpolation=interp))


def face_meta(lm: np.ndarray) -> dict[str, Any]:
    """The renderer's face geometry (``ASTRONAUT_META`` schema) from landmarks."""
    p = lm.astype(float)
    left, right = p[MOUTH_LEFT], p[MOUTH_RIGHT]
    mouth_w = float(np.linalg.norm(right - left))
    gap = float(p[LIP_LOWER_INNER, 1] - p[LIP_UPPER_INNER, 1])
    eyes = []
    for a, b, up, lo in EYES:
        corners = sorted([p[a].tolist(), p[b].tolist()])
        eyes.append({"corners": corners, "upper": float(p[up, 1]), "lower": float(p[lo, 1])})
    eyes.sort(key=lambda e: e["corners"][0][0])
    return {
        "size": SIZE,
        "mouth": {
            "left": left.tolist(),
            "right": right.tolist(),
            # The top of the lower lip: where the gap opens (a smile showing its
            # upper teeth already has a gap; those teeth stay as photographed).
            "parting": float(p[LIP_LOWER_INNER, 1]),
            "chin": float(p[CHIN, 1]),
            "upper_teeth": 0.0 if gap > 0.06 * mouth_w else 0.8,
            "lower_teeth": 0.5,
        },
        "eyes": eyes,
    }


# ===================================================================== photo
def _decode_image(path: Path) -> np.ndarray | None:
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


def _read_image(path: Path) -> np.ndarray:
    bgr = _decode_image(path)
    if bgr is None:
        raise _undecodable_image(path)
    if min(bgr.shape[:2]) < 16:
        raise AvatarError(f"{path.name} is too small a picture ({bgr.shape[1]}x{bgr.shape[0]})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _one_face(boxes: list[np.ndarray], limits: AvatarLimits, where: str) -> np.ndarray:
    if not boxes:
        raise AvatarError(f"no face found in {where}: use a clear, frontal face")
    if len(boxes) > 1:
        raise AvatarError(
            f"{len(boxes)} faces found in {where}: use a picture of exactly one person"
        )
    box = boxes[0]
    if box[2] < limits.min_face_px:
        raise AvatarError(
            f"the face in {where} is too small ({box[2]:.0f} px wide; at least "
            f"{limits.min_face_px} px): use a closer or larger picture"
        )
    return box


def find_face(
    rgb: np.ndarray, limits: AvatarLimits, detector: FaceDetector | None = None
) -> np.ndarray:
    """The box (x, y, w, h) of the one face in a photo; AvatarError if there is
    none, more than one or too small a one (``detector``: reuse one)."""
    own = detector is None
    detector = detector or FaceDetector()
    try:
        return _one_face(detector(rgb), limits, "the photo")
    finally:
        if own:
            detector.close()


def _prepare_photo(src: Path, out: Path, limits: AvatarLimits, progress: Progress) -> dict:
    rgb = _read_image(src)
    progress(0.2, "finding the face")
    face = find_face(rgb, limits)
    progress(0.5, "face landmarks")
    # First pass around the detector's box, then the final box from the landmarks.
    box = crop_box(face, rgb.shape)
    mesher = FaceMesher(static=True)
    try:
        lm = mesher(_crop(rgb, box))
        if lm is None:
            raise AvatarError("no face landmarks found in the photo: use a clear, frontal face")
        src_lm = lm * (box[2] / SIZE) + np.array(box[:2], np.float32)
        x0, y0 = src_lm.min(axis=0)
        x1, y1 = src_lm.max(axis=0)
        fw = float(x1 - x0)
        face2 = np.array([x0 - 0.5 * fw * (1 / DET_TO_FACE - 1), y0, fw / DET_TO_FACE, y1 - y0])
        box = crop_box(face2, rgb.shape)
        image = _crop(rgb, box)
        lm = mesher(image)
        if lm is None:  # the landmarks of the first pass, moved into the final crop
            lm = (src_lm - np.array(box[:2], np.float32)) * (SIZE / box[2])
    finally:
        mesher.close()
    progress(0.85, "writing")
    cv2.imwrite(str(out / "image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.save(out / "landmarks.npy", lm.astype(np.float32))
    return {"mode": "photo", "frames": 1, "crop": box, "landmarks": lm}


# ===================================================================== video
def _undecodable_video(path: Path) -> AvatarError:
    return AvatarError(
        f"{path.name} could not be decoded as a video (MP4, WebM, MOV, MKV ...): "
        "it is damaged, truncated or not a video"
    )


def _is_still_image(container: Any) -> bool:
    """FFmpeg reads a lone picture through its image demuxers ("image2" by the
    file's extension, "jpeg_pipe", "png_pipe" ... by its content)."""
    names = container.format.name.split(",")
    return any(n == "image2" or n.endswith("_pipe") for n in names)


def _open_video(path: Path) -> Any:
    import av

    try:
        container = av.open(str(path))
    except Exception:
        raise _undecodable_video(path) from None
    video = container.streams.video
    if not video or video[0].codec_context.name in TEXT_CODECS:
        container.close()
        raise _undecodable_video(path)
    if _is_still_image(container):
        container.close()
        if _decode_image(path) is None:
            raise _undecodable_video(path)
        raise AvatarError(f"{path.name} is a photo, not a video: add it as a photo")
    return container


def _duration(container: Any) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _frames_25(
    path: Path, limits: AvatarLimits, width: int | None = None, height: int | None = None
) -> Iterator[np.ndarray]:
    """The clip's frames resampled to 25 fps (each output frame: the latest source
    frame at its time), as RGB arrays, optionally scaled by libswscale."""
    container = _open_video(path)
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
                    raise AvatarError(_too_long(t, limits))
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
                raise _undecodable_video(path) from None
            log.warning("%s: decoding stopped early: %s", path.name, exc)
        if prev is not None:
            end = prev_t + step
            while k * step < end - 1e-6:
                yield prev
                k += 1
    finally:
        container.close()


def _too_long(seconds: float, limits: AvatarLimits) -> str:
    return (
        f"the clip is too long ({seconds:.1f} s; at most {limits.max_clip_seconds:g} s): "
        "trim it to a few seconds of the person talking and pausing"
    )


def _prepare_video(src: Path, out: Path, limits: AvatarLimits, progress: Progress) -> dict:
    container = _open_video(src)
    try:
        duration = _duration(container)
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
    finally:
        container.close()
    if duration is not None and duration > limits.max_clip_seconds + 0.5:
        raise AvatarError(_too_long(duration, limits))
    if not w or not h:
        raise _undecodable_video(src)
    expected = max(1, int((duration or limits.max_clip_seconds) * FPS))

    # Pass 1: where is the face (on frames at most 640 px wide)?
    scale = min(1.0, 640 / max(w, h))
    dw, dh = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
    detector = FaceDetector()
    boxes: list[np.ndarray] = []
    counts: list[int] = []
    try:
        for i, rgb in enumerate(_frames_25(src, limits, dw, dh)):
            if i % 2 == 0:  # every other frame is plenty for the framing
                found = detector(rgb)
                counts.append(len(found))
                if len(found) == 1:
                    boxes.append(found[0] / scale)
            if i % 10 == 0:
                progress(0.05 + 0.3 * min(1.0, i / expected), "finding the face")
    finally:
        detector.close()
    n_frames = 2 * len(counts)
    if n_frames / FPS < MIN_CLIP_SECONDS:
        raise AvatarError(f"the clip is too short (at least {MIN_CLIP_SECONDS:g} s)")
    counts_a = np.array(counts)
    if np.mean(counts_a >= 2) > 0.2:
        raise AvatarError(
            f"{int(counts_a.max())} faces found in the clip: use a video of exactly one person"
        )
    if len(boxes) < 0.5 * len(counts):
        raise AvatarError("no face found in most of the clip: use a clear, frontal face")
    face = np.median(np.array(boxes), axis=0)
    _one_face([face], limits, "the clip")
    box = crop_box(face, (h, w))

    # Pass 2: crop every frame with the fixed box, track the landmarks.
    frames_dir = out / "frames"
    frames_dir.mkdir()
    mesher = FaceMesher(static=False)
    lms: list[np.ndarray | None] = []
    first: np.ndarray | None = None
    try:
        for i, rgb in enumerate(_frames_25(src, limits)):
            image = _crop(rgb, box)
            if first is None:
                first = image
            lms.append(mesher(image))
            ok = cv2.imwrite(
                str(frames_dir / f"{i:06d}.jpg"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            )
            if not ok:
                raise OSError(f"cannot write {frames_dir}")
            if i % 5 == 0:
                progress(0.35 + 0.6 * min(1.0, i / max(n_frames, 1)), "tracking the face")
    finally:
        mesher.close()
    assert first is not None
    n = len(lms)
    missing = [i for i, v in enumerate(lms) if v is None]
    if len(missing) > MAX_LOST_SHARE * n:
        raise AvatarError(
            f"the face is lost in {100 * len(missing) / n:.0f} % of the clip: keep the face "
            "visible, frontal and steady"
        )
    landmarks = _fill_missing(lms)
    progress(0.97, "writing")
    cv2.imwrite(str(out / "image.png"), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
    np.save(out / "landmarks.npy", landmarks)
    return {
        "mode": "video",
        "frames": n,
        "crop": box,
        "landmarks": landmarks[0],
        "frames_dir": "frames",
        "frame_pattern": "%06d.jpg",
        "lost_frames": len(missing),
    }


def _fill_missing(lms: list[np.ndarray | None]) -> np.ndarray:
    """(N, 478, 2) float32, frames without landmarks linearly interpolated."""
    n = len(lms)
    known = np.array([i for i, v in enumerate(lms) if v is not None])
    stack = np.stack([lms[i] for i in known]).astype(np.float32)
    out = np.empty((n, N_LANDMARKS, 2), np.float32)
    idx = np.arange(n)
    flat = stack.reshape(len(known), -1)
    for j in range(flat.shape[1]):
        out.reshape(n, -1)[:, j] = np.interp(idx, known, flat[:, j])
    return out


# ================================================================== prepare
def sniff_kind(path: Path) -> Kind:
    """Returns "photo" if OpenCV decodes the file as an image, else "video" if PyAV finds a
    video stream that decodes and is not a lone picture; AvatarError otherwise."""
    if _decode_image(path) is not None:
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


def prepare_avatar(
    name: str,
    source_path: str | Path,
    kind: Kind | None,
    avatars_dir: str | Path,
    limits: AvatarLimits | None = None,
    progress: Progress | None = None,
    *,
    allow_default: bool = False,
) -> AvatarInfo:
    """Prepare ``avatars_dir/<name>/`` from a photo or a video (``kind`` None:
    sniffed). Replaces an existing avatar of that name, atomically. Raises
    ``AvatarError`` on bad input, leaving nothing behind."""
    t0 = time.perf_counter()
    limits = limits or AvatarLimits()
    progress = progress or _noop
    check_name(name)
    if name == DEFAULT_AVATAR and not allow_default:
        raise AvatarError(f"{name!r} is the built-in default avatar; choose another name")
    src = Path(source_path)
    if not src.is_file():
        raise AvatarError(f"no such file: {src}")
    size_mb = src.stat().st_size / (1024 * 1024)
    if size_mb > limits.max_upload_mb:
        raise AvatarTooLarge(
            f"{src.name} is too large ({size_mb:.1f} MB; at most {limits.max_upload_mb:g} MB)"
        )
    if kind is None:
        kind = sniff_kind(src)
    if kind not in ("photo", "video"):
        raise AvatarError(f"kind must be 'photo' or 'video', not {kind!r}")
    progress(0.0, f"reading the {kind}")

    root = Path(avatars_dir)
    tmp_root = root / TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = tmp_root / f"{name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        if kind == "photo":
            result = _prepare_photo(src, work, limits, progress)
        else:
            result = _prepare_video(src, work, limits, progress)
        lm = result.pop("landmarks")
        meta = face_meta(lm)
        meta.update(
            {
                "name": name,
                "mode": result["mode"],
                "fps": FPS,
                "frames": result["frames"],
                "crop": [int(v) for v in result["crop"]],  # x, y, side in the source
                "source": src.name,
                "landmarks": "landmarks.npy",
                "prepared": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        for key in ("frames_dir", "frame_pattern", "lost_frames"):
            if key in result:
                meta[key] = result[key]
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        _install(work, root / name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        _cleanup_tmp(tmp_root)
    seconds = time.perf_counter() - t0
    progress(1.0, "ready")
    log.info("avatar %r prepared from %s (%s) in %.1f s", name, src.name, kind, seconds)
    return AvatarInfo(
        name=name,
        mode=meta["mode"],
        path=root / name,
        frames=meta["frames"],
        crop=meta["crop"],
        seconds=seconds,
    )


def _install(work: Path, target: Path) -> None:
    """Rename the finished folder into place (replacing an older one)."""
    old = None
    if target.exists():
        old = work.parent / f"old-{target.name}-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    try:
        work.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _cleanup_tmp(tmp_root: Path) -> None:
    try:
        tmp_root.rmdir()  # only when empty (another preparation may be running)
    except OSError:
        pass


# =================================================================== manage
def read_info(folder: Path) -> AvatarInfo | None:
    meta_path = folder / "meta.json"
    if not (folder / "image.png").is_file() or not NAME_RE.fullmatch(folder.name):
        return None
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        return None
    return AvatarInfo(
        name=folder.name,
        mode=str(meta.get("mode", "photo")),
        path=folder,
        frames=int(meta.get("frames", 1)),
        fps=int(meta.get("fps", FPS)),
        size=int(meta.get("size", SIZE)),
        crop=list(meta.get("crop", [])),
    )


def list_avatars(avatars_dir: str | Path) -> list[AvatarInfo]:
    root = Path(avatars_dir)
    if not root.is_dir():
        return []
    infos = (read_info(p) for p in sorted(root.iterdir()) if p.is_dir())
    return [i for i in infos if i is not None]


def remove_avatar(name: str, avatars_dir: str | Path, default: str = DEFAULT_AVATAR) -> None:
    check_name(name)
    if name in (default, DEFAULT_AVATAR):
        raise AvatarError(f"{name!r} is the default avatar and cannot be removed")
    root = Path(avatars_dir)
    target = root / name
    if not target.is_dir():
        raise AvatarNotFound(f"no avatar {name!r}")
    tmp_root = root / TMP_DIR
    tmp_root.mkdir(exist_ok=True)
    trash = tmp_root / f"removed-{name}-{uuid.uuid4().hex[:8]}"
    target.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    _cleanup_tmp(tmp_root)


def ensure_default_avatar(
    avatars_dir: str | Path, progress: Progress | None = None
) -> AvatarInfo | None:
    """Prepare the built-in "astronaut" (``skimage.data.astronaut()``) if it is not
    there yet; returns its info, or None if it already was."""
    root = Path(avatars_dir)
    if (root / DEFAULT_AVATAR / "meta.json").is_file() and read_info(root / DEFAULT_AVATAR):
        return None
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    tmp_root = root / TMP_DIR
    tmp_root.mkdir(exist_ok=True)
    src_dir = tmp_root / f"source-{uuid.uuid4().hex[:8]}"
    src_dir.mkdir()
    src = src_dir / "skimage-astronaut.png"
    try:
        cv2.imwrite(str(src), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        return prepare_avatar(
            DEFAULT_AVATAR, src, "photo", root, AvatarLimits(), progress, allow_default=True
        )
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)
        _cleanup_tmp(tmp_root)

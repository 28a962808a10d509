"""Avatars from a photo or a video, prepared once into
``weights_dir/avatars/<name>/`` (the layout: tools/avatar_library.py).

A photo is cropped to its one face, head and shoulders, and its FaceMesh
landmarks kept; a clip is cropped with one box for the whole clip (from the
median face box) and its landmarks tracked frame by frame. The face geometry
in meta.json comes from the landmarks (models/avatar/assets.py ``face_meta``).
Bad input raises ``AvatarError`` with a message meant for the user.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.avatar.assets import face_meta
from models.avatar.faces import N_LANDMARKS, FaceDetector, FaceMesher
from tools.avatar_library import (
    DEFAULT_AVATAR,
    FPS,
    SIZE,
    TMP_DIR,
    AvatarError,
    AvatarInfo,
    AvatarLimits,
    AvatarTooLarge,
    check_name,
    cleanup_tmp,
    install,
    read_info,
)
from tools.avatar_media import (
    Kind,
    clip_duration,
    frames_25fps,
    open_video,
    read_photo,
    sniff_kind,
    too_long,
    undecodable_video,
)

log = logging.getLogger(__name__)

FACE_SHARE = 0.40  # face (landmark) width / crop width
FACE_TOP = 0.45  # face centre, as a share of the crop height from its top
DET_TO_FACE = 0.9  # FaceMesh face width / face-detector box width (about)
MIN_CLIP_SECONDS = 1.0
MAX_LOST_SHARE = 0.2  # video frames without landmarks (interpolated) at most

Progress = Callable[[float, str], None]


def _noop(fraction: float, message: str) -> None:
    pass


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


def _prepare_photo(
    src: Path, out: Path, limits: AvatarLimits, progress: Progress
) -> dict[str, Any]:
    rgb = read_photo(src)
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


def _prepare_video(
    src: Path, out: Path, limits: AvatarLimits, progress: Progress
) -> dict[str, Any]:
    container = open_video(src)
    try:
        duration = clip_duration(container)
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
    finally:
        container.close()
    if duration is not None and duration > limits.max_clip_seconds + 0.5:
        raise AvatarError(too_long(duration, limits))
    if not w or not h:
        raise undecodable_video(src)
    expected = max(1, int((duration or limits.max_clip_seconds) * FPS))

    # Pass 1: where is the face (on frames at most 640 px wide)?
    scale = min(1.0, 640 / max(w, h))
    dw, dh = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
    detector = FaceDetector()
    boxes: list[np.ndarray] = []
    counts: list[int] = []
    try:
        for i, rgb in enumerate(frames_25fps(src, limits, dw, dh)):
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
        for i, rgb in enumerate(frames_25fps(src, limits)):
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

def prepare_avatar(
    name: str,
    source_path: str | Path,
    kind: Kind | None,
    avatars_dir: str | Path,
    limits: AvatarLimits | None = None,
    progress: Progress | None = None,
    *,
    allow_default: bool = False,
    voice: str | None = None,
) -> AvatarInfo:
    """Prepare ``avatars_dir/<name>/`` from a photo or a video (``kind`` None:
    sniffed). Replaces an existing avatar of that name, atomically. Raises
    ``AvatarError`` on bad input, leaving nothing behind. ``voice``: the
    avatar's default voice (the caller checks it names a voice)."""
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
        meta = face_meta(lm, SIZE)
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
        if voice:
            meta["voice"] = voice
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        install(work, root / name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        cleanup_tmp(tmp_root)
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
        voice=voice or None,
    )


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
        cleanup_tmp(tmp_root)

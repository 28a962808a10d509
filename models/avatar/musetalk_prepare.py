"""An avatar prepared for MuseTalk: per source frame, the face box, the VAE
latents of the masked and the full 256x256 face crop, and the blend mask;
cached in ``weights/avatars/<name>/musetalk/`` beside what the photo renderer
reads, so one prepared avatar works with both renderers.

How it differs from upstream (TMElyralab/MuseTalk 0a89dec4,
``scripts/realtime_inference.py`` ``Avatar.prepare_material``,
``musetalk/utils/preprocessing.py`` ``get_landmark_and_bbox``,
``musetalk/utils/blending.py``):

* the face box comes from our own FaceMesh landmarks (models/avatar/faces.py,
  kept by tools/avatar_prepare.py), not from mmpose + face_alignment: the same
  rule on equivalent points: from the face's sides, from the nose ridge up by
  the nose-to-chin distance, down to the chin plus v1.5's extra margin;
* the blend mask is upstream's when ``face-parse-bisent/79999_iter.pth`` is
  there (BiSeNet face parsing of the expanded crop, v1.5's "jaw" region:
  models/avatar/musetalk_parsing.py); without it, from the landmarks (the face
  oval, reaching a little below the chin). Either way only below the middle of
  the expanded box, blurred as upstream blurs; the log and the cache's
  meta.json ("parsing") say which ran;
* latents use the VAE distribution's mode, not a sample, so a cache made twice
  is the same.

A video avatar plays its frames forward then backward (upstream's cycle), so
frame ``k`` of a stream uses source frame ``cycle(k)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from models.avatar.faces import CHIN, FACE_LEFT, FACE_RIGHT
from models.avatar.musetalk_nets import CROP

if TYPE_CHECKING:
    import torch

    from models.avatar.musetalk_nets import MuseTalkNets
    from models.avatar.musetalk_parsing import FaceParser

log = logging.getLogger(__name__)

CACHE_DIR = "musetalk"
CACHE_VERSION = 1
# FaceMesh's face oval (mediapipe FACEMESH_FACE_OVAL), in order around the face.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
    377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
NOSE_RIDGE = 195  # two thirds down the nose ridge: where the 68-point landmark 29 sits
EXTRA_MARGIN = 10 / 512  # v1.5's --extra_margin (10 px) below the chin, as a share of the frame
EXPAND = 1.5  # upstream's expanded crop around the face box (blending.get_crop_box)
JAW_DROP = 0.06  # the mask reaches this share of the box height below the chin (an open jaw)

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the frame
Progress = Callable[[float, str], None]


# ------------------------------------------------------------- geometry
def face_box(lm: np.ndarray, shape: tuple[int, ...]) -> Box:
    """The face box of one frame from its 478 FaceMesh landmarks (pixels):
    upstream's rule with FaceMesh points standing in for the 68-point ones."""
    h, w = shape[:2]
    pts = np.asarray(lm, np.float64)[:, :2]
    oval = pts[list(FACE_OVAL)]
    nose_y = float(pts[NOSE_RIDGE, 1])
    chin_y = float(max(pts[CHIN, 1], oval[:, 1].max()))
    x1 = float(min(oval[:, 0].min(), pts[FACE_LEFT, 0]))
    x2 = float(max(oval[:, 0].max(), pts[FACE_RIGHT, 0]))
    y1 = max(0.0, nose_y - (chin_y - nose_y))
    y2 = chin_y + EXTRA_MARGIN * h
    return _clip_box((x1, y1, x2, y2), w, h)


def face_box_from_meta(meta: dict[str, Any], shape: tuple[int, ...]) -> Box:
    """A face box from the photo renderer's face geometry (a photo whose
    landmarks were not found): eyes and mouth corners to the chin."""
    h, w = shape[:2]
    m = meta["mouth"]
    xs = [float(m["left"][0]), float(m["right"][0])]
    top = float(m["parting"]) - 0.5 * (float(m["chin"]) - float(m["parting"]))
    for eye in meta.get("eyes", []):
        xs += [float(c[0]) for c in eye["corners"]]
        top = min(top, float(eye["lower"]))
    chin = float(m["chin"])
    cx, half = (min(xs) + max(xs)) / 2, 0.75 * (max(xs) - min(xs))
    return _clip_box((cx - half, top, cx + half, chin + EXTRA_MARGIN * h), w, h)


def _clip_box(box: tuple[float, float, float, float], w: int, h: int) -> Box:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(w, max(x2, x1 + 8)), min(h, max(y2, y1 + 8))
    return x1, y1, x2, y2


def blur_size(box: Box) -> int:
    """Upstream's blur kernel: 10 % of the expanded crop, odd."""
    side = int(max(box[2] - box[0], box[3] - box[1]) // 2 * EXPAND) * 2
    return int(0.1 * side // 2 * 2) + 1


def expanded_box(box: Box) -> Box:
    """Upstream's square crop around the face box (1.5 times its larger side);
    it may reach outside the frame."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * EXPAND)
    return cx - s, cy - s, cx + s, cy + s


def crop_padded(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` inside ``box``, black where the box leaves the frame."""
    x1, y1, x2, y2 = box
    h, w = image.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, *image.shape[2:]), image.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return out


def parsed_region(parser: FaceParser, image: np.ndarray, box: Box) -> np.ndarray:
    """BiSeNet's region to redraw, in the face box (uint8 0/255): parsed on the
    expanded crop, as upstream does."""
    big = expanded_box(box)
    region = parser.region(crop_padded(image, big))
    x1, y1, x2, y2 = box
    return np.ascontiguousarray(region[y1 - big[1] : y2 - big[1], x1 - big[0] : x2 - big[0]])


def blend_mask(lm: np.ndarray | None, box: Box, region: np.ndarray | None = None) -> np.ndarray:
    """The mask (uint8, the face box's size) of what the generated face
    replaces: BiSeNet's ``region`` when given, else the face oval (or, without
    landmarks, an ellipse in the box) stretched down to let the jaw open; below
    the middle of the expanded crop only, then blurred."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    k = blur_size(box)
    pad = k  # room for the blur to fade out inside the box's own canvas
    canvas: np.ndarray = np.zeros((bh + 2 * pad, bw + 2 * pad), np.uint8)
    if region is not None:
        canvas[pad : pad + bh, pad : pad + bw] = region
    elif lm is not None:
        oval = np.asarray(lm, np.float64)[list(FACE_OVAL), :2] - (x1 - pad, y1 - pad)
        cv2.fillPoly(canvas, [np.round(oval).astype(np.int32)], (255,))
        drop = max(1, int(JAW_DROP * bh))
        # the anchor at the kernel's foot: each row takes the rows above it (downwards)
        kernel = np.ones((2 * drop + 1, 1), np.uint8)
        canvas = cv2.dilate(canvas, kernel, anchor=(0, 2 * drop))
    else:
        centre = (pad + bw // 2, pad + bh // 2)
        cv2.ellipse(canvas, centre, (bw // 2, bh // 2), 0, 0, 360, (255,), -1)
    # Upstream keeps the lower half of the expanded crop, centred on the box.
    canvas[: pad + bh // 2] = 0
    canvas = cv2.GaussianBlur(canvas, (k, k), 0)
    return np.ascontiguousarray(canvas[pad : pad + bh, pad : pad + bw])


def crop_face(image: np.ndarray, box: Box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return cv2.resize(image[y1:y2, x1:x2], (CROP, CROP), interpolation=cv2.INTER_LANCZOS4)


def blend(image: np.ndarray, face: np.ndarray, box: Box, mask: np.ndarray) -> np.ndarray:
    """The frame with the generated 256x256 ``face`` resized into ``box`` and
    laid over it through ``mask`` (upstream's get_image_blending)."""
    x1, y1, x2, y2 = box
    out = np.array(image, copy=True)
    face = cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    alpha = mask.astype(np.float32)[..., None] * (1.0 / 255.0)
    region = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = (region + alpha * (face.astype(np.float32) - region) + 0.5).astype(np.uint8)
    return out


def ping_pong(n: int, k: int) -> int:
    """Source frame of stream frame ``k`` in a clip of ``n`` frames played
    forward then backward (upstream's frame_list + frame_list[::-1])."""
    if n <= 1:
        return 0
    k %= 2 * n
    return k if k < n else 2 * n - 1 - k


# ---------------------------------------------------------------- avatar
class SourceFrames:
    """The avatar's own pictures and landmarks: one photo or a clip's frames."""

    def __init__(
        self,
        frame: Callable[[int], np.ndarray],
        count: int,
        landmarks: np.ndarray | None,
        meta: dict[str, Any] | None = None,
        stamp: str = "",
    ) -> None:
        self.frame = frame  # i -> (size, size, 3) uint8 RGB, read-only
        self.count = count
        self.landmarks = landmarks  # (count, 478, 2) or None
        self.meta = meta  # the photo renderer's face geometry (the fallback)
        self.stamp = stamp  # what the cache must match (source files' sizes and times)


@dataclass
class MuseTalkAvatar:
    """One avatar ready for MuseTalk (read-only, shared by its streams)."""

    name: str
    sources: SourceFrames
    boxes: list[Box]
    masks: list[np.ndarray]
    latents: torch.Tensor  # (count, 8, 32, 32) on the render device
    # How the blend masks were made: "bisenet" (upstream's face parsing),
    # "landmarks" (the face oval) or "box" (no landmarks: an ellipse in the box).
    parsing: str

    @property
    def count(self) -> int:
        return self.sources.count

    def source(self, k: int) -> int:
        return ping_pong(self.count, k)

    def idle(self, k: int) -> np.ndarray:
        return self.sources.frame(self.source(k))

    def compose(self, k: int, face: np.ndarray) -> np.ndarray:
        i = self.source(k)
        return blend(self.sources.frame(i), face, self.boxes[i], self.masks[i])


def _stamp_of(paths: list[Path]) -> str:
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths if p.exists()]
    return ";".join(parts)


def nets_stamp(nets: MuseTalkNets) -> str:
    """The VAE the latents were made with (its files' sizes and times) and the dtype."""
    files = sorted(p for p in nets.paths.vae.iterdir() if p.is_file())
    return f"{_stamp_of(files)}|{nets.dtype}"


def _cache_key(sources: SourceFrames, nets: MuseTalkNets) -> str:
    parser = _stamp_of([nets.paths.face_parsing])  # masks by BiSeNet or by landmarks
    text = f"v{CACHE_VERSION}|{sources.count}|{sources.stamp}|{nets_stamp(nets)}|{parser}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache(folder: Path, key: str, count: int) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key or meta.get("frames") != count:
            return None
        latents = np.load(folder / "latents.npy")
        with np.load(folder / "masks.npz") as masks:
            mask_list = [masks[f"arr_{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError):
        return None
    return {"meta": meta, "latents": latents, "masks": mask_list}


def _write_cache(folder: Path, key: str, avatar: MuseTalkAvatar, latents: np.ndarray) -> None:
    tmp = folder.with_name(f".{folder.name}-{time.monotonic_ns()}")
    tmp.mkdir(parents=True)
    np.save(tmp / "latents.npy", latents)
    np.savez_compressed(tmp / "masks.npz", *avatar.masks)  # arr_0, arr_1, ...
    meta = {
        "key": key,
        "frames": avatar.count,
        "boxes": [list(b) for b in avatar.boxes],
        "parsing": avatar.parsing,
        "crop": CROP,
        "prepared": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        old = folder.with_name(f".{folder.name}-old-{time.monotonic_ns()}")
        folder.rename(old)
        _remove(old)
    tmp.rename(folder)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _progress_bar(name: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"MuseTalk {name}", unit="frame", file=sys.stderr, leave=False)


def prepare_avatar(
    name: str,
    sources: SourceFrames,
    nets: MuseTalkNets,
    cache: Path | None,
    *,
    batch: int = 8,
    progress: Progress | None = None,
) -> MuseTalkAvatar:
    """The avatar's MuseTalk data: read from ``cache`` (a folder) when it was
    made from the same source files with the same VAE, else made (a progress
    bar on stderr, and ``progress(fraction, message)``) and written there."""
    torch_ = _torch()
    key = _cache_key(sources, nets)
    cached = _read_cache(cache, key, sources.count) if cache is not None else None
    if cached is not None:
        meta = cached["meta"]
        latents = torch_.from_numpy(cached["latents"]).to(nets.device, nets.dtype)
        log.info("MuseTalk data of avatar %r read from %s", name, cache)
        return MuseTalkAvatar(
            name,
            sources,
            [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in meta["boxes"]],
            cached["masks"],
            latents,
            str(meta["parsing"]),
        )
    started = time.perf_counter()
    boxes: list[Box] = []
    masks: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    parser = _face_parser(nets)
    if parser is not None:
        parsing = "bisenet"
    else:
        parsing = "landmarks" if sources.landmarks is not None else "box"
    bar = _progress_bar(name, sources.count)
    try:
        for first in range(0, sources.count, batch):
            crops = []
            for i in range(first, min(first + batch, sources.count)):
                image = sources.frame(i)
                lm = None if sources.landmarks is None else sources.landmarks[i]
                if lm is not None:
                    box = face_box(lm, image.shape)
                elif sources.meta is not None:
                    box = face_box_from_meta(sources.meta, image.shape)
                else:
                    raise ValueError(f"avatar {name!r}: no face landmarks and no face geometry")
                boxes.append(box)
                region = parsed_region(parser, image, box) if parser is not None else None
                masks.append(blend_mask(lm, box, region))
                crops.append(crop_face(image, box))
            parts.append(nets.encode(np.stack(crops)).float().cpu().numpy())
            bar.update(len(crops))
            if progress is not None:
                progress(len(boxes) / sources.count, "MuseTalk latents")
    finally:
        bar.close()
    latents_np = np.concatenate(parts).astype(
        np.float16 if nets.device.type == "cuda" else np.float32
    )
    avatar = MuseTalkAvatar(
        name,
        sources,
        boxes,
        masks,
        torch_.from_numpy(latents_np).to(nets.device, nets.dtype),
        parsing,
    )
    log.info(
        "avatar %r prepared for MuseTalk: %d frames in %.1f s (blend masks: %s)",
        name,
        sources.count,
        time.perf_counter() - started,
        parsing,
    )
    if cache is not None:
        try:
            _write_cache(cache, key, avatar, latents_np)
        except OSError as exc:  # a read-only weights folder: prepared again next time
            log.warning("could not cache avatar %r's MuseTalk data in %s: %s", name, cache, exc)
    return avatar


def _face_parser(nets: MuseTalkNets) -> FaceParser | None:
    """BiSeNet when its checkpoint is in weights/musetalk/face-parse-bisent/."""
    path = nets.paths.face_parsing
    if not path.is_file():
        log.info("no %s: MuseTalk's blend masks come from the FaceMesh landmarks", path)
        return None
    from models.avatar.musetalk_parsing import FaceParser

    return FaceParser(path, nets.device)


def _torch() -> Any:
    from models.avatar.musetalk_nets import import_torch

    return import_torch()

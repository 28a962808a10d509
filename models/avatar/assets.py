"""A photo avatar's assets: the picture, its face geometry and everything the
renderer precomputes on them once per avatar (``AvatarAssets``, shared
read-only by the avatar's streams).

Photo avatars: the built-in "astronaut" (a crop of ``skimage.data.astronaut()``
with hand-picked face geometry, ``ASTRONAUT_META``) and any
``weights_dir/avatars/<name>/image.png`` with an optional ``meta.json`` (the
schema is ``ASTRONAUT_META``'s) and ``landmarks.npy`` (the 478 FaceMesh points,
tools/avatar_prepare.py), read by ``load_photo_avatar``. Without landmarks
FaceMesh runs once at load; without mediapipe or a face found, the mouth mesh
is built on lip and jaw contours guessed from the meta geometry (and without
meta.json that comes from the landmarks, ``face_meta``, or else from OpenCV's
Haar face box and average proportions, ``guess_meta``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.avatar.eye_rig import eye_rig
from models.avatar.faces import (
    CHIN,
    EYES,
    LIP_LOWER_INNER,
    LIP_UPPER_INNER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    N_FACE_POINTS,
    detect_landmarks,
)
from models.avatar.mouth_rig import (
    MouthRig,
    lower_face_from_landmarks,
    lower_face_from_meta,
    smoothstep,
)

log = logging.getLogger(__name__)

# Face geometry of the built-in astronaut, in pixels of its 512x512 crop
# (hand-picked on the crop below; the photo smiles with the upper teeth showing,
# so "parting" is the line between those teeth and the lower lip).
#
# The same schema is read from weights_dir/avatars/<name>/meta.json, in pixels of
# that image.png ("size": the image width the numbers were picked on, if another).
# Required: mouth.left/right/parting/chin, eyes[].corners/upper/lower (may be
# empty). Optional: mouth.max_open (px), upper_teeth/lower_teeth (0..1),
# lip_skip (px), upper_lip/nose (y, for the contours guessed without landmarks),
# upper_share (how much of the closing the upper lip does), spread (relative
# width change), eyes[].lid_skin (px), head.center/axes/pivot (the ellipse that
# sways and the neck point it turns about), body_top (y where breathing starts).
# With landmarks the mouth mesh takes the lips, chin, jaw and nose from them.
ASTRONAUT_CROP = (99, 0, 260, 260)  # x, y, w, h in skimage.data.astronaut()
ASTRONAUT_META: dict[str, Any] = {
    "size": 512,
    "mouth": {
        "left": [205, 275],  # corners
        "right": [285, 278],
        "parting": 294,  # y of the lip parting line at the mouth centre
        "chin": 344,  # y of the chin below the mouth
        "upper_teeth": 0.0,  # paint upper teeth in the opened gap (0: the photo shows them)
        "lower_teeth": 0.55,
        "lip_skip": 2.0,  # rows under the parting line hidden when open (teeth edge)
        "upper_lip": 277.5,  # y of the upper lip's lower edge (above the teeth) at the centre
        "nose": 265.0,  # y of the nose base: the upper-lip skin between it and the lip stretches
    },
    "eyes": [
        {"corners": [[184, 196], [223, 199]], "upper": 191.5, "lower": 204.5},
        {"corners": [[269, 204], [314, 202]], "upper": 196.0, "lower": 209.0},
    ],
    "head": {"center": [252, 190], "axes": [150, 185], "pivot": [246, 390]},
    "body_top": 300,  # breathing moves what is below this line
}


def astronaut_image() -> np.ndarray:
    """The built-in astronaut: the 512x512 RGB crop ``ASTRONAUT_META`` was picked on."""
    from skimage import data

    x, y, w, h = ASTRONAUT_CROP
    crop = data.astronaut()[y : y + h, x : x + w]
    return cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)


def guess_meta(image: np.ndarray) -> dict[str, Any]:
    """Face geometry from a Haar face box and average proportions (a fallback for
    prepared avatars without meta.json)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    haar = cv2.data.haarcascades  # type: ignore[attr-defined]  # missing from OpenCV's stubs
    cascade = cv2.CascadeClassifier(haar + "haarcascade_frontalface_default.xml")
    h, w = gray.shape
    faces = cascade.detectMultiScale(gray, 1.1, 5, minSize=(w // 8, h // 8))
    if len(faces) == 0:
        raise ValueError("no face found (add a meta.json with the mouth and eye positions)")
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])

    def p(u: float, v: float) -> list[float]:
        return [x + u * fw, y + v * fh]

    eye_h = 0.065 * fh
    eyes: list[dict[str, Any]] = []
    for u0, u1 in ((0.18, 0.40), (0.60, 0.82)):
        c = p((u0 + u1) / 2, 0.38)
        eyes.append(
            {
                "corners": [p(u0, 0.385), p(u1, 0.385)],
                "upper": c[1] - 0.45 * eye_h,
                "lower": c[1] + 0.55 * eye_h,
            }
        )
    return {
        "mouth": {
            "left": p(0.31, 0.80),
            "right": p(0.69, 0.80),
            "parting": y + 0.81 * fh,
            "chin": y + 1.08 * fh,
            "upper_teeth": 0.8,
            "lower_teeth": 0.5,
        },
        "eyes": eyes,
    }


def face_meta(lm: np.ndarray, size: int) -> dict[str, Any]:
    """The renderer's face geometry (``ASTRONAUT_META`` schema) from FaceMesh
    landmarks in pixels of an image ``size`` pixels wide."""
    p = lm.astype(float)
    left, right = p[MOUTH_LEFT], p[MOUTH_RIGHT]
    mouth_w = float(np.linalg.norm(right - left))
    gap = float(p[LIP_LOWER_INNER, 1] - p[LIP_UPPER_INNER, 1])
    eyes: list[dict[str, Any]] = []
    for a, b, up, lo in EYES:
        corners = sorted([p[a].tolist(), p[b].tolist()])
        eyes.append({"corners": corners, "upper": float(p[up, 1]), "lower": float(p[lo, 1])})
    eyes.sort(key=lambda e: e["corners"][0][0])
    return {
        "size": size,
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


def transform_meta(meta: dict[str, Any], scale: float, dx: float, dy: float) -> dict[str, Any]:
    """A copy of ``meta`` with every coordinate mapped by p * scale + (dx, dy)."""

    def pt(p: list[float]) -> list[float]:
        return [float(p[0]) * scale + dx, float(p[1]) * scale + dy]

    out = json.loads(json.dumps(meta))
    out.pop("size", None)
    m = out["mouth"]
    m["left"], m["right"] = pt(m["left"]), pt(m["right"])
    m["parting"] = float(m["parting"]) * scale + dy
    m["chin"] = float(m["chin"]) * scale + dy
    for key in ("upper_lip", "nose"):
        if key in m:
            m[key] = float(m[key]) * scale + dy
    for key in ("max_open", "lip_skip"):
        if key in m:
            m[key] = float(m[key]) * scale
    for e in out.get("eyes", []):
        e["corners"] = [pt(c) for c in e["corners"]]
        e["upper"] = float(e["upper"]) * scale + dy
        e["lower"] = float(e["lower"]) * scale + dy
        if "lid_skin" in e:
            e["lid_skin"] = float(e["lid_skin"]) * scale
    if "head" in out:
        head = out["head"]
        head["center"], head["pivot"] = pt(head["center"]), pt(head["pivot"])
        head["axes"] = [float(a) * scale for a in head["axes"]]
    if "body_top" in out:
        out["body_top"] = float(out["body_top"]) * scale + dy
    return out


def _head_from_features(meta: dict[str, Any]) -> dict[str, Any]:
    """The swaying head's ellipse and neck pivot, for a meta without "head"."""
    eyes = meta.get("eyes") or []
    m = meta["mouth"]
    mouth_c = (np.array(m["left"], float) + np.array(m["right"], float)) / 2
    if len(eyes) >= 2:
        e0 = np.mean(np.array(eyes[0]["corners"], float), axis=0)
        e1 = np.mean(np.array(eyes[1]["corners"], float), axis=0)
        d = float(np.linalg.norm(e1 - e0))
        mid = (e0 + e1) / 2
    else:
        d = float(np.linalg.norm(np.array(m["right"], float) - np.array(m["left"], float))) * 1.2
        mid = mouth_c - [0, 0.9 * d]
    chin = float(m["chin"])
    return {
        "center": [mid[0], mid[1] - 0.1 * d],
        "axes": [1.75 * d, chin - mid[1] + 0.45 * d + 0.1 * d],
        "pivot": [mouth_c[0], chin + 0.5 * d],
    }


class AvatarAssets:
    """Everything precomputed for one avatar: read-only, shared by its streams."""

    def __init__(
        self,
        name: str,
        image: np.ndarray,
        meta: dict[str, Any],
        size: int,
        landmarks: np.ndarray | None = None,
        *,
        detect: bool = True,
    ) -> None:
        """``landmarks``: the 478 FaceMesh points in pixels of ``image`` (as
        prepared); without them FaceMesh runs here once (``detect``), and if it
        finds no face the mouth mesh is built on contours guessed from ``meta``."""
        self.name = name
        h, w = image.shape[:2]
        lm = None if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 2)
        if lm is not None and lm.shape[0] < N_FACE_POINTS:
            lm = None
        # meta["size"]: the image width its coordinates were given for (default: this one).
        given = meta.get("size")
        meta = transform_meta(meta, w / float(w if given is None else given), 0.0, 0.0)
        if h != w:  # centre-crop to a square, shifting the coordinates with it
            side = min(h, w)
            x0, y0 = (w - side) // 2, (h - side) // 2
            image = image[y0 : y0 + side, x0 : x0 + side]
            meta = transform_meta(meta, 1.0, -x0, -y0)
            lm = None if lm is None else lm - (x0, y0)
            w = side
        if w != size:
            interp = cv2.INTER_AREA if w > size else cv2.INTER_CUBIC
            image = cv2.resize(image, (size, size), interpolation=interp)
            meta = transform_meta(meta, size / w, 0.0, 0.0)
            lm = None if lm is None else lm * (size / w)
        self.size = size
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        self.image.flags.writeable = False
        self.meta = meta  # in pixels of the frame
        if lm is None and detect:
            lm = detect_landmarks(self.image)
        self.landmarks = lm  # (478, 2) in pixels of the frame, or None
        face = lower_face_from_landmarks(lm) if lm is not None else None
        if face is None:
            face = lower_face_from_meta(meta["mouth"])
        self.mouth = MouthRig(face, meta["mouth"], size)
        self.eyes = [eye_rig(e, size) for e in meta.get("eyes", [])]
        self._motion_fields(meta)

    # ---------------------------------------------------------------- motion
    def _motion_fields(self, meta: dict[str, Any]) -> None:
        """Soft head and body masks at 1/4 resolution: the per-frame displacement
        is a linear combination of these fields, upsampled to full size."""
        size = self.size
        q = 4
        low = size // q
        # Low-res pixel centres in full-res coordinates (cv2.resize's convention).
        c = (np.arange(low, dtype=np.float32) + 0.5) * q - 0.5
        gx, gy = np.meshgrid(c, c)
        head = meta.get("head")
        if head is None:
            head = _head_from_features(meta)
        hcx, hcy = head["center"]
        hax, hay = head["axes"]
        px, py = head["pivot"]
        r = np.sqrt(((gx - hcx) / hax) ** 2 + ((gy - hcy) / hay) ** 2)
        head_mask = 1.0 - smoothstep(0.85, 1.2, r)
        body_top = float(meta.get("body_top", py - 0.25 * hay))
        body_mask = smoothstep(body_top, body_top + 0.25 * size, gy)
        f = np.float32
        self.low_size = low
        self.head_mask = head_mask.astype(f)
        self.head_dx = (head_mask * (gx - px)).astype(f)  # rotation terms
        self.head_dy = (head_mask * (gy - py)).astype(f)
        self.body_mask = body_mask.astype(f)
        self.head_pivot = (px, py)
        gxf, gyf = np.meshgrid(np.arange(size, dtype=f), np.arange(size, dtype=f))
        self.grid_x = gxf
        self.grid_y = gyf


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8; ValueError if OpenCV cannot read it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A prepared avatar's meta.json, or None where it has none."""
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_photo_avatar(
    name: str, image: np.ndarray, folder: Path, meta: dict[str, Any] | None, size: int
) -> AvatarAssets:
    """The assets of the photo avatar in ``folder`` (``image`` its image.png,
    ``meta`` its meta.json), rendered at ``size`` pixels."""
    lm_path = folder / "landmarks.npy"
    landmarks = np.load(lm_path) if lm_path.is_file() else None
    detected = False  # FaceMesh already tried on this image
    if landmarks is not None and landmarks.ndim == 3:  # a video's: its first frame
        landmarks = landmarks[0]
    if meta is None:
        if landmarks is None:
            landmarks = detect_landmarks(image)
            detected = True
        if landmarks is not None:
            meta = face_meta(landmarks, image.shape[1])
            log.warning("avatar %r has no meta.json: face geometry from landmarks", name)
        else:
            meta = guess_meta(image)
            log.warning("avatar %r has no meta.json: face geometry guessed from a face box", name)
    if landmarks is None and not detected:
        log.info("avatar %r has no landmarks.npy: running FaceMesh once", name)
    return AvatarAssets(name, image, meta, size, landmarks, detect=not detected)

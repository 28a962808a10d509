"""Faces in pictures, with mediapipe: face boxes (BlazeFace) and the 478 FaceMesh
landmarks, plus the landmark indices the avatar code reads.

Run time needs the landmarks (a photo avatar prepared without landmarks.npy
runs FaceMesh once at load); preparation (tools/avatar_prepare.py) needs both.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_FACE_SCORE = 0.6  # a face detection scored lower is no face
SAME_FACE_OVERLAP = 0.5  # boxes overlapping more (of the smaller one) are one face
MIN_OTHER_FACE_SHARE = 0.5  # a further face is at least this share of the main face's width

# FaceMesh indices (mediapipe's canonical face model).
N_LANDMARKS = 478
N_FACE_POINTS = 468  # 468..477 are the irises
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # outer mouth corners (image left, image right)
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14  # the inner lip edges at the mouth's centre
CHIN = 152
NOSE_BASE = 2
FACE_LEFT, FACE_RIGHT = 234, 454  # the cheeks at the ears
# Image-left eye (the subject's right) and image-right eye:
# (outer/inner corners in image-left-to-right order, upper lid, lower lid).
EYES = ((33, 133, 159, 145), (362, 263, 386, 374))


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
        boxes: list[np.ndarray] = []
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



def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """FaceMesh's 478 landmarks of the face in an RGB image, or None (no face
    found, or mediapipe is not installed)."""
    try:
        return face_landmarks(image)
    except Exception as exc:  # mediapipe missing or broken: the meta geometry will do
        log.warning("face landmarks not available: %s", exc)
        return None

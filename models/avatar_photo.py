"""CPU photo avatar: one still portrait brought to life, lip-synced to the reply.

``BufferedAvatarStream`` is the generic part of any renderer behind the
``AvatarStream`` contract: it queues the pushed 48 kHz reply audio with its
tags, takes exactly one video frame's worth (1920 samples) per tick, pads with
silence when the queue runs dry, accounts in ``played`` for the samples taken
from each chunk pushed with a tag (untagged audio plays but is not listed;
adjacent pieces of one tag are summed), and hands the audio of this frame plus
the next ~100 ms to ``render``.

``PhotoAvatarStream`` renders from one photo on a CPU, ~1.5 ms a frame on one
core (512 px):

* the mouth follows the mouth-shape track of the reply (models/mouth.py: jaw
  opening, width, rounding, lip closure; without one, the loudness of the
  audio opens it). It is a mesh warp over the face's FaceMesh landmarks
  (``_MouthRig``): each lower-face landmark, plus fixed anchors outside the
  jaw line and along the warped region's border, carries a displacement per
  channel; barycentric interpolation over their Delaunay triangulation,
  precomputed once per avatar, turns them into one dense field per channel. A
  frame's map is the fields' weighted sum, applied with ``cv2.remap`` to that
  region only, so nothing outside it moves. The fields are split along the
  lips (the lower lip and jaw drop, the lips close over the teeth until they
  meet) and scaled down at load if any extreme shape would fold the picture;
  the gap opened below the upper lip or teeth is painted as a mouth interior
  (shaded cavity, teeth, tongue);
* the eyes blink at random intervals (upper-lid skin stretched over the eye);
* the head sways and the chest breathes: a smooth displacement field weighted
  by soft head and body masks, so the background stays where it is.

Avatars: "astronaut" (a crop of ``skimage.data.astronaut()``, with hand-picked
face geometry) and any ``weights_dir/avatars/<name>/image.png`` with an optional
``meta.json`` (the schema is ``ASTRONAUT_META``'s) and ``landmarks.npy`` (the
478 FaceMesh points, models/avatar_prepare.py). Without landmarks FaceMesh runs
once at load; without mediapipe or a face found, the mesh is built on lip and
jaw contours guessed from the meta geometry (and without meta.json that comes
from the landmarks, or else from OpenCV's Haar face box and average proportions).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models import mouth as mouth_track
from models.base import (
    MEDIA_FPS,
    MEDIA_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AvatarFrame,
    AvatarModel,
    AvatarStream,
    Speech,
)

log = logging.getLogger(__name__)

_TRACK_RATE = mouth_track.TRACK_RATE
LOOKAHEAD_SAMPLES = MEDIA_SAMPLE_RATE // 10  # 100 ms of queued audio after the frame


# ============================================================== buffered stream
class _Chunk:
    __slots__ = ("audio", "offset", "tag", "track")

    def __init__(self, audio: np.ndarray, tag: Any, track: np.ndarray | None = None) -> None:
        self.audio = audio
        self.offset = 0
        self.tag = tag
        self.track = track  # mouth shapes at mouth.TRACK_RATE for this chunk, or None


def _as_float_mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim > 1:
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        else:
            raise ValueError(f"avatar audio must be mono, got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return np.ascontiguousarray(a, dtype=np.float32)


def _same_tag(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # tags that do not compare (arrays, odd objects)
        return False


class BufferedAvatarStream(AvatarStream):
    """Audio queue + frame pacing shared by renderers; subclasses implement
    ``render``. ``push_audio``/``clear``/``end_of_segment`` may be called from the
    event loop while ``next_frame`` runs in a worker thread (one caller at a time)."""

    samples_per_frame = SAMPLES_PER_VIDEO_FRAME
    lookahead_samples = LOOKAHEAD_SAMPLES
    # While a reply is open (audio pushed, no end_of_segment yet) and the queue
    # runs dry (TTS slower than playback), frames still count as speaking for
    # this many frames.
    underrun_grace_frames = MEDIA_FPS

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0
        self._segment_open = False
        self._underrun = 0
        self.frame_index = 0
        # The mouth shape (models/mouth.py) of the frame being rendered, from the
        # track of the chunk its audio comes from; None when no track applies.
        self.frame_shape: np.ndarray | None = None

    # ------------------------------------------------------------- producer
    def prepare(self, audio: np.ndarray, speech: Speech | None = None) -> Any:
        samples = _as_float_mono(audio)
        return self.make_track(samples, speech) if samples.size else None

    def push_audio(
        self,
        audio: np.ndarray,
        tag: Any = None,
        speech: Speech | None = None,
        prepared: Any = None,
    ) -> None:
        samples = _as_float_mono(audio)
        # The mouth track (13-32 ms of CPU) is best made in prepare(), off the loop.
        track = prepared if prepared is not None else self.prepare(samples, speech)
        with self._lock:
            self._segment_open = True
            self._underrun = 0
            if samples.size:
                self._chunks.append(_Chunk(samples, tag, track))
                self._queued += samples.size

    def make_track(self, samples: np.ndarray, speech: Speech | None) -> np.ndarray | None:
        """The mouth-shape track of a pushed chunk (48 kHz ``samples``), or None
        (renderers that drive the mouth from the audio window need none)."""
        return None

    def end_of_segment(self) -> None:
        with self._lock:
            self._segment_open = False

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._queued = 0
            self._segment_open = False
            self._underrun = 0

    @property
    def queued_samples(self) -> int:
        with self._lock:
            return self._queued

    # ------------------------------------------------------------- consumer
    def next_frame(self) -> AvatarFrame:
        n = self.samples_per_frame
        window = np.zeros(n, np.float32)
        played: list[tuple[Any, int]] = []
        shape = None
        with self._lock:
            pos = 0
            if self._chunks and self._chunks[0].track is not None:
                first = self._chunks[0]
                track = first.track
                centre = first.offset + n // 2  # the frame's middle, in chunk samples
                row = int(centre * _TRACK_RATE // MEDIA_SAMPLE_RATE)
                shape = track[min(row, track.shape[0] - 1)]
            while pos < n and self._chunks:
                chunk = self._chunks[0]
                take = min(n - pos, chunk.audio.size - chunk.offset)
                window[pos : pos + take] = chunk.audio[chunk.offset : chunk.offset + take]
                chunk.offset += take
                pos += take
                if chunk.tag is not None:
                    if played and _same_tag(played[-1][0], chunk.tag):
                        played[-1] = (played[-1][0], played[-1][1] + take)
                    else:
                        played.append((chunk.tag, take))
                if chunk.offset >= chunk.audio.size:
                    self._chunks.popleft()
            self._queued -= pos
            lookahead = self._peek(self.lookahead_samples)
            if pos:
                self._underrun = 0
            elif self._segment_open:
                self._underrun += 1
            speaking = pos > 0 or (
                self._segment_open and self._underrun <= self.underrun_grace_frames
            )
        self.frame_shape = shape
        image = self.render(window, lookahead, speaking)
        self.frame_index += 1
        pcm = np.rint(np.clip(window, -1.0, 1.0) * 32767.0).astype(np.int16)
        return AvatarFrame(image=image, audio=pcm, speaking=speaking, played=played)

    def _peek(self, n: int) -> np.ndarray:
        """Up to ``n`` queued samples, not consumed (call with the lock held)."""
        parts = []
        need = n
        for chunk in self._chunks:
            if need <= 0:
                break
            part = chunk.audio[chunk.offset : chunk.offset + need]
            parts.append(part)
            need -= part.size
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    @abstractmethod
    def render(self, window: np.ndarray, lookahead: np.ndarray, speaking: bool) -> np.ndarray:
        """The picture for this frame: ``window`` is the 1920 float32 samples played
        with it (silence-padded), ``lookahead`` up to ~100 ms of audio queued after
        it (shorter or empty near the end). Returns (size, size, 3) uint8 RGB."""


# ================================================================ avatar assets
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


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _guess_meta(image: np.ndarray) -> dict[str, Any]:
    """Face geometry from a Haar face box and average proportions (a fallback for
    prepared avatars without meta.json)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    h, w = gray.shape
    faces = cascade.detectMultiScale(gray, 1.1, 5, minSize=(w // 8, h // 8))
    if len(faces) == 0:
        raise ValueError("no face found (add a meta.json with the mouth and eye positions)")
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])

    def p(u: float, v: float) -> list[float]:
        return [x + u * fw, y + v * fh]

    eye_h = 0.065 * fh
    eyes = []
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


# FaceMesh landmarks the mouth mesh is built on (mediapipe's canonical face
# model), each contour in image left-to-right order.
LIP_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291)
JAW_LINE = (
    *(234, 93, 132, 58, 172, 136, 150, 149, 176, 148),
    152,  # the chin
    *(377, 400, 378, 379, 365, 397, 288, 361, 323, 454),
)
CHIN_POINT, NOSE_BASE = 152, 2
N_FACE_POINTS = 468  # 468..477 are the irises
# The mouth-shape channels, in the order of the basis fields: jaw drop (open),
# corners spread (width, -1 narrow .. +1 "ee"), rounding, lips pressed together.
CHANNELS = ("open", "width", "round", "closure")
MIN_JACOBIAN = 0.15  # the warp's smallest area change at the most extreme shapes (no folds)


@dataclass
class _LowerFace:
    """Where the mesh's vertices are, in pixels of the frame: FaceMesh landmarks,
    or contours synthesized from the meta geometry."""

    corners: np.ndarray  # (2, 2) outer mouth corners, image left then right
    upper_inner: np.ndarray  # (n, 2) inner edge of the upper lip, corner to corner
    lower_inner: np.ndarray  # (n, 2) inner edge of the lower lip
    jaw: np.ndarray  # (m, 2) jaw line, ear to ear through the chin
    chin: np.ndarray  # (2,)
    nose: np.ndarray  # (2,) base of the nose
    points: np.ndarray  # (k, 2) further vertices (the other landmarks)
    source: str  # "landmarks" or "meta"


def _lower_face_from_landmarks(landmarks: np.ndarray) -> _LowerFace:
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return _LowerFace(
        corners=lm[list(MOUTH_CORNERS)],
        upper_inner=lm[list(LIP_UPPER_INNER)],
        lower_inner=lm[list(LIP_LOWER_INNER)],
        jaw=lm[list(JAW_LINE)],
        chin=lm[CHIN_POINT],
        nose=lm[NOSE_BASE],
        points=lm[:N_FACE_POINTS],
        source="landmarks",
    )


def _lower_face_from_meta(m: dict[str, Any]) -> _LowerFace:
    """The contours a face without landmarks is assumed to have: parabolic lips
    through the corners and the parting line, an elliptic jaw through the chin."""
    (lx, ly), (rx, ry) = (np.asarray(p, np.float64) for p in (m["left"], m["right"]))
    cx, hw, mid = (lx + rx) / 2, max(2.0, (rx - lx) / 2), (ly + ry) / 2
    parting = float(m["parting"])
    upper = min(float(m.get("upper_lip", parting)), parting)
    nose = float(m.get("nose", upper - max(1.2 * (parting - upper), 0.45 * hw)))
    chin = float(m["chin"])
    u = np.linspace(-1.0, 1.0, 11)
    xs = cx + u * hw
    line = ly + (ry - ly) * (u + 1) / 2
    lens = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.75
    lower = np.stack([xs, line + (parting - mid) * lens], 1)
    upper_c = np.stack([xs, line + (upper - mid) * lens], 1)
    a = np.linspace(0.0, math.pi, 17)
    jaw = np.stack([cx - 2.3 * hw * np.cos(a), mid + (chin - mid) * np.sin(a)], 1)
    # Inner vertices: the outer lip edges and a coarse grid inside the jaw.
    outer = np.concatenate(
        [
            np.stack([xs, upper_c[:, 1] - 0.3 * hw * np.sqrt(lens) - 1], 1),
            np.stack([xs, lower[:, 1] + 0.35 * hw * np.sqrt(lens) + 1], 1),
        ]
    )
    gx, gy = np.meshgrid(np.arange(-2.0, 2.01, 0.4), np.arange(-1.0, 2.01, 0.4))
    grid = np.stack([cx + gx.ravel() * hw, mid + gy.ravel() * hw], 1)
    e = ((grid[:, 0] - cx) / (2.2 * hw)) ** 2 + ((grid[:, 1] - mid) / (chin - mid - 2)) ** 2
    grid = grid[(e < 1.0) & (grid[:, 1] > nose) & (np.abs(grid[:, 1] - mid) > 0.3 * hw)]
    return _LowerFace(
        corners=np.array([[lx, ly], [rx, ry]]),
        upper_inner=upper_c,
        lower_inner=lower,
        jaw=jaw,
        chin=np.array([cx, chin]),
        nose=np.array([cx, nose]),
        points=np.concatenate([outer, grid]),
        source="meta",
    )


class _MouthRig:
    """The mouth as a triangle mesh over the lower face, precomputed once.

    Every vertex (the lower-face landmarks, a ring of fixed anchors just outside
    the jaw line and along the region's border) gets, for each channel of the
    mouth shape, a displacement: where the output pixel at that vertex samples
    the photo from (``cv2.remap``'s inverse map), per unit of the channel.
    Barycentric interpolation over the Delaunay triangulation turns them into a
    dense field per channel; a frame's map is their weighted sum.

    The lips part along a seam, so the fields are discontinuous there: a vertex
    has one value for the triangles above the seam and one for those below
    (``up``/``low``). Opening pulls everything below the inner edge of the lower
    lip down (the gap that opens is painted as the mouth interior); closing
    brings the upper lip down and the lower one up over whatever the photo shows
    between them (teeth), until they meet at the ``share`` line; with both at
    once the seam of the opening moves up with the lower lip."""

    def __init__(self, face: _LowerFace, m: dict[str, Any], size: int) -> None:
        (clx, cly), (crx, cry) = face.corners
        self.source = face.source
        self.cx = cx = float(clx + crx) / 2
        self.hw = hw = max(4.0, float(crx - clx) / 2)
        mid_y = float(cly + cry) / 2
        a_open = float(m.get("max_open", 0.55 * hw))
        self.lip_skip = float(m.get("lip_skip", 1.0))
        self.upper_teeth = float(m.get("upper_teeth", 0.8))
        self.lower_teeth = float(m.get("lower_teeth", 0.5))
        share = float(m.get("upper_share", 0.6))
        spread = float(m.get("spread", 0.12))
        ux, uy = _contour(face.upper_inner)
        lx_, ly_ = _contour(face.lower_inner)

        def lower(x: np.ndarray) -> np.ndarray:
            return np.interp(x, lx_, ly_)

        def upper(x: np.ndarray) -> np.ndarray:
            return np.minimum(np.interp(x, ux, uy), lower(x))

        def meet(x: np.ndarray) -> np.ndarray:
            up = upper(x)
            return up + share * (lower(x) - up)

        lc, uc = float(lower(cx)), float(upper(cx))
        chin_y, nose_y = float(face.chin[1]), float(face.nose[1])
        ramp = max(2.2 * a_open, 0.6 * (chin_y - lc))
        # The lips part between the inner corners (where the contours end).
        span0, span1 = max(lx_[0], ux[0]), min(lx_[-1], ux[-1])
        icx, ihw = (span0 + span1) / 2, max(2.0, (span1 - span0) / 2)
        cym = (uc + lc) / 2
        bot = chin_y + 0.3 * (chin_y - lc)

        def corner_line(x: np.ndarray) -> np.ndarray:
            return cly + (cry - cly) * np.clip((x - clx) / (crx - clx), 0.0, 1.0)

        def fields(x: np.ndarray, y: np.ndarray, low: bool) -> tuple[np.ndarray, np.ndarray]:
            """(4, n) x and y pulls per unit of each channel at points (x, y), on
            the side of the seams above (``low`` False) or below them."""
            u = (x - cx) / hw
            ui = (x - icx) / ihw
            lens = np.clip(1.0 - ui * ui, 0.0, 1.0) ** 0.75
            jaw = 1.0 - _smoothstep(0.9, 2.1, np.abs(u))
            corner = sum(
                np.exp(-((x - kx) ** 2 + (y - ky) ** 2) / (0.5 * hw) ** 2)
                for kx, ky in face.corners
            )
            drop = 0.15 * a_open * corner  # the corners follow the jaw a little
            if low:  # the lower lip rides on the jaw; the chin drops with it
                t = _smoothstep(0.0, ramp, y - lower(x))
                drop = drop + a_open * ((1.0 - t) * lens + t * jaw)
            ex = (x - cx) / (1.9 * hw)
            ey = np.where(
                y < cym,
                (y - cym) / max(cym - nose_y + 2, 4.0),
                (y - cym) / (0.8 * (chin_y - cym) + 1),
            )
            mask = 1.0 - _smoothstep(0.45, 1.0, np.sqrt(ex * ex + ey * ey))
            mt = meet(x)
            if low:  # the lower lip up to the meeting line, stretched from the chin
                close = np.where(
                    y <= bot, (bot - y) * (lower(x) - mt) / np.maximum(bot - mt, 1.0), 0
                )
            else:  # the upper lip down to it, stretched from the nose
                top = np.minimum(upper(x) - 2.0, nose_y + 0.3 * (corner_line(x) - mid_y))
                close = np.where(
                    y >= top, (y - top) * (upper(x) - mt) / np.maximum(mt - top, 1.0), 0
                )
            zero = np.zeros_like(x)
            bx = np.stack([zero, -spread * (x - cx) * mask, 1.6 * spread * (x - cx) * mask, zero])
            # Rounded lips push forward: a little taller.
            by = np.stack([-drop, zero, -0.08 * (y - upper(x)) * mask, close])
            return bx, by

        # --- vertices: the face, a fixed ring outside the jaw, the region's border
        jaw_pts = face.jaw[face.jaw[:, 1] > nose_y]
        jaw_pts = jaw_pts[np.abs(jaw_pts[:, 0] - cx) < 3.5 * hw]
        bx_j, by_j = fields(jaw_pts[:, 0], jaw_pts[:, 1], True)
        reach = np.sqrt(bx_j**2 + by_j**2).max(axis=0)
        out = jaw_pts - np.array([cx, mid_y - 0.5 * hw])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        ring = jaw_pts + out * (4.0 + 1.8 * reach)[:, None]
        lips = np.concatenate([face.upper_inner, face.lower_inner, face.corners])
        box_pts = np.concatenate([ring, jaw_pts, lips])
        x0 = int(max(0, math.floor(min(box_pts[:, 0].min(), cx - 2.3 * hw) - 2)))
        x1 = int(min(size, math.ceil(max(box_pts[:, 0].max(), cx + 2.3 * hw) + 3)))
        y0 = int(max(0, math.floor(min(nose_y, mid_y - 0.8 * hw) - 2)))
        y1 = int(min(size, math.ceil(max(box_pts[:, 1].max(), bot) + 3)))
        self.roi = (x0, y0, x1, y1)
        w, h = x1 - x0, y1 - y0
        border = _rect_points(x0, y0, x1 - 1, y1 - 1, step=12.0)

        def inside(p: np.ndarray) -> np.ndarray:
            px, py = p[:, 0], p[:, 1]
            return (px > x0 + 1.5) & (px < x1 - 2.5) & (py > y0 + 1.5) & (py < y1 - 2.5)

        ring = ring[inside(ring)]
        anchors = np.concatenate([border, ring])
        face_pts = np.concatenate([lips, jaw_pts, face.chin[None], face.points])
        face_pts = face_pts[inside(face_pts)]
        verts, n_fixed = _dedupe(anchors, face_pts, 0.75)
        vx, vy = verts[:, 0], verts[:, 1]
        up_x, up_y = fields(vx, vy, False)
        _, low_y = fields(vx, vy, True)
        for arr in (up_x, up_y, low_y):
            arr[:, :n_fixed] = 0.0  # anchors never move

        # --- barycentric coordinates of every pixel of the region, once
        gx, gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
        )
        interp = _barycentric(verts, gx.ravel(), gy.ravel())
        f32 = np.float32
        below = gy >= lower(gx)
        self.bx = np.stack([interp(v).reshape(h, w) for v in up_x]).astype(f32)
        by_up = np.stack([interp(v).reshape(h, w) for v in up_y])
        by_low = np.stack([interp(v).reshape(h, w) for v in low_y])
        self.by = np.where(below[None], by_low, by_up).astype(f32)  # lips apart as photographed

        # --- the band where the seam moves with the closure (lower lip edge -> meeting line)
        cols = np.arange(x0, x1, dtype=np.float64)
        span = (cols >= span0) & (cols <= span1)
        if not span.any():
            span[np.argmin(np.abs(cols - cx))] = True
        c0, c1 = int(np.flatnonzero(span)[0]), int(np.flatnonzero(span)[-1]) + 1
        ld, md, ud = lower(cols), meet(cols), upper(cols)
        r0 = int(max(0, math.floor(md[c0:c1].min() - y0 - 1)))
        r1 = int(min(h, math.ceil(ld[c0:c1].max() - y0 + 2)))
        self.band = (c0, r0, c1, r1)
        self.band_up = np.ascontiguousarray(by_up[:, r0:r1, c0:c1], f32)
        self.band_low = np.ascontiguousarray(by_low[:, r0:r1, c0:c1], f32)
        self.lower_col = (ld - y0).astype(f32)  # ROI-local y of the lower lip's inner edge
        self.meet_col = (md - y0).astype(f32)
        self.grid_x = np.ascontiguousarray((gx - x0).astype(f32))
        self.grid_y = np.ascontiguousarray((gy - y0).astype(f32))
        # Where the gap can open: corner to corner, down to the opened lower lip.
        cr0 = int(max(0, math.floor(ud[c0:c1].min() - y0 - 2)))
        cr1 = int(min(h, math.ceil(ld[c0:c1].max() + 1.25 * a_open + self.lip_skip - y0 + 4)))
        self.cav = (c0, cr0, c1, cr1)
        ui = (cols - icx) / ihw
        self.u = ui[c0:c1].astype(f32)
        # The lip-gap profile per ROI column: 1 at the mouth centre, 0 at the inner corners.
        self.lens_col = (np.clip(1.0 - ui * ui, 0.0, 1.0) ** 0.75).astype(f32)
        self.gain = self._fit_gain()
        self.max_open = a_open * self.gain

    def _fit_gain(self) -> float:
        """Scale the jaw, width and rounding fields down until no extreme shape
        folds the picture (the closure is exact and left alone)."""
        gain = 1.0
        for _ in range(12):
            worst = min(
                self.min_jacobian((o * (1.0 - 0.4 * r), w, r, c))  # rounded lips open less
                for o in (0.0, 1.0)
                for w in (-1.0, 1.0)
                for r in (0.0, 1.0)
                for c in (0.0, 1.0)
            )
            if worst >= MIN_JACOBIAN:
                break
            for k in range(3):
                self.bx[k] *= 0.9
                self.by[k] *= 0.9
                self.band_up[k] *= 0.9
                self.band_low[k] *= 0.9
            gain *= 0.9
        return gain

    def pulls(self, weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dx, dy) of the inverse map over the region for one mouth shape
        (``weights`` per channel, as in ``CHANNELS``) and the seam per band
        column (ROI-local y) below which the lower lip and jaw are."""
        weights = tuple(float(v) for v in weights)
        bx = by = None
        for k, wk in enumerate(weights):
            if abs(wk) < 1e-4:
                continue
            if k in (1, 2):
                bx = self.bx[k] * wk if bx is None else cv2.scaleAdd(self.bx[k], wk, bx)
            by = self.by[k] * wk if by is None else cv2.scaleAdd(self.by[k], wk, by)
        h, w = self.grid_x.shape
        if bx is None:
            bx = np.zeros((h, w), np.float32)
        if by is None:
            by = np.zeros((h, w), np.float32)
        c0, r0, c1, r1 = self.band
        c = float(weights[3])
        lo, me = self.lower_col[c0:c1], self.meet_col[c0:c1]
        seam = lo - c * (lo - me)
        if c > 1e-4:
            up = sum(self.band_up[k] * wk for k, wk in enumerate(weights) if abs(wk) >= 1e-4)
            low = sum(self.band_low[k] * wk for k, wk in enumerate(weights) if abs(wk) >= 1e-4)
            below = self.grid_y[r0:r1, c0:c1] >= seam[None, :]
            by[r0:r1, c0:c1] = np.where(below, low, up)
        return bx, by, seam

    def min_jacobian(self, weights: tuple[float, ...]) -> float:
        """The smallest local area change of the map for ``weights``, away from
        the seams (where the lips part on purpose)."""
        bx, by, seam = self.pulls(weights)
        mx, my = self.grid_x + bx, self.grid_y + by
        side = np.zeros(mx.shape, np.int8)
        c0, _, c1, _ = self.band
        side[:, c0:c1] = self.grid_y[:, c0:c1] >= seam[None, :]
        side[:, c0:c1] += self.grid_y[:, c0:c1] >= self.lower_col[None, c0:c1]
        ok = (side[1:, 1:] == side[:-1, 1:]) & (side[1:, 1:] == side[1:, :-1])
        dxx, dxy = mx[1:, 1:] - mx[1:, :-1], mx[1:, 1:] - mx[:-1, 1:]
        dyx, dyy = my[1:, 1:] - my[1:, :-1], my[1:, 1:] - my[:-1, 1:]
        det = dxx * dyy - dxy * dyx
        return float(det[ok].min()) if ok.any() else 1.0


def _contour(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A lip contour as increasing x and its y (for ``np.interp``)."""
    p = np.asarray(points, np.float64)
    p = p[np.argsort(p[:, 0], kind="stable")]
    x = np.maximum.accumulate(p[:, 0] + np.arange(len(p)) * 1e-6)
    return x, p[:, 1]


def _rect_points(x0: float, y0: float, x1: float, y1: float, step: float) -> np.ndarray:
    nx, ny = max(2, math.ceil((x1 - x0) / step) + 1), max(2, math.ceil((y1 - y0) / step) + 1)
    xs, ys = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    return np.concatenate(
        [
            np.stack([xs, np.full(nx, y0)], 1),
            np.stack([xs, np.full(nx, y1)], 1),
            np.stack([np.full(ny - 2, x0), ys[1:-1]], 1),
            np.stack([np.full(ny - 2, x1), ys[1:-1]], 1),
        ]
    )


def _dedupe(fixed: np.ndarray, others: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
    """``fixed`` then those of ``others`` not within ``tol`` of a point already
    taken; returns the points and how many of them are ``fixed``."""
    pts = [p for p in np.asarray(fixed, np.float64)]
    for p in np.asarray(others, np.float64):
        d = np.abs(np.asarray(pts) - p).max(axis=1)
        if d.min() > tol:
            pts.append(p)
    return np.asarray(pts), len(fixed)


def _barycentric(verts: np.ndarray, x: np.ndarray, y: np.ndarray) -> Any:
    """A function interpolating per-vertex values at the points (x, y) over the
    Delaunay triangulation of ``verts`` (0 outside it)."""
    from scipy.spatial import Delaunay

    tri = Delaunay(verts)
    pts = np.stack([x, y], 1)
    simplex = tri.find_simplex(pts)
    inside = simplex >= 0
    s = np.where(inside, simplex, 0)
    t = tri.transform[s]
    b = np.einsum("nij,nj->ni", t[:, :2], pts - t[:, 2])
    bary = np.concatenate([b, 1.0 - b.sum(axis=1, keepdims=True)], axis=1)
    bary[~inside] = 0.0
    idx = tri.simplices[s]

    def interp(values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, np.float64)[idx] * bary).sum(axis=1)

    return interp


@dataclass
class _EyeRig:
    roi: tuple[int, int, int, int]
    grid_x: np.ndarray
    grid_y: np.ndarray
    top: np.ndarray  # (w,) ROI-local y where the stretched lid skin starts
    upper: np.ndarray  # (w,) upper lid line
    lower: np.ndarray  # (w,) lower lid line
    meet: np.ndarray  # (w,) where the lids meet when closed
    bottom: np.ndarray  # (w,) where the stretched lower-lid skin ends
    inside: np.ndarray  # (w,) bool: column inside the eye
    weight: np.ndarray  # (w,) 1 at the eye centre, 0 at the corners


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
        meta = _transform_meta(meta, w / float(meta.get("size", w)), 0.0, 0.0)
        if h != w:  # centre-crop to a square, shifting the coordinates with it
            side = min(h, w)
            x0, y0 = (w - side) // 2, (h - side) // 2
            image = image[y0 : y0 + side, x0 : x0 + side]
            meta = _transform_meta(meta, 1.0, -x0, -y0)
            lm = None if lm is None else lm - (x0, y0)
            w = side
        if w != size:
            interp = cv2.INTER_AREA if w > size else cv2.INTER_CUBIC
            image = cv2.resize(image, (size, size), interpolation=interp)
            meta = _transform_meta(meta, size / w, 0.0, 0.0)
            lm = None if lm is None else lm * (size / w)
        self.size = size
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        self.image.flags.writeable = False
        self.meta = meta  # in pixels of the frame
        if lm is None and detect:
            lm = detect_landmarks(self.image)
        self.landmarks = lm  # (478, 2) in pixels of the frame, or None
        face = _lower_face_from_landmarks(lm) if lm is not None else None
        if face is None:
            face = _lower_face_from_meta(meta["mouth"])
        self.mouth = _MouthRig(face, meta["mouth"], size)
        self.eyes = [self._eye_rig(e) for e in meta.get("eyes", [])]
        self._motion_fields(meta)

    # ------------------------------------------------------------------ eyes
    def _eye_rig(self, e: dict[str, Any]) -> _EyeRig:
        (ax, ay), (bx, by) = sorted((np.array(c, float) for c in e["corners"]), key=lambda c: c[0])
        upper_c, lower_c = float(e["upper"]), float(e["lower"])
        cx, cy = (ax + bx) / 2, (ay + by) / 2
        hw = (bx - ax) / 2
        open_h = lower_c - upper_c
        skin = float(e.get("lid_skin", 0.85 * open_h))  # lid skin between brow and eye
        x0 = int(max(0, math.floor(ax - 3)))
        x1 = int(min(self.size, math.ceil(bx + 4)))
        y0 = int(max(0, math.floor(upper_c - skin - 4)))
        y1 = int(min(self.size, math.ceil(lower_c + 0.6 * open_h + 4)))
        gx, gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
        )
        xs = gx[0]
        u = (xs - cx) / hw
        inside = np.abs(u) < 1.0
        shape = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.6
        centre = ay + (by - ay) * np.clip((xs - ax) / (bx - ax), 0, 1)
        upper = centre - (cy - upper_c) * shape
        lower = centre + (lower_c - cy) * shape
        meet = lower - 0.3 * (lower - upper)
        top = upper - skin * np.maximum(shape, 0.35)
        bottom = lower + 0.45 * open_h * np.maximum(shape, 0.35)
        f = np.float32
        return _EyeRig(
            roi=(x0, y0, x1, y1),
            grid_x=np.ascontiguousarray(gx - x0),
            grid_y=np.ascontiguousarray(gy - y0),
            top=(top - y0).astype(f),
            upper=(upper - y0).astype(f),
            lower=(lower - y0).astype(f),
            meet=(meet - y0).astype(f),
            bottom=(bottom - y0).astype(f),
            inside=inside,
            weight=np.where(inside, shape, 0.0).astype(f),
        )

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
        head_mask = 1.0 - _smoothstep(0.85, 1.2, r)
        body_top = float(meta.get("body_top", py - 0.25 * hay))
        body_mask = _smoothstep(body_top, body_top + 0.25 * size, gy)
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


def _head_from_features(meta: dict[str, Any]) -> dict[str, Any]:
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


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """FaceMesh's 478 landmarks of the face in an RGB image, or None (no face
    found, or mediapipe is not installed)."""
    try:
        from models.avatar_prepare import face_landmarks

        return face_landmarks(image)
    except Exception as exc:  # mediapipe missing or broken: the meta geometry will do
        log.warning("face landmarks not available: %s", exc)
        return None


def _transform_meta(meta: dict[str, Any], scale: float, dx: float, dy: float) -> dict[str, Any]:
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


def astronaut_image() -> np.ndarray:
    from skimage import data

    x, y, w, h = ASTRONAUT_CROP
    crop = data.astronaut()[y : y + h, x : x + w]
    return cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)


# ====================================================================== model
class PhotoAvatarModel(AvatarModel):
    """Loads every avatar once; ``new_stream`` is cheap."""

    def __init__(self, weights_dir: Path, size: int = 512, default: str = "astronaut") -> None:
        self.size = size
        self.default = default
        self.weights_dir = Path(weights_dir)
        self._assets: dict[str, AvatarAssets] = {}
        self._stamps: dict[str, int] = {}  # image.png mtime of each loaded avatar
        self._builtin: AvatarAssets | None = None
        self.refresh()
        if default not in self._assets:
            raise KeyError(f"default avatar {default!r} not found; have {self.avatars()}")

    def _load(self, name: str, image_path: Path) -> AvatarAssets:
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read {image_path}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lm_path = image_path.with_name("landmarks.npy")
        landmarks = np.load(lm_path) if lm_path.is_file() else None
        detected = False  # FaceMesh already tried on this image
        if landmarks is not None and landmarks.ndim == 3:  # a video's: its first frame
            landmarks = landmarks[0]
        meta_path = image_path.with_name("meta.json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("mode") == "video":  # the clip's own frames: models/avatar_video.py
                from models.avatar_video import VideoAvatarAssets

                return VideoAvatarAssets(name, image_path.parent, meta)  # type: ignore[return-value]
        else:
            if landmarks is None:
                landmarks = detect_landmarks(image)
                detected = True
            if landmarks is not None:
                from models.avatar_prepare import face_meta

                meta = face_meta(landmarks)
                meta["size"] = image.shape[1]
                log.warning("avatar %r has no meta.json: face geometry from landmarks", name)
            else:
                meta = _guess_meta(image)
                log.warning(
                    "avatar %r has no meta.json: face geometry guessed from a face box", name
                )
        if landmarks is None and not detected:
            log.info("avatar %r has no landmarks.npy: running FaceMesh once", name)
        return AvatarAssets(name, image, meta, self.size, landmarks, detect=not detected)

    def avatars(self) -> list[str]:
        return list(self._assets)

    def refresh(self) -> None:
        """(Re-)read weights_dir/avatars: avatars added or prepared again since
        are loaded, removed ones dropped, unchanged ones kept as they are (the
        avatar API calls this); running streams keep their assets."""
        loaded: dict[str, AvatarAssets] = {}
        stamps: dict[str, int] = {}
        folder = self.weights_dir / "avatars"
        for image_path in sorted(folder.glob("*/image.png")) if folder.is_dir() else []:
            name = image_path.parent.name
            stamps[name] = image_path.stat().st_mtime_ns
            if self._stamps.get(name) == stamps[name] and name in self._assets:
                loaded[name] = self._assets[name]
                continue
            try:
                loaded[name] = self._load(name, image_path)
            except Exception as exc:
                log.warning("avatar %r in %s skipped: %s", name, image_path.parent, exc)
        # The built-in astronaut first (unless a prepared one replaces it).
        builtin = loaded.pop("astronaut", None) or self._builtin_astronaut()
        self._assets = {"astronaut": builtin, **loaded}
        self._stamps = stamps

    def _builtin_astronaut(self) -> AvatarAssets:
        """The astronaut without a prepared folder: built once, when first needed."""
        if self._builtin is None:
            self._builtin = AvatarAssets("astronaut", astronaut_image(), ASTRONAUT_META, self.size)
        return self._builtin

    def assets(self, name: str) -> AvatarAssets:
        try:
            return self._assets[name]
        except KeyError:
            raise KeyError(f"unknown avatar {name!r}; available: {self.avatars()}") from None

    def new_stream(
        self, avatar: str | None = None, *, seed: int | None = None
    ) -> BufferedAvatarStream:
        assets = self.assets(avatar or self.default)
        if not isinstance(assets, AvatarAssets):  # a video avatar
            from models.avatar_video import VideoAvatarStream

            return VideoAvatarStream(assets, seed=seed)
        return PhotoAvatarStream(assets, seed=seed)


# ===================================================================== stream
BLINK_PROFILE = (0.55, 1.0, 0.7, 0.3)  # closure per frame: ~160 ms


class PhotoAvatarStream(BufferedAvatarStream):
    # Loudness (dBFS of the weighted RMS) mapped to the mouth opening 0..1,
    # relative to a running peak so that quiet and loud voices both animate:
    # the peak maps to ``max_opening``, ``range_db`` below it to closed.
    range_db = 26.0
    max_opening = 0.92
    peak_init_db = -18.0
    peak_decay_db = 0.04  # per frame (1 dB/s)
    peak_limits_db = (-32.0, -3.0)
    attack = 0.7  # share of the way to a louder target per frame
    release = 0.38  # ... and to a quieter one

    # Without a track (idle), the shape relaxes to the rest pose by this share per frame.
    relax = 0.35

    def __init__(self, assets: AvatarAssets, seed: int | None = None) -> None:
        super().__init__()
        cv2.setNumThreads(1)
        self.assets = assets
        self.rng = np.random.default_rng(seed)
        self.opening = 0.0
        self.shape = mouth_track.REST.copy()
        self.peak_db = self.peak_init_db
        self.energy = 0.0  # slow speech energy: livelier head motion while talking
        self._blink_queue: list[float] = []
        self._next_blink = int(self.rng.uniform(1.0, 4.0) * MEDIA_FPS)
        # Idle motion: sums of slow sines with per-stream frequencies and phases.
        r = self.rng
        self._sway = [
            (r.uniform(0.05, 0.11), r.uniform(0, 2 * math.pi)),
            (r.uniform(0.13, 0.23), r.uniform(0, 2 * math.pi)),
            (r.uniform(0.29, 0.41), r.uniform(0, 2 * math.pi)),
        ]
        self._tilt = [
            (r.uniform(0.04, 0.09), r.uniform(0, 2 * math.pi)),
            (r.uniform(0.15, 0.25), r.uniform(0, 2 * math.pi)),
        ]
        self._bob = [
            (r.uniform(0.06, 0.12), r.uniform(0, 2 * math.pi)),
            (r.uniform(0.2, 0.35), r.uniform(0, 2 * math.pi)),
        ]
        self._breath = (r.uniform(0.2, 0.28), r.uniform(0, 2 * math.pi))
        low = assets.low_size
        self._dx_low = np.empty((low, low), np.float32)
        self._dy_low = np.empty((low, low), np.float32)
        n = assets.size
        self._map_x = np.empty((n, n), np.float32)
        self._map_y = np.empty((n, n), np.float32)
        self._weights = _loudness_weights()

    # ------------------------------------------------------------- drivers
    def make_track(self, samples: np.ndarray, speech: Speech | None) -> np.ndarray | None:
        if float(np.abs(samples).max()) < 1e-4:
            return None  # pure silence: the idle face, untouched
        timings = speech.phonemes if speech is not None and speech.phonemes else None
        return mouth_track.mouth_track(samples, MEDIA_SAMPLE_RATE, timings)

    def _mouth_target(self, window: np.ndarray, lookahead: np.ndarray) -> float:
        block = 480  # 10 ms
        audio = window if lookahead.size < block else np.concatenate([window, lookahead])
        nb = min(audio.size // block, self._weights.size)
        ms = np.square(audio[: nb * block].reshape(nb, block)).mean(axis=1)
        w = self._weights[:nb]
        level = float(np.sqrt((ms * w).sum() / w.sum()))
        db = 20.0 * math.log10(level + 1e-9)
        lo, hi = self.peak_limits_db
        self.peak_db = min(hi, max(lo, db, self.peak_db - self.peak_decay_db))
        x = min(1.0, max(0.0, (db - self.peak_db + self.range_db) / self.range_db))
        return self.max_opening * x**1.8

    def _advance_blink(self) -> float:
        if self._blink_queue:
            return self._blink_queue.pop(0)
        if self.frame_index >= self._next_blink:
            profile = list(BLINK_PROFILE)
            if self.rng.random() < 0.12:  # now and then a double blink
                profile += [0.1, *BLINK_PROFILE]
            self._blink_queue = profile[1:]
            self._next_blink = self.frame_index + int(self.rng.uniform(2.0, 6.0) * MEDIA_FPS)
            return profile[0]
        return 0.0

    def _motion(self) -> tuple[float, float, float, float]:
        """(head dx, head dy, head rotation rad, body dy) for this frame."""
        t = self.frame_index / MEDIA_FPS
        tau = 2 * math.pi
        lively = 1.0 + 0.6 * self.energy
        sway = sum(math.sin(tau * f * t + p) for f, p in self._sway) / 3
        tilt = sum(math.sin(tau * f * t + p) for f, p in self._tilt) / 2
        bob = sum(math.sin(tau * f * t + p) for f, p in self._bob) / 2
        breath = math.sin(tau * self._breath[0] * t + self._breath[1])
        body_dy = 1.1 * breath
        head_dx = 2.5 * lively * sway
        head_dy = 1.2 * lively * bob + 0.6 * body_dy + 1.5 * self.energy
        angle = 0.008 * lively * tilt  # ~0.5 degree
        return head_dx, head_dy, angle, body_dy

    # ----------------------------------------------------------- rendering
    def _next_shape(self, window: np.ndarray, lookahead: np.ndarray) -> np.ndarray:
        """This frame's mouth shape: the pushed chunk's track where there is one,
        else the loudness of the window (opening only), relaxing to rest."""
        if self.frame_shape is not None:
            return np.asarray(self.frame_shape, np.float32).copy()
        target = self._mouth_target(window, lookahead)
        self.peak_db = self.peak_init_db
        rest = mouth_track.REST
        shape = self.shape + self.relax * (rest - self.shape)
        k = self.attack if target > shape[0] else self.release
        shape[0] = self.shape[0] + k * (target - self.shape[0])
        if shape[0] < 0.02 and target == 0.0:
            shape[0] = 0.0
        if np.abs(shape - rest).max() < 0.01 and target == 0.0:
            shape = rest.copy()
        return shape

    def render(self, window: np.ndarray, lookahead: np.ndarray, speaking: bool) -> np.ndarray:
        self.shape = self._next_shape(window, lookahead)
        self.opening = float(self.shape[0]) * self.max_opening
        self.energy += 0.08 * (self.opening - self.energy)
        if self.energy < 0.005 and self.opening == 0.0:
            self.energy = 0.0  # back to the exact idle motion
        blink = self._advance_blink()

        a = self.assets
        canvas = a.image.copy()
        if self.opening > 0.0 or np.abs(self.shape[1:] - mouth_track.REST[1:]).max() > 0.005:
            self._draw_mouth(canvas, self.opening, self.shape)
        if blink > 0.0:
            for eye in a.eyes:
                self._draw_blink(canvas, eye, blink)
        return self._apply_motion(canvas)

    def _draw_mouth(self, canvas: np.ndarray, opening: float, shape: np.ndarray) -> None:
        rig = self.assets.mouth
        x0, y0, x1, y1 = rig.roi
        _, width, rnd, closure = (float(v) for v in shape)
        c = float(_smoothstep(0.15, 0.75, np.float32(closure)))
        bx, by, seam = rig.pulls((opening, 2.0 * width - 1.0, rnd, c))
        map_x = cv2.add(rig.grid_x, bx)
        map_y = cv2.add(rig.grid_y, by)
        src = self.assets.image[y0:y1, x0:x1]
        out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if opening > 0.0:
            self._paint_interior(out, map_x, map_y, seam, opening)
        if c > 0.3:  # pressed lips: a soft shaded line where they meet
            c0, r0, c1, r1 = rig.band
            dist = np.abs(rig.grid_y[r0:r1, c0:c1] - (seam[None, :] - 0.5))
            line = np.clip(1.0 - dist / 1.3, 0.0, 1.0) * rig.lens_col[None, c0:c1] ** 0.5
            line *= 0.3 * (c - 0.3) / 0.7 * max(0.0, 1.0 - opening / 0.15)
            region = out[r0:r1, c0:c1]
            region[:] = (region * (1.0 - line[..., None])).astype(np.uint8)
        canvas[y0:y1, x0:x1] = out

    def _paint_interior(
        self,
        out: np.ndarray,
        map_x: np.ndarray,
        map_y: np.ndarray,
        seam: np.ndarray,
        opening: float,
    ) -> None:
        """The gap: output pixels below the (moved) lower lip's edge whose source
        lies above that edge in the photo, painted as the mouth interior."""
        rig = self.assets.mouth
        c0, r0, c1, r1 = rig.cav
        mx = map_x[r0:r1, c0:c1]
        my = map_y[r0:r1, c0:c1]
        gy = rig.grid_y[r0:r1, c0:c1]
        col = np.clip(mx + 0.5, 0, rig.lower_col.size - 1).astype(np.intp)
        lens = rig.lens_col[col]  # of the source column: no gap outside the mouth's corners
        skip = rig.lip_skip * min(1.0, opening / 0.2) * lens
        depth = rig.lower_col[col] + skip - my  # 0 at the lower lip, the gap at the top
        under = (gy - seam[None, :]) / 1.2 + 0.6
        alpha = np.clip(depth / 1.2, 0.0, 1.0) * np.clip(under, 0.0, 1.0) * np.clip(3 * lens, 0, 1)
        if not alpha.any():
            return
        gap = np.maximum(np.where(under > 0.0, depth, 0.0).max(axis=0), 1e-3)[None, :]
        s = np.clip(depth / gap, 0.0, 1.0)  # 1 at the top of the gap, 0 at the lower lip
        u = rig.u[None, :]
        side = 1.0 - 0.55 * u * u  # darker towards the corners
        # Interior: dark red-brown, deepest under the upper teeth, a hint of tongue
        # low in the middle when the mouth opens wide.
        shade = (0.3 + 0.7 * (1.0 - s) ** 1.5) * side
        col_rgb = np.empty(s.shape + (3,), np.float32)
        col_rgb[..., 0] = 22.0 + 80.0 * shade
        col_rgb[..., 1] = 8.0 + 28.0 * shade
        col_rgb[..., 2] = 9.0 + 28.0 * shade
        tongue = np.clip(1.0 - s / 0.5, 0.0, 1.0) * np.clip(1.0 - u * u / 0.4, 0.0, 1.0)
        tongue *= min(1.0, max(0.0, (opening - 0.25) / 0.5)) * 0.75
        tongue = tongue[..., None]
        col_rgb = col_rgb * (1.0 - tongue) + np.array([168.0, 78.0, 80.0], np.float32) * tongue
        # Teeth: upper ones just under the parting line, lower ones just above the
        # lower lip, both narrower than the mouth and with faint tooth gaps.
        ridges = 0.9 + 0.1 * np.cos(u * (math.pi * 4.5))
        teeth_col = np.array([222.0, 214.0, 202.0], np.float32)
        if rig.upper_teeth > 0:
            band = np.clip((s - 0.72) / 0.12, 0, 1) * np.clip(1.0 - u * u / 0.6, 0, 1)
            band *= rig.upper_teeth * ridges
            col_rgb = col_rgb * (1 - band[..., None]) + teeth_col * (band[..., None] * 0.92)
        if rig.lower_teeth > 0:
            thick = np.minimum(0.3, 4.5 / gap)  # a few pixels, as a share of the gap
            band = np.clip((thick - s) / (0.4 * thick), 0, 1) * np.clip(1.0 - u * u / 0.25, 0, 1)
            band *= rig.lower_teeth * ridges * min(1.0, max(0.0, (opening - 0.25) / 0.35))
            col_rgb = col_rgb * (1 - band[..., None]) + teeth_col * (band[..., None] * 0.8)
        region = out[r0:r1, c0:c1].astype(np.float32)
        a3 = alpha[..., None]
        out[r0:r1, c0:c1] = (region * (1.0 - a3) + col_rgb * a3 + 0.5).astype(np.uint8)

    def _draw_blink(self, canvas: np.ndarray, eye: _EyeRig, b: float) -> None:
        x0, y0, x1, y1 = eye.roi
        gy = eye.grid_y
        upper_b = eye.upper + b * (eye.meet - eye.upper)
        lower_b = eye.lower + b * (eye.meet - eye.lower)
        # Lid skin [top, upper] stretched over [top, upper_b]; lower-lid skin
        # [lower, bottom] over [lower_b, bottom]; the eye in between stays put.
        lid = eye.top + (gy - eye.top) * (eye.upper - eye.top) / np.maximum(upper_b - eye.top, 1e-3)
        low = eye.lower + (gy - lower_b) * (eye.bottom - eye.lower) / np.maximum(
            eye.bottom - lower_b, 1e-3
        )
        in_lid = (gy >= eye.top) & (gy <= upper_b)
        in_low = (gy >= lower_b) & (gy <= eye.bottom)
        map_y = np.where(in_lid, lid, np.where(in_low, low, gy))
        map_y = np.where(eye.inside[None, :], map_y, gy).astype(np.float32)
        src = self.assets.image[y0:y1, x0:x1]
        out = cv2.remap(src, eye.grid_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # The closed lid: slightly shaded, with a soft lash line where the lids meet.
        if b > 0.5:
            lash = np.clip(1.0 - np.abs(gy - upper_b) / 1.5, 0, 1)
            lash *= np.sqrt(eye.weight)[None, :] * (0.4 * (b - 0.5) / 0.5)
            out = (out * (1.0 - lash[..., None])).astype(np.uint8)
        canvas[y0:y1, x0:x1] = out

    def _apply_motion(self, canvas: np.ndarray) -> np.ndarray:
        a = self.assets
        hx, hy, angle, by = self._motion()
        # Inverse map (where each output pixel samples from): small-angle rotation
        # about the neck pivot plus translations, weighted by the soft masks.
        dx, dy = self._dx_low, self._dy_low
        np.multiply(a.head_mask, -hx, out=dx)
        dx += angle * a.head_dy
        np.multiply(a.head_mask, -hy, out=dy)
        dy -= angle * a.head_dx
        dy -= by * a.body_mask
        n = a.size
        cv2.resize(dx, (n, n), dst=self._map_x, interpolation=cv2.INTER_LINEAR)
        cv2.resize(dy, (n, n), dst=self._map_y, interpolation=cv2.INTER_LINEAR)
        self._map_x += a.grid_x
        self._map_y += a.grid_y
        return cv2.remap(
            canvas, self._map_x, self._map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


def _loudness_weights() -> np.ndarray:
    """Weights of the 10 ms blocks from the frame start to +140 ms: the mouth
    follows the loudness around 50 ms ahead of the frame start (~30 ms ahead of
    the frame's own audio), so it opens just before the sound."""
    centres = np.arange(14) * 10.0 + 5.0
    return np.exp(-(((centres - 50.0) / 35.0) ** 2)).astype(np.float32)

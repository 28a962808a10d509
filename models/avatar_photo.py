"""CPU photo avatar: one still portrait brought to life, lip-synced to the reply.

``BufferedAvatarStream`` is the generic part of any renderer behind the
``AvatarStream`` contract: it queues the pushed 48 kHz reply audio with its
tags, takes exactly one video frame's worth (1920 samples) per tick, pads with
silence when the queue runs dry, accounts in ``played`` for the samples taken
from each chunk pushed with a tag (untagged audio plays but is not listed;
adjacent pieces of one tag are summed), and hands the audio of this frame plus
the next ~100 ms to ``render``.

``PhotoAvatarStream`` renders from one photo on a CPU, ~1-1.5 ms a frame on one
core (512 px):

* the mouth opens with the loudness of the audio (RMS of this frame and the
  next ~100 ms, attack/release smoothed): the lower face is pulled down by a
  smooth displacement field (``cv2.remap`` on the mouth region only) and the
  gap that opens between the lips is painted as a mouth interior;
* the eyes blink at random intervals (upper-lid skin stretched over the eye);
* the head sways and the chest breathes: a smooth displacement field weighted
  by soft head and body masks, so the background stays where it is.

Avatars: "astronaut" (a crop of ``skimage.data.astronaut()``, with hand-picked
face geometry) and any ``weights_dir/avatars/<name>/image.png`` with an optional
``meta.json`` (the schema is ``ASTRONAUT_META``'s; without one the face is found
with OpenCV's Haar cascade and the features are placed by average proportions).
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
    def push_audio(self, audio: np.ndarray, tag: Any = None, speech: Speech | None = None) -> None:
        samples = _as_float_mono(audio)
        track = self.make_track(samples, speech) if samples.size else None
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
# lip_skip (px), eyes[].lid_skin (px), head.center/axes/pivot (the ellipse that
# sways and the neck point it turns about), body_top (y where breathing starts).
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


@dataclass
class _MouthRig:
    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame
    grid_x: np.ndarray  # (h, w) float32 ROI-local x
    grid_y: np.ndarray
    profile: np.ndarray  # (h, w): downward displacement per pixel of opening
    parting: np.ndarray  # (w,) ROI-local y of the parting line per column
    lens: np.ndarray  # (w,) the lip-gap profile (1 at the centre, 0 at the corners)
    cav: tuple[int, int, int, int]  # the cavity box inside the ROI: c0, r0, c1, r1
    u: np.ndarray  # (cw,) horizontal position in the mouth, -1..1, for the cavity box
    max_open: float  # pixels of gap at the centre when fully open
    lip_skip: float  # source rows under the parting line covered once open
    upper_teeth: float
    lower_teeth: float
    # Lip closure: per column (ROI-local y) the nose line, the upper lip's edge,
    # the parting line and the bottom of the moved region.
    close_top: np.ndarray  # (w,)
    close_upper: np.ndarray  # (w,)
    close_bottom: np.ndarray  # (w,)
    upper_share: float  # share of the lip gap closed by the upper lip coming down
    # Width / rounding: horizontal scaling about the mouth centre, weighted by a mask.
    centre_x: float  # ROI-local
    spread_mask: np.ndarray  # (h, w)
    spread: float  # relative width change from rest to "ee" (and to rounded)


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

    def __init__(self, name: str, image: np.ndarray, meta: dict[str, Any], size: int) -> None:
        self.name = name
        h, w = image.shape[:2]
        # meta["size"]: the image width its coordinates were given for (default: this one).
        meta = _transform_meta(meta, w / float(meta.get("size", w)), 0.0, 0.0)
        if h != w:  # centre-crop to a square, shifting the coordinates with it
            side = min(h, w)
            x0, y0 = (w - side) // 2, (h - side) // 2
            image = image[y0 : y0 + side, x0 : x0 + side]
            meta = _transform_meta(meta, 1.0, -x0, -y0)
            w = side
        if w != size:
            interp = cv2.INTER_AREA if w > size else cv2.INTER_CUBIC
            image = cv2.resize(image, (size, size), interpolation=interp)
            meta = _transform_meta(meta, size / w, 0.0, 0.0)
        self.size = size
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        self.image.flags.writeable = False
        self.meta = meta  # in pixels of the frame
        self.mouth = self._mouth_rig(meta["mouth"])
        self.eyes = [self._eye_rig(e) for e in meta.get("eyes", [])]
        self._motion_fields(meta)

    # ----------------------------------------------------------------- mouth
    def _mouth_rig(self, m: dict[str, Any]) -> _MouthRig:
        (lx, ly), (rx, ry) = m["left"], m["right"]
        parting_c = float(m["parting"])
        chin = float(m["chin"])
        cx = (lx + rx) / 2
        hw = (rx - lx) / 2
        max_open = float(m.get("max_open", 0.55 * hw))
        # ROI: wide enough for the jaw, from the mouth corners to below the chin.
        jaw_hw = 2.1 * hw
        ramp = max(1.8 * max_open, 0.5 * (chin - parting_c))  # lip -> jaw profile blend
        fall = max(1.6 * max_open, 0.8 * (chin - parting_c))  # below the chin, back to 0
        x0 = int(max(0, math.floor(cx - jaw_hw - 2)))
        x1 = int(min(self.size, math.ceil(cx + jaw_hw + 2)))
        nose_guess = float(m.get("upper_lip", parting_c)) - 1.2 * max(
            parting_c - float(m.get("upper_lip", parting_c)), 4.0
        )
        y0 = int(max(0, math.floor(min(ly, ry, float(m.get("nose", nose_guess))) - 4)))
        y1 = int(min(self.size, math.ceil(chin + fall + 2)))
        gx, gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
        )
        xs = gx[0]
        u = (xs - cx) / hw
        corner_line = ly + (ry - ly) * np.clip((xs - lx) / (rx - lx), 0, 1)
        lens = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.75
        parting = corner_line + (parting_c - (ly + ry) / 2) * lens  # per column, frame y
        jaw = 1.0 - _smoothstep(0.9 * hw, jaw_hw, np.abs(xs - cx))
        below = gy - parting[None, :]
        t = _smoothstep(0.0, ramp, below)
        prof = (1.0 - t) * lens[None, :] + t * jaw[None, :]
        prof *= 1.0 - _smoothstep(chin, chin + fall, gy)
        prof[below < 0] = 0.0
        profile = prof.astype(np.float32)
        # The map must stay monotonic downwards (no folds): d(y - A*profile)/dy > 0.
        # (The jump at the parting line itself is the gap, not a fold.)
        steps = np.diff(profile, axis=0)
        steps[below[:-1] < 0] = 0.0
        slope = float(steps.max()) * max_open
        if slope >= 0.9:
            max_open *= 0.85 / slope
        # The box where the gap can open.
        c0 = int(max(0, math.floor(lx - 1 - x0)))
        c1 = int(min(x1 - x0, math.ceil(rx + 2 - x0)))
        r0 = int(max(0, math.floor(min(ly, ry) - 2 - y0)))
        r1 = int(min(y1 - y0, math.ceil(parting_c + max_open + 3 - y0)))
        # Closure: the upper lip's edge follows the parting line's shape, raised by
        # the visible gap (teeth) at the centre; the nose line sits above it.
        upper_c = float(m.get("upper_lip", parting_c))
        gap_c = max(0.0, parting_c - upper_c)
        upper = parting - gap_c * lens
        nose_c = float(m.get("nose", nose_guess))
        top = np.minimum(upper - 2.0, nose_c + 0.3 * (corner_line - (ly + ry) / 2))
        top = np.maximum(top, y0 + 1.0)
        bottom = np.minimum(chin + 0.3 * (chin - parting_c), y1 - 1.0) * np.ones_like(xs)
        # Width: a soft ellipse around the mouth (1 inside, 0 at the ROI's edge).
        cy_m = (parting_c + upper_c) / 2
        ex = (gx - cx) / (1.9 * hw)
        ey = np.where(
            gy < cy_m,
            (gy - cy_m) / max(cy_m - nose_c + 2, 4.0),
            (gy - cy_m) / (0.8 * (chin - cy_m) + 1),
        )
        spread_mask = 1.0 - _smoothstep(0.45, 1.0, np.sqrt(ex * ex + ey * ey))
        return _MouthRig(
            close_top=(top - y0).astype(np.float32),
            close_upper=(upper - y0).astype(np.float32),
            close_bottom=(bottom - y0).astype(np.float32),
            upper_share=float(m.get("upper_share", 0.6)),
            centre_x=float(cx - x0),
            spread_mask=spread_mask.astype(np.float32),
            spread=float(m.get("spread", 0.12)),
            roi=(x0, y0, x1, y1),
            grid_x=np.ascontiguousarray(gx - x0),
            grid_y=np.ascontiguousarray(gy - y0),
            profile=profile,
            parting=(parting - y0).astype(np.float32),
            lens=lens.astype(np.float32),
            cav=(c0, r0, c1, r1),
            u=u[c0:c1].astype(np.float32),
            max_open=max_open,
            lip_skip=float(m.get("lip_skip", 1.0)),
            upper_teeth=float(m.get("upper_teeth", 0.8)),
            lower_teeth=float(m.get("lower_teeth", 0.5)),
        )

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


def _meta_from_landmarks(meta: dict[str, Any], landmarks: np.ndarray) -> None:
    """Fill the lip-closure geometry that meta.json may lack from the 478 FaceMesh
    points (pixels of image.png; a (N, 478, 2) array gives its first frame):
    the upper lip's inner edge (13) and the nose base (2)."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim == 3:
        lm = lm[0]
    if lm.shape[0] < 468 or lm.shape[-1] < 2:
        return
    m = meta["mouth"]
    m.setdefault("upper_lip", float(lm[13, 1]))
    m.setdefault("nose", float(lm[2, 1]))


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
        self._assets: dict[str, AvatarAssets] = {
            "astronaut": AvatarAssets("astronaut", astronaut_image(), ASTRONAUT_META, size)
        }
        folder = Path(weights_dir) / "avatars"
        if folder.is_dir():
            for image_path in sorted(folder.glob("*/image.png")):
                name = image_path.parent.name
                try:
                    self._assets[name] = self._load(name, image_path)
                except Exception as exc:
                    log.warning("avatar %r in %s skipped: %s", name, image_path.parent, exc)
        if default not in self._assets:
            raise KeyError(f"default avatar {default!r} not found; have {self.avatars()}")

    def _load(self, name: str, image_path: Path) -> AvatarAssets:
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read {image_path}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        meta_path = image_path.with_name("meta.json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("mode") == "video":  # the clip's own frames: models/avatar_video.py
                from models.avatar_video import VideoAvatarAssets

                return VideoAvatarAssets(name, image_path.parent, meta)  # type: ignore[return-value]
        else:
            meta = _guess_meta(image)
            log.warning("avatar %r has no meta.json: face geometry guessed from a face box", name)
        lm_path = image_path.with_name("landmarks.npy")
        if lm_path.is_file():
            _meta_from_landmarks(meta, np.load(lm_path))
        return AvatarAssets(name, image, meta, self.size)

    def avatars(self) -> list[str]:
        return list(self._assets)

    def refresh(self) -> None:
        """Re-read weights_dir/avatars after avatars were added or removed (the
        avatar API calls it); running streams keep their assets."""
        self._assets = PhotoAvatarModel(self.weights_dir, self.size, self.default)._assets

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
        amount = opening * rig.max_open
        src = self.assets.image[y0:y1, x0:x1]
        map_y = rig.grid_y - amount * rig.profile
        # Width and rounding: scale x about the mouth centre inside a soft mask
        # (> 1 spreads the corners, < 1 narrows a rounded mouth).
        _, width, rnd, closure = (float(v) for v in shape)
        scale = 1.0 + rig.spread * (2.0 * (width - 0.5)) - 1.6 * rig.spread * rnd
        if abs(scale - 1.0) > 1e-3:
            map_x = rig.grid_x - (1.0 - 1.0 / scale) * (rig.grid_x - rig.centre_x) * rig.spread_mask
            if rnd > 0.0:  # rounded lips also push forward: a little taller
                map_y = map_y - 0.08 * rnd * (map_y - rig.close_upper[None, :]) * rig.spread_mask
        else:
            map_x = rig.grid_x
        c = float(_smoothstep(0.15, 0.75, np.float32(closure)))
        if c > 0.0:
            map_y = self._close_lips(map_y, c)
        out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if amount <= 0.0:
            canvas[y0:y1, x0:x1] = out
            return

        # The gap: output below the parting line whose source lies above it.
        c0, r0, c1, r1 = rig.cav
        my = map_y[r0:r1, c0:c1]
        gy = rig.grid_y[r0:r1, c0:c1]
        part = rig.parting[None, c0:c1]
        lens = rig.lens[None, c0:c1]
        skip = rig.lip_skip * min(1.0, opening / 0.2) * lens
        gap = np.maximum(amount * lens + skip, 1e-3)
        depth = part + skip - my  # 0 at the lower lip, gap at the upper teeth
        alpha = np.clip(depth / 1.2, 0.0, 1.0) * np.clip((gy - part) / 1.2 + 0.6, 0.0, 1.0)
        if not alpha.any():
            canvas[y0:y1, x0:x1] = out
            return
        s = np.clip(depth / gap, 0.0, 1.0)  # 1 at the top of the gap, 0 at the lower lip
        u = rig.u[None, :]
        side = 1.0 - 0.55 * u * u  # darker towards the corners
        # Interior: dark red-brown, deepest under the upper teeth, a hint of tongue
        # low in the middle when the mouth opens wide.
        shade = (0.3 + 0.7 * (1.0 - s) ** 1.5) * side
        col = np.empty(s.shape + (3,), np.float32)
        col[..., 0] = 22.0 + 80.0 * shade
        col[..., 1] = 8.0 + 28.0 * shade
        col[..., 2] = 9.0 + 28.0 * shade
        tongue = np.clip(1.0 - s / 0.5, 0.0, 1.0) * np.clip(1.0 - u * u / 0.4, 0.0, 1.0)
        tongue *= min(1.0, max(0.0, (opening - 0.25) / 0.5)) * 0.75
        tongue = tongue[..., None]
        col = col * (1.0 - tongue) + np.array([168.0, 78.0, 80.0], np.float32) * tongue
        # Teeth: upper ones just under the parting line, lower ones just above the
        # lower lip, both narrower than the mouth and with faint tooth gaps.
        ridges = 0.9 + 0.1 * np.cos(u * (math.pi * 4.5))
        teeth_col = np.array([222.0, 214.0, 202.0], np.float32)
        if rig.upper_teeth > 0:
            band = np.clip((s - 0.72) / 0.12, 0, 1) * np.clip(1.0 - u * u / 0.6, 0, 1)
            band *= rig.upper_teeth * ridges
            col = col * (1 - band[..., None]) + teeth_col * (band[..., None] * 0.92)
        if rig.lower_teeth > 0:
            thick = np.minimum(0.3, 4.5 / gap)  # a few pixels, as a share of the gap
            band = np.clip((thick - s) / (0.4 * thick), 0, 1) * np.clip(1.0 - u * u / 0.25, 0, 1)
            band *= rig.lower_teeth * ridges * min(1.0, max(0.0, (opening - 0.25) / 0.35))
            col = col * (1 - band[..., None]) + teeth_col * (band[..., None] * 0.8)
        region = out[r0:r1, c0:c1].astype(np.float32)
        a3 = alpha[..., None]
        out[r0:r1, c0:c1] = (region * (1.0 - a3) + col * a3 + 0.5).astype(np.uint8)
        canvas[y0:y1, x0:x1] = out

    def _close_lips(self, map_y: np.ndarray, c: float) -> np.ndarray:
        """Compose ``map_y`` with the closure map: the upper lip comes down and the
        lower lip up over the gap between them (the teeth) until they meet at
        ``c`` = 1. Per column: source [top, upper] -> output [top, upper'],
        [upper, parting] -> [upper', parting'], [parting, bottom] -> [parting', bottom]."""
        rig = self.assets.mouth
        top = rig.close_top[None, :]
        up = rig.close_upper[None, :]
        part = rig.parting[None, :]
        bot = rig.close_bottom[None, :]
        gap = part - up
        up2 = up + c * rig.upper_share * gap
        part2 = part - c * (1.0 - rig.upper_share) * gap
        y = map_y
        a = top + (y - top) * (up - top) / np.maximum(up2 - top, 1e-3)
        mid = up + (y - up2) * gap / np.maximum(part2 - up2, 1e-3)
        mid = np.where(part2 - up2 < 0.5, np.where(y < up2, up, part), mid)
        b = part + (y - part2) * (bot - part) / np.maximum(bot - part2, 1e-3)
        out = np.where(
            y < top, y, np.where(y < up2, a, np.where(y < part2, mid, np.where(y < bot, b, y)))
        )
        return out.astype(np.float32)

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

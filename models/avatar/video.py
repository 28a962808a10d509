"""Video avatar: a recorded clip brought to life, its mouth re-synthesized from
the clip's own frames (photoreal, like the original demo's recorded avatars).

A video avatar is prepared by tools/avatar_prepare.py (``meta.json`` with mode
"video", ``frames/000000.jpg ...`` 512x512 at 25 fps, ``landmarks.npy`` (N, 478,
2)). ``VideoAvatarAssets`` indexes it once per process (read-only, shared by all
streams):

* every frame's **mouth shape** from its landmarks, in the four numbers of
  models/avatar/mouth.py (open, width, round, closure) so the driving track's targets
  compare directly: open = inner-lip gap / mouth width, scaled between the
  clip's own closed and widest mouths; width = mouth width / face width around
  the clip's median (0.5); round = narrowing below that median; closure = the
  inner lips touching (gap under ~5 % of the mouth width);
* every frame's **head pose residual**: the stable landmarks (eye corners, nose
  bridge, cheeks at the ears) after a similarity fit to the clip's mean layout,
  so a source frame with another yaw/pitch costs more than one that only moved.

Frames are decoded from JPEG on demand: the current idle frame through a small
LRU cache, and the lower-face crop of each frame used as a mouth source kept
once decoded (a few tens of KB a frame).

``VideoAvatarStream`` renders each 40 ms tick:

* **idle**: the clip played forward then backward (ping-pong), so there is no
  jump cut and blinks are the person's own. Frames where the clip itself talks
  (the mouth shape changing fast: its local spread over ~0.4 s) get a resting
  mouth from the clip's quiet frames by the same re-synthesis; quiet frames are
  passed through untouched;
* **speaking**: the target shape of the frame (the pushed chunk's mouth track,
  models/avatar/mouth.py: phonemes with timings or audio) picks the source frame whose
  mouth matches best, with temporal smoothness. The target's opening and
  closure become a lip gap on the clip's own scale (``target_gap``): opening 0
  is the clip's resting gap (which may be a smile with parted lips), opening 1
  its widest mouth, closure brings the lips from rest to its most closed mouth;
  when the target presses the lips (p, b, m) the most closed mouths get an
  extra pull. Cost = squared gap difference + width and rounding differences
  + head-pose difference + a penalty for leaving the natural continuation
  (previous source + 1) that grows with the jump, and hysteresis (the
  continuation wins unless another frame is clearly better). The source's lower
  face is aligned to the current frame's head pose by a similarity transform
  (``cv2.estimateAffinePartial2D`` on the stable landmarks), colour-matched on
  the skin at the mask's edge and blended in with a feathered ellipse around
  mouth and jaw. Where the chosen source is the current frame itself, the frame
  is passed through untouched.

About 1.5 ms a frame (median; 6-7 ms p95) on one core at 512 px while speaking:
a JPEG decode when the frame is not cached, one warp of the lower-face box and
a blend.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.avatar.buffered import BufferedAvatarStream
from models.avatar.faces import (
    FACE_LEFT,
    FACE_RIGHT,
    LIP_LOWER_INNER,
    LIP_UPPER_INNER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_BASE,
)
from models.avatar.mouth import SILENT, mouth_track
from models.base import MEDIA_SAMPLE_RATE, Speech

log = logging.getLogger(__name__)

# FaceMesh indices (mediapipe's canonical face model).
# Points that do not move with the mouth: eye corners, nose bridge and tip,
# cheeks at the ears.
STABLE = (33, 133, 362, 263, 6, 168, 197, 195, 5, 4, 234, 454, 93, 323, 127, 356)
# The lower face (lips, jaw, chin): what the patch must cover.
LOWER = (61, 291, 0, 17, 14, 13, 152, 148, 377, 176, 400, 172, 397, 57, 287, 18, 200)

# Selection cost weights: the lip gap (in units of the clip's closed-to-widest
# range), lip width and rounding (track units), and an extra pull towards the
# clip's most closed mouths when the target presses the lips (p, b, m).
GAP_WEIGHT = 1.0
WIDTH_WEIGHT = 0.25
ROUND_WEIGHT = 0.25
PRESS_WEIGHT = 1.5
CLOSED_GAP = 0.05  # inner-lip gap / mouth width below which the lips touch


def lip_gaps(landmarks: np.ndarray) -> np.ndarray:
    """(N,) inner-lip gap over mouth width of a clip's (N, 478, 2) landmarks."""
    lm = np.asarray(landmarks, np.float32)
    mw = np.linalg.norm(lm[:, MOUTH_RIGHT] - lm[:, MOUTH_LEFT], axis=1) + 1e-6
    return np.linalg.norm(lm[:, LIP_LOWER_INNER] - lm[:, LIP_UPPER_INNER], axis=1) / mw


def mouth_shapes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 4) mouth shapes (models/avatar/mouth.py's fields) of a clip's (N, 478, 2)
    landmarks, normalized on the clip itself."""
    lm = np.asarray(landmarks, np.float32)
    mw = np.linalg.norm(lm[:, MOUTH_RIGHT] - lm[:, MOUTH_LEFT], axis=1) + 1e-6
    fw = np.linalg.norm(lm[:, FACE_RIGHT] - lm[:, FACE_LEFT], axis=1) + 1e-6
    gap = lip_gaps(lm)
    lo, hi = np.percentile(gap, 2), np.percentile(gap, 98)
    opening = np.clip((gap - lo) / max(hi - lo, 0.05), 0.0, 1.0)
    ratio = mw / fw
    rel = ratio / float(np.median(ratio)) - 1.0
    width = np.clip(0.5 + rel / 0.2, 0.0, 1.0)
    rnd = np.clip(-rel / 0.1, 0.0, 1.0)
    closure = np.clip((CLOSED_GAP - gap) / 0.035, 0.0, 1.0)
    return np.stack([opening, width, rnd, closure], axis=1).astype(np.float32)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, shift) mapping ``src`` onto ``dst``."""
    m, _ = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS
    )
    if m is None:
        m = np.float64([[1, 0, 0], [0, 1, 0]])
    return m


def _pose_residuals(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2 * len(STABLE)) stable landmarks of each frame after a similarity fit
    to the clip's mean layout, in units of the face width: what a similarity
    cannot explain (yaw, pitch, expression of the upper face)."""
    pts = np.asarray(landmarks, np.float32)[:, STABLE]
    mean = pts.mean(axis=0)
    fw = float(np.linalg.norm(mean[10] - mean[11])) + 1e-6  # cheek to cheek
    out = np.empty((pts.shape[0], pts.shape[1] * 2), np.float32)
    for i, p in enumerate(pts):
        m = _similarity(p, mean)
        fit = p @ m[:, :2].T + m[:, 2]
        out[i] = ((fit - mean) / fw).reshape(-1)
    return out


def _unit_mask(size: int = 96) -> np.ndarray:
    """A feathered ellipse filling a size x size box: 1 inside ~55 % of the
    radius, 0 at the box's edge (smoothstep in between)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, c)
    r = np.sqrt(x * x + y * y)
    t = np.clip((r - 0.55) / (0.97 - 0.55), 0.0, 1.0)
    return (1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)


class VideoAvatarAssets:
    """One prepared video avatar, indexed once; shared read-only by streams
    (the frame caches are guarded by a lock)."""

    idle_cache_frames = 12  # decoded full frames kept (the ping-pong reuses few)

    def __init__(self, name: str, folder: Path, meta: dict[str, Any] | None = None) -> None:
        self.name = name
        self.folder = Path(folder)
        if meta is None:
            meta = json.loads((self.folder / "meta.json").read_text())
        self.meta = meta
        if meta.get("mode") != "video":
            raise ValueError(f"avatar {name!r} is not a video avatar")
        lm = np.load(self.folder / str(meta.get("landmarks", "landmarks.npy")))
        if lm.ndim != 3 or lm.shape[1] < 468:
            raise ValueError(f"avatar {name!r}: landmarks.npy must be (N, 478, 2)")
        frames_dir = self.folder / str(meta.get("frames_dir", "frames"))
        pattern = str(meta.get("frame_pattern", "%06d.jpg"))
        n = min(int(meta.get("frames", lm.shape[0])), lm.shape[0])
        self.paths = [frames_dir / (pattern % i) for i in range(n)]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise ValueError(f"avatar {name!r}: {len(missing)} frames missing, e.g. {missing[0]}")
        if n < 2:
            raise ValueError(f"avatar {name!r}: a video avatar needs at least 2 frames")
        self.n = n
        self._lock = threading.Lock()
        self._full: OrderedDict[int, np.ndarray] = OrderedDict()
        self._crops: dict[int, np.ndarray] = {}
        self.landmarks = np.ascontiguousarray(lm[:n, :, :2], np.float32)
        first = self.frame(0)
        self.size = first.shape[0]
        self.shapes = mouth_shapes(self.landmarks)
        self.gaps = lip_gaps(self.landmarks).astype(np.float32)
        self.pose = _pose_residuals(self.landmarks)
        # Quiet frames: the opening barely changes over +-5 frames (~0.4 s).
        k = 5
        padded = np.pad(self.shapes[:, 0], k, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1)
        self.quiet = windows.std(axis=1) < 0.06
        self.rest: np.ndarray | None = None
        if self.quiet.mean() >= 0.1:
            self.rest = np.median(self.shapes[self.quiet], axis=0).astype(np.float32)
        else:
            self.quiet[:] = True  # no quiet stretch to learn the rest from: play as is
        # The lip gap of the clip's closed, resting and widest mouths: a target's
        # opening 0 means "the lips at rest" (mouth.py), the clip's own rest,
        # which may show parted lips (a smile with teeth); its closure brings
        # them from there to the clip's most closed mouth.
        self.gap_closed = float(np.percentile(self.gaps, 2))
        self.gap_open = max(float(np.percentile(self.gaps, 98)), self.gap_closed + 0.05)
        rest_gap = float(np.median(self.gaps[self.quiet])) if self.rest is not None else 0.0
        self.gap_rest = float(np.clip(rest_gap, self.gap_closed, self.gap_open))
        self.stable = np.ascontiguousarray(self.landmarks[:, STABLE])
        self.lower = np.ascontiguousarray(self.landmarks[:, LOWER])
        self.mouth_width = np.linalg.norm(
            self.landmarks[:, MOUTH_RIGHT] - self.landmarks[:, MOUTH_LEFT], axis=1
        )
        # The source box: the lower face of every frame, with room for alignment.
        pts = self.lower.reshape(-1, 2)
        margin = 0.6 * float(np.median(self.mouth_width))
        x0 = int(max(0, np.floor(pts[:, 0].min() - margin)))
        x1 = int(min(self.size, np.ceil(pts[:, 0].max() + margin)))
        y0 = int(max(0, np.floor(self.landmarks[:, NOSE_BASE, 1].min() - 0.3 * margin)))
        y1 = int(min(self.size, np.ceil(pts[:, 1].max() + margin)))
        self.crop_box = (x0, y0, x1, y1)
        self.mask_unit = _unit_mask()

    @classmethod
    def load(cls, name: str, folder: Path) -> VideoAvatarAssets:
        return cls(name, folder)

    # ------------------------------------------------------------- frames
    def _decode(self, i: int) -> np.ndarray:
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read {self.paths[i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (RGB uint8, read-only: copy before drawing on it)."""
        with self._lock:
            img = self._full.get(i)
            if img is not None:
                self._full.move_to_end(i)
                return img
        img = self._decode(i)
        img.setflags(write=False)
        with self._lock:
            self._full[i] = img
            while len(self._full) > self.idle_cache_frames:
                self._full.popitem(last=False)
        return img

    def crop(self, i: int) -> np.ndarray:
        """The lower-face box (``crop_box``) of frame ``i``, kept once decoded."""
        with self._lock:
            c = self._crops.get(i)
        if c is not None:
            return c
        x0, y0, x1, y1 = self.crop_box
        c = np.ascontiguousarray(self.frame(i)[y0:y1, x0:x1])
        c.setflags(write=False)
        with self._lock:
            self._crops[i] = c
        return c

    def target_gap(self, target: np.ndarray) -> float:
        """The lip gap (over mouth width) a track shape asks of this clip."""
        o = float(np.clip(target[0], 0.0, 1.0))
        c = float(np.clip(target[3], 0.0, 1.0))
        rest = self.gap_rest
        return rest + o * (self.gap_open - rest) - c * (rest - self.gap_closed)

    def ping_pong(self, t: int) -> int:
        """The clip frame shown at tick ``t``: forward, then backward, repeated."""
        period = 2 * (self.n - 1)
        k = t % period
        return k if k < self.n else period - k


class VideoAvatarStream(BufferedAvatarStream):
    """Per-session renderer of a ``VideoAvatarAssets`` (see the module doc)."""

    pose_weight = 4.0  # per squared face-width unit of pose residual
    switch_cost = 0.015  # leaving the natural continuation (previous + 1) at all
    jump_cost = 0.03  # ... plus this much for a jump across 2 s or more of the clip
    hysteresis = 0.02  # the continuation is kept unless another is better by this
    own_bonus = 0.01  # the current frame's own mouth needs no warp: slightly preferred
    close_idle_mouth = True  # idle frames where the clip talks get a resting mouth

    def __init__(self, assets: VideoAvatarAssets, seed: int | None = None) -> None:
        super().__init__()
        cv2.setNumThreads(1)
        self.assets = assets
        rng = np.random.default_rng(seed)
        self._t0 = int(rng.integers(0, 2 * (assets.n - 1)))  # where the loop starts
        self.base_index = 0
        self.source_index: int | None = None  # the mouth's source frame, None: own
        self.target: np.ndarray | None = None
        self._prev: int | None = None
        self._dir = 1
        self._idx = np.arange(assets.n)

    def make_track(self, samples: np.ndarray, speech: Speech | None) -> np.ndarray | None:
        if float(np.abs(samples).max()) < 1e-4:
            return None  # pure silence: the idle clip, untouched
        timings = speech.phonemes if speech is not None and speech.phonemes else None
        return mouth_track(samples, MEDIA_SAMPLE_RATE, timings)

    # ----------------------------------------------------------- selection
    def select(self, target: np.ndarray, base: int) -> int:
        """The source frame whose mouth shows ``target`` best for the current
        frame ``base`` (updates the continuity state)."""
        a = self.assets
        is_rest = target is a.rest
        target = np.asarray(target, np.float32)
        span = a.gap_open - a.gap_closed
        want = a.gap_rest if is_rest else a.target_gap(target)
        cost = GAP_WEIGHT * np.square((a.gaps - want) / span)
        cost += WIDTH_WEIGHT * np.square(a.shapes[:, 1] - target[1])
        cost += ROUND_WEIGHT * np.square(a.shapes[:, 2] - target[2])
        press = float(np.clip(2.0 * target[3] - 1.0, 0.0, 1.0))  # closure above 0.5
        if press > 0.0:  # lips pressed: the most closed mouths win over continuity
            cost += PRESS_WEIGHT * press * np.maximum(a.gaps - a.gap_closed, 0.0) / span
        dp = a.pose - a.pose[base][None, :]
        cost += self.pose_weight * np.einsum("ij,ij->i", dp, dp)
        cost[base] -= self.own_bonus
        if is_rest:
            cost += np.where(a.quiet, 0.0, 1.0)
        if self._prev is not None:
            anchor = self._prev + self._dir
            if not 0 <= anchor < a.n:
                self._dir = -self._dir
                anchor = self._prev + self._dir
            far = np.minimum(np.abs(self._idx - anchor), 50) / 50.0
            cost += np.where(self._idx == anchor, 0.0, self.switch_cost + self.jump_cost * far)
            best = int(np.argmin(cost))
            if cost[anchor] <= cost[best] + self.hysteresis:
                best = anchor
        else:
            best = int(np.argmin(cost))
        if self._prev is not None and best != self._prev + self._dir and best != self._prev:
            self._dir = 1 if best >= self._prev else -1
        self._prev = best
        return best

    # ----------------------------------------------------------- rendering
    def render(self, window: np.ndarray, lookahead: np.ndarray, speaking: bool) -> np.ndarray:
        a = self.assets
        b = a.ping_pong(self._t0 + self.frame_index)
        self.base_index = b
        base = a.frame(b)
        if self.frame_shape is not None:
            target = np.asarray(self.frame_shape, np.float32)
        elif speaking:
            target = SILENT  # inside a reply, no audio yet: lips together
        elif self.close_idle_mouth and a.rest is not None and not a.quiet[b]:
            target = a.rest  # the clip talks here: a resting mouth from its quiet frames
        else:
            target = None
        self.target = target
        if target is None:
            self._prev = None
            self.source_index = None
            return base.copy()
        j = self.select(target, b)
        if j == b:
            self.source_index = None
            return base.copy()
        self.source_index = j
        return self.paste_mouth(base, b, j)

    def paste_mouth(self, base: np.ndarray, b: int, j: int) -> np.ndarray:
        """``base`` (frame ``b``) with the lower face of frame ``j`` aligned onto it."""
        a = self.assets
        m = _similarity(a.stable[j], a.stable[b])
        lin, shift = m[:, :2], m[:, 2]
        warped = a.lower[j] @ lin.T + shift
        pts = np.concatenate([a.lower[b], warped])
        mw = float(a.mouth_width[b])
        n = a.size
        x0 = int(max(0, np.floor(pts[:, 0].min() - 0.3 * mw)))
        x1 = int(min(n, np.ceil(pts[:, 0].max() + 0.3 * mw)))
        y0 = int(max(0, np.floor(a.landmarks[b, NOSE_BASE, 1] - 0.12 * mw)))
        y1 = int(min(n, np.ceil(pts[:, 1].max() + 0.3 * mw)))
        w, h = x1 - x0, y1 - y0
        out = base.copy()
        if w < 8 or h < 8:
            return out
        # Output pixel (x, y) in the box samples the source crop at
        # inverse(m) @ (x + x0, y + y0) - crop origin.
        cx0, cy0, _, _ = a.crop_box
        inv = cv2.invertAffineTransform(m)
        inv[:, 2] += inv[:, :2] @ np.array([x0, y0], np.float64) - np.array([cx0, cy0])
        patch = cv2.warpAffine(
            a.crop(j),
            inv,
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        ).astype(np.float32)
        mask = cv2.resize(a.mask_unit, (w, h), interpolation=cv2.INTER_LINEAR)
        region = base[y0:y1, x0:x1].astype(np.float32)
        # Colour match on the skin where the mask fades (the seam): shift the
        # patch's mean per channel onto the frame's.
        band = (mask > 0.1) & (mask < 0.7)
        band[1::2] = False
        if band.sum() > 20:
            patch += region[band].mean(axis=0) - patch[band].mean(axis=0)
        m3 = mask[..., None]
        blended = region + m3 * (patch - region)
        out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return out

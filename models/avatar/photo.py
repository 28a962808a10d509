"""The photo avatar's renderer: one still portrait brought to life, lip-synced
to the reply, on a CPU (~1.5 ms a frame on one core at 512 px).

``PhotoAvatarStream`` draws each frame from the avatar's ``AvatarAssets``:

* the mouth follows the mouth-shape track of the reply (models/avatar/mouth.py:
  jaw opening, width, rounding, lip closure; without one, the loudness of the
  audio opens it), warped by the avatar's mouth mesh (models/avatar/mouth_rig.py);
  the gap opened below the upper lip or teeth is painted as a mouth interior
  (shaded cavity, teeth, tongue);
* the eyes blink at random intervals (upper-lid skin stretched over the eye);
* the head sways and the chest breathes: a smooth displacement field weighted
  by soft head and body masks, so the background stays where it is.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from models.avatar.assets import AvatarAssets
from models.avatar.buffered import BufferedAvatarStream
from models.avatar.eye_rig import EyeRig
from models.avatar.mouth import REST, mouth_track
from models.avatar.mouth_rig import smoothstep
from models.base import MEDIA_FPS, MEDIA_SAMPLE_RATE, Speech

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
        self.shape = REST.copy()
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
        return mouth_track(samples, MEDIA_SAMPLE_RATE, timings)

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
        rest = REST
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
        if self.opening > 0.0 or np.abs(self.shape[1:] - REST[1:]).max() > 0.005:
            self._draw_mouth(canvas, self.opening, self.shape)
        if blink > 0.0:
            for eye in a.eyes:
                self._draw_blink(canvas, eye, blink)
        return self._apply_motion(canvas)

    def _draw_mouth(self, canvas: np.ndarray, opening: float, shape: np.ndarray) -> None:
        rig = self.assets.mouth
        x0, y0, x1, y1 = rig.roi
        _, width, rnd, closure = (float(v) for v in shape)
        c = float(smoothstep(0.15, 0.75, np.asarray(closure, np.float32)))
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

    def _draw_blink(self, canvas: np.ndarray, eye: EyeRig, b: float) -> None:
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

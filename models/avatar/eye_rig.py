"""The eyes of a photo avatar: per eye, the lid lines and the region a blink
warps (models/avatar/photo.py stretches the upper-lid skin over the eye), built
once per avatar from its meta geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EyeRig:
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


def eye_rig(e: dict[str, Any], size: int) -> EyeRig:
    """The rig of one eye of the meta geometry (``corners``, ``upper``, ``lower``,
    optional ``lid_skin``; pixels of the ``size`` x ``size`` frame)."""
    (ax, ay), (bx, by) = sorted((np.array(c, float) for c in e["corners"]), key=lambda c: c[0])
    upper_c, lower_c = float(e["upper"]), float(e["lower"])
    cx, cy = (ax + bx) / 2, (ay + by) / 2
    hw = (bx - ax) / 2
    open_h = lower_c - upper_c
    skin = float(e.get("lid_skin", 0.85 * open_h))  # lid skin between brow and eye
    x0 = int(max(0, math.floor(ax - 3)))
    x1 = int(min(size, math.ceil(bx + 4)))
    y0 = int(max(0, math.floor(upper_c - skin - 4)))
    y1 = int(min(size, math.ceil(lower_c + 0.6 * open_h + 4)))
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
    return EyeRig(
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
